//! One conformance suite per role: plain async scenarios over `&dyn Role`.
//! Every implementation's tests call the same list (see
//! `tests/conformance.rs`), so an engine either behaves like the others or
//! fails here. Scenarios panic with a message naming what broke.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::{
    now_ms, ArtifactId, Artifacts, AuditEvent, EntryRecord, HitUpdate, Index, IndexEntry, Metadata, VectorPoint,
    Vectors,
};
use crate::key::{cache_key, CacheKey};

/// A key unique to this run and label.
pub fn test_key(label: &str) -> CacheKey {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| format!("{}-{}", std::process::id(), now_ms()));
    cache_key("conformance", run, "chat", label)
}

fn entry(artifact: u8, ttl_ms: i64) -> IndexEntry {
    let now = now_ms();
    IndexEntry {
        artifact: ArtifactId([artifact; 32]),
        size: 100 + artifact as u64,
        created_at_ms: now,
        expires_at_ms: now + ttl_ms,
    }
}

// ---------------------------------------------------------------- index

pub async fn index_put_get_overwrite_delete(index: &dyn Index) {
    let k = test_key("index-basic");
    assert_eq!(index.get(k).await.unwrap(), None, "unknown key is a miss, not an error");
    let e1 = entry(1, 60_000);
    index.put(k, e1).await.unwrap();
    assert_eq!(index.get(k).await.unwrap(), Some(e1), "get returns what put stored");
    let e2 = entry(2, 60_000);
    index.put(k, e2).await.unwrap();
    assert_eq!(index.get(k).await.unwrap(), Some(e2), "put overwrites");
    assert!(index.delete(k).await.unwrap(), "delete reports an existing key");
    assert_eq!(index.get(k).await.unwrap(), None, "deleted key is gone");
    assert!(!index.delete(k).await.unwrap(), "deleting a missing key reports false");
}

pub async fn index_expiry(index: &dyn Index) {
    let k = test_key("index-expiry");
    let e = entry(3, 400);
    index.put(k, e).await.unwrap();
    index.purge_expired(now_ms()).await.unwrap();
    assert_eq!(index.get(k).await.unwrap(), Some(e), "not expired yet: kept");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    index.purge_expired(now_ms()).await.unwrap();
    assert_eq!(
        index.get(k).await.unwrap(),
        None,
        "expired entries are gone after a purge (or by the engine's own TTL)"
    );
    // A pointer that is already past its expiry is never stored.
    let past = test_key("index-expiry-past");
    index.put(past, entry(4, -1)).await.unwrap();
    index.purge_expired(now_ms()).await.unwrap();
    assert_eq!(index.get(past).await.unwrap(), None);
}

pub async fn index_concurrent_writers(index: Arc<dyn Index>) {
    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let index = index.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u8 {
                let k = test_key(&format!("index-conc-{t}-{i}"));
                index.put(k, entry(i, 60_000)).await.unwrap();
                // Everyone also fights over one shared key.
                index
                    .put(test_key("index-conc-shared"), entry(t, 60_000))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for t in 0..16u8 {
        for i in 0..50u8 {
            let got = index.get(test_key(&format!("index-conc-{t}-{i}"))).await.unwrap();
            assert_eq!(
                got.map(|e| e.artifact),
                Some(ArtifactId([i; 32])),
                "writer {t} key {i} lost"
            );
        }
    }
    let shared = index
        .get(test_key("index-conc-shared"))
        .await
        .unwrap()
        .expect("shared key present");
    assert!(shared.artifact.0[0] < 16, "shared key holds one writer's whole value");
    assert!(index.count().await.unwrap() >= 16 * 50, "count sees every entry");
}

/// Bulk writes (rebuilds), the audit scan and the generation marker.
pub async fn index_bulk_scan_generation(index: &dyn Index) {
    let keys: Vec<CacheKey> = (0..300).map(|i| test_key(&format!("index-bulk-{i}"))).collect();
    let newer = entry(9, 60_000);
    index.put(keys[0], newer).await.unwrap();
    let batch: Vec<(CacheKey, IndexEntry)> = keys.iter().map(|k| (*k, entry(5, 60_000))).collect();
    let written = index.put_many(batch.clone(), true).await.unwrap();
    assert_eq!(written, 299, "if_absent keeps the pointer written after the loss");
    assert_eq!(index.get(keys[0]).await.unwrap(), Some(newer));
    let mut probe = vec![keys[0], test_key("index-bulk-absent"), keys[1]];
    let got = index.get_many(probe.clone()).await.unwrap();
    assert_eq!(got.len(), 3, "one answer per key, in order");
    assert_eq!((got[0], got[1]), (Some(newer), None));
    assert_eq!(got[2].map(|e| e.artifact), Some(ArtifactId([5; 32])));
    probe.clear();
    assert!(index.get_many(probe).await.unwrap().is_empty());
    assert_eq!(
        index.get(keys[1]).await.unwrap().map(|e| e.artifact),
        Some(ArtifactId([5; 32]))
    );
    assert_eq!(
        index.put_many(batch, false).await.unwrap(),
        300,
        "overwrite mode writes all"
    );
    assert_eq!(
        index.get(keys[0]).await.unwrap().map(|e| e.artifact),
        Some(ArtifactId([5; 32]))
    );
    // A full scan sees every key exactly once (engines may repeat; dedup by key).
    let mut seen = std::collections::HashSet::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let (page, next) = index.scan(cursor, 100).await.unwrap();
        for (k, e) in page {
            if keys.contains(&k) {
                assert_eq!(e.artifact, ArtifactId([5; 32]), "scan returns the pointer");
                seen.insert(k);
            }
        }
        pages += 1;
        assert!(pages < 100_000, "scan terminates");
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 300, "scan saw every key");
    // The generation marker survives as long as the data does.
    index.set_generation("gen-1".into()).await.unwrap();
    assert!(index.generation().await.unwrap().is_some(), "marker kept");
}

/// A wipe (drills' losses) leaves nothing: no pointer, no generation marker.
/// Destructive: run it last.
pub async fn index_wipe(index: &dyn Index) {
    index.put(test_key("index-wipe"), entry(3, 60_000)).await.unwrap();
    index.set_generation("gen-wipe".into()).await.unwrap();
    let removed = index.wipe().await.unwrap();
    assert!(removed >= 1, "wipe reports what it removed");
    assert_eq!(index.get(test_key("index-wipe")).await.unwrap(), None);
    // (count() may include keys of others sharing a Redis: the scan is the index's own.)
    let (mut cursor, mut left) = (0, 0);
    loop {
        let (page, next) = index.scan(cursor, 1000).await.unwrap();
        left += page.len();
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(left, 0, "no pointer left after a wipe");
    let generation = index.generation().await.unwrap();
    assert!(
        generation.is_none() || generation.as_deref() == Some("in-process"),
        "a wiped networked index forgets its generation marker: {generation:?}"
    );
}

pub async fn index_health(index: &dyn Index) {
    index.check().await.expect("a healthy index passes its check");
}

// ------------------------------------------------------------ artifacts

pub async fn artifacts_round_trip(store: &dyn Artifacts) {
    let body = Bytes::from(format!("conformance artifact {}", now_ms()));
    let id = ArtifactId::of(&body);
    assert_eq!(
        store.get(id).await.unwrap(),
        None,
        "missing artifact is None, not an error"
    );
    store.put(id, body.clone()).await.unwrap();
    assert_eq!(
        store.get(id).await.unwrap(),
        Some(body.clone()),
        "bytes come back unchanged"
    );
    store.put(id, body.clone()).await.unwrap();
    assert_eq!(
        store.get(id).await.unwrap(),
        Some(body.clone()),
        "re-putting the same content is harmless"
    );
    assert!(
        store.list().await.unwrap().iter().any(|a| a.id == id),
        "list includes the stored artifact"
    );
    assert!(store.delete(id).await.unwrap() || store.get(id).await.unwrap().is_none());
    assert_eq!(store.get(id).await.unwrap(), None, "deleted artifact is gone");
    assert!(
        !store.list().await.unwrap().iter().any(|a| a.id == id),
        "list forgets deleted artifacts"
    );
}

/// The store path's batches: every artifact of a batch comes back, and the
/// listing shows exactly them (no staged leftovers).
pub async fn artifacts_put_many(store: &dyn Artifacts) {
    let items: Vec<(ArtifactId, Bytes)> = (0..20)
        .map(|i| {
            let body = Bytes::from(format!("conformance batch {i} {}", now_ms()));
            (ArtifactId::of(&body), body)
        })
        .collect();
    let before = store.list().await.unwrap().len();
    store.put_many(items.clone()).await.unwrap();
    for (id, body) in &items {
        assert_eq!(
            store.get(*id).await.unwrap().as_ref(),
            Some(body),
            "every artifact of the batch"
        );
    }
    let listed = store.list().await.unwrap();
    assert_eq!(
        listed.len(),
        before + items.len(),
        "the batch, and nothing else, is listed"
    );
    store.put_many(Vec::new()).await.unwrap();
    for (id, _) in &items {
        store.delete(*id).await.unwrap();
    }
}

pub async fn artifacts_large_payload(store: &dyn Artifacts) {
    let big: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let body = Bytes::from(big);
    let id = ArtifactId::of(&body);
    store.put(id, body.clone()).await.unwrap();
    let back = store.get(id).await.unwrap().expect("large artifact stored");
    assert_eq!(back.len(), body.len());
    assert_eq!(ArtifactId::of(&back), id, "large payload intact");
    store.delete(id).await.unwrap();
}

pub async fn artifacts_concurrent_writers(store: Arc<dyn Artifacts>) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let body = Bytes::from(format!("conc {t} {i} {}", now_ms()));
                let id = ArtifactId::of(&body);
                store.put(id, body).await.unwrap();
                // Same content from every writer at once.
                let shared = Bytes::from_static(b"the same bytes from every writer");
                store.put(ArtifactId::of(&shared), shared).await.unwrap();
                ids.push(id);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let listed = store.list().await.unwrap();
    for id in &all {
        let b = store.get(*id).await.unwrap().expect("every concurrent write landed");
        assert_eq!(ArtifactId::of(&b), *id);
        assert!(listed.iter().any(|a| a.id == *id));
        store.delete(*id).await.unwrap();
    }
    let shared = Bytes::from_static(b"the same bytes from every writer");
    assert_eq!(store.get(ArtifactId::of(&shared)).await.unwrap(), Some(shared));
}

pub async fn artifacts_health(store: &dyn Artifacts) {
    store.check().await.expect("a healthy artifact store passes its check");
}

// ------------------------------------------------------------- metadata

fn record(label: &str, artifact: u8, ttl_ms: i64) -> EntryRecord {
    let now = now_ms();
    let mut e = sample_entry(test_key(label), ArtifactId([artifact; 32]), now, now + ttl_ms);
    e.request = Some(format!("{{\"label\":\"{label}\"}}"));
    e
}

/// A synthetic entry row for tests: the given key, artifact and times, no hits.
pub fn sample_entry(key: CacheKey, artifact: ArtifactId, created_at_ms: i64, expires_at_ms: i64) -> EntryRecord {
    EntryRecord {
        key,
        tenant: "conformance".into(),
        namespace: "default".into(),
        endpoint: "chat".into(),
        model: "gpt-test".into(),
        artifact,
        request_bytes: 10,
        response_bytes: 20,
        prompt_tokens: 3,
        completion_tokens: 4,
        cost_usd: 0.25,
        created_at_ms,
        expires_at_ms,
        last_hit_at_ms: None,
        hit_count: 0,
        request: None,
        artifact_missing: false,
    }
}

pub async fn metadata_entries(meta: &dyn Metadata) {
    let r = record("meta-basic", 7, 60_000);
    assert_eq!(meta.get_entry(r.key).await.unwrap(), None);
    assert_eq!(
        meta.upsert_entry(r.clone()).await.unwrap(),
        None,
        "a new entry replaces nothing"
    );
    assert_eq!(meta.get_entry(r.key).await.unwrap(), Some(r.clone()), "round trip");
    let mut r2 = record("meta-basic", 8, 60_000);
    r2.model = "gpt-other".into();
    assert_eq!(
        meta.upsert_entry(r2.clone()).await.unwrap(),
        Some(ArtifactId([7; 32])),
        "upsert returns the replaced artifact"
    );
    assert_eq!(meta.get_entry(r.key).await.unwrap().unwrap().model, "gpt-other");
    meta.record_hits(vec![HitUpdate {
        key: r.key,
        count: 3,
        last_hit_ms: 1234,
    }])
    .await
    .unwrap();
    meta.record_hits(vec![HitUpdate {
        key: r.key,
        count: 2,
        last_hit_ms: 1000,
    }])
    .await
    .unwrap();
    let got = meta.get_entry(r.key).await.unwrap().unwrap();
    assert_eq!(
        (got.hit_count, got.last_hit_at_ms),
        (5, Some(1234)),
        "hits add up; last hit never goes back"
    );
    assert!(meta.count_entries().await.unwrap() >= 1);
    assert!(meta.delete_entry(r.key).await.unwrap());
    assert!(!meta.delete_entry(r.key).await.unwrap());
    assert_eq!(meta.get_entry(r.key).await.unwrap(), None);
}

pub async fn metadata_live_entries_and_purge(meta: &dyn Metadata) {
    let live = record("meta-live", 9, 60_000);
    let dead = record("meta-dead", 10, 1);
    meta.upsert_entry(live.clone()).await.unwrap();
    meta.upsert_entry(dead.clone()).await.unwrap();
    let now = now_ms() + 5;
    let listed = meta.live_entries(live.created_at_ms - 10, now).await.unwrap();
    assert!(
        listed.iter().any(|(k, e)| *k == live.key && *e == live.index_entry()),
        "live entry listed with its pointer"
    );
    assert!(!listed.iter().any(|(k, _)| *k == dead.key), "expired entry not listed");
    let later = meta.live_entries(live.created_at_ms + 60_000, now).await.unwrap();
    assert!(!later.iter().any(|(k, _)| *k == live.key), "since filter applies");
    let purged = meta.purge_expired(now).await.unwrap();
    assert!(
        purged.contains(&ArtifactId([10; 32])),
        "purge returns the artifacts it released"
    );
    assert_eq!(meta.get_entry(dead.key).await.unwrap(), None);
    assert!(
        meta.get_entry(live.key).await.unwrap().is_some(),
        "purge keeps live entries"
    );
    meta.delete_entry(live.key).await.unwrap();
}

/// Paging, reconciliation inserts, missing marks, value order, expiry
/// windows and hourly counts: what recovery jobs and audits rely on.
pub async fn metadata_recovery_queries(meta: &dyn Metadata) {
    let mut recs = Vec::new();
    for i in 0..25u8 {
        let mut r = record(&format!("meta-rec-{i}"), 100 + i, 60_000);
        r.hit_count = i as u64;
        r.cost_usd = 0.01 * (25 - i) as f64;
        recs.push(r);
    }
    let mut r0_newer = recs[0].clone();
    r0_newer.model = "kept".into();
    meta.upsert_entry(r0_newer).await.unwrap();
    assert_eq!(
        meta.insert_missing_entries(recs.clone()).await.unwrap(),
        24,
        "an existing row is never replaced by reconciliation"
    );
    assert_eq!(meta.get_entry(recs[0].key).await.unwrap().unwrap().model, "kept");
    let got = meta.get_entry(recs[3].key).await.unwrap().unwrap();
    assert_eq!(got.request, recs[3].request, "the canonical request is stored");
    // Paging in key order covers every row once, without the request.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = meta.entries_page(after, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        assert!(page.iter().all(|e| e.request.is_none()), "pages leave the request out");
        after = page.last().map(|e| e.key);
        seen.extend(page.into_iter().map(|e| e.key));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages come in key order with no repeats");
    assert!(recs.iter().all(|r| seen.contains(&r.key)), "every row is paged");
    // Missing marks, listed by value (hits x cost), with the request.
    let marked: Vec<CacheKey> = recs[10..15].iter().map(|r| r.key).collect();
    assert_eq!(meta.set_artifact_missing(marked.clone(), true).await.unwrap(), 5);
    assert_eq!(
        meta.set_artifact_missing(marked.clone(), true).await.unwrap(),
        0,
        "idempotent"
    );
    let missing = meta.missing_entries(now_ms(), 100).await.unwrap();
    let ours: Vec<&EntryRecord> = missing.iter().filter(|e| marked.contains(&e.key)).collect();
    assert_eq!(ours.len(), 5);
    let values: Vec<f64> = ours.iter().map(|e| e.hit_count as f64 * e.cost_usd).collect();
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "most valuable first: {values:?}"
    );
    assert!(ours.iter().all(|e| e.artifact_missing && e.request.is_some()));
    // Re-registering an entry clears its mark.
    meta.upsert_entry(recs[10].clone()).await.unwrap();
    assert!(!meta.get_entry(recs[10].key).await.unwrap().unwrap().artifact_missing);
    // Expired within a window, most hit first.
    let now = now_ms();
    let mut expired = Vec::new();
    for i in 0..4u8 {
        let mut r = record(&format!("meta-expired-{i}"), 200 + i, -1000 - i as i64);
        r.hit_count = 10 + i as u64;
        expired.push(r.clone());
        meta.upsert_entry(r).await.unwrap();
    }
    let window = meta.expired_entries(now - 60_000, now, 100).await.unwrap();
    let ours: Vec<&EntryRecord> = window
        .iter()
        .filter(|e| expired.iter().any(|x| x.key == e.key))
        .collect();
    assert_eq!(ours.len(), 4, "expired entries in the window");
    assert!(
        ours.windows(2).all(|w| w[0].hit_count >= w[1].hit_count),
        "most hit first"
    );
    assert!(window.iter().all(|e| e.expires_at_ms <= now && e.request.is_some()));
    // Hourly counts see this hour's rows.
    let hours = meta.hourly_counts(now - 3_600_000).await.unwrap();
    assert!(hours.iter().map(|(_, n)| n).sum::<u64>() >= 29, "{hours:?}");
    assert!(hours.iter().all(|(h, _)| h % 3_600_000 == 0));
}

/// Usage rows of the same hour and group add up; other groups and hours stay apart.
pub async fn metadata_usage_adds_up(meta: &dyn Metadata) {
    let hour = 1_000 * 3_600_000;
    let row = |tenant: &str, hour_ms: i64, hits: u64, misses: u64, spent: f64| super::UsageRow {
        hour_ms,
        tenant: tenant.into(),
        namespace: "ns".into(),
        model: "m".into(),
        hits,
        misses,
        prompt_tokens: misses * 10,
        tokens_saved: hits * 7,
        usd_saved: hits as f64 * 0.5,
        usd_spent: spent,
        ..Default::default()
    };
    meta.record_usage(vec![row("a", hour, 1, 2, 0.25), row("b", hour, 0, 1, 0.125)])
        .await
        .unwrap();
    meta.record_usage(vec![row("a", hour, 3, 1, 0.5), row("a", hour + 3_600_000, 1, 0, 0.0)])
        .await
        .unwrap();
    let rows = meta.usage_since(hour).await.unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let a = rows.iter().find(|r| r.tenant == "a" && r.hour_ms == hour).unwrap();
    assert_eq!((a.hits, a.misses, a.prompt_tokens, a.tokens_saved), (4, 3, 30, 28));
    assert!(
        (a.usd_spent - 0.75).abs() < 1e-9 && (a.usd_saved - 2.0).abs() < 1e-9,
        "{a:?}"
    );
    assert_eq!(meta.usage_since(hour + 3_600_000).await.unwrap().len(), 1);
    assert!(meta.usage_since(hour + 7_200_000).await.unwrap().is_empty());
}

/// The store path's group commit: entries and audit events in one call,
/// each entry reporting the artifact it replaced, in order.
pub async fn metadata_write_batch(meta: &dyn Metadata) {
    let old = record("batch-old", 31, 60_000);
    meta.upsert_entry(old.clone()).await.unwrap();
    let replacing = record("batch-old", 32, 60_000);
    let fresh: Vec<EntryRecord> = (0..40).map(|i| record(&format!("batch-new-{i}"), 33, 60_000)).collect();
    let id = format!("conformance-{}", test_key("batch-audit").hex());
    let ev = |n: usize| AuditEvent {
        id: format!("{id}-{n}"),
        at_ms: now_ms(),
        tenant: Some("conformance".into()),
        actor: "test".into(),
        action: "entry.store".into(),
        cache_key: None,
        detail: json!({"n": n}),
    };
    let mut entries = vec![replacing.clone()];
    entries.extend(fresh.iter().cloned());
    let replaced = meta.write_batch(entries, vec![ev(1), ev(2), ev(2)]).await.unwrap();
    assert_eq!(replaced.len(), 41, "one answer per entry");
    assert_eq!(replaced[0], Some(ArtifactId([31; 32])), "the replaced artifact");
    assert!(replaced[1..].iter().all(Option::is_none), "new entries replace nothing");
    assert_eq!(
        meta.get_entry(old.key).await.unwrap().unwrap().artifact,
        ArtifactId([32; 32])
    );
    for e in &fresh {
        assert_eq!(
            meta.get_entry(e.key).await.unwrap().as_ref(),
            Some(e),
            "every entry of the batch"
        );
    }
    let recent = meta.recent_audit(1000).await.unwrap();
    assert_eq!(
        recent.iter().filter(|e| e.id.starts_with(&id)).count(),
        2,
        "audit events of the batch, a repeated id once"
    );
    assert_eq!(meta.write_batch(Vec::new(), Vec::new()).await.unwrap(), Vec::new());
    // A key named twice in one batch: written in order, the second replacing the first.
    let twice = vec![record("batch-twice", 34, 60_000), record("batch-twice", 35, 60_000)];
    let r = meta.write_batch(twice.clone(), Vec::new()).await.unwrap();
    assert_eq!(r, vec![None, Some(ArtifactId([34; 32]))]);
    assert_eq!(
        meta.get_entry(twice[0].key).await.unwrap().unwrap().artifact,
        ArtifactId([35; 32])
    );
    meta.delete_entry(twice[0].key).await.unwrap();
    for e in fresh.iter().chain([&old]) {
        meta.delete_entry(e.key).await.unwrap();
    }
}

pub async fn metadata_audit_is_idempotent(meta: &dyn Metadata) {
    let id = format!("conformance-{}", test_key("audit").hex());
    let ev = |suffix: &str| AuditEvent {
        id: format!("{id}-{suffix}"),
        at_ms: now_ms(),
        tenant: Some("conformance".into()),
        actor: "test".into(),
        action: "entry.store".into(),
        cache_key: None,
        detail: json!({"n": suffix}),
    };
    meta.append_audit(vec![ev("1"), ev("2")]).await.unwrap();
    meta.append_audit(vec![ev("2"), ev("3")]).await.unwrap();
    let recent = meta.recent_audit(1000).await.unwrap();
    let mine: Vec<&AuditEvent> = recent.iter().filter(|e| e.id.starts_with(&id)).collect();
    assert_eq!(mine.len(), 3, "a replayed event id is stored once");
    assert_eq!(mine[0].id, format!("{id}-3"), "newest first");
    assert_eq!(mine[0].detail, json!({"n": "3"}));
}

/// A snapshot streams every entry (with its request, counters and missing
/// mark) and audit event; importing it back restores them exactly, and rows
/// that exist are left alone.
pub async fn metadata_snapshot_round_trip(meta: &dyn Metadata) {
    use super::SnapshotBatch;
    let mut a = record("snap-a", 21, 60_000);
    a.request = Some("{\"model\":\"m\"}".into());
    let b = record("snap-b", 22, 60_000);
    meta.upsert_entry(a.clone()).await.unwrap();
    meta.upsert_entry(b.clone()).await.unwrap();
    meta.record_hits(vec![HitUpdate {
        key: a.key,
        count: 4,
        last_hit_ms: 99,
    }])
    .await
    .unwrap();
    meta.set_artifact_missing(vec![b.key], true).await.unwrap();
    let ev_id = format!("snap-{}", test_key("snap-ev").hex());
    meta.append_audit(vec![AuditEvent {
        id: ev_id.clone(),
        at_ms: now_ms(),
        tenant: None,
        actor: "test".into(),
        action: "snap".into(),
        cache_key: None,
        detail: json!({"x": 1}),
    }])
    .await
    .unwrap();
    let (want_a, want_b) = (
        meta.get_entry(a.key).await.unwrap().unwrap(),
        meta.get_entry(b.key).await.unwrap().unwrap(),
    );
    assert_eq!((want_a.hit_count, want_b.artifact_missing), (4, true));
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = async {
        let mut got = Vec::new();
        while let Some(batch) = rx.recv().await {
            got.push(batch);
        }
        got
    };
    let (res, batches) = tokio::join!(meta.export_snapshot(tx), reader);
    res.expect("snapshot");
    let mut entries = Vec::new();
    let mut events = Vec::new();
    for batch in batches {
        match batch {
            SnapshotBatch::Entries(e) => entries.extend(e),
            SnapshotBatch::EntryLines(lines) => entries.extend(
                lines
                    .iter()
                    .map(|l| serde_json::from_str::<EntryRecord>(&l.json).expect("an exported line parses")),
            ),
            SnapshotBatch::Audit(e) => events.extend(e),
            SnapshotBatch::Jobs(_) => {}
        }
    }
    let snap_a = entries
        .iter()
        .find(|e| e.key == a.key)
        .expect("entry a in the snapshot");
    assert_eq!(snap_a, &want_a, "with its request and counters");
    assert!(events.iter().any(|e| e.id == ev_id));
    // Gone, then imported back: exactly as before.
    meta.delete_entry(a.key).await.unwrap();
    meta.delete_entry(b.key).await.unwrap();
    let mine: Vec<EntryRecord> = entries
        .into_iter()
        .filter(|e| e.key == a.key || e.key == b.key)
        .collect();
    assert_eq!(
        meta.import_snapshot(SnapshotBatch::Entries(mine.clone()))
            .await
            .unwrap(),
        2
    );
    assert_eq!(meta.get_entry(a.key).await.unwrap().unwrap(), want_a);
    assert_eq!(meta.get_entry(b.key).await.unwrap().unwrap(), want_b);
    // Rows that exist win: importing again changes nothing.
    assert_eq!(meta.import_snapshot(SnapshotBatch::Entries(mine)).await.unwrap(), 0);
    meta.import_snapshot(SnapshotBatch::Audit(events)).await.unwrap();
}

pub async fn metadata_concurrent_writers(meta: Arc<dyn Metadata>) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let meta = meta.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u8 {
                meta.upsert_entry(record(&format!("meta-conc-{t}-{i}"), i, 60_000))
                    .await
                    .unwrap();
                meta.record_hits(vec![HitUpdate {
                    key: test_key("meta-conc-shared"),
                    count: 1,
                    last_hit_ms: 1,
                }])
                .await
                .unwrap();
            }
        }));
    }
    meta.upsert_entry(record("meta-conc-shared", 1, 60_000)).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    for t in 0..8 {
        for i in 0..20u8 {
            assert!(meta
                .get_entry(test_key(&format!("meta-conc-{t}-{i}")))
                .await
                .unwrap()
                .is_some());
        }
    }
}

pub async fn metadata_health(meta: &dyn Metadata) {
    meta.check().await.expect("a healthy metadata store passes its check");
}

// ---------------------------------------------------------------- vectors

/// A unit vector pointing mostly along axis `axis`, tilted by `tilt` towards axis `axis + 1`.
pub(crate) fn unit_vector(dim: usize, axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    v[axis % dim] = 1.0;
    v[(axis + 1) % dim] = tilt;
    let n = (1.0 + tilt * tilt).sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn point(label: &str, scope: &str, vector: Vec<f32>, ttl_ms: i64) -> VectorPoint {
    VectorPoint {
        key: test_key(label),
        scope: scope.into(),
        tenant: "conformance".into(),
        text: format!("text of {label}"),
        expires_at_ms: now_ms() + ttl_ms,
        vector,
    }
}

/// A fresh collection name for one scenario (engines share servers across tests).
pub fn test_collection(label: &str) -> String {
    let k = test_key(label).hex();
    format!("conf-{label}-{}", &k[..12])
}

/// Upsert, search best-first with scores, replace by key, delete, count, list.
pub async fn vectors_upsert_search_delete(v: &dyn Vectors) {
    let col = test_collection("basic");
    let dim = 16;
    v.ensure_collection(&col, dim).await.expect("create collection");
    v.ensure_collection(&col, dim).await.expect("ensure is idempotent");
    assert!(
        v.ensure_collection(&col, dim + 1).await.is_err(),
        "a collection never takes vectors of another dimension"
    );
    let pts = vec![
        point("v-a", "s1", unit_vector(dim, 0, 0.0), 60_000),
        point("v-b", "s1", unit_vector(dim, 0, 0.5), 60_000),
        point("v-c", "s1", unit_vector(dim, 3, 0.0), 60_000),
    ];
    v.upsert(&col, pts).await.expect("upsert");
    let hits = v.search(&col, "s1", unit_vector(dim, 0, 0.1), 2).await.expect("search");
    assert_eq!(hits.len(), 2, "top-k bounds the answer: {hits:?}");
    assert_eq!(hits[0].key, test_key("v-a"), "best first: {hits:?}");
    assert_eq!(hits[1].key, test_key("v-b"));
    assert!(hits[0].score > hits[1].score);
    assert!(
        (hits[0].score - 0.995).abs() < 0.01,
        "cosine similarity: {}",
        hits[0].score
    );
    assert_eq!(hits[0].text, "text of v-a", "the text comes back for the guards");
    assert_eq!(v.count(Some(&col)).await.unwrap(), 3);
    // Not normalised on the way in: the engine normalises.
    let big: Vec<f32> = unit_vector(dim, 3, 0.0).iter().map(|x| x * 7.0).collect();
    let hits = v.search(&col, "s1", big, 1).await.unwrap();
    assert_eq!(hits[0].key, test_key("v-c"));
    assert!((hits[0].score - 1.0).abs() < 0.01, "{}", hits[0].score);
    // Replace by key: moves the point, the count stays.
    v.upsert(&col, vec![point("v-c", "s1", unit_vector(dim, 5, 0.0), 60_000)])
        .await
        .unwrap();
    assert_eq!(v.count(Some(&col)).await.unwrap(), 3, "upsert replaces by key");
    let hits = v.search(&col, "s1", unit_vector(dim, 5, 0.0), 1).await.unwrap();
    assert_eq!(hits[0].key, test_key("v-c"));
    // Wrong dimension is refused, never stored.
    assert!(v
        .upsert(&col, vec![point("v-x", "s1", vec![1.0; dim + 2], 60_000)])
        .await
        .is_err());
    // List in key order, paged.
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = v.list(&col, after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().copied();
        all.extend(page);
    }
    let mut want = vec![test_key("v-a"), test_key("v-b"), test_key("v-c")];
    want.sort();
    assert_eq!(all, want, "list pages through every key once, in order");
    // Whole points (backups): the same keys in order, with their payload and vectors.
    let mut pts = Vec::new();
    let mut after = None;
    loop {
        let page = v.points(&col, after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|p| p.key);
        pts.extend(page);
    }
    assert_eq!(pts.iter().map(|p| p.key).collect::<Vec<_>>(), want);
    assert!(pts
        .iter()
        .all(|p| p.scope == "s1" && p.tenant == "conformance" && p.text.starts_with("text of v-")));
    let c = pts.iter().find(|p| p.key == test_key("v-c")).unwrap();
    let dot: f32 = c.vector.iter().zip(unit_vector(dim, 5, 0.0)).map(|(a, b)| a * b).sum();
    assert!(dot > 0.99, "the stored vector comes back: cos {dot}");
    // Delete.
    assert_eq!(v.delete(vec![test_key("v-a"), test_key("nope")]).await.unwrap(), 1);
    let hits = v.search(&col, "s1", unit_vector(dim, 0, 0.0), 3).await.unwrap();
    assert!(
        hits.iter().all(|h| h.key != test_key("v-a")),
        "deleted is gone: {hits:?}"
    );
    assert_eq!(v.count(Some(&col)).await.unwrap(), 2);
    assert!(v
        .collections()
        .await
        .unwrap()
        .iter()
        .any(|c| c.name == col && c.dimension == dim));
}

/// A search never leaves its scope, and never returns an expired point.
pub async fn vectors_scope_isolation_and_expiry(v: &dyn Vectors) {
    let col = test_collection("scope");
    let dim = 8;
    v.ensure_collection(&col, dim).await.unwrap();
    let same = unit_vector(dim, 2, 0.0);
    v.upsert(
        &col,
        vec![
            point("sc-tenant-a", "scope-a", same.clone(), 60_000),
            point("sc-tenant-b", "scope-b", same.clone(), 60_000),
            point("sc-expired", "scope-c", same.clone(), -1_000),
        ],
    )
    .await
    .unwrap();
    let a = v.search(&col, "scope-a", same.clone(), 10).await.unwrap();
    assert_eq!(a.len(), 1, "only scope-a's point: {a:?}");
    assert_eq!(a[0].key, test_key("sc-tenant-a"));
    let none = v.search(&col, "scope-zzz", same.clone(), 10).await.unwrap();
    assert!(none.is_empty(), "an unknown scope finds nothing");
    let c = v.search(&col, "scope-c", same.clone(), 10).await.unwrap();
    assert!(c.is_empty(), "an expired point is never returned: {c:?}");
    assert!(v.purge_expired(now_ms()).await.unwrap() >= 1);
    // Another collection with the same scope name is separate too.
    let other = test_collection("scope-other");
    v.ensure_collection(&other, dim).await.unwrap();
    assert!(v.search(&other, "scope-a", same, 10).await.unwrap().is_empty());
    // A missing collection is an error, not an empty answer that hides a misconfiguration.
    assert!(v.search("conf-never-created", "s", vec![0.5; dim], 1).await.is_err());
}

/// Many concurrent writers and readers: nothing lost, no torn reads.
pub async fn vectors_concurrent_writers(v: Arc<dyn Vectors>) {
    let col = test_collection("conc");
    let dim = 32;
    v.ensure_collection(&col, dim).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let v = v.clone();
        let col = col.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let label = format!("conc-{t}-{i}");
                v.upsert(&col, vec![point(&label, "s", unit_vector(dim, t * 3 + i, 0.3), 60_000)])
                    .await
                    .unwrap();
                let _ = v.search(&col, "s", unit_vector(dim, i, 0.0), 3).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        v.count(Some(&col)).await.unwrap(),
        200,
        "every concurrent upsert landed"
    );
}

pub async fn vectors_health(v: &dyn Vectors) {
    let info = v.check().await.expect("health check");
    assert!(info.entries.is_some(), "the check reports the point count");
}
