//! Bulk purge ("Data protection" in `ARCHITECTURE.md`): every entry an
//! [`EntryFilter`] takes leaves the index, the vectors, the artifact store,
//! metadata and the spool, a page at a time. A `purge` job checkpoints its
//! counts after each page, so a purge stopped at any point (even `kill -9`)
//! resumes where it was; a page done twice deletes nothing twice, since
//! metadata, the list the pages come from, goes last.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::Recovery;
use recache_core::key::CacheKey;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::roles::filter::EntryFilter;
use recache_storage::roles::{now_ms, ArtifactId, AuditEvent, EntryRecord};

pub const PURGE: &str = "purge";

/// Entries per page (a job's payload may ask for fewer: `page`).
pub const PAGE: u32 = 500;

/// The stores a purge counts, in the order it deletes from them.
pub const STORES: [&str; 5] = ["spool", "index", "vectors", "artifacts", "metadata"];

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// The filter a purge job's payload names.
pub fn filter_of(p: &Value) -> Result<EntryFilter, JobError> {
    let f: EntryFilter = serde_json::from_value(p["filter"].clone())
        .map_err(|e| JobError::Fatal(format!("a purge needs a filter: {e}")))?;
    f.validate().map_err(JobError::Fatal)?;
    Ok(f)
}

impl Recovery {
    /// What a purge would take, changing nothing: the entries in metadata
    /// and the registrations waiting in this process's spool.
    pub async fn purge_count(&self, f: &EntryFilter) -> Result<Value, JobError> {
        f.validate().map_err(JobError::Fatal)?;
        let entries = self.cache.roles.metadata.count_selected(f.clone()).await?;
        let spooled = match &self.cache.spool {
            Some(s) => s.count_entries(|e| f.matches(e)),
            None => 0,
        };
        Ok(json!({"filter": f, "entries": entries, "spool": spooled, "dry_run": true}))
    }

    /// The `purge` job: payload `{"filter": …}` (plus its own checkpoints;
    /// `page` sets the page size, `actor` who asked). Returns the count of
    /// what left each store.
    pub async fn purge(&self, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let f = filter_of(&p)?;
        let roles = &self.cache.roles;
        let page = p["page"].as_u64().map_or(PAGE, |n| n.clamp(1, 10_000) as u32);
        if p.get("total").is_none() {
            p["total"] = json!(roles.metadata.count_selected(f.clone()).await?);
            ctx.checkpoint(p.clone()).await?;
        } else {
            tracing::info!(
                job = ctx.job_id(),
                done = u(&p, "metadata"),
                "purge: resuming from its checkpoint"
            );
        }
        let started = Instant::now();
        // Registrations waiting in the spool never reached metadata: taken first.
        if !p["spool_done"].as_bool().unwrap_or(false) {
            if let Some(spool) = &self.cache.spool {
                let taken = spool
                    .take_entries(|e| f.matches(e))
                    .await
                    .map_err(|e| JobError::Failed(format!("purge: the spool: {e}")))?;
                self.purge_stores(&taken, &mut p).await?;
                p["spool"] = json!(u(&p, "spool") + taken.len() as u64);
            }
            p["spool_done"] = json!(true);
            ctx.checkpoint(p.clone()).await?;
        }
        let mut after = p["cursor"].as_str().and_then(CacheKey::from_hex);
        loop {
            let entries = roles.metadata.select_entries(f.clone(), after, page).await?;
            let Some(last) = entries.last().map(|e| e.key) else {
                break;
            };
            self.purge_stores(&entries, &mut p).await?;
            let pairs = entries.iter().map(|e| (e.key, e.artifact)).collect();
            p["metadata"] = json!(u(&p, "metadata") + roles.metadata.delete_entries(pairs).await?);
            p["scanned"] = json!(u(&p, "scanned") + entries.len() as u64);
            after = Some(last);
            p["cursor"] = json!(last.hex());
            ctx.checkpoint(p.clone()).await?;
            let total = u(&p, "total");
            ctx.progress(u(&p, "scanned"), Some(total.max(u(&p, "scanned"))));
        }
        let _ = roles.index.flush().await;
        // Deleted answers leave the disk now, not at the store's next compaction.
        let reclaimed = if u(&p, "artifacts") > 0 {
            roles.artifacts.reclaim().await?
        } else {
            0
        };
        let secs = started.elapsed().as_secs_f64();
        let mut out =
            json!({"filter": f, "entries": u(&p, "scanned"), "seconds_this_run": secs, "reclaimed_bytes": reclaimed});
        for s in STORES {
            out[s] = json!(u(&p, s));
        }
        if p["audit"] == json!(false) {
            return Ok(out); // the caller (an erasure) writes one event for the whole
        }
        self.audit_tenant_job(PURGE, &f.tenant, &p, ctx, &out).await;
        Ok(out)
    }

    /// The audit event of a tenant's purge or erasure: who asked (the
    /// payload's `actor`), the job and its counts; never content.
    pub async fn audit_tenant_job(&self, action: &str, tenant: &str, p: &Value, ctx: &dyn JobCtx, out: &Value) {
        self.cache
            .audit(AuditEvent {
                id: recache_engine::cache::event_id(),
                at_ms: now_ms(),
                tenant: Some(tenant.to_string()),
                actor: p["actor"].as_str().unwrap_or("cli").to_string(),
                action: action.into(),
                cache_key: None,
                detail: json!({"job": ctx.job_id(), "result": out}),
            })
            .await;
    }

    /// Deletes what `entries` name from the index, the vectors and the
    /// artifact store (metadata is the caller's), adding to `p`'s counts.
    async fn purge_stores(&self, entries: &[EntryRecord], p: &mut Value) -> Result<(), JobError> {
        if entries.is_empty() {
            return Ok(());
        }
        let roles = &self.cache.roles;
        let keys: Vec<CacheKey> = entries.iter().map(|e| e.key).collect();
        p["index"] = json!(u(p, "index") + roles.index.delete_many(keys.clone()).await?);
        if roles.vectors.enabled() {
            p["vectors"] = json!(u(p, "vectors") + roles.vectors.delete(keys).await?);
        }
        let ids: Vec<ArtifactId> = entries.iter().map(|e| e.artifact).collect();
        let gone: Vec<bool> = futures_util::stream::iter(ids)
            .map(|id| async move { roles.artifacts.delete(id).await })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        p["artifacts"] = json!(u(p, "artifacts") + gone.iter().filter(|g| **g).count() as u64);
        Ok(())
    }
}

/// A job runner that runs only `kinds` of a [`Recovery`]: a CLI process (or a
/// gateway without warmer workers) runs its own purge and nothing else.
pub struct OnlyKinds {
    pub recovery: std::sync::Arc<Recovery>,
    pub kinds: Vec<&'static str>,
}

impl recache_storage::queue::worker::JobRunner for OnlyKinds {
    fn kinds(&self) -> Vec<String> {
        self.kinds.iter().map(|k| k.to_string()).collect()
    }
    fn needs(&self, kind: &str) -> Vec<&'static str> {
        self.recovery.needs(kind)
    }
    fn run<'a>(
        &'a self,
        job: &'a recache_storage::queue::Job,
        ctx: &'a dyn JobCtx,
    ) -> recache_storage::roles::BoxFuture<'a, Result<Value, JobError>> {
        recache_storage::queue::worker::JobRunner::run(self.recovery.as_ref(), job, ctx)
    }
    fn finished(&self, job: &recache_storage::queue::Job, outcome: &str, elapsed: std::time::Duration) {
        recache_storage::queue::worker::JobRunner::finished(self.recovery.as_ref(), job, outcome, elapsed)
    }
}

/// Enqueues a purge (one live job per filter: asking twice, or again after
/// a crash, joins the job there is) and returns its id and whether it is new.
pub async fn enqueue(
    recovery: &Recovery,
    kind: &str,
    payload: Value,
) -> Result<(i64, bool), recache_storage::roles::BackendError> {
    let unique = format!("{kind}:{}", payload["filter"]);
    let job = recache_storage::queue::NewJob::new(kind, payload)
        .priority(super::jobs::default_priority(PURGE))
        .unique(unique)
        .max_attempts(recovery.config.warmer.max_attempts.max(3));
    let e = recovery.queue.enqueue(job).await?;
    Ok((e.id, e.created))
}

/// Runs jobs of `kinds` in this process until job `id` has ended (succeeded
/// or dead); a job left running by a process that died is taken over once
/// its lease expires, and resumes from its checkpoint.
pub async fn run_here_until_done(recovery: std::sync::Arc<Recovery>, kinds: Vec<&'static str>, id: i64, role: &str) {
    use recache_storage::queue::worker::{run, WorkerConfig};
    use recache_storage::queue::JobState;
    let cfg = WorkerConfig::from_config(&recovery.config, role);
    let poll = cfg.poll.max(std::time::Duration::from_millis(50));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let runner = std::sync::Arc::new(OnlyKinds {
        recovery: recovery.clone(),
        kinds,
    });
    let worker = tokio::spawn(run(
        recovery.queue.clone(),
        runner,
        recovery.cache.roles.breakers.clone(),
        cfg,
        recovery.progress.clone(),
        rx,
    ));
    loop {
        tokio::time::sleep(poll).await;
        match recovery.queue.get(id).await {
            Ok(Some(j)) if matches!(j.state, JobState::Succeeded | JobState::Dead) => break,
            Ok(None) => break,
            _ => {}
        }
    }
    let _ = tx.send(true);
    let _ = worker.await;
}
