//! The four storage roles. Each is a small dyn-safe trait with a health
//! check; implementations live one per file. The gateway holds them as
//! `Arc<dyn Role>` and never knows which engine is behind one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

pub use crate::error::BackendError;
use crate::key::CacheKey;

pub mod artifacts_memory;
pub mod artifacts_object_store;
pub mod artifacts_segments;
/// The conformance suite every engine of a role passes; compiled for tests
/// only (the `conformance` feature, which the test build turns on), never
/// into the release binary.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod counters;
pub mod data_keys;
pub mod factory;
pub mod filter;
pub mod guarded;
pub mod index_embedded;
pub mod index_redis;
pub mod index_snapshot;
pub mod keyring;
pub mod keys;
pub mod metadata_audit;
pub mod metadata_postgres;
pub mod metadata_purge;
pub mod metadata_sql;
pub mod metadata_sqlite;
pub mod redis_topology;
pub mod vectors_disabled;
pub mod vectors_embedded;
pub mod vectors_ivf;
pub mod vectors_ivf_file;
pub mod vectors_qdrant;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// What [`Index::get_counting`] answers: the lookup's result, and the counters'.
pub type Counted = (Result<Option<IndexEntry>>, Result<Vec<i64>>);

/// SHA-256 of an artifact's bytes: its address in the artifact store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactId(pub [u8; 32]);

impl ArtifactId {
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }
    pub fn hex(&self) -> String {
        crate::key::hex32(&self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactId({})", &self.hex()[..16])
    }
}

/// What the index holds for a key: a pointer, never a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub artifact: ArtifactId,
    pub size: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What a health check learned about a live backend.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The index role: cache key → entry pointer.
pub trait Index: Send + Sync {
    fn engine(&self) -> &'static str;
    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<IndexEntry>>>;
    fn put(&self, key: CacheKey, entry: IndexEntry) -> BoxFuture<'_, Result<()>>;
    fn delete(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>>;
    /// Drops entries that expired before `before_ms`; returns how many.
    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>>;
    fn count(&self) -> BoxFuture<'_, Result<u64>>;
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>>;
    /// Makes buffered writes durable (called on shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// After opening: entries created after this instant (ms) may be missing
    /// and should be replayed from metadata. `None`: nothing to replay.
    fn replay_from_ms(&self) -> Option<i64> {
        None
    }
    /// Writes many pointers at once (rebuilds). With `if_absent`, a key that
    /// already has a pointer keeps it (it was written after the loss, so it is
    /// newer). Returns how many were written. Engines override this to batch.
    fn put_many(&self, entries: Vec<(CacheKey, IndexEntry)>, if_absent: bool) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut n = 0;
            for (k, e) in entries {
                if if_absent && self.get(k).await?.is_some() {
                    continue;
                }
                self.put(k, e).await?;
                n += 1;
            }
            Ok(n)
        })
    }
    /// Adds to the shared counters of tenant and key limits and returns their
    /// new values, in one round trip (see `counters.rs`). Engines that keep
    /// none answer an error.
    fn counters_add(&self, ops: Vec<counters::CounterOp>) -> BoxFuture<'_, Result<Vec<i64>>> {
        let _ = ops;
        let engine = self.engine();
        Box::pin(async move {
            Err(BackendError::Protocol {
                backend: "index",
                detail: format!("the {engine} index keeps no counters"),
            })
        })
    }
    /// The lookup of `key` and the counter operations `ops` together (a
    /// request's limits beside its lookup): engines that can, in one round
    /// trip (Redis: one pipeline). Answers the lookup's result and the
    /// counters' (see [`Index::counters_add`]).
    fn get_counting(&self, key: CacheKey, ops: Vec<counters::CounterOp>) -> BoxFuture<'_, Counted> {
        Box::pin(async move { tokio::join!(self.get(key), self.counters_add(ops)) })
    }
    /// Deletes many pointers (purges); engines override this to batch.
    /// Returns how many existed.
    fn delete_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut n = 0;
            for k in keys {
                n += self.delete(k).await? as u64;
            }
            Ok(n)
        })
    }
    /// Many lookups at once (audits); engines override this to batch.
    fn get_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<Vec<Option<IndexEntry>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(self.get(k).await?);
            }
            Ok(out)
        })
    }
    /// One page of pointers for audits: starts at `cursor` (0 first), returns
    /// the page and the next cursor (0 when the walk is over). A page may be
    /// empty before the end.
    fn scan(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<ScanPage>>;
    /// The generation marker: a value the index keeps for as long as it keeps
    /// its data. `None` means the data was lost (a Redis that restarted empty
    /// or was flushed). In-process indexes never lose data while running.
    fn generation(&self) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async { Ok(Some("in-process".to_string())) })
    }
    fn set_generation(&self, _generation: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Destroys every pointer (and the generation marker): a loss, as a drill
    /// makes it. Returns the pointers removed. Never called on the request path.
    fn wipe(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let (mut cursor, mut keys) = (0u64, Vec::new());
            loop {
                let (page, next) = self.scan(cursor, 1000).await?;
                keys.extend(page.into_iter().map(|(k, _)| k));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let mut n = 0;
            for k in keys {
                n += u64::from(self.delete(k).await?);
            }
            Ok(n)
        })
    }
}

/// One page of an index scan: the pointers and the next cursor (0: done).
pub type ScanPage = (Vec<(CacheKey, IndexEntry)>, u64);

/// A stored artifact as a listing shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArtifactInfo {
    pub id: ArtifactId,
    pub size: u64,
    /// Last write, ms since the epoch (orphans younger than a grace period are kept).
    pub modified_ms: i64,
}

/// The artifacts role: immutable payloads addressed by their SHA-256.
pub trait Artifacts: Send + Sync {
    fn engine(&self) -> &'static str;
    fn put(&self, id: ArtifactId, bytes: Bytes) -> BoxFuture<'_, Result<()>>;
    /// Writes many artifacts (the store path's batches). An error may leave
    /// some written (orphans, which audits find). Engines override this to
    /// batch; by default the writes run together.
    fn put_many(&self, items: Vec<(ArtifactId, Bytes)>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            futures_util::future::try_join_all(items.into_iter().map(|(id, b)| self.put(id, b)))
                .await
                .map(|_| ())
        })
    }
    /// The stored bytes, unverified: callers check the hash.
    fn get(&self, id: ArtifactId) -> BoxFuture<'_, Result<Option<Bytes>>>;
    fn delete(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>>;
    /// Every stored artifact, for audits and reconciliation.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ArtifactInfo>>>;
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>>;
    /// Gives back the disk space of deleted artifacts now (a store that
    /// deletes lazily, as the segmented one does, compacts); the bytes freed.
    /// Purges call it so that purged answers are gone from the disk.
    fn reclaim(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
    /// The store's own figures for `/metrics` (name, help, value), if any.
    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        Vec::new()
    }
}

/// One registered cache entry.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct EntryRecord {
    #[serde(serialize_with = "ser_hex_key", deserialize_with = "de_hex_key")]
    pub key: CacheKey,
    pub tenant: String,
    pub namespace: String,
    pub endpoint: String,
    pub model: String,
    #[serde(serialize_with = "ser_hex_artifact", deserialize_with = "de_hex_artifact")]
    pub artifact: ArtifactId,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub last_hit_at_ms: Option<i64>,
    pub hit_count: u64,
    /// The canonical request, so a lost artifact can be bought again. Left
    /// out of bulk pages (`None` there) to keep them small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Set by audits and reconciliation when the artifact is gone.
    #[serde(default)]
    pub artifact_missing: bool,
}

fn ser_hex_key<S: serde::Serializer>(k: &CacheKey, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&k.hex())
}
fn ser_hex_artifact<S: serde::Serializer>(k: &ArtifactId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&k.hex())
}

fn de_hex_key<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<CacheKey, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    CacheKey::from_hex(&s).ok_or_else(|| serde::de::Error::custom("cache key must be 64 hex digits"))
}
fn de_hex_artifact<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<ArtifactId, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    ArtifactId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("artifact id must be 64 hex digits"))
}

impl EntryRecord {
    pub fn index_entry(&self) -> IndexEntry {
        IndexEntry {
            artifact: self.artifact,
            size: self.response_bytes,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// An exported entry: its [`EntryRecord`] as one JSON object (built by the
/// database itself, which is several times faster than decoding the row and
/// encoding it again), and the fields a backup needs without parsing it.
#[derive(Clone, Debug)]
pub struct EntryLine {
    pub artifact: ArtifactId,
    pub response_bytes: u64,
    pub artifact_missing: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub json: String,
}

/// An audit log record. `id` is unique, so replaying a spool is idempotent.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub at_ms: i64,
    pub tenant: Option<String>,
    pub actor: String,
    pub action: String,
    pub cache_key: Option<String>,
    pub detail: serde_json::Value,
}

/// The action of the one audit event the request path writes per stored answer.
pub const ANSWER_AUDIT_ACTION: &str = "entry.store";

/// The two kinds of audit event, each with its own retention: one event per
/// stored answer (`[metadata] audit_retention_days`), and everything else,
/// the operations record: admin and CLI actions, key changes, purges,
/// erasures, repairs, backups, drills, losses (`admin_audit_retention_days`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditClass {
    /// `entry.store` events.
    Answers,
    /// Every other event.
    Operations,
}

impl AuditClass {
    /// The SQL condition on `action` that selects this class (`action` is a
    /// column of `audit_log`; the value is a constant, never user input).
    pub fn sql_condition(self) -> String {
        match self {
            AuditClass::Answers => format!("action = '{ANSWER_AUDIT_ACTION}'"),
            AuditClass::Operations => format!("action <> '{ANSWER_AUDIT_ACTION}'"),
        }
    }
}

/// The audit log's size by class (`recache doctor`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuditSummary {
    pub answers: u64,
    pub operations: u64,
    pub oldest_answer_ms: Option<i64>,
    pub oldest_operation_ms: Option<i64>,
}

/// Requests and money of one hour, tenant, namespace and model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct UsageRow {
    /// Start of the hour (Unix ms).
    pub hour_ms: i64,
    pub tenant: String,
    pub namespace: String,
    pub model: String,
    /// The API the requests spoke (`openai`, `anthropic`, `gemini`).
    pub dialect: String,
    pub hits: u64,
    pub semantic_hits: u64,
    /// Provider calls whose answers were stored.
    pub misses: u64,
    /// Tokens paid for (misses).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Tokens not paid for (hits).
    pub tokens_saved: u64,
    pub usd_saved: f64,
    pub usd_spent: f64,
}

impl UsageRow {
    /// An exact (or semantic) hit on an entry that cost `cost` for `tokens`.
    pub fn hit(tokens: u64, cost: f64, semantic: bool) -> UsageRow {
        UsageRow {
            hits: u64::from(!semantic),
            semantic_hits: u64::from(semantic),
            tokens_saved: tokens,
            usd_saved: cost,
            ..Default::default()
        }
    }
    /// A provider call whose answer was stored.
    pub fn miss(prompt_tokens: u64, completion_tokens: u64, cost: f64) -> UsageRow {
        UsageRow {
            misses: 1,
            prompt_tokens,
            completion_tokens,
            usd_spent: cost,
            ..Default::default()
        }
    }

    /// Adds another row's counters to this one's.
    pub fn add_counts(&mut self, d: &UsageRow) {
        self.hits += d.hits;
        self.semantic_hits += d.semantic_hits;
        self.misses += d.misses;
        self.prompt_tokens += d.prompt_tokens;
        self.completion_tokens += d.completion_tokens;
        self.tokens_saved += d.tokens_saved;
        self.usd_saved += d.usd_saved;
        self.usd_spent += d.usd_spent;
    }
}

/// Hits on one key since the last flush.
#[derive(Clone, Copy, Debug)]
pub struct HitUpdate {
    pub key: CacheKey,
    pub count: u64,
    pub last_hit_ms: i64,
}

/// The metadata role: entry registry and audit log.
pub trait Metadata: keys::KeyStore + data_keys::DataKeyStore + Send + Sync {
    fn engine(&self) -> &'static str;
    /// Registers (or replaces) an entry; returns the artifact it replaced, if any.
    fn upsert_entry(&self, entry: EntryRecord) -> BoxFuture<'_, Result<Option<ArtifactId>>>;
    /// Registers (or replaces) entries and appends audit events, all in one
    /// transaction: the store path's group commit (see `crate::batch`).
    /// Returns, per entry, the artifact it replaced. All or nothing.
    fn write_batch(
        &self,
        entries: Vec<EntryRecord>,
        audit: Vec<AuditEvent>,
    ) -> BoxFuture<'_, Result<Vec<Option<ArtifactId>>>>;
    fn get_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<EntryRecord>>>;
    fn delete_entry(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>>;
    fn record_hits(&self, hits: Vec<HitUpdate>) -> BoxFuture<'_, Result<()>>;
    /// Unexpired entries created at or after `since_ms` (to rebuild an index).
    fn live_entries(&self, since_ms: i64, now_ms: i64) -> BoxFuture<'_, Result<Vec<(CacheKey, IndexEntry)>>>;
    /// Deletes entries that expired before `before_ms`; returns their artifacts.
    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<Vec<ArtifactId>>>;
    /// Appends audit events; events whose id is already stored are skipped.
    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<()>>;
    /// The newest audit events, newest first.
    fn recent_audit(&self, limit: u32) -> BoxFuture<'_, Result<Vec<AuditEvent>>>;
    /// Deletes at most `limit` audit events of `class` older than `before_ms`,
    /// oldest first; returns how many went (audit retention).
    fn prune_audit(&self, class: AuditClass, before_ms: i64, limit: u32) -> BoxFuture<'_, Result<u64>>;
    /// How many audit events of each class there are, and the oldest of each.
    fn audit_summary(&self) -> BoxFuture<'_, Result<AuditSummary>>;
    fn count_entries(&self) -> BoxFuture<'_, Result<u64>>;
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>>;
    /// Entries in key order after `after` (all of them, expired included),
    /// without their stored request: the pages of rebuilds and audits.
    fn entries_page(&self, after: Option<CacheKey>, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>>;
    /// Registers entries that have no row yet (reconciliation); rows that
    /// exist are left alone. Returns how many were inserted.
    fn insert_missing_entries(&self, entries: Vec<EntryRecord>) -> BoxFuture<'_, Result<u64>>;
    /// Marks (or clears) entries whose artifact is gone; returns rows changed.
    fn set_artifact_missing(&self, keys: Vec<CacheKey>, missing: bool) -> BoxFuture<'_, Result<u64>>;
    /// Unexpired entries marked missing, most valuable first (hits × cost),
    /// with their stored request.
    fn missing_entries(&self, now_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>>;
    /// Entries that expired in `(from_ms, to_ms]` and are still kept, most
    /// hit first, with their stored request (priority refresh).
    fn expired_entries(&self, from_ms: i64, to_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<EntryRecord>>>;
    /// Entries created per hour since `since_ms`: (hour start ms, count), in order.
    fn hourly_counts(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<(i64, u64)>>>;
    /// Adds usage counters to their hours (cost reports); rows with the same
    /// hour, tenant, namespace and model add up.
    fn record_usage(&self, rows: Vec<UsageRow>) -> BoxFuture<'_, Result<()>>;
    /// Usage rows of the hours starting at or after `since_ms`.
    fn usage_since(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<UsageRow>>>;
    /// Streams one consistent snapshot (a single read transaction) of every
    /// entry (with its stored request), audit event and job to `out`, in
    /// pages (in no particular order): entries first, then audit events,
    /// then jobs (backups).
    fn export_snapshot(&self, out: tokio::sync::mpsc::Sender<SnapshotBatch>) -> BoxFuture<'_, Result<()>>;
    /// Writes one page of a snapshot back (restores). Rows that exist are
    /// left alone: they were written after the backup, so they are newer.
    /// Returns the rows written.
    fn import_snapshot(&self, batch: SnapshotBatch) -> BoxFuture<'_, Result<u64>>;
    /// Entries `filter` takes, in key order after `after`, without their
    /// stored request (purges and erasures page through them).
    fn select_entries(
        &self,
        filter: filter::EntryFilter,
        after: Option<CacheKey>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<EntryRecord>>>;
    /// How many entries `filter` takes.
    fn count_selected(&self, filter: filter::EntryFilter) -> BoxFuture<'_, Result<u64>>;
    /// Deletes each entry that still has the artifact named beside it (an
    /// entry written again since it was selected stays). Returns rows deleted.
    fn delete_entries(&self, entries: Vec<(CacheKey, ArtifactId)>) -> BoxFuture<'_, Result<u64>>;
    /// Points each entry that still has the swap's `old` artifact at its
    /// `new` one, with its size and stored request, keeping every other
    /// column (hit counts, times) as it is: a reseal rewrites answers in
    /// place. Returns, per swap, whether the entry was changed (an entry
    /// written again since it was read is left alone).
    fn replace_artifacts(&self, swaps: Vec<ArtifactSwap>) -> BoxFuture<'_, Result<Vec<bool>>>;
}

/// One entry's artifact replaced by another of the same answer (see
/// [`Metadata::replace_artifacts`]).
#[derive(Clone, Debug)]
pub struct ArtifactSwap {
    pub key: CacheKey,
    pub old: ArtifactId,
    pub new: ArtifactId,
    pub response_bytes: u64,
    pub request: Option<String>,
}

/// One page of a metadata snapshot (see [`Metadata::export_snapshot`]).
/// Exports give entries as [`EntryLine`]s (their JSON built by the engine);
/// imports take [`EntryRecord`]s.
#[derive(Clone, Debug)]
pub enum SnapshotBatch {
    Entries(Vec<EntryRecord>),
    EntryLines(Vec<EntryLine>),
    Audit(Vec<AuditEvent>),
    Jobs(Vec<crate::queue::Job>),
}

/// One stored vector: the final user message of a cached request, embedded.
/// `scope` is the hash of everything else about the request (see
/// `semantic::scope`); a search only ever looks inside one scope.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorPoint {
    pub key: CacheKey,
    pub scope: String,
    pub tenant: String,
    /// The embedded text (the guards compare it with the new question).
    pub text: String,
    pub expires_at_ms: i64,
    pub vector: Vec<f32>,
}

/// A search result: the point without its vector, and its cosine similarity.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorMatch {
    pub key: CacheKey,
    pub text: String,
    pub expires_at_ms: i64,
    pub score: f32,
}

/// A collection: the vectors of one embedder fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    pub dimension: usize,
    pub points: u64,
}

/// The vectors role (semantic matching). Vectors of different embedders never
/// mix: each embedder fingerprint has its own collection, which must exist
/// (`ensure_collection`) before points go in.
pub trait Vectors: Send + Sync {
    fn engine(&self) -> &'static str;
    fn enabled(&self) -> bool {
        true
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>>;
    /// Creates the collection if it is missing; an existing one with another
    /// dimension is an error (never silently mixed).
    fn ensure_collection<'a>(&'a self, collection: &'a str, dimension: usize) -> BoxFuture<'a, Result<()>>;
    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionInfo>>>;
    /// Inserts or replaces points (by key).
    fn upsert<'a>(&'a self, collection: &'a str, points: Vec<VectorPoint>) -> BoxFuture<'a, Result<()>>;
    /// The `k` most similar live points of `scope`, best first. Expired points are never returned.
    fn search<'a>(
        &'a self,
        collection: &'a str,
        scope: &'a str,
        vector: Vec<f32>,
        k: usize,
    ) -> BoxFuture<'a, Result<Vec<VectorMatch>>>;
    /// Deletes these keys from every collection; returns how many points went.
    fn delete(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>>;
    /// Points in a collection (all collections with `None`).
    fn count<'a>(&'a self, collection: Option<&'a str>) -> BoxFuture<'a, Result<u64>>;
    /// Keys of a collection in key order, after `after` (audits, rebuilds).
    fn list<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CacheKey>>>;
    /// Drops points that expired before `before_ms`; returns how many.
    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>>;
    /// Makes buffered writes durable (called on shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Whole points (with their vectors) of a collection in key order, after
    /// `after` (backups). Quantised engines return their stored approximation.
    fn points<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<VectorPoint>>>;
}

/// The four roles, as the gateway holds them, and their circuit breakers.
#[derive(Clone)]
pub struct Roles {
    pub index: Arc<dyn Index>,
    pub artifacts: Arc<dyn Artifacts>,
    pub vectors: Arc<dyn Vectors>,
    pub metadata: Arc<dyn Metadata>,
    pub breakers: Vec<Arc<crate::breaker::Breaker>>,
    /// The tenants' data keys when a master key is configured (`[encryption]`):
    /// artifacts and stored requests are sealed on write, opened on read.
    pub keyring: Option<Arc<keyring::Keyring>>,
}

/// Health of one role, as `/health/ready` and `recache health` report it.
#[derive(Clone, Debug, Serialize)]
pub struct RoleHealth {
    pub role: &'static str,
    pub engine: &'static str,
    /// `up`, `down` or `disabled`.
    pub status: &'static str,
    pub latency_ms: f64,
    #[serde(flatten)]
    pub info: CheckInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<crate::breaker::BreakerStatus>,
}

/// Runs one health check with a time limit and reports it as a [`RoleHealth`].
pub async fn timed_check<E: fmt::Display>(
    role: &'static str,
    engine: &'static str,
    fut: impl Future<Output = std::result::Result<CheckInfo, E>>,
    timeout: Duration,
) -> RoleHealth {
    let start = Instant::now();
    let res = tokio::time::timeout(timeout, fut).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (status, info, error) = match res {
        Ok(Ok(info)) => ("up", info, None),
        Ok(Err(e)) => ("down", CheckInfo::default(), Some(e.to_string())),
        Err(_) => (
            "down",
            CheckInfo::default(),
            Some(format!("health check timed out after {} ms", timeout.as_millis())),
        ),
    };
    RoleHealth {
        role,
        engine,
        status,
        latency_ms,
        info,
        error,
        breaker: None,
    }
}

impl Roles {
    /// Checks every role concurrently.
    pub async fn health(&self, timeout: Duration) -> Vec<RoleHealth> {
        let vectors = async {
            if self.vectors.enabled() {
                timed_check("vectors", self.vectors.engine(), self.vectors.check(), timeout).await
            } else {
                RoleHealth {
                    role: "vectors",
                    engine: self.vectors.engine(),
                    status: "disabled",
                    latency_ms: 0.0,
                    info: CheckInfo::default(),
                    error: None,
                    breaker: None,
                }
            }
        };
        let (i, a, v, m) = tokio::join!(
            timed_check("index", self.index.engine(), self.index.check(), timeout),
            timed_check("artifacts", self.artifacts.engine(), self.artifacts.check(), timeout),
            vectors,
            timed_check("metadata", self.metadata.engine(), self.metadata.check(), timeout),
        );
        let mut all = vec![i, a, v, m];
        for h in &mut all {
            h.breaker = self.breaker(h.role).map(|b| b.status());
        }
        all
    }

    pub fn breaker(&self, backend: &str) -> Option<&Arc<crate::breaker::Breaker>> {
        self.breakers.iter().find(|b| b.backend == backend)
    }
}

/// `v` scaled to unit length (left as is when it already is, or is all zeros).
/// Every vectors engine stores and searches unit vectors, so cosine is a dot product.
pub fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 && (n - 1.0).abs() > 1e-4 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

pub use recache_core::time::now_ms;

/// The largest batch of writes the store path commits in one call. Batches
/// of this size or less get the request path's per-call timeout
/// ([`guarded`]); larger ones (bulk work) get the bulk timeout.
pub const MAX_BATCH: usize = 256;
