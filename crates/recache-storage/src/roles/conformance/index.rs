//! The index role's scenarios.

use super::*;

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

/// The limits' counters: added and read in one call, in order, apart by
/// name; a counter ends with the TTL it was created with; concurrent adds
/// all count.
pub async fn index_counters(index: Arc<dyn Index>) {
    use crate::roles::counters::CounterOp;
    let tag = format!("{{conf-{}}}", crate::roles::now_ms());
    let n = |s: &str| format!("{tag}:{s}");
    let add = |ops: Vec<CounterOp>| {
        let index = index.clone();
        async move { index.counters_add(ops).await.unwrap() }
    };
    let got = add(vec![
        CounterOp::add(n("a"), 1, 60_000),
        CounterOp::add(n("a"), 2, 60_000),
        CounterOp::read(n("b")),
    ])
    .await;
    assert_eq!(got, [1, 3, 0]);
    let got = add(vec![CounterOp::add(n("a"), -1, 60_000), CounterOp::read(n("a"))]).await;
    assert_eq!(got, [2, 2]);
    add(vec![
        CounterOp::add(n("short"), 5, 200),
        CounterOp::add_renew(n("renewed"), 5, 200),
    ])
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let got = add(vec![CounterOp::add(n("short"), 1, 200), CounterOp::read(n("renewed"))]).await;
    assert_eq!(got, [1, 0], "an expired counter starts again");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let index = index.clone();
            let name = n("c");
            tokio::spawn(async move { index.counters_add(vec![CounterOp::add(name, 1, 60_000)]).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(add(vec![CounterOp::read(n("c"))]).await, [20]);
    // A lookup with counters in its round trip: both answers, as apart.
    let k = test_key(&format!("index-counting-{tag}"));
    let (got, counted) = index
        .get_counting(k, vec![CounterOp::add(n("d"), 1, 60_000), CounterOp::read(n("c"))])
        .await;
    assert_eq!(
        (got.unwrap(), counted.unwrap()),
        (None, vec![1, 20]),
        "a miss and the counters"
    );
    let e = entry(7, 60_000);
    index.put(k, e).await.unwrap();
    let (got, counted) = index.get_counting(k, vec![CounterOp::add(n("d"), 1, 60_000)]).await;
    assert_eq!(
        (got.unwrap(), counted.unwrap()),
        (Some(e), vec![2]),
        "a hit and the counter"
    );
    let (got, counted) = index.get_counting(k, Vec::new()).await;
    assert_eq!((got.unwrap(), counted.unwrap()), (Some(e), vec![]), "no counters");
    index.delete(k).await.unwrap();
}

pub async fn index_delete_many(index: &dyn Index) {
    let keys: Vec<_> = (0..5).map(|i| test_key(&format!("index-delete-many-{i}"))).collect();
    for k in &keys[..4] {
        index.put(*k, entry(3, 60_000)).await.unwrap();
    }
    assert_eq!(index.delete_many(Vec::new()).await.unwrap(), 0);
    assert_eq!(
        index.delete_many(keys.clone()).await.unwrap(),
        4,
        "counts the keys that existed"
    );
    for k in &keys {
        assert_eq!(index.get(*k).await.unwrap(), None);
    }
}
