//! `rebuild-vectors`: re-embeds the live entries of every semantic tenant
//! from their stored requests (the metadata row's copy, else the artifact
//! envelope) into the active embedder's collection. It runs after the vector
//! store was lost and after an embedder change (a new fingerprint means a new,
//! empty collection: vectors of two embedders never mix, and semantic matching
//! serves only from the active one's vectors meanwhile).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use super::listing::EntryPages;
use super::{Recovery, REBUILD_VECTORS};
use recache_core::artifact;
use recache_core::endpoint::Endpoint;
use recache_core::key::CacheKey;
use recache_engine::semantic::engine::Skip;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::queue::NewJob;
use recache_storage::roles::keyring::{open_artifact, open_text};
use recache_storage::roles::{now_ms, EntryRecord, VectorPoint};

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// The headers an entry's request was sent with, where its key proves them:
/// none for OpenAI and Gemini; for Anthropic the default `anthropic-version`
/// (or none) and no `anthropic-beta`. `None`: the entry was bought with other
/// headers, which are not stored.
fn proven_headers(e: &EntryRecord, endpoint: Endpoint, body: &Value) -> Option<Vec<(&'static str, String)>> {
    if endpoint.dialect() != recache_core::endpoint::Dialect::Anthropic {
        return Some(Vec::new());
    }
    let version = vec![(
        "anthropic-version",
        recache_engine::upstream::ANTHROPIC_VERSION.to_string(),
    )];
    [version, Vec::new()].into_iter().find(|fwd| {
        recache_engine::keying::request_key(&e.tenant, &e.namespace, endpoint, &e.model, body, fwd).1 == e.key
    })
}

impl Recovery {
    /// The stored canonical request of an entry: its metadata copy, else the artifact's envelope.
    async fn stored_request(&self, e: &EntryRecord) -> Result<Option<String>, JobError> {
        let keyring = self.cache.roles.keyring.as_deref();
        if let Some(r) = &e.request {
            return Ok(open_text(keyring, r).await.ok());
        }
        let Some(bytes) = self.cache.roles.artifacts.get(e.artifact).await? else {
            return Ok(None);
        };
        let Ok(envelope) = open_artifact(keyring, &bytes).await else {
            return Ok(None);
        };
        Ok(artifact::decode(&envelope)
            .ok()
            .map(|d| String::from_utf8_lossy(&d.request).into_owned()))
    }

    pub(crate) async fn rebuild_vectors(&self, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let Some(sem) = self.semantic.get().cloned() else {
            return Ok(json!({"note": "semantic matching is off in this process's configuration: nothing to rebuild"}));
        };
        for (collection, dimension) in sem.active_collections() {
            if !sem.ensure(&collection, dimension).await {
                return Err(JobError::Failed(format!("cannot create the collection {collection}")));
            }
        }
        let roles = &self.cache.roles;
        if p.get("total").is_none() {
            p["total"] = json!(roles.metadata.count_entries().await?);
        }
        let total = u(&p, "total");
        let after = p["cursor"].as_str().and_then(CacheKey::from_hex);
        let mut pages = EntryPages::new(self, after);
        let (mut scanned, mut embedded, mut skipped) = (u(&p, "scanned"), u(&p, "embedded"), u(&p, "skipped"));
        let started = Instant::now();
        while let Some(page) = pages.next(Some(self.page_size().min(256))).await? {
            let now = now_ms();
            let mut batches: BTreeMap<String, Vec<VectorPoint>> = BTreeMap::new();
            for e in &page {
                let Some(endpoint) = Endpoint::from_name(&e.endpoint) else {
                    skipped += 1;
                    continue;
                };
                let policy = sem.policy(&e.tenant, &e.namespace);
                let (Some(policy), false) = (policy, e.artifact_missing || e.expires_at_ms <= now) else {
                    skipped += 1;
                    continue;
                };
                let Some(request) = self.stored_request(e).await? else {
                    skipped += 1;
                    continue;
                };
                let Ok(body) = serde_json::from_str::<Value>(&request) else {
                    skipped += 1;
                    continue;
                };
                let Some(upstream) = self.upstreams.route(endpoint.dialect(), &e.model) else {
                    skipped += 1;
                    continue;
                };
                // The stored request has no headers: an Anthropic entry is re-embedded
                // only when its key proves the ones assumed (no beta, the default version).
                let Some(forward) = proven_headers(e, endpoint, &body) else {
                    skipped += 1;
                    continue;
                };
                let asked = recache_engine::semantic::Asked {
                    tenant: &e.tenant,
                    namespace: &e.namespace,
                    endpoint,
                    upstream: &upstream.name,
                    model: &e.model,
                    body: &body,
                    forward: &forward,
                };
                match sem.prepare(policy, &asked).await {
                    Ok(prepared) => batches
                        .entry(prepared.collection.clone())
                        .or_default()
                        .push(prepared.point(e.key, e.expires_at_ms)),
                    Err(Skip::Ineligible(_)) => skipped += 1,
                    // The embedder is down: fail this attempt; the checkpoint keeps the progress.
                    Err(Skip::Embedder(why)) => return Err(JobError::Failed(format!("embedding failed: {why}"))),
                }
            }
            for (collection, points) in batches {
                embedded += points.len() as u64;
                roles.vectors.upsert(&collection, points).await?;
            }
            scanned += page.len() as u64;
            p["cursor"] = json!(pages.after.map(|k| k.hex()));
            p["scanned"] = json!(scanned);
            p["embedded"] = json!(embedded);
            p["skipped"] = json!(skipped);
            ctx.checkpoint(p.clone()).await?;
            ctx.progress(scanned, Some(total.max(scanned)));
        }
        let secs = started.elapsed().as_secs_f64();
        Ok(json!({"scanned": scanned, "embedded": embedded, "skipped": skipped,
                  "entries_per_second": if secs > 0.0 { scanned as f64 / secs } else { 0.0 }}))
    }

    /// At start-up: when an active collection is empty (a new embedder, or a
    /// lost vector store) while metadata holds entries, queue a rebuild.
    pub async fn check_vectors(&self) {
        let Some(sem) = self.semantic.get() else { return };
        let roles = &self.cache.roles;
        let entries = match roles.metadata.count_entries().await {
            Ok(n) => n,
            Err(_) => return,
        };
        if entries == 0 {
            return;
        }
        for (collection, _) in sem.active_collections() {
            let Ok(points) = roles.vectors.count(Some(&collection)).await else {
                continue;
            };
            if points > 0 {
                continue;
            }
            let job = NewJob::new(
                REBUILD_VECTORS,
                json!({"reason": format!("collection {collection} is empty while metadata holds {entries} entries")}),
            )
            .priority(super::jobs::default_priority(REBUILD_VECTORS))
            .unique(format!("{REBUILD_VECTORS}:{collection}"));
            match self.queue.enqueue(job).await {
                Ok(j) => tracing::warn!(
                    collection = %collection,
                    entries,
                    job = j.id,
                    "vector collection is empty (new embedder or lost store): re-embedding the stored requests"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot queue rebuild-vectors"),
            }
        }
    }
}
