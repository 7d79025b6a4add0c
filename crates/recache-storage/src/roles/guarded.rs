//! The resilience wrapper: a per-call timeout and a circuit breaker around a
//! role, implementing the same trait. Timeouts, connection and protocol
//! errors count as failures. Misses (`Ok(None)`) and bad data count as
//! successes and neutral results. A caller that goes away counts for nothing
//! (see [`crate::breaker::Permit`]). While the breaker is open, calls fail at
//! once with [`BackendError::CircuitOpen`]. Health checks bypass the breaker,
//! so they always show the backend's real state.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{
    ArtifactId, Artifacts, AuditClass, AuditEvent, BackendError, BoxFuture, CheckInfo, CollectionInfo, EntryRecord,
    HitUpdate, Index, IndexEntry, Metadata, Result, VectorMatch, VectorPoint, Vectors,
};
use crate::breaker::Breaker;
use crate::key::CacheKey;

pub struct Guard {
    pub breaker: Arc<Breaker>,
    pub timeout: Duration,
}

impl Guard {
    pub fn new(breaker: Arc<Breaker>, timeout: Duration) -> Self {
        Self { breaker, timeout }
    }

    async fn call<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let backend = self.breaker.backend;
        let Some(permit) = self.breaker.admit() else {
            return Err(BackendError::CircuitOpen { backend });
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => {
                permit.failure();
                Err(BackendError::Timeout {
                    backend,
                    after_ms: self.timeout.as_millis() as u64,
                })
            }
            Ok(Ok(v)) => {
                permit.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.is_backend_failure() {
                    permit.failure();
                } else {
                    permit.neutral();
                }
                Err(e)
            }
        }
    }

    /// A bulk call (a page of a rebuild or an audit): counted by the breaker
    /// like any call, with a longer time limit.
    async fn call_bulk<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let bulk = Guard {
            breaker: self.breaker.clone(),
            timeout: (self.timeout * 40).max(Duration::from_secs(5)),
        };
        bulk.call(fut).await
    }

    async fn check(&self, fut: impl Future<Output = Result<CheckInfo>>) -> Result<CheckInfo> {
        let backend = self.breaker.backend;
        tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), fut)
            .await
            .unwrap_or(Err(BackendError::Timeout {
                backend,
                after_ms: self.timeout.as_millis() as u64,
            }))
    }
}

pub struct GuardedIndex {
    pub inner: Arc<dyn Index>,
    pub guard: Guard,
}

impl Index for GuardedIndex {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    fn counters_add(&self, ops: Vec<super::counters::CounterOp>) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(self.guard.call(self.inner.counters_add(ops)))
    }
    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<IndexEntry>>> {
        Box::pin(self.guard.call(self.inner.get(key)))
    }
    /// One guarded call: the breaker and the time limit judge the lookup.
    fn get_counting(&self, key: CacheKey, ops: Vec<super::counters::CounterOp>) -> BoxFuture<'_, super::Counted> {
        Box::pin(async move {
            let joint = async {
                let (got, counted) = self.inner.get_counting(key, ops).await;
                got.map(|g| (g, counted))
            };
            match self.guard.call(joint).await {
                Ok((got, counted)) => (Ok(got), counted),
                Err(e) => (Err(e.clone()), Err(e)),
            }
        })
    }
    fn put(&self, key: CacheKey, entry: IndexEntry) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.put(key, entry)))
    }
    fn delete(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.guard.call(self.inner.delete(key)))
    }
    fn delete_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.delete_many(keys)))
    }
    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        // A sweep walks the whole index: not bounded by the per-call timeout.
        self.inner.purge_expired(before_ms)
    }
    fn count(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call(self.inner.count()))
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(self.guard.check(self.inner.check()))
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.flush()
    }
    fn replay_from_ms(&self) -> Option<i64> {
        self.inner.replay_from_ms()
    }
    fn put_many(&self, entries: Vec<(CacheKey, IndexEntry)>, if_absent: bool) -> BoxFuture<'_, Result<u64>> {
        // The store path's batches keep its time limit; rebuild pages get longer.
        if entries.len() <= super::MAX_BATCH && !if_absent {
            Box::pin(self.guard.call(self.inner.put_many(entries, if_absent)))
        } else {
            Box::pin(self.guard.call_bulk(self.inner.put_many(entries, if_absent)))
        }
    }
    fn get_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<Vec<Option<IndexEntry>>>> {
        Box::pin(self.guard.call_bulk(self.inner.get_many(keys)))
    }
    fn scan(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<super::ScanPage>> {
        Box::pin(self.guard.call_bulk(self.inner.scan(cursor, limit)))
    }
    fn generation(&self) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(self.guard.call(self.inner.generation()))
    }
    fn set_generation(&self, generation: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.set_generation(generation)))
    }
    fn wipe(&self) -> BoxFuture<'_, Result<u64>> {
        // Unguarded: a drill's loss must happen even while the breaker is open.
        self.inner.wipe()
    }
}

pub struct GuardedArtifacts {
    pub inner: Arc<dyn Artifacts>,
    pub guard: Guard,
}

impl Artifacts for GuardedArtifacts {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    fn put(&self, id: ArtifactId, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.put(id, bytes)))
    }
    fn put_many(&self, items: Vec<(ArtifactId, Bytes)>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.put_many(items)))
    }
    fn get(&self, id: ArtifactId) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(self.guard.call(self.inner.get(id)))
    }
    fn delete(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.guard.call(self.inner.delete(id)))
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<super::ArtifactInfo>>> {
        self.inner.list()
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(self.guard.check(self.inner.check()))
    }
    fn reclaim(&self) -> BoxFuture<'_, Result<u64>> {
        self.inner.reclaim()
    }
    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        self.inner.gauges()
    }
}

pub struct GuardedMetadata {
    pub inner: Arc<dyn Metadata>,
    pub guard: Guard,
}

impl super::keys::KeyStore for GuardedMetadata {
    fn create_key(&self, key: super::keys::KeyRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.create_key(key)))
    }
    fn list_keys(&self, tenant: Option<String>) -> BoxFuture<'_, Result<Vec<super::keys::KeyRecord>>> {
        Box::pin(self.guard.call(self.inner.list_keys(tenant)))
    }
    fn key_by_digest(&self, digest: String) -> BoxFuture<'_, Result<Option<super::keys::KeyRecord>>> {
        Box::pin(self.guard.call(self.inner.key_by_digest(digest)))
    }
    fn key_by_id(&self, id: String) -> BoxFuture<'_, Result<Option<super::keys::KeyRecord>>> {
        Box::pin(self.guard.call(self.inner.key_by_id(id)))
    }
    fn revoke_key(&self, id: String, at_ms: i64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.guard.call(self.inner.revoke_key(id, at_ms)))
    }
    fn expire_key(&self, id: String, at_ms: i64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.guard.call(self.inner.expire_key(id, at_ms)))
    }
}

impl super::data_keys::DataKeyStore for GuardedMetadata {
    fn create_data_key(&self, key: super::data_keys::DataKeyRecord, retire_others: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.create_data_key(key, retire_others)))
    }
    fn list_data_keys(&self, tenant: Option<String>) -> BoxFuture<'_, Result<Vec<super::data_keys::DataKeyRecord>>> {
        Box::pin(self.guard.call(self.inner.list_data_keys(tenant)))
    }
    fn rewrap_data_key(&self, id: String, wrapped: String, master_id: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.guard.call(self.inner.rewrap_data_key(id, wrapped, master_id)))
    }
    fn destroy_data_keys(&self, tenant: String, at_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call(self.inner.destroy_data_keys(tenant, at_ms)))
    }
}

impl Metadata for GuardedMetadata {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    fn upsert_entry(&self, entry: EntryRecord) -> BoxFuture<'_, Result<Option<ArtifactId>>> {
        Box::pin(self.guard.call(self.inner.upsert_entry(entry)))
    }
    fn write_batch(
        &self,
        entries: Vec<EntryRecord>,
        audit: Vec<AuditEvent>,
    ) -> BoxFuture<'_, Result<Vec<Option<ArtifactId>>>> {
        // The store path's batches (at most `MAX_BATCH` writes) keep its time limit.
        if entries.len() + audit.len() <= super::MAX_BATCH {
            Box::pin(self.guard.call(self.inner.write_batch(entries, audit)))
        } else {
            Box::pin(self.guard.call_bulk(self.inner.write_batch(entries, audit)))
        }
    }
    fn get_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<EntryRecord>>> {
        Box::pin(self.guard.call(self.inner.get_entry(key)))
    }
    fn delete_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.guard.call(self.inner.delete_entry(key)))
    }
    fn record_hits(&self, hits: Vec<HitUpdate>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.record_hits(hits)))
    }
    fn live_entries(&self, since_ms: i64, now_ms: i64) -> BoxFuture<'_, Result<Vec<(CacheKey, IndexEntry)>>> {
        // Bulk read at start-up: not bounded by the per-call timeout.
        self.inner.live_entries(since_ms, now_ms)
    }
    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<Vec<ArtifactId>>> {
        // A sweep after a long outage (or a drill's wipe) deletes many rows: a bulk call.
        Box::pin(self.guard.call_bulk(self.inner.purge_expired(before_ms)))
    }
    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.append_audit(events)))
    }
    fn recent_audit(&self, limit: u32) -> BoxFuture<'_, Result<Vec<AuditEvent>>> {
        Box::pin(self.guard.call(self.inner.recent_audit(limit)))
    }
    fn prune_audit(&self, class: AuditClass, before_ms: i64, limit: u32) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.prune_audit(class, before_ms, limit)))
    }
    fn audit_summary(&self) -> BoxFuture<'_, Result<super::AuditSummary>> {
        Box::pin(self.guard.call_bulk(self.inner.audit_summary()))
    }
    fn count_entries(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call(self.inner.count_entries()))
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(self.guard.check(self.inner.check()))
    }
    fn entries_page(&self, after: Option<CacheKey>, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
        Box::pin(self.guard.call_bulk(self.inner.entries_page(after, limit)))
    }
    fn insert_missing_entries(&self, entries: Vec<EntryRecord>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.insert_missing_entries(entries)))
    }
    fn select_entries(
        &self,
        filter: super::filter::EntryFilter,
        after: Option<CacheKey>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
        Box::pin(self.guard.call_bulk(self.inner.select_entries(filter, after, limit)))
    }
    fn count_selected(&self, filter: super::filter::EntryFilter) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.count_selected(filter)))
    }
    fn delete_entries(&self, entries: Vec<(CacheKey, ArtifactId)>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.delete_entries(entries)))
    }
    fn replace_artifacts(&self, swaps: Vec<super::ArtifactSwap>) -> BoxFuture<'_, Result<Vec<bool>>> {
        Box::pin(self.guard.call_bulk(self.inner.replace_artifacts(swaps)))
    }
    fn set_artifact_missing(&self, keys: Vec<CacheKey>, missing: bool) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.set_artifact_missing(keys, missing)))
    }
    fn missing_entries(&self, now_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
        Box::pin(self.guard.call_bulk(self.inner.missing_entries(now_ms, limit)))
    }
    fn expired_entries(&self, from_ms: i64, to_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>> {
        Box::pin(self.guard.call_bulk(self.inner.expired_entries(from_ms, to_ms, limit)))
    }
    fn hourly_counts(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<(i64, u64)>>> {
        Box::pin(self.guard.call_bulk(self.inner.hourly_counts(since_ms)))
    }
    fn record_usage(&self, rows: Vec<super::UsageRow>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.guard.call(self.inner.record_usage(rows)))
    }
    fn usage_since(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<super::UsageRow>>> {
        Box::pin(self.guard.call_bulk(self.inner.usage_since(since_ms)))
    }
    /// Refused while the breaker is open; otherwise unbounded in time (a
    /// snapshot of a large store takes as long as it takes; its pages are
    /// handed over as they are read).
    fn export_snapshot(&self, out: tokio::sync::mpsc::Sender<super::SnapshotBatch>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.guard.breaker.admit().is_none() {
                return Err(BackendError::CircuitOpen {
                    backend: self.guard.breaker.backend,
                });
            }
            self.inner.export_snapshot(out).await
        })
    }
    fn import_snapshot(&self, batch: super::SnapshotBatch) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.import_snapshot(batch)))
    }
}

pub struct GuardedVectors {
    pub inner: Arc<dyn Vectors>,
    pub guard: Guard,
}

impl Vectors for GuardedVectors {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(self.guard.check(self.inner.check()))
    }
    fn ensure_collection<'a>(&'a self, collection: &'a str, dimension: usize) -> BoxFuture<'a, Result<()>> {
        Box::pin(
            self.guard
                .call_bulk(self.inner.ensure_collection(collection, dimension)),
        )
    }
    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionInfo>>> {
        Box::pin(self.guard.call_bulk(self.inner.collections()))
    }
    fn upsert<'a>(&'a self, collection: &'a str, points: Vec<VectorPoint>) -> BoxFuture<'a, Result<()>> {
        if points.len() > 1 {
            Box::pin(self.guard.call_bulk(self.inner.upsert(collection, points)))
        } else {
            Box::pin(self.guard.call(self.inner.upsert(collection, points)))
        }
    }
    fn search<'a>(
        &'a self,
        collection: &'a str,
        scope: &'a str,
        vector: Vec<f32>,
        k: usize,
    ) -> BoxFuture<'a, Result<Vec<VectorMatch>>> {
        Box::pin(self.guard.call(self.inner.search(collection, scope, vector, k)))
    }
    fn delete(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.delete(keys)))
    }
    fn count<'a>(&'a self, collection: Option<&'a str>) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.guard.call_bulk(self.inner.count(collection)))
    }
    fn points<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<VectorPoint>>> {
        Box::pin(self.guard.call_bulk(self.inner.points(collection, after, limit)))
    }
    fn list<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CacheKey>>> {
        Box::pin(self.guard.call_bulk(self.inner.list(collection, after, limit)))
    }
    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        self.inner.purge_expired(before_ms)
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.flush()
    }
}
