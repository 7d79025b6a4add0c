//! The embedded index: a sharded in-process hash map, persisted as an
//! append-only log of fixed-size records (`index.log` under the configured
//! directory). Writes go to a buffer that a background task flushes every
//! 100 ms; on open the log is replayed, torn tails are cut, and the log is
//! compacted when it holds mostly dead records. Anything the last 100 ms of a
//! crash lost is replayed from metadata (see [`Index::replay_from_ms`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{now_ms, ArtifactId, BackendError, BoxFuture, CheckInfo, Index, IndexEntry, Result};
use crate::key::CacheKey;

const NAME: &str = "index";
const SHARDS: usize = 32;
pub(crate) const RECORD: usize = 1 + 32 + 32 + 8 + 8 + 8;
pub(crate) const OP_PUT: u8 = 1;
const OP_DEL: u8 = 2;
/// Entries created this long before the newest logged one are replayed from
/// metadata at open, covering writes still in the buffer at a crash.
const REPLAY_MARGIN_MS: i64 = 60_000;

/// Keys are SHA-256 digests already: use eight of their bytes as the hash.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

type Shard = HashMap<[u8; 32], Slot, BuildHasherDefault<DigestHasher>>;

/// The compact in-memory form of an entry (no key; 64 bytes).
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    artifact: [u8; 32],
    size: u64,
    created_at_ms: i64,
    expires_at_ms: i64,
}

impl From<IndexEntry> for Slot {
    fn from(e: IndexEntry) -> Self {
        Slot {
            artifact: e.artifact.0,
            size: e.size,
            created_at_ms: e.created_at_ms,
            expires_at_ms: e.expires_at_ms,
        }
    }
}

impl From<Slot> for IndexEntry {
    fn from(s: Slot) -> Self {
        IndexEntry {
            artifact: ArtifactId(s.artifact),
            size: s.size,
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
        }
    }
}

pub struct EmbeddedIndex {
    shards: Box<[RwLock<Shard>]>,
    log: Mutex<Option<BufWriter<File>>>,
    path: PathBuf,
    replay_from: Option<i64>,
    /// Held for the life of the index: one process owns the log.
    _lock: File,
    /// The limits' counters (one process: memory is shared enough).
    counters: super::counters::MemoryCounters,
}

/// What opening found, for the start-up log line.
#[derive(Debug, Clone, Copy)]
pub struct OpenStats {
    pub records: u64,
    pub live: u64,
    pub compacted: bool,
    pub fresh: bool,
}

fn encode(op: u8, key: &[u8; 32], s: &Slot, out: &mut Vec<u8>) {
    out.push(op);
    out.extend_from_slice(key);
    out.extend_from_slice(&s.artifact);
    out.extend_from_slice(&s.size.to_le_bytes());
    out.extend_from_slice(&s.created_at_ms.to_le_bytes());
    out.extend_from_slice(&s.expires_at_ms.to_le_bytes());
}

pub(crate) fn decode(rec: &[u8]) -> Option<(u8, [u8; 32], Slot)> {
    let op = rec[0];
    if op != OP_PUT && op != OP_DEL {
        return None;
    }
    let key: [u8; 32] = rec[1..33].try_into().ok()?;
    let artifact: [u8; 32] = rec[33..65].try_into().ok()?;
    let num = |r: std::ops::Range<usize>| i64::from_le_bytes(rec[r].try_into().unwrap_or([0; 8]));
    Some((
        op,
        key,
        Slot {
            artifact,
            size: num(65..73) as u64,
            created_at_ms: num(73..81),
            expires_at_ms: num(81..89),
        },
    ))
}

impl EmbeddedIndex {
    /// Opens (or creates) the index in `dir` for writing. One process at a
    /// time: a second one gets an error naming the lock. Blocking: call at start-up.
    pub fn open(dir: &Path) -> std::io::Result<(Arc<Self>, OpenStats)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("index.lock"))?;
        if lock.try_lock().is_err() {
            return Err(std::io::Error::other(format!(
                "the embedded index in {} is in use by another recache process (a running gateway owns it; \
                 queue index work with `recache warmer rebuild --scope index` and the gateway's workers run it)",
                dir.display()
            )));
        }
        Self::load(dir, lock)
    }

    fn load(dir: &Path, lock: File) -> std::io::Result<(Arc<Self>, OpenStats)> {
        let path = dir.join("index.log");
        let shards: Box<[RwLock<Shard>]> = (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect();
        let mut stats = OpenStats {
            records: 0,
            live: 0,
            compacted: false,
            fresh: true,
        };
        let mut newest_created = i64::MIN;
        let mut valid_len = 0u64;
        if let Ok(f) = File::open(&path) {
            stats.fresh = false;
            let file_len = f.metadata()?.len();
            // Streamed record by record: the log is never held in memory whole.
            let mut r = std::io::BufReader::with_capacity(1 << 20, f);
            let mut rec = [0u8; RECORD];
            let now = now_ms();
            while r.read_exact(&mut rec).is_ok() {
                let Some((op, key, slot)) = decode(&rec) else { break };
                valid_len += RECORD as u64;
                stats.records += 1;
                let shard = &mut *shards[shard_of(&key)].write().unwrap_or_else(|e| e.into_inner());
                if op == OP_PUT {
                    newest_created = newest_created.max(slot.created_at_ms);
                    if slot.expires_at_ms > now {
                        shard.insert(key, slot);
                    } else {
                        shard.remove(&key);
                    }
                } else {
                    shard.remove(&key);
                }
            }
            if valid_len < file_len {
                tracing::warn!(
                    path = %path.display(),
                    cut_bytes = file_len - valid_len,
                    "index log had a torn or corrupt tail; cut it (entries are replayed from metadata)"
                );
            }
        }
        let live: u64 = shards
            .iter()
            .map(|s| s.read().map(|s| s.len()).unwrap_or(0) as u64)
            .sum();
        stats.live = live;
        let index = EmbeddedIndex {
            shards,
            log: Mutex::new(None),
            path: path.clone(),
            replay_from: Some(if stats.fresh || newest_created == i64::MIN {
                0
            } else {
                newest_created - REPLAY_MARGIN_MS
            }),
            _lock: lock,
            counters: Default::default(),
        };
        if !stats.fresh && (stats.records > 2 * live + 10_000 || valid_len < std::fs::metadata(&path)?.len()) {
            index.compact()?;
            stats.compacted = true;
        } else if stats.fresh {
            File::create(&path)?.sync_all()?;
        }
        let f = OpenOptions::new().append(true).open(&path)?;
        *index.log.lock().unwrap_or_else(|e| e.into_inner()) = Some(BufWriter::with_capacity(64 * 1024, f));
        Ok((Arc::new(index), stats))
    }

    /// Inspects an index directory without opening it for writing.
    pub fn probe(dir: &Path) -> std::io::Result<CheckInfo> {
        let path = dir.join("index.log");
        let meta = std::fs::metadata(&path)?;
        File::open(&path)?;
        Ok(CheckInfo {
            version: Some(format!("log {}", path.display())),
            entries: None,
            warnings: if meta.len() % RECORD as u64 != 0 {
                vec!["index log has a torn tail; it is cut at the next start".into()]
            } else {
                vec![]
            },
        })
    }

    /// Rewrites the log with only the live entries (atomic rename).
    fn compact(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut w = BufWriter::new(File::create(&tmp)?);
        let mut buf = Vec::with_capacity(RECORD * 1024);
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for (k, s) in shard.iter() {
                encode(OP_PUT, k, s, &mut buf);
                if buf.len() >= RECORD * 1024 {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
        }
        w.write_all(&buf)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    fn append(&self, op: u8, key: &[u8; 32], slot: &Slot) -> Result<()> {
        let mut rec = Vec::with_capacity(RECORD);
        encode(op, key, slot, &mut rec);
        let mut guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(w) => w.write_all(&rec).map_err(|e| BackendError::unavailable(NAME, e)),
            None => Ok(()),
        }
    }

    fn flush_log(&self) -> Result<()> {
        let mut guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = guard.as_mut() {
            w.flush().map_err(|e| BackendError::unavailable(NAME, e))?;
        }
        Ok(())
    }

    /// Flushes the log buffer every `every` until the index is dropped.
    pub(crate) fn spawn_flusher(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(index) = weak.upgrade() else { break };
                if let Err(e) = index.flush_log() {
                    tracing::error!(error = %e, "index log flush failed");
                }
            }
        });
    }

    fn shard(&self, key: &[u8; 32]) -> &RwLock<Shard> {
        &self.shards[shard_of(key)]
    }
}

fn shard_of(key: &[u8; 32]) -> usize {
    key[31] as usize % SHARDS
}

impl Index for EmbeddedIndex {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    fn counters_add(&self, ops: Vec<super::counters::CounterOp>) -> BoxFuture<'_, Result<Vec<i64>>> {
        let v = self.counters.add(&ops);
        Box::pin(async move { Ok(v) })
    }

    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<IndexEntry>>> {
        let v = self
            .shard(&key.0)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key.0)
            .copied()
            .map(IndexEntry::from);
        Box::pin(async move { Ok(v) })
    }

    fn put(&self, key: CacheKey, entry: IndexEntry) -> BoxFuture<'_, Result<()>> {
        let slot = Slot::from(entry);
        let res = self.append(OP_PUT, &key.0, &slot).map(|_| {
            self.shard(&key.0)
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.0, slot);
        });
        Box::pin(async move { res })
    }

    fn delete(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>> {
        let removed = self
            .shard(&key.0)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key.0);
        let res = match removed {
            Some(slot) => self.append(OP_DEL, &key.0, &slot).map(|_| true),
            None => Ok(false),
        };
        Box::pin(async move { res })
    }

    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut n = 0;
            for shard in self.shards.iter() {
                let expired: Vec<([u8; 32], Slot)> = {
                    let mut s = shard.write().unwrap_or_else(|e| e.into_inner());
                    let keys: Vec<[u8; 32]> = s
                        .iter()
                        .filter(|(_, v)| v.expires_at_ms <= before_ms)
                        .map(|(k, _)| *k)
                        .collect();
                    keys.into_iter().filter_map(|k| s.remove(&k).map(|v| (k, v))).collect()
                };
                for (k, slot) in expired {
                    self.append(OP_DEL, &k, &slot)?;
                    n += 1;
                }
                tokio::task::yield_now().await;
            }
            Ok(n)
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<u64>> {
        let n = self
            .shards
            .iter()
            .map(|s| s.read().map(|s| s.len()).unwrap_or(0) as u64)
            .sum();
        Box::pin(async move { Ok(n) })
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            let entries = self.count().await?;
            let writable = self.log.lock().map(|g| g.is_some()).unwrap_or(false);
            if !writable {
                return Err(BackendError::unavailable(NAME, "index log is not open"));
            }
            Ok(CheckInfo {
                version: Some(format!("log {}", self.path.display())),
                entries: Some(entries),
                warnings: vec![],
            })
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.flush_log()?;
            let guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = guard.as_ref() {
                w.get_ref()
                    .sync_data()
                    .map_err(|e| BackendError::unavailable(NAME, e))?;
            }
            Ok(())
        })
    }

    fn replay_from_ms(&self) -> Option<i64> {
        self.replay_from
    }

    fn put_many(&self, entries: Vec<(CacheKey, IndexEntry)>, if_absent: bool) -> BoxFuture<'_, Result<u64>> {
        let mut n = 0;
        let mut res = Ok(());
        for (key, entry) in entries {
            let slot = Slot::from(entry);
            let mut shard = self.shard(&key.0).write().unwrap_or_else(|e| e.into_inner());
            if if_absent && shard.contains_key(&key.0) {
                continue;
            }
            if let Err(e) = self.append(OP_PUT, &key.0, &slot) {
                res = Err(e);
                break;
            }
            shard.insert(key.0, slot);
            n += 1;
        }
        Box::pin(async move { res.map(|_| n) })
    }

    fn get_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<Vec<Option<IndexEntry>>>> {
        let out = keys
            .iter()
            .map(|k| {
                self.shard(&k.0)
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&k.0)
                    .copied()
                    .map(IndexEntry::from)
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    /// The cursor is a shard number: one shard per page.
    fn scan(&self, cursor: u64, _limit: usize) -> BoxFuture<'_, Result<super::ScanPage>> {
        let i = cursor as usize;
        let page: Vec<(CacheKey, IndexEntry)> = match self.shards.get(i) {
            Some(s) => s
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (CacheKey(*k), IndexEntry::from(*v)))
                .collect(),
            None => Vec::new(),
        };
        let next = if i + 1 >= self.shards.len() { 0 } else { cursor + 1 };
        Box::pin(async move { Ok((page, next)) })
    }
}
