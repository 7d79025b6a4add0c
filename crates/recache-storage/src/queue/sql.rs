//! The queue's SQL, written once for SQLite and PostgreSQL (PostgreSQL's
//! `$n` placeholders; SQLite gets `?n`). Only the claim differs: PostgreSQL
//! locks the chosen row with `FOR UPDATE SKIP LOCKED`, so concurrent
//! claimers pass each other by; SQLite has one writer at a time, so the
//! single `UPDATE … RETURNING` is already exclusive.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Job, JobState};
use crate::roles::metadata_sql::{corrupt, map_err};
use crate::roles::Result;

const LIVE: &str = "('queued', 'running', 'failed')";

pub const CLAIM_PG: &str = "UPDATE jobs SET state = 'running', lease_owner = $1, lease_token = $2, \
     lease_until_ms = $3, heartbeat_at_ms = $4, attempts = attempts + 1, \
     started_at_ms = COALESCE(started_at_ms, $4), updated_at_ms = $4 \
     WHERE id = (SELECT id FROM jobs WHERE state IN ('queued', 'failed') AND run_after_ms <= $4 \
         AND kind = ANY($5) ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING *";

pub const CLAIM_SQLITE: &str = "UPDATE jobs SET state = 'running', lease_owner = $1, lease_token = $2, \
     lease_until_ms = $3, heartbeat_at_ms = $4, attempts = attempts + 1, \
     started_at_ms = COALESCE(started_at_ms, $4), updated_at_ms = $4 \
     WHERE id = (SELECT id FROM jobs WHERE state IN ('queued', 'failed') AND run_after_ms <= $4 \
         AND kind IN (SELECT value FROM json_each($5)) ORDER BY priority DESC, id LIMIT 1) \
     RETURNING *";

pub(crate) fn enqueue_sql() -> String {
    "INSERT INTO jobs (kind, payload, priority, state, attempts, max_attempts, run_after_ms, unique_key, \
     namespace, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $7, $8, $8) \
     ON CONFLICT DO NOTHING RETURNING id"
        .to_string()
}

pub(crate) fn live_by_unique_sql() -> String {
    format!("SELECT id FROM jobs WHERE unique_key = $1 AND state IN {LIVE}")
}

pub const HEARTBEAT: &str = "UPDATE jobs SET lease_until_ms = $1, heartbeat_at_ms = $2, updated_at_ms = $2 \
     WHERE id = $3 AND lease_token = $4 AND state = 'running'";

pub const CHECKPOINT: &str = "UPDATE jobs SET payload = $1, updated_at_ms = $2 \
     WHERE id = $3 AND lease_token = $4 AND state = 'running'";

pub const SUCCEED: &str = "UPDATE jobs SET state = 'succeeded', result = $1, finished_at_ms = $2, \
     updated_at_ms = $2, lease_token = NULL, last_error = NULL \
     WHERE id = $3 AND lease_token = $4 AND state = 'running'";

pub const FAIL: &str = "UPDATE jobs SET \
     state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END, \
     finished_at_ms = CASE WHEN attempts >= max_attempts THEN $2 ELSE NULL END, \
     last_error = $1, run_after_ms = $3, updated_at_ms = $2, lease_token = NULL \
     WHERE id = $4 AND lease_token = $5 AND state = 'running'";

pub const DEAD: &str = "UPDATE jobs SET state = 'dead', finished_at_ms = $2, last_error = $1, \
     updated_at_ms = $2, lease_token = NULL WHERE id = $3 AND lease_token = $4 AND state = 'running'";

pub const RELEASE: &str = "UPDATE jobs SET state = 'queued', attempts = attempts - 1, last_error = $1, \
     updated_at_ms = $2, run_after_ms = $3, lease_token = NULL \
     WHERE id = $4 AND lease_token = $5 AND state = 'running'";

pub const REAP: &str = "UPDATE jobs SET \
     state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END, \
     finished_at_ms = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END, \
     last_error = 'lease expired: worker ' || COALESCE(lease_owner, '?') || ' stopped heartbeating', \
     run_after_ms = $1, updated_at_ms = $1, lease_token = NULL \
     WHERE state = 'running' AND lease_until_ms < $1";

pub const GET: &str = "SELECT * FROM jobs WHERE id = $1";

pub const LIST: &str = "SELECT * FROM jobs WHERE ($1 = '' OR state = $1) ORDER BY \
     CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 WHEN 'failed' THEN 2 WHEN 'dead' THEN 3 ELSE 4 END, \
     priority DESC, id DESC LIMIT $2";

pub const COUNTS: &str =
    "SELECT kind, state, COUNT(*) AS n, MAX(priority) AS p FROM jobs GROUP BY kind, state ORDER BY kind, state";

pub(crate) fn retry_dead_sql() -> String {
    format!(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_after_ms = $1, finished_at_ms = NULL, \
         updated_at_ms = $1 WHERE state = 'dead' AND ($2 = '' OR kind = $2) AND (unique_key IS NULL OR \
         NOT EXISTS (SELECT 1 FROM jobs j2 WHERE j2.unique_key = jobs.unique_key AND j2.state IN {LIVE}))"
    )
}

pub const PRIORITIZE: &str = "UPDATE jobs SET priority = $1, updated_at_ms = $2 \
     WHERE namespace = $3 AND state IN ('queued', 'running', 'failed')";

pub const PRUNE: &str = "DELETE FROM jobs WHERE (state = 'succeeded' AND finished_at_ms < $1) \
     OR (state = 'dead' AND finished_at_ms < $2)";

pub const PRUNE_WORKERS: &str = "DELETE FROM workers WHERE seen_at_ms < $1";

pub const PRUNE_SPEND: &str = "DELETE FROM warmer_spend WHERE at_ms < $1";

pub const REGISTER_WORKER: &str = "INSERT INTO workers (owner, host, pid, started_at_ms, seen_at_ms, paused) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner) DO UPDATE SET seen_at_ms = excluded.seen_at_ms, \
     paused = excluded.paused";

pub const WORKERS: &str = "SELECT * FROM workers WHERE seen_at_ms >= $1 ORDER BY owner";

pub const SPEND: &str = "INSERT INTO warmer_spend (at_ms, job_id, usd) VALUES ($1, $2, $3)";

pub const SPEND_SINCE: &str = "SELECT COALESCE(SUM(usd), 0.0) AS s FROM warmer_spend WHERE at_ms >= $1";

pub const SUCCEEDED_SINCE: &str = "SELECT COUNT(*) FROM jobs WHERE state = 'succeeded' AND finished_at_ms >= $1";

/// Decodes a `jobs` row from either engine.
pub(crate) fn row_to_job<'r, R>(r: &'r R) -> Result<Job>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let opt_i = |c: &'static str| r.try_get::<Option<i64>, _>(c).map_err(map_err);
    let opt_s = |c: &'static str| r.try_get::<Option<String>, _>(c).map_err(map_err);
    let int = |c: &'static str| r.try_get::<i64, _>(c).map_err(map_err);
    let state: String = r.try_get("state").map_err(map_err)?;
    let payload: String = r.try_get("payload").map_err(map_err)?;
    Ok(Job {
        id: int("id")?,
        kind: r.try_get("kind").map_err(map_err)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        priority: int("priority")?,
        state: JobState::parse(&state).ok_or_else(|| corrupt("job state"))?,
        attempts: int("attempts")?,
        max_attempts: int("max_attempts")?,
        run_after_ms: int("run_after_ms")?,
        lease_owner: opt_s("lease_owner")?,
        lease_token: opt_s("lease_token")?,
        lease_until_ms: opt_i("lease_until_ms")?,
        heartbeat_at_ms: opt_i("heartbeat_at_ms")?,
        unique_key: opt_s("unique_key")?,
        namespace: opt_s("namespace")?,
        created_at_ms: int("created_at_ms")?,
        started_at_ms: opt_i("started_at_ms")?,
        finished_at_ms: opt_i("finished_at_ms")?,
        updated_at_ms: opt_i("updated_at_ms")?,
        last_error: opt_s("last_error")?,
        result: opt_s("result")?.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))),
    })
}

/// Implements [`super::Queue`] for a SQL metadata engine. The engine type
/// provides `sql(&str)`, `ready()`, `reader()`, `writer()`, `CLAIM` and
/// `kinds_arg(&[String])`.
macro_rules! sql_queue {
    ($ty:ty) => {
        impl $crate::queue::Queue for $ty {
            fn enqueue(&self, job: $crate::queue::NewJob) -> BoxFuture<'_, Result<$crate::queue::Enqueued>> {
                use $crate::queue::sql as q;
                Box::pin(async move {
                    self.ready().await?;
                    let now = super::now_ms();
                    let id: Option<i64> = sqlx::query_scalar(&Self::sql(&q::enqueue_sql()))
                        .bind(&job.kind)
                        .bind(job.payload.to_string())
                        .bind(job.priority)
                        .bind(job.max_attempts.max(1) as i64)
                        .bind(if job.run_after_ms > 0 {
                            job.run_after_ms
                        } else {
                            now
                        })
                        .bind(&job.unique_key)
                        .bind(&job.namespace)
                        .bind(now)
                        .fetch_optional(self.writer())
                        .await
                        .map_err(map_err)?;
                    if let Some(id) = id {
                        return Ok($crate::queue::Enqueued { id, created: true });
                    }
                    let id: i64 = sqlx::query_scalar(&Self::sql(&q::live_by_unique_sql()))
                        .bind(&job.unique_key)
                        .fetch_one(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok($crate::queue::Enqueued { id, created: false })
                })
            }

            fn claim(
                &self,
                owner: &str,
                kinds: Vec<String>,
                lease: std::time::Duration,
            ) -> BoxFuture<'_, Result<Option<$crate::queue::Job>>> {
                let owner = owner.to_string();
                Box::pin(async move {
                    if kinds.is_empty() {
                        return Ok(None);
                    }
                    self.ready().await?;
                    let now = super::now_ms();
                    let row = sqlx::query(&Self::sql(Self::CLAIM))
                        .bind(&owner)
                        .bind($crate::queue::new_token())
                        .bind(now + lease.as_millis() as i64)
                        .bind(now)
                        .bind(Self::kinds_arg(&kinds))
                        .fetch_optional(self.writer())
                        .await
                        .map_err(map_err)?;
                    row.as_ref().map($crate::queue::sql::row_to_job).transpose()
                })
            }

            fn heartbeat(&self, id: i64, token: &str, lease: std::time::Duration) -> BoxFuture<'_, Result<bool>> {
                let token = token.to_string();
                Box::pin(async move {
                    let now = super::now_ms();
                    let r = sqlx::query(&Self::sql($crate::queue::sql::HEARTBEAT))
                        .bind(now + lease.as_millis() as i64)
                        .bind(now)
                        .bind(id)
                        .bind(token)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn checkpoint(&self, id: i64, token: &str, payload: serde_json::Value) -> BoxFuture<'_, Result<bool>> {
                let token = token.to_string();
                Box::pin(async move {
                    let r = sqlx::query(&Self::sql($crate::queue::sql::CHECKPOINT))
                        .bind(payload.to_string())
                        .bind(super::now_ms())
                        .bind(id)
                        .bind(token)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn finish(&self, id: i64, token: &str, how: $crate::queue::Finish) -> BoxFuture<'_, Result<bool>> {
                use $crate::queue::{sql as q, Finish};
                let token = token.to_string();
                Box::pin(async move {
                    let now = super::now_ms();
                    let text = Self::sql(match &how {
                        Finish::Succeeded(_) => q::SUCCEED,
                        Finish::Failed { .. } => q::FAIL,
                        Finish::Dead(_) => q::DEAD,
                        Finish::Release { .. } => q::RELEASE,
                    });
                    let query = match &how {
                        Finish::Succeeded(v) => sqlx::query(&text).bind(v.to_string()).bind(now),
                        Finish::Failed { error, retry_in } => sqlx::query(&text)
                            .bind(error.clone())
                            .bind(now)
                            .bind(now + retry_in.as_millis() as i64),
                        Finish::Dead(error) => sqlx::query(&text).bind(error.clone()).bind(now),
                        Finish::Release { reason, retry_in } => sqlx::query(&text)
                            .bind(reason.clone())
                            .bind(now)
                            .bind(now + retry_in.as_millis() as i64),
                    };
                    let r = query
                        .bind(id)
                        .bind(token)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn reap_expired(&self) -> BoxFuture<'_, Result<u64>> {
                Box::pin(async move {
                    self.ready().await?;
                    let r = sqlx::query(&Self::sql($crate::queue::sql::REAP))
                        .bind(super::now_ms())
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(r.rows_affected())
                })
            }

            fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<$crate::queue::Job>>> {
                Box::pin(async move {
                    self.ready().await?;
                    let row = sqlx::query(&Self::sql($crate::queue::sql::GET))
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await
                        .map_err(map_err)?;
                    row.as_ref().map($crate::queue::sql::row_to_job).transpose()
                })
            }

            fn list(
                &self,
                state: Option<$crate::queue::JobState>,
                limit: u32,
            ) -> BoxFuture<'_, Result<Vec<$crate::queue::Job>>> {
                Box::pin(async move {
                    self.ready().await?;
                    let rows = sqlx::query(&Self::sql($crate::queue::sql::LIST))
                        .bind(state.map(|s| s.as_str()).unwrap_or(""))
                        .bind(limit as i64)
                        .fetch_all(self.reader())
                        .await
                        .map_err(map_err)?;
                    rows.iter().map($crate::queue::sql::row_to_job).collect()
                })
            }

            fn counts(&self) -> BoxFuture<'_, Result<Vec<$crate::queue::KindCount>>> {
                use sqlx::Row as _;
                Box::pin(async move {
                    self.ready().await?;
                    let rows = sqlx::query($crate::queue::sql::COUNTS)
                        .fetch_all(self.reader())
                        .await
                        .map_err(map_err)?;
                    let mut out = Vec::new();
                    for r in &rows {
                        let state: String = r.try_get("state").map_err(map_err)?;
                        out.push($crate::queue::KindCount {
                            kind: r.try_get("kind").map_err(map_err)?,
                            state: $crate::queue::JobState::parse(&state)
                                .ok_or_else(|| super::metadata_sql::corrupt("job state"))?,
                            count: r.try_get::<i64, _>("n").map_err(map_err)? as u64,
                            max_priority: r.try_get::<Option<i64>, _>("p").map_err(map_err)?.unwrap_or(0),
                        });
                    }
                    Ok(out)
                })
            }

            fn retry_dead(&self, kind: Option<String>) -> BoxFuture<'_, Result<u64>> {
                Box::pin(async move {
                    self.ready().await?;
                    let r = sqlx::query(&Self::sql(&$crate::queue::sql::retry_dead_sql()))
                        .bind(super::now_ms())
                        .bind(kind.unwrap_or_default())
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(r.rows_affected())
                })
            }

            fn prioritize(&self, namespaces: Vec<String>, priority: i64) -> BoxFuture<'_, Result<u64>> {
                Box::pin(async move {
                    self.ready().await?;
                    let mut n = 0;
                    for ns in namespaces {
                        n += sqlx::query(&Self::sql($crate::queue::sql::PRIORITIZE))
                            .bind(priority)
                            .bind(super::now_ms())
                            .bind(ns)
                            .execute(self.writer())
                            .await
                            .map_err(map_err)?
                            .rows_affected();
                    }
                    Ok(n)
                })
            }

            fn prune(&self, succeeded_before_ms: i64, dead_before_ms: i64) -> BoxFuture<'_, Result<u64>> {
                use $crate::queue::sql as q;
                Box::pin(async move {
                    self.ready().await?;
                    let n = sqlx::query(&Self::sql(q::PRUNE))
                        .bind(succeeded_before_ms)
                        .bind(dead_before_ms)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                    let day_ago = super::now_ms() - 86_400_000;
                    for sql in [q::PRUNE_WORKERS, q::PRUNE_SPEND] {
                        sqlx::query(&Self::sql(sql))
                            .bind(day_ago)
                            .execute(self.writer())
                            .await
                            .map_err(map_err)?;
                    }
                    Ok(n)
                })
            }

            fn register_worker(&self, info: $crate::queue::WorkerInfo) -> BoxFuture<'_, Result<()>> {
                Box::pin(async move {
                    self.ready().await?;
                    sqlx::query(&Self::sql($crate::queue::sql::REGISTER_WORKER))
                        .bind(&info.owner)
                        .bind(&info.host)
                        .bind(info.pid)
                        .bind(info.started_at_ms)
                        .bind(info.seen_at_ms)
                        .bind(info.paused.to_string())
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(())
                })
            }

            fn workers(&self, seen_since_ms: i64) -> BoxFuture<'_, Result<Vec<$crate::queue::WorkerInfo>>> {
                use sqlx::Row as _;
                Box::pin(async move {
                    self.ready().await?;
                    let rows = sqlx::query(&Self::sql($crate::queue::sql::WORKERS))
                        .bind(seen_since_ms)
                        .fetch_all(self.reader())
                        .await
                        .map_err(map_err)?;
                    rows.iter()
                        .map(|r| {
                            let paused: String = r.try_get("paused").map_err(map_err)?;
                            Ok($crate::queue::WorkerInfo {
                                owner: r.try_get("owner").map_err(map_err)?,
                                host: r.try_get("host").map_err(map_err)?,
                                pid: r.try_get("pid").map_err(map_err)?,
                                started_at_ms: r.try_get("started_at_ms").map_err(map_err)?,
                                seen_at_ms: r.try_get("seen_at_ms").map_err(map_err)?,
                                paused: serde_json::from_str(&paused).unwrap_or_default(),
                            })
                        })
                        .collect()
                })
            }

            fn record_spend(&self, job_id: i64, usd: f64) -> BoxFuture<'_, Result<()>> {
                Box::pin(async move {
                    self.ready().await?;
                    sqlx::query(&Self::sql($crate::queue::sql::SPEND))
                        .bind(super::now_ms())
                        .bind(job_id)
                        .bind(usd)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(())
                })
            }

            fn spend_since(&self, since_ms: i64) -> BoxFuture<'_, Result<f64>> {
                Box::pin(async move {
                    self.ready().await?;
                    sqlx::query_scalar(&Self::sql($crate::queue::sql::SPEND_SINCE))
                        .bind(since_ms)
                        .fetch_one(self.reader())
                        .await
                        .map_err(map_err)
                })
            }

            fn succeeded_since(&self, since_ms: i64) -> BoxFuture<'_, Result<u64>> {
                Box::pin(async move {
                    self.ready().await?;
                    let n: i64 = sqlx::query_scalar(&Self::sql($crate::queue::sql::SUCCEEDED_SINCE))
                        .bind(since_ms)
                        .fetch_one(self.reader())
                        .await
                        .map_err(map_err)?;
                    Ok(n as u64)
                })
            }
        }
    };
}
pub(crate) use sql_queue;
