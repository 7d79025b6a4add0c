//! Knowing the false-hit rate: per-scope checks (shadow comparisons and
//! verification samples), the error budget, and the threshold it raises.
//!
//! Every check says whether the semantic candidate's answer agreed with the
//! provider's fresh answer for the new question. A scope's false-hit rate is
//! `disagreements / checks` over the checks since its threshold last changed;
//! once it has `min_samples` checks and the rate is over the budget, the
//! threshold rises by `threshold_step` (up to `max_threshold`), the window
//! starts again, and the change is logged and audited. The threshold is never
//! lowered automatically: an operator does that (config or restart).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// What is counted per scope, and summed per tenant and namespace for reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Semantic hits served (live mode).
    pub semantic_hits: u64,
    /// Would-be hits computed in shadow mode.
    pub shadow_candidates: u64,
    pub shadow_checks: u64,
    pub shadow_agreements: u64,
    pub verifications: u64,
    pub verification_agreements: u64,
    /// Candidates the guards refused.
    pub guard_refusals: u64,
    pub threshold_raises: u64,
}

impl Counts {
    pub fn checks(&self) -> u64 {
        self.shadow_checks + self.verifications
    }
    pub(crate) fn disagreements(&self) -> u64 {
        self.checks() - self.shadow_agreements - self.verification_agreements
    }
    /// Measured false-hit rate and its 95 % Wilson interval, over all checks.
    pub fn false_hit_rate(&self) -> Option<(f64, (f64, f64))> {
        let n = self.checks();
        (n > 0).then(|| {
            let bad = self.disagreements();
            (bad as f64 / n as f64, wilson(bad, n))
        })
    }
    pub fn add(&mut self, o: &Counts) {
        self.semantic_hits += o.semantic_hits;
        self.shadow_candidates += o.shadow_candidates;
        self.shadow_checks += o.shadow_checks;
        self.shadow_agreements += o.shadow_agreements;
        self.verifications += o.verifications;
        self.verification_agreements += o.verification_agreements;
        self.guard_refusals += o.guard_refusals;
        self.threshold_raises += o.threshold_raises;
    }
}

/// One scope's counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScopeStats {
    pub tenant: String,
    pub namespace: String,
    pub scope: String,
    pub mode: String,
    #[serde(flatten)]
    pub counts: Counts,
    /// Checks and disagreements since the threshold last changed.
    pub window_checks: u64,
    pub window_disagreements: u64,
    /// The threshold in force (base, raised by the budget).
    pub threshold: f32,
}

/// The 95 % Wilson score interval for `k` successes out of `n`.
pub(crate) fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.96f64;
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / denom;
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n_f)) / n_f).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// A threshold change the caller must log and audit.
pub struct Raised {
    pub from: f32,
    pub to: f32,
    pub rate: f64,
    pub checks: u64,
}

#[derive(Default)]
pub struct Budget {
    scopes: Mutex<HashMap<String, ScopeStats>>,
}

pub enum Event {
    Hit,
    ShadowCandidate,
    Refused,
}

impl Budget {
    fn with<T>(&self, scope: &str, init: impl FnOnce() -> ScopeStats, f: impl FnOnce(&mut ScopeStats) -> T) -> T {
        let mut m = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry(scope.to_string()).or_insert_with(init);
        f(s)
    }

    /// The threshold in force for a scope (the base until the budget raises it).
    pub fn threshold(&self, scope: &str, base: f32) -> f32 {
        let m = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        m.get(scope).map(|s| s.threshold.max(base)).unwrap_or(base)
    }

    pub fn count(&self, scope: &str, init: impl FnOnce() -> ScopeStats, e: Event) {
        self.with(scope, init, |s| match e {
            Event::Hit => s.counts.semantic_hits += 1,
            Event::ShadowCandidate => s.counts.shadow_candidates += 1,
            Event::Refused => s.counts.guard_refusals += 1,
        })
    }

    /// Records one check; returns the threshold change when the budget was exceeded.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        scope: &str,
        init: impl FnOnce() -> ScopeStats,
        shadow: bool,
        agreed: bool,
        budget: f64,
        min_samples: u64,
        step: f32,
        max_threshold: f32,
    ) -> Option<Raised> {
        self.with(scope, init, |s| {
            if shadow {
                s.counts.shadow_checks += 1;
                s.counts.shadow_agreements += agreed as u64;
            } else {
                s.counts.verifications += 1;
                s.counts.verification_agreements += agreed as u64;
            }
            s.window_checks += 1;
            s.window_disagreements += (!agreed) as u64;
            if s.window_checks < min_samples.max(1) {
                return None;
            }
            let rate = s.window_disagreements as f64 / s.window_checks as f64;
            if rate <= budget || s.threshold >= max_threshold {
                return None;
            }
            let from = s.threshold;
            s.threshold = (s.threshold + step).min(max_threshold);
            s.counts.threshold_raises += 1;
            let checks = s.window_checks;
            s.window_checks = 0;
            s.window_disagreements = 0;
            Some(Raised {
                from,
                to: s.threshold,
                rate,
                checks,
            })
        })
    }

    pub fn snapshot(&self) -> Vec<ScopeStats> {
        let m = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<ScopeStats> = m.values().cloned().collect();
        v.sort_by(|a, b| (&a.tenant, &a.namespace, &a.scope).cmp(&(&b.tenant, &b.namespace, &b.scope)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_brackets_the_rate() {
        let (lo, hi) = wilson(2, 100);
        assert!(lo < 0.02 && hi > 0.02 && lo >= 0.0 && hi < 0.08, "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn over_budget_raises_the_threshold_and_starts_a_new_window() {
        let b = Budget::default();
        let init = || ScopeStats {
            threshold: 0.9,
            ..Default::default()
        };
        let mut raised = None;
        for i in 0..10 {
            raised = b.check("s", init, true, i % 2 == 0, 0.02, 10, 0.01, 0.99).or(raised);
        }
        let r = raised.expect("50 % false hits over a 2 % budget");
        assert!((r.to - 0.91).abs() < 1e-6 && (r.from - 0.9).abs() < 1e-6);
        assert!((b.threshold("s", 0.9) - 0.91).abs() < 1e-6);
        // All agreements: no further raise.
        for _ in 0..20 {
            assert!(b.check("s", init, false, true, 0.02, 10, 0.01, 0.99).is_none());
        }
        assert_eq!(b.snapshot()[0].counts.threshold_raises, 1);
    }
}
