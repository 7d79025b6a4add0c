//! The gateway's recovery watch:
//!
//! - **A lost index is noticed within one interval.** The index keeps a
//!   generation marker (in Redis, a key with no TTL). When it is gone while
//!   metadata holds entries, the index lost its data (a restart without
//!   persistence, a `FLUSHALL`): a `rebuild-index` job is enqueued at once,
//!   logged and audited. Requests keep flowing meanwhile (misses go to the
//!   provider as before).
//! - **After an outage, entries that expired meanwhile are refreshed.** When
//!   the index or artifacts breaker closes after being open, a
//!   `refresh-stale` job covers the outage window (most hit first, within the
//!   warmers' budget).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::jobs::{default_priority, REBUILD_INDEX, REFRESH_STALE};
use super::Recovery;
use recache_core::breaker::BreakerState;
use recache_storage::queue::{new_token, NewJob};
use recache_storage::roles::{now_ms, AuditEvent};

/// One check of the generation marker. Returns the job enqueued, if any.
pub async fn check_index(r: &Recovery) -> Option<i64> {
    let roles = &r.cache.roles;
    match roles.index.generation().await {
        Ok(Some(_)) | Err(_) => return None,
        Ok(None) => {}
    }
    let entries = roles.metadata.count_entries().await.ok()?;
    let generation = new_token();
    let mut job = None;
    if entries > 0 {
        r.cache.metrics.index_losses.fetch_add(1, Ordering::Relaxed);
        let enqueued = r
            .queue
            .enqueue(
                NewJob::new(
                    REBUILD_INDEX,
                    json!({"reason": "index lost its data", "generation": generation}),
                )
                .priority(default_priority(REBUILD_INDEX))
                .unique(format!("{REBUILD_INDEX}:{generation}"))
                .max_attempts(r.config.warmer.max_attempts),
            )
            .await;
        match enqueued {
            Ok(e) => {
                tracing::warn!(
                    engine = roles.index.engine(),
                    metadata_entries = entries,
                    job = e.id,
                    "the index lost its data (generation marker gone); rebuilding it from metadata, no provider calls"
                );
                job = Some(e.id);
                r.cache
                    .audit(AuditEvent {
                        id: format!("index-loss-{generation}"),
                        at_ms: now_ms(),
                        tenant: None,
                        actor: "gateway".into(),
                        action: "index.loss_detected".into(),
                        cache_key: None,
                        detail: json!({"engine": roles.index.engine(), "metadata_entries": entries, "job": e.id}),
                    })
                    .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "the index lost its data but the rebuild could not be queued; retrying");
                return None;
            }
        }
    }
    if let Err(e) = roles.index.set_generation(generation).await {
        tracing::warn!(error = %e, "could not write the index generation marker");
    }
    job
}

/// Runs the watch until `shutdown` turns true.
/// After an index outage: entries stored meanwhile reached metadata but not
/// the index (their index write failed), so the index lacks them, or still
/// points to the answer they replaced. Their pointers are rewritten from
/// metadata (no provider call). Returns the pointers written.
pub(crate) async fn reindex_since(r: &Recovery, from_ms: i64) -> Option<u64> {
    match settle_pointers(&r.cache.roles, from_ms).await {
        Ok((entries, written)) => {
            if written > 0 {
                tracing::info!(
                    entries,
                    written,
                    "index back: pointers of the entries stored during the outage rewritten from metadata"
                );
            }
            Some(written)
        }
        Err(e) => {
            tracing::warn!(error = %e, "after the index outage: could not rewrite the pointers");
            None
        }
    }
}

/// Makes the pointer of every live entry created since `from_ms` name the
/// artifact its row names: the rows are read, then their pointers, and those
/// that differ are rewritten from the rows; again (three rounds at most, 300 ms
/// apart) while any differed, since a store may have changed a row between
/// the two reads. A store in flight writes its row, then its pointer, so a
/// pointer rewritten from a row it has just written is the one it writes
/// next. Returns (entries looked at, pointers written).
pub(crate) async fn settle_pointers(
    roles: &recache_storage::roles::Roles,
    from_ms: i64,
) -> recache_storage::roles::Result<(u64, u64)> {
    let (mut entries, mut written) = (0, 0);
    for round in 0..3 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let rows = roles.metadata.live_entries(from_ms, now_ms()).await?;
        entries = entries.max(rows.len() as u64);
        let mut differ = Vec::new();
        for chunk in rows.chunks(1000) {
            let pointers = roles.index.get_many(chunk.iter().map(|(k, _)| *k).collect()).await?;
            for ((k, e), p) in chunk.iter().zip(pointers) {
                if p.is_none_or(|p| p.artifact != e.artifact) {
                    differ.push((*k, *e));
                }
            }
        }
        if differ.is_empty() {
            break;
        }
        for chunk in differ.chunks(5000) {
            written += roles.index.put_many(chunk.to_vec(), false).await?;
        }
    }
    Ok((entries, written))
}

pub async fn run(r: Arc<Recovery>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut open_since: [Option<i64>; 2] = [None, None];
    let mut index_down_since: Option<i64> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        check_index(&r).await;
        if let Some(b) = r.cache.roles.breaker("index") {
            match (b.state(), index_down_since) {
                (BreakerState::Open | BreakerState::HalfOpen | BreakerState::ForcedOpen, None) => {
                    index_down_since = Some(now_ms());
                }
                // From one interval (and a second) before the outage was seen: a write may have failed just before.
                (BreakerState::Closed, Some(since))
                    if reindex_since(&r, since - every.as_millis() as i64 - 1000)
                        .await
                        .is_some() =>
                {
                    index_down_since = None;
                }
                _ => {}
            }
            // Entries stored while the index was out get their pointers, however
            // short the outage was (the watch may not have seen the breaker open).
            let pending = r.cache.unindexed_since.load(Ordering::Relaxed);
            if pending > 0 && b.state() == BreakerState::Closed && reindex_since(&r, pending - 1000).await.is_some() {
                let _ = r
                    .cache
                    .unindexed_since
                    .compare_exchange(pending, 0, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
        if !r.config.warmer.refresh_stale_on_recovery {
            continue;
        }
        for (i, backend) in ["index", "artifacts"].into_iter().enumerate() {
            let Some(b) = r.cache.roles.breaker(backend) else {
                continue;
            };
            match (b.state(), open_since[i]) {
                (BreakerState::Open | BreakerState::HalfOpen | BreakerState::ForcedOpen, None) => {
                    open_since[i] = Some(now_ms());
                }
                (BreakerState::Closed, Some(since)) => {
                    open_since[i] = None;
                    let now = now_ms();
                    let job = NewJob::new(
                        REFRESH_STALE,
                        json!({"from_ms": since - every.as_millis() as i64, "to_ms": now, "backend": backend, "min_hits": 1}),
                    )
                    .priority(default_priority(REFRESH_STALE))
                    .unique(format!("{REFRESH_STALE}:{backend}:{since}"))
                    .max_attempts(r.config.warmer.max_attempts);
                    match r.queue.enqueue(job).await {
                        Ok(e) => tracing::info!(
                            backend,
                            job = e.id,
                            outage_seconds = (now - since) / 1000,
                            "backend recovered; refreshing entries that expired during the outage"
                        ),
                        Err(e) => tracing::warn!(backend, error = %e, "could not queue the post-outage refresh"),
                    }
                }
                _ => {}
            }
        }
    }
}
