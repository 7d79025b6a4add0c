//! Figures from the drill's samples: per-second buckets, the steady state,
//! when the hit rate came back (RTO), latency percentiles and spend.

use serde::Serialize;

use super::workload::{Outcome, Sample};

/// The window the hit rate must hold for before it counts as recovered.
pub const RECOVERY_WINDOW_S: f64 = 3.0;
/// Recovered: at least this share of the steady-state hit rate.
pub const RECOVERY_SHARE: f64 = 0.95;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Bucket {
    /// Second since the drill's clock started.
    pub t: u64,
    pub requests: u64,
    pub errors: u64,
    pub provider_errors: u64,
    pub hits: u64,
    pub semantic_hits: u64,
    pub stale: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub provider_calls: u64,
    pub spend_usd: f64,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Samples sent in `[from, to)`, as a slice of the time-sorted samples.
pub(crate) fn in_range(sorted: &[Sample], from: f64, to: f64) -> &[Sample] {
    let a = sorted.partition_point(|s| s.t < from);
    let b = sorted.partition_point(|s| s.t < to);
    &sorted[a..b.max(a)]
}

/// Requests that count against the promise of zero errors: any failure,
/// except the provider's own while the provider is the fault.
pub(crate) fn counted_error(s: &Sample, provider_faulted: bool) -> bool {
    // (`provider_faulted`: see `in_window`.)
    match s.outcome {
        Outcome::Error => true,
        Outcome::ProviderError => !provider_faulted,
        _ => false,
    }
}

/// The request was in flight at some point of `[from, to]` (it was sent
/// before `to` and answered after `from`): a fault in that window could reach it.
pub(crate) fn in_window(s: &Sample, window: Option<(f64, f64)>) -> bool {
    window.is_some_and(|(from, to)| s.t <= to && s.t + s.latency_ms / 1000.0 >= from)
}

pub fn hit_rate(samples: &[Sample]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().filter(|s| s.outcome.served_from_cache()).count() as f64 / samples.len() as f64
}

pub fn buckets(sorted: &[Sample], until: f64) -> Vec<Bucket> {
    let mut out = Vec::new();
    let mut t = 0u64;
    while (t as f64) < until {
        let xs = in_range(sorted, t as f64, t as f64 + 1.0);
        let mut lat: Vec<f64> = xs.iter().map(|s| s.latency_ms).collect();
        lat.sort_by(f64::total_cmp);
        let count = |o: Outcome| xs.iter().filter(|s| s.outcome == o).count() as u64;
        out.push(Bucket {
            t,
            requests: xs.len() as u64,
            errors: count(Outcome::Error),
            provider_errors: count(Outcome::ProviderError),
            hits: count(Outcome::Hit),
            semantic_hits: count(Outcome::SemanticHit),
            stale: count(Outcome::Stale),
            misses: count(Outcome::Miss),
            hit_rate: hit_rate(xs),
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            provider_calls: count(Outcome::Miss),
            spend_usd: xs.iter().map(|s| s.cost_usd).sum(),
        });
        t += 1;
    }
    out
}

/// The first time at or after `from` from which the hit rate holds at least
/// `RECOVERY_SHARE` of `steady` over a `RECOVERY_WINDOW_S` window that ends
/// before `until` (the last request sent). `None`: not recovered.
pub(crate) fn recovered_at(sorted: &[Sample], steady: f64, from: f64, until: f64) -> Option<f64> {
    let target = steady * RECOVERY_SHARE;
    let mut t = from;
    while t + RECOVERY_WINDOW_S <= until {
        let w = in_range(sorted, t, t + RECOVERY_WINDOW_S);
        if w.len() >= 3 && hit_rate(w) >= target {
            return Some(t);
        }
        t += 0.25;
    }
    None
}

/// Latency percentiles of a range, in ms.
pub fn latency(samples: &[Sample]) -> (f64, f64) {
    let mut lat: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, outcome: Outcome) -> Sample {
        Sample {
            t,
            latency_ms: 1.0,
            outcome,
            cost_usd: if outcome == Outcome::Miss { 0.001 } else { 0.0 },
            seeded: None,
            status: 200,
            detail: None,
        }
    }

    #[test]
    fn recovery_is_the_start_of_the_first_window_back_at_the_steady_rate() {
        // 10 req/s: hits until t=5, misses from 5 to 9, hits again from 9.
        let xs: Vec<Sample> = (0..200)
            .map(|i| {
                let t = i as f64 / 10.0;
                s(
                    t,
                    if (5.0..9.0).contains(&t) {
                        Outcome::Miss
                    } else {
                        Outcome::Hit
                    },
                )
            })
            .collect();
        assert_eq!(hit_rate(in_range(&xs, 0.0, 5.0)), 1.0);
        let at = recovered_at(&xs, 1.0, 5.0, 20.0).unwrap();
        assert!((at - 9.0).abs() < 0.01, "{at}");
        assert_eq!(
            recovered_at(&xs, 1.0, 5.0, 11.0),
            None,
            "a window must fit before the end"
        );
        let b = buckets(&xs, 20.0);
        assert_eq!(b.len(), 20);
        assert_eq!((b[6].misses, b[6].hits), (10, 0));
        assert!((b[6].spend_usd - 0.01).abs() < 1e-9);
        // A request sent just before the fault and cut by it is in the fault's window.
        let mut cut = s(4.9, Outcome::ProviderError);
        cut.latency_ms = 200.0;
        assert!(in_window(&cut, Some((5.0, 9.0))));
        assert!(!in_window(&s(4.9, Outcome::ProviderError), Some((5.0, 9.0))));
        assert!(!in_window(&s(9.5, Outcome::ProviderError), Some((5.0, 9.0))));
        assert!(!in_window(&cut, None));
        assert!(counted_error(&s(1.0, Outcome::Error), true));
        assert!(!counted_error(&s(1.0, Outcome::ProviderError), true));
        assert!(counted_error(&s(1.0, Outcome::ProviderError), false));
    }
}
