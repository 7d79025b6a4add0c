//! The embedded metadata store: SQLite through sqlx (runtime queries only),
//! WAL mode, schema migrations embedded from `migrations/sqlite`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{
    ArtifactId, AuditEvent, BackendError, BoxFuture, CheckInfo, EntryRecord, HitUpdate, IndexEntry, Metadata, Result,
};
use crate::key::CacheKey;

use super::metadata_sql::{
    bind_entry, map_err, recovery_methods, recovery_queries, row_to_audit, row_to_entry, row_to_pointer,
    snapshot_queries, sqlite_sql, write_batch_query, write_methods, INSERT_SQL, NAME,
};

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_jobs.sql")),
    (3, include_str!("../../migrations/sqlite/0003_recovery.sql")),
    (4, include_str!("../../migrations/sqlite/0004_usage.sql")),
    (5, include_str!("../../migrations/sqlite/0005_usage_dialect.sql")),
    (6, include_str!("../../migrations/sqlite/0006_api_keys.sql")),
    (7, include_str!("../../migrations/sqlite/0007_data_keys.sql")),
    (8, include_str!("../../migrations/sqlite/0008_lean_entries.sql")),
];

/// SQLite allows one writer at a time, and a transaction that reads before
/// it writes cannot wait for the lock (it fails with SQLITE_BUSY). So every
/// write goes through a one-connection pool, where writers queue instead;
/// reads use their own pool and never block on writers (WAL).
pub struct SqliteMetadata {
    pool: SqlitePool,
    writer: SqlitePool,
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

fn insert_query(e: &EntryRecord) -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'static>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| sqlite_sql(INSERT_SQL));
    bind_entry!(sqlx::query(SQL.as_str()), e)
}

impl SqliteMetadata {
    fn sql(s: &str) -> String {
        sqlite_sql(s)
    }
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.pool
    }
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }
}

recovery_queries!(SqliteMetadata);
super::metadata_purge::purge_queries!(SqliteMetadata);
super::data_keys::data_key_store!(SqliteMetadata);
super::keys::key_store!(SqliteMetadata);
write_batch_query!(SqliteMetadata, "", false);
snapshot_queries!(
    SqliteMetadata,
    "",
    "rowid",
    &format!(
        "json_object({}, 'artifact_missing', json(CASE WHEN artifact_missing <> 0 THEN 'true' ELSE 'false' END))",
        super::metadata_sql::ENTRY_JSON_FIELDS
    )
);

impl SqliteMetadata {
    const CLAIM: &'static str = crate::queue::sql::CLAIM_SQLITE;
    fn kinds_arg(kinds: &[String]) -> String {
        serde_json::to_string(kinds).unwrap_or_default()
    }
}

crate::queue::sql::sql_queue!(SqliteMetadata);

impl Metadata for SqliteMetadata {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    write_methods!();
    super::metadata_audit::audit_methods!();

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
            let mut hits = hits;
            hits.sort_by_key(|h| h.key);
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
                out.push(row_to_pointer(&r)?);
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
            rows.iter().map(row_to_audit).collect::<Result<Vec<_>>>()
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

    recovery_methods!();
    fn export_snapshot(&self, out: tokio::sync::mpsc::Sender<super::SnapshotBatch>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.q_export(out))
    }
    fn import_snapshot(&self, batch: super::SnapshotBatch) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.q_import(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Usage counted before migration 5 keeps its counters, as OpenAI's
    /// dialect, and new rows of another dialect stay apart from it.
    #[tokio::test]
    async fn usage_rows_survive_the_dialect_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
                .unwrap()
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .unwrap();
            sqlx::raw_sql(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
            )
            .execute(&pool)
            .await
            .unwrap();
            for (version, sql) in &MIGRATIONS[..4] {
                sqlx::raw_sql(sql).execute(&pool).await.unwrap();
                sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, 0)")
                    .bind(version)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            sqlx::raw_sql("INSERT INTO usage_hourly (hour_ms, tenant, namespace, model, hits, misses, usd_spent) VALUES (3600000, 'a', 'default', 'm', 5, 2, 0.5)")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let meta = SqliteMetadata::open(&path, 2, Duration::from_secs(5)).await.unwrap();
        let rows = meta.usage_since(0).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (rows[0].dialect.as_str(), rows[0].hits, rows[0].misses),
            ("openai", 5, 2)
        );
        let mut anthropic = rows[0].clone();
        anthropic.dialect = "anthropic".into();
        meta.record_usage(vec![anthropic.clone(), rows[0].clone()])
            .await
            .unwrap();
        let rows = meta.usage_since(0).await.unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows.iter()
                .all(|r| r.hits == if r.dialect == "openai" { 10 } else { 5 }),
            "{rows:?}"
        );
    }
}
