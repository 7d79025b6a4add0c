//! Shared counters for tenant and key limits, kept on the index engine: in
//! Redis (one pipelined round trip per call, the names of one call in one
//! hash slot) or, for the embedded index, in this process's memory. Each
//! counter lives for the TTL it was created with (a minute's window, a day's
//! spend) and is never written anywhere else: `usage_hourly` in metadata is
//! the durable truth spend is re-seeded from.

use std::collections::HashMap;
use std::sync::Mutex;

use super::now_ms;

/// Adds `by` to the counter `name` (created at 0 with `ttl_ms` when absent);
/// `by = 0` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterOp {
    pub name: String,
    pub by: i64,
    pub ttl_ms: u64,
}

impl CounterOp {
    pub fn new(name: impl Into<String>, by: i64, ttl_ms: u64) -> Self {
        Self {
            name: name.into(),
            by,
            ttl_ms,
        }
    }
}

/// Counters past this many are pruned of the expired on the next write.
const PRUNE_AT: usize = 50_000;

/// The embedded index's counters: one process, so memory is shared enough.
#[derive(Default)]
pub struct MemoryCounters {
    map: Mutex<HashMap<String, (i64, i64)>>,
}

impl MemoryCounters {
    pub fn add(&self, ops: &[CounterOp]) -> Vec<i64> {
        let now = now_ms();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_AT {
            map.retain(|_, (_, until)| *until > now);
        }
        ops.iter()
            .map(|op| {
                let slot = map.entry(op.name.clone()).or_insert((0, now + op.ttl_ms as i64));
                if slot.1 <= now {
                    *slot = (0, now + op.ttl_ms as i64);
                }
                slot.0 += op.by;
                slot.0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_reads_and_expires() {
        let c = MemoryCounters::default();
        let op = |by, ttl| CounterOp::new("a", by, ttl);
        assert_eq!(
            c.add(&[op(1, 60_000), op(2, 60_000), CounterOp::new("b", 0, 60_000)]),
            [1, 3, 0]
        );
        assert_eq!(c.add(&[op(0, 60_000)]), [3]);
        assert_eq!(c.add(&[op(-1, 60_000)]), [2]);
        assert_eq!(c.add(&[CounterOp::new("gone", 5, 0)]), [5]);
        assert_eq!(c.add(&[CounterOp::new("gone", 0, 0)]), [0], "expired: starts again");
    }
}
