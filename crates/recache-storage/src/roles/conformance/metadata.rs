//! The metadata role's scenarios.

use super::*;

pub(super) fn record(label: &str, artifact: u8, ttl_ms: i64) -> EntryRecord {
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

/// Usage rows of the same hour and group add up; other groups, dialects and
/// hours stay apart.
pub async fn metadata_usage_adds_up(meta: &dyn Metadata) {
    let hour = 1_000 * 3_600_000;
    let row = |tenant: &str, hour_ms: i64, hits: u64, misses: u64, spent: f64| crate::roles::UsageRow {
        hour_ms,
        tenant: tenant.into(),
        namespace: "ns".into(),
        model: "m".into(),
        dialect: "openai".into(),
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
    let anthropic = crate::roles::UsageRow {
        dialect: "anthropic".into(),
        ..row("a", hour, 2, 0, 0.0)
    };
    meta.record_usage(vec![anthropic]).await.unwrap();
    let rows = meta.usage_since(hour).await.unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let a = rows
        .iter()
        .find(|r| r.tenant == "a" && r.hour_ms == hour && r.dialect == "openai")
        .unwrap();
    let a2 = rows.iter().find(|r| r.dialect == "anthropic").unwrap();
    assert_eq!((a2.tenant.as_str(), a2.hits, a2.misses), ("a", 2, 0));
    assert_eq!((a.hits, a.misses, a.prompt_tokens, a.tokens_saved), (4, 3, 30, 28));
    assert!(
        (a.usd_spent - 0.75).abs() < 1e-9 && (a.usd_saved - 2.0).abs() < 1e-9,
        "{a:?}"
    );
    assert_eq!(meta.usage_since(hour + 3_600_000).await.unwrap().len(), 1);
    assert!(meta.usage_since(hour + 7_200_000).await.unwrap().is_empty());
}

/// Keys: stored by digest, listed per tenant (newest first), found by digest
/// and id, revoked once, expired no later than asked; digests are unique.
pub async fn metadata_keys(meta: &dyn Metadata) {
    use crate::roles::keys::KeyRecord;
    use recache_core::config::Limits;
    let key = |id: &str, tenant: &str, at: i64| KeyRecord {
        id: id.into(),
        tenant: tenant.into(),
        name: Some(format!("{id} name")),
        digest: format!("{:0>64}", id.trim_start_matches("key_")),
        prefix: "rk-abc".into(),
        created_at_ms: at,
        expires_at_ms: None,
        revoked_at_ms: None,
        limits: Limits {
            rpm: Some(5),
            models: Some(vec!["gpt-*".into()]),
            ..Limits::default()
        },
        rotated_from: None,
    };
    meta.create_key(key("key_1", "a", 1_000)).await.unwrap();
    meta.create_key(key("key_2", "a", 2_000)).await.unwrap();
    meta.create_key(key("key_3", "b", 3_000)).await.unwrap();
    let dup = KeyRecord {
        id: "key_4".into(),
        ..key("key_1", "a", 4_000)
    };
    assert!(meta.create_key(dup).await.is_err(), "a digest is unique");
    let a = meta.list_keys(Some("a".into())).await.unwrap();
    assert_eq!(a.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["key_2", "key_1"]);
    assert_eq!(meta.list_keys(None).await.unwrap().len(), 3);
    let found = meta.key_by_digest(key("key_3", "b", 0).digest).await.unwrap().unwrap();
    assert_eq!(
        found,
        key("key_3", "b", 3_000),
        "every field round-trips, limits included"
    );
    assert!(meta.key_by_digest("f".repeat(64)).await.unwrap().is_none());
    assert!(meta.revoke_key("key_1".into(), 5_000).await.unwrap());
    assert!(!meta.revoke_key("key_1".into(), 6_000).await.unwrap(), "revoked once");
    assert!(!meta.revoke_key("key_9".into(), 6_000).await.unwrap());
    let k1 = meta.key_by_id("key_1".into()).await.unwrap().unwrap();
    assert_eq!(k1.revoked_at_ms, Some(5_000));
    assert!(!k1.valid_at(5_001));
    assert!(meta.expire_key("key_2".into(), 9_000).await.unwrap());
    assert!(
        !meta.expire_key("key_2".into(), 10_000).await.unwrap(),
        "never later than asked"
    );
    assert!(meta.expire_key("key_2".into(), 8_000).await.unwrap());
    let k2 = meta.key_by_id("key_2".into()).await.unwrap().unwrap();
    assert_eq!(k2.expires_at_ms, Some(8_000));
    assert!(k2.valid_at(7_999) && !k2.valid_at(8_000));
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

/// Audit retention deletes the oldest events of one class first, at most
/// `limit` per call, nothing newer than its cut and nothing of the other class.
pub async fn metadata_audit_is_pruned_by_age(meta: &dyn Metadata) {
    use crate::roles::AuditClass::{Answers, Operations};
    let id = format!("conformance-{}", test_key("prune").hex());
    let ev = |suffix: &str, action: &str, at_ms: i64| AuditEvent {
        id: format!("{id}-{suffix}"),
        at_ms,
        tenant: Some("conformance".into()),
        actor: "test".into(),
        action: action.into(),
        cache_key: None,
        detail: json!({}),
    };
    // Older than any other scenario's events: the cut at 2000 ms touches only these.
    let fresh = now_ms();
    let before = meta.audit_summary().await.unwrap();
    meta.append_audit(vec![
        ev("new", "entry.store", fresh),
        ev("older", "entry.store", 1001),
        ev("oldest", "entry.store", 1000),
        ev("purge", "purge", 999),
        ev("purge-new", "purge", fresh),
    ])
    .await
    .unwrap();
    let s = meta.audit_summary().await.unwrap();
    assert_eq!(
        (s.answers - before.answers, s.operations - before.operations),
        (3, 2),
        "counted by class"
    );
    assert_eq!((s.oldest_answer_ms, s.oldest_operation_ms), (Some(1000), Some(999)));
    assert_eq!(
        meta.prune_audit(Answers, 2000, 1).await.unwrap(),
        1,
        "at most the limit"
    );
    let left = |recent: Vec<AuditEvent>| -> Vec<String> {
        let mut v: Vec<String> = recent
            .into_iter()
            .filter(|e| e.id.starts_with(&id))
            .map(|e| e.id[id.len() + 1..].to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        left(meta.recent_audit(100_000).await.unwrap()),
        ["new", "older", "purge", "purge-new"],
        "the oldest answer event went first; the older operations event stays"
    );
    assert_eq!(meta.prune_audit(Answers, 2000, 100).await.unwrap(), 1);
    assert_eq!(
        meta.prune_audit(Answers, 2000, 100).await.unwrap(),
        0,
        "no older answer event is left"
    );
    assert_eq!(
        left(meta.recent_audit(100_000).await.unwrap()),
        ["new", "purge", "purge-new"]
    );
    assert_eq!(meta.prune_audit(Operations, 2000, 100).await.unwrap(), 1);
    assert_eq!(
        left(meta.recent_audit(100_000).await.unwrap()),
        ["new", "purge-new"],
        "each class has its own cut"
    );
    let s = meta.audit_summary().await.unwrap();
    assert_eq!((s.answers - before.answers, s.operations - before.operations), (1, 1));
}

/// A snapshot streams every entry (with its request, counters and missing
/// mark) and audit event; importing it back restores them exactly, and rows
/// that exist are left alone.
pub async fn metadata_snapshot_round_trip(meta: &dyn Metadata) {
    use crate::roles::SnapshotBatch;
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

/// Data keys: stored wrapped, one active per tenant after a rotation, re-wrapped
/// in place, destroyed per tenant (the rows stay, the wrapped keys go).
pub async fn metadata_data_keys(meta: &dyn Metadata) {
    use crate::roles::data_keys::DataKeyRecord;
    let tag = now_ms();
    let (t1, t2) = (format!("dk-a-{tag}"), format!("dk-b-{tag}"));
    let key = |id: &str, tenant: &str, at: i64| DataKeyRecord {
        id: format!("{id}-{tag}"),
        tenant: tenant.to_string(),
        wrapped: format!("wrapped-{id}"),
        master_id: "m1".into(),
        created_at_ms: at,
        retired_at_ms: None,
        destroyed_at_ms: None,
    };
    meta.create_data_key(key("dk_1", &t1, 1_000), true).await.unwrap();
    meta.create_data_key(key("dk_9", &t2, 1_500), true).await.unwrap();
    meta.create_data_key(key("dk_2", &t1, 2_000), true).await.unwrap();
    let mine = meta.list_data_keys(Some(t1.clone())).await.unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(
        mine[0].retired_at_ms,
        Some(2_000),
        "the older key retired by the new one"
    );
    assert!(mine[1].active() && mine[1].wrapped == "wrapped-dk_2");
    assert!(meta
        .rewrap_data_key(mine[1].id.clone(), "rewrapped".into(), "m2".into())
        .await
        .unwrap());
    let again = meta.list_data_keys(Some(t1.clone())).await.unwrap();
    assert_eq!(
        (again[1].wrapped.as_str(), again[1].master_id.as_str()),
        ("rewrapped", "m2")
    );
    assert_eq!(meta.destroy_data_keys(t1.clone(), 3_000).await.unwrap(), 2);
    let gone = meta.list_data_keys(Some(t1.clone())).await.unwrap();
    assert!(
        gone.iter()
            .all(|k| k.wrapped.is_empty() && k.destroyed_at_ms == Some(3_000)),
        "{gone:?}"
    );
    assert!(
        !meta
            .rewrap_data_key(gone[1].id.clone(), "x".into(), "m3".into())
            .await
            .unwrap(),
        "a destroyed key stays destroyed"
    );
    let other = meta.list_data_keys(Some(t2)).await.unwrap();
    assert!(
        other.len() == 1 && other[0].active() && other[0].wrapped == "wrapped-dk_9",
        "another tenant untouched"
    );
    assert!(meta.list_data_keys(None).await.unwrap().len() >= 3);
}

/// Purges select by tenant, namespace, model, creation time and key prefix,
/// page by page in key order; a delete spares an entry written again since.
pub async fn metadata_select_and_delete(meta: &dyn Metadata) {
    use crate::roles::filter::EntryFilter;
    let tenant = format!("purge-{}", test_key("purge-tenant").hex());
    let mut rows = Vec::new();
    for i in 0..12u8 {
        let mut e = record(&format!("purge-{i}"), 100 + i, 60_000);
        e.tenant = tenant.clone();
        e.namespace = if i % 2 == 0 { "even" } else { "odd" }.into();
        e.model = if i < 6 { "m-small" } else { "m-large" }.into();
        e.created_at_ms = 1_000 + i as i64;
        rows.push(e);
    }
    let mut other = record("purge-other", 99, 60_000);
    other.tenant = format!("{tenant}-other");
    other.namespace = "even".into();
    meta.write_batch(rows.iter().cloned().chain([other.clone()]).collect(), Vec::new())
        .await
        .unwrap();
    let count = |f: EntryFilter| async move { meta.count_selected(f).await.unwrap() };
    let by_tenant = EntryFilter::tenant(&tenant);
    assert_eq!(count(by_tenant.clone()).await, 12, "a tenant's entries, no other's");
    let even = EntryFilter {
        namespace: Some("even".into()),
        ..by_tenant.clone()
    };
    assert_eq!(count(even.clone()).await, 6, "by namespace");
    let f = EntryFilter {
        model: Some("m-large".into()),
        ..even.clone()
    };
    assert_eq!(count(f).await, 3, "by namespace and model");
    let f = EntryFilter {
        before_ms: Some(1_004),
        ..by_tenant.clone()
    };
    assert_eq!(count(f).await, 4, "created before");
    let k = rows[3].key.hex();
    let f = EntryFilter {
        key_prefix: Some(k[..20].to_uppercase()),
        ..by_tenant.clone()
    };
    assert_eq!(count(f.clone()).await, 1, "by key prefix (any case)");
    assert_eq!(meta.select_entries(f, None, 10).await.unwrap()[0].key, rows[3].key);

    // Pages in key order, each after the last key of the one before.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = meta.select_entries(even.clone(), after, 4).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|e| even.matches(e)), "the filter in memory agrees");
        assert!(page.iter().all(|e| e.request.is_none()), "pages leave the request out");
        after = page.last().map(|e| e.key);
        seen.extend(page.into_iter().map(|e| e.key));
    }
    let mut sorted = seen.clone();
    sorted.sort_by_key(|k| k.hex());
    assert_eq!((seen.len(), &seen), (6, &sorted), "six keys, in order, once each");

    // A delete names the artifact it saw: an entry stored again is spared.
    let mut rewritten = rows[0].clone();
    rewritten.artifact = ArtifactId([200; 32]);
    meta.upsert_entry(rewritten).await.unwrap();
    let pairs: Vec<_> = rows
        .iter()
        .filter(|e| e.namespace == "even")
        .map(|e| (e.key, e.artifact))
        .collect();
    assert_eq!(meta.delete_entries(pairs.clone()).await.unwrap(), 5);
    assert_eq!(
        meta.delete_entries(pairs).await.unwrap(),
        0,
        "deleting twice deletes nothing"
    );
    assert_eq!(count(even).await, 1, "the rewritten entry stays");
    assert_eq!(count(by_tenant.clone()).await, 7);
    assert!(
        meta.get_entry(other.key).await.unwrap().is_some(),
        "another tenant untouched"
    );
    let rest: Vec<_> = meta
        .select_entries(by_tenant, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.artifact))
        .collect();
    assert_eq!(meta.delete_entries(rest).await.unwrap(), 7);
    meta.delete_entry(other.key).await.unwrap();
}

/// A reseal's swap: the entry that still has the old artifact points at the
/// new one, with its size and request, and keeps its hit counts; an entry
/// written again meanwhile is left alone.
pub async fn metadata_replace_artifacts(meta: &dyn Metadata) {
    let a = record("swap-a", 31, 60_000);
    let b = record("swap-b", 32, 60_000);
    for e in [&a, &b] {
        meta.upsert_entry(e.clone()).await.unwrap();
    }
    meta.record_hits(vec![HitUpdate {
        key: a.key,
        count: 7,
        last_hit_ms: a.created_at_ms + 5,
    }])
    .await
    .unwrap();
    // b is stored again (another answer) after the reseal read it.
    let mut b2 = b.clone();
    b2.artifact = ArtifactId([34; 32]);
    meta.upsert_entry(b2.clone()).await.unwrap();
    let swap = |e: &EntryRecord, new: u8| ArtifactSwap {
        key: e.key,
        old: e.artifact,
        new: ArtifactId([new; 32]),
        response_bytes: 99,
        request: Some("sealed request".into()),
    };
    let changed = meta.replace_artifacts(vec![swap(&a, 41), swap(&b, 42)]).await.unwrap();
    assert_eq!(
        changed,
        vec![true, false],
        "only the entry that still had the old artifact"
    );
    let got = meta.get_entry(a.key).await.unwrap().unwrap();
    assert_eq!(got.artifact, ArtifactId([41; 32]));
    assert_eq!(got.response_bytes, 99);
    assert_eq!(got.request.as_deref(), Some("sealed request"));
    assert_eq!(got.hit_count, 7, "hit counts are kept");
    assert_eq!(got.last_hit_at_ms, Some(a.created_at_ms + 5));
    assert_eq!(got.created_at_ms, a.created_at_ms);
    assert_eq!(got.expires_at_ms, a.expires_at_ms);
    let other = meta.get_entry(b.key).await.unwrap().unwrap();
    assert_eq!(other.artifact, b2.artifact, "the entry written again is left alone");
    assert_eq!(other.request, b2.request);
    assert_eq!(
        meta.replace_artifacts(vec![swap(&a, 41)]).await.unwrap(),
        vec![false],
        "twice changes nothing"
    );
    for e in [&a, &b] {
        meta.delete_entry(e.key).await.unwrap();
    }
}
