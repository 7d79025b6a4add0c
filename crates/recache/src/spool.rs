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
        Ok(Self {
            path: path.to_path_buf(),
            replaying: PathBuf::from(replaying),
            file: Mutex::new(None),
            replay_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Appends one record and flushes it to the OS before returning.
    pub fn append(&self, rec: &SpoolRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        let f = guard.as_mut().ok_or_else(|| std::io::Error::other("spool not open"))?;
        f.write_all(&line)
    }

    /// Records waiting for replay (both files).
    pub fn pending(&self) -> usize {
        [&self.path, &self.replaying]
            .iter()
            .filter_map(|p| File::open(p).ok())
            .map(|f| BufReader::new(f).lines().count())
            .sum()
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
        Ok(done)
    }
}
