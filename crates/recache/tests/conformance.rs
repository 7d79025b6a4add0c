//! The role conformance suites run against the embedded implementations.
//! (Real engines run the same scenarios in their own test files.)

use std::sync::Arc;
use std::time::Duration;

use recache::roles::artifacts_local::ObjectStoreArtifacts;
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
