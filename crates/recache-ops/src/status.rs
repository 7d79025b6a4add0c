//! What the operator surface (dashboard, `doctor`, metrics) says about
//! backups and drills. Both are read from where they live (the backup
//! targets, metadata's audit log); the gateway refreshes them in the
//! background, since a listing can take seconds on a big target.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::drills::{self as history, Due, PastDrill};
use recache_core::config::Config;
use recache_storage::roles::{now_ms, Metadata};

/// The newest backup sets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupStatus {
    /// Where sets go (as configured).
    pub target: String,
    pub newest_id: Option<String>,
    pub newest_at_ms: Option<i64>,
    pub newest_verified_id: Option<String>,
    pub newest_verified_at_ms: Option<i64>,
    /// The DR target, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dr_target: Option<String>,
    /// The newest set on the DR target.
    pub dr_newest_at_ms: Option<i64>,
    /// `backup.rpo`, in seconds, when set.
    pub rpo_seconds: Option<u64>,
    /// Reading a target failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BackupStatus {
    /// Age of the newest verified set at `now`.
    pub fn verified_age(&self, now: i64) -> Option<Duration> {
        self.newest_verified_at_ms
            .map(|t| Duration::from_millis((now - t).max(0) as u64))
    }
}

/// `None` when no backup target is configured.
pub async fn backup(config: &Arc<Config>) -> Option<BackupStatus> {
    let b = &config.backup;
    let target = b.target.as_deref().filter(|t| !t.trim().is_empty())?.to_string();
    let mut out = BackupStatus {
        target,
        dr_target: b.dr_target.clone().filter(|t| !t.trim().is_empty()),
        rpo_seconds: b
            .rpo
            .as_deref()
            .and_then(|r| recache_core::time::parse_duration(r).ok())
            .map(|d| d.as_secs()),
        ..Default::default()
    };
    // Only ages are read here: no signature is checked, so no signing key is needed.
    let mut unsigned = (**config).clone();
    unsigned.backup.signing_key_env = None;
    let targets = match crate::backup::Targets::open(Arc::new(unsigned), &recache_core::config::env_map()) {
        Ok(t) => t,
        Err(e) => {
            out.error = Some(e.to_string());
            return Some(out);
        }
    };
    use crate::backup::list::newest;
    let read = async {
        if let Some(m) = newest(&targets.primary, false).await? {
            out.newest_id = Some(m.id.clone());
            out.newest_at_ms = Some(m.started_at_ms);
        }
        if let Some(m) = newest(&targets.primary, true).await? {
            out.newest_verified_id = Some(m.id.clone());
            out.newest_verified_at_ms = Some(m.started_at_ms);
        }
        if let Some(dr) = &targets.dr {
            if let Some(m) = newest(dr, false).await? {
                out.dr_newest_at_ms = Some(m.started_at_ms);
            }
        }
        Ok::<(), crate::backup::BackupError>(())
    };
    match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.error = Some(e.to_string()),
        Err(_) => out.error = Some("the backup target did not answer within 30 s".into()),
    }
    Some(out)
}

/// The last drill and the calendar.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DrillStatus {
    pub last: Option<PastDrill>,
    /// The last drill that passed.
    pub last_pass_at_ms: Option<i64>,
    pub calendar: Vec<Due>,
    pub overdue: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How many audit events are scanned for past drills.
const DRILL_SCAN: u32 = 10_000;

pub async fn drills(metadata: &dyn Metadata) -> DrillStatus {
    match history::list(metadata, DRILL_SCAN).await {
        Ok(past) => {
            let calendar = history::calendar(&past, now_ms());
            DrillStatus {
                last: past.first().cloned(),
                last_pass_at_ms: past.iter().find(|d| d.verdict == "pass").map(|d| d.at_ms),
                overdue: calendar
                    .iter()
                    .filter(|d| d.status == "overdue")
                    .map(|d| d.scenario.clone())
                    .collect(),
                calendar,
                error: None,
            }
        }
        Err(e) => DrillStatus {
            error: Some(e),
            ..Default::default()
        },
    }
}

/// Both, as the gateway last read them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpsStatus {
    pub backup: Option<BackupStatus>,
    pub drill: Option<DrillStatus>,
    /// When this was read (Unix ms); 0: not yet.
    pub read_at_ms: i64,
}

/// Keeps an [`OpsStatus`] fresh in the background.
#[derive(Default)]
pub struct OpsStatusCache(std::sync::RwLock<OpsStatus>);

impl OpsStatusCache {
    pub fn get(&self) -> OpsStatus {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn refresh(&self, config: &Arc<Config>, metadata: &dyn Metadata) {
        let backup = backup(config).await;
        let drill = tokio::time::timeout(Duration::from_secs(10), drills(metadata))
            .await
            .ok();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = OpsStatus {
            backup,
            drill,
            read_at_ms: now_ms(),
        };
    }
}
