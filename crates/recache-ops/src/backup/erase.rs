//! Erasure, or crypto-shredding (`recache erase`): a tenant's entries are
//! purged from every store, its data keys are destroyed in metadata, and the
//! key file of every backup target (primary and DR) is rewritten without
//! them, so the copies of its answers in older sets and on the DR target can
//! no longer be opened; a restore of such a set leaves them out and counts
//! them. The audit log keeps the fact (who, when, how many), not the content.
//!
//! The `erase` job runs the steps in this order, each safe to run again, so
//! a job taken over after a crash finishes what was left.

use serde_json::{json, Value};

use super::Targets;
use crate::recovery::jobs::Registered;
use crate::recovery::purge::filter_of;
use crate::recovery::Recovery;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::queue::Job;
use recache_storage::roles::{now_ms, BoxFuture};

pub const ERASE: &str = "erase";

pub const JOB_KIND: Registered = Registered {
    kind: ERASE,
    needs: &["metadata", "index", "artifacts", "vectors"],
    run: run_erase,
};

fn run_erase<'a>(recovery: &'a Recovery, job: &'a Job, ctx: &'a dyn JobCtx) -> BoxFuture<'a, Result<Value, JobError>> {
    Box::pin(erase(recovery, job.payload.clone(), ctx))
}

async fn erase(recovery: &Recovery, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
    let f = filter_of(&p)?;
    if f != recache_storage::roles::filter::EntryFilter::tenant(&f.tenant) {
        return Err(JobError::Fatal(
            "an erasure takes a whole tenant (no other filter)".into(),
        ));
    }
    // 1. The entries, from every store (the purge checkpoints into this payload).
    p["audit"] = json!(false);
    let purged = recovery.purge(p.clone(), ctx).await?;
    // 2. The data keys, in metadata.
    let meta = &recovery.cache.roles.metadata;
    let destroyed = match &recovery.cache.roles.keyring {
        Some(k) => k
            .destroy_tenant(&f.tenant)
            .await
            .map_err(|e| JobError::Failed(e.to_string()))?,
        None => meta.destroy_data_keys(f.tenant.clone(), now_ms()).await?,
    };
    // 3. Every target's key file (a target that fails is retried: the job fails).
    let keys = meta.list_data_keys(None).await?;
    let mut targets_out = json!({});
    if recovery
        .config
        .backup
        .target
        .as_deref()
        .is_some_and(|t| !t.trim().is_empty())
    {
        let t = Targets::open(recovery.config.clone(), &recovery.env).map_err(|e| JobError::Fatal(e.to_string()))?;
        for (which, target) in std::iter::once(("primary", &t.primary)).chain(t.dr.as_ref().map(|d| ("dr", d))) {
            let (rows, gone) = super::keyfile::write_merged(target, keys.clone())
                .await
                .map_err(|e| JobError::Failed(format!("the key file on {}: {e}", target.label)))?;
            targets_out[which] = json!({"target": target.label, "keys": rows, "destroyed": gone});
        }
    }
    let mut out = purged;
    out["data_keys_destroyed"] = json!(destroyed);
    out["key_files"] = targets_out;
    recovery.audit_tenant_job(ERASE, &f.tenant, &p, ctx, &out).await;
    Ok(out)
}
