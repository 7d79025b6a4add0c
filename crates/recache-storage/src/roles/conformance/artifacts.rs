//! The artifact role's scenarios.

use super::*;

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

/// Every scenario above, in order: what each artifact engine's test runs.
pub async fn artifacts_suite(store: Arc<dyn Artifacts>) {
    artifacts_round_trip(store.as_ref()).await;
    artifacts_put_many(store.as_ref()).await;
    artifacts_large_payload(store.as_ref()).await;
    artifacts_concurrent_writers(store.clone()).await;
    artifacts_health(store.as_ref()).await;
}
