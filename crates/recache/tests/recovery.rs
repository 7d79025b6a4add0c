//! Recovery on real engines (and on the embedded stores where the scenario
//! applies): a flushed Redis is noticed and rebuilt with zero provider calls;
//! deleted artifacts are audited and bought back once each; deleted metadata
//! rows are restored from the artifacts; orphans respect their grace period;
//! rebuild jobs pause while the index breaker is open and resume by
//! themselves. Each test prints its figures.

mod common;

use std::time::{Duration, Instant};

use common::servers::Server;
use common::{Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

const FAST: &str =
    "[warmer]\ndetect_interval_ms = 200\nheartbeat_ms = 500\npoll_ms = 100\n[breaker]\nopen_seconds = 1\n";

async fn fill(env: &Env, n: usize, label: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..n {
        let r = env.chat(KEY_A, &format!("{label} {i}")).await;
        assert_eq!((r.status, r.cache()), (200, "MISS"), "{}", r.text);
        keys.push(r.header("x-recache-key").to_string());
    }
    keys
}

async fn all_hit(env: &Env, n: usize, label: &str) -> bool {
    for i in 0..n {
        if env.chat(KEY_A, &format!("{label} {i}")).await.cache() != "HIT" {
            return false;
        }
    }
    true
}

async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < limit {
        if f().await {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn jobs(env: &Env, kind: &str, state: &str) -> Vec<Value> {
    let v = env.admin_json(&format!("/admin/jobs?state={state}&limit=1000")).await;
    v["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|j| j["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushed_redis_is_detected_and_rebuilt_with_zero_provider_calls() {
    let Some(mut redis) = Server::redis() else { return };
    let Some(b) = Backends::real_with_redis(redis.url()).await else {
        return;
    };
    let env = Env::on(b, StubConfig::default(), FAST).await;
    const N: usize = 200;
    fill(&env, N, "flush").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the watch writes its generation marker
    let calls_before = env.stub.calls();
    let rebuilds_before = jobs(&env, "rebuild-index", "succeeded").await.len();
    let mut conn = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // Traffic goes on during the rebuild: new prompts, and not one error.
    let mut during = 0;
    let rebuilt = wait_until(Duration::from_secs(20), || {
        during += 1;
        let i = during;
        let env = &env;
        async move {
            let r = env.chat(KEY_A, &format!("during rebuild {i}")).await;
            assert_eq!(r.status, 200, "no client errors during the rebuild: {}", r.text);
            jobs(env, "rebuild-index", "succeeded").await.len() > rebuilds_before
        }
    })
    .await
    .expect("the loss is detected and the index rebuilt");
    let done = jobs(&env, "rebuild-index", "succeeded").await;
    let job = done.iter().max_by_key(|j| j["id"].as_i64().unwrap_or(0)).unwrap();
    println!(
        "FLUSHALL -> rebuild-index succeeded in {:.0} ms ({} entries written, {} requests served meanwhile); job result {}",
        rebuilt.as_secs_f64() * 1000.0,
        job["result"]["written"],
        during,
        job["result"]
    );
    assert!(job["result"]["written"].as_u64().unwrap() >= N as u64);
    let calls_during = env.stub.calls() - calls_before;
    assert!(
        all_hit(&env, N, "flush").await,
        "every previously cached prompt is a HIT again"
    );
    assert_eq!(
        env.stub.calls() - calls_before,
        calls_during,
        "zero provider calls for the previously cached prompts"
    );
    let audit = env.admin_json("/admin/audit?limit=1000").await;
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "index.loss_detected"),
        "the loss is in the audit log"
    );
    assert!(env.metric("cache_index_losses_detected_total").await >= 1.0);

    // A Redis that restarts empty (no persistence) is the same loss, noticed the same way.
    redis.kill9();
    redis.start();
    let calls = env.stub.calls();
    let again = wait_until(Duration::from_secs(20), || async {
        jobs(&env, "rebuild-index", "succeeded").await.len() >= rebuilds_before + 2
            && env.metric("cache_breaker_state{backend=\"index\"}").await == 0.0
    })
    .await
    .expect("a restart without persistence is noticed and rebuilt");
    println!(
        "Redis restarted empty -> rebuilt in {:.0} ms",
        again.as_secs_f64() * 1000.0
    );
    assert!(all_hit(&env, N, "flush").await, "HITs again after the restart");
    assert_eq!(env.stub.calls(), calls, "no provider calls");
}

async fn deleted_artifacts(backends: Backends) {
    use recache::roles::ArtifactId;
    let env = Env::on(backends, StubConfig::default(), FAST).await;
    let keys = fill(&env, 10, "s3 loss").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = env.raw_artifacts();
    let mut deleted = Vec::new();
    for k in &keys[2..5] {
        let e = env.admin_entry(k).await;
        let id = ArtifactId::from_hex(e["entry"]["artifact"].as_str().unwrap()).unwrap();
        assert!(store.delete(id).await.unwrap());
        deleted.push(k.clone());
    }
    let (code, report) = env.cli_json(&["audit", "--check", "artifact-integrity"]);
    assert_eq!(code, 1, "problems found: {report}");
    let mut found: Vec<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "missing_artifact")
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect();
    found.sort();
    deleted.sort();
    assert_eq!(found, deleted, "exactly the entries whose artifact was deleted");
    assert_eq!(report["counts"].as_object().unwrap().len(), 1, "{report}");
    let (code, dry) = env.cli_json(&["repair", "--missing-artifacts", "--dry-run"]);
    assert_eq!((code, dry["missing"].as_u64()), (0, Some(3)), "{dry}");
    assert!(dry["estimated_cost_usd"].as_f64().unwrap() > 0.0);
    let calls = env.stub.calls();
    let (code, r) = env.cli_json(&["repair", "--missing-artifacts"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(env.stub.calls() - calls, 3, "one provider call per missing artifact");
    assert_eq!(r["refetched"], 3);
    let spent = r["spent_usd"].as_f64().unwrap();
    let expected = 3.0 * (12.0 * 0.15 + 24.0 * 0.60) / 1e6;
    assert!(
        (spent - expected).abs() < 1e-12,
        "spend reported: {spent} vs {expected}"
    );
    println!("repair --missing-artifacts: {r}");
    let (code, after) = env.cli_json(&["audit", "--check", "artifact-integrity"]);
    assert_eq!(code, 0, "clean after the repair: {after}");
    // The gateway serves them again (its index was repointed by the store path).
    let calls = env.stub.calls();
    assert!(all_hit(&env, 10, "s3 loss").await);
    assert_eq!(env.stub.calls(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_artifacts_are_audited_and_bought_back_once_each_embedded() {
    deleted_artifacts(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_artifacts_are_audited_and_bought_back_once_each_real() {
    let Some(b) = Backends::real().await else { return };
    deleted_artifacts(b).await;
}

async fn deleted_rows(backends: Backends) {
    let env = Env::on(backends, StubConfig::default(), FAST).await;
    let keys = fill(&env, 12, "rows").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = env.metadata_sql("DELETE FROM entries").await;
    assert_eq!(n, 12);
    let (code, _) = env.cli_json(&["audit", "--check", "all", "--grace", "0s"]);
    assert_eq!(code, 1, "the loss shows");
    let (code, dry) = env.cli_json(&["repair", "--reconcile-metadata", "--dry-run"]);
    assert_eq!((code, dry["would_restore"].as_u64()), (0, Some(12)), "{dry}");
    assert_eq!(
        env.metadata_sql("SELECT 1 FROM entries").await,
        0,
        "a dry run changes nothing"
    );
    let calls = env.stub.calls();
    let (code, r) = env.cli_json(&["repair", "--reconcile-metadata"]);
    assert_eq!((code, r["restored"].as_u64()), (0, Some(12)), "{r}");
    println!("repair --reconcile-metadata: {r}");
    for k in &keys {
        let e = env.admin_entry(k).await;
        assert_eq!(e["entry"]["tenant"], "team-a", "{k}: {e}");
        assert!(e["entry"]["request"].as_str().is_some_and(|r| r.contains("rows")));
    }
    let (code, clean) = env.cli_json(&["audit", "--check", "all"]);
    assert_eq!(code, 0, "audit --check all is clean: {clean}");
    assert_eq!(env.stub.calls(), calls, "no provider calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_metadata_rows_are_restored_from_artifacts_embedded() {
    deleted_rows(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_metadata_rows_are_restored_from_artifacts_real() {
    let Some(b) = Backends::real().await else { return };
    deleted_rows(b).await;
}

async fn orphans(backends: Backends) {
    use recache::roles::ArtifactId;
    let env = Env::on(backends, StubConfig::default(), FAST).await;
    let keys = fill(&env, 4, "orphans").await;
    let store = env.raw_artifacts();
    let junk = bytes::Bytes::from_static(b"an artifact nobody registered");
    let junk_id = ArtifactId::of(&junk);
    store.put(junk_id, junk).await.unwrap();
    // An entry whose row is gone is not an orphan: its artifact holds a live entry.
    env.metadata_sql(&format!("DELETE FROM entries WHERE cache_key = '{}'", keys[0]))
        .await;
    let (code, r) = env.cli_json(&["repair", "--orphans", "--grace", "1h"]);
    assert_eq!(
        (code, r["deleted"].as_u64()),
        (0, Some(0)),
        "young artifacts are never orphans: {r}"
    );
    let (code, r) = env.cli_json(&["repair", "--orphans", "--grace", "0s", "--dry-run"]);
    assert_eq!((code, r["would_delete"].as_u64()), (0, Some(1)), "{r}");
    assert!(store.get(junk_id).await.unwrap().is_some(), "a dry run deletes nothing");
    let (code, r) = env.cli_json(&["repair", "--orphans", "--grace", "0s"]);
    assert_eq!(r["deleted"], 1, "{r}");
    assert_eq!(r["kept_unregistered"], 1, "{r}");
    assert_eq!(code, 1, "an unregistered entry is left for reconcile-metadata");
    assert!(store.get(junk_id).await.unwrap().is_none(), "the orphan is gone");
    assert!(all_hit(&env, 4, "orphans").await, "real entries untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_are_deleted_only_after_the_grace_period_embedded() {
    orphans(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_are_deleted_only_after_the_grace_period_real() {
    let Some(b) = Backends::real().await else { return };
    orphans(b).await;
}

async fn pause_and_resume(backends: Backends) {
    let env = Env::on(backends, StubConfig::default(), FAST).await;
    fill(&env, 20, "pause").await;
    assert_eq!(env.admin_post("/admin/breakers/index/open", &json!({})).await.0, 200);
    let (status, r) = env.admin_post("/admin/jobs", &json!({"kind": "rebuild-index"})).await;
    assert_eq!(status, 200);
    let id = r["job"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = env.admin_json("/admin/jobs?limit=100").await;
    let job = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(job["state"], "queued", "paused while the index breaker is open: {job}");
    let paused = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["paused"]["rebuild-index"][0] == "index");
    assert!(paused, "the worker says what the kind waits for: {}", v["workers"]);
    env.admin_post("/admin/breakers/index/reset", &json!({})).await;
    let took = wait_until(Duration::from_secs(10), || async {
        jobs(&env, "rebuild-index", "succeeded")
            .await
            .iter()
            .any(|j| j["id"] == id)
    })
    .await
    .expect("resumes by itself and finishes");
    println!(
        "breaker reset -> paused rebuild finished in {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_jobs_pause_while_the_index_breaker_is_open_embedded() {
    pause_and_resume(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_jobs_pause_while_the_index_breaker_is_open_real() {
    let Some(b) = Backends::real().await else { return };
    pause_and_resume(b).await;
}

/// A real outage rather than a forced breaker: Redis hung with SIGSTOP while
/// a rebuild is due; the kind pauses; SIGCONT; it finishes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_resumes_after_a_real_redis_outage() {
    let Some(redis) = Server::redis() else { return };
    let Some(b) = Backends::real_with_redis(redis.url()).await else {
        return;
    };
    let env = Env::on_with(b, StubConfig::default(), FAST, &[("RECACHE_INDEX__TIMEOUT_MS", "100")]).await;
    fill(&env, 50, "outage").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.pause();
    // Traffic opens the index breaker (every lookup times out and falls back to the provider).
    for i in 0..10 {
        let r = env.chat(KEY_A, &format!("outage traffic {i}")).await;
        assert_eq!(r.status, 200);
    }
    let (_, r) = env.admin_post("/admin/jobs", &json!({"kind": "rebuild-index"})).await;
    let id = r["job"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = |v: &Value| {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .map(|j| j["state"].clone())
    };
    let v = env.admin_json("/admin/jobs").await;
    assert_ne!(state(&v), Some(json!("succeeded")), "cannot finish while Redis hangs");
    redis.resume();
    let took = wait_until(Duration::from_secs(20), || async {
        let v = env.admin_json("/admin/jobs").await;
        state(&v) == Some(json!("succeeded"))
    })
    .await
    .expect("the rebuild resumes by itself after the outage");
    println!("SIGCONT -> rebuild finished in {:.0} ms", took.as_secs_f64() * 1000.0);
}

/// After an outage, entries that expired meanwhile are refreshed from the
/// provider, most hit first, and only those that were ever hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_that_expired_during_an_outage_are_refreshed_when_it_ends() {
    let env = Env::on(Backends::Embedded, StubConfig::default(), FAST).await;
    let ttl = [("x-recache-ttl", "1")];
    for i in 0..5 {
        let body = common::chat_body(&format!("stale {i}"), false);
        let r = env.post("/v1/chat/completions", Some(KEY_A), &body, &ttl).await;
        assert_eq!(r.cache(), "MISS");
        if i < 3 {
            // Hit three of them, so they count as worth refreshing.
            let r = env.post("/v1/chat/completions", Some(KEY_A), &body, &ttl).await;
            assert_eq!(r.cache(), "HIT");
        }
    }
    tokio::time::sleep(Duration::from_millis(150)).await; // hit counters reach metadata
    let post = |action: &'static str| {
        let env = &env;
        async move {
            env.admin_post(&format!("/admin/breakers/index/{action}"), &json!({}))
                .await
                .0
        }
    };
    assert_eq!(post("open").await, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await; // they expire during the outage
    let calls = env.stub.calls();
    assert_eq!(post("reset").await, 200);
    let took = wait_until(Duration::from_secs(10), || async {
        jobs(&env, "refresh-stale", "succeeded").await.len() == 1
    })
    .await
    .expect("a refresh-stale job runs when the outage ends");
    let job = &jobs(&env, "refresh-stale", "succeeded").await[0];
    println!(
        "outage over -> refresh-stale done in {:.0} ms: {}",
        took.as_secs_f64() * 1000.0,
        job["result"]
    );
    assert_eq!(job["result"]["refreshed"], 3, "{job}");
    assert_eq!(env.stub.calls() - calls, 3, "only the entries that were hit");
    for i in 0..3 {
        let body = common::chat_body(&format!("stale {i}"), false);
        let r = env.post("/v1/chat/completions", Some(KEY_A), &body, &ttl).await;
        assert_eq!(r.cache(), "HIT", "refreshed entry {i} is fresh again");
    }
}

/// `audit --sample N`: a random run of N entries, each seen once; a sample as
/// large as the store is the whole store (a wrapped walk once saw entries
/// twice and reported false `missing_from_index`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sampled_audit_sees_each_entry_once() {
    let env = Env::on(Backends::Embedded, StubConfig::default(), FAST).await;
    fill(&env, 30, "sampled").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let (code, r) = env.cli_json(&["audit", "--sample", "12"]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(
            (r["entries_scanned"].as_u64(), r["sampled"].as_bool()),
            (Some(12), Some(true)),
            "{r}"
        );
    }
    let (code, r) = env.cli_json(&["audit", "--sample", "1000"]);
    assert_eq!(code, 0, "no false finding: {r}");
    assert_eq!(
        (r["entries_scanned"].as_u64(), r["sampled"].as_bool()),
        (Some(30), Some(false)),
        "{r}"
    );
}
