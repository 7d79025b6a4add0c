//! The metadata spool. While the metadata store is unreachable, audit events
//! and entry registrations are appended to a local file (one JSON record per
//! line). A background task replays them when the store is back.
//!
//! Nothing is lost:
//! - Records hit the file before the request finishes.
//! - Replay works from a renamed copy. New records keep going to a fresh file meanwhile.
//! - A failed replay leaves the copy for the next attempt, even across restarts.
//!
//! Nothing is duplicated:
//! - Audit events carry unique ids, and the store skips ids it already holds.
//! - A spooled entry is registered only if the store has nothing newer for its key.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::roles::{AuditEvent, BackendError, EntryRecord, Metadata};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SpoolRecord {
    Audit(AuditEvent),
    Entry(EntryRecord),
}

pub struct Spool {
    path: PathBuf,
    replaying: PathBuf,
    file: Mutex<Option<File>>,
    replay_lock: tokio::sync::Mutex<()>,
    /// The cap (`metadata.spool_max_mb`): entry registrations stop at 90 % of
    /// it, audit events at 100 %, so audit events are kept first.
    max_bytes: u64,
    /// Bytes in both files.
    size: AtomicU64,
    dropped_entries: AtomicU64,
    dropped_audit: AtomicU64,
}

/// What one replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub audit_events: usize,
    pub entries: usize,
    pub skipped_entries: usize,
}

impl Spool {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut replaying = path.as_os_str().to_owned();
        replaying.push(".replaying");
        let replaying = PathBuf::from(replaying);
        let size = [path, replaying.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(Self {
            path: path.to_path_buf(),
            replaying,
            file: Mutex::new(None),
            replay_lock: tokio::sync::Mutex::new(()),
            max_bytes: u64::MAX,
            size: AtomicU64::new(size),
            dropped_entries: AtomicU64::new(0),
            dropped_audit: AtomicU64::new(0),
        })
    }

    /// Caps the spool at `max_bytes` (0: no cap).
    pub fn with_limit(mut self, max_bytes: u64) -> Self {
        self.max_bytes = if max_bytes == 0 { u64::MAX } else { max_bytes };
        self
    }

    /// Records dropped at the cap so far: (entry registrations, audit events).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_entries.load(Ordering::Relaxed),
            self.dropped_audit.load(Ordering::Relaxed),
        )
    }

    /// Bytes waiting in the spool.
    pub fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Appends one record and flushes it to the OS before returning.
    /// `Ok(false)`: the spool is at its cap and the record was dropped (counted).
    pub fn append(&self, rec: &SpoolRecord) -> std::io::Result<bool> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let (limit, dropped) = match rec {
            SpoolRecord::Entry(_) => (self.max_bytes / 10 * 9, &self.dropped_entries),
            SpoolRecord::Audit(_) => (self.max_bytes, &self.dropped_audit),
        };
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if self.size.load(Ordering::Relaxed).saturating_add(line.len() as u64) > limit {
            let n = dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::error!(
                    record = if matches!(rec, SpoolRecord::Entry(_)) { "entry" } else { "audit" },
                    dropped_so_far = n + 1,
                    max_bytes = self.max_bytes,
                    "metadata spool is full: dropping records (entries are restored from their artifacts by reconcile-metadata)"
                );
            }
            return Ok(false);
        }
        self.size.fetch_add(line.len() as u64, Ordering::Relaxed);
        if guard.is_none() {
            *guard = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        let f = guard.as_mut().ok_or_else(|| std::io::Error::other("spool not open"))?;
        f.write_all(&line)?;
        Ok(true)
    }

    /// Records waiting for replay (both files).
    pub fn pending(&self) -> usize {
        [&self.path, &self.replaying]
            .iter()
            .filter_map(|p| File::open(p).ok())
            .map(|f| BufReader::new(f).lines().count())
            .sum()
    }

    /// How many spooled entry registrations `matches` takes (a dry-run purge).
    pub fn count_entries(&self, matches: impl Fn(&EntryRecord) -> bool) -> u64 {
        [&self.path, &self.replaying]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|text| {
                text.lines()
                    .filter(|l| matches!(serde_json::from_str(l), Ok(SpoolRecord::Entry(e)) if matches(&e)))
                    .count() as u64
            })
            .sum()
    }

    /// Removes the spooled entry registrations `take` matches (a purge) and
    /// returns them; audit events and other entries stay. Both files are
    /// rewritten in place of the old ones (write, then rename).
    pub async fn take_entries(&self, take: impl Fn(&EntryRecord) -> bool) -> std::io::Result<Vec<EntryRecord>> {
        let _no_replay = self.replay_lock.lock().await;
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = Vec::new();
        for path in [&self.path, &self.replaying] {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let mut kept = String::with_capacity(text.len());
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<SpoolRecord>(line) {
                    Ok(SpoolRecord::Entry(e)) if take(&e) => taken.push(e),
                    _ => {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
            }
            if kept.len() == text.len() {
                continue;
            }
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".purge");
            std::fs::write(&tmp, &kept)?;
            std::fs::rename(&tmp, path)?;
            let _ = self.size.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_sub((text.len() - kept.len()) as u64))
            });
        }
        *guard = None; // appends reopen the rewritten file
        Ok(taken)
    }

    /// Replays everything spooled into `metadata`. On an error the records
    /// not yet confirmed stay spooled for the next attempt.
    pub async fn replay(&self, metadata: &dyn Metadata) -> Result<Replayed, BackendError> {
        let _one_at_a_time = self.replay_lock.lock().await;
        let io = |e: std::io::Error| BackendError::Unavailable {
            backend: "spool",
            detail: e.to_string(),
        };
        if !self.replaying.exists() {
            let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0) == 0 {
                return Ok(Replayed::default());
            }
            *guard = None; // the next append opens a fresh file
            std::fs::rename(&self.path, &self.replaying).map_err(io)?;
        }
        let text = std::fs::read_to_string(&self.replaying).map_err(io)?;
        let mut done = Replayed::default();
        let mut audits = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let rec: SpoolRecord = match serde_json::from_str(line) {
                Ok(r) => r,
                Err(e) => {
                    // A torn last line from a crash mid-append: nothing to replay there.
                    tracing::warn!(error = %e, "skipping an unreadable spool line");
                    continue;
                }
            };
            match rec {
                SpoolRecord::Audit(ev) => audits.push(ev),
                SpoolRecord::Entry(e) => {
                    let newer = metadata
                        .get_entry(e.key)
                        .await?
                        .is_some_and(|cur| cur.created_at_ms >= e.created_at_ms);
                    if newer {
                        done.skipped_entries += 1;
                    } else {
                        metadata.upsert_entry(e).await?;
                        done.entries += 1;
                    }
                }
            }
        }
        for chunk in audits.chunks(500) {
            metadata.append_audit(chunk.to_vec()).await?;
            done.audit_events += chunk.len();
        }
        std::fs::remove_file(&self.replaying).map_err(io)?;
        let _ = self.size.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            Some(s.saturating_sub(text.len() as u64))
        });
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::ArtifactId;

    fn entry(i: u8) -> SpoolRecord {
        let mut e = crate::roles::conformance::sample_entry(crate::key::CacheKey([i; 32]), ArtifactId([i; 32]), 0, 1);
        e.request = Some("x".repeat(200));
        SpoolRecord::Entry(e)
    }

    #[tokio::test]
    async fn take_entries_removes_only_what_matches() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.jsonl")).unwrap();
        for i in 0..4 {
            spool.append(&entry(i)).unwrap();
            spool.append(&audit(i as u32)).unwrap();
        }
        let before = spool.size_bytes();
        let taken = spool.take_entries(|e| e.key.0[0] % 2 == 1).await.unwrap();
        assert_eq!(taken.iter().map(|e| e.key.0[0]).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(spool.pending(), 6, "two entries gone, audit events kept");
        assert!(spool.size_bytes() < before);
        spool.append(&entry(9)).unwrap();
        assert_eq!(spool.pending(), 7, "appends go on after the rewrite");
        assert!(spool.take_entries(|_| false).await.unwrap().is_empty());
        assert_eq!(spool.count_entries(|e| e.key.0[0] == 9), 1);
    }

    fn audit(i: u32) -> SpoolRecord {
        SpoolRecord::Audit(AuditEvent {
            id: format!("e{i}"),
            at_ms: 0,
            tenant: None,
            actor: "t".into(),
            action: "a".into(),
            cache_key: None,
            detail: serde_json::json!({}),
        })
    }

    #[test]
    fn the_cap_keeps_audit_events_first_and_counts_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let spool = Spool::open(&path).unwrap().with_limit(10_000);
        let (mut entries, mut audits) = (0, 0);
        for i in 0..200u32 {
            if spool.append(&entry(i as u8)).unwrap() {
                entries += 1;
            }
            if spool.append(&audit(i)).unwrap() {
                audits += 1;
            }
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 10_000, "the file stops growing at the cap: {size}");
        assert_eq!(spool.size_bytes(), size);
        let (de, da) = spool.dropped();
        assert_eq!(
            (de + entries, da + audits),
            (200, 200),
            "every record is written or counted"
        );
        assert!(
            de > 0 && audits > entries / 2,
            "entries stop first ({entries} entries, {audits} audits)"
        );
        // Audit events still fit after entries stopped (the last 10 % is theirs).
        assert!(spool.size_bytes() > 9_000);
        // Reopening sees the same size.
        assert_eq!(Spool::open(&path).unwrap().size_bytes(), size);
    }
}
