//! Usage counters per hour, tenant, namespace, model and dialect, kept in
//! memory and added to metadata's `usage_hourly` table with the hit counters
//! (every `cache.hit_flush_interval_ms`). `recache report cost` reads them
//! back; the dashboard shows this process's totals per dialect.
//!
//! A flush that fails puts its rows back, so a metadata outage delays the
//! counters but does not lose them (up to [`MAX_SLOTS`] groups; past that,
//! new groups are dropped and counted).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::metrics::FloatCounter;
use crate::roles::{Metadata, UsageRow};
use recache_core::endpoint::Dialect;

const HOUR_MS: i64 = 3_600_000;
/// Groups held in memory at most (while metadata is down).
pub const MAX_SLOTS: usize = 100_000;

/// Shards of the map, so concurrent hits rarely wait on one another.
const SHARDS: usize = 16;

type Shard = Mutex<HashMap<u64, Vec<UsageRow>>>;

#[derive(Default)]
pub struct Usage {
    /// By a hash of (hour, tenant, namespace, model, dialect), sharded by
    /// that hash; collisions share a bucket.
    slots: [Shard; SHARDS],
    len: AtomicU64,
    dropped: AtomicU64,
    /// Since this process started, per dialect (never flushed).
    totals: [Totals; DIALECTS.len()],
}

const DIALECTS: [Dialect; 3] = [Dialect::OpenAi, Dialect::Anthropic, Dialect::Gemini];

#[derive(Default)]
struct Totals {
    hits: AtomicU64,
    semantic_hits: AtomicU64,
    misses: AtomicU64,
    tokens_spent: AtomicU64,
    tokens_saved: AtomicU64,
    usd_saved: FloatCounter,
    usd_spent: FloatCounter,
}

/// What one request adds: a [`UsageRow`] of which only the counters are read.
pub type Delta = UsageRow;

/// Whose usage a [`Delta`] is.
#[derive(Clone, Copy, Debug)]
pub struct Group<'a> {
    /// The tenant's stable id (`recache report cost` shows its current name).
    pub tenant: &'a str,
    pub namespace: &'a str,
    pub model: &'a str,
    pub dialect: Dialect,
}

impl Usage {
    /// Counts `d` for the hour of `at_ms`.
    pub fn record(&self, at_ms: i64, g: Group<'_>, d: Delta) {
        self.count_total(g.dialect, &d);
        let hour = at_ms - at_ms.rem_euclid(HOUR_MS);
        self.add(hour, [g.tenant, g.namespace, g.model, g.dialect.as_str()], d);
    }

    /// Adds `d` to the row of `hour` and `names` (tenant, namespace, model,
    /// dialect), creating it unless [`MAX_SLOTS`] are held.
    fn add(&self, hour: i64, names: [&str; 4], d: Delta) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (hour, names).hash(&mut h);
        let hash = h.finish();
        let mut slots = self.slots[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let bucket = slots.entry(hash).or_default();
        let [tenant, namespace, model, dialect] = names;
        if let Some(row) = bucket.iter_mut().find(|r| {
            r.hour_ms == hour
                && r.tenant == tenant
                && r.namespace == namespace
                && r.model == model
                && r.dialect == dialect
        }) {
            row.add_counts(&d);
            return;
        }
        if self.len.load(Ordering::Relaxed) as usize >= MAX_SLOTS {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        bucket.push(UsageRow {
            hour_ms: hour,
            tenant: tenant.to_string(),
            namespace: namespace.to_string(),
            model: model.to_string(),
            dialect: dialect.to_string(),
            ..d
        });
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    fn count_total(&self, dialect: Dialect, d: &Delta) {
        let i = DIALECTS.iter().position(|x| *x == dialect).unwrap_or(0);
        let t = &self.totals[i];
        t.hits.fetch_add(d.hits, Ordering::Relaxed);
        t.semantic_hits.fetch_add(d.semantic_hits, Ordering::Relaxed);
        t.misses.fetch_add(d.misses, Ordering::Relaxed);
        t.tokens_spent
            .fetch_add(d.prompt_tokens + d.completion_tokens, Ordering::Relaxed);
        t.tokens_saved.fetch_add(d.tokens_saved, Ordering::Relaxed);
        t.usd_saved.add(d.usd_saved);
        t.usd_spent.add(d.usd_spent);
    }

    /// This process's counters per dialect since it started (every dialect,
    /// in a fixed order; `hour_ms` is 0 and the names are empty but `dialect`).
    pub fn by_dialect(&self) -> Vec<UsageRow> {
        DIALECTS
            .iter()
            .zip(&self.totals)
            .map(|(dialect, t)| {
                let tokens_spent = t.tokens_spent.load(Ordering::Relaxed);
                UsageRow {
                    dialect: dialect.as_str().to_string(),
                    hits: t.hits.load(Ordering::Relaxed),
                    semantic_hits: t.semantic_hits.load(Ordering::Relaxed),
                    misses: t.misses.load(Ordering::Relaxed),
                    // Prompt and output are not kept apart here.
                    prompt_tokens: tokens_spent,
                    tokens_saved: t.tokens_saved.load(Ordering::Relaxed),
                    usd_saved: t.usd_saved.get(),
                    usd_spent: t.usd_spent.get(),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Everything counted since the last flush.
    pub fn take(&self) -> Vec<UsageRow> {
        let mut out = Vec::new();
        for shard in &self.slots {
            let mut slots = shard.lock().unwrap_or_else(|e| e.into_inner());
            let rows: Vec<UsageRow> = slots.drain().flat_map(|(_, v)| v).collect();
            self.len.fetch_sub(rows.len() as u64, Ordering::Relaxed);
            out.extend(rows);
        }
        out
    }

    /// Groups dropped because [`MAX_SLOTS`] were held.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Adds what was counted to metadata; on failure keeps it for the next flush.
    pub async fn flush(&self, metadata: &dyn Metadata) -> Result<usize, crate::roles::BackendError> {
        let rows = self.take();
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        match metadata.record_usage(rows.clone()).await {
            Ok(()) => Ok(n),
            Err(e) => {
                // Not through `record`: the per-dialect totals hold them already.
                for r in &rows {
                    self.add(r.hour_ms, [&r.tenant, &r.namespace, &r.model, &r.dialect], r.clone());
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_hour_and_names() {
        let u = Usage::default();
        let t0 = 10 * HOUR_MS + 5;
        let g = |tenant, dialect| Group {
            tenant,
            namespace: "default",
            model: "m",
            dialect,
        };
        let (a, b) = (g("a", Dialect::OpenAi), g("b", Dialect::OpenAi));
        u.record(t0, a, Delta::miss(10, 5, 0.01));
        u.record(t0 + 60_000, a, Delta::hit(15, 0.01, false));
        u.record(t0 + 60_000, a, Delta::hit(15, 0.01, true));
        u.record(t0 + HOUR_MS, a, Delta::hit(15, 0.01, false));
        u.record(t0, b, Delta::miss(1, 1, 0.001));
        u.record(t0, g("a", Dialect::Gemini), Delta::hit(4, 0.5, false));
        let by = u.by_dialect();
        assert_eq!(by.len(), 3);
        assert_eq!(
            (by[0].dialect.as_str(), by[0].hits, by[0].semantic_hits, by[0].misses),
            ("openai", 2, 1, 2)
        );
        assert_eq!((by[1].hits, by[1].misses), (0, 0));
        assert_eq!(
            (by[2].dialect.as_str(), by[2].hits, by[2].tokens_saved),
            ("gemini", 1, 4)
        );
        let mut rows = u.take();
        rows.retain(|r| r.dialect == "openai");
        rows.sort_by(|a, b| (a.hour_ms, &a.tenant).cmp(&(b.hour_ms, &b.tenant)));
        assert_eq!(rows.len(), 3);
        let r = &rows[0];
        assert_eq!((r.hour_ms, r.tenant.as_str()), (10 * HOUR_MS, "a"));
        assert_eq!((r.hits, r.semantic_hits, r.misses, r.tokens_saved), (1, 1, 1, 30));
        assert!((r.usd_saved - 0.02).abs() < 1e-12 && (r.usd_spent - 0.01).abs() < 1e-12);
        assert_eq!(rows[2].hour_ms, 11 * HOUR_MS);
        assert!(u.take().is_empty());
    }
}
