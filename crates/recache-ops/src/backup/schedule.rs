//! Scheduled backups inside `serve`. Each replica looks at the target now
//! and then; when the newest scheduled set is older than the interval it
//! queues a `backup` job under one unique key. The queue's lease makes sure
//! only one replica runs it, and the job itself does nothing when another
//! replica's set turned up meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::run::BACKUP;
use super::{list, Targets};
use crate::recovery::Recovery;
use recache_core::config::Config;
use recache_storage::queue::NewJob;
use recache_storage::roles::now_ms;

/// The configured interval, if any.
pub fn interval(config: &Config) -> Option<Duration> {
    config
        .backup
        .schedule
        .as_deref()
        .and_then(|s| recache_core::time::parse_duration(s).ok())
        .filter(|d| !d.is_zero())
}

/// Age of the newest scheduled set (any set when none was scheduled yet
/// counts too: a manual backup just taken makes the next scheduled one wait).
pub(crate) async fn newest_scheduled_age(targets: &Targets) -> Option<Duration> {
    let m = list::newest(&targets.primary, false).await.ok()??;
    Some(Duration::from_millis((now_ms() - m.started_at_ms).max(0) as u64))
}

/// Runs until `stop`: queues a backup whenever the newest set is older than the interval.
pub async fn run(recovery: Arc<Recovery>, targets: Targets, every: Duration, mut stop: watch::Receiver<bool>) {
    let look = (every / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    tracing::info!(every_s = every.as_secs(), target = %targets.primary.label, "backup: schedule on");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(look) => {}
            _ = stop.changed() => return,
        }
        let due = match newest_scheduled_age(&targets).await {
            Some(age) => age >= every,
            None => true,
        };
        if !due {
            continue;
        }
        let job = NewJob::new(BACKUP, serde_json::json!({"trigger": "scheduled", "prune": true}))
            .priority(80)
            .unique("backup:scheduled".to_string())
            .max_attempts(recovery.config.warmer.max_attempts);
        match recovery.queue.enqueue(job).await {
            Ok(e) if e.created => tracing::info!(job = e.id, "backup: scheduled backup queued"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "backup: cannot queue the scheduled backup"),
        }
    }
}
