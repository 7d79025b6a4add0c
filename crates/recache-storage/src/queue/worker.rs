//! The worker loop: claims jobs the runner knows, runs them with a lease it
//! heartbeats, and ends each attempt. Runs inside `recache serve` and as
//! `recache warmer run`; any number of workers, in any number of processes,
//! can share one queue.
//!
//! A kind whose backends have an open breaker is paused: it is not claimed
//! until the breaker lets calls through again (an open breaker whose open
//! period is over lets the next job be its probe), so jobs resume by
//! themselves when the backend comes back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use super::{backoff, Finish, Job, Queue, WorkerInfo};
use crate::breaker::Breaker;
use crate::error::BackendError;
use crate::roles::{now_ms, BoxFuture};

/// Why an attempt did not succeed.
#[derive(Debug)]
pub enum JobError {
    /// A backend the job needs failed: put back without using an attempt;
    /// the kind pauses while that backend's breaker is open.
    Backend(BackendError),
    /// Wait and try again without using an attempt (e.g. the hourly budget is spent).
    Wait { reason: String, retry_in: Duration },
    /// This attempt failed: retried with backoff, dead after the last attempt.
    Failed(String),
    /// The job can never succeed as written: dead at once.
    Fatal(String),
    /// The lease went to another worker: stop, write nothing.
    LeaseLost,
}

impl From<BackendError> for JobError {
    fn from(e: BackendError) -> Self {
        if e.is_backend_failure() || matches!(e, BackendError::CircuitOpen { .. }) {
            JobError::Backend(e)
        } else {
            JobError::Failed(e.to_string())
        }
    }
}

/// What a running job can do: save its cursor, report progress, notice a lost lease.
pub trait JobCtx: Send + Sync {
    /// Saves the payload (a resumable cursor). Errors with `LeaseLost` when
    /// the job is no longer this worker's.
    fn checkpoint(&self, payload: Value) -> BoxFuture<'_, Result<(), JobError>>;
    fn progress(&self, done: u64, total: Option<u64>);
    fn job_id(&self) -> i64;
}

/// Knows the job kinds and runs them.
pub trait JobRunner: Send + Sync {
    fn kinds(&self) -> Vec<String>;
    /// The backends (breaker names) a kind needs.
    fn needs(&self, kind: &str) -> Vec<&'static str>;
    fn run<'a>(&'a self, job: &'a Job, ctx: &'a dyn JobCtx) -> BoxFuture<'a, Result<Value, JobError>>;
    /// Called with every attempt's end (metrics, audit).
    fn finished(&self, _job: &Job, _outcome: &str, _elapsed: Duration) {}
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub owner: String,
    pub concurrency: usize,
    /// Heartbeat interval; the lease is twice this, so a dead worker's job is
    /// free again within two heartbeats plus one poll.
    pub heartbeat: Duration,
    pub poll: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Succeeded jobs are pruned after this; dead ones after seven times this.
    pub retention: Duration,
}

impl WorkerConfig {
    /// The worker settings `[warmer]` gives, for a process in `role` (`gateway`, `warmer`).
    pub fn from_config(config: &crate::config::Config, role: &str) -> WorkerConfig {
        let w = &config.warmer;
        WorkerConfig {
            owner: worker_name(role),
            concurrency: w.concurrency,
            heartbeat: Duration::from_millis(w.heartbeat_ms),
            poll: Duration::from_millis(w.poll_ms),
            backoff_base: Duration::from_millis(w.backoff_ms),
            backoff_max: Duration::from_millis(w.backoff_max_ms.max(w.backoff_ms)),
            retention: Duration::from_secs(w.retention_hours * 3600),
        }
    }

    pub fn lease(&self) -> Duration {
        self.heartbeat * 2
    }
}

/// A unique worker name: host, pid and a random suffix.
pub(crate) fn worker_name(role: &str) -> String {
    format!(
        "{}-{}-{}-{:04x}",
        role,
        hostname(),
        std::process::id(),
        super::random_u64() & 0xffff
    )
}

/// A gateway's owner name in the worker table: its heartbeat row counts the
/// live replicas (`[limits] on_counter_loss = "local-share"`), and is not a warmer.
pub fn gateway_owner() -> String {
    format!(
        "gateway:{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        super::random_u64() & 0xffff_ffff
    )
}

/// Whether a worker-table row is a gateway's heartbeat rather than a warmer's.
pub fn is_gateway(owner: &str) -> bool {
    owner.starts_with("gateway:")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Progress of the jobs this worker runs, for metrics and status.
/// (kind, done, total) of one running job.
pub type JobProgress = (String, u64, Option<u64>);

#[derive(Default)]
pub struct Progress {
    running: std::sync::Mutex<BTreeMap<i64, JobProgress>>,
}

impl Progress {
    /// (kind, done, total) of every running job.
    pub fn snapshot(&self) -> Vec<JobProgress> {
        self.running
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

struct Ctx {
    queue: Arc<dyn Queue>,
    id: i64,
    kind: String,
    token: String,
    progress: Arc<Progress>,
}

impl JobCtx for Ctx {
    fn checkpoint(&self, payload: Value) -> BoxFuture<'_, Result<(), JobError>> {
        Box::pin(async move {
            match self.queue.checkpoint(self.id, &self.token, payload).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(JobError::LeaseLost),
                Err(e) => Err(JobError::Backend(e)),
            }
        })
    }
    fn progress(&self, done: u64, total: Option<u64>) {
        if let Ok(mut m) = self.progress.running.lock() {
            m.insert(self.id, (self.kind.clone(), done, total));
        }
    }
    fn job_id(&self) -> i64 {
        self.id
    }
}

/// Whether a breaker keeps its backend's jobs waiting now.
fn blocks(b: &Breaker) -> bool {
    use crate::breaker::BreakerState::*;
    match b.state() {
        ForcedOpen => true,
        Open => b.status().retry_in_seconds.is_some_and(|s| s > 0.0),
        _ => false,
    }
}

/// The kinds runnable now, and the paused ones with what they wait for.
fn runnable(runner: &dyn JobRunner, breakers: &[Arc<Breaker>]) -> (Vec<String>, BTreeMap<String, Vec<&'static str>>) {
    let mut ok = Vec::new();
    let mut paused = BTreeMap::new();
    for kind in runner.kinds() {
        let waiting: Vec<&'static str> = runner
            .needs(&kind)
            .into_iter()
            .filter(|need| breakers.iter().any(|b| b.backend == *need && blocks(b)))
            .collect();
        if waiting.is_empty() {
            ok.push(kind);
        } else {
            paused.insert(kind, waiting);
        }
    }
    (ok, paused)
}

/// Runs the worker until `shutdown` turns true. Jobs in progress at shutdown
/// are released (no attempt used) so another worker picks them up at once.
pub async fn run(
    queue: Arc<dyn Queue>,
    runner: Arc<dyn JobRunner>,
    breakers: Vec<Arc<Breaker>>,
    cfg: WorkerConfig,
    progress: Arc<Progress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = now_ms();
    let active = Arc::new(AtomicUsize::new(0));
    let wake = Arc::new(Notify::new());
    let mut last_register = 0i64;
    let mut last_prune = 0i64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut was_paused = BTreeMap::new();
    tracing::info!(owner = %cfg.owner, concurrency = cfg.concurrency, "warmer worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let metadata_down = breakers.iter().any(|b| b.backend == "metadata" && blocks(b));
        if !metadata_down {
            let (kinds, paused) = runnable(runner.as_ref(), &breakers);
            let changed = paused != was_paused;
            if changed {
                for (kind, waits) in &paused {
                    if !was_paused.contains_key(kind) {
                        tracing::warn!(kind, waiting_for = ?waits, "warmer: pausing jobs of this kind while a backend they need is down");
                    }
                }
                for kind in was_paused.keys() {
                    if !paused.contains_key(kind) {
                        tracing::info!(kind, "warmer: backend back; resuming jobs of this kind");
                    }
                }
                was_paused = paused.clone();
            }
            let now = now_ms();
            if changed || now - last_register >= 2_000 {
                last_register = now;
                let info = WorkerInfo {
                    owner: cfg.owner.clone(),
                    host: hostname(),
                    pid: std::process::id() as i64,
                    started_at_ms: started,
                    seen_at_ms: now,
                    paused: json!(paused),
                };
                if let Err(e) = queue.register_worker(info).await {
                    tracing::debug!(error = %e, "warmer: could not register the worker");
                }
            }
            if now - last_prune >= 600_000 {
                last_prune = now;
                let keep = cfg.retention.as_millis() as i64;
                match queue.prune(now - keep, now - keep * 7).await {
                    Ok(n) if n > 0 => tracing::info!(pruned = n, "warmer: pruned finished jobs"),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "warmer: prune failed"),
                }
            }
            match queue.reap_expired().await {
                Ok(n) if n > 0 => tracing::warn!(jobs = n, "warmer: took back jobs whose worker stopped heartbeating"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "warmer: reap failed"),
            }
            while active.load(Ordering::Relaxed) < cfg.concurrency.max(1) {
                let job = match queue.claim(&cfg.owner, kinds.clone(), cfg.lease()).await {
                    Ok(Some(j)) => j,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "warmer: claim failed");
                        break;
                    }
                };
                active.fetch_add(1, Ordering::Relaxed);
                let (queue, runner, cfg, progress, active, wake) = (
                    queue.clone(),
                    runner.clone(),
                    cfg.clone(),
                    progress.clone(),
                    active.clone(),
                    wake.clone(),
                );
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    attempt(queue, runner, &cfg, progress.clone(), job, shutdown).await;
                    active.fetch_sub(1, Ordering::Relaxed);
                    wake.notify_one();
                });
            }
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = tokio::time::sleep(cfg.poll) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    // Let running attempts notice the shutdown and release their jobs.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tracing::info!(owner = %cfg.owner, "warmer worker stopped");
}

async fn attempt(
    queue: Arc<dyn Queue>,
    runner: Arc<dyn JobRunner>,
    cfg: &WorkerConfig,
    progress: Arc<Progress>,
    job: Job,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(token) = job.lease_token.clone() else {
        return;
    };
    let started = std::time::Instant::now();
    tracing::info!(job = job.id, kind = %job.kind, attempt = job.attempts, "warmer: job started");
    let ctx = Ctx {
        queue: queue.clone(),
        id: job.id,
        kind: job.kind.clone(),
        token: token.clone(),
        progress: progress.clone(),
    };
    // The heartbeat task ends only when the lease is lost: then the attempt stops.
    let mut beat = {
        let (queue, token, lease, every) = (queue.clone(), token.clone(), cfg.lease(), cfg.heartbeat);
        let id = job.id;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match queue.heartbeat(id, &token, lease).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => tracing::debug!(job = id, error = %e, "warmer: heartbeat failed"),
                }
            }
        })
    };
    let result = tokio::select! {
        r = runner.run(&job, &ctx) => Some(r),
        _ = shutdown.wait_for(|s| *s) => None,
        _ = &mut beat => Some(Err(JobError::LeaseLost)),
    };
    beat.abort();
    if let Ok(mut m) = progress.running.lock() {
        m.remove(&job.id);
    }
    let (finish, outcome) = match result {
        None => (
            Some(Finish::Release {
                reason: "worker shut down".into(),
                retry_in: Duration::ZERO,
            }),
            "released",
        ),
        Some(Ok(v)) => (Some(Finish::Succeeded(v)), "succeeded"),
        Some(Err(JobError::LeaseLost)) => (None, "lease_lost"),
        Some(Err(JobError::Backend(e))) => (
            Some(Finish::Release {
                reason: e.to_string(),
                retry_in: Duration::from_secs(1),
            }),
            "paused",
        ),
        Some(Err(JobError::Wait { reason, retry_in })) => (Some(Finish::Release { reason, retry_in }), "waiting"),
        Some(Err(JobError::Failed(error))) => {
            let retry_in = backoff(cfg.backoff_base, job.attempts, cfg.backoff_max);
            let last = job.attempts >= job.max_attempts;
            (
                Some(Finish::Failed { error, retry_in }),
                if last { "dead" } else { "failed" },
            )
        }
        Some(Err(JobError::Fatal(error))) => (Some(Finish::Dead(error)), "dead"),
    };
    let elapsed = started.elapsed();
    if outcome == "lease_lost" {
        // Seen by a heartbeat or a checkpoint, whichever came first.
        tracing::warn!(job = job.id, kind = %job.kind, "warmer: lease lost to another worker; stopping this attempt");
    }
    if let Some(f) = finish {
        let detail = match &f {
            Finish::Failed { error, .. } | Finish::Dead(error) => error.clone(),
            Finish::Release { reason, .. } => reason.clone(),
            Finish::Succeeded(v) => v.to_string(),
        };
        match queue.finish(job.id, &token, f).await {
            Ok(true) => {
                tracing::info!(job = job.id, kind = %job.kind, outcome, seconds = elapsed.as_secs_f64(), detail = %detail, "warmer: job attempt ended")
            }
            Ok(false) => {
                tracing::warn!(job = job.id, kind = %job.kind, "warmer: the job was taken over meanwhile; its new owner's state is kept")
            }
            Err(e) => {
                tracing::warn!(job = job.id, error = %e, "warmer: could not record the job's end; its lease will expire and it runs again")
            }
        }
    }
    runner.finished(&job, outcome, elapsed);
}
