//! End-to-end tests of the gateway through real HTTP on loopback, against the
//! stub provider (the only fake), with the embedded storage roles.

mod common;

use std::time::Duration;

use common::{chat_body, Backends, Env, KEY_A, KEY_B};
use recache_stub_provider::StubConfig;
use serde_json::json;

on_both_backends!(
    miss_then_hit_with_headers_and_savings,
    key_order_and_whitespace_share_an_entry_over_http,
    tenants_never_see_each_others_entries,
    restart_keeps_entries,
    embeddings_are_cached,
    fifty_concurrent_identical_misses_make_one_provider_call,
    ttl_expiry_per_request_and_per_tenant,
    cache_control_directives,
    upstream_errors_and_incomplete_streams_pass_through_uncached,
    corrupt_artifact_is_a_miss_never_served,
    health_metrics_and_admin_auth,
    stale_if_error_serves_expired_entries_when_the_provider_fails,
    only_if_cached_never_calls_the_provider,
);

/// `Cache-Control: only-if-cached`: a cached answer is served; anything else
/// is a 504 `not_cached` with no provider call (the drills' probe).
async fn only_if_cached_never_calls_the_provider(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let only = [("cache-control", "only-if-cached")];
    let first = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("cached?", false), &only)
        .await;
    first.assert_error(504);
    assert_eq!(first.json()["error"]["code"], "not_cached");
    assert_eq!(first.json()["error"]["type"], "cache_error");
    assert_eq!(env.stub.calls(), 0, "no provider call");
    assert_eq!(env.chat(KEY_A, "cached?").await.cache(), "MISS");
    let again = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("cached?", false), &only)
        .await;
    assert_eq!((again.status, again.cache()), (200, "HIT"));
    // Another tenant's only-if-cached never sees it.
    let other = env
        .post("/v1/chat/completions", Some(KEY_B), &chat_body("cached?", false), &only)
        .await;
    other.assert_error(504);
    assert_eq!(env.stub.calls(), 1);
}

/// A breaker forced open with `?seconds=N` closes by itself at the deadline
/// (a crashed drill heals itself); `reset` closes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_breaker_closes_at_its_deadline() {
    let env = Env::new().await;
    let (code, v) = env.admin_post("/admin/breakers/index/open?seconds=1", &json!({})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["breaker"]["state"], "forced_open");
    assert_eq!(env.chat(KEY_A, "during").await.status, 200, "served by the provider");
    let state = |v: serde_json::Value| {
        v["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == "index")
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(env.admin_json("/admin/breakers").await), "forced_open");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        state(env.admin_json("/admin/breakers").await),
        "closed",
        "closed at the deadline"
    );
    assert_eq!(
        env.admin_post("/admin/breakers/index/open?seconds=0", &json!({}))
            .await
            .0,
        400
    );
    // Without a deadline it stays open until reset.
    assert_eq!(env.admin_post("/admin/breakers/index/open", &json!({})).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(state(env.admin_json("/admin/breakers").await), "forced_open");
    assert_eq!(env.admin_post("/admin/breakers/index/reset", &json!({})).await.0, 200);
    assert_eq!(state(env.admin_json("/admin/breakers").await), "closed");
}

async fn miss_then_hit_with_headers_and_savings(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let a = env.chat(KEY_A, "hello").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.cache(), "MISS");
    assert_eq!(a.header("x-recache-key").len(), 64);
    assert_eq!(a.header("age"), "0");
    let b = env.chat(KEY_A, "hello").await;
    assert_eq!(b.cache(), "HIT");
    assert_eq!(b.header("x-recache-key"), a.header("x-recache-key"));
    assert_eq!(b.text, a.text, "a hit serves the provider's exact bytes");
    assert_eq!(env.stub.calls(), 1);
    assert_eq!(env.metric("cache_hits_total").await, 1.0);
    assert_eq!(env.metric("cache_misses_total").await, 1.0);
    assert_eq!(env.metric("cache_tokens_saved_total").await, 36.0);
    let usd = env.metric("cache_usd_saved_total").await;
    assert!(
        (usd - (12.0 * 0.15 + 24.0 * 0.60) / 1e6).abs() < 1e-12,
        "usd saved {usd}"
    );
    // Hit counters reach metadata.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = a.header("x-recache-key");
    let v = env.admin_entry(key).await;
    assert_eq!(v["entry"]["hit_count"], 1, "{v}");
    assert_eq!(v["entry"]["tenant"], "team-a");
    assert_eq!(v["entry"]["prompt_tokens"], 12);
}

async fn key_order_and_whitespace_share_an_entry_over_http(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let a = env
        .post_raw(
            "/v1/chat/completions",
            Some(KEY_A),
            r#"{"model":"gpt-4o-mini","temperature":0.5,"messages":[{"role":"user","content":"x"}]}"#.into(),
            &[],
        )
        .await;
    let b = env
        .post_raw(
            "/v1/chat/completions",
            Some(KEY_A),
            "{ \"messages\" : [ {\"content\":\"x\", \"role\":\"user\"} ],\n \"temperature\": 0.5, \"model\": \"gpt-4o-mini\" }".into(),
            &[],
        )
        .await;
    assert_eq!((a.cache(), b.cache()), ("MISS", "HIT"));
    let c = env
        .post_raw(
            "/v1/chat/completions",
            Some(KEY_A),
            r#"{"model":"gpt-4o-mini","temperature":0.6,"messages":[{"role":"user","content":"x"}]}"#.into(),
            &[],
        )
        .await;
    assert_eq!(c.cache(), "MISS", "a different temperature is a different answer");
    let d = env
        .post_raw(
            "/v1/chat/completions",
            Some(KEY_A),
            r#"{"model":"gpt-4o-mini","temperature":0.5,"x_vendor_flag":true,"messages":[{"role":"user","content":"x"}]}"#.into(),
            &[],
        )
        .await;
    assert_eq!(d.cache(), "MISS", "unknown fields count");
}

async fn tenants_never_see_each_others_entries(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let a = env.chat(KEY_A, "secret plan").await;
    assert_eq!(a.cache(), "MISS");
    let b = env.chat(KEY_B, "secret plan").await;
    assert_eq!(b.cache(), "MISS", "tenant B must not get tenant A's entry");
    assert_ne!(a.content(), b.content(), "B got its own provider answer");
    assert_ne!(a.header("x-recache-key"), b.header("x-recache-key"));
    // Streamed too.
    let bs = env
        .post(
            "/v1/chat/completions",
            Some(KEY_B),
            &chat_body("streamed secret", true),
            &[],
        )
        .await;
    assert_eq!(bs.cache(), "MISS");
    let as_ = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("streamed secret", true),
            &[],
        )
        .await;
    assert_eq!(as_.cache(), "MISS");
    assert_ne!(as_.content(), bs.content());
    // A namespace header cannot reach into another tenant either: it partitions within the tenant.
    let ns = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("secret plan", false),
            &[("x-recache-namespace", "team-b")],
        )
        .await;
    assert_eq!(ns.cache(), "MISS");
    assert_eq!(env.stub.calls(), 5);
}

async fn restart_keeps_entries(b: Backends) {
    let mut env = Env::on(b, StubConfig::default(), "").await;
    let first = env.chat(KEY_A, "persist me").await;
    assert_eq!(first.cache(), "MISS");
    env.restart().await;
    let again = env.chat(KEY_A, "persist me").await;
    assert_eq!(again.cache(), "HIT", "entry survives a gateway restart");
    assert_eq!(again.text, first.text);
    assert_eq!(env.stub.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_rebuilds_from_metadata_and_survives_torn_log() {
    let mut env = Env::new().await;
    let first = env.chat(KEY_A, "persist me").await;
    assert_eq!(first.cache(), "MISS");
    // Lose the index entirely: it is rebuilt from metadata at start-up.
    env.gw.take().unwrap().shutdown().await;
    std::fs::remove_file(env.path("index/index.log")).unwrap();
    env.start().await;
    let rebuilt = env.chat(KEY_A, "persist me").await;
    assert_eq!(rebuilt.cache(), "HIT", "index rebuilt from metadata");
    assert_eq!(rebuilt.text, first.text);
    // A torn tail on the log (crash mid-write) is cut, not fatal.
    env.gw.take().unwrap().shutdown().await;
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(env.path("index/index.log"))
        .unwrap()
        .write_all(&[1, 2, 3])
        .unwrap();
    env.start().await;
    assert_eq!(env.chat(KEY_A, "persist me").await.cache(), "HIT");
    assert_eq!(env.stub.calls(), 1);
}

async fn embeddings_are_cached(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"]});
    let a = env.post("/v1/embeddings", Some(KEY_A), &body, &[]).await;
    assert_eq!((a.status, a.cache()), (200, "MISS"));
    let b = env.post("/v1/embeddings", Some(KEY_A), &body, &[]).await;
    assert_eq!(b.cache(), "HIT");
    assert_eq!(a.json()["data"], b.json()["data"]);
    assert_eq!(env.stub.calls(), 1);
}

async fn fifty_concurrent_identical_misses_make_one_provider_call(b: Backends) {
    let env = Env::on(
        b,
        StubConfig {
            latency_ms: 300,
            ..Default::default()
        },
        "",
    )
    .await;
    let env = std::sync::Arc::new(env);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            // Mix streaming and non-streaming clients on the same key.
            env.post(
                "/v1/chat/completions",
                Some(KEY_A),
                &chat_body("coalesce me", i % 5 == 0),
                &[],
            )
            .await
        }));
    }
    let mut contents = std::collections::HashSet::new();
    let mut coalesced = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        contents.insert(r.content());
        if r.header("x-recache-coalesced") == "true" {
            coalesced += 1;
        }
    }
    assert_eq!(env.stub.calls(), 1, "exactly one upstream call");
    assert_eq!(contents.len(), 1, "everyone got the same answer");
    assert_eq!(coalesced, 49);
    assert_eq!(env.chat(KEY_A, "coalesce me").await.cache(), "HIT");
}

async fn ttl_expiry_per_request_and_per_tenant(b: Backends) {
    let env = Env::on(
        b,
        StubConfig::default(),
        "[[tenants]]\nname = \"short\"\nkeys = [\"sk-short\"]\ndefault_ttl_seconds = 1\n",
    )
    .await;
    let a = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("ttl", false),
            &[("x-recache-ttl", "1")],
        )
        .await;
    assert_eq!(a.cache(), "MISS");
    let s = env.chat("sk-short", "tenant ttl").await;
    assert_eq!(s.cache(), "MISS");
    assert_eq!(env.chat(KEY_A, "ttl").await.cache(), "HIT");
    assert_eq!(env.chat("sk-short", "tenant ttl").await.cache(), "HIT");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(env.chat(KEY_A, "ttl").await.cache(), "MISS", "expired by x-recache-ttl");
    assert_eq!(
        env.chat("sk-short", "tenant ttl").await.cache(),
        "MISS",
        "expired by the tenant default"
    );
    // Default TTL of a normal tenant is long: still a hit.
    assert_eq!(env.chat(KEY_A, "ttl").await.cache(), "HIT");
    // Bad TTL header is a clear 400.
    env.post(
        "/v1/chat/completions",
        Some(KEY_A),
        &chat_body("ttl", false),
        &[("x-recache-ttl", "soon")],
    )
    .await
    .assert_error(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_swept_from_every_role() {
    let env = Env::new().await;
    env.post(
        "/v1/chat/completions",
        Some(KEY_A),
        &chat_body("sweep", false),
        &[("x-recache-ttl", "1")],
    )
    .await;
    let store = env.raw_segments();
    assert_eq!(store.stats().artifacts, 1);
    // Expired at 1 s, kept 2 s more for stale-if-error, then swept (every second).
    tokio::time::sleep(Duration::from_millis(5000)).await;
    assert_eq!(env.metric("cache_index_entries").await, 0.0, "index swept");
    assert_eq!(store.stats().artifacts, 0, "artifact deleted");
    assert!(store.stats().dead_bytes > 0, "its bytes wait for compaction");
    assert!(store.compact_now(true).await.unwrap().reclaimed_bytes > 0);
    assert_eq!(store.stats().dead_bytes, 0, "and are gone after it");
}

async fn cache_control_directives(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let first = env.chat(KEY_A, "cc").await;
    assert_eq!(first.cache(), "MISS");
    // no-cache: skip the lookup, fetch fresh, and refresh the entry.
    let nc = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("cc", false),
            &[("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(nc.cache(), "BYPASS");
    assert_ne!(nc.content(), first.content(), "a fresh answer");
    env.settle().await; // polls until the store has run (no fixed sleep)
    let after = env.chat(KEY_A, "cc").await;
    assert_eq!(after.cache(), "HIT");
    assert_eq!(after.content(), nc.content(), "the entry was refreshed");
    // no-store: answered, not stored.
    let ns = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("ns", false),
            &[("cache-control", "no-store")],
        )
        .await;
    assert_eq!(ns.cache(), "BYPASS");
    assert_eq!(env.chat(KEY_A, "ns").await.cache(), "MISS", "no-store kept nothing");
    // no-store may still be served from an existing entry.
    let ns_hit = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("cc", false),
            &[("cache-control", "no-store")],
        )
        .await;
    assert_eq!(ns_hit.cache(), "HIT");
    // max-age: accept only fresher entries.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh_enough = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("cc", false),
            &[("cache-control", "max-age=60")],
        )
        .await;
    assert_eq!(fresh_enough.cache(), "HIT");
    assert!(fresh_enough.header("age").parse::<u64>().unwrap() >= 1);
    let too_old = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("cc", false),
            &[("cache-control", "max-age=0")],
        )
        .await;
    assert_eq!(too_old.cache(), "MISS");
    env.post(
        "/v1/chat/completions",
        Some(KEY_A),
        &chat_body("cc", false),
        &[("cache-control", "max-age=x")],
    )
    .await
    .assert_error(400);
    assert_eq!(env.metric("cache_bypass_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_style_errors() {
    let env = Env::with(StubConfig::default(), "").await;
    let p = "/v1/chat/completions";
    env.post_raw(p, Some(KEY_A), "{not json".into(), &[])
        .await
        .assert_error(400);
    env.post_raw(p, Some(KEY_A), "[1,2]".into(), &[])
        .await
        .assert_error(400);
    env.post(
        p,
        Some(KEY_A),
        &json!({"messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await
    .assert_error(400);
    env.post(p, Some(KEY_A), &json!({"model": 5, "messages": []}), &[])
        .await
        .assert_error(400);
    env.post(p, Some(KEY_A), &json!({"model": "gpt-4o-mini", "messages": "hi"}), &[])
        .await
        .assert_error(400);
    env.post(p, Some(KEY_A), &json!({"model": "gpt-4o-mini"}), &[])
        .await
        .assert_error(400);
    env.post(
        p,
        Some(KEY_A),
        &json!({"model": "gpt-4o-mini", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await
    .assert_error(400);
    env.post(
        "/v1/embeddings",
        Some(KEY_A),
        &json!({"model": "text-embedding-3-small", "input": 5}),
        &[],
    )
    .await
    .assert_error(400);
    env.post("/v1/completions", Some(KEY_A), &json!({"model": "gpt-4o-mini"}), &[])
        .await
        .assert_error(400);
    let big = "x".repeat(9 * 1024 * 1024);
    env.post(p, Some(KEY_A), &chat_body(&big, false), &[])
        .await
        .assert_error(413);
    env.post(p, Some(KEY_A), &chat_body("x", false), &[]).await; // still alive
    env.post("/v1/nope", Some(KEY_A), &chat_body("x", false), &[])
        .await
        .assert_error(404);
    let get = common::Resp::from(
        env.http
            .get(format!("{}/v1/chat/completions", env.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    get.assert_error(405);
    env.post(p, None, &chat_body("x", false), &[]).await.assert_error(401);
    env.post(p, Some("sk-wrong"), &chat_body("x", false), &[])
        .await
        .assert_error(401);
    env.post(
        p,
        Some(KEY_A),
        &json!({"model": "llama-3", "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await
    .assert_error(404);
    env.post(
        p,
        Some(KEY_A),
        &chat_body("x", false),
        &[("x-recache-namespace", "no spaces")],
    )
    .await
    .assert_error(400);
    // Nothing invalid reached the provider.
    assert_eq!(env.stub.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_is_configurable() {
    let mut env = Env::new().await;
    env.gw.take().unwrap().shutdown().await;
    let mut cfg = env.config();
    cfg.server.max_body_bytes = 200;
    let gw = recache::server::Gateway::start(cfg, &Default::default()).await.unwrap();
    env.base = format!("http://{}", gw.addr);
    env.post(
        "/v1/chat/completions",
        Some(KEY_A),
        &chat_body(&"y".repeat(300), false),
        &[],
    )
    .await
    .assert_error(413);
    assert_eq!(env.chat(KEY_A, "small").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_unreachable_and_timeout() {
    let env = Env::with(
        StubConfig::default(),
        "[[upstreams]]\nname = \"dead\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [\"dead-*\"]\nconnect_timeout_ms = 500\n",
    )
    .await;
    let dead = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &json!({"model": "dead-1", "messages": [{"role": "user", "content": "x"}]}),
            &[],
        )
        .await;
    dead.assert_error(502);
    assert_eq!(dead.json()["error"]["code"], "upstream_unreachable");
    env.stub.update(|c| c.latency_ms = 2500);
    let slow = env.chat(KEY_A, "slow").await;
    slow.assert_error(504);
    env.stub.update(|c| c.latency_ms = 0);
    assert_eq!(
        env.chat(KEY_A, "slow").await.cache(),
        "MISS",
        "a timeout is never cached"
    );
}

async fn upstream_errors_and_incomplete_streams_pass_through_uncached(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    env.stub.update(|c| c.fail_status = Some(500));
    let e = env.chat(KEY_A, "fails").await;
    assert_eq!(e.status, 500);
    assert_eq!(
        e.json()["error"]["code"],
        "stub_injected",
        "the provider's body is passed through"
    );
    env.stub.update(|c| c.fail_status = Some(429));
    assert_eq!(env.chat(KEY_A, "fails").await.status, 429);
    env.stub.update(|c| c.fail_status = None);
    let ok = env.chat(KEY_A, "fails").await;
    assert_eq!((ok.status, ok.cache()), (200, "MISS"), "errors were not cached");

    env.stub.update(|c| c.truncate_stream_after = Some(2));
    let cut = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("cut short", true), &[])
        .await;
    // The body names the upstream error, should this ever be a 502 again (docs/operations.md,
    // "Known problems").
    assert_eq!(cut.status, 200, "{}", cut.text);
    assert!(
        !cut.text.contains("[DONE]"),
        "the client sees the stream as the provider cut it"
    );
    env.stub.update(|c| c.truncate_stream_after = None);
    env.settle().await; // polls until the store has run (no fixed sleep)
    assert_eq!(
        env.chat(KEY_A, "cut short").await.cache(),
        "MISS",
        "an incomplete stream is never cached"
    );
    assert_eq!(env.metric("cache_stores_total").await, 2.0);
}

async fn corrupt_artifact_is_a_miss_never_served(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let first = env.chat(KEY_A, "integrity").await;
    assert_eq!(first.cache(), "MISS");
    let entry = env.admin_entry(first.header("x-recache-key")).await;
    env.corrupt_artifact(entry["entry"]["artifact"].as_str().unwrap()).await;
    let second = env.chat(KEY_A, "integrity").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache(), "MISS", "a corrupt artifact is never served");
    assert_ne!(
        second.content(),
        first.content(),
        "the answer came fresh from the provider"
    );
    assert_eq!(env.metric("cache_integrity_failures_total").await, 1.0);
    assert!(env.metric("cache_errors_total{backend=\"artifacts\"}").await >= 1.0);
    let audit = env.admin_json("/admin/audit").await;
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "artifact.corrupt"),
        "{audit}"
    );
    // The refetched answer replaced it and is served.
    env.settle().await; // polls until the store has run (no fixed sleep)
    assert_eq!(env.chat(KEY_A, "integrity").await.cache(), "HIT");
}

async fn health_metrics_and_admin_auth(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let live = env.get_json("/health/live").await;
    assert_eq!(live["status"], "ok");
    // Each check has 500 ms: on a loaded 2-core CI machine one can miss it right at
    // start-up, which reads as degraded; the engines are up, so it turns ready.
    // Health rounds are reused for 5 s (one engine probe per round, whatever the request rate).
    let mut ready = env.admin_json("/health/ready").await;
    for _ in 0..48 {
        if ready["status"] == "ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        ready = env.admin_json("/health/ready").await;
    }
    assert_eq!(ready["status"], "ready", "{ready}");
    let roles = ready["roles"].as_array().unwrap();
    assert_eq!(roles.len(), 4);
    for r in roles {
        let expected = if r["role"] == "vectors" { "disabled" } else { "up" };
        assert_eq!(r["status"], expected, "{r}");
        assert!(r["latency_ms"].is_number());
    }
    env.chat(KEY_A, "m").await;
    let text = env.metrics_text().await;
    for name in [
        "cache_hits_total",
        "cache_misses_total",
        "cache_errors_total{backend=\"index\"}",
        "recache_request_duration_seconds_bucket{status=\"200\",cache=\"MISS\",dialect=\"openai\"",
        "cache_usd_saved_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let no_token = env.http.get(format!("{}/admin/audit", env.base)).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = env
        .http
        .get(format!("{}/admin/audit", env.base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // A client key is not an admin token.
    let client = env
        .http
        .get(format!("{}/admin/audit", env.base))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(client.status(), 401);
}

async fn stale_if_error_serves_expired_entries_when_the_provider_fails(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let first = env
        .post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("stale", false),
            &[("x-recache-ttl", "1")],
        )
        .await;
    assert_eq!(first.cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    env.stub.update(|c| c.fail_status = Some(500));
    let sie = [("cache-control", "stale-if-error=60")];
    let stale = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("stale", false), &sie)
        .await;
    assert_eq!((stale.status, stale.cache()), (200, "STALE"), "{}", stale.text);
    assert_eq!(stale.text, first.text, "the expired answer, byte for byte");
    let streamed = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("stale", true), &sie)
        .await;
    assert_eq!((streamed.status, streamed.cache()), (200, "STALE"));
    assert_eq!(streamed.content(), first.content());
    env.stub.update(|c| c.fail_status = Some(503));
    assert_eq!(
        env.post("/v1/chat/completions", Some(KEY_A), &chat_body("stale", false), &sie)
            .await
            .cache(),
        "STALE"
    );
    // Without the directive (tenant default 0) the provider's error passes through.
    let plain = env.chat(KEY_A, "stale").await;
    assert_eq!(plain.status, 503);
    // A client error is not a provider failure: no stale answer for a 4xx.
    env.stub.update(|c| c.fail_status = Some(429));
    assert_eq!(
        env.post("/v1/chat/completions", Some(KEY_A), &chat_body("stale", false), &sie)
            .await
            .status,
        429
    );
    // With no entry at all, the client gets the provider's error.
    env.stub.update(|c| c.fail_status = Some(500));
    assert_eq!(
        env.post(
            "/v1/chat/completions",
            Some(KEY_A),
            &chat_body("never stored", false),
            &sie
        )
        .await
        .status,
        500
    );
    // Provider back: a fresh answer replaces the stale one.
    env.stub.update(|c| c.fail_status = None);
    let fresh = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("stale", false), &sie)
        .await;
    assert_eq!(fresh.cache(), "MISS");
    assert_ne!(fresh.content(), first.content());
    assert_eq!(env.metric("cache_stale_served_total").await, 3.0);
}
