//! One drill, phase by phase: start (or reach) the gateway, seed, take a
//! backup (full restore), steady load, the fault, the repair, the wait for
//! recovery, the probe (RPO), the audit (integrity), the report.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::fault::{self, Faults};
use super::measure::{self, counted_error, hit_rate, in_range, RECOVERY_SHARE, RECOVERY_WINDOW_S};
use super::monitor::{self, Observed};
use super::report::{Event, Marks, Report, Row};
use super::scenario::{Kind, Scenario};
use super::subject::Subject;
use super::workload::{self, Outcome, Sample, Workload};
use super::{history, loss};
use crate::config::Config;
use crate::roles::now_ms;

pub struct Options {
    pub scenario: Scenario,
    /// A running gateway; `None`: a managed one.
    pub url: Option<String>,
    pub out: Option<PathBuf>,
    pub rps: f64,
    pub duration: Duration,
    pub steady: Duration,
    pub fault_seconds: u64,
    pub entries: usize,
    pub fraction: f64,
    /// The text of a JSONL request file.
    pub workload: Option<String>,
    pub probe_max: usize,
    /// The integrity audit looks at this many entries at most (a random run of them).
    pub audit_sample: u64,
    pub model: String,
    /// The client key (`--url`).
    pub key: Option<String>,
    /// The config file, for the audit of a remote gateway's stores.
    pub config_path: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Not run: unsafe or impossible as asked (exit 2).
    #[error("{0}")]
    Refused(String),
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for DrillError {
    fn from(e: anyhow::Error) -> Self {
        DrillError::Failed(e)
    }
}

pub struct Finished {
    pub report: Report,
    pub dir: PathBuf,
}

/// The stores a loss or a restore destroys.
pub fn destroyed(scenario: Scenario, config: &Config) -> Vec<&'static str> {
    match scenario {
        Scenario::IndexLoss => vec!["index"],
        Scenario::ArtifactsLoss => vec!["artifacts"],
        Scenario::MetadataLoss => vec!["metadata"],
        Scenario::FullRestore => {
            let mut v = vec!["index", "artifacts", "metadata"];
            if config.vectors.engine != "disabled" {
                v.push("vectors");
            }
            v
        }
        _ => vec![],
    }
}

fn engine_name(config: &Config, backend: &str) -> String {
    match backend {
        "index" => config.index.engine.clone(),
        "artifacts" => config.artifacts.engine.clone(),
        "metadata" => config.metadata.engine.clone(),
        "vectors" => config.vectors.engine.clone(),
        _ => "provider".into(),
    }
}

/// Refuses what must not run: a loss without `allow_destructive`, bad options.
pub fn preflight(config: &Config, o: &Options) -> Result<(), DrillError> {
    let refuse = |m: String| Err(DrillError::Refused(m));
    for b in destroyed(o.scenario, config) {
        if !config.drill.engine(b).allow_destructive {
            return refuse(format!(
                "{} destroys data in the {b} store ({}): refused. Set [drill.engines.{b}] allow_destructive = true \
                 for an engine whose data may be lost (never a production one)",
                o.scenario.name(),
                engine_name(config, b)
            ));
        }
    }
    if o.url.is_some() && o.scenario.kind() != Kind::Outage {
        return refuse(format!(
            "{} runs against a managed gateway only (--managed): the drill destroys and restores the stores \
             while it controls the gateway in front of them",
            o.scenario.name()
        ));
    }
    if o.url.is_some() && o.key.is_none() {
        return refuse("--url needs a client key for the traffic (see --key-env)".into());
    }
    if o.rps <= 0.0 || o.rps > 10_000.0 {
        return refuse("--rps must be above 0 and at most 10000".into());
    }
    if !(o.fraction > 0.0 && o.fraction <= 1.0) {
        return refuse("--fraction must be above 0 and at most 1".into());
    }
    if o.fault_seconds == 0 {
        return refuse("--fault-seconds must be at least 1".into());
    }
    if o.entries == 0 && o.workload.is_none() {
        return refuse("--entries must be at least 1".into());
    }
    Ok(())
}

/// The drill's clock and timeline.
struct Clock {
    start: Instant,
    start_ms: i64,
    events: Vec<Event>,
    echo: bool,
}

impl Clock {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    fn log(&mut self, what: impl Into<String>) -> f64 {
        let t = self.t();
        let what = what.into();
        if self.echo {
            eprintln!("[{t:7.1}s] {what}");
        }
        self.events.push(Event {
            t,
            at: crate::backup::format_time(self.start_ms + (t * 1000.0) as i64),
            what,
        });
        t
    }
}

fn snapshot(samples: &Mutex<Vec<Sample>>) -> Vec<Sample> {
    let mut v = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    v.sort_by(|a, b| a.t.total_cmp(&b.t));
    v
}

/// A breached safety limit over the last 5 s, if any.
fn breach(config: &Config, samples: &[Sample], now: f64, provider_window: Option<(f64, f64)>) -> Option<String> {
    let recent = in_range(samples, now - 5.0, now);
    if recent.len() < 10 {
        return None;
    }
    let faulted = |s: &Sample| measure::in_window(s, provider_window);
    let errors = recent.iter().filter(|s| counted_error(s, faulted(s))).count();
    let share = errors as f64 / recent.len() as f64;
    if share > config.drill.max_error_rate {
        return Some(format!(
            "{errors} of {} requests failed over the last 5 s ({:.1} %), over drill.max_error_rate ({:.1} %)",
            recent.len(),
            share * 100.0,
            config.drill.max_error_rate * 100.0
        ));
    }
    let (_, p99) = measure::latency(recent);
    if p99 > config.drill.max_p99_ms as f64 {
        return Some(format!(
            "p99 latency {p99:.0} ms over the last 5 s, over drill.max_p99_ms ({} ms)",
            config.drill.max_p99_ms
        ));
    }
    None
}

fn fmt_s(s: f64) -> String {
    if s >= 120.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

pub async fn run(config: &Config, env: &HashMap<String, String>, o: Options) -> Result<Finished, DrillError> {
    preflight(config, &o)?;
    let scenario = o.scenario;
    let started_ms = now_ms();
    let id = format!("{}-{}", crate::backup::format_id(started_ms), scenario.name());
    let mut clock = Clock {
        start: Instant::now(),
        start_ms: started_ms,
        events: Vec::new(),
        echo: o.progress,
    };
    let targets = config.drill.targets_for(scenario.backend());
    let subject = match &o.url {
        None => Subject::managed(config, env).await?,
        Some(url) => {
            let token = config.admin_token(env);
            if token.is_none() {
                return Err(DrillError::Refused(format!(
                    "--url needs the gateway's admin token in {}",
                    config.server.admin_token_env
                )));
            }
            Subject::remote(config, url, o.key.clone().unwrap_or_default(), token)
        }
    };
    let subject = Arc::new(subject);
    let mode = if subject.is_managed() { "managed" } else { "remote" };
    let engines: serde_json::Map<String, Value> = ["index", "artifacts", "vectors", "metadata"]
        .iter()
        .map(|b| (b.to_string(), json!(engine_name(config, b))))
        .collect();
    clock.log(format!(
        "drill {id}: {} against a {mode} gateway at {} (index {}, artifacts {}, vectors {}, metadata {})",
        scenario.name(),
        subject.base,
        engines["index"],
        engines["artifacts"],
        engines["vectors"],
        engines["metadata"]
    ));
    let result = drive(&mut clock, &subject, config, env, &o, &id).await;
    // Whatever happened, the managed gateway goes away cleanly.
    if let Ok(s) = Arc::try_unwrap(subject) {
        s.close().await;
    }
    let mut measured = result?;
    measured.settings["engines"] = Value::Object(engines);
    measured.settings["mode"] = json!(mode);
    let report = build(&clock, config, &o, &id, mode, started_ms, targets, measured);
    let dir = o.out.clone().unwrap_or_else(|| config.drill.out_dir.join(&id));
    report
        .write(&dir)
        .map_err(|e| DrillError::Failed(anyhow::anyhow!("cannot write the report to {}: {e}", dir.display())))?;
    // The drill's history lives in the configured metadata store.
    match crate::roles::factory::open_metadata(config).await {
        Ok((meta, _)) => {
            if let Err(e) = history::record(meta.as_ref(), &report, &dir.display().to_string()).await {
                eprintln!("recache drill: warning: the drill could not be recorded in metadata: {e}");
            }
        }
        Err(e) => eprintln!("recache drill: warning: metadata not reachable to record the drill: {e:#}"),
    }
    Ok(Finished { report, dir })
}

/// Everything measured, before it becomes a report.
struct Measured {
    samples: Vec<Sample>,
    observed: Observed,
    t_load: f64,
    t_fault: f64,
    t_repair: f64,
    t_end: f64,
    steady_hit: f64,
    steady_rps: f64,
    steady_spend_rate: f64,
    /// The share of requests predicted to go to the provider during the fault.
    predicted_share: f64,
    predicted_rate: f64,
    recovered: Option<f64>,
    healthy: Option<f64>,
    aborted: Option<String>,
    probed: usize,
    lost: usize,
    rpo_seconds: f64,
    rpo_note: String,
    integrity: Option<(u64, u64, Value)>,
    fault_methods: Vec<String>,
    issues: Vec<String>,
    settings: Value,
}

async fn drive(
    clock: &mut Clock,
    subject: &Arc<Subject>,
    config: &Config,
    env: &HashMap<String, String>,
    o: &Options,
    id: &str,
) -> Result<Measured, DrillError> {
    let scenario = o.scenario;
    let mut issues = Vec::new();
    let mut w = Workload::new(
        o.entries,
        o.workload.as_deref(),
        &o.model,
        &crate::queue::new_token()[..8],
        config.drill.repeat_share,
        config.drill.holdout_share,
        config.prices.clone(),
    )
    .map_err(DrillError::Refused)?;
    // Seed.
    let bar = o.progress.then(|| {
        let b = indicatif::ProgressBar::new(w.seeded.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message("seeding");
        b
    });
    let failed = workload::seed(subject, &mut w, bar.as_ref()).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let seeded = w.stored_at_ms.iter().filter(|x| x.is_some()).count();
    if seeded == 0 {
        return Err(DrillError::Failed(anyhow::anyhow!(
            "seeding failed: none of the {} requests was answered (is the provider reachable?)",
            w.seeded.len()
        )));
    }
    clock.log(format!(
        "seeded {seeded} requests ({failed} failed); {} of them are repeated by traffic, {} held out for the probe",
        w.traffic,
        w.seeded.len() - w.traffic
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A full restore restores the newest verified backup: take one now.
    let mut backup: Option<(String, i64)> = None;
    if scenario == Scenario::FullRestore {
        let recovery = subject.recovery().expect("managed").clone();
        let targets = crate::backup::Targets::open(subject.config.clone(), env)
            .map_err(|e| DrillError::Failed(anyhow::anyhow!("backup target: {e}")))?;
        let ctx = crate::recovery::local::LocalCtx::new("backup", false);
        let opts = crate::backup::create::CreateOptions {
            trigger: "manual".into(),
            full: false,
        };
        let r = crate::backup::run::run_create(&recovery, &targets, &opts, ctx.as_ref())
            .await
            .map_err(|e| DrillError::Failed(anyhow::anyhow!("the backup before the drill failed: {e}")))?;
        if r["ok"] != json!(true) {
            return Err(DrillError::Failed(anyhow::anyhow!(
                "the backup before the drill failed its verification: {r}"
            )));
        }
        let set = r["set"].as_str().unwrap_or_default().to_string();
        clock.log(format!(
            "backup {set} taken and verified ({} entries, {} artifacts) on {}",
            r["entries"], r["artifacts"], r["target"]
        ));
        backup = Some((set, now_ms()));
    }

    // Load and monitor.
    let w = Arc::new(w);
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = tokio::spawn(workload::load(
        subject.clone(),
        w.clone(),
        o.rps,
        clock.start,
        samples.clone(),
        stop_rx.clone(),
    ));
    let mon = tokio::spawn(monitor::run(subject.clone(), clock.start, observed.clone(), stop_rx));
    let t_load = clock.log(format!(
        "load started: {} requests/s, {:.0} % repeats",
        o.rps,
        config.drill.repeat_share * 100.0
    ));
    let mut aborted: Option<String> = None;
    let provider_down = scenario == Scenario::ProviderDown;

    // Steady state.
    let steady_end = t_load + o.steady.as_secs_f64().max(2.0);
    while clock.t() < steady_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(b) = breach(config, &snapshot(&samples), clock.t(), None) {
            aborted = Some(format!("before the fault: {b}"));
            break;
        }
    }
    let xs = snapshot(&samples);
    let steady = in_range(&xs, t_load + 1.0, clock.t());
    let steady_len = (clock.t() - t_load - 1.0).max(0.1);
    let steady_hit = hit_rate(steady);
    let misses: Vec<&Sample> = steady.iter().filter(|s| s.outcome == Outcome::Miss).collect();
    let steady_miss_share = if steady.is_empty() {
        0.0
    } else {
        misses.len() as f64 / steady.len() as f64
    };
    let mean_miss_cost = if misses.is_empty() {
        0.0
    } else {
        misses.iter().map(|s| s.cost_usd).sum::<f64>() / misses.len() as f64
    };
    let steady_rps = steady.len() as f64 / steady_len;
    let steady_spend_rate = steady.iter().map(|s| s.cost_usd).sum::<f64>() / steady_len;
    let lost_fraction = if scenario == Scenario::ArtifactsLoss {
        o.fraction
    } else {
        0.0
    };
    let predicted_share = scenario.predicted_miss_share(steady_miss_share, lost_fraction);
    let predicted_rate = steady_rps * predicted_share * mean_miss_cost;
    clock.log(format!(
        "steady state: {:.1} requests/s, hit rate {}, p99 {:.1} ms, spend {:.6} USD/s; prediction during the fault: \
         {} of requests to the provider, {:.6} USD/s",
        steady_rps,
        pct(steady_hit),
        measure::latency(steady).1,
        steady_spend_rate,
        pct(predicted_share),
        predicted_rate
    ));

    // A drill measures a working cache: without hits in the steady state there is nothing to lose.
    if aborted.is_none() && steady_hit < config.drill.repeat_share / 2.0 {
        aborted = Some(format!(
            "the steady-state hit rate is {} where about {} was expected: the gateway does not serve repeats \
             from its cache (a store down or misconfigured?), so no fault was injected",
            pct(steady_hit),
            pct(config.drill.repeat_share)
        ));
    }

    // The fault.
    let mut faults = Faults::default();
    let mut fault_methods = Vec::new();
    let t_fault = clock.t();
    let mut t_repair = t_fault;
    if aborted.is_none() {
        match scenario.kind() {
            Kind::Outage => {
                for b in scenario.faulted() {
                    let m = fault::method(subject, b).map_err(|e| {
                        DrillError::Refused(format!("{}: cannot make {b} unreachable here: {e}", scenario.name()))
                    })?;
                    fault_methods.push(format!("{b}: {m}"));
                    let what = faults.outage(subject, b, o.fault_seconds).await?;
                    clock.log(format!("FAULT {what}"));
                }
                let until = t_fault + o.fault_seconds as f64;
                while clock.t() < until {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let window = provider_down.then_some((t_fault, until + 2.0));
                    if let Some(b) = breach(config, &snapshot(&samples), clock.t(), window) {
                        aborted = Some(format!("during the fault: {b}"));
                        break;
                    }
                }
                for line in faults.undo(subject).await {
                    t_repair = clock.log(format!("REPAIR {line}"));
                }
            }
            Kind::Loss => {
                let roles = subject.roles().expect("losses run managed");
                match scenario {
                    Scenario::IndexLoss => {
                        let n = loss::wipe_index(roles).await?;
                        fault_methods.push("index: every pointer and the generation marker deleted".into());
                        clock.log(format!("FAULT index wiped: {n} keys deleted"));
                        if config.index.engine == "redis" {
                            t_repair = clock.log(
                                "REPAIR left to the gateway: its recovery watch notices the missing generation marker \
                                 and rebuilds the index from metadata (no provider call)",
                            );
                        } else {
                            let job = subject.enqueue(crate::recovery::REBUILD_INDEX, json!({})).await?;
                            t_repair = clock.log(format!(
                                "REPAIR rebuild-index job #{job} queued (an in-process index cannot lose its data \
                                 while the gateway runs, so nothing notices it by itself)"
                            ));
                        }
                    }
                    Scenario::ArtifactsLoss => {
                        let (n, total) = loss::delete_artifacts(roles, o.fraction).await?;
                        fault_methods.push(format!("artifacts: {} of the objects deleted", pct(o.fraction)));
                        clock.log(format!("FAULT {n} of {total} artifacts deleted"));
                        let job = subject.enqueue(crate::recovery::REFETCH, json!({"scan": true})).await?;
                        t_repair = clock.log(format!(
                            "REPAIR refetch job #{job} queued: the entries whose artifact is gone are bought back \
                             from the provider, most valuable first (repair --missing-artifacts)"
                        ));
                    }
                    _ => {
                        let n = loss::wipe_metadata(roles).await?;
                        fault_methods.push("metadata: every entry row deleted".into());
                        clock.log(format!("FAULT metadata wiped: {n} entry rows deleted"));
                        let job = subject.enqueue(crate::recovery::RECONCILE_METADATA, json!({})).await?;
                        t_repair = clock.log(format!(
                            "REPAIR reconcile-metadata job #{job} queued: the rows are rebuilt from the artifacts' \
                             envelopes (no provider call)"
                        ));
                    }
                }
            }
            Kind::Restore => {
                let roles = subject.roles().expect("restores run managed");
                let recovery = subject.recovery().expect("managed").clone();
                fault_methods.push("every store wiped, then the newest verified backup restored".into());
                // All four stores are lost at one instant: the index breaker is held open
                // while they are wiped, so no answer is stored half-way (into a store
                // already wiped and one not yet).
                subject.force_open("index", 600).await?;
                let v = loss::wipe_vectors(roles).await?;
                let m = loss::wipe_metadata(roles).await?;
                let i = loss::wipe_index(roles).await?;
                let (a, _) = loss::delete_artifacts(roles, 1.0).await?;
                subject.reset("index").await?;
                clock.log(format!(
                    "FAULT every store wiped: {i} index keys, {a} artifacts, {m} entry rows, {v} vectors \
                     (the index breaker held open meanwhile)"
                ));
                let targets = crate::backup::Targets::open(subject.config.clone(), env)
                    .map_err(|e| DrillError::Failed(anyhow::anyhow!("backup target: {e}")))?;
                let set = crate::backup::run::resolve(&targets, crate::backup::Which::Primary, None, true)
                    .await
                    .map_err(|e| DrillError::Failed(anyhow::anyhow!("{e}")))?;
                clock.log(format!("REPAIR restoring backup {set} (the newest verified set)"));
                // Traffic went on meanwhile, so the stores are not empty: restore into them.
                // The wipe may have tripped a breaker (timeouts under load): a restore
                // waits for the stores' breakers to close, and is tried again (it is idempotent).
                let mut attempt = 0;
                let r = loop {
                    attempt += 1;
                    wait_closed(subject, &["index", "artifacts", "metadata"], Duration::from_secs(90)).await;
                    let ctx = crate::recovery::local::LocalCtx::new("restore", false);
                    match crate::backup::run::run_restore(
                        &recovery,
                        &targets,
                        crate::backup::Which::Primary,
                        &set,
                        true,
                        ctx.as_ref(),
                    )
                    .await
                    {
                        Ok(r) => break r,
                        Err(e) if attempt < 3 => {
                            clock.log(format!("REPAIR restore attempt {attempt} failed ({e}); trying again"));
                        }
                        Err(e) => {
                            return Err(DrillError::Failed(anyhow::anyhow!(
                                "the restore failed {attempt} times: {e}"
                            )))
                        }
                    }
                };
                if r["ok"] != json!(true) {
                    issues.push(format!("The restore reported problems: {}", r["problems"]));
                }
                t_repair = clock.log(format!(
                    "REPAIR backup {set} restored in {:.1} s: {} entries, {} artifacts copied, {} pointers; \
                     traffic warms what the set lacks",
                    r["seconds"].as_f64().unwrap_or(0.0),
                    r["entries_written"],
                    r["artifacts_copied"],
                    r["pointers_written"]
                ));
            }
        }
    }
    drop(faults);
    if let Some(a) = &aborted {
        clock.log(format!("ABORT {a}; every fault undone"));
    }

    // Recovery.
    let timeout = config.drill.recovery_timeout();
    let run_until = t_load + o.duration.as_secs_f64();
    let mut recovered = None;
    let mut healthy = None;
    if aborted.is_none() {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = clock.t();
            let xs = snapshot(&samples);
            let window = provider_down.then_some((t_fault, t_repair + 2.0));
            if let Some(b) = breach(config, &xs, now, window) {
                aborted = Some(format!("during the recovery: {b}"));
                clock.log(format!("ABORT {b}"));
                break;
            }
            let last = xs.last().map(|s| s.t).unwrap_or(now);
            if recovered.is_none() {
                recovered = measure::recovered_at(&xs, steady_hit, t_fault, last);
                if let Some(r) = recovered {
                    clock.log(format!(
                        "hit rate back to {} of its steady state from t = {r:.1} s",
                        pct(RECOVERY_SHARE)
                    ));
                }
            }
            if healthy.is_none() {
                healthy = observed.lock().unwrap_or_else(|e| e.into_inner()).healthy_at(t_repair);
                if let Some(h) = healthy {
                    clock.log(format!(
                        "gateway fully healthy from t = {h:.1} s (ready, breakers closed, no recovery job left)"
                    ));
                }
            }
            let settled = recovered.is_some_and(|r| now >= r + RECOVERY_WINDOW_S + 0.5) && healthy.is_some();
            if settled && now >= run_until {
                break;
            }
            if now - t_fault > timeout.as_secs_f64() {
                clock.log(format!(
                    "recovery not complete within drill.recovery_timeout ({})",
                    config.drill.recovery_timeout
                ));
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = load.await;
    let _ = mon.await;
    let t_end = clock.log("load stopped");

    // What was lost (RPO).
    let (probed, lost_idx) = workload::probe(subject, &w, o.probe_max).await;
    let fault_ms = clock.start_ms + (t_fault * 1000.0) as i64;
    let oldest_lost = lost_idx.iter().filter_map(|i| w.stored_at_ms[*i]).min();
    let (rpo_seconds, rpo_note) = match &backup {
        Some((set, at)) => (
            ((fault_ms - at) as f64 / 1000.0).max(0.0),
            format!(
                "time from backup {set} to the fault; {} of {probed} seeded entries not served after the restore",
                lost_idx.len()
            ),
        ),
        None => (
            oldest_lost
                .map(|at| ((fault_ms - at) as f64 / 1000.0).max(0.0))
                .unwrap_or(0.0),
            format!(
                "{} of {probed} seeded entries not served after recovery",
                lost_idx.len()
            ),
        ),
    };
    clock.log(format!("probe: {rpo_note}"));

    // Integrity.
    let integrity = match subject.recovery() {
        Some(r) => Some(audit_managed(r, o.audit_sample).await),
        None => audit_remote(o, o.audit_sample).await,
    };
    match &integrity {
        Some((bad, scanned, _)) => clock.log(format!("audit: {bad} problem(s) in {scanned} entries")),
        None => clock.log("audit: not run (no config file to audit the remote gateway's stores with)"),
    };
    let samples = snapshot(&samples);
    let observed = std::mem::take(&mut *observed.lock().unwrap_or_else(|e| e.into_inner()));
    let settings = json!({
        "rps": o.rps, "duration_seconds": o.duration.as_secs_f64(), "steady_seconds": o.steady.as_secs_f64(),
        "fault_seconds": o.fault_seconds, "entries": w.seeded.len(), "fraction": o.fraction,
        "repeat_share": config.drill.repeat_share, "holdout_share": config.drill.holdout_share,
        "model": o.model, "workload": if o.workload.is_some() { "file" } else { "generated" },
        "id": id,
    });
    Ok(Measured {
        samples,
        observed,
        t_load,
        t_fault,
        t_repair,
        t_end,
        steady_hit,
        steady_rps,
        steady_spend_rate,
        predicted_share,
        predicted_rate,
        recovered,
        healthy,
        aborted,
        probed,
        lost: lost_idx.len(),
        rpo_seconds,
        rpo_note,
        integrity,
        fault_methods,
        issues,
        settings,
    })
}

/// Waits (at most `limit`) until the breakers of `backends` are closed.
async fn wait_closed(subject: &Subject, backends: &[&str], limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if monitor::all_pass(&subject.breakers().await.unwrap_or_default(), backends) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (entries with a problem, entries scanned, counts). Traffic has stopped; a
/// finding may still be a write in flight, so a dirty audit is run again (3 times at most).
async fn audit_managed(r: &Arc<crate::recovery::Recovery>, sample: u64) -> (u64, u64, Value) {
    use crate::recovery::audit::AuditOptions;
    let entries = r.cache.roles.metadata.count_entries().await.unwrap_or(0);
    let opts = AuditOptions {
        sample: (entries > sample).then_some(sample.max(1)),
        orphan_grace_ms: 24 * 3_600_000,
        max_findings: 50,
        parallel: 16,
        ..Default::default()
    };
    let mut last = (0, 0, Value::Null);
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let ctx = crate::recovery::local::LocalCtx::new("audit", false);
        match r.audit(&opts, None, ctx.as_ref()).await {
            Ok(rep) => {
                let bad = entry_problems(&serde_json::to_value(&rep.counts).unwrap_or_default());
                last = (
                    bad,
                    rep.entries_scanned,
                    serde_json::to_value(&rep.counts).unwrap_or_default(),
                );
                if bad == 0 {
                    break;
                }
            }
            Err(e) => last = (0, 0, json!({"error": format!("{e:?}")})),
        }
    }
    last
}

/// Findings about entries (orphan artifacts and vectors belong to no entry).
fn entry_problems(counts: &Value) -> u64 {
    counts
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "orphan_artifact" | "dangling_vector"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// The remote gateway's stores, audited by this binary's `audit` command.
async fn audit_remote(o: &Options, sample: u64) -> Option<(u64, u64, Value)> {
    let path = o.config_path.as_ref()?;
    let exe = std::env::current_exe().ok()?;
    let path = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["audit", "--format", "json", "--sample", &sample.to_string(), "--config"])
            .arg(path)
            .output()
    })
    .await
    .ok()?
    .ok()?;
    // (`audit --format json` prints the report itself.)
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((
        entry_problems(&report["counts"]),
        report["entries_scanned"].as_u64().unwrap_or(0),
        report["counts"].clone(),
    ))
}

#[allow(clippy::too_many_arguments)]
fn build(
    clock: &Clock,
    config: &Config,
    o: &Options,
    id: &str,
    mode: &str,
    started_ms: i64,
    targets: super::config::Targets,
    m: Measured,
) -> Report {
    let scenario = o.scenario;
    let xs = &m.samples;
    let provider_window = (scenario == Scenario::ProviderDown).then_some((m.t_fault, m.t_repair + 2.0));
    let faulted = |s: &Sample| measure::in_window(s, provider_window);
    let all = in_range(xs, m.t_load, m.t_end + 1.0);
    let errors: Vec<&Sample> = all.iter().filter(|s| counted_error(s, faulted(s))).collect();
    let provider_errors = all
        .iter()
        .filter(|s| s.outcome == Outcome::ProviderError && faulted(s))
        .count();
    let rto = m.recovered.map(|r| (r - m.t_fault).max(0.0));
    let outage_end = match scenario.kind() {
        Kind::Outage => m.t_repair,
        _ => m.recovered.unwrap_or(m.t_end).max(m.t_repair),
    };
    let during = in_range(xs, m.t_fault, outage_end.max(m.t_fault + 0.5));
    let after = in_range(xs, m.recovered.unwrap_or(m.t_repair), m.t_end + 1.0);
    let before = in_range(xs, m.t_load + 1.0, m.t_fault);
    let window_len = (outage_end - m.t_fault).max(0.5);
    let spend_during: f64 = during.iter().map(|s| s.cost_usd).sum::<f64>() + 0.0;
    let predicted = m.predicted_rate * window_len;
    let extra = spend_during - m.steady_spend_rate * window_len;
    let fill: f64 = xs
        .iter()
        .filter(|s| s.t >= m.t_fault && s.seeded.is_some() && s.outcome == Outcome::Miss)
        .map(|s| s.cost_usd)
        .sum::<f64>()
        + 0.0; // (an empty sum is -0.0)
    let backends: Vec<&str> = scenario
        .faulted()
        .iter()
        .copied()
        .filter(|b| *b != "provider")
        .collect();
    let opened = m.observed.first_open(&backends, m.t_fault);
    let closed = opened.and_then(|_| m.observed.first_closed(&backends, m.t_repair));
    let healthy_after = m.healthy.map(|h| (h - m.t_fault).max(0.0));
    let mut rows = Vec::new();
    rows.push(Row {
        measure: "RTO".into(),
        definition: format!(
            "time from the fault until the hit rate is back to at least {} of its steady state ({}) over {RECOVERY_WINDOW_S:.0} s",
            pct(RECOVERY_SHARE),
            pct(m.steady_hit)
        ),
        target: format!("≤ {}", fmt_s(targets.rto_seconds)),
        actual: rto.map(fmt_s).unwrap_or_else(|| "not recovered".into()),
        value: rto,
        pass: Some(rto.is_some_and(|r| r <= targets.rto_seconds)),
    });
    rows.push(Row {
        measure: "Time to fully healthy".into(),
        definition:
            "time from the fault until the gateway is ready, every breaker closed and no recovery job queued or running"
                .into(),
        target: "—".into(),
        actual: healthy_after.map(fmt_s).unwrap_or_else(|| "not reached".into()),
        value: healthy_after,
        pass: None,
    });
    rows.push(Row {
        measure: "RPO".into(),
        definition: if scenario == Scenario::FullRestore {
            "time between the backup restored and the fault (what was cached after it is lost)".into()
        } else {
            "age, at the fault, of the oldest entry cached before it and not served after recovery (0: nothing lost)"
                .into()
        },
        target: format!("≤ {}", fmt_s(targets.rpo_seconds)),
        actual: format!("{} ({})", fmt_s(m.rpo_seconds), m.rpo_note),
        value: Some(m.rpo_seconds),
        pass: Some(m.rpo_seconds <= targets.rpo_seconds),
    });
    rows.push(match &m.integrity {
        Some((_, _, counts)) if counts.get("error").is_some() => Row {
            measure: "Data integrity".into(),
            definition: "share of entries that audit finds intact after recovery".into(),
            target: "100 %".into(),
            actual: format!("audit failed: {}", counts["error"].as_str().unwrap_or_default()),
            value: None,
            pass: Some(false),
        },
        Some((bad, scanned, _)) => {
            let share = if *scanned == 0 {
                1.0
            } else {
                1.0 - (*bad).min(*scanned) as f64 / *scanned as f64
            };
            Row {
                measure: "Data integrity".into(),
                definition: format!(
                    "share of entries that audit finds intact after recovery (artifact present and matching, \
                     pointer right); at most {} entries, a random run of them, are read",
                    o.audit_sample
                ),
                target: "100 %".into(),
                actual: if *bad == 0 {
                    format!("100 % (0 problems in {scanned} entries)")
                } else {
                    // (Never rounded up to 100 % while a problem is left.)
                    format!(
                        "{:.3} % ({bad} problems in {scanned} entries)",
                        (share * 100.0).min(99.999)
                    )
                },
                value: Some(share),
                pass: Some(*bad == 0),
            }
        }
        None => Row {
            measure: "Data integrity".into(),
            definition: "share of entries that audit finds intact after recovery".into(),
            target: "100 %".into(),
            actual: "not measured".into(),
            value: None,
            pass: None,
        },
    });
    rows.push(Row {
        measure: "Client-visible errors".into(),
        definition: if scenario == Scenario::ProviderDown {
            "requests that failed, other than new questions while the provider itself was down".into()
        } else {
            "requests that got an error or no answer (the promise is zero)".into()
        },
        target: "0".into(),
        actual: format!("{} of {} requests", errors.len(), all.len()),
        value: Some(errors.len() as f64),
        pass: Some(errors.is_empty()),
    });
    if scenario == Scenario::ProviderDown {
        rows.push(Row {
            measure: "Provider errors passed on".into(),
            definition: "new questions that failed because the provider was down (no cache can answer them)".into(),
            target: "—".into(),
            actual: provider_errors.to_string(),
            value: Some(provider_errors as f64),
            pass: None,
        });
    }
    rows.push(Row {
        measure: "Fault to breaker open".into(),
        definition: format!(
            "time from the fault until a breaker of {} left closed",
            backends.join(", ")
        ),
        target: "—".into(),
        actual: opened
            .map(|t| fmt_s(t - m.t_fault))
            .unwrap_or_else(|| "did not open".into()),
        value: opened.map(|t| t - m.t_fault),
        pass: None,
    });
    rows.push(Row {
        measure: "Repair to breaker closed".into(),
        definition: "time from the repair until every breaker that opened was closed again".into(),
        target: "—".into(),
        actual: closed
            .map(|t| fmt_s((t - m.t_repair).max(0.0)))
            .unwrap_or_else(|| "—".into()),
        value: closed.map(|t| (t - m.t_repair).max(0.0)),
        pass: None,
    });
    rows.push(Row {
        measure: "Hit rate before / during / after".into(),
        definition: "share of requests served from the cache in the steady state, during the fault, after recovery"
            .into(),
        target: "—".into(),
        actual: format!(
            "{} / {} / {}",
            pct(hit_rate(before)),
            pct(hit_rate(during)),
            pct(hit_rate(after))
        ),
        value: Some(hit_rate(after)),
        pass: None,
    });
    let (_, p99b) = measure::latency(before);
    let (_, p99d) = measure::latency(during);
    let (_, p99a) = measure::latency(after);
    rows.push(Row {
        measure: "p99 latency before / during / after".into(),
        definition: "99th percentile of the client-seen latency".into(),
        target: "—".into(),
        actual: format!("{p99b:.1} / {p99d:.1} / {p99a:.1} ms"),
        value: Some(p99d),
        pass: None,
    });
    rows.push(Row {
        measure: "Provider spend during the fault".into(),
        definition: format!(
            "USD paid to the provider from the fault to {} ({}), next to the prediction made before the fault \
             from the steady state ({} of requests to the provider at the mean miss price)",
            if scenario.kind() == Kind::Outage {
                "the repair"
            } else {
                "recovery"
            },
            fmt_s(window_len),
            pct(m.predicted_share)
        ),
        target: format!("predicted {predicted:.6} USD"),
        actual: format!("{spend_during:.6} USD (extra over the steady state: {extra:.6} USD)"),
        value: Some(spend_during),
        pass: None,
    });
    rows.push(Row {
        measure: "Fill cost of the recovery".into(),
        definition: "USD paid after the fault to buy back answers that were cached before it, over the time to full warm-up (the RTO)".into(),
        target: "—".into(),
        actual: format!("{fill:.6} USD over {}", rto.map(fmt_s).unwrap_or_else(|| "—".into())),
        value: Some(fill),
        pass: None,
    });
    let failed: Vec<&Row> = rows.iter().filter(|r| r.pass == Some(false)).collect();
    let verdict = if m.aborted.is_some() {
        "aborted"
    } else if failed.is_empty() {
        "pass"
    } else {
        "fail"
    };
    let mut issues = m.issues.clone();
    if let Some(a) = &m.aborted {
        issues.push(format!("The drill was aborted and rolled back: {a}."));
    }
    for r in &failed {
        issues.push(format!("{}: {} against a target of {}.", r.measure, r.actual, r.target));
    }
    let mut seen = std::collections::BTreeMap::new();
    for e in &errors {
        *seen
            .entry(e.detail.clone().unwrap_or_else(|| e.status.to_string()))
            .or_insert(0u64) += 1;
    }
    for (d, n) in seen.iter().take(5) {
        issues.push(format!("{n} request(s) failed with: {d}"));
    }
    if predicted > 0.0 && (spend_during / predicted > 2.0 || spend_during / predicted < 0.5) {
        issues.push(format!(
            "The spend during the fault ({spend_during:.6} USD) is {:.1}× the prediction ({predicted:.6} USD).",
            spend_during / predicted
        ));
    }
    let mut updates = Vec::new();
    if let Some(t) = opened {
        updates.push(format!(
            "Expect the {} breaker to open about {} after such a fault; requests meanwhile go to the provider.",
            backends.join("/"),
            fmt_s(t - m.t_fault)
        ));
    }
    if let Some(t) = closed {
        updates.push(format!(
            "After the repair, expect the breakers to close within {} (breaker open_seconds = {}).",
            fmt_s((t - m.t_repair).max(0.0)),
            config.breaker.open_seconds
        ));
    }
    if let Some(r) = rto {
        updates.push(format!(
            "{}: hit rate back to 95 % of its steady state {} after the fault, at {} requests/s.",
            scenario.name(),
            fmt_s(r),
            o.rps
        ));
    }
    let mut actions: Vec<String> = failed
        .iter()
        .map(|r| {
            format!(
                "Find and fix why {} missed its target; run this drill again.",
                r.measure
            )
        })
        .collect();
    let next = crate::backup::format_time(started_ms + scenario.cadence_days() as i64 * 86_400_000);
    actions.push(format!(
        "Next {} drill due by {} (runbook calendar).",
        scenario.name(),
        &next[..10]
    ));
    let summary = format!(
        "{} drill against a {mode} gateway. The fault ({}) started at t = {:.1} s{}. The hit rate ({} in the steady state) \
         was {} during the fault and came back to 95 % of it {}. {} client-visible errors. RPO {}. Verdict: {}.",
        scenario.name(),
        m.fault_methods.join("; "),
        m.t_fault,
        if scenario.kind() == Kind::Outage {
            format!(" and was repaired at t = {:.1} s", m.t_repair)
        } else {
            format!(", repair started at t = {:.1} s", m.t_repair)
        },
        pct(m.steady_hit),
        pct(hit_rate(during)),
        rto.map(|r| format!("after {}", fmt_s(r))).unwrap_or_else(|| "not within the drill".into()),
        errors.len(),
        fmt_s(m.rpo_seconds),
        verdict.to_uppercase()
    );
    let mut timeline = clock.events.clone();
    for (t, b, from, to) in m.observed.transitions() {
        timeline.push(Event {
            t,
            at: crate::backup::format_time(started_ms + (t * 1000.0) as i64),
            what: format!("breaker {b}: {from} → {to}"),
        });
    }
    timeline.sort_by(|a, b| a.t.total_cmp(&b.t));
    let measures = json!({
        "rto_seconds": rto, "rpo_seconds": m.rpo_seconds, "healthy_after_seconds": healthy_after,
        "recovered": rto.is_some(),
        "lost_entries": m.lost, "probed_entries": m.probed,
        "integrity": m.integrity.as_ref().map(|(bad, scanned, counts)| json!({"problems": bad, "entries": scanned, "counts": counts})),
        "client_errors": errors.len(), "provider_errors": provider_errors, "requests": all.len(),
        "fault_to_open_seconds": opened.map(|t| t - m.t_fault),
        "repair_to_closed_seconds": closed.map(|t| (t - m.t_repair).max(0.0)),
        "steady_hit_rate": m.steady_hit, "steady_rps": m.steady_rps,
        "hit_rate_before": hit_rate(before), "hit_rate_during": hit_rate(during), "hit_rate_after": hit_rate(after),
        "p99_ms_before": p99b, "p99_ms_during": p99d, "p99_ms_after": p99a,
        "spend_during_usd": spend_during, "predicted_spend_usd": predicted, "extra_spend_usd": extra,
        "fill_cost_usd": fill,
        "targets": {"rto_seconds": targets.rto_seconds, "rpo_seconds": targets.rpo_seconds},
        "aborted": m.aborted,
        "t": {"load": m.t_load, "fault": m.t_fault, "repair": m.t_repair, "recovered": m.recovered, "healthy": m.healthy, "end": m.t_end},
    });
    let mut settings = m.settings.clone();
    settings["fault"] = json!(m.fault_methods);
    Report {
        id: id.to_string(),
        scenario: scenario.name().into(),
        mode: mode.into(),
        started_at: crate::backup::format_time(started_ms),
        started_at_ms: started_ms,
        verdict: verdict.into(),
        summary,
        settings,
        results: rows,
        measures,
        timeline,
        issues,
        runbook_updates: updates,
        action_items: actions,
        marks: Marks {
            fault: m.t_fault,
            repair: Some(m.t_repair),
            recovered: m.recovered,
            end: m.t_end,
        },
        buckets: measure::buckets(xs, m.t_end + 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = "[[upstreams]]\nname = \"s\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";
        Config::from_toml_str(text, &HashMap::new()).unwrap().0
    }

    fn sample(t: f64, outcome: Outcome, latency_ms: f64) -> Sample {
        Sample {
            t,
            latency_ms,
            outcome,
            cost_usd: 0.0,
            seeded: None,
            status: 200,
            detail: None,
        }
    }

    #[test]
    fn the_safety_limits_trip_on_errors_and_latency_but_not_on_the_faulted_provider() {
        let config = config();
        let ok: Vec<Sample> = (0..50).map(|i| sample(i as f64 / 10.0, Outcome::Hit, 1.0)).collect();
        assert_eq!(breach(&config, &ok, 5.0, None), None);
        let mut bad = ok.clone();
        for s in bad.iter_mut().skip(40) {
            s.outcome = Outcome::Error;
        }
        assert!(breach(&config, &bad, 5.0, None).unwrap().contains("max_error_rate"));
        let mut provider = ok.clone();
        for s in provider.iter_mut().skip(40) {
            s.outcome = Outcome::ProviderError;
        }
        assert!(
            breach(&config, &provider, 5.0, None).is_some(),
            "the provider is not the fault"
        );
        assert_eq!(
            breach(&config, &provider, 5.0, Some((3.0, 6.0))),
            None,
            "the provider is the fault"
        );
        let slow: Vec<Sample> = (0..50)
            .map(|i| sample(i as f64 / 10.0, Outcome::Hit, 20_000.0))
            .collect();
        assert!(breach(&config, &slow, 5.0, None).unwrap().contains("max_p99_ms"));
        assert_eq!(breach(&config, &slow[..5], 5.0, None), None, "too few samples to judge");
    }

    #[test]
    fn destructive_scenarios_are_refused_without_allow_destructive() {
        let mut config = config();
        let o = |s| Options {
            scenario: s,
            url: None,
            out: None,
            rps: 20.0,
            duration: Duration::from_secs(10),
            steady: Duration::from_secs(3),
            fault_seconds: 3,
            entries: 10,
            fraction: 0.1,
            workload: None,
            probe_max: 10,
            audit_sample: 10,
            model: "m".into(),
            key: None,
            config_path: None,
            progress: false,
        };
        assert!(preflight(&config, &o(Scenario::IndexDown)).is_ok());
        let e = preflight(&config, &o(Scenario::IndexLoss)).unwrap_err().to_string();
        assert!(e.contains("[drill.engines.index] allow_destructive"), "{e}");
        config.drill.engines.insert(
            "index".into(),
            super::super::config::EngineControl {
                allow_destructive: true,
                ..Default::default()
            },
        );
        assert!(preflight(&config, &o(Scenario::IndexLoss)).is_ok());
        let e = preflight(&config, &o(Scenario::FullRestore)).unwrap_err().to_string();
        assert!(e.contains("artifacts"), "the restore destroys every store: {e}");
        let mut remote = o(Scenario::IndexLoss);
        remote.url = Some("http://gw".into());
        remote.key = Some("k".into());
        assert!(preflight(&config, &remote)
            .unwrap_err()
            .to_string()
            .contains("--managed"));
    }
}
