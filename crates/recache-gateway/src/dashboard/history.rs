//! The short history the dashboard's charts need, kept in memory: a ring of
//! cumulative counter samples, one every [`STEP`], an hour long. Rates are
//! differences between samples, so the page works with no Prometheus.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::gateway::AppState;
use recache_engine::metrics::Buckets;
use recache_storage::roles::now_ms;

/// Time between samples.
pub const STEP: Duration = Duration::from_secs(10);
/// Samples kept: one hour, plus the one the first difference starts from.
pub const KEEP: usize = 361;

/// Counters at one instant (cumulative since the gateway started).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at_ms: i64,
    pub hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    /// Requests by cache status (`HIT`, `MISS`, `ERROR`, ...) with their latency buckets.
    pub by_cache: BTreeMap<&'static str, Buckets>,
    pub usd_saved: f64,
    pub usd_spent: f64,
    /// Storage backends whose breaker was not closed (or disabled) at this instant.
    pub degraded: Vec<&'static str>,
}

impl Sample {
    pub fn take(s: &AppState) -> Sample {
        let m = &s.cache.metrics;
        Sample {
            at_ms: now_ms(),
            hits: m.hits.load(Ordering::Relaxed),
            semantic_hits: s
                .semantic
                .as_ref()
                .map(|x| x.metrics.lookups(recache_engine::semantic::engine::Lookup::Hit))
                .unwrap_or(0),
            misses: m.misses.load(Ordering::Relaxed),
            by_cache: m.by_cache(),
            usd_saved: m.usd_saved.get(),
            usd_spent: m.usd_spent.get(),
            degraded: s
                .cache
                .roles
                .breakers
                .iter()
                .filter(|b| {
                    !matches!(
                        b.state(),
                        recache_core::breaker::BreakerState::Closed | recache_core::breaker::BreakerState::Disabled
                    )
                })
                .map(|b| b.backend)
                .collect(),
        }
    }

    pub fn requests(&self) -> u64 {
        self.by_cache.values().map(|b| b.count).sum()
    }

    fn answered(&self) -> u64 {
        self.hits + self.semantic_hits
    }
}

/// One point of the charts: what happened between two samples.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub at_ms: i64,
    pub rps: f64,
    /// Share of lookups answered from the cache (exact and semantic); `None` without lookups.
    pub hit_rate: Option<f64>,
    pub semantic_hit_rate: Option<f64>,
    pub degraded: bool,
}

/// The extra provider spend of the last stretch of time with a breaker open.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Outage {
    pub start_ms: i64,
    pub end_ms: i64,
    pub ongoing: bool,
    pub backends: Vec<&'static str>,
    pub requests: u64,
    /// USD spent on the provider during the outage.
    pub spent_usd: f64,
    /// What those requests would have cost at the spend per request of the
    /// healthy time before it (within the hour kept); `None` without any.
    pub expected_usd: Option<f64>,
    /// `spent - expected`, never below 0; `None` without a healthy baseline.
    pub extra_usd: Option<f64>,
}

#[derive(Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    pub fn push(&self, s: Sample) {
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// The samples kept, oldest first, with `now` appended.
    pub fn with(&self, now: Sample) -> Vec<Sample> {
        let ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Sample> = ring.iter().cloned().collect();
        v.push(now);
        v
    }
}

pub fn points(samples: &[Sample]) -> Vec<Point> {
    samples
        .windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let secs = ((b.at_ms - a.at_ms) as f64 / 1000.0).max(0.001);
            let answered = b.answered().saturating_sub(a.answered());
            let lookups = answered + b.misses.saturating_sub(a.misses);
            let sem = b.semantic_hits.saturating_sub(a.semantic_hits);
            Point {
                at_ms: b.at_ms,
                rps: b.requests().saturating_sub(a.requests()) as f64 / secs,
                hit_rate: (lookups > 0).then(|| answered as f64 / lookups as f64),
                semantic_hit_rate: (lookups > 0).then(|| sem as f64 / lookups as f64),
                degraded: !b.degraded.is_empty(),
            }
        })
        .collect()
}

/// Requests by cache status and latency buckets between the first and the last sample.
pub fn window(samples: &[Sample]) -> BTreeMap<&'static str, Buckets> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return BTreeMap::new();
    };
    last.by_cache
        .iter()
        .map(|(k, b)| (*k, first.by_cache.get(k).map(|e| b.since(e)).unwrap_or(*b)))
        .collect()
}

/// The last outage within the samples: the last run of samples with a breaker open.
pub(crate) fn last_outage(samples: &[Sample]) -> Option<Outage> {
    let end = samples.iter().rposition(|s| !s.degraded.is_empty())?;
    let mut start = end;
    while start > 0 && !samples[start - 1].degraded.is_empty() {
        start -= 1;
    }
    // The outage's counters run from the sample before it started to the one after it ended.
    let from = &samples[start.saturating_sub(1)];
    let ongoing = end == samples.len() - 1;
    let to = &samples[if ongoing { end } else { end + 1 }];
    let requests = to.requests().saturating_sub(from.requests());
    let spent = (to.usd_spent - from.usd_spent).max(0.0);
    // The healthy time before: from the first sample kept to the one the outage starts from.
    let before = &samples[..start];
    let expected = match (before.first(), before.last()) {
        (Some(b_first), Some(b_last)) if b_last.requests() > b_first.requests() => {
            let per_request =
                (b_last.usd_spent - b_first.usd_spent).max(0.0) / (b_last.requests() - b_first.requests()) as f64;
            Some(per_request * requests as f64)
        }
        _ => None,
    };
    let mut backends: Vec<&'static str> = samples[start..=end].iter().flat_map(|s| s.degraded.clone()).collect();
    backends.sort_unstable();
    backends.dedup();
    Some(Outage {
        start_ms: samples[start].at_ms,
        end_ms: to.at_ms,
        ongoing,
        backends,
        requests,
        spent_usd: spent,
        expected_usd: expected,
        extra_usd: expected.map(|e| (spent - e).max(0.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64, requests: u64, hits: u64, spent: f64, degraded: bool) -> Sample {
        let mut by_cache = BTreeMap::new();
        by_cache.insert(
            "HIT",
            Buckets {
                count: hits,
                ..Default::default()
            },
        );
        by_cache.insert(
            "MISS",
            Buckets {
                count: requests - hits,
                ..Default::default()
            },
        );
        Sample {
            at_ms: t * 10_000,
            hits,
            misses: requests - hits,
            usd_spent: spent,
            by_cache,
            degraded: if degraded { vec!["index"] } else { vec![] },
            ..Default::default()
        }
    }

    #[test]
    fn points_are_rates_between_samples() {
        let s = [sample(0, 0, 0, 0.0, false), sample(1, 100, 80, 0.2, false)];
        let p = points(&s);
        assert_eq!(p.len(), 1);
        assert!((p[0].rps - 10.0).abs() < 1e-9);
        assert_eq!(p[0].hit_rate, Some(0.8));
        assert_eq!(window(&s)["HIT"].count, 80);
    }

    #[test]
    fn the_last_outage_costs_what_was_spent_beyond_the_healthy_rate() {
        // Healthy: 100 requests per step, 20 misses at $0.01 = $0.20 per step ($0.002 per request).
        // Outage (two steps): every request a miss: $1.00 per step.
        let s = [
            sample(0, 0, 0, 0.0, false),
            sample(1, 100, 80, 0.2, false),
            sample(2, 200, 160, 0.4, false),
            sample(3, 300, 160, 1.4, true),
            sample(4, 400, 160, 2.4, true),
            sample(5, 500, 240, 2.6, false),
        ];
        let o = last_outage(&s).unwrap();
        assert!(!o.ongoing);
        assert_eq!((o.start_ms, o.end_ms), (30_000, 50_000));
        assert_eq!(o.requests, 300);
        assert!((o.spent_usd - 2.2).abs() < 1e-9, "{o:?}");
        assert!((o.expected_usd.unwrap() - 0.6).abs() < 1e-9, "{o:?}");
        assert!((o.extra_usd.unwrap() - 1.6).abs() < 1e-9, "{o:?}");
        assert_eq!(o.backends, vec!["index"]);
        assert!(last_outage(&s[..3]).is_none());
        let ongoing = last_outage(&s[..5]).unwrap();
        assert!(ongoing.ongoing);
        // An outage from the first sample on has no healthy time to compare with.
        let from_start = last_outage(&[sample(0, 0, 0, 0.0, true), sample(1, 10, 0, 0.1, true)]).unwrap();
        assert_eq!((from_start.expected_usd, from_start.extra_usd), (None, None));
    }
}
