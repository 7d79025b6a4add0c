//! Tenant and key limits (issue 25) on both engine sets: requests per minute
//! (hits count), tokens per minute and USD per day (hits never count, and are
//! still served over them), concurrent requests, model and upstream
//! allow-lists, a key stricter than its tenant, the `x-ratelimit-*` headers,
//! 429s with `Retry-After` in each dialect's shape; and `rpm = 5` across two
//! replicas sharing Redis admits exactly 5.

mod common;

use std::time::Duration;

use common::{chat_body, Backends, Env, Resp};
use recache_stub_provider::StubConfig;
use serde_json::json;

const EXTRA: &str = r#"
[[tenants]]
name = "rpm"
keys = ["sk-rpm"]
rpm = 5
[[tenants]]
name = "spend"
keys = ["sk-spend"]
budget_usd_day = 0.00001
[[tenants]]
name = "tokens"
keys = ["sk-tokens"]
tpm = 10
[[tenants]]
name = "conc"
keys = ["sk-conc"]
max_concurrent = 1
[[tenants]]
name = "share"
keys = ["sk-share"]
rpm = 20
[[tenants]]
name = "allow"
keys = ["sk-allow"]
models = ["gpt-4o-mini", "gemini-*"]
upstreams = ["stub"]
"#;

on_both_backends!(limits_hold_and_hits_are_free);

/// Waits out the end of a minute, so a test's requests fall in one window.
async fn not_near_a_minute_boundary() {
    let s = (recache::roles::now_ms() / 1000) % 60;
    if s >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - s as u64)).await;
    }
}

async fn chat(env: &Env, key: &str, q: &str) -> Resp {
    env.post("/v1/chat/completions", Some(key), &chat_body(q, false), &[])
        .await
}

fn code(r: &Resp) -> String {
    r.json()["error"]["code"].as_str().unwrap_or_default().to_string()
}

async fn limits_hold_and_hits_are_free(b: Backends) {
    let env = Env::on(b, StubConfig::default(), EXTRA).await;
    not_near_a_minute_boundary().await;

    // rpm = 5: one miss and four hits are admitted, then 429s with Retry-After.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = chat(&env, "sk-rpm", "same question").await;
        if i == 0 {
            assert_eq!(r.header("x-ratelimit-limit-requests"), "5");
            assert_eq!(r.header("x-ratelimit-remaining-requests"), "4");
            assert!(r.header("x-ratelimit-reset-requests").ends_with('s'));
        }
        if r.status == 429 {
            assert_eq!(code(&r), "rate_limit_requests", "{}", r.text);
            assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // The same limit in Anthropic's shape.
    let r = env
        .post_raw(
            "/v1/messages",
            None,
            json!({"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]})
                .to_string(),
            &[("x-api-key", "sk-rpm"), ("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(
        (r.json()["type"].as_str(), r.json()["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error"))
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("rate_limit_requests"));

    // A day's budget spent: no more provider calls, but the cached answer is still served.
    assert_eq!(chat(&env, "sk-spend", "first").await.cache(), "MISS");
    let mut refused = None;
    for _ in 0..40 {
        let r = chat(&env, "sk-spend", "second").await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = refused.expect("the spend of the first call is settled and stops the second");
    assert_eq!(code(&r), "budget_day_exceeded", "{}", r.text);
    let hit = chat(&env, "sk-spend", "first").await;
    assert_eq!((hit.status, hit.cache()), (200, "HIT"), "hits are free over the budget");

    // Tokens per minute: the same, counted from the provider's usage.
    assert_eq!(chat(&env, "sk-tokens", "one").await.status, 200);
    let mut over = false;
    for _ in 0..40 {
        let r = chat(&env, "sk-tokens", "two").await;
        if r.status == 429 {
            assert_eq!(code(&r), "rate_limit_tokens");
            assert_eq!(r.header("x-ratelimit-limit-tokens"), "10");
            over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(over, "tpm = 10 stops the next call");
    assert_eq!(chat(&env, "sk-tokens", "one").await.cache(), "HIT");

    // Allow-lists: in the dialect's own shape.
    let claude = env
        .post_raw(
            "/v1/messages",
            None,
            json!({"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]})
                .to_string(),
            &[("x-api-key", "sk-allow"), ("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(
        (claude.status, claude.json()["error"]["type"].as_str()),
        (403, Some("permission_error"))
    );
    let gemini = env
        .post_raw(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            None,
            json!({"contents": [{"parts": [{"text": "x"}]}]}).to_string(),
            &[("x-goog-api-key", "sk-allow")],
        )
        .await;
    assert_eq!(
        gemini.status, 403,
        "gemini-* is allowed, but not its upstream: {}",
        gemini.text
    );
    assert_eq!(gemini.json()["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(chat(&env, "sk-allow", "allowed").await.status, 200);

    let m = env.metrics_text().await;
    assert!(
        m.contains("recache_limit_refusals_total{limit=\"rate_limit_requests\"} 4"),
        "{m}"
    );
}

/// One request at a time: a second while the first waits on the provider is
/// a 429; once the first is answered, the slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_frees_its_slot() {
    let stub = StubConfig {
        latency_ms: 400,
        ..Default::default()
    };
    let env = Env::on(Backends::Embedded, stub, EXTRA).await;
    let (a, b) = tokio::join!(chat(&env, "sk-conc", "slow one"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        chat(&env, "sk-conc", "slow two").await
    });
    assert_eq!(a.status, 200);
    assert_eq!(
        (b.status, code(&b)),
        (429, "concurrency_limit".to_string()),
        "{}",
        b.text
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        chat(&env, "sk-conc", "slow three").await.status,
        200,
        "the slot came back"
    );
}

/// A key stricter than its tenant wins; its refusal names the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stricter_than_its_tenant_wins() {
    let env = Env::on(Backends::Embedded, StubConfig::default(), EXTRA).await;
    not_near_a_minute_boundary().await;
    let (code_, made) = env.cli_json(&["keys", "create", "--tenant", "rpm", "--rpm", "2"]);
    assert_eq!(code_, 0, "{made}");
    let key = made["key"].as_str().unwrap().to_string();
    let id = made["record"]["id"].as_str().unwrap().to_string();
    let first = chat(&env, &key, "k").await;
    assert_eq!(first.header("x-ratelimit-limit-requests"), "2", "the stricter limit");
    assert_eq!(chat(&env, &key, "k").await.status, 200);
    let third = chat(&env, &key, "k").await;
    assert_eq!(third.status, 429);
    assert!(
        third.json()["error"]["message"].as_str().unwrap().contains(&id),
        "{}",
        third.text
    );
    // The tenant's own key still has its share: 2 of the tenant's 5 were spent.
    assert_eq!(chat(&env, "sk-rpm", "k").await.status, 200);
}

/// Two replicas over one Redis: `rpm = 5` admits exactly 5 between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_holds_across_two_replicas() {
    let Some(b) = Backends::real().await else { return };
    let env = Env::on(b, StubConfig::default(), EXTRA).await;
    let vars = [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
    let second = recache::server::Gateway::start(env.config(), &vars).await.unwrap();
    let other = format!("http://{}", second.addr);
    not_near_a_minute_boundary().await;
    let mut admitted = 0;
    for i in 0..10 {
        let base = if i % 2 == 0 { env.base.clone() } else { other.clone() };
        let r = env
            .http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("sk-rpm")
            .json(&chat_body(&format!("q{i}"), false))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "rpm = 5 across both replicas");
    second.shutdown().await;
}

/// `FLUSHALL` empties the spend counters: they are re-seeded from metadata's
/// `usage_hourly` before they are used, so the flush hands out no budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_gives_no_budget_windfall() {
    let Some(redis) = common::servers::Server::redis() else {
        return;
    };
    let Some(b) = Backends::real_with_redis(redis.url()).await else {
        return;
    };
    let env = Env::on(b, StubConfig::default(), EXTRA).await;
    assert_eq!(chat(&env, "sk-spend", "before the flush").await.cache(), "MISS");
    let mut spent = false;
    for _ in 0..40 {
        if chat(&env, "sk-spend", "over budget?").await.status == 429 {
            spent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(spent, "the budget is spent");
    // The spend reaches usage_hourly with the hit flush (50 ms in tests).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let after = chat(&env, "sk-spend", "after the flush").await;
    assert_eq!(
        (after.status, code(&after)),
        (429, "budget_day_exceeded".to_string()),
        "{}",
        after.text
    );
}

/// A gateway's live replicas, as its `/metrics` says.
async fn replicas_seen(http: &reqwest::Client, base: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("recache_limit_replicas "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `sk-share` requests to `bases` in turn, `every` apart, for `secs`;
/// answers how many were admitted (200), and how many got another answer.
async fn paced(http: reqwest::Client, bases: Vec<String>, every: Duration, n: usize) -> (u32, Vec<u16>) {
    let mut tick = tokio::time::interval(every);
    let (mut ok, mut other) = (0, Vec::new());
    for i in 0..n {
        tick.tick().await;
        let base = &bases[i % bases.len()];
        // A bound on every request: a fault must never make one hang.
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("sk-share")
            .timeout(Duration::from_secs(10))
            .json(&chat_body(&format!("paced {i}"), false))
            .send()
            .await
            .expect("an answer within 10 s");
        match r.status().as_u16() {
            200 => ok += 1,
            s => other.push(s),
        }
    }
    (ok, other)
}

/// Redis killed under load, `local-share` (the default): two replicas, each
/// then counting its half of `rpm = 20` from its share of what Redis last
/// said, admit within 10 % of 20 in the minute; every other answer is a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_local_share_holds() {
    let Some(mut redis) = common::servers::Server::redis() else {
        return;
    };
    let Some(b) = Backends::real_with_redis(redis.url()).await else {
        return;
    };
    let env = Env::on(b, StubConfig::default(), EXTRA).await;
    let vars = [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
    let second = recache::server::Gateway::start(env.config(), &vars).await.unwrap();
    let other = format!("http://{}", second.addr);
    // Each replica learns of the other from its heartbeat row (every 10 s).
    common::until(Duration::from_secs(25), "both replicas see two", async || {
        replicas_seen(&env.http, &env.base).await == 2 && replicas_seen(&env.http, &other).await == 2
    })
    .await;
    not_near_a_minute_boundary().await;
    // 40 requests over 4 s, both replicas in turn; Redis dies after the first 8.
    let load = tokio::spawn(paced(
        env.http.clone(),
        vec![env.base.clone(), other.clone()],
        Duration::from_millis(100),
        40,
    ));
    tokio::time::sleep(Duration::from_millis(850)).await;
    redis.kill9();
    let (admitted, other_answers) = load.await.unwrap();
    assert!(
        (18..=22).contains(&admitted),
        "admitted {admitted} of rpm = 20 across two replicas with Redis killed (within 10 %); others: {other_answers:?}"
    );
    assert!(other_answers.iter().all(|s| *s == 429), "{other_answers:?}");
    let text = env.metrics_text().await;
    let fallbacks: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("recache_limit_fallback_admissions_total{mode=\"local-share\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fallback admissions metric:\n{text}"));
    assert!(fallbacks > 0.0, "admissions without Redis are counted");
    second.shutdown().await;
}

/// Redis killed with `fail-closed`: a limited tenant gets a 503 in its
/// dialect at once, never a hang; a tenant without limits is still served;
/// when Redis is back, the limited tenant is admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_at_once_without_redis() {
    let Some(mut redis) = common::servers::Server::redis() else {
        return;
    };
    let Some(b) = Backends::real_with_redis(redis.url()).await else {
        return;
    };
    let extra = format!("{EXTRA}\n[limits]\non_counter_loss = \"fail-closed\"\n");
    let env = Env::on(b, StubConfig::default(), &extra).await;
    assert_eq!(chat(&env, "sk-share", "before").await.status, 200);
    redis.kill9();
    for i in 0..5 {
        let r = env
            .http
            .post(format!("{}/v1/messages", env.base))
            .header("x-api-key", "sk-share")
            .header("anthropic-version", "2023-06-01")
            .timeout(Duration::from_secs(10))
            .json(&json!({"model": "claude-3-5-haiku-latest", "max_tokens": 16,
                "messages": [{"role": "user", "content": format!("closed {i}")}]}))
            .send()
            .await
            .expect("an answer within 10 s, never a hang");
        assert_eq!(r.status(), 503);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "Anthropic's error shape: {v}");
    }
    let free = chat(&env, common::KEY_A, "a tenant without limits").await;
    assert_eq!(free.status, 200, "{}", free.text);
    redis.start();
    common::until(
        Duration::from_secs(30),
        "admitted again once Redis is back",
        async || chat(&env, "sk-share", "after").await.status == 200,
    )
    .await;
}
