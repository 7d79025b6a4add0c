//! What the SQL metadata engines (SQLite, PostgreSQL) share: error mapping,
//! row decoding and the migration list format. Their queries differ only in
//! placeholders and a few functions, and live in each engine's file.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{ArtifactId, AuditEvent, BackendError, EntryRecord, Result};
use crate::key::CacheKey;

pub const NAME: &str = "metadata";

/// SQL is written once with PostgreSQL's `$n` placeholders; SQLite gets
/// the same numbered parameters as `?n`.
pub(crate) fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Registers or replaces an entry (a replaced entry starts its counters again).
pub const INSERT_SQL: &str = "INSERT INTO entries (cache_key, tenant, namespace, endpoint, model, artifact_sha256, \
     request_bytes, response_bytes, prompt_tokens, completion_tokens, cost_usd, created_at_ms, expires_at_ms, \
     last_hit_at_ms, hit_count, request_json, artifact_missing) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0) \
     ON CONFLICT (cache_key) DO UPDATE SET tenant = excluded.tenant, namespace = excluded.namespace, \
     endpoint = excluded.endpoint, model = excluded.model, artifact_sha256 = excluded.artifact_sha256, \
     request_bytes = excluded.request_bytes, response_bytes = excluded.response_bytes, \
     prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, \
     cost_usd = excluded.cost_usd, created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms, \
     last_hit_at_ms = NULL, hit_count = 0, request_json = excluded.request_json, artifact_missing = 0";

/// Adds one row of usage counters to its hour (both engines speak this upsert).
pub const USAGE_UPSERT_SQL: &str = "INSERT INTO usage_hourly (hour_ms, tenant, namespace, model, dialect, hits, \
     semantic_hits, misses, prompt_tokens, completion_tokens, tokens_saved, usd_saved, usd_spent) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (hour_ms, tenant, namespace, model, dialect) DO UPDATE SET hits = usage_hourly.hits + excluded.hits, \
     semantic_hits = usage_hourly.semantic_hits + excluded.semantic_hits, misses = usage_hourly.misses + excluded.misses, \
     prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens, \
     completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens, \
     tokens_saved = usage_hourly.tokens_saved + excluded.tokens_saved, \
     usd_saved = usage_hourly.usd_saved + excluded.usd_saved, usd_spent = usage_hourly.usd_spent + excluded.usd_spent";

/// Like [`INSERT_SQL`], but an existing row wins (reconciliation).
pub(crate) fn insert_if_absent_sql() -> String {
    let head = INSERT_SQL.split(" ON CONFLICT").next().unwrap_or(INSERT_SQL);
    format!("{head} ON CONFLICT (cache_key) DO NOTHING")
}

/// The columns of a bulk page: everything but the stored request.
pub const PAGE_COLUMNS: &str = "cache_key, tenant, namespace, endpoint, model, artifact_sha256, request_bytes, \
     response_bytes, prompt_tokens, completion_tokens, cost_usd, created_at_ms, expires_at_ms, last_hit_at_ms, \
     hit_count, artifact_missing";

/// Binds an entry's columns, in [`INSERT_SQL`] order, to a query of either engine.
macro_rules! bind_entry {
    ($q:expr, $e:expr) => {
        $q.bind($e.key.hex())
            .bind($e.tenant.clone())
            .bind($e.namespace.clone())
            .bind($e.endpoint.clone())
            .bind($e.model.clone())
            .bind($e.artifact.hex())
            .bind($e.request_bytes as i64)
            .bind($e.response_bytes as i64)
            .bind($e.prompt_tokens as i64)
            .bind($e.completion_tokens as i64)
            .bind($e.cost_usd)
            .bind($e.created_at_ms)
            .bind($e.expires_at_ms)
            .bind($e.last_hit_at_ms)
            .bind($e.hit_count as i64)
            .bind($e.request.clone())
    };
}
pub(crate) use bind_entry;

/// The recovery queries of the [`super::Metadata`] trait, written once for
/// both SQL engines. The engine type provides `sql(&str)` (placeholder
/// dialect), `ready()`, `reader()` and `writer()`.
macro_rules! recovery_queries {
    ($ty:ty) => {
        impl $ty {
            async fn q_entries_page(&self, after: Option<CacheKey>, limit: u32) -> Result<Vec<EntryRecord>> {
                self.ready().await?;
                let text = format!(
                    "SELECT {} FROM entries WHERE cache_key > $1 ORDER BY cache_key LIMIT $2",
                    super::metadata_sql::PAGE_COLUMNS
                );
                let sql = Self::sql(&text);
                let rows = sqlx::query(&sql)
                    .bind(after.map(|k| k.hex()).unwrap_or_default())
                    .bind(limit as i64)
                    .fetch_all(self.reader())
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_entry).collect()
            }

            async fn q_insert_missing(&self, entries: Vec<EntryRecord>) -> Result<u64> {
                self.ready().await?;
                let text = super::metadata_sql::insert_if_absent_sql();
                let sql = Self::sql(&text);
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let mut n = 0;
                for e in &entries {
                    let q = super::metadata_sql::bind_entry!(sqlx::query(&sql), e);
                    n += q.execute(&mut *tx).await.map_err(map_err)?.rows_affected();
                }
                tx.commit().await.map_err(map_err)?;
                Ok(n)
            }

            async fn q_set_missing(&self, keys: Vec<CacheKey>, missing: bool) -> Result<u64> {
                self.ready().await?;
                let sql = Self::sql("UPDATE entries SET artifact_missing = $1 WHERE cache_key = $2 AND artifact_missing <> $1");
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let mut n = 0;
                for k in &keys {
                    n += sqlx::query(&sql)
                        .bind(missing as i64)
                        .bind(k.hex())
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                }
                tx.commit().await.map_err(map_err)?;
                Ok(n)
            }

            async fn q_missing(&self, now_ms: i64, limit: u32) -> Result<Vec<EntryRecord>> {
                self.ready().await?;
                let sql = Self::sql(
                    "SELECT * FROM entries WHERE artifact_missing = 1 AND expires_at_ms > $1                      ORDER BY hit_count * cost_usd DESC, hit_count DESC, cache_key LIMIT $2",
                );
                let rows = sqlx::query(&sql)
                    .bind(now_ms)
                    .bind(limit as i64)
                    .fetch_all(self.reader())
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_entry).collect()
            }

            async fn q_expired(&self, from_ms: i64, to_ms: i64, limit: u32) -> Result<Vec<EntryRecord>> {
                self.ready().await?;
                let sql = Self::sql(
                    "SELECT * FROM entries WHERE expires_at_ms > $1 AND expires_at_ms <= $2 AND artifact_missing = 0                      ORDER BY hit_count DESC, cost_usd DESC, cache_key LIMIT $3",
                );
                let rows = sqlx::query(&sql)
                    .bind(from_ms)
                    .bind(to_ms)
                    .bind(limit as i64)
                    .fetch_all(self.reader())
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_entry).collect()
            }

            async fn q_record_usage(&self, rows: Vec<super::UsageRow>) -> Result<()> {
                self.ready().await?;
                let sql = Self::sql(super::metadata_sql::USAGE_UPSERT_SQL);
                let mut rows = rows;
                // Key order: concurrent flushes from replicas take row locks in the same order.
                rows.sort_by(|a, b| {
                    (a.hour_ms, &a.tenant, &a.namespace, &a.model, &a.dialect).cmp(&(
                        b.hour_ms,
                        &b.tenant,
                        &b.namespace,
                        &b.model,
                        &b.dialect,
                    ))
                });
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                for r in &rows {
                    sqlx::query(&sql)
                        .bind(r.hour_ms)
                        .bind(&r.tenant)
                        .bind(&r.namespace)
                        .bind(&r.model)
                        .bind(&r.dialect)
                        .bind(r.hits as i64)
                        .bind(r.semantic_hits as i64)
                        .bind(r.misses as i64)
                        .bind(r.prompt_tokens as i64)
                        .bind(r.completion_tokens as i64)
                        .bind(r.tokens_saved as i64)
                        .bind(r.usd_saved)
                        .bind(r.usd_spent)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                tx.commit().await.map_err(map_err)
            }

            async fn q_usage_since(&self, since_ms: i64) -> Result<Vec<super::UsageRow>> {
                use sqlx::Row as _;
                self.ready().await?;
                let sql = Self::sql(
                    "SELECT hour_ms, tenant, namespace, model, dialect, hits, semantic_hits, misses, prompt_tokens, \
                     completion_tokens, tokens_saved, usd_saved, usd_spent FROM usage_hourly \
                     WHERE hour_ms >= $1 ORDER BY hour_ms, tenant, namespace, model, dialect",
                );
                let rows = sqlx::query(&sql)
                    .bind(since_ms)
                    .fetch_all(self.reader())
                    .await
                    .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        let n = |c: &str| r.try_get::<i64, _>(c).map(|v| v.max(0) as u64).map_err(map_err);
                        Ok(super::UsageRow {
                            hour_ms: r.try_get("hour_ms").map_err(map_err)?,
                            tenant: r.try_get("tenant").map_err(map_err)?,
                            namespace: r.try_get("namespace").map_err(map_err)?,
                            model: r.try_get("model").map_err(map_err)?,
                            dialect: r.try_get("dialect").map_err(map_err)?,
                            hits: n("hits")?,
                            semantic_hits: n("semantic_hits")?,
                            misses: n("misses")?,
                            prompt_tokens: n("prompt_tokens")?,
                            completion_tokens: n("completion_tokens")?,
                            tokens_saved: n("tokens_saved")?,
                            usd_saved: r.try_get("usd_saved").map_err(map_err)?,
                            usd_spent: r.try_get("usd_spent").map_err(map_err)?,
                        })
                    })
                    .collect()
            }

            async fn q_hourly(&self, since_ms: i64) -> Result<Vec<(i64, u64)>> {
                use sqlx::Row as _;
                self.ready().await?;
                let sql = Self::sql(
                    "SELECT created_at_ms / 3600000 AS h, COUNT(*) AS n FROM entries                      WHERE created_at_ms >= $1 GROUP BY created_at_ms / 3600000 ORDER BY h",
                );
                let rows = sqlx::query(&sql)
                    .bind(since_ms)
                    .fetch_all(self.reader())
                    .await
                    .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        let h: i64 = r.try_get("h").map_err(map_err)?;
                        let n: i64 = r.try_get("n").map_err(map_err)?;
                        Ok((h * 3_600_000, n as u64))
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use recovery_queries;

/// The trait methods that forward to [`recovery_queries`].
/// The `n`th placeholder of a batch statement: `$n` for PostgreSQL, a bare
/// `?` for SQLite (in order). Numbered `?NNN` would cost SQLite a scan of the
/// statement's parameter names for every value bound: quadratic in a
/// statement of a thousand values.
pub fn mark(n: usize, numbered: bool) -> String {
    if numbered {
        format!("${n}")
    } else {
        "?".to_string()
    }
}

/// `INSERT_SQL` for `rows` rows in one statement.
pub(crate) fn insert_many_sql(rows: usize, numbered: bool) -> String {
    let (head, rest) = INSERT_SQL.split_once("VALUES (").unwrap_or((INSERT_SQL, ""));
    let (_, tail) = rest.split_once(") ON CONFLICT").unwrap_or((rest, ""));
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * 80);
    sql.push_str(head);
    sql.push_str("VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 1..=16 {
            sql.push_str(&mark(r * 16 + c, numbered));
            sql.push_str(", ");
        }
        sql.push_str("0)");
    }
    sql.push_str(" ON CONFLICT");
    sql.push_str(tail);
    sql
}

/// Audit events, `rows` of them in one statement.
pub(crate) fn audit_many_sql(rows: usize, numbered: bool) -> String {
    let mut sql =
        String::from("INSERT INTO audit_log (event_id, at_ms, tenant, actor, action, cache_key, detail) VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        let marks: Vec<String> = (1..=7).map(|c| mark(r * 7 + c, numbered)).collect();
        sql.push('(');
        sql.push_str(&marks.join(", "));
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
    sql
}

/// Rows per statement of a batched write (16 values per entry, 7 per event).
pub const ROWS_PER_STATEMENT: usize = 64;

/// The store path's writes, written once for both SQL engines: entries
/// upserted (each reporting the artifact it replaced) and audit events
/// appended, all in one transaction, in a few statements: one lookup of the
/// entries' current artifacts (`$lock` locks their rows where the engine
/// can), then multi-row inserts. A batch that names a key twice is written
/// row by row, in order. The engine file provides `insert_query(&EntryRecord)`.
macro_rules! write_batch_query {
    ($ty:ty, $lock:expr, $numbered:expr) => {
        impl $ty {
            async fn q_write_batch(
                &self,
                entries: Vec<EntryRecord>,
                audit: Vec<AuditEvent>,
            ) -> Result<Vec<Option<ArtifactId>>> {
                use super::metadata_sql::{audit_many_sql, insert_many_sql, ROWS_PER_STATEMENT};
                let numbered: bool = $numbered;
                self.ready().await?;
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let keys: Vec<String> = entries.iter().map(|e| e.key.hex()).collect();
                let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len() == keys.len();
                let mut old: std::collections::HashMap<String, String> = std::collections::HashMap::new();
                for chunk in keys.chunks(ROWS_PER_STATEMENT * 4) {
                    let marks: Vec<String> = (1..=chunk.len())
                        .map(|i| super::metadata_sql::mark(i, numbered))
                        .collect();
                    let sql = format!(
                        "SELECT cache_key, artifact_sha256 FROM entries WHERE cache_key IN ({}) {}",
                        marks.join(", "),
                        $lock
                    );
                    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
                    for k in chunk {
                        q = q.bind(k);
                    }
                    old.extend(q.fetch_all(&mut *tx).await.map_err(map_err)?);
                }
                if distinct {
                    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
                        let sql = insert_many_sql(chunk.len(), numbered);
                        let mut q = sqlx::query(&sql);
                        for e in chunk {
                            q = super::metadata_sql::bind_entry!(q, e);
                        }
                        q.execute(&mut *tx).await.map_err(map_err)?;
                    }
                } else {
                    for e in &entries {
                        insert_query(e).execute(&mut *tx).await.map_err(map_err)?;
                    }
                }
                for chunk in audit.chunks(ROWS_PER_STATEMENT * 2) {
                    let sql = audit_many_sql(chunk.len(), numbered);
                    let mut q = sqlx::query(&sql);
                    for e in chunk {
                        q = q
                            .bind(&e.id)
                            .bind(e.at_ms)
                            .bind(&e.tenant)
                            .bind(&e.actor)
                            .bind(&e.action)
                            .bind(&e.cache_key)
                            .bind(e.detail.to_string());
                    }
                    q.execute(&mut *tx).await.map_err(map_err)?;
                }
                tx.commit().await.map_err(map_err)?;
                // What each entry replaced, in order: a key named twice replaces
                // its own earlier row the second time.
                Ok(entries
                    .iter()
                    .zip(keys)
                    .map(|(e, k)| {
                        old.insert(k, e.artifact.hex())
                            .and_then(|h| ArtifactId::from_hex(&h))
                            .filter(|o| *o != e.artifact)
                    })
                    .collect())
            }
        }
    };
}
pub(crate) use write_batch_query;

/// The [`super::Metadata`] write methods (the store path's, over
/// `q_write_batch`), for both SQL engines.
macro_rules! write_methods {
    () => {
        fn upsert_entry(&self, entry: EntryRecord) -> BoxFuture<'_, Result<Option<ArtifactId>>> {
            Box::pin(async move { Ok(self.q_write_batch(vec![entry], Vec::new()).await?.pop().flatten()) })
        }

        fn write_batch(
            &self,
            entries: Vec<EntryRecord>,
            audit: Vec<AuditEvent>,
        ) -> BoxFuture<'_, Result<Vec<Option<ArtifactId>>>> {
            Box::pin(self.q_write_batch(entries, audit))
        }

        fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move { self.q_write_batch(Vec::new(), events).await.map(|_| ()) })
        }
    };
}
pub(crate) use write_methods;

macro_rules! recovery_methods {
    () => {
        fn entries_page(&self, after: Option<CacheKey>, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
            Box::pin(self.q_entries_page(after, limit))
        }
        fn insert_missing_entries(&self, entries: Vec<EntryRecord>) -> BoxFuture<'_, Result<u64>> {
            Box::pin(self.q_insert_missing(entries))
        }
        fn select_entries(
            &self,
            filter: super::filter::EntryFilter,
            after: Option<CacheKey>,
            limit: u32,
        ) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
            Box::pin(async move {
                Ok(self
                    .q_select(filter, after, Some(limit))
                    .await?
                    .unwrap_or_default())
            })
        }
        fn count_selected(&self, filter: super::filter::EntryFilter) -> BoxFuture<'_, Result<u64>> {
            Box::pin(async move { Ok(self.q_select(filter, None, None).await?.err().unwrap_or(0)) })
        }
        fn delete_entries(&self, entries: Vec<(CacheKey, ArtifactId)>) -> BoxFuture<'_, Result<u64>> {
            Box::pin(self.q_delete_entries(entries))
        }
        fn replace_artifacts(&self, swaps: Vec<super::ArtifactSwap>) -> BoxFuture<'_, Result<Vec<bool>>> {
            Box::pin(self.q_replace_artifacts(swaps))
        }
        fn set_artifact_missing(&self, keys: Vec<CacheKey>, missing: bool) -> BoxFuture<'_, Result<u64>> {
            Box::pin(self.q_set_missing(keys, missing))
        }
        fn missing_entries(&self, now_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
            Box::pin(self.q_missing(now_ms, limit))
        }
        fn expired_entries(&self, from_ms: i64, to_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
            Box::pin(self.q_expired(from_ms, to_ms, limit))
        }
        fn hourly_counts(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<(i64, u64)>>> {
            Box::pin(self.q_hourly(since_ms))
        }
        fn record_usage(&self, rows: Vec<super::UsageRow>) -> BoxFuture<'_, Result<()>> {
            Box::pin(self.q_record_usage(rows))
        }
        fn usage_since(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<super::UsageRow>>> {
            Box::pin(self.q_usage_since(since_ms))
        }
    };
}
pub(crate) use recovery_methods;

pub fn map_err(e: sqlx::Error) -> BackendError {
    match e {
        sqlx::Error::PoolTimedOut => BackendError::Timeout {
            backend: NAME,
            after_ms: 0,
        },
        sqlx::Error::Io(e) => BackendError::unavailable(NAME, e),
        sqlx::Error::Tls(e) => BackendError::unavailable(NAME, e),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => BackendError::unavailable(NAME, e),
        other => BackendError::Protocol {
            backend: NAME,
            detail: other.to_string(),
        },
    }
}

pub fn corrupt(what: &str) -> BackendError {
    BackendError::Corrupt {
        backend: NAME,
        detail: format!("bad {what} in a metadata row"),
    }
}

/// Decodes an `entries` row from either engine.
pub(crate) fn row_to_entry<'r, R>(r: &'r R) -> Result<EntryRecord>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
{
    let int = |c: &'static str| r.try_get::<i64, _>(c).map_err(map_err);
    let text = |c: &'static str| r.try_get::<String, _>(c).map_err(map_err);
    Ok(EntryRecord {
        key: CacheKey::from_hex(&text("cache_key")?).ok_or_else(|| corrupt("cache_key"))?,
        tenant: text("tenant")?,
        namespace: text("namespace")?,
        endpoint: text("endpoint")?,
        model: text("model")?,
        artifact: ArtifactId::from_hex(&text("artifact_sha256")?).ok_or_else(|| corrupt("artifact_sha256"))?,
        request_bytes: int("request_bytes")? as u64,
        response_bytes: int("response_bytes")? as u64,
        prompt_tokens: int("prompt_tokens")? as u64,
        completion_tokens: int("completion_tokens")? as u64,
        cost_usd: r.try_get::<f64, _>("cost_usd").map_err(map_err)?,
        created_at_ms: int("created_at_ms")?,
        expires_at_ms: int("expires_at_ms")?,
        last_hit_at_ms: r.try_get::<Option<i64>, _>("last_hit_at_ms").map_err(map_err)?,
        hit_count: int("hit_count")? as u64,
        // Absent from bulk pages, which do not select it.
        request: r.try_get::<Option<String>, _>("request_json").ok().flatten(),
        artifact_missing: r.try_get::<i64, _>("artifact_missing").unwrap_or(0) != 0,
    })
}

/// Decodes an `audit_log` row from either engine.
pub(crate) fn row_to_audit<'r, R>(r: &'r R) -> Result<AuditEvent>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let detail: String = r.try_get("detail").map_err(map_err)?;
    Ok(AuditEvent {
        id: r.try_get("event_id").map_err(map_err)?,
        at_ms: r.try_get("at_ms").map_err(map_err)?,
        tenant: r.try_get::<Option<String>, _>("tenant").map_err(map_err)?,
        actor: r.try_get("actor").map_err(map_err)?,
        action: r.try_get("action").map_err(map_err)?,
        cache_key: r.try_get::<Option<String>, _>("cache_key").map_err(map_err)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
    })
}

/// Decodes the pointer columns of a live-entries row.
pub(crate) fn row_to_pointer<'r, R>(r: &'r R) -> Result<(CacheKey, super::IndexEntry)>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let key: String = r.try_get("cache_key").map_err(map_err)?;
    let artifact: String = r.try_get("artifact_sha256").map_err(map_err)?;
    let (Some(key), Some(artifact)) = (CacheKey::from_hex(&key), ArtifactId::from_hex(&artifact)) else {
        return Err(corrupt("key or artifact"));
    };
    Ok((
        key,
        super::IndexEntry {
            artifact,
            size: r.try_get::<i64, _>("response_bytes").map_err(map_err)? as u64,
            created_at_ms: r.try_get("created_at_ms").map_err(map_err)?,
            expires_at_ms: r.try_get("expires_at_ms").map_err(map_err)?,
        },
    ))
}

/// Restores an entry with everything it had (counters, stored request, the
/// missing mark); a row that exists is left alone (it is newer than the backup).
pub const RESTORE_ENTRY_SQL: &str =
    "INSERT INTO entries (cache_key, tenant, namespace, endpoint, model, artifact_sha256, \
     request_bytes, response_bytes, prompt_tokens, completion_tokens, cost_usd, created_at_ms, expires_at_ms, \
     last_hit_at_ms, hit_count, request_json, artifact_missing) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
     ON CONFLICT (cache_key) DO NOTHING";

/// Restores a job (pending work comes back queued, without a lease); one that
/// collides with a live job of the same unique key is skipped.
pub const RESTORE_JOB_SQL: &str = "INSERT INTO jobs (kind, payload, priority, state, attempts, max_attempts, \
     run_after_ms, unique_key, namespace, created_at_ms, finished_at_ms, updated_at_ms, last_error, result) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING";

/// The keys and columns of an exported entry's JSON (`EntryRecord`'s serde
/// names), as `'name', column` pairs for `json_object` / `json_build_object`.
pub const ENTRY_JSON_FIELDS: &str = "'key', cache_key, 'tenant', tenant, 'namespace', namespace, \
     'endpoint', endpoint, 'model', model, 'artifact', artifact_sha256, 'request_bytes', request_bytes, \
     'response_bytes', response_bytes, 'prompt_tokens', prompt_tokens, 'completion_tokens', completion_tokens, \
     'cost_usd', cost_usd, 'created_at_ms', created_at_ms, 'expires_at_ms', expires_at_ms, \
     'last_hit_at_ms', last_hit_at_ms, 'hit_count', hit_count, 'request', request_json";

/// Rows per page of a snapshot.
pub const SNAPSHOT_PAGE: i64 = 5000;

/// The snapshot methods of the [`super::Metadata`] trait (backups), written
/// once for both SQL engines. `$begin` is run first inside the read
/// transaction (PostgreSQL makes it a repeatable-read snapshot; SQLite's WAL
/// gives a read transaction one snapshot by itself).
macro_rules! snapshot_queries {
    ($ty:ty, $begin:expr, $order:expr, $json:expr) => {
        impl $ty {
            async fn q_export(&self, out: tokio::sync::mpsc::Sender<super::SnapshotBatch>) -> Result<()> {
                use super::metadata_sql::SNAPSHOT_PAGE;
                use super::SnapshotBatch;
                let gone = || BackendError::Protocol {
                    backend: NAME,
                    detail: "the snapshot's reader went away".into(),
                };
                self.ready().await?;
                let mut tx = self.reader().begin().await.map_err(map_err)?;
                let begin: &str = $begin;
                if !begin.is_empty() {
                    sqlx::query(begin).execute(&mut *tx).await.map_err(map_err)?;
                }
                // Pages in storage order where the engine has one (`$order`:
                // SQLite's rowid walks the table; a keyed walk costs a seek per row).
                // Each entry's JSON is built by the engine (`$json`).
                let order: &str = $order;
                let json: &str = $json;
                let sql = Self::sql(&format!(
                    "SELECT {order} AS page_pos, artifact_sha256, response_bytes, artifact_missing, created_at_ms, \
                     expires_at_ms, {json} AS line FROM entries WHERE {order} > $1 ORDER BY {order} LIMIT $2"
                ));
                let mut after: Option<String> = None;
                let mut after_pos: i64 = i64::MIN;
                loop {
                    let q = sqlx::query(&sql);
                    let q = if order == "cache_key" {
                        q.bind(after.clone().unwrap_or_default())
                    } else {
                        q.bind(after_pos)
                    };
                    let rows = q.bind(SNAPSHOT_PAGE).fetch_all(&mut *tx).await.map_err(map_err)?;
                    let Some(last) = rows.last() else { break };
                    if order == "cache_key" {
                        after = Some(sqlx::Row::try_get::<String, _>(last, "page_pos").map_err(map_err)?);
                    } else {
                        after_pos = sqlx::Row::try_get::<i64, _>(last, "page_pos").map_err(map_err)?;
                    }
                    let page = rows
                        .iter()
                        .map(|r| {
                            use sqlx::Row as _;
                            let art: String = r.try_get("artifact_sha256").map_err(map_err)?;
                            Ok(super::EntryLine {
                                artifact: ArtifactId::from_hex(&art)
                                    .ok_or_else(|| super::metadata_sql::corrupt("artifact_sha256"))?,
                                response_bytes: r.try_get::<i64, _>("response_bytes").map_err(map_err)? as u64,
                                artifact_missing: r.try_get::<i64, _>("artifact_missing").map_err(map_err)? != 0,
                                created_at_ms: r.try_get("created_at_ms").map_err(map_err)?,
                                expires_at_ms: r.try_get("expires_at_ms").map_err(map_err)?,
                                json: r.try_get("line").map_err(map_err)?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    out.send(SnapshotBatch::EntryLines(page)).await.map_err(|_| gone())?;
                }
                let sql = Self::sql("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
                let mut seq = 0i64;
                loop {
                    let rows = sqlx::query(&sql)
                        .bind(seq)
                        .bind(SNAPSHOT_PAGE)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    let Some(last) = rows.last() else { break };
                    seq = sqlx::Row::try_get::<i64, _>(last, "seq").map_err(map_err)?;
                    let page = rows.iter().map(row_to_audit).collect::<Result<Vec<_>>>()?;
                    out.send(SnapshotBatch::Audit(page)).await.map_err(|_| gone())?;
                }
                let sql = Self::sql("SELECT * FROM jobs WHERE id > $1 ORDER BY id LIMIT $2");
                let mut id = 0i64;
                loop {
                    let rows = sqlx::query(&sql)
                        .bind(id)
                        .bind(SNAPSHOT_PAGE)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    let Some(last) = rows.last() else { break };
                    id = sqlx::Row::try_get::<i64, _>(last, "id").map_err(map_err)?;
                    let page = rows
                        .iter()
                        .map(crate::queue::sql::row_to_job)
                        .collect::<Result<Vec<_>>>()?;
                    out.send(SnapshotBatch::Jobs(page)).await.map_err(|_| gone())?;
                }
                tx.rollback().await.map_err(map_err)?;
                Ok(())
            }

            async fn q_import(&self, batch: super::SnapshotBatch) -> Result<u64> {
                use super::SnapshotBatch;
                self.ready().await?;
                let batch = match batch {
                    SnapshotBatch::EntryLines(lines) => SnapshotBatch::Entries(
                        lines
                            .iter()
                            .map(|l| serde_json::from_str::<EntryRecord>(&l.json))
                            .collect::<std::result::Result<Vec<_>, _>>()
                            .map_err(|e| BackendError::Protocol {
                                backend: NAME,
                                detail: format!("an exported entry does not parse: {e}"),
                            })?,
                    ),
                    other => other,
                };
                let mut n = 0;
                match batch {
                    // Converted above.
                    SnapshotBatch::EntryLines(_) => {}
                    SnapshotBatch::Entries(entries) => {
                        let sql = Self::sql(super::metadata_sql::RESTORE_ENTRY_SQL);
                        let mut tx = self.writer().begin().await.map_err(map_err)?;
                        for e in &entries {
                            let q =
                                super::metadata_sql::bind_entry!(sqlx::query(&sql), e).bind(e.artifact_missing as i64);
                            n += q.execute(&mut *tx).await.map_err(map_err)?.rows_affected();
                        }
                        tx.commit().await.map_err(map_err)?;
                    }
                    SnapshotBatch::Audit(events) => {
                        n = events.len() as u64;
                        super::Metadata::append_audit(self, events).await?;
                    }
                    SnapshotBatch::Jobs(jobs) => {
                        use crate::queue::JobState;
                        let sql = Self::sql(super::metadata_sql::RESTORE_JOB_SQL);
                        let mut tx = self.writer().begin().await.map_err(map_err)?;
                        for j in &jobs {
                            // Finished work stays history; pending work is queued again, without its lease.
                            let state = match j.state {
                                JobState::Succeeded => continue,
                                JobState::Dead => "dead",
                                _ => "queued",
                            };
                            n += sqlx::query(&sql)
                                .bind(&j.kind)
                                .bind(j.payload.to_string())
                                .bind(j.priority)
                                .bind(state)
                                .bind(j.attempts)
                                .bind(j.max_attempts)
                                .bind(j.run_after_ms)
                                .bind(&j.unique_key)
                                .bind(&j.namespace)
                                .bind(j.created_at_ms)
                                .bind(j.finished_at_ms)
                                .bind(super::now_ms())
                                .bind(&j.last_error)
                                .bind(j.result.as_ref().map(|r| r.to_string()))
                                .execute(&mut *tx)
                                .await
                                .map_err(map_err)?
                                .rows_affected();
                        }
                        tx.commit().await.map_err(map_err)?;
                    }
                }
                Ok(n)
            }
        }
    };
}
pub(crate) use snapshot_queries;
