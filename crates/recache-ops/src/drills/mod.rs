//! Past drills, kept in metadata's audit log (`drill.run` events), and the
//! calendar the runbook asks for: each backend drilled quarterly, a full
//! restore twice a year.

use serde::Serialize;
use serde_json::{json, Value};

use recache_storage::roles::{now_ms, AuditEvent, Metadata};
use scenario::{Scenario, ALL};

pub mod scenario;
pub mod wipe;

pub const ACTION: &str = "drill.run";
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug, Serialize)]
pub struct PastDrill {
    pub id: String,
    pub scenario: String,
    pub at_ms: i64,
    pub at: String,
    pub verdict: String,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub report: String,
    pub mode: String,
}

/// What a finished drill leaves in the history.
#[derive(Clone, Debug)]
pub struct Finished<'a> {
    pub id: &'a str,
    pub scenario: &'a str,
    pub verdict: &'a str,
    pub mode: &'a str,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub started_at_ms: i64,
}

pub async fn record(meta: &dyn Metadata, r: &Finished<'_>, report_dir: &str) -> Result<(), String> {
    let detail = json!({
        "id": r.id, "scenario": r.scenario, "verdict": r.verdict, "mode": r.mode,
        "rto_seconds": r.rto_seconds, "rpo_seconds": r.rpo_seconds,
        "started_at_ms": r.started_at_ms, "report": report_dir,
    });
    meta.append_audit(vec![AuditEvent {
        id: format!("drill-{}", r.id),
        at_ms: r.started_at_ms,
        tenant: None,
        actor: "drill".into(),
        action: ACTION.into(),
        cache_key: None,
        detail,
    }])
    .await
    .map_err(|e| e.to_string())
}

/// Past drills, newest first (from the newest `scan` audit events).
pub async fn list(meta: &dyn Metadata, scan: u32) -> Result<Vec<PastDrill>, String> {
    let events = meta.recent_audit(scan).await.map_err(|e| e.to_string())?;
    let mut out: Vec<PastDrill> = events
        .into_iter()
        .filter(|e| e.action == ACTION)
        .map(|e| {
            let d = &e.detail;
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            PastDrill {
                id: s("id"),
                scenario: s("scenario"),
                at_ms: e.at_ms,
                at: crate::backup::format_time(e.at_ms),
                verdict: s("verdict"),
                rto_seconds: d["rto_seconds"].as_f64(),
                rpo_seconds: d["rpo_seconds"].as_f64(),
                report: s("report"),
                mode: s("mode"),
            }
        })
        .collect();
    out.sort_by_key(|d| std::cmp::Reverse(d.at_ms));
    Ok(out)
}

#[derive(Clone, Debug, Serialize)]
pub struct Due {
    pub scenario: String,
    pub every_days: u32,
    pub last_run: Option<String>,
    pub last_verdict: Option<String>,
    /// The last drill that passed (what the calendar counts).
    pub last_pass: Option<String>,
    pub due: String,
    /// `ok`, `due soon` (within 14 days) or `overdue`.
    pub status: String,
}

/// The calendar at `now_ms`: a scenario is due `cadence` days after its last passing drill.
pub fn calendar(past: &[PastDrill], now: i64) -> Vec<Due> {
    ALL.iter()
        .map(|s: &Scenario| {
            let runs: Vec<&PastDrill> = past.iter().filter(|d| d.scenario == s.name()).collect();
            let last = runs.first();
            let pass = runs.iter().find(|d| d.verdict == "pass");
            let every = s.cadence_days();
            let due_ms = pass.map(|d| d.at_ms + every as i64 * DAY_MS).unwrap_or(now);
            let status = if pass.is_none() || due_ms <= now {
                "overdue"
            } else if due_ms - now <= 14 * DAY_MS {
                "due soon"
            } else {
                "ok"
            };
            Due {
                scenario: s.name().into(),
                every_days: every,
                last_run: last.map(|d| d.at.clone()),
                last_verdict: last.map(|d| d.verdict.clone()),
                last_pass: pass.map(|d| d.at.clone()),
                due: if pass.is_none() {
                    "now (never passed)".into()
                } else {
                    crate::backup::format_time(due_ms)[..10].to_string()
                },
                status: status.into(),
            }
        })
        .collect()
}

pub fn as_json(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub fn now() -> i64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(scenario: &str, days_ago: i64, verdict: &str, now: i64) -> PastDrill {
        PastDrill {
            id: "x".into(),
            scenario: scenario.into(),
            at_ms: now - days_ago * DAY_MS,
            at: crate::backup::format_time(now - days_ago * DAY_MS),
            verdict: verdict.into(),
            rto_seconds: Some(1.0),
            rpo_seconds: Some(0.0),
            report: "r".into(),
            mode: "managed".into(),
        }
    }

    #[test]
    fn the_calendar_counts_passing_drills_only() {
        let now = 1_800_000_000_000;
        let p = vec![
            past("index-down", 10, "pass", now),
            past("artifacts-down", 85, "pass", now),
            past("metadata-down", 1, "fail", now),
            past("full-restore", 100, "pass", now),
        ];
        let c = calendar(&p, now);
        let get = |s: &str| c.iter().find(|d| d.scenario == s).unwrap().status.clone();
        assert_eq!(get("index-down"), "ok");
        assert_eq!(get("artifacts-down"), "due soon");
        assert_eq!(get("metadata-down"), "overdue", "a failed drill does not count");
        assert_eq!(get("full-restore"), "ok", "twice a year");
        assert_eq!(get("vectors-down"), "overdue", "never run");
        assert_eq!(c.len(), ALL.len());
    }
}
