//! The repairs behind `recache repair`. Each has a dry run that changes
//! nothing and says what would change (and what it would cost), and each
//! real run is recorded in the audit log.

use serde_json::{json, Value};

use super::audit::{AuditOptions, Check};
use super::Recovery;
use recache_core::artifact;
use recache_core::key::CacheKey;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::roles::keyring::open_artifact;
use recache_storage::roles::{now_ms, ArtifactId, AuditEvent};

impl Recovery {
    /// Records a repair in the audit log.
    pub(crate) async fn audit_repair(&self, what: &str, result: &Value) {
        self.cache
            .audit(AuditEvent {
                id: recache_engine::cache::event_id(),
                at_ms: now_ms(),
                tenant: None,
                actor: "cli".into(),
                action: format!("repair.{what}"),
                cache_key: None,
                detail: result.clone(),
            })
            .await;
    }

    /// Buys back missing artifacts (most valuable first, within `max_cost_usd`).
    pub async fn repair_missing_artifacts(
        &self,
        max_cost_usd: Option<f64>,
        dry_run: bool,
        ctx: &dyn JobCtx,
    ) -> Result<Value, JobError> {
        if dry_run {
            let opts = AuditOptions {
                check: Check::ArtifactIntegrity,
                verify_hashes: false,
                max_findings: usize::MAX,
                ..Default::default()
            };
            let r = self.audit(&opts, None, ctx).await?;
            let mut costs: Vec<f64> = r.findings.iter().filter_map(|f| f.cost_usd).collect();
            costs.sort_by(|a, b| b.total_cmp(a));
            let within: usize = match max_cost_usd {
                None => costs.len(),
                Some(m) => costs
                    .iter()
                    .scan(0.0, |s, c| {
                        *s += c;
                        Some(*s)
                    })
                    .take_while(|s| *s <= m)
                    .count(),
            };
            return Ok(
                json!({"dry_run": true, "missing": costs.len(), "estimated_cost_usd": r.missing_cost_usd,
                             "would_refetch": within, "max_cost_usd": max_cost_usd,
                             "keys": r.keys_of("missing_artifact")}),
            );
        }
        let mut p = json!({"scan": true});
        if let Some(m) = max_cost_usd {
            p["max_cost_usd"] = json!(m);
        }
        let r = self.refetch(p, ctx).await?;
        self.audit_repair("missing_artifacts", &r).await;
        Ok(r)
    }

    pub async fn repair_reconcile(&self, dry_run: bool, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let r = self.reconcile_metadata(ctx, dry_run).await?;
        if !dry_run {
            self.audit_repair("reconcile_metadata", &r).await;
        }
        Ok(r)
    }

    /// Deletes artifacts no entry uses and that are older than `grace_ms`.
    /// An artifact that holds a live entry with no row is not an orphan but
    /// an unregistered entry: it is kept (reconcile-metadata restores it).
    pub async fn repair_orphans(&self, grace_ms: i64, dry_run: bool, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let roles = &self.cache.roles;
        let opts = AuditOptions {
            check: Check::Metadata,
            orphan_grace_ms: grace_ms,
            max_findings: usize::MAX,
            ..Default::default()
        };
        let report = self.audit(&opts, None, ctx).await?;
        let orphans: Vec<ArtifactId> = report
            .findings
            .iter()
            .filter(|f| f.kind == "orphan_artifact")
            .filter_map(|f| f.artifact.as_deref().and_then(ArtifactId::from_hex))
            .collect();
        let now = now_ms();
        let (mut deleted, mut unregistered, mut bytes_freed) = (0u64, 0u64, 0u64);
        let mut ids = Vec::new();
        for id in &orphans {
            let Some(bytes) = roles.artifacts.get(*id).await? else {
                continue;
            };
            let envelope = open_artifact(roles.keyring.as_deref(), &bytes).await;
            if let Some(d) = envelope.ok().and_then(|b| artifact::decode(&b).ok()) {
                let live = d.meta.expires_at_ms + self.retain_ms() > now;
                let key = CacheKey::from_hex(&d.meta.key);
                if live && ArtifactId::of(&bytes) == *id {
                    if let Some(k) = key {
                        if roles.metadata.get_entry(k).await?.is_none() {
                            unregistered += 1;
                            continue;
                        }
                    }
                }
            }
            if !dry_run && !roles.artifacts.delete(*id).await? {
                continue;
            }
            deleted += 1;
            bytes_freed += bytes.len() as u64;
            if ids.len() < 100 {
                ids.push(id.hex());
            }
        }
        let r = json!({"dry_run": dry_run, "orphans": orphans.len(), (if dry_run { "would_delete" } else { "deleted" }): deleted,
                       "bytes_freed": bytes_freed, "kept_unregistered": unregistered, "grace_seconds": grace_ms / 1000,
                       "artifacts": ids});
        if !dry_run {
            self.audit_repair("orphans", &r).await;
        }
        Ok(r)
    }

    /// Makes the index agree with metadata: missing pointers written,
    /// pointers to another artifact replaced, pointers with no entry removed.
    pub async fn repair_index(&self, dry_run: bool, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let roles = &self.cache.roles;
        let opts = AuditOptions {
            check: Check::Index,
            max_findings: usize::MAX,
            ..Default::default()
        };
        let report = self.audit(&opts, None, ctx).await?;
        let count = |k: &str| report.counts.get(k).copied().unwrap_or(0);
        let (missing, stale, dangling) = (
            count("missing_from_index"),
            count("stale_pointer"),
            count("dangling_pointer"),
        );
        if !dry_run {
            let mut fix = Vec::new();
            for f in report
                .findings
                .iter()
                .filter(|f| f.kind == "missing_from_index" || f.kind == "stale_pointer")
            {
                let Some(key) = f.key.as_deref().and_then(CacheKey::from_hex) else {
                    continue;
                };
                if let Some(e) = roles.metadata.get_entry(key).await? {
                    fix.push((key, e.index_entry()));
                }
                if fix.len() >= 1000 {
                    roles.index.put_many(std::mem::take(&mut fix), false).await?;
                }
            }
            roles.index.put_many(fix, false).await?;
            for f in report.findings.iter().filter(|f| f.kind == "dangling_pointer") {
                if let Some(key) = f.key.as_deref().and_then(CacheKey::from_hex) {
                    roles.index.delete(key).await?;
                }
            }
        }
        let r = json!({"dry_run": dry_run, "missing_from_index": missing, "stale_pointers": stale,
                       "dangling_pointers": dangling, "entries_scanned": report.entries_scanned,
                       "index_pointers": report.index_pointers});
        if !dry_run {
            self.audit_repair("index", &r).await;
        }
        Ok(r)
    }
}
