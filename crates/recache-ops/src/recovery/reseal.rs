//! Reseal ("Data protection" in `ARCHITECTURE.md`): answers stored before
//! encryption was turned on, or sealed with a tenant's retired data key,
//! are sealed again with the tenant's active key, in place. A `reseal` job
//! pages through metadata in key order and checkpoints after every page, so
//! it resumes where it stopped; until it finishes, the gateway reads both
//! forms (a plain artifact opens as it is).
//!
//! Per page: each artifact that needs it is read, checked against its
//! name, opened, sealed and written under its new name; the index pointers
//! that named the old artifact move to the new one; then metadata swaps the
//! artifact of each entry that still has the old one ([`Metadata::replace_artifacts`],
//! hit counts kept). An entry stored again meanwhile keeps its new answer:
//! the pointer is put back from metadata and the resealed copy deleted. The
//! old artifacts are deleted one grace period later, so a reader that took
//! the old pointer just before the move still finds its answer.
//!
//! [`Metadata::replace_artifacts`]: recache_storage::roles::Metadata::replace_artifacts

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::Recovery;
use recache_core::artifact;
use recache_core::key::CacheKey;
use recache_core::seal;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::roles::keyring::{Keyring, KeyringError};
use recache_storage::roles::{now_ms, ArtifactId, ArtifactSwap, AuditEvent, EntryRecord, IndexEntry};

pub const RESEAL: &str = "reseal";

/// Entries per page (a job's payload may ask for fewer: `page`).
pub const PAGE: u32 = 200;

/// How long an old artifact outlives the move of its pointer.
const GRACE: Duration = Duration::from_secs(2);

/// What became of one entry of a page.
enum Outcome {
    /// Sealed again: the swap to make and the pointer it needs.
    Resealed(ArtifactSwap, IndexEntry),
    /// Already sealed with its tenant's active key.
    Current,
    /// The artifact is gone (audit and repair deal with it).
    Missing,
    /// The artifact does not match its name or its entry, or does not open:
    /// left as it is for audit to report.
    Unusable(String),
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn add(p: &mut Value, k: &str, n: u64) {
    p[k] = json!(u(p, k) + n);
}

impl Recovery {
    /// The `reseal` job: payload `{"filter": {"tenant": T}}` (or no tenant:
    /// every entry), `page`, `actor`, plus its own checkpoints.
    pub async fn reseal(&self, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let Some(keyring) = self.cache.roles.keyring.clone() else {
            return Err(JobError::Fatal(
                "a reseal needs a master key ([encryption] master_key_env or master_key_file)".into(),
            ));
        };
        // A rotation made by another process counts from now, not within a minute.
        keyring.forget_active();
        let tenant = p["filter"]["tenant"].as_str().map(str::to_string);
        let roles = &self.cache.roles;
        let page = p["page"].as_u64().map_or(PAGE, |n| n.clamp(1, 10_000) as u32);
        if p.get("total").is_none() {
            p["total"] = json!(roles.metadata.count_entries().await?);
            ctx.checkpoint(p.clone()).await?;
        }
        // Old artifacts whose entries moved before a restart: their grace starts again.
        let mut pending: Vec<(ArtifactId, Instant)> = p["pending"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().and_then(ArtifactId::from_hex))
                    .map(|id| (id, Instant::now()))
                    .collect()
            })
            .unwrap_or_default();
        let settled = self.settle_in_flight(&mut p).await?;
        pending.extend(settled.into_iter().map(|id| (id, Instant::now())));
        let started = Instant::now();
        let mut scanned_here = 0u64;
        let mut after = p["cursor"].as_str().and_then(CacheKey::from_hex);
        loop {
            let entries = roles.metadata.entries_page(after, page).await?;
            let Some(last) = entries.last().map(|e| e.key) else {
                break;
            };
            let scanned = entries.len() as u64;
            let mine: Vec<EntryRecord> = entries
                .into_iter()
                .filter(|e| tenant.as_deref().is_none_or(|t| e.tenant == t))
                .collect();
            let moved = self.reseal_page(&keyring, mine, &mut p, ctx).await?;
            p["in_flight"] = json!([]);
            pending.extend(moved.into_iter().map(|id| (id, Instant::now())));
            self.delete_after_grace(&mut pending, &mut p, false).await?;
            after = Some(last);
            add(&mut p, "scanned", scanned);
            scanned_here += scanned;
            p["cursor"] = json!(last.hex());
            p["pending"] = json!(pending.iter().map(|(id, _)| id.hex()).collect::<Vec<_>>());
            ctx.checkpoint(p.clone()).await?;
            let total = u(&p, "total");
            ctx.progress(u(&p, "scanned"), Some(total.max(u(&p, "scanned"))));
        }
        let secs = started.elapsed().as_secs_f64();
        self.delete_after_grace(&mut pending, &mut p, true).await?;
        let _ = roles.index.flush().await;
        let mut out = json!({
            "tenant": tenant,
            "scanned": u(&p, "scanned"),
            "seconds_this_run": secs,
        });
        for k in [
            "resealed",
            "already_sealed",
            "changed_meanwhile",
            "missing",
            "unusable",
            "old_deleted",
        ] {
            out[k] = json!(u(&p, k));
        }
        if secs > 0.0 {
            out["entries_per_second"] = json!((scanned_here as f64 / secs).round());
        }
        self.cache
            .audit(AuditEvent {
                id: recache_engine::cache::event_id(),
                at_ms: now_ms(),
                tenant,
                actor: p["actor"].as_str().unwrap_or("cli").to_string(),
                action: "encryption.reseal".into(),
                cache_key: None,
                detail: json!({"job": ctx.job_id(), "result": out}),
            })
            .await;
        Ok(out)
    }

    /// Reseals one page; returns the old artifacts whose entries moved.
    async fn reseal_page(
        &self,
        keyring: &Keyring,
        entries: Vec<EntryRecord>,
        p: &mut Value,
        ctx: &dyn JobCtx,
    ) -> Result<Vec<ArtifactId>, JobError> {
        let roles = &self.cache.roles;
        let outcomes: Vec<(EntryRecord, Outcome)> = futures_util::stream::iter(entries)
            .map(|e| async move {
                let o = self.reseal_one(keyring, &e).await;
                o.map(|o| (e, o))
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut swaps = Vec::new();
        let mut pointers = Vec::new();
        for (e, o) in outcomes {
            match o {
                Outcome::Resealed(swap, ptr) => {
                    pointers.push((e.key, swap.old, ptr));
                    swaps.push(swap);
                }
                Outcome::Current => add(p, "already_sealed", 1),
                Outcome::Missing => add(p, "missing", 1),
                Outcome::Unusable(why) => {
                    tracing::warn!(key = %e.key, reason = %why, "reseal: entry left as it is (audit reports it)");
                    add(p, "unusable", 1);
                }
            }
        }
        if swaps.is_empty() {
            return Ok(Vec::new());
        }
        // Recorded before anything moves: a run stopped from here on is settled by the next.
        p["in_flight"] = json!(swaps
            .iter()
            .map(|s| [s.key.hex(), s.old.hex(), s.new.hex()])
            .collect::<Vec<_>>());
        ctx.checkpoint(p.clone()).await?;
        // The pointers that name the old artifact move first (the new one is written).
        let keys: Vec<CacheKey> = pointers.iter().map(|(k, _, _)| *k).collect();
        let current = roles.index.get_many(keys).await?;
        let moves: Vec<(CacheKey, IndexEntry)> = pointers
            .into_iter()
            .zip(current)
            .filter(|((_, old, _), cur)| cur.as_ref().is_some_and(|c| c.artifact == *old))
            .map(|((k, _, ptr), _)| (k, ptr))
            .collect();
        if !moves.is_empty() {
            roles.index.put_many(moves, false).await?;
        }
        let changed = roles.metadata.replace_artifacts(swaps.clone()).await?;
        let mut moved = Vec::new();
        for (swap, ok) in swaps.into_iter().zip(changed) {
            if ok {
                add(p, "resealed", 1);
                moved.push(swap.old);
            } else {
                add(p, "changed_meanwhile", 1);
                moved.extend(self.undo_move(swap.key, swap.old, swap.new, None).await?);
            }
        }
        Ok(moved)
    }

    /// The swap of `key` from `old` to `new` did not happen (or is not
    /// known to have happened: `current` is what metadata holds, read here
    /// when `None`): what metadata says stands. A pointer moved to `new` is
    /// put back, and `new` is deleted. Returns the old artifact when it is
    /// garbage too (the entry moved on, or is gone, or the swap was made).
    async fn undo_move(
        &self,
        key: CacheKey,
        old: ArtifactId,
        new: ArtifactId,
        current: Option<Option<EntryRecord>>,
    ) -> Result<Option<ArtifactId>, JobError> {
        let roles = &self.cache.roles;
        let entry = match current {
            Some(e) => e,
            None => roles.metadata.get_entry(key).await?,
        };
        let now = entry.as_ref().map(|e| e.artifact);
        if now == Some(new) {
            return Ok(Some(old)); // the swap was made before the stop
        }
        if roles.index.get(key).await?.is_some_and(|c| c.artifact == new) {
            match &entry {
                Some(e) => roles.index.put(key, e.index_entry()).await?,
                None => {
                    roles.index.delete(key).await?;
                }
            }
        }
        roles.artifacts.delete(new).await?;
        Ok((now != Some(old)).then_some(old))
    }

    /// The moves a stopped run left in flight (checkpointed before its
    /// swap): each is finished or undone as metadata says.
    async fn settle_in_flight(&self, p: &mut Value) -> Result<Vec<ArtifactId>, JobError> {
        let triples: Vec<(CacheKey, ArtifactId, ArtifactId)> = p["in_flight"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        Some((
                            CacheKey::from_hex(t[0].as_str()?)?,
                            ArtifactId::from_hex(t[1].as_str()?)?,
                            ArtifactId::from_hex(t[2].as_str()?)?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut garbage = Vec::new();
        for (key, old, new) in triples {
            let entry = self.cache.roles.metadata.get_entry(key).await?;
            if entry.as_ref().is_some_and(|e| e.artifact == new) {
                add(p, "resealed", 1);
            }
            garbage.extend(self.undo_move(key, old, new, Some(entry)).await?);
        }
        p["in_flight"] = json!([]);
        Ok(garbage)
    }

    /// Reads, checks and seals one entry's artifact (writing the sealed copy).
    async fn reseal_one(&self, keyring: &Keyring, e: &EntryRecord) -> Result<Outcome, JobError> {
        let roles = &self.cache.roles;
        let Some(stored) = roles.artifacts.get(e.artifact).await? else {
            return Ok(Outcome::Missing);
        };
        let (active, _) = keyring.active_key(&e.tenant).await.map_err(key_error)?;
        if seal::is_sealed(&stored) && seal::key_id_of(&stored).is_ok_and(|id| id == active) {
            return Ok(Outcome::Current);
        }
        if ArtifactId::of(&stored) != e.artifact {
            return Ok(Outcome::Unusable("artifact SHA-256 mismatch".into()));
        }
        let envelope = match keyring.open(&stored).await {
            Ok(b) => b,
            Err(KeyringError::Metadata(err)) => return Err(err.into()),
            Err(err) => return Ok(Outcome::Unusable(err.to_string())),
        };
        let decoded = match artifact::decode(&envelope) {
            Ok(d) => d,
            Err(why) => return Ok(Outcome::Unusable(why)),
        };
        if decoded.meta.tenant != e.tenant || decoded.meta.key != e.key.hex() {
            return Ok(Outcome::Unusable("artifact belongs to another key or tenant".into()));
        }
        let sealed: Bytes = keyring.seal(&e.tenant, &envelope).await.map_err(key_error)?;
        let request = match std::str::from_utf8(&decoded.request) {
            Ok(text) => Some(keyring.seal_text(&e.tenant, text).await.map_err(key_error)?),
            Err(_) => None,
        };
        let new = ArtifactId::of(&sealed);
        let size = sealed.len() as u64;
        roles.artifacts.put(new, sealed).await?;
        let swap = ArtifactSwap {
            key: e.key,
            old: e.artifact,
            new,
            response_bytes: size,
            request,
        };
        let ptr = IndexEntry {
            artifact: new,
            size,
            created_at_ms: e.created_at_ms,
            expires_at_ms: e.expires_at_ms,
        };
        Ok(Outcome::Resealed(swap, ptr))
    }

    /// Deletes the old artifacts whose grace has passed (all of them, once
    /// the grace of the last has passed, when `all`).
    async fn delete_after_grace(
        &self,
        pending: &mut Vec<(ArtifactId, Instant)>,
        p: &mut Value,
        all: bool,
    ) -> Result<(), JobError> {
        if all {
            if let Some(newest) = pending.iter().map(|(_, at)| *at).max() {
                tokio::time::sleep(GRACE.saturating_sub(newest.elapsed())).await;
            }
        }
        let (due, keep): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(_, at)| at.elapsed() >= GRACE);
        *pending = keep;
        let artifacts = &self.cache.roles.artifacts;
        let gone: Vec<bool> = futures_util::stream::iter(due)
            .map(|(id, _)| async move { artifacts.delete(id).await })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        add(p, "old_deleted", gone.iter().filter(|g| **g).count() as u64);
        Ok(())
    }
}

fn key_error(e: KeyringError) -> JobError {
    match e {
        KeyringError::Metadata(err) => err.into(),
        other => JobError::Failed(format!("reseal: {other}")),
    }
}
