//! `recache warmer`: the job queue from the command line.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::ops::{open, open_queue, print, Exit, QueueEnv};
use super::{ConfigArgs, OutputFormat, EXIT_PROBLEM};
use recache_ops::recovery::jobs::{default_priority, REBUILD_INDEX, REBUILD_VECTORS, RECONCILE_METADATA, REFETCH};
use recache_ops::recovery::warm;
use recache_storage::queue::{Job, JobState, NewJob};
use recache_storage::roles::factory::IndexAccess;
use recache_storage::roles::now_ms;

#[derive(Args, Debug)]
pub struct WarmerArgs {
    #[command(subcommand)]
    pub command: WarmerCommand,
}

#[derive(Subcommand, Debug)]
pub enum WarmerCommand {
    /// Jobs by state, kind and priority; workers; throughput; ETA; paused kinds. Exits 1 if any job is dead.
    Status(StatusArgs),
    /// Run a standalone worker (several processes can share one queue) until Ctrl-C.
    Run(RunArgs),
    /// Queue a JSONL file of OpenAI-style requests to buy and store for a tenant.
    Enqueue(EnqueueArgs),
    /// Move the jobs of these repositories (namespaces) to the front of the queue.
    Priority(PriorityArgs),
    /// Queue a rebuild of one store (or all) from the others.
    Rebuild(RebuildArgs),
    /// Put dead jobs back in the queue with fresh attempts.
    Retry(RetryArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Jobs run at once (default: warmer.concurrency).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Exit once no job is queued, running or waiting for a retry.
    #[arg(long)]
    pub exit_when_idle: bool,
}

#[derive(Args, Debug)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// JSONL, one request per line: a batch-file line ("url", "body", optional
    /// "headers" such as anthropic-version), an Anthropic batch line ("params"),
    /// a Gemini batch line ("request", with "model"), or a bare request body.
    #[arg(long)]
    pub file: std::path::PathBuf,
    /// The endpoint of the bare bodies: chat, completions, embeddings,
    /// responses, messages, count_tokens or generate_content (default: told
    /// by the body's fields: contents, messages, prompt or input).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub tenant: String,
    /// The namespace (repository) the answers are stored under.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value_t = 0)]
    pub priority: i64,
    /// Stop each job once it has spent this much (USD).
    #[arg(long)]
    pub max_cost_usd: Option<f64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct PriorityArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Comma-separated repositories (namespaces), e.g. org/repo-1,org/repo-2.
    #[arg(long, value_delimiter = ',', required = true)]
    pub repos: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    pub priority: i64,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Index,
    Vectors,
    Metadata,
    Artifacts,
    All,
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// Budget for buying back missing artifacts (scope artifacts or all).
    #[arg(long)]
    pub max_cost_usd: Option<f64>,
    /// Wait for the jobs to finish (a worker must be running: `recache serve` or `warmer run`).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1).
    #[arg(long, default_value_t = 3600)]
    pub wait_timeout: u64,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RetryArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Retry the dead jobs (the only kind of retry there is; the flag says so).
    #[arg(long, required = true)]
    pub dead: bool,
    /// Only this kind.
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

pub async fn run(args: WarmerArgs) -> i32 {
    let res = match args.command {
        WarmerCommand::Status(a) => status(a).await,
        WarmerCommand::Run(a) => run_worker(a).await,
        WarmerCommand::Enqueue(a) => enqueue(a).await,
        WarmerCommand::Priority(a) => priority(a).await,
        WarmerCommand::Rebuild(a) => rebuild(a).await,
        WarmerCommand::Retry(a) => retry(a).await,
    };
    super::ops::exit_code("warmer", res)
}

fn backend(e: recache_engine::error::BackendError) -> Exit {
    Exit::problem(e.to_string())
}

/// Progress of a job from its payload: (done, total).
fn progress_of(j: &Job) -> Option<(u64, u64)> {
    let p = &j.payload;
    let done = p["scanned"].as_u64().or(p["cursor"].as_u64())?;
    let total = p["total"]
        .as_u64()
        .or(p["requests"].as_array().map(|a| a.len() as u64))?;
    Some((done, total))
}

async fn status(a: StatusArgs) -> Result<i32, Exit> {
    let r = open_queue(&a.config).await?;
    let q = &r.queue;
    let now = now_ms();
    let counts = q.counts().await.map_err(backend)?;
    let running = q.list(Some(JobState::Running), 100).await.map_err(backend)?;
    let dead = q.list(Some(JobState::Dead), 20).await.map_err(backend)?;
    let mut workers = q.workers(now - 30_000).await.map_err(backend)?;
    workers.retain(|w| !recache_storage::queue::worker::is_gateway(&w.owner));
    let done_hour = q.succeeded_since(now - 3_600_000).await.map_err(backend)?;
    let spent_hour = q.spend_since(now - 3_600_000).await.map_err(backend)?;
    let running_json: Vec<Value> = running
        .iter()
        .map(|j| {
            let mut v = json!({"id": j.id, "kind": j.kind, "attempt": j.attempts, "owner": j.lease_owner,
                               "priority": j.priority, "namespace": j.namespace});
            if let (Some((done, total)), Some(started)) = (progress_of(j), j.started_at_ms) {
                let secs = ((now - started) as f64 / 1000.0).max(0.001);
                let rate = done as f64 / secs;
                v["done"] = json!(done);
                v["total"] = json!(total);
                v["per_second"] = json!(rate);
                v["eta_seconds"] = json!(if rate > 0.0 {
                    (total.saturating_sub(done)) as f64 / rate
                } else {
                    f64::NAN
                });
            }
            v
        })
        .collect();
    let report = json!({
        "counts": counts,
        "running": running_json,
        "dead": dead.iter().map(|j| json!({"id": j.id, "kind": j.kind, "attempts": j.attempts, "last_error": j.last_error})).collect::<Vec<_>>(),
        "workers": workers,
        "succeeded_last_hour": done_hour,
        "warmer_spend_last_hour_usd": spent_hour,
        "max_spend_usd_per_hour": r.config.warmer.max_spend_usd_per_hour,
    });
    print(a.format, &report, |_| {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<20} {:>8} {:>8} {:>8} {:>8} {:>10}  {}\n",
            "kind", "queued", "running", "failed", "dead", "succeeded", "top priority"
        ));
        for kind in recache_ops::job_kinds() {
            let n = |st: JobState| {
                counts
                    .iter()
                    .filter(|c| c.kind == kind && c.state == st)
                    .map(|c| c.count)
                    .sum::<u64>()
            };
            let top = counts
                .iter()
                .filter(|c| c.kind == kind && matches!(c.state, JobState::Queued | JobState::Failed))
                .map(|c| c.max_priority)
                .max();
            out.push_str(&format!(
                "{:<20} {:>8} {:>8} {:>8} {:>8} {:>10}  {}\n",
                kind,
                n(JobState::Queued),
                n(JobState::Running),
                n(JobState::Failed),
                n(JobState::Dead),
                n(JobState::Succeeded),
                top.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
            ));
        }
        out.push_str(&format!("\nworkers seen in the last 30 s: {}\n", workers.len()));
        for w in &workers {
            let paused = w.paused.as_object().filter(|m| !m.is_empty()).map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k} (waits for {})",
                            v.as_array()
                                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            out.push_str(&format!(
                "  {}  pid {}  {}\n",
                w.owner,
                w.pid,
                paused
                    .map(|p| format!("paused: {p}"))
                    .unwrap_or_else(|| "active".into())
            ));
        }
        for j in &running_json {
            let prog = match (j["done"].as_u64(), j["total"].as_u64()) {
                (Some(d), Some(t)) => format!(
                    "{d}/{t} ({:.0}/s, ETA {:.0} s)",
                    j["per_second"].as_f64().unwrap_or(0.0),
                    j["eta_seconds"].as_f64().unwrap_or(0.0)
                ),
                _ => "in progress".into(),
            };
            out.push_str(&format!(
                "running #{} {} attempt {} on {}: {prog}\n",
                j["id"],
                j["kind"].as_str().unwrap_or(""),
                j["attempt"],
                j["owner"].as_str().unwrap_or("?")
            ));
        }
        for j in &dead {
            out.push_str(&format!(
                "dead #{} {} after {} attempts: {}\n",
                j.id,
                j.kind,
                j.attempts,
                j.last_error.as_deref().unwrap_or("")
            ));
        }
        out.push_str(&format!(
            "throughput: {done_hour} jobs succeeded in the last hour; warmer spend ${spent_hour:.4} of ${:.2}/hour\n",
            r.config.warmer.max_spend_usd_per_hour
        ));
        out
    });
    Ok(if dead.is_empty() { 0 } else { EXIT_PROBLEM })
}

/// The job kinds that delete answers: a worker that shares the embedded
/// artifact store with the gateway that owns it leaves them to the gateway.
const DELETES_ANSWERS: [&str; 5] = [
    recache_ops::recovery::purge::PURGE,
    recache_ops::backup::erase::ERASE,
    recache_ops::recovery::reseal::RESEAL,
    recache_ops::recovery::REPAIR_ORPHANS,
    recache_ops::drills::wipe::DRILL_WIPE,
];

async fn run_worker(a: RunArgs) -> Result<i32, Exit> {
    // Beside a gateway that owns the embedded artifact store, this worker
    // shares it (its answers one file each) and leaves the jobs that delete
    // answers to the gateway: only the owner deletes segment records
    // (docs/backends/segments.md).
    let (r, shared) = match open(&a.config, IndexAccess::Write, "info").await {
        Ok(r) => (r, false),
        Err(Exit(_, msg))
            if msg.contains("embedded artifact store") && msg.contains("in use by another recache process") =>
        {
            (open(&a.config, IndexAccess::WriteShared, "info").await?, true)
        }
        Err(e) => return Err(e),
    };
    // rebuild-vectors needs the embedders.
    if let Some(sem) = recache_engine::semantic::Semantic::open(&r.config, r.cache.clone(), &r.upstreams)
        .await
        .map_err(|e| Exit::config(format!("semantic matching: {e:#}")))?
    {
        let _ = r.semantic.set(sem);
    }
    let mut cfg = recache_storage::queue::worker::WorkerConfig::from_config(&r.config, "warmer");
    if let Some(c) = a.concurrency {
        cfg.concurrency = c.max(1);
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let runner: Arc<dyn recache_storage::queue::worker::JobRunner> = if shared {
        let kinds: Vec<&'static str> = r.kinds().into_iter().filter(|k| !DELETES_ANSWERS.contains(k)).collect();
        tracing::info!(
            left_to_the_gateway = ?DELETES_ANSWERS,
            "the gateway owns the embedded artifact store: this worker shares it and runs the other kinds"
        );
        Arc::new(recache_ops::recovery::purge::OnlyKinds {
            recovery: r.clone(),
            kinds,
        })
    } else {
        r.clone()
    };
    let worker = tokio::spawn(recache_storage::queue::worker::run(
        r.queue.clone(),
        runner,
        r.cache.roles.breakers.clone(),
        cfg,
        r.progress.clone(),
        rx,
    ));
    // The usage counters of refetches (cost reports) reach metadata as in `serve`.
    let flusher = {
        let cache = r.cache.clone();
        let every = Duration::from_millis(r.config.cache.hit_flush_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                cache.flush_hits().await;
            }
        })
    };
    let idle = async {
        if !a.exit_when_idle {
            return std::future::pending::<()>().await;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(counts) = r.queue.counts().await {
                let live = counts
                    .iter()
                    .any(|c| matches!(c.state, JobState::Queued | JobState::Running | JobState::Failed));
                if !live {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = super::serve::shutdown_signal() => {}
        _ = idle => {}
    }
    let _ = tx.send(true);
    let _ = worker.await;
    flusher.abort();
    r.cache.flush_hits().await;
    let _ = r.cache.roles.index.flush().await;
    Ok(0)
}

async fn enqueue(a: EnqueueArgs) -> Result<i32, Exit> {
    let text =
        std::fs::read_to_string(&a.file).map_err(|e| Exit::config(format!("cannot read {}: {e}", a.file.display())))?;
    let endpoint = match a.endpoint.as_deref() {
        None => None,
        Some(name) => Some(recache_core::endpoint::Endpoint::from_name(name).ok_or_else(|| {
            Exit::config(format!(
                "--endpoint: unknown endpoint '{name}' (chat, completions, embeddings, responses, messages, count_tokens, generate_content)"
            ))
        })?),
    };
    let requests = warm::parse_file(&text, endpoint).map_err(|e| Exit::config(format!("{}: {e}", a.file.display())))?;
    if !recache_gateway::gateway::directives::valid_namespace(&a.namespace) {
        return Err(Exit::config(recache_gateway::gateway::directives::NAMESPACE_RULE));
    }
    let r = open_queue(&a.config).await?;
    if warm::tenant_ttl(&r.config, &a.tenant).is_none() {
        return Err(Exit::config(format!(
            "tenant '{}' is not in the configuration",
            a.tenant
        )));
    }
    let mut ids = Vec::new();
    for mut job in warm::jobs_for(
        &requests,
        &a.tenant,
        &a.namespace,
        a.priority,
        r.config.warmer.max_attempts,
    ) {
        if let Some(m) = a.max_cost_usd {
            job.payload["max_cost_usd"] = json!(m);
        }
        let e = r.queue.enqueue(job).await.map_err(backend)?;
        ids.push(json!({"id": e.id, "created": e.created}));
    }
    let report = json!({"requests": requests.len(), "jobs": ids, "tenant": a.tenant, "namespace": a.namespace});
    print(a.format, &report, |v| {
        let created = v["jobs"]
            .as_array()
            .map(|a| a.iter().filter(|j| j["created"] == true).count())
            .unwrap_or(0);
        format!(
            "queued {} requests for {}/{} in {} jobs ({} new, {} already queued)\n",
            requests.len(),
            a.tenant,
            a.namespace,
            ids.len(),
            created,
            ids.len() - created
        )
    });
    Ok(0)
}

async fn priority(a: PriorityArgs) -> Result<i32, Exit> {
    let r = open_queue(&a.config).await?;
    let n = r.queue.prioritize(a.repos.clone(), a.priority).await.map_err(backend)?;
    let report = json!({"repos": a.repos, "priority": a.priority, "jobs": n});
    print(a.format, &report, |_| {
        format!("moved {n} jobs of {} to priority {}\n", a.repos.join(", "), a.priority)
    });
    Ok(0)
}

/// The jobs a rebuild scope queues, in the order they should run.
pub(crate) fn rebuild_jobs(scope: Scope, max_cost_usd: Option<f64>, max_attempts: u32) -> Vec<NewJob> {
    let kinds: &[&str] = match scope {
        Scope::Index => &[REBUILD_INDEX],
        Scope::Metadata => &[RECONCILE_METADATA],
        Scope::Vectors => &[REBUILD_VECTORS],
        Scope::Artifacts => &[REFETCH],
        Scope::All => &[RECONCILE_METADATA, REBUILD_INDEX, REBUILD_VECTORS, REFETCH],
    };
    kinds
        .iter()
        .map(|k| {
            let mut p = json!({"reason": "warmer rebuild"});
            if *k == REFETCH {
                p["scan"] = json!(true);
                if let Some(m) = max_cost_usd {
                    p["max_cost_usd"] = json!(m);
                }
            }
            NewJob::new(k, p)
                .priority(default_priority(k))
                .unique(format!("{k}:rebuild"))
                .max_attempts(max_attempts)
        })
        .collect()
}

async fn rebuild(a: RebuildArgs) -> Result<i32, Exit> {
    let r = open_queue(&a.config).await?;
    let mut ids = Vec::new();
    for job in rebuild_jobs(a.scope, a.max_cost_usd, r.config.warmer.max_attempts) {
        let kind = job.kind.clone();
        let e = r.queue.enqueue(job).await.map_err(backend)?;
        ids.push((kind, e));
    }
    if !a.wait {
        let report = json!({"jobs": ids.iter().map(|(k, e)| json!({"kind": k, "id": e.id, "created": e.created})).collect::<Vec<_>>()});
        print(a.format, &report, |_| {
            ids.iter()
                .map(|(k, e)| {
                    format!(
                        "queued {k} as job #{}{}\n",
                        e.id,
                        if e.created { "" } else { " (already queued)" }
                    )
                })
                .collect()
        });
        return Ok(0);
    }
    wait_for(
        &r,
        &ids.iter().map(|(_, e)| e.id).collect::<Vec<_>>(),
        a.wait_timeout,
        a.format,
    )
    .await
}

/// Waits for jobs to end, showing their progress; exit 1 unless all succeeded.
async fn wait_for(r: &QueueEnv, ids: &[i64], timeout_s: u64, format: OutputFormat) -> Result<i32, Exit> {
    let (jobs, finished) = wait_jobs(r, ids, timeout_s, format == OutputFormat::Text).await?;
    let ok = finished && jobs.iter().all(|j| j.state == JobState::Succeeded);
    let report = json!({"jobs": jobs, "finished": finished});
    print(format, &report, |_| {
        jobs.iter()
            .map(|j| {
                format!(
                    "#{} {} {}: {}\n",
                    j.id,
                    j.kind,
                    j.state.as_str(),
                    j.result
                        .as_ref()
                        .map(super::ops::pairs)
                        .or(j.last_error.clone())
                        .unwrap_or_default()
                )
            })
            .collect()
    });
    Ok(if ok { 0 } else { EXIT_PROBLEM })
}

/// Polls jobs until they succeed or die (or the timeout), with a progress
/// bar; returns them and whether they all ended.
pub(crate) async fn wait_jobs(r: &QueueEnv, ids: &[i64], timeout_s: u64, bar: bool) -> Result<(Vec<Job>, bool), Exit> {
    let ctx = recache_ops::recovery::local::LocalCtx::new("waiting", bar);
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
    loop {
        let mut jobs = Vec::new();
        for id in ids {
            if let Some(j) = r.queue.get(*id).await.map_err(backend)? {
                jobs.push(j);
            }
        }
        let (done, total) = jobs
            .iter()
            .filter_map(progress_of)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        recache_storage::queue::worker::JobCtx::progress(ctx.as_ref(), done, Some(total.max(done)));
        let finished = jobs
            .iter()
            .all(|j| matches!(j.state, JobState::Succeeded | JobState::Dead));
        if finished || std::time::Instant::now() > deadline {
            ctx.finish();
            return Ok((jobs, finished));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Queues `job` for a running gateway's workers (a CLI process cannot open
/// the embedded index a gateway owns), waits for it, and returns it once it
/// succeeded; any other end is an error naming the job.
pub(crate) async fn run_in_gateway(
    r: &QueueEnv,
    job: recache_storage::queue::NewJob,
    timeout_s: u64,
    bar: bool,
) -> Result<Job, Exit> {
    let e = r.queue.enqueue(job).await.map_err(|e| Exit::problem(e.to_string()))?;
    let (jobs, finished) = wait_jobs(r, &[e.id], timeout_s, bar).await?;
    succeeded(jobs, finished, "job")
}

/// The one job [`wait_jobs`] waited for, once it succeeded; any other end is
/// an error naming it (`what`: how to call it, e.g. `purge job`).
pub(crate) fn succeeded(jobs: Vec<Job>, finished: bool, what: &str) -> Result<Job, Exit> {
    let j = jobs
        .into_iter()
        .next()
        .ok_or_else(|| Exit::problem("the job vanished"))?;
    if !finished || j.state != JobState::Succeeded {
        return Err(Exit::problem(format!(
            "{what} #{} ended {}: {}",
            j.id,
            j.state.as_str(),
            j.last_error.clone().unwrap_or_default()
        )));
    }
    Ok(j)
}

async fn retry(a: RetryArgs) -> Result<i32, Exit> {
    let r = open_queue(&a.config).await?;
    debug_assert!(a.dead, "clap requires --dead");
    let n = r.queue.retry_dead(a.kind.clone()).await.map_err(backend)?;
    print(a.format, &json!({"retried": n}), |_| {
        format!("{n} dead jobs queued again\n")
    });
    Ok(0)
}
