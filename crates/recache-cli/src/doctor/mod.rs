//! `recache doctor`: the running engines checked against the operations
//! guides' prevention advice, and recache's own health. One finding per
//! check, `ok | warn | fail`, each with a one-line fix; exit 1 on any `fail`.
//!
//! Each engine has its own file; each check is a pure function of what was
//! read from the engine (unit-tested), plus the code that reads it (tested
//! against real servers in `tests/doctor.rs`).

use serde::Serialize;

pub mod postgres;
pub mod qdrant;
pub mod recache;
pub mod redis;
pub mod s3;
pub mod upstreams;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// `redis.persistence`, `s3.versioning`, `recache.backup`, ...
    pub check: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// One line: what to do about it (empty when `ok`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
    /// The advice the check comes from.
    pub advice: &'static str,
}

impl Finding {
    pub fn ok(check: &str, detail: impl Into<String>, advice: &'static str) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: String::new(),
            advice,
        }
    }
    pub fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>, advice: &'static str) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: fix.into(),
            advice,
        }
    }
    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>, advice: &'static str) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: fix.into(),
            advice,
        }
    }
}

/// The worst status among the findings (`ok` when there are none).
pub fn worst(findings: &[Finding]) -> Status {
    findings.iter().map(|f| f.status).max().unwrap_or(Status::Ok)
}

/// Counts by status.
pub fn summary(findings: &[Finding]) -> serde_json::Value {
    let n = |s: Status| findings.iter().filter(|f| f.status == s).count();
    serde_json::json!({"ok": n(Status::Ok), "warn": n(Status::Warn), "fail": n(Status::Fail)})
}

/// The text report: one line per check, the fix under each finding.
pub(crate) fn render_text(findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(10);
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(out, "{:<4}  {:<width$}  {}", f.status.as_str(), f.check, f.detail);
        if !f.fix.is_empty() {
            let _ = writeln!(out, "{:<4}  {:<width$}  fix: {}", "", "", f.fix);
        }
    }
    let s = summary(findings);
    let _ = writeln!(out, "\n{} ok, {} warn, {} fail", s["ok"], s["warn"], s["fail"]);
    out
}

/// Percent with one decimal.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_and_text() {
        let f = vec![
            Finding::ok("a.one", "fine", "x"),
            Finding::warn("a.two", "meh", "do this", "x"),
        ];
        assert_eq!(worst(&f), Status::Warn);
        let t = render_text(&f);
        assert!(t.contains("warn  a.two  meh") && t.contains("fix: do this"), "{t}");
        assert_eq!(worst(&[]), Status::Ok);
    }
}
