//! What a process knows of the segments: where each live artifact lies, and
//! each segment's live and total bytes (compaction's measure).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::Arc;

use super::super::index_embedded::DigestHasher;
use super::super::{ArtifactId, ArtifactInfo};
use super::format::{self, Found, Kind, HEADER};
use super::{SegmentOptions, SegmentStats};

/// Where a live artifact's record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub off: u64,
    pub len: u32,
    pub written_ms: i64,
}

pub struct Seg {
    pub file: Arc<File>,
    /// Bytes of whole records (a reader's position in a segment still being written).
    pub total: u64,
    /// Bytes of the records still live.
    pub live: u64,
    pub sealed: bool,
}

#[derive(Default)]
pub struct State {
    pub map: HashMap<ArtifactId, Loc, BuildHasherDefault<DigestHasher>>,
    pub segs: BTreeMap<u32, Seg>,
}

/// The owner's open segment.
pub struct Writer {
    pub seg: u32,
    pub file: Arc<File>,
    pub len: u64,
    /// Its records so far: its index once it is sealed.
    pub records: Vec<Found>,
}

impl Writer {
    pub fn create(dir: &Path, seg: u32) -> std::io::Result<Writer> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(format::seg_path(dir, seg))?;
        Ok(Writer {
            seg,
            file: Arc::new(file),
            len: 0,
            records: Vec::new(),
        })
    }
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub segments: u64,
    pub artifacts: u64,
    pub scanned_bytes: u64,
    pub skipped_bytes: u64,
}

impl State {
    /// Loads every segment in `dir`: sealed ones from their index, the rest
    /// by a scan. The owner also truncates a torn tail, seals a full or
    /// orphaned segment, and gets its open segment.
    pub fn load(dir: &Path, opts: &SegmentOptions, owner: bool) -> std::io::Result<(State, Option<Writer>, Loaded)> {
        let nums = format::list_segments(dir)?;
        let mut st = State::default();
        let mut loaded = Loaded::default();
        let mut writer = None;
        for (i, &n) in nums.iter().enumerate() {
            let last = i + 1 == nums.len();
            let path = format::seg_path(dir, n);
            let file = OpenOptions::new().read(true).write(owner && last).open(&path)?;
            let len = file.metadata()?.len();
            let (records, end, sealed) = match format::read_idx(dir, n, len) {
                Some(r) => (r, len, true),
                None => {
                    let scan = format::scan(&file, 0)?;
                    loaded.scanned_bytes += scan.end;
                    loaded.skipped_bytes += scan.skipped;
                    if owner && scan.end < len {
                        // A torn tail: the write that made it never returned.
                        OpenOptions::new().write(true).open(&path)?.set_len(scan.end)?;
                    }
                    let full = scan.end >= opts.segment_bytes;
                    if owner && (!last || full) {
                        file.sync_all()?;
                        format::write_idx(dir, n, scan.end, &scan.records)?;
                        (scan.records, scan.end, true)
                    } else {
                        (scan.records, scan.end, false)
                    }
                }
            };
            let file = Arc::new(file);
            st.add_segment(n, file.clone());
            for f in &records {
                st.apply(n, *f);
            }
            if let Some(seg) = st.segs.get_mut(&n) {
                seg.total = end;
                seg.sealed = sealed;
            }
            if owner && last && !sealed {
                writer = Some(Writer {
                    seg: n,
                    file,
                    len: end,
                    records,
                });
            }
        }
        if owner && writer.is_none() {
            let w = Writer::create(dir, nums.last().map_or(1, |n| n + 1))?;
            st.add_segment(w.seg, w.file.clone());
            writer = Some(w);
        }
        loaded.segments = st.segs.len() as u64;
        loaded.artifacts = st.map.len() as u64;
        Ok((st, writer, loaded))
    }

    pub fn add_segment(&mut self, n: u32, file: Arc<File>) {
        self.segs.insert(
            n,
            Seg {
                file,
                total: 0,
                live: 0,
                sealed: false,
            },
        );
    }

    /// One record, in the order of the log: an artifact is live where it
    /// was last written; a tombstone deletes it where it names.
    pub fn apply(&mut self, seg: u32, (off, h): Found) {
        match h.kind {
            Kind::Artifact => {
                let loc = Loc {
                    seg,
                    off,
                    len: h.len,
                    written_ms: h.written_ms,
                };
                if let Some(old) = self.map.insert(h.id, loc) {
                    self.dead(old);
                }
                if let Some(s) = self.segs.get_mut(&seg) {
                    s.live += h.record_len();
                }
            }
            Kind::Tombstone => {
                if self.map.get(&h.id).is_some_and(|l| l.seg == h.target) {
                    if let Some(old) = self.map.remove(&h.id) {
                        self.dead(old);
                    }
                }
            }
        }
    }

    pub fn dead(&mut self, old: Loc) {
        if let Some(s) = self.segs.get_mut(&old.seg) {
            s.live = s.live.saturating_sub(HEADER as u64 + u64::from(old.len));
        }
    }

    /// A reader's catch-up: new segments and the new tail of the open one
    /// are applied in order; segments compacted away are forgotten (their
    /// live records were copied to a newer one before they went).
    pub fn refresh(&mut self, dir: &Path) -> std::io::Result<()> {
        let nums = format::list_segments(dir)?;
        for &n in &nums {
            let (file, from) = match self.segs.get(&n) {
                Some(s) if s.sealed => continue,
                Some(s) => (s.file.clone(), s.total),
                None => {
                    let Ok(f) = File::open(format::seg_path(dir, n)) else {
                        continue; // compacted away since the listing
                    };
                    let f = Arc::new(f);
                    self.add_segment(n, f.clone());
                    let len = f.metadata()?.len();
                    if let Some(records) = format::read_idx(dir, n, len) {
                        for r in &records {
                            self.apply(n, *r);
                        }
                        if let Some(s) = self.segs.get_mut(&n) {
                            (s.total, s.sealed) = (len, true);
                        }
                        continue;
                    }
                    (f, 0)
                }
            };
            let scan = format::scan(&file, from)?;
            for r in &scan.records {
                self.apply(n, *r);
            }
            if let Some(s) = self.segs.get_mut(&n) {
                s.total = scan.end;
            }
        }
        let gone: Vec<u32> = self
            .segs
            .keys()
            .filter(|n| nums.binary_search(n).is_err())
            .copied()
            .collect();
        for n in &gone {
            self.segs.remove(n);
        }
        if !gone.is_empty() {
            self.map.retain(|_, l| !gone.contains(&l.seg));
        }
        Ok(())
    }

    pub fn listing(&self) -> Vec<ArtifactInfo> {
        self.map
            .iter()
            .map(|(id, l)| ArtifactInfo {
                id: *id,
                size: u64::from(l.len),
                modified_ms: l.written_ms,
            })
            .collect()
    }

    pub fn stats(&self) -> SegmentStats {
        let (live, total) = self.segs.values().fold((0, 0), |(l, t), s| (l + s.live, t + s.total));
        SegmentStats {
            segments: self.segs.len() as u64,
            artifacts: self.map.len() as u64,
            live_bytes: live,
            dead_bytes: total.saturating_sub(live),
        }
    }
}
