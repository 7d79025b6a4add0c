//! The role conformance suites run against the embedded implementations.
//! (Real engines run the same scenarios in their own test files.)

use std::sync::Arc;
use std::time::Duration;

use recache::roles::artifacts_object_store::ObjectStoreArtifacts;
use recache::roles::conformance as c;
use recache::roles::index_embedded::EmbeddedIndex;
use recache::roles::metadata_sqlite::SqliteMetadata;
use recache::roles::{Artifacts, Index, Metadata};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = EmbeddedIndex::open(dir.path()).unwrap();
    let dyn_index: Arc<dyn Index> = index.clone();
    c::index_put_get_overwrite_delete(dyn_index.as_ref()).await;
    c::index_expiry(dyn_index.as_ref()).await;
    c::index_concurrent_writers(dyn_index.clone()).await;
    c::index_health(dyn_index.as_ref()).await;
    // Persistence: what was written is there after reopening.
    dyn_index.flush().await.unwrap();
    let before = dyn_index.count().await.unwrap();
    drop(dyn_index);
    drop(index);
    let (reopened, stats) = EmbeddedIndex::open(dir.path()).unwrap();
    assert_eq!(reopened.count().await.unwrap(), before, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_artifacts_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Artifacts> = Arc::new(ObjectStoreArtifacts::local(dir.path(), "pfx").unwrap());
    c::artifacts_round_trip(store.as_ref()).await;
    c::artifacts_large_payload(store.as_ref()).await;
    c::artifacts_concurrent_writers(store.clone()).await;
    c::artifacts_health(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_metadata_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let meta: Arc<dyn Metadata> = Arc::new(
        SqliteMetadata::open(&dir.path().join("m.db"), 4, Duration::from_secs(5))
            .await
            .unwrap(),
    );
    c::metadata_entries(meta.as_ref()).await;
    c::metadata_live_entries_and_purge(meta.as_ref()).await;
    c::metadata_audit_is_idempotent(meta.as_ref()).await;
    c::metadata_concurrent_writers(meta.clone()).await;
    c::metadata_health(meta.as_ref()).await;
}

#[path = "common/engines.rs"]
mod engines;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_index_conformance() {
    use recache::roles::index_redis::RedisIndex;
    let Some(url) = engines::redis_url() else { return };
    let prefix = format!("{}:", engines::unique("conf"));
    let index: Arc<dyn Index> = Arc::new(RedisIndex::new(&url, &prefix, Duration::from_secs(2)).unwrap());
    c::index_put_get_overwrite_delete(index.as_ref()).await;
    c::index_expiry(index.as_ref()).await;
    c::index_concurrent_writers(index.clone()).await;
    c::index_health(index.as_ref()).await;
    // Only pointers, and every key carries a TTL.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for k in keys.iter().take(50) {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
        let len: i64 = redis::cmd("STRLEN").arg(k).query_async(&mut conn).await.unwrap();
        assert_eq!(len, 56, "{k} holds a pointer, not a payload");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_artifacts_conformance() {
    let Some((endpoint, bucket)) = engines::s3() else {
        return;
    };
    let prefix = engines::unique("conf");
    let store: Arc<dyn Artifacts> =
        Arc::new(ObjectStoreArtifacts::s3(&bucket, Some(&endpoint), None, &prefix, Duration::from_secs(5)).unwrap());
    assert_eq!(store.engine(), "s3");
    c::artifacts_round_trip(store.as_ref()).await;
    c::artifacts_large_payload(store.as_ref()).await;
    c::artifacts_concurrent_writers(store.clone()).await;
    c::artifacts_health(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_metadata_conformance() {
    use recache::roles::metadata_postgres::PostgresMetadata;
    let Some(url) = engines::fresh_postgres("conf").await else {
        return;
    };
    let meta: Arc<dyn Metadata> = Arc::new(PostgresMetadata::new(&url, 8, Duration::from_secs(5)).unwrap());
    c::metadata_entries(meta.as_ref()).await;
    c::metadata_live_entries_and_purge(meta.as_ref()).await;
    c::metadata_audit_is_idempotent(meta.as_ref()).await;
    c::metadata_concurrent_writers(meta.clone()).await;
    c::metadata_health(meta.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_job_claims_never_overlap() {
    use recache::roles::metadata_postgres::PostgresMetadata;
    let Some(url) = engines::fresh_postgres("jobs").await else {
        return;
    };
    let meta = Arc::new(PostgresMetadata::new(&url, 8, Duration::from_secs(5)).unwrap());
    for i in 0..100 {
        meta.enqueue_job("warm", &format!("{{\"n\":{i}}}"), i % 3)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let meta = meta.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = meta
                    .claim_jobs(&format!("worker-{w}"), 7, Duration::from_secs(60))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break got;
                }
                got.extend(batch.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (100, 100), "every job claimed exactly once");
}
