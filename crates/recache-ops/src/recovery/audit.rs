//! `recache audit`: streams over the stores and reports what does not add
//! up. Read-only: repairs live in `repair` (CLI) and the job kinds.
//!
//! | finding | check | meaning |
//! |---|---|---|
//! | `missing_artifact` | artifact-integrity | an entry's artifact is gone |
//! | `corrupt_artifact` | artifact-integrity | SHA-256 mismatch, or not an envelope for this entry |
//! | `missing_from_index` | index | a live entry has no index pointer |
//! | `dangling_pointer` | index | an index pointer with no entry |
//! | `stale_pointer` | index | the pointer names another artifact than the entry |
//! | `pointer_without_artifact` | index | the pointer's artifact is gone |
//! | `orphan_artifact` | metadata | an artifact no entry uses (older than the grace period) |
//! | `expired_present` | metadata | an entry past expiry and retention still stored |

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::listing::{ArtifactListing, EntryPages};
use super::Recovery;
use recache_core::artifact;
use recache_core::key::CacheKey;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::roles::keyring::open_artifact;
use recache_storage::roles::{now_ms, ArtifactId, EntryRecord, Index, IndexEntry};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    ArtifactIntegrity,
    Index,
    Vectors,
    Metadata,
    All,
}

impl Check {
    fn covers(self, c: Check) -> bool {
        self == Check::All || self == c
    }
}

#[derive(Clone, Debug)]
pub struct AuditOptions {
    pub check: Check,
    /// Look at this many entries only (from a random start), for a quick look.
    pub sample: Option<u64>,
    /// Findings kept in the report (counts are always complete).
    pub max_findings: usize,
    /// Artifacts written more recently than this are never orphans (ms).
    pub orphan_grace_ms: i64,
    /// Artifacts read concurrently while verifying hashes.
    pub parallel: usize,
    /// Read every artifact and check its SHA-256 (off: existence only, from the listing).
    pub verify_hashes: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            check: Check::All,
            sample: None,
            max_findings: 1000,
            orphan_grace_ms: 24 * 3_600_000,
            parallel: 32,
            verify_hashes: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Finding {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub detail: String,
    /// What buying it back would cost (missing artifacts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct AuditReport {
    pub check: String,
    pub sampled: bool,
    pub entries_scanned: u64,
    pub artifacts_listed: u64,
    pub artifacts_verified: u64,
    pub index_pointers: u64,
    pub counts: BTreeMap<&'static str, u64>,
    pub findings: Vec<Finding>,
    pub findings_truncated: bool,
    /// Estimated provider cost of buying every missing artifact back.
    pub missing_cost_usd: f64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl AuditReport {
    pub fn problems(&self) -> u64 {
        self.counts.values().sum()
    }

    fn add(&mut self, max: usize, f: Finding) {
        *self.counts.entry(f.kind).or_default() += 1;
        if f.kind == "missing_artifact" {
            self.missing_cost_usd += f.cost_usd.unwrap_or(0.0);
        }
        if self.findings.len() < max {
            self.findings.push(f);
        } else {
            self.findings_truncated = true;
        }
    }

    /// Keys of one finding kind (among the findings kept).
    pub(crate) fn keys_of(&self, kind: &str) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.kind == kind)
            .filter_map(|f| f.key.clone())
            .collect()
    }
}

fn finding(
    kind: &'static str,
    e: Option<&EntryRecord>,
    key: Option<CacheKey>,
    artifact: Option<ArtifactId>,
    detail: impl Into<String>,
) -> Finding {
    Finding {
        kind,
        key: key.or(e.map(|e| e.key)).map(|k| k.hex()),
        artifact: artifact.or(e.map(|e| e.artifact)).map(|a| a.hex()),
        tenant: e.map(|e| e.tenant.clone()),
        detail: detail.into(),
        cost_usd: None,
    }
}

impl Recovery {
    /// Vectors whose entry the index no longer has (`dangling_vector`: harmless, a search
    /// skips them and drops them, but they cost memory), per collection.
    async fn audit_vectors(
        &self,
        index: &dyn recache_storage::roles::Index,
        r: &mut AuditReport,
        max: usize,
    ) -> Result<(), JobError> {
        let v = &self.cache.roles.vectors;
        if !v.enabled() {
            r.notes.push(format!(
                "vectors: not checked (engine {}: disabled here, or an embedded store a running gateway owns)",
                v.engine()
            ));
            return Ok(());
        }
        for c in v.collections().await? {
            let mut after = None;
            let mut n = 0u64;
            loop {
                let keys = v.list(&c.name, after, 1000).await?;
                let Some(last) = keys.last().copied() else { break };
                after = Some(last);
                n += keys.len() as u64;
                let found = index.get_many(keys.clone()).await?;
                for (k, e) in keys.into_iter().zip(found) {
                    if e.is_none() {
                        r.add(
                            max,
                            finding(
                                "dangling_vector",
                                None,
                                Some(k),
                                None,
                                format!("a vector in {} for an entry the index does not have", c.name),
                            ),
                        );
                    }
                }
            }
            r.notes.push(format!(
                "vectors: collection {} (dimension {}): {n} vectors checked",
                c.name, c.dimension
            ));
        }
        Ok(())
    }

    /// Runs the audit. `index` overrides the index to scan (a read-only
    /// snapshot of the embedded index while a gateway owns it).
    pub async fn audit(
        &self,
        opts: &AuditOptions,
        index: Option<&dyn Index>,
        ctx: &dyn JobCtx,
    ) -> Result<AuditReport, JobError> {
        let started = Instant::now();
        let roles = &self.cache.roles;
        let index = index.unwrap_or(roles.index.as_ref());
        let mut r = AuditReport {
            check: format!("{:?}", opts.check),
            sampled: opts.sample.is_some(),
            ..Default::default()
        };
        let scope = Scope {
            art: opts.check.covers(Check::ArtifactIntegrity),
            index: opts.check.covers(Check::Index),
            meta: opts.check.covers(Check::Metadata),
            verify_hashes: opts.verify_hashes,
            max: opts.max_findings,
            now: now_ms(),
            retain: self.retain_ms(),
        };
        if opts.check.covers(Check::Vectors) {
            self.audit_vectors(index, &mut r, scope.max).await?;
        }
        // One LIST of the artifact store.
        let mut listing = ArtifactListing::new(if scope.entries() {
            roles.artifacts.list().await?
        } else {
            Vec::new()
        });
        r.artifacts_listed = listing.len() as u64;
        let total = roles.metadata.count_entries().await.unwrap_or(0);
        // A sample as large as the store is the whole store (a wrapped walk would see entries twice).
        let sample = opts.sample.filter(|n| *n < total);
        r.sampled = sample.is_some();
        let entry_keys = self
            .walk_entries(&scope, opts, sample, total, index, &mut listing, &mut r, ctx)
            .await?;
        if sample.is_none() {
            if scope.index {
                self.dangling_pointers(index, &entry_keys, &listing, &mut r, scope.max)
                    .await?;
            }
            if scope.meta {
                orphan_artifacts(&listing, &mut r, &scope, opts.orphan_grace_ms);
            }
        }
        if opts.sample.is_some() {
            r.notes
                .push("sampled: dangling pointers and orphan artifacts need a full audit".into());
        }
        r.seconds = started.elapsed().as_secs_f64();
        Ok(r)
    }

    /// The walk over the entries, page by page (all of them, or a sample from
    /// a random key, wrapping around once). Returns the keys seen, in order,
    /// when the walk was full and the index is checked.
    #[allow(clippy::too_many_arguments)]
    async fn walk_entries(
        &self,
        scope: &Scope,
        opts: &AuditOptions,
        sample: Option<u64>,
        total: u64,
        index: &dyn Index,
        listing: &mut ArtifactListing,
        r: &mut AuditReport,
        ctx: &dyn JobCtx,
    ) -> Result<Vec<CacheKey>, JobError> {
        let keep_keys = scope.index && sample.is_none();
        // Entry keys in key order (pages come sorted): to tell dangling pointers later.
        let mut entry_keys: Vec<CacheKey> = Vec::new();
        if keep_keys {
            entry_keys.reserve_exact(total as usize + 1024);
        }
        // Only the vectors check: no entry needs looking at.
        let limit = if scope.entries() { sample.unwrap_or(u64::MAX) } else { 0 };
        // A quick look starts somewhere random in key order, and wraps around once.
        let start = sample.map(|_| CacheKey(rand_key()));
        let mut pages = EntryPages::new(self, start);
        let mut wrapped = false;
        while r.entries_scanned < limit {
            let n = (limit - r.entries_scanned).min(self.page_size() as u64) as u32;
            let Some(mut page) = pages.next(Some(n)).await? else {
                if sample.is_some() && !wrapped && pages.after.is_some() {
                    wrapped = true;
                    pages.after = None;
                    continue;
                }
                break;
            };
            if let (true, Some(start)) = (wrapped, start) {
                // Back where the walk began: every entry has been seen once.
                page.retain(|e| e.key <= start);
                if page.is_empty() {
                    break;
                }
            }
            let pointers = if scope.index {
                index.get_many(page.iter().map(|e| e.key).collect()).await?
            } else {
                Vec::new()
            };
            let mut verify = Vec::new();
            for (i, e) in page.iter().enumerate() {
                if keep_keys {
                    entry_keys.push(e.key);
                }
                let present = listing.mark_used(&e.artifact);
                if scope.entry(e, pointers.get(i).copied().flatten(), present, r) {
                    verify.push(e.clone());
                }
            }
            self.verify_artifacts(&verify, opts.parallel, r, scope.max).await?;
            r.entries_scanned += page.len() as u64;
            ctx.progress(r.entries_scanned, Some(total.min(limit)));
        }
        Ok(entry_keys)
    }

    /// Reads the artifacts back (`parallel` at once) and checks their hash and envelope.
    async fn verify_artifacts(
        &self,
        entries: &[EntryRecord],
        parallel: usize,
        r: &mut AuditReport,
        max: usize,
    ) -> Result<(), JobError> {
        for chunk in entries.chunks(parallel.max(1)) {
            let reads = chunk.iter().map(|e| self.cache.roles.artifacts.get(e.artifact));
            for (e, got) in chunk.iter().zip(futures_util::future::join_all(reads).await) {
                r.artifacts_verified += 1;
                match got? {
                    None => r.add(
                        max,
                        finding(
                            "missing_artifact",
                            Some(e),
                            None,
                            None,
                            "the artifact vanished during the audit",
                        ),
                    ),
                    Some(bytes) => {
                        let envelope = open_artifact(self.cache.roles.keyring.as_deref(), &bytes)
                            .await
                            .map_err(|err| format!("the sealed artifact does not open: {err}"));
                        if let Err(why) = verify_artifact(e, &bytes, envelope) {
                            r.add(max, finding("corrupt_artifact", Some(e), None, None, why));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Pointers whose key no entry has: confirmed one by one (an entry
    /// registered after the walk is not dangling).
    async fn dangling_pointers(
        &self,
        index: &dyn Index,
        entry_keys: &[CacheKey],
        listing: &ArtifactListing,
        r: &mut AuditReport,
        max: usize,
    ) -> Result<(), JobError> {
        let metadata = &self.cache.roles.metadata;
        let mut cursor = 0;
        loop {
            let (page, next) = index.scan(cursor, 1000).await?;
            r.index_pointers += page.len() as u64;
            for (key, p) in page {
                if entry_keys.binary_search(&key).is_ok() || metadata.get_entry(key).await?.is_some() {
                    continue;
                }
                let detail = if listing.contains(&p.artifact) {
                    "an index pointer with no entry"
                } else {
                    "an index pointer with no entry and no artifact"
                };
                r.add(
                    max,
                    finding("dangling_pointer", None, Some(key), Some(p.artifact), detail),
                );
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// What one audit checks, and the clock it judges expiry by.
struct Scope {
    art: bool,
    index: bool,
    meta: bool,
    verify_hashes: bool,
    max: usize,
    now: i64,
    retain: i64,
}

impl Scope {
    /// Whether any check needs the entries walked.
    fn entries(&self) -> bool {
        self.art || self.index || self.meta
    }

    /// The checks of one entry against its artifact's presence and its index
    /// pointer. True when its artifact is to be read back and verified.
    fn entry(&self, e: &EntryRecord, pointer: Option<IndexEntry>, present: bool, r: &mut AuditReport) -> bool {
        let max = self.max;
        let mut verify = false;
        if self.art && !present {
            let mut f = finding(
                "missing_artifact",
                Some(e),
                None,
                None,
                "the entry's artifact is not in the store",
            );
            f.cost_usd = Some(e.cost_usd);
            r.add(max, f);
        } else if self.art && self.verify_hashes {
            verify = true;
        }
        if self.meta && e.expires_at_ms + self.retain <= self.now {
            r.add(
                max,
                finding(
                    "expired_present",
                    Some(e),
                    None,
                    None,
                    format!("expired at {} ms and past retention", e.expires_at_ms),
                ),
            );
        }
        if self.index {
            match pointer {
                None if !e.artifact_missing && e.expires_at_ms > self.now => r.add(
                    max,
                    finding(
                        "missing_from_index",
                        Some(e),
                        None,
                        None,
                        "a live entry has no index pointer",
                    ),
                ),
                Some(p) if p.artifact != e.artifact => r.add(
                    max,
                    finding(
                        "stale_pointer",
                        Some(e),
                        None,
                        Some(p.artifact),
                        format!(
                            "the index points at {}, the entry at {}",
                            p.artifact.hex(),
                            e.artifact.hex()
                        ),
                    ),
                ),
                _ => {}
            }
        }
        verify
    }
}

/// Artifacts no entry uses, older than the grace period.
fn orphan_artifacts(listing: &ArtifactListing, r: &mut AuditReport, scope: &Scope, grace_ms: i64) {
    for a in listing.unused() {
        if a.modified_ms < scope.now - grace_ms {
            r.add(
                scope.max,
                finding(
                    "orphan_artifact",
                    None,
                    None,
                    Some(a.id),
                    format!("no entry uses it; written {} s ago", (scope.now - a.modified_ms) / 1000),
                ),
            );
        }
    }
}

/// Checks an artifact's stored bytes against its entry: hash, then the
/// envelope (`envelope`: the bytes opened, when sealed), key and tenant.
pub(crate) fn verify_artifact(
    e: &EntryRecord,
    bytes: &bytes::Bytes,
    envelope: Result<bytes::Bytes, String>,
) -> Result<(), String> {
    if ArtifactId::of(bytes) != e.artifact {
        return Err("SHA-256 of the stored bytes does not match the artifact id".into());
    }
    let d = artifact::decode(&envelope?)?;
    if d.meta.key != e.key.hex() || d.meta.tenant != e.tenant {
        return Err("the envelope belongs to another key or tenant".into());
    }
    Ok(())
}

fn rand_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for chunk in k.chunks_mut(8) {
        chunk.copy_from_slice(&recache_storage::queue::random_u64().to_le_bytes());
    }
    k
}
