//! One drill from start to report: the safety checks before it, the gateway
//! it runs against (managed or remote), the phases (`drive`), the report
//! (`verdict`), and the drill's record in the history.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::drive::Drive;
use super::measure::{self, counted_error, in_range};
use super::report::{Event, Report};
use super::scenario::Scenario;
use super::subject::Subject;
use super::workload::Sample;
use super::{history, verdict};
use recache_core::config::{Config, VectorsEngine};
use recache_storage::roles::now_ms;

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
            if config.vectors.engine != VectorsEngine::Disabled {
                v.push("vectors");
            }
            v
        }
        _ => vec![],
    }
}

fn engine_name(config: &Config, backend: &str) -> String {
    match backend {
        "index" => config.index.engine.to_string(),
        "artifacts" => config.artifacts.engine.to_string(),
        "metadata" => config.metadata.engine.to_string(),
        "vectors" => config.vectors.engine.to_string(),
        _ => "provider".into(),
    }
}

/// Refuses what must not run: a loss without `allow_destructive`, bad options.
pub(crate) fn preflight(config: &Config, o: &Options) -> Result<(), DrillError> {
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
pub(super) struct Clock {
    pub start: Instant,
    pub start_ms: i64,
    pub events: Vec<Event>,
    pub echo: bool,
}

impl Clock {
    pub fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    pub fn log(&mut self, what: impl Into<String>) -> f64 {
        let t = self.t();
        let what = what.into();
        if self.echo {
            eprintln!("[{t:7.1}s] {what}");
        }
        self.events.push(Event {
            t,
            at: recache_ops::backup::format_time(self.start_ms + (t * 1000.0) as i64),
            what,
        });
        t
    }
}

pub(super) fn snapshot(samples: &Mutex<Vec<Sample>>) -> Vec<Sample> {
    let mut v = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    v.sort_by(|a, b| a.t.total_cmp(&b.t));
    v
}

/// A breached safety limit over the last 5 s, if any.
pub(super) fn breach(
    config: &Config,
    samples: &[Sample],
    now: f64,
    provider_window: Option<(f64, f64)>,
) -> Option<String> {
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

pub(super) fn fmt_s(s: f64) -> String {
    if s >= 120.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

pub(super) fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

pub async fn run(config: &Config, env: &HashMap<String, String>, o: Options) -> Result<Finished, DrillError> {
    preflight(config, &o)?;
    let scenario = o.scenario;
    let started_ms = now_ms();
    let id = format!("{}-{}", recache_ops::backup::format_id(started_ms), scenario.name());
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
    let result = Drive::new(&mut clock, &subject, config, env, &o).run(&id).await;
    // Whatever happened, the managed gateway goes away cleanly.
    if let Ok(s) = Arc::try_unwrap(subject) {
        s.close().await;
    }
    let mut measured = result?;
    measured.settings["engines"] = Value::Object(engines);
    measured.settings["mode"] = json!(mode);
    let report = verdict::build(
        verdict::Context {
            clock: &clock,
            config,
            o: &o,
            id: &id,
            mode,
            started_ms,
            targets,
        },
        measured,
    );
    let dir = o.out.clone().unwrap_or_else(|| config.drill.out_dir.join(&id));
    report
        .write(&dir)
        .map_err(|e| DrillError::Failed(anyhow::anyhow!("cannot write the report to {}: {e}", dir.display())))?;
    // The drill's history lives in the configured metadata store.
    match recache_storage::roles::factory::open_metadata(config).await {
        Ok((meta, _)) => {
            let finished = history::Finished {
                id: &report.id,
                scenario: &report.scenario,
                verdict: &report.verdict,
                mode: &report.mode,
                rto_seconds: report.rto_seconds(),
                rpo_seconds: report.rpo_seconds(),
                started_at_ms: report.started_at_ms,
            };
            if let Err(e) = history::record(meta.as_ref(), &finished, &dir.display().to_string()).await {
                eprintln!("recache drill: warning: the drill could not be recorded in metadata: {e}");
            }
        }
        Err(e) => eprintln!("recache drill: warning: metadata not reachable to record the drill: {e:#}"),
    }
    Ok(Finished { report, dir })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::workload::Outcome;

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
        // A running gateway destroys its own data (its drill-wipe job checks its own config too).
        assert!(preflight(&config, &remote).is_ok());
        remote.key = None;
        assert!(preflight(&config, &remote)
            .unwrap_err()
            .to_string()
            .contains("--key-env"));
    }
}
