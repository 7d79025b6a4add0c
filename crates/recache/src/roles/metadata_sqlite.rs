//! The embedded metadata store: SQLite through sqlx (runtime queries only),
//! WAL mode, schema migrations embedded from `migrations/sqlite`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::Row;

use super::{
    ArtifactId, AuditEvent, BackendError, BoxFuture, CheckInfo, EntryRecord, HitUpdate, IndexEntry, Metadata, Result,
};
use crate::key::CacheKey;

const NAME: &str = "metadata";

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/sqlite/0001_init.sql"))];

/// SQLite allows one writer at a time, and a transaction that reads before
/// it writes cannot wait for the lock (it fails with SQLITE_BUSY). So every
/// write goes through a one-connection pool, where writers queue instead;
/// reads use their own pool and never block on writers (WAL).
pub struct SqliteMetadata {
    pool: SqlitePool,
    writer: SqlitePool,
}

pub(crate) fn map_err(e: sqlx::Error) -> BackendError {
    match e {
        sqlx::Error::PoolTimedOut => BackendError::Timeout {
            backend: NAME,
            after_ms: 0,
        },
        sqlx::Error::Io(e) => BackendError::unavailable(NAME, e),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => BackendError::unavailable(NAME, e),
        other => BackendError::Protocol {
            backend: NAME,
            detail: other.to_string(),
        },
    }
}

impl SqliteMetadata {
    pub async fn open(path: &Path, max_connections: u32, timeout: Duration) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BackendError::unavailable(NAME, e))?;
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(map_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout.max(Duration::from_millis(100)) * 4)
            .connect_with(opts.clone())
            .await
            .map_err(map_err)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(timeout.max(Duration::from_millis(100)))
            .connect_with(opts)
            .await
            .map_err(map_err)?;
        let me = Self { pool, writer };
        me.migrate().await?;
        Ok(me)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)")
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.writer.begin().await.map_err(map_err)?;
            let done: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            if done.is_none() {
                sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(map_err)?;
                sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, ?)")
                    .bind(version)
                    .bind(super::now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tracing::info!(version, "metadata: applied schema migration");
            }
            tx.commit().await.map_err(map_err)?;
        }
        Ok(())
    }

    /// Inserts many entries in one transaction (benchmark seeding and repair).
    pub async fn bulk_insert(&self, entries: &[EntryRecord]) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        for e in entries {
            insert_query(e).execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

const INSERT_SQL: &str = "INSERT INTO entries (cache_key, tenant, namespace, endpoint, model, artifact_sha256, \
     request_bytes, response_bytes, prompt_tokens, completion_tokens, cost_usd, created_at_ms, expires_at_ms, \
     last_hit_at_ms, hit_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (cache_key) DO UPDATE SET tenant = excluded.tenant, namespace = excluded.namespace, \
     endpoint = excluded.endpoint, model = excluded.model, artifact_sha256 = excluded.artifact_sha256, \
     request_bytes = excluded.request_bytes, response_bytes = excluded.response_bytes, \
     prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, \
     cost_usd = excluded.cost_usd, created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms, \
     last_hit_at_ms = NULL, hit_count = 0";

fn insert_query(e: &EntryRecord) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    sqlx::query(INSERT_SQL)
        .bind(e.key.hex())
        .bind(&e.tenant)
        .bind(&e.namespace)
        .bind(&e.endpoint)
        .bind(&e.model)
        .bind(e.artifact.hex())
        .bind(e.request_bytes as i64)
        .bind(e.response_bytes as i64)
        .bind(e.prompt_tokens as i64)
        .bind(e.completion_tokens as i64)
        .bind(e.cost_usd)
        .bind(e.created_at_ms)
        .bind(e.expires_at_ms)
        .bind(e.last_hit_at_ms)
        .bind(e.hit_count as i64)
}

fn corrupt(what: &str) -> BackendError {
    BackendError::Corrupt {
        backend: NAME,
        detail: format!("bad {what} in entries row"),
    }
}

fn row_to_entry(r: &SqliteRow) -> Result<EntryRecord> {
    let get_i = |c: &str| r.try_get::<i64, _>(c).map_err(map_err);
    let key: String = r.try_get("cache_key").map_err(map_err)?;
    let artifact: String = r.try_get("artifact_sha256").map_err(map_err)?;
    Ok(EntryRecord {
        key: CacheKey::from_hex(&key).ok_or_else(|| corrupt("cache_key"))?,
        tenant: r.try_get("tenant").map_err(map_err)?,
        namespace: r.try_get("namespace").map_err(map_err)?,
        endpoint: r.try_get("endpoint").map_err(map_err)?,
        model: r.try_get("model").map_err(map_err)?,
        artifact: ArtifactId::from_hex(&artifact).ok_or_else(|| corrupt("artifact_sha256"))?,
        request_bytes: get_i("request_bytes")? as u64,
        response_bytes: get_i("response_bytes")? as u64,
        prompt_tokens: get_i("prompt_tokens")? as u64,
        completion_tokens: get_i("completion_tokens")? as u64,
        cost_usd: r.try_get("cost_usd").map_err(map_err)?,
        created_at_ms: get_i("created_at_ms")?,
        expires_at_ms: get_i("expires_at_ms")?,
        last_hit_at_ms: r.try_get("last_hit_at_ms").map_err(map_err)?,
        hit_count: get_i("hit_count")? as u64,
    })
}

impl Metadata for SqliteMetadata {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    fn upsert_entry(&self, entry: EntryRecord) -> BoxFuture<'_, Result<Option<ArtifactId>>> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await.map_err(map_err)?;
            let old: Option<String> = sqlx::query_scalar("SELECT artifact_sha256 FROM entries WHERE cache_key = ?")
                .bind(entry.key.hex())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            insert_query(&entry).execute(&mut *tx).await.map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            Ok(old
                .and_then(|h| ArtifactId::from_hex(&h))
                .filter(|old| *old != entry.artifact))
        })
    }

    fn get_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<EntryRecord>>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT * FROM entries WHERE cache_key = ?")
                .bind(key.hex())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
            row.as_ref().map(row_to_entry).transpose()
        })
    }

    fn delete_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM entries WHERE cache_key = ?")
                .bind(key.hex())
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
            Ok(r.rows_affected() > 0)
        })
    }

    fn record_hits(&self, hits: Vec<HitUpdate>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await.map_err(map_err)?;
            for h in &hits {
                sqlx::query(
                    "UPDATE entries SET hit_count = hit_count + ?, \
                     last_hit_at_ms = MAX(COALESCE(last_hit_at_ms, 0), ?) WHERE cache_key = ?",
                )
                .bind(h.count as i64)
                .bind(h.last_hit_ms)
                .bind(h.key.hex())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            tx.commit().await.map_err(map_err)
        })
    }

    fn live_entries(&self, since_ms: i64, now_ms: i64) -> BoxFuture<'_, Result<Vec<(CacheKey, IndexEntry)>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut rows = sqlx::query(
                "SELECT cache_key, artifact_sha256, response_bytes, created_at_ms, expires_at_ms FROM entries \
                 WHERE created_at_ms >= ? AND expires_at_ms > ?",
            )
            .bind(since_ms)
            .bind(now_ms)
            .fetch(&self.pool);
            while let Some(r) = rows.try_next().await.map_err(map_err)? {
                let key: &str = r.try_get("cache_key").map_err(map_err)?;
                let artifact: &str = r.try_get("artifact_sha256").map_err(map_err)?;
                let (Some(key), Some(artifact)) = (CacheKey::from_hex(key), ArtifactId::from_hex(artifact)) else {
                    return Err(corrupt("key or artifact"));
                };
                out.push((
                    key,
                    IndexEntry {
                        artifact,
                        size: r.try_get::<i64, _>("response_bytes").map_err(map_err)? as u64,
                        created_at_ms: r.try_get("created_at_ms").map_err(map_err)?,
                        expires_at_ms: r.try_get("expires_at_ms").map_err(map_err)?,
                    },
                ));
            }
            Ok(out)
        })
    }

    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<Vec<ArtifactId>>> {
        Box::pin(async move {
            let rows: Vec<String> =
                sqlx::query_scalar("DELETE FROM entries WHERE expires_at_ms <= ? RETURNING artifact_sha256")
                    .bind(before_ms)
                    .fetch_all(&self.writer)
                    .await
                    .map_err(map_err)?;
            Ok(rows.iter().filter_map(|h| ArtifactId::from_hex(h)).collect())
        })
    }

    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await.map_err(map_err)?;
            for e in &events {
                sqlx::query(
                    "INSERT INTO audit_log (event_id, at_ms, tenant, actor, action, cache_key, detail) \
                     VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&e.id)
                .bind(e.at_ms)
                .bind(&e.tenant)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.cache_key)
                .bind(e.detail.to_string())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            tx.commit().await.map_err(map_err)
        })
    }

    fn recent_audit(&self, limit: u32) -> BoxFuture<'_, Result<Vec<AuditEvent>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT event_id, at_ms, tenant, actor, action, cache_key, detail FROM audit_log \
                 ORDER BY seq DESC LIMIT ?",
            )
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            rows.iter()
                .map(|r| {
                    let detail: String = r.try_get("detail").map_err(map_err)?;
                    Ok(AuditEvent {
                        id: r.try_get("event_id").map_err(map_err)?,
                        at_ms: r.try_get("at_ms").map_err(map_err)?,
                        tenant: r.try_get("tenant").map_err(map_err)?,
                        actor: r.try_get("actor").map_err(map_err)?,
                        action: r.try_get("action").map_err(map_err)?,
                        cache_key: r.try_get("cache_key").map_err(map_err)?,
                        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                    })
                })
                .collect()
        })
    }

    fn count_entries(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM entries")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(n as u64)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            let version: String = sqlx::query_scalar("SELECT sqlite_version()")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(CheckInfo {
                version: Some(format!("SQLite {version}")),
                entries: Some(self.count_entries().await?),
                warnings: vec![],
            })
        })
    }
}
