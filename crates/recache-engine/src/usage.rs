//! Usage counters per hour, tenant, namespace and model, kept in memory and
//! added to metadata's `usage_hourly` table with the hit counters (every
//! `cache.hit_flush_interval_ms`). `recache report cost` reads them back.
//!
//! A flush that fails puts its rows back, so a metadata outage delays the
//! counters but does not lose them (up to [`MAX_SLOTS`] groups; past that,
//! new groups are dropped and counted).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::roles::{Metadata, UsageRow};

const HOUR_MS: i64 = 3_600_000;
/// Groups held in memory at most (while metadata is down).
pub const MAX_SLOTS: usize = 100_000;

/// Shards of the map, so concurrent hits rarely wait on one another.
const SHARDS: usize = 16;

type Shard = Mutex<HashMap<u64, Vec<UsageRow>>>;

#[derive(Default)]
pub struct Usage {
    /// By a hash of (hour, tenant, namespace, model), sharded by that hash;
    /// collisions share a bucket.
    slots: [Shard; SHARDS],
    len: AtomicU64,
    dropped: AtomicU64,
}

/// What one request adds: a [`UsageRow`] of which only the counters are read.
pub type Delta = UsageRow;

impl Usage {
    /// Counts `d` for the hour of `at_ms`.
    pub fn record(&self, at_ms: i64, tenant: &str, namespace: &str, model: &str, d: Delta) {
        let hour = at_ms - at_ms.rem_euclid(HOUR_MS);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (hour, tenant, namespace, model).hash(&mut h);
        let hash = h.finish();
        let mut slots = self.slots[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let bucket = slots.entry(hash).or_default();
        if let Some(row) = bucket
            .iter_mut()
            .find(|r| r.hour_ms == hour && r.tenant == tenant && r.namespace == namespace && r.model == model)
        {
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
            ..d
        });
        self.len.fetch_add(1, Ordering::Relaxed);
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
                for r in &rows {
                    self.record(r.hour_ms, &r.tenant, &r.namespace, &r.model, r.clone());
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
        u.record(t0, "a", "default", "m", Delta::miss(10, 5, 0.01));
        u.record(t0 + 60_000, "a", "default", "m", Delta::hit(15, 0.01, false));
        u.record(t0 + 60_000, "a", "default", "m", Delta::hit(15, 0.01, true));
        u.record(t0 + HOUR_MS, "a", "default", "m", Delta::hit(15, 0.01, false));
        u.record(t0, "b", "default", "m", Delta::miss(1, 1, 0.001));
        let mut rows = u.take();
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
