//! `recache backup create | list | verify | restore | prune`.
//!
//! Exit codes: 0 fine; 1 a verification failed, a restore was refused or
//! incomplete, a target failed; 2 bad usage or configuration.

use std::collections::HashMap;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::ops::{exit_code, open, parse_duration, print, Exit};
use super::{env_map, init_logging, load_config, ConfigArgs, OutputFormat, EXIT_PROBLEM};
use recache_core::config::LogFormat;
use recache_ops::backup::create::CreateOptions;
use recache_ops::backup::run::{resolve, run_create, run_restore, BACKUP, BACKUP_RESTORE};
use recache_ops::backup::verify::{verify, Level, Subset, VerifyOptions};
use recache_ops::backup::{list, prune, BackupError, Targets, Which};
use recache_ops::recovery::local::LocalCtx;
use recache_storage::roles::factory::IndexAccess;

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Work on the DR target (`backup.dr_target`) instead of the primary one.
    #[arg(long)]
    pub dr: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Take a backup set of all four stores now (then copy it to the DR target and verify, as configured).
    Create {
        #[command(flatten)]
        common: Common,
        /// Copy every artifact again, even those already in the target's pool.
        #[arg(long)]
        full: bool,
        /// Record the set as scheduled, so the retention rules prune it (for backups run from cron).
        #[arg(long)]
        scheduled: bool,
    },
    /// The sets on the target: time, kind, sizes, counts, verification and DR copy state.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Check a set: hashes, then pooled artifact contents, then a test restore into scratch with the canary and an audit.
    Verify {
        #[command(flatten)]
        common: Common,
        /// The set to verify (see `backup list`).
        id: Option<String>,
        /// Verify the newest set.
        #[arg(long, conflicts_with = "id")]
        latest: bool,
        #[arg(long, value_enum, default_value = "restore")]
        level: Level,
        /// Read only the N-th of T slices of the artifacts (e.g. 3/7: a daily cron covers all in 7 days).
        #[arg(long)]
        subset: Option<String>,
        /// Verify a set that is unsigned or signed with another key (backup.signing_key_env).
        #[arg(long)]
        force: bool,
    },
    /// Restore a set into the configured stores (refuses non-empty stores and failed sets without --force).
    Restore {
        #[command(flatten)]
        common: Common,
        /// The set to restore.
        id: Option<String>,
        /// Restore the newest set whose last verification did not fail.
        #[arg(long, conflicts_with = "id")]
        latest: bool,
        /// Restore into stores that hold data, a set that failed verification, or one whose signature is missing or wrong.
        #[arg(long)]
        force: bool,
    },
    /// Delete sets outside the retention rules and pooled artifacts no set refers to.
    Prune {
        #[command(flatten)]
        common: Common,
        /// Say what would be kept or deleted, and why; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override backup.prune_grace (e.g. 0s in tests, 48h to be careful).
        #[arg(long)]
        grace: Option<String>,
    },
}

fn which(c: &Common) -> Which {
    if c.dr {
        Which::Dr
    } else {
        Which::Primary
    }
}

fn berr(e: BackupError) -> Exit {
    match e {
        BackupError::Config(m) => Exit::config(m),
        other => Exit::problem(other.to_string()),
    }
}

fn targets(c: &Common) -> Result<(Targets, HashMap<String, String>), Exit> {
    let env = env_map();
    let mut config = load_config(&c.config, &env).map_err(|e| Exit::config(e.to_string()))?;
    // Bulk copies on what may be a busy machine: not the request path's 250 ms per call.
    super::raise_timeouts(&mut config, 10_000);
    init_logging(LogFormat::Text, "warn");
    let t = Targets::open(Arc::new(config), &env).map_err(berr)?;
    Ok((t, env))
}

pub async fn run(a: BackupArgs) -> i32 {
    let res = match a.command {
        BackupCommand::Create {
            common,
            full,
            scheduled,
        } => create(&common, full, scheduled).await,
        BackupCommand::List { common } => list_sets(&common).await,
        BackupCommand::Verify {
            common,
            id,
            latest: _,
            level,
            subset,
            force,
        } => verify_set(&common, id, level, subset, force).await,
        BackupCommand::Restore {
            common,
            id,
            latest,
            force,
        } => restore(&common, id, latest, force).await,
        BackupCommand::Prune { common, dry_run, grace } => prune_sets(&common, dry_run, grace).await,
    };
    exit_code("backup", res)
}

/// Runs `kind` in the running gateway's workers (its embedded index cannot be opened twice) and waits.
async fn hand_to_gateway(c: &Common, kind: &str, payload: Value) -> Result<Value, Exit> {
    use recache_storage::queue::NewJob;
    let r = super::ops::open_queue(&c.config).await?;
    eprintln!("recache backup: the embedded index belongs to the running gateway; its workers run this ({kind})");
    let job = NewJob::new(kind, payload)
        .priority(85)
        .unique(format!("{kind}:cli"))
        .max_attempts(1);
    let j = super::warmer::run_in_gateway(&r, job, 6 * 3600, c.format == OutputFormat::Text).await?;
    Ok(j.result.unwrap_or_default())
}

/// Opens the stores for writing, or says the gateway owns them.
async fn open_stores(c: &Common) -> Result<Option<Arc<recache_ops::recovery::Recovery>>, Exit> {
    match open(&c.config, IndexAccess::WriteNoReplay, "warn").await {
        Err(Exit(_, msg)) if msg.contains("in use by another recache process") => Ok(None),
        other => other.map(Some),
    }
}

async fn create(c: &Common, full: bool, scheduled: bool) -> Result<i32, Exit> {
    let trigger = if scheduled { "scheduled" } else { "manual" };
    if c.dr {
        return Err(Exit::config(
            "backup create writes to the primary target and copies to the DR one; drop --dr",
        ));
    }
    let (t, _) = targets(c)?;
    let v = match open_stores(c).await? {
        Some(r) => {
            let ctx = LocalCtx::new("backup", c.format == OutputFormat::Text);
            let o = CreateOptions {
                trigger: trigger.into(),
                full,
            };
            let res = run_create(&r, &t, &o, ctx.as_ref()).await;
            ctx.finish();
            res.map_err(berr)?
        }
        None => hand_to_gateway(c, BACKUP, json!({"trigger": trigger, "full": full})).await?,
    };
    print(c.format, &v, |v| {
        let mut out = format!(
            "backup {} ({}) written to {} in {:.1} s: {} entries, {} pointers, {} artifacts ({} copied, {} B; {} already in the pool)\n",
            v["set"].as_str().unwrap_or(""),
            v["kind"].as_str().unwrap_or(""),
            v["target"].as_str().unwrap_or(""),
            v["seconds"].as_f64().unwrap_or(0.0),
            v["entries"],
            v["pointers"],
            v["artifacts"],
            v["copied"],
            v["copied_bytes"],
            v["reused"],
        );
        if v["missing_artifacts"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!(
                "  warning: {} artifacts were missing or damaged at the source and are not in the set\n",
                v["missing_artifacts"]
            ));
        }
        if let Some(ver) = v.get("verified") {
            out.push_str(&verification_text(ver));
        }
        if let Some(dr) = v.get("dr") {
            match dr["error"].as_str() {
                Some(e) => out.push_str(&format!("  DR copy FAILED: {e}\n")),
                None => out.push_str(&format!(
                    "  DR copy on {}: {} artifacts copied\n",
                    dr["target"].as_str().unwrap_or(""),
                    dr["artifacts_copied"]
                )),
            }
            if let Some(ver) = dr.get("verified") {
                out.push_str(&verification_text(ver));
            }
        }
        out
    });
    Ok(if v["ok"].as_bool().unwrap_or(false) {
        0
    } else {
        EXIT_PROBLEM
    })
}

fn verification_text(v: &Value) -> String {
    let mut out = format!(
        "  verify ({}, {} target): {} — {} files, {} artifacts read, {} entries restored, canary {}, {:.1} s\n",
        v["level"].as_str().unwrap_or(""),
        v["target"].as_str().unwrap_or(""),
        if v["ok"].as_bool().unwrap_or(false) {
            "ok"
        } else {
            "FAILED"
        },
        v["files_checked"],
        v["artifacts_checked"],
        v["restored_entries"],
        match v["canary"].as_bool() {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "not checked",
        },
        v["seconds"].as_f64().unwrap_or(0.0),
    );
    for p in v["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!("    problem: {}\n", p.as_str().unwrap_or("")));
    }
    out
}

async fn list_sets(c: &Common) -> Result<i32, Exit> {
    let (t, _) = targets(c)?;
    let target = t.get(which(c)).map_err(berr)?;
    let other = match which(c) {
        Which::Primary => t.dr.as_ref(),
        Which::Dr => None,
    };
    let list::Sets {
        complete: sets,
        unfinished,
        invalid,
    } = list::complete(target).await.map_err(berr)?;
    let mut rows = Vec::new();
    for f in sets.iter().rev() {
        rows.push(list::summarize(f, target, other).await.map_err(berr)?);
    }
    let b = &t.config.backup;
    let newest_age_s = rows
        .first()
        .map(|r| (recache_storage::roles::now_ms() - r.at_ms) as f64 / 1000.0);
    let rpo_s = b
        .rpo
        .as_deref()
        .and_then(|r| parse_duration(r).ok())
        .map(|d| d.as_secs_f64());
    let schedule_s = recache_ops::backup::schedule::interval(&t.config).map(|d| d.as_secs_f64());
    let v = json!({
        "target": target.label,
        "deployment": b.deployment,
        "sets": rows,
        "unfinished": unfinished,
        "invalid": invalid.iter().map(|(set, why)| json!({"set": set, "why": why})).collect::<Vec<_>>(),
        "newest_age_seconds": newest_age_s,
        // What the schedule gives: a loss loses at most one interval (plus the backup's own time).
        "schedule_seconds": schedule_s,
        "rpo_target_seconds": rpo_s,
        "rpo_met": match (newest_age_s, rpo_s) { (Some(a), Some(r)) => json!(a <= r), _ => Value::Null },
    });
    print(c.format, &v, |v| {
        let mut out = format!("backup sets on {} (deployment {}):\n", target.label, b.deployment);
        out.push_str(&format!(
            "{:<21} {:<21} {:<11} {:<9} {:>9} {:>10} {:>9} {:<24} {:<8}\n",
            "ID", "TIME", "KIND", "TRIGGER", "ENTRIES", "SET", "NEW", "VERIFIED", "DR"
        ));
        for r in &rows {
            let ver = match &r.verified {
                Some(x) => format!(
                    "{} {} {}",
                    if x.ok { "ok" } else { "FAILED" },
                    x.level,
                    &recache_ops::backup::format_time(x.at_ms)[5..16]
                ),
                None => "never".into(),
            };
            out.push_str(&format!(
                "{:<21} {:<21} {:<11} {:<9} {:>9} {:>10} {:>9} {:<24} {:<8}\n",
                r.id,
                r.time,
                r.kind,
                r.trigger,
                r.entries,
                human(r.set_bytes),
                human(r.copied_bytes),
                ver,
                r.dr
            ));
        }
        if rows.is_empty() {
            out.push_str("  (no complete sets)\n");
        }
        if !unfinished.is_empty() {
            out.push_str(&format!(
                "  {} unfinished set(s) without a manifest (never restored; `backup prune` removes them): {}\n",
                unfinished.len(),
                unfinished.join(", ")
            ));
        }
        for (set, why) in &invalid {
            out.push_str(&format!("  INVALID {set}: {why}\n"));
        }
        if let Some(a) = v["newest_age_seconds"].as_f64() {
            out.push_str(&format!("  newest set: {:.0} s old", a));
            if let Some(s) = v["schedule_seconds"].as_f64() {
                out.push_str(&format!(
                    "; schedule every {s:.0} s (RPO at most {s:.0} s plus the backup's own time)"
                ));
            }
            if let Some(r) = v["rpo_target_seconds"].as_f64() {
                out.push_str(&format!(
                    "; RPO target {r:.0} s: {}",
                    if a <= r { "met" } else { "MISSED" }
                ));
            }
            out.push('\n');
        }
        out
    });
    Ok(if v["rpo_met"] == json!(false) { EXIT_PROBLEM } else { 0 })
}

fn human(b: u64) -> String {
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.1} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

async fn verify_set(
    c: &Common,
    id: Option<String>,
    level: Level,
    subset: Option<String>,
    force: bool,
) -> Result<i32, Exit> {
    let subset = subset.as_deref().map(Subset::parse).transpose().map_err(Exit::config)?;
    let (t, _) = targets(c)?;
    let w = which(c);
    let id = resolve(&t, w, id.as_deref(), false).await.map_err(berr)?;
    let target = t.get(w).map_err(berr)?;
    let ctx = LocalCtx::new("verify", c.format == OutputFormat::Text);
    let opts = VerifyOptions {
        level,
        subset,
        parallel: t.config.backup.parallel,
        record: true,
        config: t.config.clone(),
        force,
    };
    let res = verify(target, w, &id, &opts, ctx.as_ref()).await;
    ctx.finish();
    let v = res.map_err(berr)?;
    // Also in the audit log, when metadata is reachable.
    if let Ok((metadata, _)) = recache_storage::roles::factory::open_metadata(&t.config).await {
        recache_ops::backup::audit(
            metadata.as_ref(),
            "backup.verify",
            serde_json::to_value(&v).unwrap_or_default(),
        )
        .await;
    }
    let value = serde_json::to_value(&v).unwrap_or_default();
    print(c.format, &value, |x| {
        format!("backup set {id} on {}:\n{}", target.label, verification_text(x))
    });
    Ok(if v.ok { 0 } else { EXIT_PROBLEM })
}

async fn restore(c: &Common, id: Option<String>, latest: bool, force: bool) -> Result<i32, Exit> {
    let (t, _) = targets(c)?;
    let w = which(c);
    if id.is_none() && !latest {
        return Err(Exit::config(
            "name the set to restore (see `backup list`) or pass --latest",
        ));
    }
    let id = resolve(&t, w, id.as_deref(), true).await.map_err(berr)?;
    let v = match open_stores(c).await? {
        Some(r) => {
            let ctx = LocalCtx::new("restore", c.format == OutputFormat::Text);
            let res = run_restore(&r, &t, w, &id, force, None, ctx.as_ref()).await;
            ctx.finish();
            res.map_err(berr)?
        }
        None => hand_to_gateway(c, BACKUP_RESTORE, json!({"set": id, "force": force, "dr": c.dr})).await?,
    };
    print(c.format, &v, |v| {
        let mut out = format!(
            "restore of {} from {}: {} in {:.1} s (the measured RTO of this restore)\n  {} entries ({} written), {} audit events, {} jobs, {} client keys ({} already there); {} artifacts ({} copied, {} already there); {} pointers written ({} derived from their entries, {} without an entry skipped); vectors: {}\n",
            v["set"].as_str().unwrap_or(""),
            v["target"].as_str().unwrap_or(""),
            if v["ok"].as_bool().unwrap_or(false) { "complete" } else { "INCOMPLETE" },
            v["seconds"].as_f64().unwrap_or(0.0),
            v["entries"], v["entries_written"], v["audit_events"], v["jobs"],
            v["keys"], v["keys_present"],
            v["artifacts"], v["artifacts_copied"], v["artifacts_present"],
            v["pointers_written"], v["pointers_derived"], v["pointers_skipped"],
            v["vectors"].as_str().unwrap_or(""),
        );
        for w in v["warnings"].as_array().into_iter().flatten() {
            out.push_str(&format!("  warning: {}\n", w.as_str().unwrap_or("")));
        }
        for p in v["problems"].as_array().into_iter().flatten() {
            out.push_str(&format!("  problem: {}\n", p.as_str().unwrap_or("")));
        }
        out
    });
    Ok(if v["ok"].as_bool().unwrap_or(false) {
        0
    } else {
        EXIT_PROBLEM
    })
}

async fn prune_sets(c: &Common, dry_run: bool, grace: Option<String>) -> Result<i32, Exit> {
    let (t, _) = targets(c)?;
    let target = t.get(which(c)).map_err(berr)?;
    let grace = parse_duration(grace.as_deref().unwrap_or(&t.config.backup.prune_grace)).map_err(Exit::config)?;
    let r = prune::prune(target, &t.config.backup, grace.as_millis() as i64, dry_run)
        .await
        .map_err(berr)?;
    let v = serde_json::to_value(&r).unwrap_or_default();
    print(c.format, &v, |_| {
        let mut out = format!(
            "backup prune on {}{}:\n",
            target.label,
            if dry_run { " (dry run: nothing deleted)" } else { "" }
        );
        for d in &r.sets {
            out.push_str(&format!(
                "  {} {:<21} {}\n",
                if d.keep { "keep  " } else { "delete" },
                d.set,
                d.why
            ));
        }
        for d in &r.refused {
            out.push_str(&format!("  REFUSED {:<21} {}\n", d.set, d.why));
        }
        if !r.pool_collected && !r.refused.is_empty() {
            out.push_str("  pool: not collected (a set that cannot be read may refer to any pooled artifact)\n");
            return out;
        }
        out.push_str(&format!(
            "  pool: {} artifacts, {} referenced by the kept sets, {} {} ({}), {} unreferenced kept within the grace period\n",
            r.pool_artifacts,
            r.pool_referenced,
            r.pool_deleted,
            if dry_run { "would be deleted" } else { "deleted" },
            human(r.pool_deleted_bytes),
            r.pool_kept_in_grace
        ));
        out
    });
    // A set that could not be trusted is a problem for the operator to look at.
    Ok(if r.refused.is_empty() { 0 } else { 1 })
}
