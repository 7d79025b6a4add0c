//! PostgreSQL (metadata and the job queue): connectivity, migrations,
//! connection headroom, dead rows in the job queue, clock skew.

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::Row;

use super::{pct, Finding};

const CONNECT: &str = "PostgreSQL recovery: check connectivity, pool configuration and max connections";
const SCHEMA: &str = "PostgreSQL recovery: check that the cache tables are intact";
const BLOAT: &str = "PostgreSQL: a queue table churns rows; autovacuum must keep up";
const CLOCK: &str = "recache: job leases and expiry compare clocks across processes";

/// What was read from the server.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub version: String,
    /// Newest applied schema migration (`None`: no schema yet).
    pub schema_version: Option<i64>,
    pub connections: i64,
    pub max_connections: i64,
    pub jobs_live: i64,
    pub jobs_dead: i64,
    /// Server clock minus this host's, in ms (corrected by half the round trip).
    pub skew_ms: i64,
}

pub async fn read(url: &str) -> Result<Observed, String> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let work = async {
        let e = |e: sqlx::Error| e.to_string();
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .map_err(e)?;
        let has_schema: bool = sqlx::query_scalar("SELECT to_regclass('schema_migrations') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .map_err(e)?;
        let schema_version = if has_schema {
            sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM schema_migrations")
                .fetch_one(&pool)
                .await
                .map_err(e)?
        } else {
            None
        };
        let connections: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity")
            .fetch_one(&pool)
            .await
            .map_err(e)?;
        let max: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(&pool)
            .await
            .map_err(e)?;
        let jobs = sqlx::query("SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jobs'")
            .fetch_optional(&pool)
            .await
            .map_err(e)?;
        let (jobs_live, jobs_dead) = jobs
            .map(|r| (r.try_get::<i64, _>(0).unwrap_or(0), r.try_get::<i64, _>(1).unwrap_or(0)))
            .unwrap_or((0, 0));
        let t0 = Instant::now();
        let before = recache_storage::roles::now_ms();
        let server_ms: f64 = sqlx::query_scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)::float8")
            .fetch_one(&pool)
            .await
            .map_err(e)?;
        let rtt = t0.elapsed().as_millis() as i64;
        Ok::<_, String>(Observed {
            version,
            schema_version,
            connections,
            max_connections: max.parse().unwrap_or(0),
            jobs_live,
            jobs_dead,
            skew_ms: server_ms as i64 - (before + rtt / 2),
        })
    };
    let r = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?;
    pool.close().await;
    r
}

pub fn check(o: &Observed) -> Vec<Finding> {
    let mut out = vec![Finding::ok(
        "postgres.reachable",
        format!("PostgreSQL {} answers", o.version),
        CONNECT,
    )];
    let want = recache_storage::roles::metadata_postgres::MIGRATIONS
        .iter()
        .map(|(v, _)| *v)
        .max()
        .unwrap_or(0);
    out.push(match o.schema_version {
        Some(v) if v == want => Finding::ok(
            "postgres.migrations",
            format!("schema at version {v} (current)"),
            SCHEMA,
        ),
        Some(v) if v > want => Finding::warn(
            "postgres.migrations",
            format!("schema at version {v}, newer than this recache ({want}): a newer release migrated it"),
            "run the same recache release everywhere",
            SCHEMA,
        ),
        Some(v) => Finding::fail(
            "postgres.migrations",
            format!("schema at version {v}, this recache needs {want}"),
            "start `recache serve` once with this release (it migrates at start-up)",
            SCHEMA,
        ),
        None => Finding::fail(
            "postgres.migrations",
            "no recache schema in this database",
            "start `recache serve` once (it creates the schema), or check metadata.url points at the right database",
            SCHEMA,
        ),
    });
    out.push(if o.max_connections <= 0 {
        Finding::warn(
            "postgres.connections",
            format!("{} connections; max_connections unknown", o.connections),
            "check max_connections",
            CONNECT,
        )
    } else {
        let share = o.connections as f64 / o.max_connections as f64;
        let detail = format!(
            "{} of {} connections ({})",
            o.connections,
            o.max_connections,
            pct(share)
        );
        if share > 0.95 {
            Finding::fail(
                "postgres.connections",
                detail,
                "raise max_connections or lower metadata.max_connections per replica (or add a pooler)",
                CONNECT,
            )
        } else if share > 0.8 {
            Finding::warn(
                "postgres.connections",
                detail,
                "raise max_connections or lower metadata.max_connections per replica (over 80 %)",
                CONNECT,
            )
        } else {
            Finding::ok("postgres.connections", detail, CONNECT)
        }
    });
    let total = o.jobs_live + o.jobs_dead;
    let dead_share = if total > 0 {
        o.jobs_dead as f64 / total as f64
    } else {
        0.0
    };
    let detail = format!(
        "job queue: {} live rows, {} dead ({})",
        o.jobs_live,
        o.jobs_dead,
        pct(dead_share)
    );
    out.push(if o.jobs_dead > 10_000 && dead_share > 0.5 {
        Finding::warn(
            "postgres.queue_bloat",
            detail,
            "VACUUM (ANALYZE) jobs; lower autovacuum_vacuum_scale_factor for the jobs table",
            BLOAT,
        )
    } else {
        Finding::ok("postgres.queue_bloat", detail, BLOAT)
    });
    let skew = o.skew_ms.abs();
    let detail = format!(
        "this host's clock is {} ms {} the database's",
        skew,
        if o.skew_ms > 0 { "behind" } else { "ahead of" }
    );
    out.push(if skew > 30_000 {
        Finding::fail(
            "recache.clock",
            detail,
            "run NTP (chrony or systemd-timesyncd) on every host",
            CLOCK,
        )
    } else if skew > 1_000 {
        Finding::warn(
            "recache.clock",
            detail,
            "run NTP (chrony or systemd-timesyncd) on every host",
            CLOCK,
        )
    } else {
        Finding::ok("recache.clock", detail, CLOCK)
    });
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn findings() {
        let want = recache_storage::roles::metadata_postgres::MIGRATIONS.len() as i64;
        let good = check(&Observed {
            version: "16".into(),
            schema_version: Some(want),
            connections: 10,
            max_connections: 100,
            jobs_live: 10,
            jobs_dead: 5,
            skew_ms: 3,
        });
        assert!(good.iter().all(|f| f.status == Status::Ok), "{good:?}");
        let bad = check(&Observed {
            version: "16".into(),
            schema_version: Some(1),
            connections: 90,
            max_connections: 100,
            jobs_live: 100,
            jobs_dead: 50_000,
            skew_ms: -40_000,
        });
        let st = |c: &str| bad.iter().find(|f| f.check == c).unwrap().status;
        assert_eq!(st("postgres.migrations"), Status::Fail);
        assert_eq!(st("postgres.connections"), Status::Warn);
        assert_eq!(st("postgres.queue_bloat"), Status::Warn);
        assert_eq!(st("recache.clock"), Status::Fail);
    }
}
