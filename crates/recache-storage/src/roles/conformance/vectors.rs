//! The vectors role's scenarios.

use super::*;

/// A unit vector pointing mostly along axis `axis`, tilted by `tilt` towards axis `axis + 1`.
pub(crate) fn unit_vector(dim: usize, axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    v[axis % dim] = 1.0;
    v[(axis + 1) % dim] = tilt;
    let n = (1.0 + tilt * tilt).sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

pub(super) fn point(label: &str, scope: &str, vector: Vec<f32>, ttl_ms: i64) -> VectorPoint {
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
