//! A read-only view of the embedded index for audits beside a running
//! gateway: the index log streamed into one sorted vector (about 96 bytes a
//! pointer, half of what the live sharded map takes, and no copy of the file
//! in memory). Lookups are binary searches; writes are refused.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::index_embedded::{decode, OP_PUT, RECORD};
use super::{now_ms, BackendError, BoxFuture, CheckInfo, Index, IndexEntry, Result, ScanPage};
use crate::key::CacheKey;

const NAME: &str = "index";
const PAGE: usize = 5000;

/// A log record kept for the snapshot: key, sequence, put (or delete), pointer.
type Op = (CacheKey, u32, bool, IndexEntry);

pub struct SnapshotIndex {
    /// Live pointers (puts only), sorted by key. Built in place from the log's
    /// records, so loading never holds two copies.
    entries: Vec<Op>,
    path: PathBuf,
}

impl SnapshotIndex {
    /// Reads `dir/index.log` (empty when there is none). A torn tail is ignored.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("index.log");
        let mut ops: Vec<Op> = Vec::new();
        if let Ok(f) = File::open(&path) {
            // Sized once from the file: no doubling (and no two copies) while growing.
            let records = f.metadata().map(|m| m.len() as usize / RECORD).unwrap_or(0);
            ops.reserve_exact(records);
            let mut r = BufReader::with_capacity(1 << 20, f);
            let mut rec = [0u8; RECORD];
            let mut seq = 0u32;
            while r.read_exact(&mut rec).is_ok() {
                let Some((op, key, slot)) = decode(&rec) else { break };
                ops.push((CacheKey(key), seq, op == OP_PUT, IndexEntry::from(slot)));
                seq = seq.wrapping_add(1);
            }
        }
        // By key, newest first; keep the newest op of each key, then only live puts.
        ops.sort_unstable_by_key(|(k, seq, _, _)| (*k, std::cmp::Reverse(*seq)));
        ops.dedup_by_key(|(k, _, _, _)| *k);
        let now = now_ms();
        ops.retain(|(_, _, put, e)| *put && e.expires_at_ms > now);
        ops.shrink_to_fit();
        Ok(Self { entries: ops, path })
    }

    fn find(&self, key: &CacheKey) -> Option<IndexEntry> {
        self.entries
            .binary_search_by_key(key, |(k, _, _, _)| *k)
            .ok()
            .map(|i| self.entries[i].3)
    }

    fn refused<T>(&self) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
    {
        Box::pin(async {
            Err(BackendError::NotSupported {
                backend: NAME,
                what: "writes to a read-only snapshot of the embedded index",
            })
        })
    }
}

impl Index for SnapshotIndex {
    fn engine(&self) -> &'static str {
        "embedded"
    }
    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<IndexEntry>>> {
        let v = self.find(&key);
        Box::pin(async move { Ok(v) })
    }
    fn get_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<Vec<Option<IndexEntry>>>> {
        let v = keys.iter().map(|k| self.find(k)).collect();
        Box::pin(async move { Ok(v) })
    }
    fn put(&self, _key: CacheKey, _entry: IndexEntry) -> BoxFuture<'_, Result<()>> {
        self.refused()
    }
    fn put_many(&self, _entries: Vec<(CacheKey, IndexEntry)>, _if_absent: bool) -> BoxFuture<'_, Result<u64>> {
        self.refused()
    }
    fn delete(&self, _key: CacheKey) -> BoxFuture<'_, Result<bool>> {
        self.refused()
    }
    fn purge_expired(&self, _before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
    fn count(&self) -> BoxFuture<'_, Result<u64>> {
        let n = self.entries.len() as u64;
        Box::pin(async move { Ok(n) })
    }
    /// The cursor is a position in the sorted vector.
    fn scan(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<ScanPage>> {
        let start = (cursor as usize).min(self.entries.len());
        let end = (start + limit.clamp(1, PAGE)).min(self.entries.len());
        let page = self.entries[start..end].iter().map(|(k, _, _, e)| (*k, *e)).collect();
        let next = if end >= self.entries.len() { 0 } else { end as u64 };
        Box::pin(async move { Ok((page, next)) })
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        let info = CheckInfo {
            version: Some(format!("read-only snapshot of {}", self.path.display())),
            entries: Some(self.entries.len() as u64),
            warnings: vec![],
        };
        Box::pin(async move { Ok(info) })
    }
}
