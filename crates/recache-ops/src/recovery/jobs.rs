//! The job kinds. Each reads its cursor from the payload, checkpoints it as
//! it goes (a job taken over by another worker resumes there), and returns
//! a JSON summary that `warmer status` and the audit log show.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::fetch::{Bought, Purchase};
use super::listing::{ArtifactListing, EntryPages};
use super::Recovery;
use recache_core::artifact;
use recache_core::endpoint::Endpoint;
use recache_core::key::CacheKey;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::queue::Job;
use recache_storage::roles::keyring::{open_artifact, open_text};
use recache_storage::roles::BoxFuture;
use recache_storage::roles::{now_ms, ArtifactId, AuditEvent, EntryRecord};

pub const REBUILD_INDEX: &str = "rebuild-index";
pub const RECONCILE_METADATA: &str = "reconcile-metadata";
pub const REFETCH: &str = "refetch";
pub const REFRESH_STALE: &str = "refresh-stale";
pub const WARM: &str = "warm";
/// Re-embeds live entries into the active embedders' collections.
pub const REBUILD_VECTORS: &str = "rebuild-vectors";
/// Deletes orphaned artifacts: `recache repair --orphans` handed to the
/// gateway that owns the embedded artifact store. Payload: `{"grace_ms": n}`.
pub const REPAIR_ORPHANS: &str = "repair-orphans";

/// The kinds recovery itself runs. Layers built on it (backups) add theirs
/// with [`Recovery::register`]; [`Recovery::kinds`] lists them all.
pub const BUILTIN: [&str; 9] = [
    REBUILD_INDEX,
    RECONCILE_METADATA,
    REFETCH,
    REFRESH_STALE,
    WARM,
    REBUILD_VECTORS,
    REPAIR_ORPHANS,
    super::purge::PURGE,
    super::reseal::RESEAL,
];

/// Runs one job of a registered kind.
pub type RunFn = for<'a> fn(&'a Recovery, &'a Job, &'a dyn JobCtx) -> BoxFuture<'a, Result<Value, JobError>>;

/// A job kind that a layer above recovery registers at start-up.
#[derive(Clone, Copy)]
pub struct Registered {
    pub kind: &'static str,
    /// The backends (breaker names) it needs; the queue itself needs metadata.
    pub needs: &'static [&'static str],
    pub run: RunFn,
}

/// The backends (breaker names) a built-in kind needs; the queue itself needs metadata.
fn builtin_needs(kind: &str) -> Vec<&'static str> {
    match kind {
        REBUILD_INDEX => vec!["metadata", "index"],
        RECONCILE_METADATA => vec!["metadata", "artifacts"],
        REFETCH | REFRESH_STALE => vec!["metadata", "artifacts", "index"],
        WARM => vec!["artifacts", "index"],
        REBUILD_VECTORS => vec!["metadata", "vectors"],
        REPAIR_ORPHANS => vec!["metadata", "artifacts"],
        super::purge::PURGE => vec!["metadata", "index", "artifacts", "vectors"],
        super::reseal::RESEAL => vec!["metadata", "index", "artifacts"],
        _ => vec!["metadata"],
    }
}

/// Default priorities: cheap, provider-free repairs first.
pub fn default_priority(kind: &str) -> i64 {
    match kind {
        REBUILD_INDEX => 100,
        RECONCILE_METADATA => 90,
        REFRESH_STALE => 50,
        REFETCH => 40,
        REBUILD_VECTORS => 30,
        REPAIR_ORPHANS => 20,
        // Asked for by an operator, and what it deletes must not be served.
        super::purge::PURGE => 95,
        // A migration in the background: after every repair.
        super::reseal::RESEAL => 10,
        _ => 0,
    }
}

fn cursor_key(v: &Value) -> Option<CacheKey> {
    v.as_str().and_then(CacheKey::from_hex)
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

impl Recovery {
    /// Adds a job kind (at start-up, before a worker runs).
    pub fn register(mut self, kind: Registered) -> Self {
        self.registered.retain(|k| k.kind != kind.kind);
        self.registered.push(kind);
        self
    }

    /// Every kind this recovery runs: the built-in ones, then the registered ones.
    pub fn kinds(&self) -> Vec<&'static str> {
        BUILTIN
            .iter()
            .copied()
            .chain(self.registered.iter().map(|k| k.kind))
            .collect()
    }

    /// The backends (breaker names) a kind needs.
    pub fn needs(&self, kind: &str) -> Vec<&'static str> {
        match self.registered.iter().find(|k| k.kind == kind) {
            Some(k) => k.needs.to_vec(),
            None => builtin_needs(kind),
        }
    }

    pub(crate) async fn run_job(&self, job: &Job, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let started = Instant::now();
        let mut result = match job.kind.as_str() {
            REBUILD_INDEX => self.rebuild_index(job.payload.clone(), ctx).await?,
            RECONCILE_METADATA => self.reconcile_metadata(ctx, false).await?,
            REFETCH => self.refetch(job.payload.clone(), ctx).await?,
            REFRESH_STALE => self.refresh_stale(job.payload.clone(), ctx).await?,
            WARM => self.warm(job.payload.clone(), ctx).await?,
            REBUILD_VECTORS => self.rebuild_vectors(job.payload.clone(), ctx).await?,
            REPAIR_ORPHANS => {
                let grace_ms = job.payload.get("grace_ms").and_then(Value::as_i64).unwrap_or(3_600_000);
                self.repair_orphans(grace_ms, false, ctx).await?
            }
            // A purge and a reseal write their own audit events (with the tenant).
            super::purge::PURGE | super::reseal::RESEAL => {
                let mut result = match job.kind.as_str() {
                    super::purge::PURGE => self.purge(job.payload.clone(), ctx).await?,
                    _ => self.reseal(job.payload.clone(), ctx).await?,
                };
                result["seconds"] = json!(started.elapsed().as_secs_f64());
                return Ok(result);
            }
            other => match self.registered.iter().find(|k| k.kind == other) {
                // A registered kind keeps its own records (a backup writes its set's audit events).
                Some(k) => {
                    let mut result = (k.run)(self, job, ctx).await?;
                    result["seconds"] = json!(started.elapsed().as_secs_f64());
                    return Ok(result);
                }
                None => return Err(JobError::Fatal(format!("unknown job kind '{other}'"))),
            },
        };
        result["seconds"] = json!(started.elapsed().as_secs_f64());
        if job.kind != WARM {
            self.cache
                .audit(AuditEvent {
                    id: recache_engine::cache::event_id(),
                    at_ms: now_ms(),
                    tenant: None,
                    actor: "warmer".into(),
                    action: format!("repair.{}", job.kind),
                    cache_key: None,
                    detail: json!({"job": job.id, "result": result}),
                })
                .await;
        }
        Ok(result)
    }

    /// Recreates index pointers from metadata, page by page, without
    /// replacing pointers written since the loss (they are newer).
    pub async fn rebuild_index(&self, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let roles = &self.cache.roles;
        if p.get("total").is_none() {
            p["total"] = json!(roles.metadata.count_entries().await?);
        }
        let total = u(&p, "total");
        let mut pages = EntryPages::new(self, cursor_key(&p["cursor"]));
        if pages.after.is_some() {
            tracing::info!(
                scanned = u(&p, "scanned"),
                "rebuild-index: resuming from its checkpoint"
            );
        }
        let (mut scanned, mut written) = (u(&p, "scanned"), u(&p, "written"));
        let started = Instant::now();
        while let Some(page) = pages.next(None).await? {
            let now = now_ms();
            let retain = self.retain_ms();
            let pointers: Vec<_> = page
                .iter()
                .filter(|e| !e.artifact_missing && e.expires_at_ms + retain > now)
                .map(|e| (e.key, e.index_entry()))
                .collect();
            written += roles.index.put_many(pointers, true).await?;
            scanned += page.len() as u64;
            p["cursor"] = json!(pages.after.map(|k| k.hex()));
            p["scanned"] = json!(scanned);
            p["written"] = json!(written);
            ctx.checkpoint(p.clone()).await?;
            ctx.progress(scanned, Some(total.max(scanned)));
        }
        let secs = started.elapsed().as_secs_f64();
        Ok(json!({"scanned": scanned, "written": written,
                  "entries_per_second": if secs > 0.0 { scanned as f64 / secs } else { 0.0 }}))
    }

    /// Marks entries whose artifact is gone (and clears marks that no longer
    /// hold). Returns the artifacts no entry uses, how many artifacts are
    /// stored, and how many entries miss theirs.
    pub(crate) async fn mark_missing(
        &self,
        ctx: &dyn JobCtx,
        dry_run: bool,
    ) -> Result<(Vec<ArtifactId>, usize, u64), JobError> {
        let roles = &self.cache.roles;
        let mut listing = ArtifactListing::new(roles.artifacts.list().await?);
        let total = roles.metadata.count_entries().await.unwrap_or(0);
        let mut pages = EntryPages::new(self, None);
        let (mut scanned, mut missing) = (0u64, 0u64);
        while let Some(page) = pages.next(None).await? {
            let (mut gone, mut back) = (Vec::new(), Vec::new());
            for e in &page {
                let present = listing.mark_used(&e.artifact);
                if !present {
                    missing += 1;
                }
                match (present, e.artifact_missing) {
                    (false, false) => gone.push(e.key),
                    (true, true) => back.push(e.key),
                    _ => {}
                }
            }
            if !gone.is_empty() && !dry_run {
                roles.metadata.set_artifact_missing(gone, true).await?;
            }
            if !back.is_empty() && !dry_run {
                roles.metadata.set_artifact_missing(back, false).await?;
            }
            scanned += page.len() as u64;
            ctx.progress(scanned, Some(total.max(scanned)));
        }
        let unreferenced = listing.unused().map(|a| a.id).collect();
        Ok((unreferenced, listing.len(), missing))
    }

    /// Restores missing entry rows from the artifact envelopes (and their
    /// index pointers); marks rows whose artifact is gone.
    pub async fn reconcile_metadata(&self, ctx: &dyn JobCtx, dry_run: bool) -> Result<Value, JobError> {
        let roles = &self.cache.roles;
        let (unreferenced, stored, missing) = self.mark_missing(ctx, dry_run).await?;
        let (mut restored, mut unreadable, mut expired, mut superseded) = (0u64, 0u64, 0u64, 0u64);
        let now = now_ms();
        let retain = self.retain_ms();
        let total = unreferenced.len() as u64;
        for (i, chunk) in unreferenced.chunks(256).enumerate() {
            let mut batch = Vec::new();
            let reads = chunk.iter().map(|id| roles.artifacts.get(*id));
            let got = futures_util::future::join_all(reads).await;
            for (id, bytes) in chunk.iter().zip(got) {
                let Some(bytes) = bytes? else { continue };
                let envelope = open_artifact(roles.keyring.as_deref(), &bytes).await.ok();
                match envelope.and_then(|env| entry_from_artifact(*id, &bytes, &env)) {
                    Some(e) if e.expires_at_ms + retain > now => batch.push(e),
                    Some(_) => expired += 1,
                    None => unreadable += 1,
                }
            }
            let n = batch.len() as u64;
            if n > 0 && dry_run {
                for e in &batch {
                    if roles.metadata.get_entry(e.key).await?.is_none() {
                        restored += 1;
                    } else {
                        superseded += 1;
                    }
                }
            } else if n > 0 {
                let inserted = roles.metadata.insert_missing_entries(batch.clone()).await?;
                restored += inserted;
                superseded += n - inserted;
                let pointers = batch.iter().map(|e| (e.key, e.index_entry())).collect();
                roles.index.put_many(pointers, true).await?;
            }
            ctx.progress(((i + 1) * 256).min(total as usize) as u64, Some(total));
        }
        Ok(json!({"artifacts": stored, "entries_missing_artifact": missing,
                  (if dry_run { "would_restore" } else { "restored" }): restored,
                  "superseded": superseded, "expired": expired, "unreadable": unreadable, "dry_run": dry_run}))
    }

    /// Buys back the artifacts of entries marked missing, most valuable first,
    /// within `max_cost_usd` (payload) and the hourly budget.
    pub async fn refetch(&self, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        if p.get("scan").and_then(Value::as_bool).unwrap_or(true) && !p["scanned"].as_bool().unwrap_or(false) {
            self.mark_missing(ctx, false).await?;
            p["scanned"] = json!(true);
            ctx.checkpoint(p.clone()).await?;
        }
        let roles = &self.cache.roles;
        let now = now_ms();
        let r = self
            .buy_in_order(&mut p, "refetched", ctx, |limit| {
                roles.metadata.missing_entries(now, limit)
            })
            .await?;
        let left = roles
            .metadata
            .missing_entries(now_ms(), 10_000)
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        Ok(
            json!({"refetched": r.bought, "refused": r.refused, "spent_usd": r.spent,
                  "still_missing": left, "stopped": r.stopped, "errors": r.errors}),
        )
    }

    /// Refreshes entries that expired in the payload's window (an outage),
    /// most hit first, skipping entries nobody ever hit.
    pub(crate) async fn refresh_stale(&self, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let from = p["from_ms"].as_i64().unwrap_or(0);
        let to = p["to_ms"].as_i64().unwrap_or_else(now_ms).min(now_ms());
        let min_hits = p.get("min_hits").and_then(Value::as_u64).unwrap_or(1);
        let roles = &self.cache.roles;
        let r = self
            .buy_in_order(&mut p, "refreshed", ctx, |limit| async move {
                // Most hit first: once a page holds only entries below `min_hits`, nothing after it qualifies.
                let page = roles.metadata.expired_entries(from, to, limit).await?;
                Ok(page.into_iter().filter(|e| e.hit_count >= min_hits).collect())
            })
            .await?;
        Ok(
            json!({"refreshed": r.bought, "refused": r.refused, "spent_usd": r.spent, "stopped": r.stopped,
                  "errors": r.errors, "window_ms": [from, to]}),
        )
    }

    /// Buys entries back in the order `next` lists them (it is asked for
    /// `limit` entries and may return ones already handled, which are
    /// skipped), within the payload's `max_cost_usd` and the hourly budget.
    /// Progress is kept in the payload under `counter`, `refused` and `spent_usd`.
    async fn buy_in_order<F, Fut>(
        &self,
        p: &mut Value,
        counter: &str,
        ctx: &dyn JobCtx,
        mut next: F,
    ) -> Result<Purchases, JobError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = recache_storage::roles::Result<Vec<EntryRecord>>>,
    {
        let max = p.get("max_cost_usd").and_then(Value::as_f64);
        let mut skip: HashSet<CacheKey> = HashSet::new();
        let mut r = Purchases {
            bought: u(p, counter),
            refused: u(p, "refused"),
            spent: f(p, "spent_usd"),
            stopped: None,
            errors: Vec::new(),
        };
        'outer: loop {
            let batch: Vec<EntryRecord> = next(100 + skip.len() as u32)
                .await?
                .into_iter()
                .filter(|e| !skip.contains(&e.key))
                .collect();
            if batch.is_empty() {
                break;
            }
            for e in batch {
                if max.is_some_and(|m| r.spent + e.cost_usd > m) {
                    r.stopped = Some("max_cost_usd reached");
                    break 'outer;
                }
                self.check_hourly_budget(e.cost_usd).await?;
                // Each entry is bought at most once per run, whatever metadata says next.
                skip.insert(e.key);
                match self.buy_entry(&e, ctx.job_id()).await? {
                    Bought::Stored { cost_usd } => {
                        r.bought += 1;
                        r.spent += cost_usd;
                    }
                    Bought::Refused(why) => {
                        r.refused += 1;
                        if r.errors.len() < 5 {
                            r.errors.push(format!("{}: {why}", e.key));
                        }
                    }
                }
                p[counter] = json!(r.bought);
                p["refused"] = json!(r.refused);
                p["spent_usd"] = json!(r.spent);
                if r.bought.is_multiple_of(10) {
                    ctx.checkpoint(p.clone()).await?;
                }
                ctx.progress(r.bought + r.refused, None);
            }
        }
        Ok(r)
    }

    /// Buys an entry's answer again with its stored request and original TTL.
    async fn buy_entry(&self, e: &EntryRecord, job_id: i64) -> Result<Bought, JobError> {
        let Some(stored) = e.request.as_deref() else {
            return Ok(Bought::Refused(
                "no stored request (entry registered before recovery support)".into(),
            ));
        };
        let request = match open_text(self.cache.roles.keyring.as_deref(), stored).await {
            Ok(r) => r,
            Err(err) => return Ok(Bought::Refused(format!("the stored request cannot be read: {err}"))),
        };
        let request = request.as_str();
        let Some(endpoint) = Endpoint::from_name(&e.endpoint) else {
            return Ok(Bought::Refused(format!("unknown endpoint '{}'", e.endpoint)));
        };
        let ttl = Duration::from_millis((e.expires_at_ms - e.created_at_ms).max(1000) as u64);
        self.buy(
            &Purchase {
                key: e.key,
                tenant: &e.tenant,
                namespace: &e.namespace,
                endpoint,
                model: &e.model,
                canonical: request,
                // The stored request has no headers: Anthropic's re-buy sends
                // the default `anthropic-version` (ARCHITECTURE.md, "Dialects").
                forward: &[],
                ttl,
            },
            job_id,
        )
        .await
    }
}

/// What [`Recovery::buy_in_order`] did.
struct Purchases {
    bought: u64,
    refused: u64,
    spent: f64,
    stopped: Option<&'static str>,
    errors: Vec<String>,
}

/// An entry row rebuilt from an artifact envelope, if the stored bytes are a
/// well-formed recache artifact with the id they are stored under
/// (`envelope`: the stored bytes opened, when they are sealed).
pub(crate) fn entry_from_artifact(
    id: ArtifactId,
    bytes: &bytes::Bytes,
    envelope: &bytes::Bytes,
) -> Option<EntryRecord> {
    if ArtifactId::of(bytes) != id {
        return None;
    }
    let d = artifact::decode(envelope).ok()?;
    Some(EntryRecord {
        key: CacheKey::from_hex(&d.meta.key)?,
        tenant: d.meta.tenant,
        namespace: d.meta.namespace,
        endpoint: d.meta.endpoint,
        model: d.meta.model,
        artifact: id,
        request_bytes: d.request.len() as u64,
        response_bytes: bytes.len() as u64,
        prompt_tokens: d.meta.prompt_tokens,
        completion_tokens: d.meta.completion_tokens,
        cost_usd: d.meta.cost_usd,
        created_at_ms: d.meta.created_at_ms,
        expires_at_ms: d.meta.expires_at_ms,
        last_hit_at_ms: None,
        hit_count: 0,
        request: std::str::from_utf8(&d.request).ok().map(str::to_string),
        artifact_missing: false,
    })
}
