//! The phases of one drill under load (ARCHITECTURE.md, "DR drills"): seed,
//! the backup before a full restore, the steady state, the fault and its
//! repair, the wait for recovery, then the probe (RPO) and the audit
//! (integrity). Each phase is a method of [`Drive`]; what they measure ends
//! in [`Measured`], which `verdict` turns into the report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fault::{self, Faults};
use super::loss;
use super::measure::{self, hit_rate, in_range, RECOVERY_SHARE, RECOVERY_WINDOW_S};
use super::monitor::{self, Observed};
use super::run::{breach, pct, snapshot, Clock, DrillError, Options};
use super::scenario::{Kind, Scenario};
use super::subject::Subject;
use super::workload::{self, Outcome, Sample, Workload};
use recache_core::config::{Config, IndexEngine};
use recache_ops::backup::run::{BACKUP, BACKUP_RESTORE};
use recache_storage::roles::now_ms;

/// Everything measured, before it becomes a report.
pub(super) struct Measured {
    pub samples: Vec<Sample>,
    pub observed: Observed,
    pub t_load: f64,
    pub t_fault: f64,
    pub t_repair: f64,
    pub t_end: f64,
    pub steady_hit: f64,
    pub steady_rps: f64,
    pub steady_spend_rate: f64,
    /// The share of requests predicted to go to the provider during the fault.
    pub predicted_share: f64,
    pub predicted_rate: f64,
    pub recovered: Option<f64>,
    pub healthy: Option<f64>,
    pub aborted: Option<String>,
    pub probed: usize,
    pub lost: usize,
    pub rpo_seconds: f64,
    pub rpo_note: String,
    pub integrity: Option<(u64, u64, Value)>,
    pub fault_methods: Vec<String>,
    pub issues: Vec<String>,
    pub settings: Value,
    /// From the fault to the repair: requests admitted while the shared limit
    /// counters were out, and requests refused by a limit (`None`: not read).
    pub limits: Option<(u64, u64)>,
}

/// One drill in progress.
pub(super) struct Drive<'a> {
    pub clock: &'a mut Clock,
    pub subject: &'a Arc<Subject>,
    pub config: &'a Config,
    pub env: &'a HashMap<String, String>,
    pub o: &'a Options,
    /// Set when a safety limit is breached: every later phase is skipped and the faults undone.
    aborted: Option<String>,
    issues: Vec<String>,
    fault_methods: Vec<String>,
}

/// The load and the monitor, running.
struct Load {
    w: Arc<Workload>,
    samples: Arc<Mutex<Vec<Sample>>>,
    observed: Arc<Mutex<Observed>>,
    stop: watch::Sender<bool>,
    tasks: [JoinHandle<()>; 2],
    t_load: f64,
}

/// The steady state's figures and the prediction made from them.
struct Steady {
    hit: f64,
    rps: f64,
    spend_rate: f64,
    predicted_share: f64,
    predicted_rate: f64,
}

/// When the fault started and its repair did.
struct Fault {
    t_fault: f64,
    t_repair: f64,
    limits: Option<(u64, u64)>,
}

impl<'a> Drive<'a> {
    pub fn new(
        clock: &'a mut Clock,
        subject: &'a Arc<Subject>,
        config: &'a Config,
        env: &'a HashMap<String, String>,
        o: &'a Options,
    ) -> Self {
        Drive {
            clock,
            subject,
            config,
            env,
            o,
            aborted: None,
            issues: Vec::new(),
            fault_methods: Vec::new(),
        }
    }

    /// Every phase, in order.
    pub async fn run(mut self, id: &str) -> Result<Measured, DrillError> {
        let w = self.seed().await?;
        let backup = if self.o.scenario == Scenario::FullRestore {
            Some(self.backup_before().await?)
        } else {
            None
        };
        let load = self.start_load(w);
        let steady = self.steady_state(&load).await;
        let fault = self.fault(&load).await?;
        let (recovered, healthy) = self.recovery(&load, steady.hit, &fault).await;
        let _ = load.stop.send(true);
        let [a, b] = load.tasks;
        let _ = a.await;
        let _ = b.await;
        let t_end = self.clock.log("load stopped");
        let (probed, lost, rpo_seconds, rpo_note) = self.probe(&load.w, &backup, fault.t_fault).await;
        let integrity = self.integrity().await;
        let o = self.o;
        let settings = json!({
            "rps": o.rps, "duration_seconds": o.duration.as_secs_f64(), "steady_seconds": o.steady.as_secs_f64(),
            "fault_seconds": o.fault_seconds, "entries": load.w.seeded.len(), "fraction": o.fraction,
            "repeat_share": self.config.drill.repeat_share, "holdout_share": self.config.drill.holdout_share,
            "model": o.model, "workload": if o.workload.is_some() { "file" } else { "generated" },
            "id": id,
        });
        let samples = snapshot(&load.samples);
        let observed = std::mem::take(&mut *load.observed.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(Measured {
            samples,
            observed,
            t_load: load.t_load,
            t_fault: fault.t_fault,
            t_repair: fault.t_repair,
            t_end,
            steady_hit: steady.hit,
            steady_rps: steady.rps,
            steady_spend_rate: steady.spend_rate,
            predicted_share: steady.predicted_share,
            predicted_rate: steady.predicted_rate,
            recovered,
            healthy,
            aborted: self.aborted,
            probed,
            lost,
            rpo_seconds,
            rpo_note,
            integrity,
            fault_methods: self.fault_methods,
            issues: self.issues,
            settings,
            limits: fault.limits,
        })
    }

    /// Seeds the cache with the workload's requests.
    async fn seed(&mut self) -> Result<Workload, DrillError> {
        let (o, config) = (self.o, self.config);
        let mut w = Workload::new(
            o.entries,
            o.workload.as_deref(),
            &o.model,
            &recache_storage::queue::new_token()[..8],
            config.drill.repeat_share,
            config.drill.holdout_share,
            config.prices.clone(),
        )
        .map_err(DrillError::Refused)?;
        let bar = o.progress.then(|| {
            let b = indicatif::ProgressBar::new(w.seeded.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message("seeding");
            b
        });
        let failed = workload::seed(self.subject, &mut w, bar.as_ref()).await;
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
        self.clock.log(format!(
            "seeded {seeded} requests ({failed} failed); {} of them are repeated by traffic, {} held out for the probe",
            w.traffic,
            w.seeded.len() - w.traffic
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(w)
    }

    /// A full restore restores the newest verified backup: one is taken now.
    /// Returns the set and when it was taken.
    async fn backup_before(&mut self) -> Result<(String, i64), DrillError> {
        // Seeding at full speed can trip a breaker (a slow write): the backup waits for them.
        wait_closed(
            self.subject,
            &["index", "artifacts", "metadata"],
            Duration::from_secs(90),
        )
        .await;
        let failed = |e: String| DrillError::Failed(anyhow::anyhow!("the backup before the drill failed: {e}"));
        let r = match self.subject.recovery() {
            Some(recovery) => {
                let targets = recache_ops::backup::Targets::open(self.subject.config.clone(), self.env)
                    .map_err(|e| DrillError::Failed(anyhow::anyhow!("backup target: {e}")))?;
                let ctx = recache_ops::recovery::local::LocalCtx::new("backup", false);
                let opts = recache_ops::backup::create::CreateOptions {
                    trigger: "manual".into(),
                    full: false,
                };
                recache_ops::backup::run::run_create(recovery, &targets, &opts, ctx.as_ref())
                    .await
                    .map_err(|e| failed(e.to_string()))?
            }
            // A running gateway takes it with its own workers.
            None => self
                .subject
                .run_job(BACKUP, json!({"trigger": "manual"}), JOB_LIMIT)
                .await
                .map_err(|e| failed(format!("{e:#}")))?,
        };
        if r["ok"] != json!(true) {
            return Err(DrillError::Failed(anyhow::anyhow!(
                "the backup before the drill failed its verification: {r}"
            )));
        }
        let set = r["set"].as_str().unwrap_or_default().to_string();
        self.clock.log(format!(
            "backup {set} taken and verified ({} entries, {} artifacts) on {}",
            r["entries"], r["artifacts"], r["target"]
        ));
        Ok((set, now_ms()))
    }

    /// Starts the load and the monitor.
    fn start_load(&mut self, w: Workload) -> Load {
        let w = Arc::new(w);
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let observed: Arc<Mutex<Observed>> = Arc::default();
        let (stop, stop_rx) = watch::channel(false);
        let load = tokio::spawn(workload::load(
            self.subject.clone(),
            w.clone(),
            self.o.rps,
            self.clock.start,
            samples.clone(),
            stop_rx.clone(),
        ));
        let mon = tokio::spawn(monitor::run(
            self.subject.clone(),
            self.clock.start,
            observed.clone(),
            stop_rx,
        ));
        let t_load = self.clock.log(format!(
            "load started: {} requests/s, {:.0} % repeats",
            self.o.rps,
            self.config.drill.repeat_share * 100.0
        ));
        Load {
            w,
            samples,
            observed,
            stop,
            tasks: [load, mon],
            t_load,
        }
    }

    /// The steady state, and the prediction of the fault's cost made from it.
    async fn steady_state(&mut self, load: &Load) -> Steady {
        let (o, config) = (self.o, self.config);
        let steady_end = load.t_load + o.steady.as_secs_f64().max(2.0);
        while self.clock.t() < steady_end {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(b) = breach(config, &snapshot(&load.samples), self.clock.t(), None) {
                self.aborted = Some(format!("before the fault: {b}"));
                break;
            }
        }
        let xs = snapshot(&load.samples);
        let steady = in_range(&xs, load.t_load + 1.0, self.clock.t());
        let steady_len = (self.clock.t() - load.t_load - 1.0).max(0.1);
        let hit = hit_rate(steady);
        let misses: Vec<&Sample> = steady.iter().filter(|s| s.outcome == Outcome::Miss).collect();
        let miss_share = if steady.is_empty() {
            0.0
        } else {
            misses.len() as f64 / steady.len() as f64
        };
        let mean_miss_cost = if misses.is_empty() {
            0.0
        } else {
            misses.iter().map(|s| s.cost_usd).sum::<f64>() / misses.len() as f64
        };
        let rps = steady.len() as f64 / steady_len;
        let spend_rate = steady.iter().map(|s| s.cost_usd).sum::<f64>() / steady_len;
        let lost_fraction = if o.scenario == Scenario::ArtifactsLoss {
            o.fraction
        } else {
            0.0
        };
        let predicted_share = o.scenario.predicted_miss_share(miss_share, lost_fraction);
        let predicted_rate = rps * predicted_share * mean_miss_cost;
        self.clock.log(format!(
            "steady state: {:.1} requests/s, hit rate {}, p99 {:.1} ms, spend {:.6} USD/s; prediction during the fault: \
             {} of requests to the provider, {:.6} USD/s",
            rps,
            pct(hit),
            measure::latency(steady).1,
            spend_rate,
            pct(predicted_share),
            predicted_rate
        ));
        // A drill measures a working cache: without hits in the steady state there is nothing to lose.
        if self.aborted.is_none() && hit < config.drill.repeat_share / 2.0 {
            self.aborted = Some(format!(
                "the steady-state hit rate is {} where about {} was expected: the gateway does not serve repeats \
                 from its cache (a store down or misconfigured?), so no fault was injected",
                pct(hit),
                pct(config.drill.repeat_share)
            ));
        }
        Steady {
            hit,
            rps,
            spend_rate,
            predicted_share,
            predicted_rate,
        }
    }

    /// The fault and its repair (nothing when the drill was aborted already).
    async fn fault(&mut self, load: &Load) -> Result<Fault, DrillError> {
        let limits_before = self.subject.limit_counts().await;
        let t_fault = self.clock.t();
        let mut t_repair = t_fault;
        if self.aborted.is_none() {
            t_repair = match self.o.scenario.kind() {
                Kind::Outage => self.outage(load, t_fault).await?,
                Kind::Loss => self.loss().await?,
                Kind::Restore => self.restore().await?,
            };
        }
        if let Some(a) = &self.aborted {
            self.clock.log(format!("ABORT {a}; every fault undone"));
        }
        let limits = match (limits_before, self.subject.limit_counts().await) {
            (Some(a), Some(b)) => Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))),
            _ => None,
        };
        Ok(Fault {
            t_fault,
            t_repair,
            limits,
        })
    }

    /// Makes the scenario's backends unreachable for `fault_seconds`, then
    /// undoes it; the repair's time.
    async fn outage(&mut self, load: &Load, t_fault: f64) -> Result<f64, DrillError> {
        let (subject, scenario) = (self.subject, self.o.scenario);
        let mut faults = Faults::default();
        for b in scenario.faulted() {
            let m = fault::method(subject, b).map_err(|e| {
                DrillError::Refused(format!("{}: cannot make {b} unreachable here: {e}", scenario.name()))
            })?;
            self.fault_methods.push(format!("{b}: {m}"));
            let what = faults.outage(subject, b, self.o.fault_seconds).await?;
            self.clock.log(format!("FAULT {what}"));
        }
        let until = t_fault + self.o.fault_seconds as f64;
        let provider_down = scenario == Scenario::ProviderDown;
        while self.clock.t() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let window = provider_down.then_some((t_fault, until + 2.0));
            if let Some(b) = breach(self.config, &snapshot(&load.samples), self.clock.t(), window) {
                self.aborted = Some(format!("during the fault: {b}"));
                break;
            }
        }
        let mut t_repair = t_fault;
        for line in faults.undo(subject).await {
            t_repair = self.clock.log(format!("REPAIR {line}"));
        }
        Ok(t_repair)
    }

    /// Destroys one store's data and starts (or leaves to the gateway) its repair.
    async fn loss(&mut self) -> Result<f64, DrillError> {
        let (subject, o) = (self.subject, self.o);
        Ok(match o.scenario {
            Scenario::IndexLoss => {
                let n = self.destroy(&["index"], 1.0).await?["index"].as_u64().unwrap_or(0);
                self.fault_methods
                    .push("index: every pointer and the generation marker deleted".into());
                self.clock.log(format!("FAULT index wiped: {n} keys deleted"));
                if self.config.index.engine == IndexEngine::Redis {
                    self.clock.log(
                        "REPAIR left to the gateway: its recovery watch notices the missing generation marker \
                         and rebuilds the index from metadata (no provider call)",
                    )
                } else {
                    let job = subject.enqueue(recache_ops::recovery::REBUILD_INDEX, json!({})).await?;
                    self.clock.log(format!(
                        "REPAIR rebuild-index job #{job} queued (an in-process index cannot lose its data \
                         while the gateway runs, so nothing notices it by itself)"
                    ))
                }
            }
            Scenario::ArtifactsLoss => {
                let v = self.destroy(&["artifacts"], o.fraction).await?;
                let (n, total) = (&v["artifacts"]["deleted"], &v["artifacts"]["listed"]);
                self.fault_methods
                    .push(format!("artifacts: {} of the objects deleted", pct(o.fraction)));
                self.clock.log(format!("FAULT {n} of {total} artifacts deleted"));
                let job = subject
                    .enqueue(recache_ops::recovery::REFETCH, json!({"scan": true}))
                    .await?;
                self.clock.log(format!(
                    "REPAIR refetch job #{job} queued: the entries whose artifact is gone are bought back \
                     from the provider, most valuable first (repair --missing-artifacts)"
                ))
            }
            _ => {
                let n = self.destroy(&["metadata"], 1.0).await?["metadata"]
                    .as_u64()
                    .unwrap_or(0);
                self.fault_methods.push("metadata: every entry row deleted".into());
                self.clock.log(format!("FAULT metadata wiped: {n} entry rows deleted"));
                let job = subject
                    .enqueue(recache_ops::recovery::RECONCILE_METADATA, json!({}))
                    .await?;
                self.clock.log(format!(
                    "REPAIR reconcile-metadata job #{job} queued: the rows are rebuilt from the artifacts' \
                     envelopes (no provider call)"
                ))
            }
        })
    }

    /// Destroys data in `stores` (in that order; `fraction` of the artifacts):
    /// in this process for a managed gateway, as the gateway's own
    /// `drill-wipe` job for a running one (which its config must allow).
    /// Returns what was destroyed per store, as the job reports it.
    async fn destroy(&self, stores: &[&str], fraction: f64) -> Result<Value, DrillError> {
        let Some(roles) = self.subject.roles() else {
            let payload = json!({"stores": stores, "fraction": fraction});
            return self
                .subject
                .run_job(recache_ops::drills::wipe::DRILL_WIPE, payload, JOB_LIMIT)
                .await
                .map_err(DrillError::Failed);
        };
        let mut out = serde_json::Map::new();
        for s in stores {
            let v = match *s {
                "vectors" => json!(loss::wipe_vectors(roles).await?),
                "metadata" => json!(loss::wipe_metadata(roles).await?),
                "index" => json!(loss::wipe_index(roles).await?),
                _ => {
                    let (deleted, listed) = loss::delete_artifacts(roles, fraction).await?;
                    json!({"deleted": deleted, "listed": listed})
                }
            };
            out.insert(s.to_string(), v);
        }
        Ok(Value::Object(out))
    }

    /// Wipes every store, then restores the newest verified backup into them.
    async fn restore(&mut self) -> Result<f64, DrillError> {
        let subject = self.subject;
        self.fault_methods
            .push("every store wiped, then the newest verified backup restored".into());
        // All four stores are lost at one instant: the index breaker is held open
        // while they are wiped, so no answer is stored half-way (into a store
        // already wiped and one not yet).
        subject.force_open("index", 600).await?;
        // Stores begun before this instant may still land in the wiped
        // stores: the restore reconciles what was written since.
        let lost_at = now_ms() - 5_000;
        let w = self
            .destroy(&["vectors", "metadata", "index", "artifacts"], 1.0)
            .await?;
        let (v, m, i, a) = (&w["vectors"], &w["metadata"], &w["index"], &w["artifacts"]["deleted"]);
        subject.reset("index").await?;
        self.clock.log(format!(
            "FAULT every store wiped: {i} index keys, {a} artifacts, {m} entry rows, {v} vectors \
             (the index breaker held open meanwhile)"
        ));
        let targets = recache_ops::backup::Targets::open(subject.config.clone(), self.env)
            .map_err(|e| DrillError::Failed(anyhow::anyhow!("backup target: {e}")))?;
        let set = recache_ops::backup::run::resolve(&targets, recache_ops::backup::Which::Primary, None, true)
            .await
            .map_err(|e| DrillError::Failed(anyhow::anyhow!("{e}")))?;
        self.clock
            .log(format!("REPAIR restoring backup {set} (the newest verified set)"));
        // Traffic went on meanwhile, so the stores are not empty: restore into them.
        // The wipe may have tripped a breaker (timeouts under load): a restore
        // waits for the stores' breakers to close, and is tried again (it is idempotent).
        let mut attempt = 0;
        let r = loop {
            attempt += 1;
            wait_closed(subject, &["index", "artifacts", "metadata"], Duration::from_secs(90)).await;
            let run = match subject.recovery() {
                Some(recovery) => {
                    let ctx = recache_ops::recovery::local::LocalCtx::new("restore", false);
                    let which = recache_ops::backup::Which::Primary;
                    recache_ops::backup::run::run_restore(
                        recovery,
                        &targets,
                        which,
                        &set,
                        true,
                        Some(lost_at),
                        ctx.as_ref(),
                    )
                    .await
                    .map_err(|e| e.to_string())
                }
                // A running gateway restores with its own workers.
                None => subject
                    .run_job(
                        BACKUP_RESTORE,
                        json!({"set": set, "force": true, "reconcile_since_ms": lost_at}),
                        JOB_LIMIT,
                    )
                    .await
                    .map_err(|e| format!("{e:#}")),
            };
            match run {
                Ok(r) => break r,
                Err(e) if attempt < 3 => {
                    self.clock
                        .log(format!("REPAIR restore attempt {attempt} failed ({e}); trying again"));
                }
                Err(e) => {
                    return Err(DrillError::Failed(anyhow::anyhow!(
                        "the restore failed {attempt} times: {e}"
                    )))
                }
            }
        };
        if r["ok"] != json!(true) {
            self.issues
                .push(format!("The restore reported problems: {}", r["problems"]));
        }
        Ok(self.clock.log(format!(
            "REPAIR backup {set} restored in {:.1} s: {} entries, {} artifacts copied, {} pointers; \
             {} entries written meanwhile reconciled ({} put back from the set, {} dropped); \
             traffic warms what the set lacks",
            r["seconds"].as_f64().unwrap_or(0.0),
            r["entries_written"],
            r["artifacts_copied"],
            r["pointers_written"],
            r["reconciled"]["entries"],
            r["reconciled"]["replaced"],
            r["reconciled"]["dropped"]
        )))
    }

    /// Waits for the hit rate to come back and the gateway to be fully
    /// healthy (or the drill's time to run out): (recovered, healthy) times.
    async fn recovery(&mut self, load: &Load, steady_hit: f64, f: &Fault) -> (Option<f64>, Option<f64>) {
        let config = self.config;
        let timeout = config.drill.recovery_timeout();
        let run_until = load.t_load + self.o.duration.as_secs_f64();
        let provider_down = self.o.scenario == Scenario::ProviderDown;
        let (mut recovered, mut healthy) = (None, None);
        if self.aborted.is_some() {
            return (recovered, healthy);
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.clock.t();
            let xs = snapshot(&load.samples);
            let window = provider_down.then_some((f.t_fault, f.t_repair + 2.0));
            if let Some(b) = breach(config, &xs, now, window) {
                self.aborted = Some(format!("during the recovery: {b}"));
                self.clock.log(format!("ABORT {b}"));
                break;
            }
            let last = xs.last().map(|s| s.t).unwrap_or(now);
            if recovered.is_none() {
                recovered = measure::recovered_at(&xs, steady_hit, f.t_fault, last);
                if let Some(r) = recovered {
                    self.clock.log(format!(
                        "hit rate back to {} of its steady state from t = {r:.1} s",
                        pct(RECOVERY_SHARE)
                    ));
                }
            }
            if healthy.is_none() {
                healthy = load
                    .observed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .healthy_at(f.t_repair);
                if let Some(h) = healthy {
                    self.clock.log(format!(
                        "gateway fully healthy from t = {h:.1} s (ready, breakers closed, no recovery job left)"
                    ));
                }
            }
            let settled = recovered.is_some_and(|r| now >= r + RECOVERY_WINDOW_S + 0.5) && healthy.is_some();
            if settled && now >= run_until {
                break;
            }
            if now - f.t_fault > timeout.as_secs_f64() {
                self.clock.log(format!(
                    "recovery not complete within drill.recovery_timeout ({})",
                    config.drill.recovery_timeout
                ));
                break;
            }
        }
        (recovered, healthy)
    }

    /// What was lost (RPO): (entries probed, entries lost, RPO seconds, note).
    async fn probe(
        &mut self,
        w: &Workload,
        backup: &Option<(String, i64)>,
        t_fault: f64,
    ) -> (usize, usize, f64, String) {
        let (probed, lost_idx) = workload::probe(self.subject, w, self.o.probe_max).await;
        let fault_ms = self.clock.start_ms + (t_fault * 1000.0) as i64;
        let oldest_lost = lost_idx.iter().filter_map(|i| w.stored_at_ms[*i]).min();
        let (rpo_seconds, rpo_note) = match backup {
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
        self.clock.log(format!("probe: {rpo_note}"));
        (probed, lost_idx.len(), rpo_seconds, rpo_note)
    }

    /// The audit after recovery: (entries with a problem, scanned, counts).
    async fn integrity(&mut self) -> Option<(u64, u64, Value)> {
        let integrity = match self.subject.recovery() {
            Some(r) => Some(audit_managed(r, self.o.audit_sample).await),
            None => audit_remote(self.o, self.o.audit_sample).await,
        };
        match &integrity {
            Some((bad, scanned, _)) => self.clock.log(format!("audit: {bad} problem(s) in {scanned} entries")),
            None => self
                .clock
                .log("audit: not run (no config file to audit the remote gateway's stores with)"),
        };
        integrity
    }
}

/// How long a job on a running gateway (backup, wipe, restore) may take.
const JOB_LIMIT: Duration = Duration::from_secs(1800);

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
async fn audit_managed(r: &Arc<recache_ops::recovery::Recovery>, sample: u64) -> (u64, u64, Value) {
    use recache_ops::recovery::audit::AuditOptions;
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
        let ctx = recache_ops::recovery::local::LocalCtx::new("audit", false);
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
    // As for a managed gateway: a finding may be a store still finishing
    // (answers go out before they are stored), so a dirty audit is run again
    // (3 times at most).
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (exe, path) = (exe.clone(), path.clone());
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
        let found = (
            entry_problems(&report["counts"]),
            report["entries_scanned"].as_u64().unwrap_or(0),
            report["counts"].clone(),
        );
        let clean = found.0 == 0;
        last = Some(found);
        if clean {
            break;
        }
    }
    last
}
