//! The degradation matrix (ARCHITECTURE.md, "Failure behaviour"), proven with real servers that
//! these tests own: each row's engine(s) are killed with `kill -9` or hung
//! with `SIGSTOP` under bounded concurrent load on loopback. Clients must see
//! zero non-2xx responses, the breaker must open within its 5 failed calls,
//! the row's behaviour must hold, and after the restart (or `SIGCONT`) the
//! breaker must close and hits return. Figures are printed: fault-to-open
//! time and p99 latency before, during and after.
//!
//! Runs only under scripts/with-engines.sh, which provides the server binaries.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::servers::Server;
use common::{Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;

/// One scenario at a time: they measure latency and own CPU-hungry servers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEYS: usize = 20;
const CONCURRENCY: usize = 8;

struct Rig {
    redis: Server,
    s3: Server,
    pg: Server,
    env: Env,
}

async fn rig() -> Option<Rig> {
    if std::env::var("RECACHE_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("recache=debug")
            .with_test_writer()
            .try_init();
    }
    let redis = Server::redis()?;
    let s3 = Server::s3()?;
    let pg = Server::postgres()?;
    let b = Backends::Real {
        redis: redis.url(),
        prefix: "matrix".into(),
        s3_endpoint: s3.url(),
        bucket: "bucket".into(),
        postgres: pg.url(),
    };
    // Short open period so recovery fits in a test; memory tier off so artifact reads hit S3.
    let env = Env::on_with(
        b,
        StubConfig::default(),
        "[breaker]\nopen_seconds = 1\n",
        &[
            ("RECACHE_ARTIFACTS__MEMORY_CACHE_MB", "0"),
            ("RECACHE_METADATA__SPOOL_REPLAY_INTERVAL_MS", "200"),
            // The production defaults, not the lenient ones of the other real-engine tests.
            ("RECACHE_INDEX__TIMEOUT_MS", "50"),
            ("RECACHE_ARTIFACTS__TIMEOUT_MS", "250"),
            ("RECACHE_METADATA__TIMEOUT_MS", "250"),
        ],
    )
    .await;
    let c = env.config();
    assert_eq!(
        (c.index.timeout_ms, c.artifacts.timeout_ms, c.metadata.timeout_ms),
        (50, 250, 250),
        "overrides applied"
    );
    Some(Rig { redis, s3, pg, env })
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    status: u16,
    cache: String,
    latency: Duration,
}

/// Bounded load: `CONCURRENCY` clients cycling over `KEYS` prompts for `dur`.
async fn load(env: &Env, dur: Duration) -> Vec<Sample> {
    let deadline = Instant::now() + dur;
    let n = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base, n) = (env.http.clone(), env.base.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < deadline {
                let i = n.fetch_add(1, Ordering::Relaxed) % KEYS;
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(KEY_A)
                    .timeout(Duration::from_secs(10))
                    .json(&common::chat_body(&format!("matrix key {i}"), false))
                    .send()
                    .await;
                let (status, cache) = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let c = r
                            .headers()
                            .get("x-recache-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let _ = r.bytes().await;
                        (s, c)
                    }
                    Err(_) => (0, String::new()),
                };
                out.push(Sample {
                    at: t,
                    status,
                    cache,
                    latency: t.elapsed(),
                });
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn p99_ms(s: &[Sample]) -> f64 {
    let mut l: Vec<f64> = s.iter().map(|x| x.latency.as_secs_f64() * 1000.0).collect();
    if l.is_empty() {
        return 0.0;
    }
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    l[((l.len() - 1) as f64 * 0.99).round() as usize]
}

fn errors(s: &[Sample]) -> Vec<u16> {
    s.iter()
        .filter(|x| !(200..300).contains(&x.status))
        .map(|x| x.status)
        .collect()
}

async fn breakers(env: &Env) -> HashMap<String, String> {
    let v = env.admin_json("/admin/breakers").await;
    v["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls the breakers until stopped; returns when each backend first left `closed`.
fn watch_breakers(
    env: &Env,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<HashMap<String, Instant>>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let (http, base) = (env.http.clone(), env.base.clone());
    let handle = tokio::spawn(async move {
        let mut opened = HashMap::new();
        loop {
            if rx.try_recv().is_ok() {
                break opened;
            }
            let v: serde_json::Value = match http
                .get(format!("{base}/admin/breakers"))
                .bearer_auth("admin-secret")
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => Default::default(),
            };
            let now = Instant::now();
            for b in v["breakers"].as_array().cloned().unwrap_or_default() {
                if b["state"] != "closed" && b["state"] != "disabled" {
                    opened
                        .entry(b["backend"].as_str().unwrap_or("").to_string())
                        .or_insert(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (tx, handle)
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(clippy::enum_variant_names)]
enum Row {
    IndexDown,
    ArtifactsDown,
    MetadataDown,
    AllDown,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Kill,
    Pause,
}

impl Row {
    fn backends(self) -> &'static [&'static str] {
        match self {
            Row::IndexDown => &["index"],
            Row::ArtifactsDown => &["artifacts"],
            Row::MetadataDown => &["metadata"],
            Row::AllDown => &["index", "artifacts", "metadata"],
        }
    }

    /// Breakers that must open: those the request path keeps calling. With
    /// everything down, lookups fail at the index; once its breaker is open no
    /// store is attempted and nothing is read, so artifacts and metadata may
    /// see too few calls to open within the window (their own rows prove their
    /// breakers). Their states are reported either way.
    fn must_open(self) -> &'static [&'static str] {
        match self {
            Row::AllDown => &["index"],
            other => other.backends(),
        }
    }
}

fn servers(rig: &mut Rig, row: Row) -> Vec<&mut Server> {
    match row {
        Row::IndexDown => vec![&mut rig.redis],
        Row::ArtifactsDown => vec![&mut rig.s3],
        Row::MetadataDown => vec![&mut rig.pg],
        Row::AllDown => vec![&mut rig.redis, &mut rig.s3, &mut rig.pg],
    }
}

async fn scenario(row: Row, fault: Fault) {
    let _serial = SERIAL.lock().await;
    let Some(mut rig) = rig().await else { return };
    let env = &rig.env;
    for i in 0..KEYS {
        let r = env.chat(KEY_A, &format!("matrix key {i}")).await;
        assert_eq!(r.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let healthy = load(env, Duration::from_millis(1500)).await;
    assert!(
        errors(&healthy).is_empty(),
        "healthy phase errors: {:?}",
        errors(&healthy)
    );
    assert!(healthy.iter().all(|s| s.cache == "HIT"), "healthy phase is all hits");
    let upstream_before = env.stub.calls();

    // Fault.
    let (stop, watcher) = watch_breakers(&rig.env);
    let t_fault = Instant::now();
    for s in servers(&mut rig, row) {
        match fault {
            Fault::Kill => s.kill9(),
            Fault::Pause => s.pause(),
        }
    }
    let env = &rig.env;
    let during = load(env, Duration::from_millis(3000)).await;
    let _ = stop.send(());
    let opened = watcher.await.unwrap();
    let upstream_during = env.stub.calls() - upstream_before;

    let errs = errors(&during);
    assert!(
        errs.is_empty(),
        "{row:?}/{fault:?}: {} client-visible errors: {errs:?}",
        errs.len()
    );
    let mut open_ms = Vec::new();
    for b in row.backends() {
        let Some(at) = opened.get(*b) else {
            assert!(
                !row.must_open().contains(b),
                "{row:?}/{fault:?}: the {b} breaker never opened"
            );
            open_ms.push(format!("{b} not called enough to open"));
            continue;
        };
        open_ms.push(format!(
            "{b} {:.0} ms",
            at.duration_since(t_fault).as_secs_f64() * 1000.0
        ));
    }
    let errors_metric = env
        .metric(&format!("cache_errors_total{{backend=\"{}\"}}", row.backends()[0]))
        .await;
    // The breaker opens on its 5th failure; calls already in flight fail too, and
    // while the fault lasts each half-open probe (one per `open_seconds` = 1 s of the
    // 3 s load, plus one at the edge) fails once more.
    let probes = 3.0 + 1.0;
    assert!(
        errors_metric <= 5.0 + CONCURRENCY as f64 + probes,
        "breaker opened within its 5 failed calls (plus calls in flight and one failed probe per second): {errors_metric}"
    );
    // After the breaker opened (plus calls that were in flight), the row's behaviour holds.
    let first_open = row
        .backends()
        .iter()
        .filter_map(|b| opened.get(*b))
        .min()
        .copied()
        .unwrap();
    let settled: Vec<&Sample> = during
        .iter()
        .filter(|s| s.at > first_open + Duration::from_millis(300))
        .collect();
    assert!(!settled.is_empty());
    let hits = settled.iter().filter(|s| s.cache == "HIT").count();
    match row {
        Row::IndexDown | Row::AllDown => assert_eq!(hits, 0, "{row:?}: every lookup misses"),
        Row::ArtifactsDown => {
            assert_eq!(hits, 0, "artifacts down: payloads come from the provider");
            let states = breakers(env).await;
            assert_eq!(
                states["index"], "closed",
                "artifacts down: the index is still consulted and healthy"
            );
        }
        Row::MetadataDown => assert_eq!(
            hits,
            settled.len(),
            "metadata down: reads from index+artifacts keep working"
        ),
    }

    // Recovery.
    let t_recover = Instant::now();
    for s in servers(&mut rig, row) {
        match fault {
            Fault::Kill => s.start(),
            Fault::Pause => s.resume(),
        }
    }
    let env = &rig.env;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = load(env, Duration::from_millis(300)).await;
        let states = breakers(env).await;
        if row.backends().iter().all(|b| states[*b] == "closed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{row:?}/{fault:?}: breakers did not close: {states:?}"
        );
    }
    let recovered_in = t_recover.elapsed();
    let after = load(env, Duration::from_millis(1500)).await;
    assert!(errors(&after).is_empty(), "after recovery: {:?}", errors(&after));
    assert!(
        after.iter().any(|s| s.cache == "HIT"),
        "{row:?}/{fault:?}: hits return after recovery"
    );
    println!(
        "MATRIX {row:?}/{fault:?}: client errors 0 of {} during; fault->open {}; closed {:.1} s after restart; \
         p99 healthy {:.1} ms, during {:.1} ms, after {:.1} ms; provider calls during outage {} ({} hits of {} settled requests)",
        during.len(),
        open_ms.join(", "),
        recovered_in.as_secs_f64(),
        p99_ms(&healthy),
        p99_ms(&during),
        p99_ms(&after),
        upstream_during,
        hits,
        settled.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_down_kill() {
    scenario(Row::IndexDown, Fault::Kill).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_down_pause() {
    scenario(Row::IndexDown, Fault::Pause).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_down_kill() {
    scenario(Row::ArtifactsDown, Fault::Kill).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_down_pause() {
    scenario(Row::ArtifactsDown, Fault::Pause).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_down_kill() {
    scenario(Row::MetadataDown, Fault::Kill).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_down_pause() {
    scenario(Row::MetadataDown, Fault::Pause).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_kill() {
    scenario(Row::AllDown, Fault::Kill).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_pause() {
    scenario(Row::AllDown, Fault::Pause).await
}

/// PostgreSQL stopped, 1,000 requests, PostgreSQL started: exactly 1,000
/// audit rows (and 1,000 registered entries), none lost, none duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_spool_loses_nothing_and_duplicates_nothing() {
    use sqlx::Connection;
    let _serial = SERIAL.lock().await;
    let Some(mut rig) = rig().await else { return };
    rig.env.chat(KEY_A, "warm-up before the outage").await;
    let count = |sql: &'static str, url: String| async move {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
        n
    };
    let pg_url = rig.pg.url();
    let audit_sql = "SELECT COUNT(*) FROM audit_log WHERE action = 'entry.store' AND cache_key IS NOT NULL";
    let base_audit = count(audit_sql, pg_url.clone()).await;
    let base_entries = count("SELECT COUNT(*) FROM entries", pg_url.clone()).await;
    rig.pg.kill9();
    let env = Arc::new(rig.env);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let mut bad = 0;
            for i in (w..1000).step_by(16) {
                let r = env.chat(KEY_A, &format!("spooled request {i}")).await;
                if r.status != 200 || r.cache() != "MISS" {
                    bad += 1;
                }
            }
            bad
        }));
    }
    let mut bad = 0;
    for t in tasks {
        bad += t.await.unwrap();
    }
    assert_eq!(bad, 0, "every request answered while PostgreSQL was down");
    rig.pg.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = count(audit_sql, pg_url.clone()).await - base_audit;
        if n >= 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of 1000 audit rows after replay");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let any further replay run, then count again: no duplicates.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(audit_sql, pg_url.clone()).await - base_audit,
        1000,
        "exactly 1,000 audit rows"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM entries", pg_url.clone()).await - base_entries,
        1000,
        "every entry registered"
    );
    let spool_left = env.gw.as_ref().unwrap().state.cache.spool.as_ref().unwrap().pending();
    assert_eq!(spool_left, 0, "spool drained");
    drop(rig.redis);
    drop(rig.s3);
}

/// Redis at maxmemory with noeviction: index writes fail (counted), reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_fails_writes_gracefully_and_keeps_reads() {
    let _serial = SERIAL.lock().await;
    let Some(rig) = rig().await else { return };
    let env = &rig.env;
    for i in 0..5 {
        env.chat(KEY_A, &format!("before oom {i}")).await;
    }
    let mut conn = redis::Client::open(rig.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut conn)
        .await
        .unwrap();
    // maxmemory of 1 byte: Redis is full, every write is refused with OOM (reads are not).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let full: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg("x").query_async(&mut conn).await;
    assert!(full.is_err_and(|e| e.code() == Some("OOM")), "Redis is out of memory");
    let before = env.metric("cache_errors_total{backend=\"index\"}").await;
    for i in 0..10 {
        let r = env.chat(KEY_A, &format!("during oom {i}")).await;
        assert_eq!((r.status, r.cache()), (200, "MISS"), "{}", r.text);
        let again = env.chat(KEY_A, &format!("during oom {i}")).await;
        assert_eq!(again.cache(), "MISS", "the index write was refused, so no hit");
    }
    assert!(
        env.metric("cache_errors_total{backend=\"index\"}").await >= before + 10.0,
        "refused writes are counted"
    );
    for i in 0..5 {
        assert_eq!(
            env.chat(KEY_A, &format!("before oom {i}")).await.cache(),
            "HIT",
            "reads continue"
        );
    }
    assert_eq!(
        breakers(env).await["index"],
        "closed",
        "a full Redis is not a dead Redis"
    );
}

/// Answer first, store after: with PostgreSQL hung, a miss is answered as soon as the
/// provider's answer is complete while its store waits on metadata; an identical request
/// sent meanwhile joins the flight and is answered from it (a coalesced MISS), and the
/// provider is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_answered_before_its_store_and_a_repeat_meanwhile_costs_nothing() {
    let _serial = SERIAL.lock().await;
    let (Some(redis), Some(s3), Some(pg)) = (Server::redis(), Server::s3(), Server::postgres()) else {
        eprintln!("skipping: no engine harness (scripts/with-engines.sh)");
        return;
    };
    let b = Backends::Real {
        redis: redis.url(),
        prefix: "first".into(),
        s3_endpoint: s3.url(),
        bucket: "bucket".into(),
        postgres: pg.url(),
    };
    // A long metadata timeout: the store of the answer below waits on the hung server for 5 s.
    let env = Env::on_with(
        b,
        StubConfig::default(),
        "",
        &[("RECACHE_METADATA__TIMEOUT_MS", "5000")],
    )
    .await;
    assert_eq!(env.chat(KEY_A, "warm-up").await.cache(), "MISS");
    let calls = env.stub.calls();
    pg.pause();
    // Plain requests (the helpers wait for stores to finish).
    let ask = || async {
        let r = env
            .http
            .post(format!("{}/v1/chat/completions", env.base))
            .bearer_auth(KEY_A)
            .json(&common::chat_body("answered first", false))
            .send()
            .await
            .unwrap();
        common::Resp::from(r).await
    };
    let first = ask().await;
    assert_eq!((first.status, first.cache()), (200, "MISS"));
    // The answer is back while its flight is still storing (waiting on metadata).
    assert_eq!(
        env.metric("cache_flights_in_progress").await,
        1.0,
        "the store is still running"
    );
    assert_eq!(env.metric("cache_stores_in_progress").await, 1.0);
    let repeat = ask().await;
    assert_eq!(
        (repeat.status, repeat.cache()),
        (200, "MISS"),
        "answered from the completed flight"
    );
    assert_eq!(repeat.header("x-recache-coalesced"), "true");
    assert_eq!(repeat.content(), first.content());
    assert_eq!(env.stub.calls(), calls + 1, "one provider call for both");
    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.metric("cache_flights_in_progress").await > 0.0 {
        assert!(Instant::now() < deadline, "the store finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = ask().await;
    assert_eq!(later.cache(), "HIT", "stored");
    assert_eq!(later.header("x-recache-coalesced"), "", "from the cache now");
    assert_eq!(later.content(), first.content());
    assert_eq!(env.stub.calls(), calls + 1);
    assert_eq!(env.metric("cache_coalesced_total").await, 1.0);
    drop((redis, s3));
}

/// `kill -9` of a gateway process in the middle of heavy miss traffic: the
/// batched writes lose at most the batches in flight, whose answers were never
/// indexed. No index pointer is left without its entry or its artifact (audit
/// clean, orphan artifacts allowed), and a restarted gateway serves every
/// answer it had acknowledged as stored.
async fn kill_nine_under_miss_traffic_leaves_no_dangling_pointer(b: Backends) {
    let mut env = Env::on(b, StubConfig::default(), "").await;
    if let Some(gw) = env.gw.take() {
        gw.shutdown().await; // the process below owns the stores
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(env.config_file())
        .env("RUST_LOG", "warn")
        .env("RECACHE_ADMIN_TOKEN", "admin-secret")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gateway starts");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/health/live"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the gateway came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let (http, base, answered) = (http.clone(), base.clone(), answered.clone());
            tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in 0..10_000 {
                    let prompt = format!("crash {c} {i}");
                    let r = http
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth(KEY_A)
                        .json(&common::chat_body(&prompt, false))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            ok.push(prompt);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break, // the gateway is gone
                    }
                }
                ok
            })
        })
        .collect();
    while answered.load(Ordering::Relaxed) < 600 {
        assert!(Instant::now() < deadline + Duration::from_secs(30), "traffic flowed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL, mid-traffic
    let _ = child.wait();
    let mut answered_prompts = Vec::new();
    for t in tasks {
        answered_prompts.extend(t.await.unwrap());
    }
    let (code, audit) = env.cli_json(&["audit"]);
    let counts = &audit["counts"];
    println!(
        "killed after {} answers; audit: {} entries, {} pointers, counts {counts}",
        answered_prompts.len(),
        audit["entries_scanned"],
        audit["index_pointers"]
    );
    for kind in [
        "dangling_pointer",
        "stale_pointer",
        "pointer_without_artifact",
        "missing_artifact",
        "corrupt_artifact",
    ] {
        assert_eq!(counts[kind].as_u64().unwrap_or(0), 0, "{kind}: {audit}");
    }
    assert!(
        code == 0
            || counts
                .as_object()
                .unwrap()
                .keys()
                .all(|k| k == "missing_from_index" || k == "orphan_artifact"),
        "{audit}"
    );
    assert!(
        audit["entries_scanned"].as_u64().unwrap() > 0,
        "entries were stored before the kill"
    );
    // Every answer is served again, from the cache or (never stored) bought again; none is wrong.
    env.start().await;
    let calls = env.stub.calls();
    let mut hits = 0;
    for p in answered_prompts.iter().step_by(7) {
        let r = env.chat(KEY_A, p).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.content().contains(p.as_str()), "the answer to {p}: {}", r.content());
        hits += usize::from(r.cache() == "HIT");
    }
    println!(
        "after restart: {hits} of {} sampled answers from the cache; {} bought again",
        answered_prompts.len().div_ceil(7),
        env.stub.calls() - calls
    );
    assert!(hits > 0);
}

mod kill_nine_under_miss_traffic {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        super::kill_nine_under_miss_traffic_leaves_no_dangling_pointer(super::Backends::Embedded).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_engines() {
        if let Some(b) = super::Backends::real().await {
            super::kill_nine_under_miss_traffic_leaves_no_dangling_pointer(b).await
        }
    }
}
