//! Prometheus metrics: a struct of named handles, rendered in the text
//! exposition format. One registry per gateway, so tests stay independent.

use recache_core::prom::Family;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The storage backends errors are counted for.
pub const BACKENDS: [&str; 4] = ["index", "artifacts", "vectors", "metadata"];

/// A latency histogram: one atomic add for the bucket an observation falls
/// in (plus count and sum); the cumulative `le` counts are summed when read.
#[derive(Default)]
pub struct Histogram {
    /// Observations in `(BUCKETS[i-1], BUCKETS[i]]` (not cumulative).
    buckets: [AtomicU64; 17],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, secs: f64) {
        let i = BUCKETS.partition_point(|b| *b < secs);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// The cumulative `le` counts and the count, read now.
    pub fn cumulative(&self) -> Buckets {
        let mut out = Buckets::default();
        let mut acc = 0;
        for (o, b) in out.le.iter_mut().zip(self.buckets.iter()) {
            acc += b.load(Ordering::Relaxed);
            *o = acc;
        }
        out.count = self.count.load(Ordering::Relaxed);
        out
    }
}

/// An f64 counter kept as bits in an atomic.
#[derive(Default)]
pub struct FloatCounter(AtomicU64);

impl FloatCounter {
    pub fn add(&self, v: f64) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label("team-a"), "team-a");
        assert_eq!(super::label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(super::label("x\ny"), "x\\ny");
    }

    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        for _ in 0..90 {
            h.observe(0.0008); // in (0.0005, 0.001]
        }
        for _ in 0..10 {
            h.observe(0.2); // in (0.1, 0.25]
        }
        let m = Metrics::default();
        m.observe_request(200, "HIT", "openai", 0.0008);
        let b = h.cumulative();
        assert_eq!(b.count, 100);
        assert_eq!((b.le[0], b.le[1], b.le[7], b.le[8], b.le[16]), (0, 90, 90, 100, 100));
        h.observe(1000.0); // above the last bucket: only +Inf (the count)
        assert_eq!((h.cumulative().le[16], h.cumulative().count), (100, 101));
        h.observe(0.001); // on a bound: that bucket (le is "less or equal")
        assert_eq!(h.cumulative().le[1], 91);
        let p50 = b.quantile(0.5).unwrap();
        assert!(p50 > 0.0005 && p50 <= 0.001, "{p50}");
        let p99 = b.quantile(0.99).unwrap();
        assert!(p99 > 0.1 && p99 <= 0.25, "{p99}");
        assert_eq!(Buckets::default().quantile(0.5), None);
        assert_eq!(m.by_cache()["HIT"].count, 1);
        assert_eq!(b.since(&b).count, 0);
    }
}

#[derive(Default)]
pub struct Metrics {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bypasses: AtomicU64,
    pub coalesced: AtomicU64,
    pub stale_served: AtomicU64,
    pub stores: AtomicU64,
    pub store_failures: AtomicU64,
    /// Entries stored while the index was out: their pointers wait for the index.
    pub stored_unindexed: AtomicU64,
    /// Answers not stored because a store of the same key was in flight.
    pub stores_skipped_in_flight: AtomicU64,
    /// Audit events deleted by retention (`[metadata] audit_retention_days`).
    pub audit_pruned: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub upstream_requests: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub tokens_saved: AtomicU64,
    pub usd_saved: FloatCounter,
    pub usd_spent: FloatCounter,
    /// Provider spend of warmer jobs (refetch, refresh-stale, warm); also in `usd_spent`.
    pub warmer_usd_spent: FloatCounter,
    /// Times the index was found to have lost its data.
    pub index_losses: AtomicU64,
    backend_errors: [AtomicU64; 4],
    /// By (HTTP status, cache status, dialect).
    latency: RwLock<BTreeMap<(u16, &'static str, &'static str), Histogram>>,
}

impl Metrics {
    pub(crate) fn backend_error(&self, backend: &str) {
        if let Some(i) = BACKENDS.iter().position(|b| *b == backend) {
            self.backend_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn backend_errors(&self, backend: &str) -> u64 {
        BACKENDS
            .iter()
            .position(|b| *b == backend)
            .map(|i| self.backend_errors[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Records one request's latency by HTTP status, cache status and the
    /// dialect of its endpoint (`openai`, `anthropic`, `gemini`).
    pub fn observe_request(&self, status: u16, cache: &'static str, dialect: &'static str, secs: f64) {
        {
            let map = self.latency.read().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = map.get(&(status, cache, dialect)) {
                h.observe(secs);
                return;
            }
        }
        let mut map = self.latency.write().unwrap_or_else(|e| e.into_inner());
        map.entry((status, cache, dialect)).or_default().observe(secs);
    }

    /// Requests so far by cache status (all HTTP statuses summed), with their
    /// latency buckets: what the dashboard's history samples.
    pub fn by_cache(&self) -> BTreeMap<&'static str, Buckets> {
        let map = self.latency.read().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<&'static str, Buckets> = BTreeMap::new();
        for ((_, cache, _), h) in map.iter() {
            out.entry(cache).or_default().add(&h.cumulative());
        }
        out
    }

    /// The Prometheus text format. `extra` gauges (name, help, value) are appended.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::with_capacity(4096);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 15] = [
            ("cache_hits_total", "Requests answered from the cache.", l(&self.hits)),
            (
                "cache_misses_total",
                "Cacheable requests that went to the provider.",
                l(&self.misses),
            ),
            (
                "cache_bypass_total",
                "Requests that skipped the cache by directive.",
                l(&self.bypasses),
            ),
            (
                "cache_coalesced_total",
                "Requests that shared another request's provider call.",
                l(&self.coalesced),
            ),
            (
                "cache_stale_served_total",
                "Expired entries served because the provider failed (stale-if-error).",
                l(&self.stale_served),
            ),
            ("cache_stores_total", "Entries written to the cache.", l(&self.stores)),
            (
                "cache_store_failures_total",
                "Entries that could not be written.",
                l(&self.store_failures),
            ),
            (
                "cache_stores_skipped_in_flight_total",
                "Answers not stored because another answer for the same key was being stored (that one is kept).",
                l(&self.stores_skipped_in_flight),
            ),
            (
                "cache_audit_events_pruned_total",
                "Audit events deleted because they were older than [metadata] audit_retention_days (per-answer events) or admin_audit_retention_days (the others).",
                l(&self.audit_pruned),
            ),
            (
                "cache_stored_unindexed_total",
                "Entries stored while the index was out; their pointers are written from metadata when it is back.",
                l(&self.stored_unindexed),
            ),
            (
                "cache_integrity_failures_total",
                "Artifacts whose SHA-256 did not match (never served).",
                l(&self.integrity_failures),
            ),
            (
                "upstream_requests_total",
                "Calls made to providers.",
                l(&self.upstream_requests),
            ),
            (
                "upstream_errors_total",
                "Provider calls that failed or answered non-2xx.",
                l(&self.upstream_errors),
            ),
            (
                "cache_tokens_saved_total",
                "Provider tokens not paid for thanks to hits.",
                l(&self.tokens_saved),
            ),
            (
                "cache_index_losses_detected_total",
                "Times the index was found empty of its data and a rebuild was queued.",
                l(&self.index_losses),
            ),
        ];
        for (name, help, v) in counters {
            Family::counter(&mut out, name, help).sample(&[], v);
        }
        for (name, help, v) in [
            (
                "cache_usd_saved_total",
                "Provider cost in USD avoided by hits.",
                &self.usd_saved,
            ),
            (
                "upstream_usd_spent_total",
                "Provider cost in USD of misses.",
                &self.usd_spent,
            ),
            (
                "warmer_usd_spent_total",
                "Provider cost in USD of warmer jobs (refetch, refresh, warm).",
                &self.warmer_usd_spent,
            ),
        ] {
            Family::counter(&mut out, name, help).sample(&[], v.get());
        }
        let mut f = Family::counter(
            &mut out,
            "cache_errors_total",
            "Storage backend errors (each one fell back to the provider).",
        );
        for (i, b) in BACKENDS.iter().enumerate() {
            f.sample(&[("backend", b)], l(&self.backend_errors[i]));
        }
        let mut f = Family::histogram(
            &mut out,
            "recache_request_duration_seconds",
            "Gateway request latency (to response headers).",
        );
        let map = self.latency.read().unwrap_or_else(|e| e.into_inner());
        for ((status, cache, dialect), h) in map.iter() {
            write_histogram(
                &mut f,
                &[("status", &status.to_string()), ("cache", cache), ("dialect", dialect)],
                h,
            );
        }
        for (name, help, v) in extra {
            Family::gauge(&mut out, name, help).sample(&[], v);
        }
        out
    }
}

/// Cumulative bucket counts of a histogram (Prometheus `le` buckets) and its count.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Buckets {
    pub le: [u64; 17],
    pub count: u64,
}

impl Buckets {
    /// What was added between `earlier` and `self`.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let mut out = *self;
        for (o, e) in out.le.iter_mut().zip(earlier.le.iter()) {
            *o = o.saturating_sub(*e);
        }
        out.count = self.count.saturating_sub(earlier.count);
        out
    }

    pub fn add(&mut self, other: &Buckets) {
        for (o, e) in self.le.iter_mut().zip(other.le.iter()) {
            *o += *e;
        }
        self.count += other.count;
    }

    /// The `q` quantile in seconds, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations.
    /// Above the last bucket it answers that bucket's bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut prev_bound = 0.0;
        let mut prev_count = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            let c = self.le[i];
            if c as f64 >= rank {
                let in_bucket = (c - prev_count) as f64;
                if in_bucket <= 0.0 {
                    return Some(*bound);
                }
                return Some(prev_bound + (bound - prev_bound) * (rank - prev_count as f64) / in_bucket);
            }
            prev_bound = *bound;
            prev_count = c;
        }
        Some(*BUCKETS.last().unwrap_or(&0.0))
    }
}

pub use recache_core::prom::label;

/// Writes one labelled histogram's series into its family.
pub(crate) fn write_histogram(f: &mut Family<'_>, labels: &[(&str, &str)], h: &Histogram) {
    let c = h.cumulative();
    // Read after the buckets: +Inf is never below the last bucket.
    let count = h.count.load(Ordering::Relaxed).max(c.le[BUCKETS.len() - 1]);
    f.series(
        labels,
        BUCKETS,
        &c.le,
        h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        count,
    );
}

/// Resident set size of this process, from /proc (Linux); 0 elsewhere.
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

/// Peak resident set size of this process (VmHWM), in bytes; 0 off Linux.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// A `kB` field of /proc/self/status.
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
}
