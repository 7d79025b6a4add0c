//! `backup prune`: the retention rules, then garbage collection of the pool.
//!
//! - Manual sets are kept until deleted by hand.
//! - Scheduled sets: the newest `keep_last`, plus the newest set of each of
//!   the last `keep_daily` days and of each of the last `keep_weekly` weeks
//!   (UTC) that have one.
//! - The newest verified set is never deleted, whatever the rules say.
//! - A set is deleted manifest first, so an interrupted prune never leaves a
//!   half-deleted set listed as complete.
//! - A pooled artifact is deleted only when no remaining set refers to it
//!   and it was written longer ago than the grace period, so a backup running
//!   at the same time (whose manifest does not exist yet) is never robbed.
//! - Unfinished sets (no manifest) older than the grace period are removed.
//!
//! - A set folder whose name is not a set id, or whose manifest names another
//!   set, a path outside the set or cannot be read, is reported (`refused`)
//!   and left alone, and the pool is not collected that time.
//!
//! Only this deployment's folder is ever looked at.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::manifest::{MANIFEST, MANIFEST_COPY};
use super::target::Target;
use super::{list, set_dir, BResult};
use recache_core::config::BackupConfig;
use recache_storage::roles::{now_ms, ArtifactId};

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub set: String,
    pub keep: bool,
    pub why: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub sets: Vec<Decision>,
    /// Set folders that cannot be trusted (see [`list::Sets::invalid`]):
    /// named here, never deleted; the pool is then not collected.
    pub refused: Vec<Decision>,
    pub sets_deleted: u64,
    pub unfinished_deleted: u64,
    pub pool_artifacts: u64,
    pub pool_referenced: u64,
    pub pool_deleted: u64,
    pub pool_deleted_bytes: u64,
    /// Unreferenced, but younger than the grace period.
    pub pool_kept_in_grace: u64,
    /// Whether the pool was garbage-collected this time.
    pub pool_collected: bool,
}

/// Which sets the rules keep. `sets`: (id, started_at_ms, trigger, verified), any order.
pub(crate) fn decide(sets: &[(String, i64, String, bool)], rules: &BackupConfig) -> Vec<Decision> {
    let mut sorted: Vec<&(String, i64, String, bool)> = sets.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0))); // newest first
    let mut why: BTreeMap<String, String> = BTreeMap::new();
    let mut keep = |id: &str, reason: String| {
        why.entry(id.to_string()).or_insert(reason);
    };
    if let Some(v) = sorted.iter().find(|s| s.3) {
        keep(&v.0, "the newest verified set".into());
    }
    for s in sorted.iter().filter(|s| s.2 != "scheduled") {
        keep(&s.0, format!("{} set (kept until deleted by hand)", s.2));
    }
    let scheduled: Vec<_> = sorted.iter().filter(|s| s.2 == "scheduled").collect();
    for (i, s) in scheduled.iter().take(rules.keep_last as usize).enumerate() {
        keep(&s.0, format!("keep_last: #{} newest", i + 1));
    }
    let mut days = Vec::new();
    let mut weeks = Vec::new();
    for s in &scheduled {
        let day = super::day_of(s.1);
        // Weeks start on Monday (1970-01-01 was a Thursday).
        let week = (day + 3).div_euclid(7);
        if !days.contains(&day) && days.len() < rules.keep_daily as usize {
            days.push(day);
            keep(
                &s.0,
                format!("keep_daily: newest of {}", &super::format_time(s.1)[..10]),
            );
        }
        if !weeks.contains(&week) && weeks.len() < rules.keep_weekly as usize {
            weeks.push(week);
            keep(
                &s.0,
                format!("keep_weekly: newest of the week of {}", &super::format_time(s.1)[..10]),
            );
        }
    }
    sorted
        .iter()
        .map(|s| match why.get(&s.0) {
            Some(w) => Decision {
                set: s.0.clone(),
                keep: true,
                why: w.clone(),
            },
            None => Decision {
                set: s.0.clone(),
                keep: false,
                why: "outside the retention rules".into(),
            },
        })
        .collect()
}

/// Deletes a set: manifests first, then its files.
pub(crate) async fn delete_set(target: &Target, id: &str) -> BResult<()> {
    let dir = set_dir(id);
    target.delete(&format!("{dir}/{MANIFEST}")).await?;
    target.delete(&format!("{dir}/{MANIFEST_COPY}")).await?;
    for f in target.list(&dir).await? {
        target.delete(&f.rel).await?;
    }
    target.remove_dir(&dir).await?;
    Ok(())
}

fn refuse(r: &mut PruneReport, id: &str, why: String) {
    tracing::error!(set = %id, "backup prune: {why}");
    r.refused.push(Decision {
        set: id.to_string(),
        keep: true,
        why,
    });
}

pub async fn prune(target: &Target, rules: &BackupConfig, grace_ms: i64, dry_run: bool) -> BResult<PruneReport> {
    prune_with(target, rules, grace_ms, dry_run, true).await
}

/// [`prune`], with the pool's garbage collection optional: it reads every
/// remaining set's artifact list, which a schedule of one set a minute need
/// not do every minute.
pub(crate) async fn prune_with(
    target: &Target,
    rules: &BackupConfig,
    grace_ms: i64,
    dry_run: bool,
    collect_pool: bool,
) -> BResult<PruneReport> {
    let mut r = PruneReport {
        dry_run,
        pool_collected: collect_pool,
        ..Default::default()
    };
    let now = now_ms();
    let list::Sets {
        complete: sets,
        unfinished,
        invalid,
    } = list::complete(target).await?;
    // A set that cannot be read may refer to any pooled artifact: no collection.
    let collect_pool = collect_pool && invalid.is_empty();
    r.refused = invalid
        .into_iter()
        .map(|(set, why)| Decision { set, keep: true, why })
        .collect();
    let mut facts = Vec::new();
    for f in &sets {
        let m = &f.manifest;
        let verified = list::last_verification(target, &m.id).await?.is_some_and(|v| v.ok);
        facts.push((m.id.clone(), m.started_at_ms, m.trigger.clone(), verified));
    }
    r.sets = decide(&facts, rules);
    let doomed: HashSet<String> = r.sets.iter().filter(|d| !d.keep).map(|d| d.set.clone()).collect();
    // What the remaining sets refer to.
    let mut referenced: HashSet<ArtifactId> = HashSet::new();
    for f in sets.iter().filter(|f| collect_pool && !doomed.contains(&f.manifest.id)) {
        for (id, _) in super::verify::artifact_list(target, &f.manifest).await? {
            referenced.insert(id);
        }
    }
    if !dry_run {
        for id in &doomed {
            match delete_set(target, id).await {
                Ok(()) => r.sets_deleted += 1,
                // One set that cannot be deleted safely (a link out of the
                // target) stops neither the others nor the report.
                Err(e) => refuse(&mut r, id, e.to_string()),
            }
        }
    }
    // Unfinished sets: removed once older than the grace period (their id is their start time).
    for id in &unfinished {
        let started = target
            .list(&set_dir(id))
            .await?
            .iter()
            .map(|f| f.modified_ms)
            .max()
            .unwrap_or(0);
        if now - started > grace_ms {
            if !dry_run {
                if let Err(e) = delete_set(target, id).await {
                    refuse(&mut r, id, e.to_string());
                    continue;
                }
            }
            r.unfinished_deleted += 1;
            r.sets.push(Decision {
                set: id.clone(),
                keep: false,
                why: "unfinished (no manifest) and older than the grace period".into(),
            });
        } else {
            r.sets.push(Decision {
                set: id.clone(),
                keep: true,
                why: "unfinished, but within the grace period (a backup may be running)".into(),
            });
        }
    }
    // The pool (not when a set could not be read or deleted: what it refers to is unknown).
    if !collect_pool || !r.refused.is_empty() {
        r.pool_collected = false;
        return Ok(r);
    }
    let pool = target.pool().await?;
    r.pool_artifacts = pool.len() as u64;
    r.pool_referenced = pool.keys().filter(|id| referenced.contains(id)).count() as u64;
    for (id, (size, modified)) in &pool {
        if referenced.contains(id) {
            continue;
        }
        if now - modified <= grace_ms {
            r.pool_kept_in_grace += 1;
            continue;
        }
        if !dry_run {
            target.delete(&Target::pool_rel(*id)).await?;
        }
        r.pool_deleted += 1;
        r.pool_deleted_bytes += size;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn rules(last: u32, daily: u32, weekly: u32) -> BackupConfig {
        BackupConfig {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            ..Default::default()
        }
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        let mut k: Vec<&str> = d.iter().filter(|d| d.keep).map(|d| d.set.as_str()).collect();
        k.sort();
        k
    }

    #[test]
    fn retention_rules() {
        // Two scheduled sets a day for ten days (ids sort by time), one manual.
        let base = 20_000 * DAY;
        let mut sets = Vec::new();
        for d in 0..10 {
            for h in [6, 18] {
                let t = base + d * DAY + h * 3_600_000;
                sets.push((format!("s{:02}{h:02}", d), t, "scheduled".to_string(), false));
            }
        }
        sets.push(("m".into(), base, "manual".into(), false));
        // keep_last 2, daily 3, weekly 0: the two newest, the newest of each of the 3 newest days, the manual.
        let d = decide(&sets, &rules(2, 3, 0));
        assert_eq!(kept(&d), vec!["m", "s0718", "s0818", "s0906", "s0918"]);
        // The newest verified set survives rules that would drop it.
        sets[0].3 = true;
        let d = decide(&sets, &rules(1, 0, 0));
        assert_eq!(kept(&d), vec!["m", "s0006", "s0918"]);
        assert!(d.iter().find(|x| x.set == "s0006").unwrap().why.contains("verified"));
        // Weekly: the newest set of each of the last 2 weeks.
        let d = decide(&sets, &rules(1, 0, 2));
        assert_eq!(
            d.iter().filter(|x| x.keep && x.why.starts_with("keep_weekly")).count(),
            1
        );
        assert_eq!(kept(&d).len(), 4);
    }
}
