//! Data destroyed on purpose, as a loss drill makes it (`docs/drills.md`).
//! Each function acts on the stores directly (unguarded where that matters:
//! a loss is not a call the breaker should refuse) and returns what it
//! destroyed. A managed drill calls them in its own process; against a
//! running gateway (`drill run --url`) they run there as a `drill-wipe` job,
//! which the gateway refuses unless its own `[drill.engines.<store>]
//! allow_destructive` is set for every store it names.

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::recovery::jobs::Registered;
use crate::recovery::Recovery;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::queue::Job;
use recache_storage::roles::{ArtifactId, BoxFuture, Result, Roles};

pub const DRILL_WIPE: &str = "drill-wipe";

/// `drill-wipe`: payload `{"stores": ["vectors", "metadata", "index",
/// "artifacts"], "fraction": 1.0}` (artifacts: the share deleted). Stores are
/// wiped in the order given (vectors before metadata: their keys come from it).
pub const JOB_KIND: Registered = Registered {
    kind: DRILL_WIPE,
    // Nothing but the queue: a drill may hold a breaker open while it wipes.
    needs: &[],
    run: run_wipe,
};

fn run_wipe<'a>(
    recovery: &'a Recovery,
    job: &'a Job,
    _ctx: &'a dyn JobCtx,
) -> BoxFuture<'a, std::result::Result<Value, JobError>> {
    Box::pin(async move {
        let stores: Vec<String> = job.payload["stores"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if stores.is_empty() {
            return Err(JobError::Fatal(
                "drill-wipe: payload {\"stores\": [...]} names no store".into(),
            ));
        }
        for s in &stores {
            if !matches!(s.as_str(), "index" | "artifacts" | "metadata" | "vectors") {
                return Err(JobError::Fatal(format!(
                    "drill-wipe: unknown store '{s}' (index, artifacts, metadata, vectors)"
                )));
            }
            if !recovery.config.drill.engine(s).allow_destructive {
                return Err(JobError::Fatal(format!(
                    "drill-wipe refused: this gateway's [drill.engines.{s}] allow_destructive is not set \
                     (never set it for a production store)"
                )));
            }
        }
        let fraction = job.payload["fraction"].as_f64().unwrap_or(1.0);
        let roles = &recovery.cache.roles;
        let fail = JobError::Backend;
        let mut out = serde_json::Map::new();
        for s in &stores {
            let v = match s.as_str() {
                "vectors" => json!(wipe_vectors(roles).await.map_err(fail)?),
                "metadata" => json!(wipe_metadata(roles).await.map_err(fail)?),
                "index" => json!(wipe_index(roles).await.map_err(fail)?),
                _ => {
                    let (deleted, listed) = delete_artifacts(roles, fraction).await.map_err(fail)?;
                    json!({"deleted": deleted, "listed": listed})
                }
            };
            out.insert(s.clone(), v);
        }
        tracing::warn!(stores = ?stores, result = %serde_json::Value::Object(out.clone()), "drill-wipe: stores wiped on purpose (a drill)");
        Ok(Value::Object(out))
    })
}

/// Every pointer and the generation marker, as a Redis restarting empty would lose them.
pub async fn wipe_index(roles: &Roles) -> Result<u64> {
    roles.index.wipe().await
}

/// Deletes `fraction` of the artifacts (every `1/fraction`-th by id, so the
/// choice is spread evenly). Returns (deleted, listed).
pub async fn delete_artifacts(roles: &Roles, fraction: f64) -> Result<(u64, u64)> {
    let listed = roles.artifacts.list().await?;
    let total = listed.len() as u64;
    let picked: Vec<ArtifactId> = listed
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let per_million = (fraction.clamp(0.0, 1.0) * 1e6).round() as u64;
            (*i as u64 + 1) * per_million / 1_000_000 > *i as u64 * per_million / 1_000_000
        })
        .map(|(_, a)| a.id)
        .collect();
    let deleted = futures_util::stream::iter(picked)
        .map(|id| async move { roles.artifacts.delete(id).await.unwrap_or(false) })
        .buffer_unordered(32)
        .filter(|d| std::future::ready(*d))
        .count()
        .await;
    Ok((deleted as u64, total))
}

/// Every entry row, in one statement (the audit log and the job queue stay,
/// so recovery jobs can run).
pub async fn wipe_metadata(roles: &Roles) -> Result<u64> {
    Ok(roles.metadata.purge_expired(i64::MAX).await?.len() as u64)
}

/// Every vector of the entries metadata knows (call before wiping metadata).
pub async fn wipe_vectors(roles: &Roles) -> Result<u64> {
    if !roles.vectors.enabled() {
        return Ok(0);
    }
    let mut after = None;
    let mut n = 0;
    loop {
        let page = roles.metadata.entries_page(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key);
        n += roles.vectors.delete(page.iter().map(|e| e.key).collect()).await?;
    }
    Ok(n)
}
