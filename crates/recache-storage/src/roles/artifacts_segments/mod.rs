//! The embedded artifact store: small artifacts appended to segment files,
//! large ones one file each (docs/backends/segments.md).
//!
//! - One process owns a store (a lock file): it appends, deletes (by
//!   appending tombstones), seals full segments (writing their index) and
//!   compacts sealed segments whose answers were deleted. Other processes
//!   (the CLI beside a running gateway) read: they load the same files and
//!   follow the owner's appends. Opening to own a store another process
//!   owns fails with an error naming the owner, as the embedded index does,
//!   and the CLI queues the work for the gateway instead. A standalone
//!   warmer process shares: it writes its answers one file each, and leaves
//!   the deletes of segment records to the owner (orphans, which
//!   `repair --orphans` removes).
//! - Within a process, a store is opened once: a second open of the same
//!   directory shares the first (tests reach behind the gateway this way).
//! - Sealed segments are never written again; compaction copies their live
//!   records to the open segment and deletes them.
//! - Artifacts over `max_item_bytes`, and those a store wrote before it had
//!   segments, are one file each under `sha256/`, read and deleted as before.

mod compact;
mod format;
mod state;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::format::{Header, Kind, HEADER};
use self::state::{Loc, State, Writer};
use super::artifacts_object_store::ObjectStoreArtifacts;
use super::{ArtifactId, ArtifactInfo, Artifacts, BackendError, BoxFuture, CheckInfo, Result};

pub use self::compact::CompactStats;

/// How a process opens a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// As its owner; an error if another process owns it.
    Own,
    /// To read beside the owner.
    Read,
    /// As its owner if no process is, else beside it, writing one file per answer.
    OwnOrShare,
}

const NAME: &str = "artifacts";

/// How segments are cut and compacted (`[artifacts]` segment keys).
#[derive(Clone, Copy, Debug)]
pub struct SegmentOptions {
    /// A segment is sealed once it holds this many bytes.
    pub segment_bytes: u64,
    /// Artifacts larger than this are one file each (0: every artifact is).
    pub max_item_bytes: u64,
    /// A sealed segment is compacted once this fraction of it is dead.
    pub compact_ratio: f64,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_item_bytes: 1 << 20,
            compact_ratio: 0.5,
        }
    }
}

/// Figures for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SegmentStats {
    pub segments: u64,
    pub artifacts: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
}

pub struct SegmentArtifacts {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    files: ObjectStoreArtifacts,
    opts: SegmentOptions,
    /// The owner's lock file (None: this process reads what another writes).
    lock: Option<File>,
    state: RwLock<State>,
    writer: Mutex<Option<Writer>>,
    /// A process beside the owner that writes (one file per answer).
    shared_writes: bool,
    refreshed: Mutex<Option<Instant>>,
    /// One compaction at a time.
    compacting: Mutex<()>,
}

/// The stores this process owns, by directory: a second open shares one.
static OWNED: Mutex<Vec<(PathBuf, Weak<Inner>)>> = Mutex::new(Vec::new());

fn io_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::unavailable(NAME, e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SegmentArtifacts {
    /// Opens the store in `root` (created if missing). Blocking: call at start-up.
    pub fn open(root: &Path, prefix: &str, opts: SegmentOptions, access: Access) -> Result<Self> {
        Self::open_with(root, prefix, opts, access, true)
    }

    /// `share`: reuse this process's open store for the directory, if any
    /// (tests open a second, separate one as another process would).
    fn open_with(root: &Path, prefix: &str, opts: SegmentOptions, access: Access, share: bool) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(io_err)?;
        let root = root.canonicalize().map_err(io_err)?;
        let prefix = prefix.trim_matches('/');
        let dir = if prefix.is_empty() {
            root.join("segments")
        } else {
            root.join(prefix).join("segments")
        };
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        let mut owned = lock(&OWNED);
        owned.retain(|(_, w)| w.strong_count() > 0);
        if let Some(inner) = owned
            .iter()
            .find(|(d, _)| share && *d == dir)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(Self { inner });
        }
        let lock_file = if access == Access::Read {
            None
        } else {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("writer.lock"))
                .map_err(io_err)?;
            match f.try_lock() {
                Ok(()) => Some(f),
                Err(_) if access == Access::OwnOrShare => None,
                Err(_) => {
                    return Err(io_err(format!(
                        "the embedded artifact store in {} is in use by another recache process (a running \
                         gateway owns it; its workers run work that writes artifacts)",
                        root.display()
                    )));
                }
            }
        };
        let files = ObjectStoreArtifacts::local(&root, prefix)?;
        let (state, writer, loaded) = State::load(&dir, &opts, lock_file.is_some()).map_err(io_err)?;
        tracing::info!(
            dir = %dir.display(),
            owner = lock_file.is_some(),
            segments = loaded.segments,
            artifacts = loaded.artifacts,
            scanned_bytes = loaded.scanned_bytes,
            skipped_bytes = loaded.skipped_bytes,
            "artifact segments loaded"
        );
        if loaded.skipped_bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                skipped_bytes = loaded.skipped_bytes,
                "damaged record headers in artifact segments were skipped; their entries refetch (run `recache audit`)"
            );
        }
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            files,
            opts,
            state: RwLock::new(state),
            writer: Mutex::new(writer),
            shared_writes: access == Access::OwnOrShare,
            refreshed: Mutex::new(None),
            compacting: Mutex::new(()),
            lock: lock_file,
        });
        if inner.lock.is_some() {
            if share {
                owned.push((dir, Arc::downgrade(&inner)));
            }
            compact::spawn_compactor(Arc::downgrade(&inner));
        }
        Ok(Self { inner })
    }

    /// Whether this process owns the store.
    pub fn is_owner(&self) -> bool {
        self.inner.lock.is_some()
    }

    pub fn stats(&self) -> SegmentStats {
        self.inner.read_state().stats()
    }

    /// Where an artifact's payload lies in its segment: the file, the offset
    /// of the payload and its length (None: not in a segment).
    pub fn locate(&self, id: ArtifactId) -> Option<(PathBuf, u64, u32)> {
        let st = self.inner.read_state();
        let loc = st.map.get(&id)?;
        Some((
            format::seg_path(&self.inner.dir, loc.seg),
            loc.off + HEADER as u64,
            loc.len,
        ))
    }

    /// Compacts now: every sealed segment past the dead ratio, or with `all`,
    /// the open segment sealed and every segment holding a deleted answer
    /// (so that deleted bytes are gone from the disk).
    pub async fn compact_now(&self, all: bool) -> Result<CompactStats> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.compact(all))
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }
}

impl Inner {
    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_only() -> BackendError {
        BackendError::NotSupported {
            backend: NAME,
            what: "writing an embedded artifact store that another recache process owns",
        }
    }

    /// Appends the artifacts not stored yet, in one write.
    fn append(&self, items: Vec<(ArtifactId, Bytes)>) -> std::io::Result<()> {
        let mut guard = lock(&self.writer);
        let Some(w) = guard.as_mut() else {
            return Err(std::io::Error::other(Self::read_only()));
        };
        let now = super::now_ms();
        let mut headers = Vec::with_capacity(items.len());
        let mut buf = Vec::with_capacity(items.iter().map(|(_, b)| HEADER + b.len()).sum());
        {
            let st = self.read_state();
            for (id, bytes) in &items {
                if st.map.contains_key(id) || headers.iter().any(|(_, h): &(u64, Header)| h.id == *id) {
                    continue;
                }
                let h = Header {
                    kind: Kind::Artifact,
                    len: bytes.len() as u32,
                    target: 0,
                    written_ms: now,
                    id: *id,
                };
                headers.push((w.len + buf.len() as u64, h));
                buf.extend_from_slice(&h.encode());
                buf.extend_from_slice(bytes);
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        let sealed = self.write_records(w, &buf, headers)?;
        drop(guard);
        self.seal(sealed);
        Ok(())
    }

    /// Writes records at the end of the open segment and makes them visible;
    /// rotates to a new segment once this one is full. Under the writer lock.
    fn write_records(
        &self,
        w: &mut Writer,
        buf: &[u8],
        records: Vec<format::Found>,
    ) -> std::io::Result<Option<Writer>> {
        if let Err(e) = w.file.write_all_at(buf, w.len) {
            let _ = w.file.set_len(w.len);
            return Err(e);
        }
        w.len += buf.len() as u64;
        {
            let mut st = self.write_state();
            for f in &records {
                st.apply(w.seg, *f);
            }
            if let Some(seg) = st.segs.get_mut(&w.seg) {
                seg.total = w.len;
            }
        }
        w.records.extend(records);
        if w.len < self.opts.segment_bytes {
            return Ok(None);
        }
        self.rotate(w).map(Some)
    }

    /// Starts the next segment; the full one is returned, to be sealed
    /// outside the writer lock.
    fn rotate(&self, w: &mut Writer) -> std::io::Result<Writer> {
        let next = Writer::create(&self.dir, w.seg + 1)?;
        self.write_state().add_segment(next.seg, next.file.clone());
        Ok(std::mem::replace(w, next))
    }

    /// Syncs a full segment and writes its index (a crash before this is
    /// mended at the next open, which scans a segment without one).
    fn seal(&self, full: Option<Writer>) {
        let Some(full) = full else { return };
        let done = full
            .file
            .sync_all()
            .and_then(|()| format::write_idx(&self.dir, full.seg, full.len, &full.records));
        match done {
            Ok(()) => {
                if let Some(seg) = self.write_state().segs.get_mut(&full.seg) {
                    seg.sealed = true;
                }
            }
            Err(e) => {
                tracing::warn!(segment = full.seg, error = %e, "could not seal an artifact segment; the next open scans it")
            }
        }
    }

    /// Deletes an artifact from the segments (a tombstone); whether it was there.
    fn remove(&self, id: ArtifactId) -> std::io::Result<bool> {
        let mut guard = lock(&self.writer);
        let Some(w) = guard.as_mut() else {
            return Err(std::io::Error::other(Self::read_only()));
        };
        let Some(loc) = self.read_state().map.get(&id).copied() else {
            return Ok(false);
        };
        let h = Header {
            kind: Kind::Tombstone,
            len: 0,
            target: loc.seg,
            written_ms: super::now_ms(),
            id,
        };
        let sealed = self.write_records(w, &h.encode(), vec![(w.len, h)])?;
        drop(guard);
        self.seal(sealed);
        Ok(true)
    }

    /// Reads a located payload. `Ok(None)`: the record there is another
    /// one (the view is stale); a damaged header still returns the payload,
    /// which the caller's hash check judges.
    fn read(file: &File, id: ArtifactId, loc: Loc) -> std::io::Result<Option<Bytes>> {
        let mut buf = vec![0u8; HEADER + loc.len as usize];
        file.read_exact_at(&mut buf, loc.off)?;
        match Header::decode(&buf[..HEADER]) {
            Some(h) if h.id != id || h.kind != Kind::Artifact => return Ok(None),
            Some(_) => {}
            None => tracing::warn!(artifact = %id.hex(), offset = loc.off, "damaged artifact record header"),
        }
        Ok(Some(Bytes::from(buf).slice(HEADER..)))
    }

    fn lookup(&self, id: &ArtifactId) -> Option<(Loc, Arc<File>)> {
        let st = self.read_state();
        let loc = *st.map.get(id)?;
        Some((loc, st.segs.get(&loc.seg)?.file.clone()))
    }

    /// A reader catches up with the owner's appends and compactions (at
    /// most every 50 ms unless `force`).
    fn refresh(&self, force: bool) -> std::io::Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let mut last = lock(&self.refreshed);
        if !force && last.is_some_and(|t| t.elapsed() < Duration::from_millis(50)) {
            return Ok(());
        }
        self.write_state().refresh(&self.dir)?;
        *last = Some(Instant::now());
        Ok(())
    }

    fn get_blocking(&self, id: ArtifactId) -> std::io::Result<Option<Bytes>> {
        for attempt in 0..2 {
            match self.lookup(&id) {
                Some((loc, file)) => match Self::read(&file, id, loc) {
                    Ok(Some(b)) => return Ok(Some(b)),
                    Ok(None) | Err(_) if attempt == 0 && self.lock.is_none() => self.refresh(true)?,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(e),
                },
                None if attempt == 0 && self.lock.is_none() => self.refresh(false)?,
                None => return Ok(None),
            }
        }
        Ok(None)
    }
}

impl Artifacts for SegmentArtifacts {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    fn put(&self, id: ArtifactId, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        self.put_many(vec![(id, bytes)])
    }

    fn put_many(&self, items: Vec<(ArtifactId, Bytes)>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if items.is_empty() {
                return Ok(());
            }
            if self.inner.lock.is_none() {
                if !self.inner.shared_writes {
                    return Err(Inner::read_only());
                }
                return self.inner.files.put_many(items).await;
            }
            let max = self.inner.opts.max_item_bytes;
            let (small, large): (Vec<_>, Vec<_>) = items.into_iter().partition(|(_, b)| (b.len() as u64) <= max);
            if !large.is_empty() {
                self.inner.files.put_many(large).await?;
            }
            if !small.is_empty() {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.append(small))
                    .await
                    .map_err(io_err)?
                    .map_err(io_err)?;
            }
            Ok(())
        })
    }

    fn get(&self, id: ArtifactId) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            let found = tokio::task::spawn_blocking(move || inner.get_blocking(id))
                .await
                .map_err(io_err)?
                .map_err(io_err)?;
            match found {
                Some(b) => Ok(Some(b)),
                // Large answers, those from before segments, and a sharing process's.
                None => self.inner.files.get(id).await,
            }
        })
    }

    fn delete(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            if self.inner.lock.is_none() {
                if !self.inner.shared_writes {
                    return Err(Inner::read_only());
                }
                if self.inner.lookup(&id).is_some() {
                    tracing::debug!(artifact = %id.hex(), "a segment record is the owner's to delete; left as an orphan");
                }
                return self.inner.files.delete(id).await;
            }
            let inner = self.inner.clone();
            let in_segment = tokio::task::spawn_blocking(move || inner.remove(id))
                .await
                .map_err(io_err)?
                .map_err(io_err)?;
            let as_file = self.inner.files.delete(id).await?;
            Ok(in_segment || as_file)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ArtifactInfo>>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            let mut out = tokio::task::spawn_blocking(move || {
                inner.refresh(true)?;
                Ok::<_, std::io::Error>(inner.read_state().listing())
            })
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
            let seen: std::collections::HashSet<ArtifactId> = out.iter().map(|a| a.id).collect();
            out.extend(
                self.inner
                    .files
                    .list()
                    .await?
                    .into_iter()
                    .filter(|a| !seen.contains(&a.id)),
            );
            Ok(out)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.probe())
                .await
                .map_err(io_err)?
                .map_err(io_err)?;
            let s = self.stats();
            Ok(CheckInfo {
                version: Some(format!(
                    "segments {} ({} artifacts, {} live bytes, {} dead)",
                    s.segments, s.artifacts, s.live_bytes, s.dead_bytes
                )),
                ..Default::default()
            })
        })
    }

    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let s = self.stats();
        vec![
            (
                "cache_artifact_segments",
                "Segment files of the embedded artifact store.",
                s.segments as f64,
            ),
            (
                "cache_artifact_segment_artifacts",
                "Artifacts held in segment files.",
                s.artifacts as f64,
            ),
            (
                "cache_artifact_segment_live_bytes",
                "Bytes of live artifacts in segment files.",
                s.live_bytes as f64,
            ),
            (
                "cache_artifact_segment_dead_bytes",
                "Bytes of deleted artifacts still in segment files, until compaction.",
                s.dead_bytes as f64,
            ),
        ]
    }

    fn reclaim(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            if self.inner.lock.is_none() {
                return Ok(0);
            }
            Ok(self.compact_now(true).await?.reclaimed_bytes)
        })
    }
}

impl Inner {
    /// The owner proves the directory takes writes (a probe file written,
    /// read back and removed); a reader that it can list the segments.
    fn probe(&self) -> std::io::Result<()> {
        if self.lock.is_none() {
            return format::list_segments(&self.dir).map(|_| ());
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.dir.join(format!(
            "probe-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let body = format!("recache health probe {}", super::now_ms());
        std::fs::write(&path, &body)?;
        let back = std::fs::read(&path);
        let _ = std::fs::remove_file(&path);
        if back? != body.as_bytes() {
            return Err(std::io::Error::other("health probe read back different bytes"));
        }
        Ok(())
    }
}
