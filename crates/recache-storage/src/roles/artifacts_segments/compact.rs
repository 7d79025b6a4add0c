//! Compaction: a sealed segment whose answers were mostly deleted (expired,
//! purged, replaced) has its live records copied to the open segment, in
//! chunks under the writer lock, and is then deleted. Tombstones whose
//! target segment still exists are carried along, so a deleted answer never
//! comes back at the next open. A reader holding the old file keeps reading
//! it (the file outlives its name); a reader that looks again finds the copy.

use std::os::unix::fs::FileExt;
use std::sync::Weak;
use std::time::Duration;

use super::format::{self, Kind, HEADER};
use super::{lock, Inner};

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactStats {
    /// Segments compacted away.
    pub segments: u64,
    /// Live records copied (artifacts and tombstones).
    pub moved: u64,
    pub moved_bytes: u64,
    /// Disk bytes given back.
    pub reclaimed_bytes: u64,
}

/// How often the owner looks for segments to compact.
const EVERY: Duration = Duration::from_secs(10);
/// Bytes copied per turn of the writer lock.
const CHUNK: usize = 4 << 20;

/// The owner's background compactor; it ends with the store.
pub(super) fn spawn_compactor(store: Weak<Inner>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(inner) = store.upgrade() else { break };
            if inner.candidates(false).is_empty() {
                continue;
            }
            match tokio::task::spawn_blocking(move || inner.compact(false)).await {
                Ok(Ok(s)) => tracing::info!(
                    segments = s.segments,
                    moved = s.moved,
                    reclaimed_bytes = s.reclaimed_bytes,
                    "artifact segments compacted"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "artifact segment compaction failed; it is tried again"),
                Err(e) => tracing::warn!(error = %e, "artifact segment compaction stopped"),
            }
        }
    });
}

impl Inner {
    /// Sealed segments to compact: past the dead ratio, or with `all`, any
    /// holding a dead byte.
    fn candidates(&self, all: bool) -> Vec<u32> {
        let open = lock(&self.writer).as_ref().map(|w| w.seg);
        let st = self.read_state();
        st.segs
            .iter()
            .filter(|(n, s)| {
                let dead = s.total.saturating_sub(s.live);
                s.sealed
                    && Some(**n) != open
                    && dead > 0
                    && (all || dead as f64 >= self.opts.compact_ratio * s.total as f64)
            })
            .map(|(n, _)| *n)
            .collect()
    }

    pub(super) fn compact(&self, all: bool) -> std::io::Result<CompactStats> {
        let mut stats = CompactStats::default();
        if self.lock.is_none() {
            return Ok(stats);
        }
        let _one = lock(&self.compacting);
        if all {
            // The open segment is sealed first if it holds a deleted answer.
            let mut guard = lock(&self.writer);
            if let Some(w) = guard.as_mut() {
                let dead = self.read_state().segs.get(&w.seg).is_some_and(|s| s.total > s.live);
                if dead {
                    let full = self.rotate(w)?;
                    drop(guard);
                    self.seal(Some(full));
                }
            }
        }
        for n in self.candidates(all) {
            self.compact_one(n, &mut stats)?;
        }
        Ok(stats)
    }

    fn compact_one(&self, n: u32, stats: &mut CompactStats) -> std::io::Result<()> {
        let Some((file, total)) = self.read_state().segs.get(&n).map(|s| (s.file.clone(), s.total)) else {
            return Ok(());
        };
        let records = match format::read_idx(&self.dir, n, total) {
            Some(r) => r,
            None => format::scan(&file, 0)?.records,
        };
        let mut i = 0;
        let mut moved_here = 0u64;
        while i < records.len() {
            let mut guard = lock(&self.writer);
            let Some(w) = guard.as_mut() else {
                return Ok(());
            };
            let mut buf = Vec::new();
            let mut out = Vec::new();
            {
                let st = self.read_state();
                while i < records.len() && buf.len() < CHUNK {
                    let (off, h) = records[i];
                    i += 1;
                    let keep = match h.kind {
                        Kind::Artifact => st.map.get(&h.id).is_some_and(|l| l.seg == n && l.off == off),
                        Kind::Tombstone => h.target != n && st.segs.contains_key(&h.target),
                    };
                    if !keep {
                        continue;
                    }
                    let start = buf.len();
                    buf.resize(start + h.record_len() as usize, 0);
                    file.read_exact_at(&mut buf[start..], off)?;
                    // The header from the index: a damaged one on disk is mended.
                    buf[start..start + HEADER].copy_from_slice(&h.encode());
                    out.push((w.len + start as u64, h));
                }
            }
            if buf.is_empty() {
                continue;
            }
            stats.moved += out.len() as u64;
            stats.moved_bytes += buf.len() as u64;
            moved_here += buf.len() as u64;
            let full = self.write_records(w, &buf, out)?;
            drop(guard);
            self.seal(full);
        }
        {
            let mut st = self.write_state();
            let live = st.segs.get(&n).map_or(0, |s| s.live);
            if live > 0 {
                // Not expected: a record still lives there. Keep the segment.
                tracing::error!(segment = n, live, "artifact segment still live after compaction; kept");
                return Ok(());
            }
            st.segs.remove(&n);
        }
        std::fs::remove_file(format::seg_path(&self.dir, n))?;
        let _ = std::fs::remove_file(format::idx_path(&self.dir, n));
        stats.segments += 1;
        stats.reclaimed_bytes += total.saturating_sub(moved_here);
        Ok(())
    }
}
