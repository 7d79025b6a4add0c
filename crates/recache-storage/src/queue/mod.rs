//! The durable job queue behind warmers and repairs. It lives in the
//! metadata role (SQLite or PostgreSQL, one implementation of the SQL in
//! `sql.rs`), works by polling only (no LISTEN/NOTIFY, so it runs behind a
//! transaction-pooling proxy), and is checked by one conformance suite
//! (`conformance.rs`).
//!
//! The state machine, in one place:
//!
//! ```text
//! enqueue ─▶ queued ─claim─▶ running ─finish ok──────────▶ succeeded ─prune─▶ (gone)
//!              ▲                │ finish error, attempts left ─▶ failed ─(run_after)─▶ claimable again
//!              │                │ finish error, last attempt ───▶ dead (kept, with its last error)
//!              └──── release ───┤ (a backend it needs is down: no attempt used)
//!                               └ lease expired (worker lost) ─reap─▶ failed / dead
//! ```
//!
//! Every claim hands out a fresh lease token. Heartbeats, checkpoints and
//! finishes carry it and are refused once it is stale, so a worker that was
//! paused past its lease (a "zombie") can never overwrite what the job's new
//! owner wrote.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::roles::{BoxFuture, Result};

/// The queue's conformance suite (tests only; see `roles::conformance`).
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod sql;
pub mod worker;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A job to enqueue.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    /// Higher runs first.
    pub priority: i64,
    /// At most one live (queued, running or failed) job per unique key:
    /// enqueueing the same work twice is harmless.
    pub unique_key: Option<String>,
    /// The namespace (repository) the job works for, if any (`warmer priority --repos`).
    pub namespace: Option<String>,
    pub max_attempts: u32,
    /// Not before this instant (ms); 0 is now.
    pub run_after_ms: i64,
}

impl NewJob {
    pub fn new(kind: &str, payload: Value) -> Self {
        Self {
            kind: kind.to_string(),
            payload,
            priority: 0,
            unique_key: None,
            namespace: None,
            max_attempts: 5,
            run_after_ms: 0,
        }
    }
    pub fn priority(mut self, p: i64) -> Self {
        self.priority = p;
        self
    }
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

/// A job as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub priority: i64,
    pub state: JobState,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_after_ms: i64,
    pub lease_owner: Option<String>,
    /// Only set while running; never shown to clients of the admin API.
    #[serde(skip)]
    pub lease_token: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub heartbeat_at_ms: Option<i64>,
    pub unique_key: Option<String>,
    pub namespace: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub result: Option<Value>,
}

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub id: i64,
    /// False when a live job with the same unique key already existed (its id is returned).
    pub created: bool,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Finish {
    Succeeded(Value),
    /// Retried after `retry_in` unless this was the last attempt (then dead).
    Failed {
        error: String,
        retry_in: Duration,
    },
    /// Dead at once (the job can never succeed as written).
    Dead(String),
    /// Put back without using an attempt: a backend the job needs is down.
    Release {
        reason: String,
        retry_in: Duration,
    },
}

/// Jobs by kind and state.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KindCount {
    pub kind: String,
    pub state: JobState,
    pub count: u64,
    pub max_priority: i64,
}

/// A worker process as it last reported itself.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerInfo {
    pub owner: String,
    pub host: String,
    pub pid: i64,
    pub started_at_ms: i64,
    pub seen_at_ms: i64,
    /// Paused kinds and the backends they wait for.
    pub paused: Value,
}

/// The queue role. Dyn-safe, like the storage roles.
pub trait Queue: Send + Sync {
    fn enqueue(&self, job: NewJob) -> BoxFuture<'_, Result<Enqueued>>;
    /// Leases the most urgent ready job of one of `kinds` (priority, then
    /// age), exactly once across workers and processes.
    fn claim(&self, owner: &str, kinds: Vec<String>, lease: Duration) -> BoxFuture<'_, Result<Option<Job>>>;
    /// Extends the lease; false when the token is stale (the job is someone else's now).
    fn heartbeat(&self, id: i64, token: &str, lease: Duration) -> BoxFuture<'_, Result<bool>>;
    /// Saves a resumable cursor in the payload; false when the token is stale.
    fn checkpoint(&self, id: i64, token: &str, payload: Value) -> BoxFuture<'_, Result<bool>>;
    /// Ends the attempt; false when the token is stale (nothing is written).
    fn finish(&self, id: i64, token: &str, how: Finish) -> BoxFuture<'_, Result<bool>>;
    /// Running jobs whose lease expired (their worker died) become claimable
    /// again, or dead after their last attempt. Returns how many.
    fn reap_expired(&self) -> BoxFuture<'_, Result<u64>>;
    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<Job>>>;
    /// Jobs in one state (or all), running first, then by priority.
    fn list(&self, state: Option<JobState>, limit: u32) -> BoxFuture<'_, Result<Vec<Job>>>;
    fn counts(&self) -> BoxFuture<'_, Result<Vec<KindCount>>>;
    /// Dead jobs (of one kind, or all) back to queued with fresh attempts.
    fn retry_dead(&self, kind: Option<String>) -> BoxFuture<'_, Result<u64>>;
    /// Moves the live jobs of these namespaces to `priority`.
    fn prioritize(&self, namespaces: Vec<String>, priority: i64) -> BoxFuture<'_, Result<u64>>;
    /// Deletes succeeded jobs finished before `succeeded_before_ms` and dead
    /// ones finished before `dead_before_ms`; returns how many.
    fn prune(&self, succeeded_before_ms: i64, dead_before_ms: i64) -> BoxFuture<'_, Result<u64>>;
    fn register_worker(&self, info: WorkerInfo) -> BoxFuture<'_, Result<()>>;
    fn workers(&self, seen_since_ms: i64) -> BoxFuture<'_, Result<Vec<WorkerInfo>>>;
    /// Provider spend by warmers (for the hourly budget shared by every worker).
    fn record_spend(&self, job_id: i64, usd: f64) -> BoxFuture<'_, Result<()>>;
    fn spend_since(&self, since_ms: i64) -> BoxFuture<'_, Result<f64>>;
    /// Jobs that succeeded since `since_ms` (throughput).
    fn succeeded_since(&self, since_ms: i64) -> BoxFuture<'_, Result<u64>>;
}

/// Exponential backoff with ±25 % jitter: `base × 2^(attempt-1)`, at most `max`.
pub fn backoff(base: Duration, attempt: i64, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.clamp(1, 20).saturating_sub(1) as u32);
    let d = exp.min(max).as_millis() as f64;
    let jitter = 0.75 + 0.5 * random_unit();
    Duration::from_millis((d * jitter) as u64)
}

/// A number in [0, 1) (jitter, sampling).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 64 bits from the operating system's random number generator (`getrandom`).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the OS random number generator is available");
    u64::from_le_bytes(b)
}

/// A fresh lease token: 128 random bits, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random number generator is available");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_millis(1000);
        let max = Duration::from_secs(60);
        for attempt in 1..=10 {
            let d = backoff(base, attempt, max).as_millis() as f64;
            let nominal = (1000.0 * 2f64.powi(attempt as i32 - 1)).min(60_000.0);
            assert!(d >= nominal * 0.75 - 1.0 && d <= nominal * 1.25 + 1.0, "{attempt}: {d}");
        }
        let a: Vec<u128> = (0..20).map(|_| backoff(base, 3, max).as_millis()).collect();
        assert!(a.iter().any(|x| *x != a[0]), "jitter varies: {a:?}");
        assert_ne!(new_token(), new_token());
    }
}
