//! The queue conformance suite on SQLite and on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use recache::queue::conformance as c;
use recache::queue::Queue;
use recache::roles::metadata_sqlite::SqliteMetadata;

#[path = "common/engines.rs"]
mod engines;

async fn suite(q: Arc<dyn Queue>) {
    c::queue_lifecycle(q.as_ref()).await;
    c::queue_retries_and_dead_letter(q.as_ref()).await;
    c::queue_lease_expiry_and_zombies(q.as_ref()).await;
    c::queue_priority_prune_workers_spend(q.as_ref()).await;
    c::queue_concurrent_claims(q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_queue_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteMetadata::open(&dir.path().join("m.db"), 4, Duration::from_secs(5))
        .await
        .unwrap();
    suite(Arc::new(q)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_queue_conformance() {
    use recache::roles::metadata_postgres::PostgresMetadata;
    let Some(url) = engines::fresh_postgres("queue").await else {
        return;
    };
    suite(Arc::new(
        PostgresMetadata::new(&url, 8, Duration::from_secs(5)).unwrap(),
    ))
    .await;
}
