//! `[drill]`: report folder, safety limits, workload shape, RTO/RPO targets
//! per backend, and how the drill may stop and start each engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::parse_duration;

/// The backends a target or an engine control can name.
pub const BACKENDS: [&str; 6] = ["index", "artifacts", "vectors", "metadata", "provider", "all"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillConfig {
    /// Reports go to a new folder under this one (unless `--out`).
    pub out_dir: PathBuf,
    /// Abort and roll back when more than this share of requests fail for a
    /// reason other than the provider being the fault (over 5 s).
    pub max_error_rate: f64,
    /// Abort and roll back when the p99 latency over 5 s goes above this.
    pub max_p99_ms: u64,
    /// How long the drill waits for the hit rate to come back after the fault.
    pub recovery_timeout: String,
    /// Share of the generated workload that repeats a cached prompt.
    pub repeat_share: f64,
    /// Share of the seeded prompts that traffic never asks for during the drill,
    /// so that a loss stays visible to the final probe (traffic would refill it).
    pub holdout_share: f64,
    /// RTO/RPO targets per backend (`index`, `artifacts`, `vectors`, `metadata`,
    /// `provider`, `all`), over the defaults.
    pub targets: BTreeMap<String, TargetConfig>,
    /// How the drill may act on each engine.
    pub engines: BTreeMap<String, EngineControl>,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("drills"),
            max_error_rate: 0.05,
            max_p99_ms: 10_000,
            recovery_timeout: "10m".into(),
            repeat_share: 0.8,
            holdout_share: 0.2,
            targets: BTreeMap::new(),
            engines: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub rto: String,
    pub rpo: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineControl {
    /// Losses (data destroyed) run only on engines marked so.
    pub allow_destructive: bool,
    /// The engine's process, for a real outage (`method`).
    pub pid: Option<u32>,
    pub pid_file: Option<PathBuf>,
    /// `pause` (SIGSTOP, then SIGCONT) or `kill` (the `stop` command, then `start`).
    pub method: String,
    pub stop: Option<String>,
    pub start: Option<String>,
}

impl Default for EngineControl {
    fn default() -> Self {
        Self {
            allow_destructive: false,
            pid: None,
            pid_file: None,
            method: "pause".into(),
            stop: None,
            start: None,
        }
    }
}

/// A backend's targets, resolved.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Targets {
    pub rto_seconds: f64,
    pub rpo_seconds: f64,
}

/// The runbook's table (Redis 5 min / 5 min, PostgreSQL 10 min / 1 min) and
/// ours for the rest: artifacts 15 min / 15 min (a bucket restore from its
/// versions or a backup set), vectors 15 min / 1 h (rebuilt from metadata, so
/// nothing is truly lost), the provider 5 min / 0 (hits keep flowing; nothing
/// is lost), everything at once 30 min / 1 h (a full restore).
pub(crate) fn default_targets(backend: &str) -> (&'static str, &'static str) {
    match backend {
        "index" => ("5m", "5m"),
        "metadata" => ("10m", "1m"),
        "artifacts" => ("15m", "15m"),
        "vectors" => ("15m", "1h"),
        "provider" => ("5m", "0s"),
        _ => ("30m", "1h"),
    }
}

impl DrillConfig {
    pub fn targets_for(&self, backend: &str) -> Targets {
        let (rto, rpo) = default_targets(backend);
        let (rto, rpo) = match self.targets.get(backend) {
            Some(t) => (t.rto.as_str(), t.rpo.as_str()),
            None => (rto, rpo),
        };
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Targets {
            rto_seconds: secs(rto),
            rpo_seconds: secs(rpo),
        }
    }

    pub fn recovery_timeout(&self) -> Duration {
        parse_duration(&self.recovery_timeout).unwrap_or(Duration::from_secs(600))
    }

    pub fn engine(&self, backend: &str) -> EngineControl {
        self.engines.get(backend).cloned().unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err("drill.max_error_rate must be between 0 and 1".into());
        }
        if !(0.0..1.0).contains(&self.repeat_share) {
            return Err("drill.repeat_share must be at least 0 and below 1".into());
        }
        if !(0.0..1.0).contains(&self.holdout_share) {
            return Err("drill.holdout_share must be at least 0 and below 1".into());
        }
        if self.max_p99_ms == 0 {
            return Err("drill.max_p99_ms must be above 0".into());
        }
        parse_duration(&self.recovery_timeout).map_err(|e| format!("drill.recovery_timeout: {e}"))?;
        for (name, t) in &self.targets {
            if !BACKENDS.contains(&name.as_str()) {
                return Err(format!(
                    "drill.targets.{name}: unknown backend (expected one of {})",
                    BACKENDS.join(", ")
                ));
            }
            parse_duration(&t.rto).map_err(|e| format!("drill.targets.{name}.rto: {e}"))?;
            parse_duration(&t.rpo).map_err(|e| format!("drill.targets.{name}.rpo: {e}"))?;
        }
        for (name, e) in &self.engines {
            if !BACKENDS[..5].contains(&name.as_str()) {
                return Err(format!(
                    "drill.engines.{name}: unknown backend (expected one of {})",
                    BACKENDS[..5].join(", ")
                ));
            }
            match e.method.as_str() {
                "pause" => {}
                "kill" if e.stop.is_some() && e.start.is_some() => {}
                "kill" => {
                    return Err(format!(
                        "drill.engines.{name}: method = \"kill\" needs both 'stop' and 'start' commands"
                    ))
                }
                other => {
                    return Err(format!(
                        "drill.engines.{name}.method: '{other}' (expected pause or kill)"
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_runbook_and_overrides_win() {
        let mut c = DrillConfig::default();
        assert_eq!(c.targets_for("index").rto_seconds, 300.0);
        assert_eq!(c.targets_for("metadata").rpo_seconds, 60.0);
        c.targets.insert(
            "index".into(),
            TargetConfig {
                rto: "90s".into(),
                rpo: "0s".into(),
            },
        );
        assert_eq!(c.targets_for("index").rto_seconds, 90.0);
        assert!(c.validate().is_ok());
        c.targets.insert(
            "nope".into(),
            TargetConfig {
                rto: "1s".into(),
                rpo: "1s".into(),
            },
        );
        assert!(c.validate().unwrap_err().contains("unknown backend"));
        let mut c = DrillConfig::default();
        c.engines.insert(
            "index".into(),
            EngineControl {
                method: "kill".into(),
                ..Default::default()
            },
        );
        assert!(c.validate().unwrap_err().contains("stop"));
    }
}
