//! The degradation matrix in every dialect: with the index's breaker open,
//! requests of each dialect go to the provider and are answered (never an
//! error); once it closes, they are hits again. With the provider down, an
//! expired entry is served under `stale-if-error` in each dialect's shape.

mod common;

use common::{Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

on_both_backends!(every_dialect_survives_a_cache_outage_and_a_provider_outage);

/// (path, headers, body) of the same question in each dialect.
/// One request: its path, its headers, its body.
type Request = (&'static str, Vec<(&'static str, String)>, Value);

fn requests(q: &str) -> Vec<Request> {
    let bearer = format!("Bearer {KEY_A}");
    vec![
        (
            "/v1/chat/completions",
            vec![("authorization", bearer.clone())],
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}]}),
        ),
        (
            "/v1/responses",
            vec![("authorization", bearer.clone())],
            json!({"model": "gpt-4o-mini", "input": q}),
        ),
        (
            "/v1/messages",
            vec![
                ("x-api-key", KEY_A.to_string()),
                ("anthropic-version", "2023-06-01".to_string()),
            ],
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": q}]}),
        ),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            vec![("x-goog-api-key", KEY_A.to_string())],
            json!({"contents": [{"role": "user", "parts": [{"text": q}]}]}),
        ),
    ]
}

async fn every_dialect_survives_a_cache_outage_and_a_provider_outage(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let send = |path: &'static str,
                headers: Vec<(&'static str, String)>,
                body: &Value,
                extra: &'static [(&'static str, &'static str)]| {
        let mut h = headers;
        h.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let body = body.to_string();
        let env = &env;
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            env.post_raw(path, None, body, &h).await
        }
    };
    for (path, h, body) in requests("Outage?") {
        assert_eq!(send(path, h.clone(), &body, &[]).await.cache(), "MISS", "{path}");
        assert_eq!(send(path, h.clone(), &body, &[]).await.cache(), "HIT", "{path}");
    }
    // The index is unreachable (its breaker held open): every dialect is answered by the provider.
    let (status, _) = env
        .admin_post("/admin/breakers/index/open?seconds=30", &json!({}))
        .await;
    assert_eq!(status, 200);
    let calls = env.stub.calls();
    for (path, h, body) in requests("Outage?") {
        let r = send(path, h, &body, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_ne!(r.cache(), "HIT", "{path}: no lookup while the index is out");
    }
    assert_eq!(env.stub.calls(), calls + 4, "each one was bought from the provider");
    let (status, _) = env.admin_post("/admin/breakers/index/reset", &json!({})).await;
    assert_eq!(status, 200);
    for (path, h, body) in requests("Outage?") {
        assert_eq!(
            send(path, h, &body, &[]).await.cache(),
            "HIT",
            "{path}: hits again after the repair"
        );
    }
    // Entries kept one second, then the provider down: stale-if-error serves them, in each shape.
    for (path, h, body) in requests("Stale?") {
        assert_eq!(
            send(path, h, &body, &[("x-recache-ttl", "1")]).await.cache(),
            "MISS",
            "{path}"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    env.stub.update(|c| c.fail_status = Some(503));
    for (path, h, body) in requests("Stale?") {
        let r = send(path, h, &body, &[("cache-control", "stale-if-error=60")]).await;
        assert_eq!((r.status, r.cache()), (200, "STALE"), "{path}: {}", r.text);
    }
}
