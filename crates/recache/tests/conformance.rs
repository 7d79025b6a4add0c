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
    c::index_delete_many(dyn_index.as_ref()).await;
    c::index_expiry(dyn_index.as_ref()).await;
    c::index_concurrent_writers(dyn_index.clone()).await;
    c::index_counters(dyn_index.clone()).await;
    c::index_bulk_scan_generation(dyn_index.as_ref()).await;
    c::index_health(dyn_index.as_ref()).await;
    // Persistence: what was written is there after reopening.
    dyn_index.flush().await.unwrap();
    let before = dyn_index.count().await.unwrap();
    drop(dyn_index);
    drop(index);
    let (reopened, stats) = EmbeddedIndex::open(dir.path()).unwrap();
    assert_eq!(reopened.count().await.unwrap(), before, "{stats:?}");
    c::index_wipe(reopened.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_artifacts_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Artifacts> = Arc::new(ObjectStoreArtifacts::local(dir.path(), "pfx").unwrap());
    c::artifacts_suite(store.clone()).await;
}

/// The embedded engine's segmented store: small segments, so the suite
/// crosses sealed segments; its large payload is one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmented_artifacts_conformance() {
    use recache::roles::artifacts_segments::{Access, SegmentArtifacts, SegmentOptions};
    let dir = tempfile::tempdir().unwrap();
    let opts = SegmentOptions {
        segment_bytes: 2048,
        max_item_bytes: 64 * 1024,
        compact_ratio: 0.5,
    };
    let store: Arc<dyn Artifacts> = Arc::new(SegmentArtifacts::open(dir.path(), "pfx", opts, Access::Own).unwrap());
    c::artifacts_suite(store.clone()).await;
    store.reclaim().await.unwrap();
    c::artifacts_round_trip(store.as_ref()).await;
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
    c::metadata_audit_is_pruned_by_age(meta.as_ref()).await;
    c::metadata_write_batch(meta.as_ref()).await;
    c::metadata_usage_adds_up(meta.as_ref()).await;
    c::metadata_keys(meta.as_ref()).await;
    c::metadata_data_keys(meta.as_ref()).await;
    c::metadata_select_and_delete(meta.as_ref()).await;
    c::metadata_replace_artifacts(meta.as_ref()).await;
    c::metadata_snapshot_round_trip(meta.as_ref()).await;
    c::metadata_recovery_queries(meta.as_ref()).await;
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
    c::index_delete_many(index.as_ref()).await;
    c::index_expiry(index.as_ref()).await;
    c::index_concurrent_writers(index.clone()).await;
    c::index_counters(index.clone()).await;
    c::index_bulk_scan_generation(index.as_ref()).await;
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
    for k in keys.iter().filter(|k| k.contains(":idx:")).take(50) {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
        let len: i64 = redis::cmd("STRLEN").arg(k).query_async(&mut conn).await.unwrap();
        assert_eq!(len, 56, "{k} holds a pointer, not a payload");
    }
    c::index_wipe(index.as_ref()).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "a wipe leaves no key under the prefix: {left:?}");
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
    c::artifacts_suite(store.clone()).await;
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
    c::metadata_audit_is_pruned_by_age(meta.as_ref()).await;
    c::metadata_write_batch(meta.as_ref()).await;
    c::metadata_usage_adds_up(meta.as_ref()).await;
    c::metadata_keys(meta.as_ref()).await;
    c::metadata_data_keys(meta.as_ref()).await;
    c::metadata_select_and_delete(meta.as_ref()).await;
    c::metadata_replace_artifacts(meta.as_ref()).await;
    c::metadata_snapshot_round_trip(meta.as_ref()).await;
    c::metadata_recovery_queries(meta.as_ref()).await;
    c::metadata_concurrent_writers(meta.clone()).await;
    c::metadata_health(meta.as_ref()).await;
}

/// Usage counted before the dialect column (migration 5) keeps its counters
/// on PostgreSQL, as OpenAI's dialect; rows of another dialect stay apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_usage_survives_the_dialect_migration() {
    use recache::roles::metadata_postgres::{PostgresMetadata, MIGRATIONS};
    let Some(url) = engines::fresh_postgres("mig").await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    for (version, sql) in &MIGRATIONS[..4] {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, 0)")
            .bind(version)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO usage_hourly (hour_ms, tenant, namespace, model, hits, misses, usd_spent) \
         VALUES (3600000, 'a', 'default', 'm', 5, 2, 0.5)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let meta = PostgresMetadata::new(&url, 2, Duration::from_secs(5)).unwrap();
    meta.prepare().await.unwrap();
    let rows = meta.usage_since(0).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].dialect.as_str(), rows[0].hits, rows[0].misses),
        ("openai", 5, 2)
    );
    let mut anthropic = rows[0].clone();
    anthropic.dialect = "anthropic".into();
    meta.record_usage(vec![anthropic, rows[0].clone()]).await.unwrap();
    let rows = meta.usage_since(0).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.hits == if r.dialect == "openai" { 10 } else { 5 }),
        "{rows:?}"
    );
}

/// The read-only snapshot the CLI audits with sees what the embedded index
/// holds: last write wins, deletes and expired entries are gone, writes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_snapshot_matches_the_index() {
    use recache::roles::index_snapshot::SnapshotIndex;
    use recache::roles::{now_ms, ArtifactId, IndexEntry};
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = EmbeddedIndex::open(dir.path()).unwrap();
    let e = |a: u8, ttl: i64| IndexEntry {
        artifact: ArtifactId([a; 32]),
        size: 1,
        created_at_ms: now_ms(),
        expires_at_ms: now_ms() + ttl,
    };
    let keys: Vec<_> = (0..2000).map(|i| c::test_key(&format!("snap-{i}"))).collect();
    for k in &keys {
        index.put(*k, e(1, 60_000)).await.unwrap();
    }
    index.put(keys[0], e(2, 60_000)).await.unwrap();
    index.delete(keys[1]).await.unwrap();
    index.put(keys[2], e(3, -1)).await.unwrap();
    index.flush().await.unwrap();
    let snap = SnapshotIndex::load(dir.path()).unwrap();
    assert_eq!(snap.count().await.unwrap(), 1998);
    assert_eq!(
        snap.get(keys[0]).await.unwrap().map(|e| e.artifact),
        Some(ArtifactId([2; 32]))
    );
    assert_eq!(snap.get(keys[1]).await.unwrap(), None, "deleted");
    assert_eq!(snap.get(keys[2]).await.unwrap(), None, "expired");
    let many = snap.get_many(keys[..4].to_vec()).await.unwrap();
    assert_eq!(many.iter().filter(|p| p.is_some()).count(), 2);
    let mut seen = 0;
    let mut cursor = 0;
    loop {
        let (page, next) = snap.scan(cursor, 300).await.unwrap();
        seen += page.len();
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, 1998, "a scan sees every live pointer once");
    assert!(snap.put(keys[5], e(9, 1000)).await.is_err(), "read-only");
    // While the index is open, a second writer is refused with a clear message.
    let err = EmbeddedIndex::open(dir.path()).err().expect("locked").to_string();
    assert!(err.contains("in use by another recache process"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(SnapshotIndex::load(empty.path()).unwrap().count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_vectors_conformance() {
    use recache::roles::vectors_qdrant::QdrantVectors;
    use recache::roles::Vectors;
    let Some(url) = engines::qdrant_url() else { return };
    let v: Arc<dyn Vectors> = Arc::new(QdrantVectors::new(&url, Duration::from_secs(10), "recache-").unwrap());
    c::vectors_upsert_search_delete(v.as_ref()).await;
    c::vectors_scope_isolation_and_expiry(v.as_ref()).await;
    c::vectors_concurrent_writers(v.clone()).await;
    c::vectors_health(v.as_ref()).await;
    // Payload indexes exist for the filters (scope, tenant, expiry).
    let http = std::env::var("RECACHE_TEST_QDRANT_HTTP").unwrap();
    let col = c::test_collection("basic");
    let info: serde_json::Value = reqwest::get(format!("{http}/collections/{col}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schema = &info["result"]["payload_schema"];
    for field in ["scope", "tenant", "expires_at_ms"] {
        assert!(schema.get(field).is_some(), "payload index on {field}: {info}");
    }
    assert_eq!(info["result"]["config"]["params"]["vectors"]["distance"], "Cosine");
}

/// The same suite with every scope indexed (IVF from 2 points on), then a big
/// scope: the index is trained off the request path, near-duplicate queries
/// find what an exact scan finds, deletes and new points are followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_vectors_with_ivf() {
    use recache::roles::vectors_embedded::{EmbeddedVectors, IvfParams};
    use recache::roles::{VectorPoint, Vectors};
    let dir = tempfile::tempdir().unwrap();
    let params = IvfParams {
        min_rows: 2,
        nprobe: 8,
        retrain_growth: 4,
    };
    let store = Arc::new(EmbeddedVectors::open_with(dir.path(), params).unwrap());
    let v: Arc<dyn Vectors> = store.clone();
    c::vectors_upsert_search_delete(v.as_ref()).await;
    c::vectors_scope_isolation_and_expiry(v.as_ref()).await;
    c::vectors_concurrent_writers(v.clone()).await;
    assert!(store.consistent(), "small scopes indexed, grown and put in list order");

    // A big scope of clustered vectors.
    let (dim, n, col) = (64usize, 20_000usize, "ivf-big");
    v.ensure_collection(col, dim).await.unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let unit = |v: Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let centres: Vec<Vec<f32>> = (0..200).map(|_| unit((0..dim).map(|_| rnd()).collect())).collect();
    let mut kept = Vec::new();
    let key = |i: usize| recache::key::CacheKey::from_hex(&format!("{i:064x}")).unwrap();
    let point = |i: usize, text: String, vector: Vec<f32>| VectorPoint {
        key: key(i),
        scope: "big".into(),
        tenant: "t".into(),
        text,
        expires_at_ms: recache::roles::now_ms() + 600_000,
        vector,
    };
    for chunk in 0..(n / 1000) {
        let mut batch = Vec::new();
        for j in 0..1000 {
            let i = chunk * 1000 + j;
            let c = &centres[i % centres.len()];
            let p = unit(c.iter().map(|x| x + 0.08 * rnd()).collect());
            kept.push(p.clone());
            batch.push(point(i, format!("q{i}"), p));
        }
        v.upsert(col, batch).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (indexed, waiting) = store.ivf_status();
        if indexed >= 1 && waiting == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the scope is indexed in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Near-duplicate queries: the IVF finds the exact scan's best point.
    let mut agree = 0;
    for q in 0..300 {
        let t = (q * 61) % n;
        let query = unit(kept[t].iter().map(|x| x + 0.02 * rnd()).collect());
        let exact = (0..n)
            .map(|i| (i, kept[i].iter().zip(&query).map(|(a, b)| a * b).sum::<f32>()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
            .0;
        let hits = v.search(col, "big", query, 1).await.unwrap();
        agree += (hits[0].key == key(exact)) as usize;
    }
    assert!(agree >= 285, "recall@1 {agree}/300");
    assert!(
        store.consistent(),
        "rows, keys and lists agree after the rows were put in list order"
    );
    // Deleted points never come back; new points are found at once.
    let gone: Vec<_> = (0..n).step_by(3).map(key).collect();
    v.delete(gone).await.unwrap();
    let hits = v.search(col, "big", kept[0].clone(), 4).await.unwrap();
    assert!(hits.iter().all(|h| h.key != key(0)), "{hits:?}");
    let fresh = unit((0..dim).map(|_| rnd()).collect());
    v.upsert(col, vec![point(n + 1, "new".into(), fresh.clone())])
        .await
        .unwrap();
    let hits = v.search(col, "big", fresh, 1).await.unwrap();
    assert_eq!(hits[0].key, key(n + 1));
    assert!((hits[0].score - 1.0).abs() < 0.01);
    assert_eq!(v.count(Some(col)).await.unwrap() as usize, n - n.div_ceil(3) + 1);
    assert!(store.consistent(), "deletes moved rows and their lists");

    // A flush saves the index; a reopened store searches through it at once
    // (no training due, nothing waiting for a list) and finds the same points.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.ivf_status().1 != 0 {
        assert!(std::time::Instant::now() < deadline, "the new point gets its list");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let indexed = store.ivf_status().0;
    v.flush().await.unwrap();
    assert!(
        dir.path().join(format!("{col}.ivf")).exists(),
        "the index is saved beside the log"
    );
    drop(v);
    drop(store);
    let store = Arc::new(EmbeddedVectors::open_with(dir.path(), params).unwrap());
    assert_eq!(
        store.ivf_status(),
        (indexed, 0),
        "indexed at open, nothing to train or assign"
    );
    assert!(store.consistent(), "restored, then put in list order");
    let v: Arc<dyn Vectors> = store.clone();
    let hits = v.search(col, "big", kept[1].clone(), 1).await.unwrap();
    assert_eq!(hits[0].key, key(1), "found through the restored index");
    assert_eq!(v.count(Some(col)).await.unwrap() as usize, n - n.div_ceil(3) + 1);
    // A log that changed after the save makes the saved index stale: it is not used.
    v.upsert(col, vec![point(n + 2, "after the save".into(), kept[2].clone())])
        .await
        .unwrap();
    drop(v);
    drop(store);
    let log_len = std::fs::metadata(dir.path().join(format!("{col}.vlog"))).unwrap().len();
    assert!(
        recache::roles::vectors_ivf_file::load(&dir.path().join(format!("{col}.ivf")), log_len, dim).is_none(),
        "a saved index older than the log is not used (the maintainer trains again)"
    );
    assert!(indexed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_vectors_conformance() {
    use recache::roles::vectors_embedded::EmbeddedVectors;
    use recache::roles::Vectors;
    let dir = tempfile::tempdir().unwrap();
    let v: Arc<dyn Vectors> = Arc::new(EmbeddedVectors::open(dir.path()).unwrap());
    c::vectors_upsert_search_delete(v.as_ref()).await;
    c::vectors_scope_isolation_and_expiry(v.as_ref()).await;
    c::vectors_concurrent_writers(v.clone()).await;
    c::vectors_health(v.as_ref()).await;
    // Persistence: the same points, and the same answers, after reopening.
    v.flush().await.unwrap();
    let before = v.count(None).await.unwrap();
    let cols = v.collections().await.unwrap();
    drop(v);
    let reopened = EmbeddedVectors::open(dir.path()).unwrap();
    assert_eq!(reopened.count(None).await.unwrap(), before);
    assert_eq!(reopened.collections().await.unwrap(), cols);
    // A torn tail is cut, the rest kept.
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("conf-conc"))
        .unwrap();
    drop(reopened);
    let len = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(len - 7).unwrap();
    let torn = EmbeddedVectors::open(dir.path()).unwrap();
    assert_eq!(
        torn.count(None).await.unwrap(),
        before - 1,
        "only the torn record is lost"
    );
}
