//! Google's Gemini API through the gateway against the stub provider: the
//! model in the path, keys from `x-goog-api-key` or `?key=`, chunks stored
//! only when finished and replayed, errors in Google's shape.

mod common;

use common::{Backends, Env, KEY_A, KEY_B};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

on_both_backends!(
    generate_content_misses_then_hits_per_model_and_tenant,
    streams_are_stored_when_finished_and_replayed,
    errors_come_in_googles_shape,
);

fn ask(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

async fn send(env: &Env, model: &str, method: &str, key: &str, body: &Value) -> common::Resp {
    env.post_raw(
        &format!("/v1beta/models/{model}:{method}"),
        None,
        body.to_string(),
        &[("x-goog-api-key", key)],
    )
    .await
}

async fn generate_content_misses_then_hits_per_model_and_tenant(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let first = send(&env, "gemini-2.5-flash", "generateContent", KEY_A, &ask("Hello")).await;
    assert_eq!((first.status, first.cache()), (200, "MISS"), "{}", first.text);
    assert_eq!(first.json()["candidates"][0]["finishReason"], "STOP");
    let hit = send(&env, "gemini-2.5-flash", "generateContent", KEY_A, &ask("Hello")).await;
    assert_eq!(hit.cache(), "HIT");
    assert_eq!(hit.text, first.text);
    // 12 x 0.3 + 24 x 2.5 = 63.6 per million.
    assert_eq!(hit.header("x-recache-saved-usd"), "0.000064");
    // The key as a query parameter reaches the same tenant and entry.
    let by_query = env
        .post_raw(
            &format!("/v1beta/models/gemini-2.5-flash:generateContent?key={KEY_A}"),
            None,
            ask("Hello").to_string(),
            &[],
        )
        .await;
    assert_eq!(by_query.cache(), "HIT");
    assert_eq!(
        send(&env, "gemini-2.5-pro", "generateContent", KEY_A, &ask("Hello"))
            .await
            .cache(),
        "MISS",
        "the model in the path counts"
    );
    assert_eq!(
        send(&env, "gemini-2.5-flash", "generateContent", KEY_B, &ask("Hello"))
            .await
            .cache(),
        "MISS",
        "tenants apart"
    );
    let mut cached_ctx = ask("Hello");
    cached_ctx["cachedContent"] = json!("cachedContents/abc");
    let r = send(&env, "gemini-2.5-flash", "generateContent", KEY_A, &cached_ctx).await;
    assert_eq!(r.cache(), "MISS", "cached context is part of the prompt");
    assert!(
        env.stub.last().unwrap().body.contains("cachedContents/abc"),
        "and is forwarded"
    );
    let mut config = ask("Hello");
    config["generationConfig"] = json!({"temperature": 0.1});
    assert_eq!(
        send(&env, "gemini-2.5-flash", "generateContent", KEY_A, &config)
            .await
            .cache(),
        "MISS"
    );
    assert_eq!(
        env.stub.last().unwrap().path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
}

async fn streams_are_stored_when_finished_and_replayed(b: Backends) {
    let env = Env::on(
        b,
        StubConfig {
            truncate_stream_after: Some(2),
            ..Default::default()
        },
        "",
    )
    .await;
    let stream = "streamGenerateContent?alt=sse";
    let body = ask("Stream a few words to me please");
    let cut = send(&env, "gemini-2.5-flash", stream, KEY_A, &body).await;
    assert!(!cut.text.contains("finishReason"));
    env.stub.update(|c| c.truncate_stream_after = None);
    let live = send(&env, "gemini-2.5-flash", stream, KEY_A, &body).await;
    assert_eq!(live.cache(), "MISS", "the unfinished stream was not stored");
    let json_hit = send(&env, "gemini-2.5-flash", "generateContent", KEY_A, &body).await;
    assert_eq!(json_hit.cache(), "HIT", "stream and JSON share an entry");
    let stored = json_hit.json();
    let replay = send(&env, "gemini-2.5-flash", stream, KEY_A, &body).await;
    assert_eq!(replay.cache(), "HIT");
    assert!(replay.header("content-type").starts_with("text/event-stream"));
    let chunks: Vec<Value> = replay
        .text
        .split("\r\n\r\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .flat_map(|c| {
            c["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        text,
        stored["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"], stored["usageMetadata"]);
    assert_eq!(env.stub.calls(), 2);
}

async fn errors_come_in_googles_shape(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let shape = |r: &common::Resp, status: u16, name: &str| {
        assert_eq!(r.status, status, "{}", r.text);
        let v = r.json();
        assert_eq!(v["error"]["code"], status, "{v}");
        assert_eq!(v["error"]["status"], name, "{v}");
    };
    let no_key = env
        .post_raw(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            None,
            ask("x").to_string(),
            &[],
        )
        .await;
    shape(&no_key, 401, "UNAUTHENTICATED");
    shape(
        &send(
            &env,
            "gemini-2.5-flash",
            "generateContent",
            KEY_A,
            &json!({"contents": []}),
        )
        .await,
        400,
        "INVALID_ARGUMENT",
    );
    shape(
        &send(&env, "gemini-2.5-flash", "streamGenerateContent", KEY_A, &ask("x")).await,
        400,
        "INVALID_ARGUMENT",
    );
    shape(
        &send(&env, "gemini-2.5-flash", "embedContent", KEY_A, &ask("x")).await,
        404,
        "NOT_FOUND",
    );
    let wrong = send(&env, "gpt-4o-mini", "generateContent", KEY_A, &ask("x")).await;
    shape(&wrong, 400, "INVALID_ARGUMENT");
    env.stub.update(|c| c.fail_status = Some(503));
    shape(
        &send(&env, "gemini-2.5-flash", "generateContent", KEY_A, &ask("y")).await,
        503,
        "UNAVAILABLE",
    );
}
