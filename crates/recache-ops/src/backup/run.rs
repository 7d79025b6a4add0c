//! The whole of `create` (set, DR copy, verification) and of `restore`
//! (checks, restore, counts), shared by the CLI, which runs them inline, and
//! by the gateway's workers, which run them as `backup` and `backup-restore`
//! jobs (scheduled backups, and commands whose embedded index belongs to a
//! running gateway).

use std::sync::Arc;

use serde_json::{json, Value};

use super::create::{copy_set, create, CreateOptions};
use super::restore::restore_into;
use super::verify::{verify, Level, VerifyOptions};
use super::{list, BResult, BackupError, Targets, Which};
use crate::recovery::jobs::Registered;
use crate::recovery::Recovery;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::queue::Job;
use recache_storage::roles::{now_ms, BoxFuture};

pub const BACKUP: &str = "backup";
pub const BACKUP_RESTORE: &str = "backup-restore";

fn opts(targets: &Targets, level: Level) -> VerifyOptions {
    VerifyOptions {
        level,
        subset: None,
        parallel: targets.config.backup.parallel,
        record: true,
        config: targets.config.clone(),
        force: false,
    }
}

/// Takes a set, copies it to the DR target, verifies it when configured.
/// `result["ok"]` is false when a verification failed (the set exists).
pub async fn run_create(recovery: &Recovery, targets: &Targets, o: &CreateOptions, ctx: &dyn JobCtx) -> BResult<Value> {
    let roles = &recovery.cache.roles;
    let b = &targets.config.backup;
    let m = create(targets, roles, o, ctx).await?;
    let mut out = json!({
        "set": m.id, "kind": m.kind, "trigger": m.trigger, "parent": m.parent,
        "seconds": (m.finished_at_ms - m.started_at_ms) as f64 / 1000.0,
        "entries": m.roles.metadata.entries, "pointers": m.roles.index.pointers,
        "artifacts": m.roles.artifacts.referenced, "copied": m.roles.artifacts.copied,
        "copied_bytes": m.roles.artifacts.copied_bytes, "reused": m.roles.artifacts.reused,
        "missing_artifacts": m.roles.artifacts.missing, "set_bytes": m.set_bytes(),
        "vectors": m.roles.vectors.state, "target": targets.primary.label, "ok": true,
    });
    let level = Level::parse(&b.verify_level).unwrap_or(Level::Structure);
    if b.verify_after_create {
        let v = verify(&targets.primary, Which::Primary, &m.id, &opts(targets, level), ctx).await?;
        out["ok"] = json!(v.ok);
        out["verified"] = serde_json::to_value(&v).unwrap_or_default();
    }
    if let Some(dr) = &targets.dr {
        // The primary set is complete whatever happens here: a DR failure is
        // reported (exit 1), not a reason to take the set again.
        match copy_set(&targets.primary, dr, &m, b.parallel, ctx).await {
            Ok(copied) => {
                out["dr"] = json!({"target": dr.label, "artifacts_copied": copied});
                // The DR copy is checked on its own target (structure: hashes and presence).
                match verify(dr, Which::Dr, &m.id, &opts(targets, Level::Structure), ctx).await {
                    Ok(v) => {
                        if !v.ok {
                            out["ok"] = json!(false);
                        }
                        out["dr"]["verified"] = serde_json::to_value(&v).unwrap_or_default();
                    }
                    Err(e) => {
                        out["ok"] = json!(false);
                        out["dr"]["error"] = json!(e.to_string());
                    }
                }
            }
            Err(e) => {
                tracing::error!(set = %m.id, error = %e, "backup: the DR copy failed");
                out["ok"] = json!(false);
                out["dr"] = json!({"target": dr.label, "error": e.to_string()});
            }
        }
    }
    Ok(out)
}

/// Resolves `id` (`None`: the newest complete set; with `usable`, the newest
/// one whose last verification did not fail).
pub async fn resolve(targets: &Targets, which: Which, id: Option<&str>, usable: bool) -> BResult<String> {
    let t = targets.get(which)?;
    if let Some(id) = id {
        return Ok(id.to_string());
    }
    let mut ids = list::ids(t).await?;
    while let Some(id) = ids.pop() {
        if !matches!(list::load(t, &id).await, Ok(Some(_))) {
            continue;
        }
        if usable && list::last_verification(t, &id).await?.is_some_and(|v| !v.ok) {
            tracing::warn!(set = %id, "skipping a set that failed its last verification");
            continue;
        }
        return Ok(id);
    }
    Err(BackupError::Invalid(format!(
        "no complete{} backup set on the {} target",
        if usable { ", unfailed" } else { "" },
        which.name()
    )))
}

/// Restores set `id` into the configured stores.
/// `reconcile_since_ms`: when the stores were lost while a gateway kept
/// serving (a drill's wipe); entries written since then are reconciled after
/// the restore (`restore::Restore::reconcile`). `None`: since the restore
/// began (rows the set restores keep their older creation times).
pub async fn run_restore(
    recovery: &Recovery,
    targets: &Targets,
    which: Which,
    id: &str,
    force: bool,
    reconcile_since_ms: Option<i64>,
    ctx: &dyn JobCtx,
) -> BResult<Value> {
    let roles = &recovery.cache.roles;
    let target = targets.get(which)?;
    let started = std::time::Instant::now();
    let begun_ms = recache_storage::roles::now_ms();
    let found = list::load(target, id)
        .await?
        .ok_or_else(|| BackupError::Invalid(format!("set {id} has no manifest (unfinished, or no such set)")))?;
    let mut warnings = Vec::new();
    if let Some(p) = found.signature.problem(id) {
        if !force {
            return Err(BackupError::Refused(format!("{p}; use --force to restore it anyway")));
        }
        warnings.push(p);
    }
    let m = found.manifest;
    if let Some(d) = &found.damaged {
        warnings.push(format!("manifest: {d}; restoring from its second copy"));
    }
    // A set that failed verification, or fails the structure check now, is refused.
    if let Some(v) = list::last_verification(target, id).await?.filter(|v| !v.ok) {
        let why = format!(
            "set {id} failed its last verification ({}, {}): {}",
            v.level,
            super::format_time(v.at_ms),
            v.problems.first().cloned().unwrap_or_default()
        );
        if !force {
            return Err(BackupError::Refused(format!("{why}; use --force to restore it anyway")));
        }
        warnings.push(why);
    }
    let v = verify(target, which, id, &opts(targets, Level::Structure), ctx).await?;
    if !v.ok {
        let why = format!("set {id} fails verification: {}", v.problems.join("; "));
        if !force {
            return Err(BackupError::Refused(format!("{why}; use --force to restore it anyway")));
        }
        warnings.push(why);
    }
    // Never over a store that holds data, unless asked.
    let (entries_before, pointers_before) = (roles.metadata.count_entries().await?, roles.index.count().await?);
    if entries_before > 0 || pointers_before > 0 {
        let why = format!("the destination is not empty ({entries_before} entries, {pointers_before} index pointers)");
        if !force {
            return Err(BackupError::Refused(format!(
                "{why}; use --force to restore into it (rows and pointers already there are kept)"
            )));
        }
        warnings.push(why);
    }
    let since = reconcile_since_ms.unwrap_or(begun_ms);
    let report = restore_into(roles, target, &m, targets.config.backup.parallel, Some(since), ctx).await?;
    let mut problems = report.problems.clone();
    // Counts below the manifest's are a failure, not a success.
    let entries = roles.metadata.count_entries().await?;
    if report.entries_unreadable > 0 {
        let who: Vec<String> = report
            .unreadable_tenants
            .iter()
            .map(|(t, n)| format!("{t}: {n}"))
            .collect();
        warnings.push(format!(
            "{} entries left out: sealed with a data key that no longer opens (erased tenants; {})",
            report.entries_unreadable,
            who.join(", ")
        ));
    }
    if entries + report.entries_unreadable < m.roles.metadata.entries {
        problems.push(format!(
            "metadata holds {entries} entries after the restore; the set has {}",
            m.roles.metadata.entries
        ));
    }
    let pointers = roles.index.count().await?;
    let expected = m.roles.index.pointers.saturating_sub(report.pointers_skipped);
    if pointers < expected {
        problems.push(format!(
            "the index holds {pointers} pointers after the restore; the set has {expected}"
        ));
    }
    let mut vectors = report.vectors.clone();
    if roles.vectors.enabled() && report.vectors != "restored" {
        use crate::recovery::REBUILD_VECTORS;
        use recache_storage::queue::NewJob;
        let job = NewJob::new(REBUILD_VECTORS, json!({}))
            .priority(crate::recovery::jobs::default_priority(REBUILD_VECTORS))
            .unique(format!("{REBUILD_VECTORS}:restore"));
        match recovery.queue.enqueue(job).await {
            Ok(e) => vectors = format!("rebuilding from the restored requests (job #{})", e.id),
            Err(e) => warnings.push(format!("could not queue the vectors rebuild: {e}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = problems.is_empty();
    let out = json!({
        "set": id, "target": target.label, "ok": ok, "seconds": seconds,
        "entries": report.entries, "entries_written": report.entries_written,
        "audit_events": report.audit_events, "jobs": report.jobs,
        "keys": report.keys, "keys_present": report.keys_present, "data_keys": report.data_keys,
        "usage_rows": report.usage_rows,
        "artifacts": report.artifacts, "artifacts_copied": report.artifacts_copied,
        "artifacts_present": report.artifacts_present,
        "entries_without_artifact": report.entries_without_artifact,
        "entries_unreadable": report.entries_unreadable, "unreadable_tenants": report.unreadable_tenants,
        "pointers": report.pointers, "pointers_written": report.pointers_written,
        "pointers_skipped": report.pointers_skipped, "pointers_derived": report.pointers_derived, "vectors": vectors, "vectors_written": report.vectors_written,
        "reconciled": {"entries": report.reconciled_entries, "pointers": report.reconciled_pointers,
            "replaced": report.reconciled_replaced, "dropped": report.reconciled_dropped},
        "entries_after": entries, "pointers_after": pointers,
        "steps": report.steps.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "problems": problems, "warnings": warnings,
    });
    super::audit(roles.metadata.as_ref(), "backup.restore", out.clone()).await;
    Ok(out)
}

/// The `backup` and `backup-restore` job kinds, for [`Recovery::register`].
pub const JOB_KINDS: [Registered; 2] = [
    Registered {
        kind: BACKUP,
        needs: &["metadata", "artifacts", "index"],
        run: run_registered,
    },
    Registered {
        kind: BACKUP_RESTORE,
        needs: &["metadata", "artifacts", "index"],
        run: run_registered,
    },
];

/// `recovery` with the backup job kinds registered: every process that runs
/// jobs (the gateway's workers, `recache warmer`, the CLI's local runs) opens its recovery through this.
pub fn with_backup_jobs(recovery: Recovery) -> Recovery {
    JOB_KINDS
        .into_iter()
        .chain([super::erase::JOB_KIND, crate::drills::wipe::JOB_KIND])
        .fold(recovery, Recovery::register)
}

fn run_registered<'a>(
    recovery: &'a Recovery,
    job: &'a Job,
    ctx: &'a dyn JobCtx,
) -> BoxFuture<'a, Result<Value, JobError>> {
    Box::pin(async move {
        match run_job(recovery, &job.kind, &job.payload, ctx).await {
            Ok(v) => Ok(v),
            Err(BackupError::Backend(e)) => Err(JobError::Backend(e)),
            Err(e @ BackupError::Target(_)) => Err(JobError::Failed(e.to_string())),
            Err(e) => Err(JobError::Fatal(e.to_string())),
        }
    })
}

/// Runs a `backup` or `backup-restore` job (the gateway's workers).
pub(crate) async fn run_job(recovery: &Recovery, kind: &str, payload: &Value, ctx: &dyn JobCtx) -> BResult<Value> {
    let config = Arc::new((*recovery.config).clone());
    let targets = Targets::open(config, &recovery.env)?;
    match kind {
        BACKUP => {
            let trigger = payload["trigger"].as_str().unwrap_or("manual").to_string();
            // Among replicas, a scheduled set already taken by another one makes this a no-op.
            if trigger == "scheduled" {
                if let Some(interval) = super::schedule::interval(&targets.config) {
                    if let Some(age) = super::schedule::newest_scheduled_age(&targets).await {
                        if age < interval / 2 {
                            return Ok(json!({"skipped": "a scheduled set younger than half the interval exists"}));
                        }
                    }
                }
            }
            let o = CreateOptions {
                trigger,
                full: payload["full"].as_bool().unwrap_or(false),
            };
            let mut out = run_create(recovery, &targets, &o, ctx).await?;
            // The schedule prunes by the retention rules as sets come.
            if payload["prune"].as_bool().unwrap_or(false) {
                let grace = recache_core::time::parse_duration(&targets.config.backup.prune_grace)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(86_400_000);
                // Sets go at once; the pool is collected at most hourly (see prune_with).
                static LAST_GC: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
                let gc = now_ms() - LAST_GC.load(std::sync::atomic::Ordering::Relaxed) > 3_600_000;
                if gc {
                    LAST_GC.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
                }
                for t in std::iter::once(&targets.primary).chain(targets.dr.as_ref()) {
                    match super::prune::prune_with(t, &targets.config.backup, grace, false, gc).await {
                        Ok(p) => {
                            out["pruned"][t.label.as_str()] =
                                json!({"sets": p.sets_deleted, "artifacts": p.pool_deleted})
                        }
                        Err(e) => {
                            tracing::warn!(target = %t.label, error = %e, "backup: prune after the scheduled backup failed")
                        }
                    }
                }
            }
            Ok(out)
        }
        _ => {
            let which = if payload["dr"].as_bool().unwrap_or(false) {
                Which::Dr
            } else {
                Which::Primary
            };
            let id = resolve(&targets, which, payload["set"].as_str(), false).await?;
            run_restore(
                recovery,
                &targets,
                which,
                &id,
                payload["force"].as_bool().unwrap_or(false),
                payload["reconcile_since_ms"].as_i64(),
                ctx,
            )
            .await
        }
    }
}
