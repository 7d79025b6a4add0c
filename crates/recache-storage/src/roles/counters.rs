//! Shared counters for tenant and key limits, kept on the index engine: in
//! Redis (one pipelined round trip per call, the names of one call in one
//! hash slot) or, for the embedded index, in this process's memory. Each
//! counter lives for the TTL it was created with (a minute's window, a day's
//! spend) and is never written anywhere else: `usage_hourly` in metadata is
//! the durable truth spend is re-seeded from.

use std::collections::HashMap;
use std::sync::Mutex;

use super::now_ms;

/// One operation on the counter `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterOp {
    pub name: String,
    pub kind: CounterKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// Adds `by` and answers the new value; a counter this creates lives
    /// `ttl_ms` (a window's counter, named after its window, so one write).
    Add { by: i64, ttl_ms: u64 },
    /// Adds `by` and answers the new value, its life set to `ttl_ms` again
    /// on every write (a counter that outlives windows: concurrency).
    AddRenew { by: i64, ttl_ms: u64 },
    /// Answers the value (0 when absent), writes nothing.
    Read,
}

impl CounterOp {
    pub fn add(name: impl Into<String>, by: i64, ttl_ms: u64) -> Self {
        Self {
            name: name.into(),
            kind: CounterKind::Add { by, ttl_ms },
        }
    }
    pub fn add_renew(name: impl Into<String>, by: i64, ttl_ms: u64) -> Self {
        Self {
            name: name.into(),
            kind: CounterKind::AddRenew { by, ttl_ms },
        }
    }
    pub fn read(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: CounterKind::Read,
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
                let live = map.get(&op.name).filter(|(_, until)| *until > now).map(|(v, _)| *v);
                match op.kind {
                    CounterKind::Read => live.unwrap_or(0),
                    CounterKind::Add { by, ttl_ms } | CounterKind::AddRenew { by, ttl_ms } => {
                        let renew = matches!(op.kind, CounterKind::AddRenew { .. });
                        let slot = map.entry(op.name.clone()).or_insert((0, now + ttl_ms as i64));
                        if slot.1 <= now {
                            *slot = (0, now + ttl_ms as i64);
                        }
                        if renew {
                            slot.1 = now + ttl_ms as i64;
                        }
                        slot.0 += by;
                        slot.0
                    }
                }
            })
            .collect()
    }

    /// Sets each `(name, value, ttl_ms)`: a copy of what the shared
    /// counters answered, so counting here after they are lost starts from
    /// it. A counter's life is kept when it is live, else starts at `ttl_ms`.
    pub fn set<'a>(&self, values: impl IntoIterator<Item = (&'a str, i64, u64)>) {
        let now = now_ms();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (name, v, ttl_ms) in values {
            // Called on every admission: a name is allocated only when new.
            match map.get_mut(name) {
                Some(slot) => {
                    if slot.1 <= now {
                        slot.1 = now + ttl_ms as i64;
                    }
                    slot.0 = v;
                }
                None => {
                    map.insert(name.to_string(), (v, now + ttl_ms as i64));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_reads_renews_and_expires() {
        let c = MemoryCounters::default();
        let op = |by| CounterOp::add("a", by, 60_000);
        assert_eq!(c.add(&[op(1), op(2), CounterOp::read("b")]), [1, 3, 0]);
        assert_eq!(c.add(&[CounterOp::read("a"), op(-1)]), [3, 2]);
        assert_eq!(c.add(&[CounterOp::add("gone", 5, 0)]), [5]);
        assert_eq!(c.add(&[CounterOp::read("gone")]), [0], "expired: starts again");
        assert_eq!(c.add(&[CounterOp::add_renew("r", 2, 60_000)]), [2]);
        c.set([("a", 7, 60_000), ("new", 3, 60_000)]);
        assert_eq!(c.add(&[op(1), CounterOp::read("new")]), [8, 3]);
    }
}
