//! The cache service: exact lookup and store over the four roles, with a
//! timeout on every backend call. A backend failure is counted and turns into
//! a miss; it never reaches the client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::artifact::{self, ArtifactMeta};
use crate::batch::{Batching, Writers};
use crate::error::BackendError;
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::roles::{now_ms, ArtifactId, AuditEvent, EntryRecord, HitUpdate, IndexEntry, Roles};
use crate::spool::{Spool, SpoolRecord};
use recache_storage::roles::keyring::{self, KeyringError};

/// A served entry.
pub struct Hit {
    /// Past its expiry: only for `stale-if-error`.
    pub stale: bool,
    pub meta: ArtifactMeta,
    pub body: Bytes,
    pub age_secs: u64,
}

/// Everything needed to store a fresh answer.
pub struct StoreInput {
    pub key: CacheKey,
    pub tenant: String,
    pub namespace: String,
    pub endpoint: &'static str,
    pub model: String,
    pub canonical_request: String,
    pub body: Bytes,
    pub content_type: String,
    pub ttl: Duration,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

pub struct Cache {
    pub roles: Roles,
    pub metrics: Arc<Metrics>,
    pub spool: Option<Arc<Spool>>,
    /// How long expired entries are kept for `stale-if-error`.
    pub retain_stale: Duration,
    hits: Mutex<HashMap<CacheKey, (u64, i64)>>,
    /// Requests and money per hour, tenant, namespace and model (cost reports).
    pub usage: crate::usage::Usage,
    /// The store path's batched writes.
    writers: Writers,
    /// When the first entry stored without its pointer (the index was out)
    /// was stored, in ms; 0: none waiting. The recovery watch writes their
    /// pointers from metadata once the index is back, then clears it.
    pub unindexed_since: std::sync::atomic::AtomicI64,
    /// Keys whose answer is being stored. One store per key at a time, so
    /// the last row and the last pointer name the same answer: two answers
    /// bought for one key close together (the second asked before the first
    /// was stored) could otherwise leave the pointer on the first and the row
    /// on the second, whose store then deletes the first's artifact. The
    /// second answer is served and not stored: no store waits on another
    /// (stored misses/s at 16 connections measured the same with and without
    /// it; "Full restore under traffic, reconciled" in `docs/benchmarks.md`).
    in_flight: Mutex<std::collections::HashSet<CacheKey>>,
    /// Whether each stored answer adds an `entry.store` audit event
    /// (`[metadata] audit_answer_events`; on unless turned off).
    answer_events: bool,
}

/// A key's place in [`Cache::in_flight`], given up when the store ends.
struct InFlight<'a>(&'a Cache, CacheKey);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// A unique audit event id: time, process and a per-process sequence.
pub fn event_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{n:x}", now_ms(), std::process::id())
}

impl Cache {
    /// Starts the write batchers: call within a Tokio runtime.
    pub fn new(
        roles: Roles,
        metrics: Arc<Metrics>,
        spool: Option<Arc<Spool>>,
        retain_stale: Duration,
        batching: Batching,
    ) -> Self {
        let writers = Writers::spawn(
            roles.metadata.clone(),
            roles.index.clone(),
            roles.artifacts.clone(),
            batching,
        );
        Self {
            writers,
            roles,
            metrics,
            spool,
            retain_stale,
            hits: Mutex::new(HashMap::new()),
            usage: crate::usage::Usage::default(),
            unindexed_since: std::sync::atomic::AtomicI64::new(0),
            in_flight: Mutex::new(std::collections::HashSet::new()),
            answer_events: true,
        }
    }

    /// Turns the per-answer `entry.store` audit events on or off
    /// (`[metadata] audit_answer_events`).
    pub fn with_answer_events(mut self, on: bool) -> Self {
        self.answer_events = on;
        self
    }

    fn failed(&self, e: &BackendError, backend: &'static str, what: &str) {
        if matches!(e, BackendError::CircuitOpen { .. }) {
            return; // counted by the breaker; logging every skipped call would flood the log
        }
        self.metrics.backend_error(backend);
        tracing::warn!(backend, error = %e, "{what} failed; falling back to the provider");
    }

    /// Exact lookup. `max_age` rejects entries older than that many seconds.
    /// An entry expired less than `stale_window` seconds ago comes back with
    /// `stale: true` (for `stale-if-error`); it is never counted as a hit here.
    pub async fn lookup(&self, key: CacheKey, tenant: &str, max_age: Option<u64>, stale_window: u64) -> Option<Hit> {
        self.read_entry(key, tenant, max_age, stale_window, true).await
    }

    /// Reads an entry like [`Cache::lookup`] without counting a hit (shadow comparisons).
    pub async fn peek(&self, key: CacheKey, tenant: &str) -> Option<Hit> {
        self.read_entry(key, tenant, None, 0, false).await
    }

    /// [`Cache::lookup`] with a request's limit counters in the same index
    /// round trip ([`recache_storage::roles::Index::get_counting`]): the hit,
    /// and the counters' values.
    pub async fn lookup_counting(
        &self,
        key: CacheKey,
        tenant: &str,
        (max_age, stale_window): (Option<u64>, u64),
        ops: Vec<recache_storage::roles::counters::CounterOp>,
    ) -> (Option<Hit>, recache_storage::roles::Result<Vec<i64>>) {
        let (got, counted) = self.roles.index.get_counting(key, ops).await;
        let hit = self.read_found(got, key, tenant, max_age, stale_window, true).await;
        (hit, counted)
    }

    async fn read_entry(
        &self,
        key: CacheKey,
        tenant: &str,
        max_age: Option<u64>,
        stale_window: u64,
        count_hit: bool,
    ) -> Option<Hit> {
        let got = self.roles.index.get(key).await;
        self.read_found(got, key, tenant, max_age, stale_window, count_hit)
            .await
    }

    /// The entry the index answered (`got`), read and checked.
    async fn read_found(
        &self,
        got: recache_storage::roles::Result<Option<IndexEntry>>,
        key: CacheKey,
        tenant: &str,
        max_age: Option<u64>,
        stale_window: u64,
        count_hit: bool,
    ) -> Option<Hit> {
        let entry = match got {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(e) => {
                self.failed(&e, "index", "index lookup");
                return None;
            }
        };
        let now = now_ms();
        let stale = entry.expires_at_ms <= now;
        if stale && now >= entry.expires_at_ms.saturating_add(stale_window as i64 * 1000) {
            return None;
        }
        let age_secs = ((now - entry.created_at_ms).max(0) / 1000) as u64;
        if !stale && max_age.is_some_and(|m| age_secs > m) {
            return None;
        }
        let bytes = match self.roles.artifacts.get(entry.artifact).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                self.integrity_problem(
                    key,
                    tenant,
                    "artifact.missing",
                    &entry,
                    "index points at a missing artifact",
                )
                .await;
                return None;
            }
            Err(e) => {
                self.failed(&e, "artifacts", "artifact read");
                return None;
            }
        };
        if ArtifactId::of(&bytes) != entry.artifact {
            self.integrity_problem(key, tenant, "artifact.corrupt", &entry, "artifact SHA-256 mismatch")
                .await;
            return None;
        }
        // Sealed at rest ([encryption]): opened with the tenant's data key.
        let envelope = match keyring::open_artifact(self.roles.keyring.as_deref(), &bytes).await {
            Ok(b) => b,
            Err(KeyringError::Metadata(e)) => {
                // The key could not be read now: a miss, the entry stays.
                self.failed(&e, "metadata", "data key read");
                return None;
            }
            Err(e) => {
                self.integrity_problem(key, tenant, "artifact.unreadable", &entry, &e.to_string())
                    .await;
                return None;
            }
        };
        let decoded = match artifact::decode(&envelope) {
            Ok(d) => d,
            Err(e) => {
                self.integrity_problem(key, tenant, "artifact.undecodable", &entry, &e)
                    .await;
                return None;
            }
        };
        if decoded.meta.tenant != tenant || decoded.meta.key != key.hex() {
            // Cannot happen unless storage was tampered with: never serve it.
            self.integrity_problem(
                key,
                tenant,
                "artifact.foreign",
                &entry,
                "artifact belongs to another key or tenant",
            )
            .await;
            return None;
        }
        if !stale && count_hit {
            self.note_hit(key, now);
        }
        Some(Hit {
            stale,
            meta: decoded.meta,
            body: decoded.body,
            age_secs,
        })
    }

    /// Whether the index breaker is open (or held open): no pointer can be written.
    fn index_out(&self) -> bool {
        self.roles.breaker("index").is_some_and(|b| {
            matches!(
                b.state(),
                crate::breaker::BreakerState::Open | crate::breaker::BreakerState::ForcedOpen
            )
        })
    }

    /// Counts an integrity failure, drops the bad pointer and audits it.
    async fn integrity_problem(&self, key: CacheKey, tenant: &str, action: &str, entry: &IndexEntry, detail: &str) {
        self.metrics
            .integrity_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.backend_error("artifacts");
        tracing::error!(key = %key, action, detail, artifact = %entry.artifact.hex(), "cache integrity failure: not served");
        let _ = self.roles.index.delete(key).await;
        self.audit(AuditEvent {
            id: event_id(),
            at_ms: now_ms(),
            tenant: Some(tenant.to_string()),
            actor: "gateway".into(),
            action: action.into(),
            cache_key: Some(key.hex()),
            detail: json!({"artifact": entry.artifact.hex(), "detail": detail}),
        })
        .await;
    }

    fn note_hit(&self, key: CacheKey, now: i64) {
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        let slot = hits.entry(key).or_insert((0, now));
        slot.0 += 1;
        slot.1 = now;
    }

    /// Writes hit counters to metadata. Counters are kept if the write fails.
    pub async fn flush_hits(&self) {
        if let Err(e) = self.usage.flush(self.roles.metadata.as_ref()).await {
            self.failed(&e, "metadata", "usage counter flush");
        }
        let batch: Vec<HitUpdate> = {
            let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
            hits.drain()
                .map(|(key, (count, last_hit_ms))| HitUpdate {
                    key,
                    count,
                    last_hit_ms,
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        if let Err(e) = self.roles.metadata.record_hits(batch.clone()).await {
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "hit counter flush failed"
            );
            self.failed(&e, "metadata", "hit counter flush");
            let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
            for h in batch {
                let slot = hits.entry(h.key).or_insert((0, h.last_hit_ms));
                slot.0 += h.count;
                slot.1 = slot.1.max(h.last_hit_ms);
            }
        }
    }

    /// Stores a complete answer: artifact first, then metadata, then index,
    /// so a crash leaves an orphan artifact for audit, never a dangling key.
    /// Returns the entry's expiry (ms), which its vector, if any, shares.
    pub async fn store(&self, s: StoreInput) -> Result<i64, BackendError> {
        let created = now_ms();
        if !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(s.key) {
            self.metrics
                .stores_skipped_in_flight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(key = %s.key, "answer not stored: another answer for this key is being stored");
            return Ok(created + s.ttl.as_millis() as i64);
        }
        let _in_flight = InFlight(self, s.key);
        let expires = created + s.ttl.as_millis() as i64;
        let meta = ArtifactMeta {
            key: s.key.hex(),
            tenant: s.tenant.clone(),
            namespace: s.namespace.clone(),
            endpoint: s.endpoint.to_string(),
            model: s.model.clone(),
            created_at_ms: created,
            expires_at_ms: expires,
            content_type: s.content_type.clone(),
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            cost_usd: s.cost_usd,
        };
        let bytes = artifact::encode(&meta, s.canonical_request.as_bytes(), &s.body);
        // Sealed before it is named: the id is the SHA-256 of what is stored.
        let bytes = match &self.roles.keyring {
            None => bytes,
            Some(k) => match k.seal(&s.tenant, &bytes).await {
                Ok(sealed) => sealed,
                Err(e) => {
                    self.metrics
                        .store_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(key = %s.key, error = %e, "entry not stored (sealing failed); the answer was still served");
                    return Err(sealing_failed(e));
                }
            },
        };
        let id = ArtifactId::of(&bytes);
        let size = bytes.len() as u64;
        let result = self
            .store_steps(&s, id, bytes, created, expires, size)
            .await
            .map(|()| expires);
        match &result {
            Ok(_) => {
                self.metrics.stores.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics
                    .store_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(key = %s.key, error = %e, "entry not stored; the answer was still served");
            }
        }
        result
    }

    async fn store_steps(
        &self,
        s: &StoreInput,
        id: ArtifactId,
        bytes: Bytes,
        created: i64,
        expires: i64,
        size: u64,
    ) -> Result<(), BackendError> {
        self.writers
            .artifact(id, bytes)
            .await
            .inspect_err(|e| self.failed(e, "artifacts", "artifact write"))?;
        let record = EntryRecord {
            key: s.key,
            tenant: s.tenant.clone(),
            namespace: s.namespace.clone(),
            endpoint: s.endpoint.to_string(),
            model: s.model.clone(),
            artifact: id,
            request_bytes: s.canonical_request.len() as u64,
            response_bytes: size,
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            cost_usd: s.cost_usd,
            created_at_ms: created,
            expires_at_ms: expires,
            last_hit_at_ms: None,
            hit_count: 0,
            request: Some(match &self.roles.keyring {
                Some(k) => k
                    .seal_text(&s.tenant, &s.canonical_request)
                    .await
                    .map_err(sealing_failed)?,
                None => s.canonical_request.clone(),
            }),
            artifact_missing: false,
        };
        let replaced = match self.writers.register(record.clone()).await {
            Ok(r) => r,
            Err(e) => {
                self.failed(&e, "metadata", "entry registration");
                // Metadata is down: the registration waits in the spool; the entry is served meanwhile.
                match &self.spool {
                    // At the spool's cap the registration is dropped (and counted by the
                    // spool); the entry is still served and indexed, and reconcile-metadata
                    // registers it from its artifact later.
                    Some(spool) => {
                        spool.append(&SpoolRecord::Entry(record.clone())).map_err(|io| {
                            tracing::error!(error = %io, "metadata spool write failed; entry not stored");
                            e
                        })?;
                    }
                    None => return Err(e),
                }
                None
            }
        };
        // With the index out, the answer is kept all the same: artifact and
        // metadata are written, and the recovery watch writes its pointer from
        // metadata when the index is back (`reindex_since`), so an answer
        // bought during the outage is bought once. The answer it replaced
        // stays until then (the index may still point at it).
        if self.index_out() {
            self.metrics
                .stored_unindexed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = self.unindexed_since.compare_exchange(
                0,
                created,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::debug!(key = %s.key, "index out: entry stored, its pointer written when the index is back");
            return Ok(());
        }
        self.writers
            .index(s.key, record.index_entry())
            .await
            .inspect_err(|e| self.failed(e, "index", "index write"))?;
        if let Some(old) = replaced {
            // The old artifact is unreachable now; dropping it is best effort (audit finds leftovers).
            let _ = self.roles.artifacts.delete(old).await;
        }
        if !self.answer_events {
            return Ok(());
        }
        self.audit(AuditEvent {
            id: event_id(),
            at_ms: created,
            tenant: Some(s.tenant.clone()),
            actor: "gateway".into(),
            action: recache_storage::roles::ANSWER_AUDIT_ACTION.into(),
            cache_key: Some(s.key.hex()),
            detail: json!({"model": s.model, "endpoint": s.endpoint, "namespace": s.namespace,
                           "artifact": id.hex(), "bytes": size, "expires_at_ms": expires}),
        })
        .await;
        Ok(())
    }

    /// Appends one audit event; while metadata is down it goes to the spool.
    pub async fn audit(&self, event: AuditEvent) {
        let Err(e) = self.writers.audit(event.clone()).await else {
            return;
        };
        self.failed(&e, "metadata", "audit append");
        let spooled = self
            .spool
            .as_ref()
            .map(|s| s.append(&SpoolRecord::Audit(event.clone())));
        // `Ok(false)`: dropped at the spool's cap, which the spool counts and logs.
        if !matches!(spooled, Some(Ok(_))) {
            tracing::error!(event = %event.id, action = %event.action, "audit event lost: metadata down and no spool");
        }
    }

    /// Replays the spool if anything waits in it.
    pub async fn replay_spool(&self) {
        let Some(spool) = &self.spool else { return };
        match spool.replay(self.roles.metadata.as_ref()).await {
            Ok(r) if r.audit_events + r.entries + r.skipped_entries > 0 => tracing::info!(
                audit_events = r.audit_events,
                entries = r.entries,
                skipped_entries = r.skipped_entries,
                "replayed the metadata spool"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "metadata spool replay postponed"),
        }
    }

    /// Deletes audit events of `class` older than `keep`, in batches, at most
    /// `PRUNE_AUDIT_BATCHES` of them per call (a sweep's share, so a backlog
    /// of old events never holds the metadata writer for long). Returns how
    /// many went.
    pub async fn prune_audit(&self, class: recache_storage::roles::AuditClass, keep: Duration) -> u64 {
        const PRUNE_AUDIT_BATCH: u32 = 5000;
        const PRUNE_AUDIT_BATCHES: usize = 20;
        let before = now_ms() - keep.as_millis() as i64;
        let mut total = 0;
        for _ in 0..PRUNE_AUDIT_BATCHES {
            match self.roles.metadata.prune_audit(class, before, PRUNE_AUDIT_BATCH).await {
                Ok(n) => {
                    total += n;
                    self.metrics
                        .audit_pruned
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    if n < PRUNE_AUDIT_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    self.failed(&e, "metadata", "audit retention");
                    break;
                }
            }
        }
        total
    }

    /// Removes expired entries from every role. Returns (index, metadata, artifacts) counts.
    /// Expired vectors go at once (a semantic match never serves a stale entry).
    pub async fn sweep(&self) -> (u64, usize, usize) {
        if self.roles.vectors.enabled() {
            if let Err(e) = self.roles.vectors.purge_expired(now_ms()).await {
                self.failed(&e, "vectors", "expiry sweep");
            }
        }
        let now = now_ms() - self.retain_stale.as_millis() as i64;
        let idx = self.roles.index.purge_expired(now).await.unwrap_or_else(|e| {
            self.failed(&e, "index", "expiry sweep");
            0
        });
        let artifacts = match self.roles.metadata.purge_expired(now).await {
            Ok(a) => a,
            Err(e) => {
                self.failed(&e, "metadata", "expiry sweep");
                Vec::new()
            }
        };
        let mut deleted = 0;
        for id in &artifacts {
            if let Ok(true) = self.roles.artifacts.delete(*id).await {
                deleted += 1;
            }
        }
        (idx, artifacts.len(), deleted)
    }
}

/// A sealing failure as a storage error: the write is refused, the backend
/// is not unhealthy (no breaker counts it), unless metadata itself failed.
fn sealing_failed(e: KeyringError) -> BackendError {
    match e {
        KeyringError::Metadata(e) => e,
        e => BackendError::Rejected {
            backend: "artifacts",
            detail: format!("sealing: {e}"),
        },
    }
}
