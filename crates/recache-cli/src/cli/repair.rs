//! `recache repair`: fixes what `audit` finds. Every repair has `--dry-run`.

use clap::{ArgGroup, Args};

use super::ops::{open, pairs, parse_duration, print, Exit};
use super::{ConfigArgs, OutputFormat, EXIT_PROBLEM};
use recache_ops::recovery::local::LocalCtx;
use recache_storage::roles::factory::IndexAccess;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("what").required(true).args(["missing_artifacts", "reconcile_metadata", "orphans", "index"])))]
pub struct RepairArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Buy back the artifacts of entries whose artifact is gone (costs money: most valuable first).
    #[arg(long)]
    pub missing_artifacts: bool,
    /// Budget for --missing-artifacts (USD); the hourly warmer budget applies too.
    #[arg(long)]
    pub max_cost_usd: Option<f64>,
    /// Recreate missing entry rows from the artifact envelopes; mark rows whose artifact is gone.
    #[arg(long)]
    pub reconcile_metadata: bool,
    /// Delete artifacts no entry uses.
    #[arg(long)]
    pub orphans: bool,
    /// With --orphans: an artifact written within this period is never an orphan (e.g. 24h).
    #[arg(long, default_value = "24h")]
    pub grace: String,
    /// Make the index agree with metadata (missing, stale and dangling pointers).
    #[arg(long)]
    pub index: bool,
    /// Print what would change (and the estimated provider cost); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// Queues the repair for the gateway's workers (the embedded index is theirs) and waits for it.
async fn hand_to_gateway(a: &RepairArgs) -> Result<i32, Exit> {
    use recache_ops::recovery::jobs::{default_priority, REBUILD_INDEX, RECONCILE_METADATA, REFETCH, REPAIR_ORPHANS};
    use recache_storage::queue::NewJob;
    let r = super::ops::open_queue(&a.config).await?;
    let (kind, mut payload) = if a.missing_artifacts {
        (REFETCH, serde_json::json!({"scan": true}))
    } else if a.orphans {
        let grace = parse_duration(&a.grace).map_err(Exit::config)?;
        (
            REPAIR_ORPHANS,
            serde_json::json!({"grace_ms": grace.as_millis() as i64}),
        )
    } else if a.reconcile_metadata {
        (RECONCILE_METADATA, serde_json::json!({}))
    } else {
        (REBUILD_INDEX, serde_json::json!({}))
    };
    if let Some(m) = a.max_cost_usd {
        payload["max_cost_usd"] = serde_json::json!(m);
    }
    eprintln!(
        "recache repair: the embedded stores belong to the running gateway; its workers run this repair ({kind})"
    );
    let job = NewJob::new(kind, payload)
        .priority(default_priority(kind))
        .unique(format!("{kind}:repair"))
        .max_attempts(r.config.warmer.max_attempts);
    let j = super::warmer::run_in_gateway(&r, job, 3600, a.format == OutputFormat::Text).await?;
    let mut v = j.result.unwrap_or_default();
    v["job"] = serde_json::json!(j.id);
    print(a.format, &v, |v| {
        format!("repair {kind} (job #{}): {}\n", j.id, pairs(v))
    });
    let unrepaired = v["refused"].as_u64().unwrap_or(0) + v["kept_unregistered"].as_u64().unwrap_or(0);
    Ok(if unrepaired > 0 { EXIT_PROBLEM } else { 0 })
}

pub async fn run(a: RepairArgs) -> i32 {
    super::ops::exit_code("repair", repair(a).await)
}

async fn repair(a: RepairArgs) -> Result<i32, Exit> {
    let grace = parse_duration(&a.grace).map_err(Exit::config)?;
    if a.max_cost_usd.is_some_and(|m| m.is_nan() || m < 0.0) {
        return Err(Exit::config("--max-cost-usd must be a non-negative number"));
    }
    // Dry runs only read; the rest write (orphans: to the artifact store).
    // An embedded store belongs to the running gateway: then the repair is
    // handed to the gateway's workers through the queue, and awaited.
    let writes = !a.dry_run;
    let access = if writes {
        IndexAccess::Write
    } else {
        IndexAccess::ReadOnly
    };
    let r = match open(&a.config, access, "warn").await {
        Err(Exit(_, msg)) if writes && msg.contains("in use by another recache process") => {
            return hand_to_gateway(&a).await;
        }
        other => other?,
    };
    let (label, fut) = if a.missing_artifacts {
        ("refetch", "missing-artifacts")
    } else if a.reconcile_metadata {
        ("reconcile", "reconcile-metadata")
    } else if a.orphans {
        ("orphans", "orphans")
    } else {
        ("index", "index")
    };
    let ctx = LocalCtx::new(label, a.format == OutputFormat::Text);
    let res = match fut {
        "missing-artifacts" => {
            r.repair_missing_artifacts(a.max_cost_usd, a.dry_run, ctx.as_ref())
                .await
        }
        "reconcile-metadata" => r.repair_reconcile(a.dry_run, ctx.as_ref()).await,
        "orphans" => {
            r.repair_orphans(grace.as_millis() as i64, a.dry_run, ctx.as_ref())
                .await
        }
        _ => r.repair_index(a.dry_run, ctx.as_ref()).await,
    };
    ctx.finish();
    let _ = r.cache.roles.index.flush().await;
    let v = res.map_err(|e| Exit::problem(format!("repair {fut} stopped: {e:?}")))?;
    print(a.format, &v, |v| {
        let mut out = format!(
            "repair {fut}{}: {}\n",
            if a.dry_run { " (dry run)" } else { "" },
            pairs(v)
        );
        if let Some(errors) = v["errors"].as_array().filter(|e| !e.is_empty()) {
            for e in errors {
                out.push_str(&format!("  refused: {}\n", e.as_str().unwrap_or("")));
            }
        }
        out
    });
    let unrepaired = v["refused"].as_u64().unwrap_or(0) + v["kept_unregistered"].as_u64().unwrap_or(0);
    Ok(if unrepaired > 0 && !a.dry_run { EXIT_PROBLEM } else { 0 })
}
