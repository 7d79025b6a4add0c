//! PostgreSQL metadata through sqlx (runtime queries only). The pool connects
//! lazily, so a gateway starts while PostgreSQL is down; the schema is
//! migrated (under an advisory lock, so replicas do not race) on the first
//! successful use.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::OnceCell;

use super::metadata_sql::{
    bind_entry, map_err, recovery_methods, recovery_queries, row_to_audit, row_to_entry, row_to_pointer,
    snapshot_queries, write_batch_query, write_methods, INSERT_SQL, NAME,
};
use super::{
    ArtifactId, AuditEvent, BackendError, BoxFuture, CheckInfo, EntryRecord, HitUpdate, IndexEntry, Metadata, Result,
};
use crate::key::CacheKey;

pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_jobs.sql")),
    (3, include_str!("../../migrations/postgres/0003_recovery.sql")),
    (4, include_str!("../../migrations/postgres/0004_usage.sql")),
    (5, include_str!("../../migrations/postgres/0005_usage_dialect.sql")),
    (6, include_str!("../../migrations/postgres/0006_api_keys.sql")),
    (7, include_str!("../../migrations/postgres/0007_data_keys.sql")),
    (8, include_str!("../../migrations/postgres/0008_lean_entries.sql")),
];

/// The statements of a migration file (no statement in them contains `;`).
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(';').map(str::trim).filter(|s| {
        s.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with("--")
        })
    })
}

pub struct PostgresMetadata {
    pool: PgPool,
    migrated: OnceCell<()>,
}

impl PostgresMetadata {
    /// Builds the pool without connecting.
    pub fn new(url: &str, max_connections: u32, timeout: Duration) -> Result<Self> {
        let opts: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| BackendError::Protocol {
            backend: NAME,
            detail: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(timeout.max(Duration::from_millis(100)))
            .connect_lazy_with(opts.application_name("recache"));
        Ok(Self {
            pool,
            migrated: OnceCell::new(),
        })
    }

    /// Connects and applies pending migrations now, rather than on first use.
    pub async fn prepare(&self) -> Result<()> {
        self.ready().await
    }

    /// Applies pending migrations once per process (retried until it succeeds).
    pub(crate) async fn ready(&self) -> Result<()> {
        self.migrated.get_or_try_init(|| self.migrate()).await.map(|_| ())
    }

    fn migrate(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.migrate_inner())
    }

    async fn migrate_inner(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7261626163686501)")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        for (version, sql) in MIGRATIONS {
            let done: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            if done.is_none() {
                for stmt in statements(sql) {
                    sqlx::query(stmt).execute(&mut *tx).await.map_err(map_err)?;
                }
                sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)")
                    .bind(version)
                    .bind(super::now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tracing::info!(version, "metadata (postgres): applied schema migration");
            }
        }
        tx.commit().await.map_err(map_err)
    }

    /// Inserts many entries in one transaction (seeding and repair).
    pub async fn bulk_insert(&self, entries: &[EntryRecord]) -> Result<()> {
        self.ready().await?;
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for e in entries {
            insert_query(e).execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

fn insert_query(e: &EntryRecord) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    bind_entry!(sqlx::query(INSERT_SQL), e)
}

impl PostgresMetadata {
    fn sql(s: &str) -> String {
        s.to_string()
    }
    pub(crate) fn reader(&self) -> &PgPool {
        &self.pool
    }
    pub(crate) fn writer(&self) -> &PgPool {
        &self.pool
    }
}

recovery_queries!(PostgresMetadata);
super::metadata_purge::purge_queries!(PostgresMetadata);
super::data_keys::data_key_store!(PostgresMetadata);
super::keys::key_store!(PostgresMetadata);
write_batch_query!(PostgresMetadata, "FOR UPDATE", true);
snapshot_queries!(
    PostgresMetadata,
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    "cache_key",
    &format!(
        "json_build_object({}, 'artifact_missing', artifact_missing <> 0)::text",
        super::metadata_sql::ENTRY_JSON_FIELDS
    )
);

impl PostgresMetadata {
    const CLAIM: &'static str = crate::queue::sql::CLAIM_PG;
    fn kinds_arg(kinds: &[String]) -> Vec<String> {
        kinds.to_vec()
    }
}

crate::queue::sql::sql_queue!(PostgresMetadata);

impl Metadata for PostgresMetadata {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    write_methods!();
    super::metadata_audit::audit_methods!();

    fn get_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<EntryRecord>>> {
        Box::pin(async move {
            self.ready().await?;
            let row = sqlx::query("SELECT * FROM entries WHERE cache_key = $1")
                .bind(key.hex())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
            row.as_ref().map(row_to_entry).transpose()
        })
    }

    fn delete_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            self.ready().await?;
            let r = sqlx::query("DELETE FROM entries WHERE cache_key = $1")
                .bind(key.hex())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(r.rows_affected() > 0)
        })
    }

    fn record_hits(&self, hits: Vec<HitUpdate>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.ready().await?;
            // One statement, rows in key order: concurrent flushes from replicas cannot deadlock.
            let mut hits = hits;
            hits.sort_by_key(|h| h.key);
            let keys: Vec<String> = hits.iter().map(|h| h.key.hex()).collect();
            let counts: Vec<i64> = hits.iter().map(|h| h.count as i64).collect();
            let lasts: Vec<i64> = hits.iter().map(|h| h.last_hit_ms).collect();
            sqlx::query(
                "UPDATE entries e SET hit_count = e.hit_count + h.n, \
                 last_hit_at_ms = GREATEST(COALESCE(e.last_hit_at_ms, 0), h.last) \
                 FROM (SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS t(k, n, last) ORDER BY k) h \
                 WHERE e.cache_key = h.k",
            )
            .bind(&keys)
            .bind(&counts)
            .bind(&lasts)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
            Ok(())
        })
    }

    fn live_entries(&self, since_ms: i64, now_ms: i64) -> BoxFuture<'_, Result<Vec<(CacheKey, IndexEntry)>>> {
        Box::pin(async move {
            self.ready().await?;
            let mut out = Vec::new();
            let mut rows = sqlx::query(
                "SELECT cache_key, artifact_sha256, response_bytes, created_at_ms, expires_at_ms FROM entries \
                 WHERE created_at_ms >= $1 AND expires_at_ms > $2",
            )
            .bind(since_ms)
            .bind(now_ms)
            .fetch(&self.pool);
            while let Some(r) = rows.try_next().await.map_err(map_err)? {
                out.push(row_to_pointer(&r)?);
            }
            Ok(out)
        })
    }

    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<Vec<ArtifactId>>> {
        Box::pin(async move {
            self.ready().await?;
            let rows: Vec<String> =
                sqlx::query_scalar("DELETE FROM entries WHERE expires_at_ms <= $1 RETURNING artifact_sha256")
                    .bind(before_ms)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
            Ok(rows.iter().filter_map(|h| ArtifactId::from_hex(h)).collect())
        })
    }

    fn recent_audit(&self, limit: u32) -> BoxFuture<'_, Result<Vec<AuditEvent>>> {
        Box::pin(async move {
            self.ready().await?;
            let rows = sqlx::query(
                "SELECT event_id, at_ms, tenant, actor, action, cache_key, detail FROM audit_log \
                 ORDER BY seq DESC LIMIT $1",
            )
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            rows.iter().map(row_to_audit).collect()
        })
    }

    fn count_entries(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            self.ready().await?;
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM entries")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(n as u64)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            self.ready().await?;
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            let mut warnings = Vec::new();
            let max_conn: String = sqlx::query_scalar("SHOW max_connections")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            let in_use: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            if let Ok(max) = max_conn.parse::<i64>() {
                if in_use as f64 > max as f64 * 0.8 {
                    warnings.push(format!("{in_use} of {max} connections in use (over 80%)"));
                }
            }
            Ok(CheckInfo {
                version: Some(format!("PostgreSQL {version}")),
                entries: Some(self.count_entries().await?),
                warnings,
            })
        })
    }

    recovery_methods!();
    fn export_snapshot(&self, out: tokio::sync::mpsc::Sender<super::SnapshotBatch>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.q_export(out))
    }
    fn import_snapshot(&self, batch: super::SnapshotBatch) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.q_import(batch))
    }
}
