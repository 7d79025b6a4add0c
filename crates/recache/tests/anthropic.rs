//! Anthropic's Messages API through the gateway, end to end on loopback
//! against the stub provider (which speaks it): misses and hits, streams
//! stored only when complete and replayed both ways, what counts in the key,
//! errors in Anthropic's shape, tenants kept apart. The official SDK's own
//! view of the same is in `sdk.rs`.

mod common;

use common::{sse_events, Backends, Env, KEY_A, KEY_B};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

on_both_backends!(
    json_miss_then_hit_and_the_client_key_stays_here,
    streams_are_stored_complete_and_replayed_both_ways,
    cache_control_is_forwarded_but_not_keyed,
    every_answer_changing_field_changes_the_key,
    errors_come_in_anthropics_shape,
    an_incomplete_stream_is_never_stored,
);

const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

fn message(text: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 256,
           "messages": [{"role": "user", "content": text}]})
}

/// POST /v1/messages with the key as `x-api-key`, as Anthropic's SDKs send it.
async fn send(env: &Env, key: &str, body: &Value, headers: &[(&str, &str)]) -> common::Resp {
    let mut h = vec![("x-api-key", key), VERSION];
    h.extend_from_slice(headers);
    env.post_raw("/v1/messages", None, body.to_string(), &h).await
}

async fn json_miss_then_hit_and_the_client_key_stays_here(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let first = send(&env, KEY_A, &message("What is a cache?"), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.cache(), "MISS");
    let m = first.json();
    assert_eq!(m["type"], "message");
    assert_eq!(m["content"][0]["type"], "text");
    let second = send(&env, KEY_A, &message("What is a cache?"), &[]).await;
    assert_eq!(second.cache(), "HIT");
    assert_eq!(second.text, first.text, "the provider's bytes, exactly");
    assert_eq!(env.stub.calls(), 1);
    // What the hit saved, priced from [prices."claude-"] (12 input and 24 output tokens).
    assert_eq!(second.header("x-recache-saved-tokens"), "36");
    assert_eq!(second.header("x-recache-saved-usd"), "0.000396");
    // The Bearer form is accepted too, and reaches the same entry.
    let bearer = env
        .post_raw(
            "/v1/messages",
            Some(KEY_A),
            message("What is a cache?").to_string(),
            &[VERSION],
        )
        .await;
    assert_eq!(bearer.cache(), "HIT");
    // The provider got the client's anthropic-version, never the client's key.
    let last = env.stub.last().unwrap();
    assert_eq!(last.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(last.x_api_key, None, "the tenant key is recache's, not the provider's");
    // Another tenant never sees it.
    let other = send(&env, KEY_B, &message("What is a cache?"), &[]).await;
    assert_eq!(other.cache(), "MISS");
    // count_tokens is deterministic: cached as well.
    let c1 = count_tokens(&env).await;
    assert_eq!((c1.status, c1.cache()), (200, "MISS"), "{}", c1.text);
    assert_eq!(c1.json()["input_tokens"], 12);
    assert_eq!(count_tokens(&env).await.cache(), "HIT");
    // Requests are counted by dialect.
    let text = env.metrics_text().await;
    assert!(
        text.contains("recache_request_duration_seconds_count{status=\"200\",cache=\"HIT\",dialect=\"anthropic\"}"),
        "{text}"
    );
}

async fn count_tokens(env: &Env) -> common::Resp {
    let body = message("Count me").to_string();
    env.post_raw(
        "/v1/messages/count_tokens",
        None,
        body,
        &[("x-api-key", KEY_A), VERSION],
    )
    .await
}

/// A thinking block with its signature, text, and a tool call: the richest answer.
fn rich() -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 512,
           "thinking": {"type": "enabled", "budget_tokens": 1024},
           "tools": [{"name": "get_weather", "description": "Weather by city",
                      "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
}

fn events(text: &str) -> Vec<(String, Value)> {
    sse_events(text)
}

async fn streams_are_stored_complete_and_replayed_both_ways(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    // Streamed first: the stream is assembled and stored.
    let mut streamed = rich();
    streamed["stream"] = json!(true);
    let live = send(&env, KEY_A, &streamed, &[]).await;
    assert_eq!(live.cache(), "MISS");
    assert!(live.header("content-type").starts_with("text/event-stream"));
    let live_events = events(&live.text);
    assert_eq!(live_events.last().unwrap().0, "message_stop");
    // The JSON request is answered from the stored stream.
    let json_hit = send(&env, KEY_A, &rich(), &[]).await;
    assert_eq!(json_hit.cache(), "HIT", "stream and JSON share an entry");
    let m = json_hit.json();
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(m["content"][0]["type"], "thinking");
    assert!(m["content"][0]["signature"]
        .as_str()
        .unwrap()
        .starts_with("stub-signature-1-"));
    assert_eq!(m["content"][2]["type"], "tool_use");
    assert_eq!(m["content"][2]["id"], "toolu_stub_1");
    assert_eq!(m["content"][2]["input"], json!({"city": "Paris", "unit": "celsius"}));
    assert_eq!(m["usage"]["output_tokens"], 24);
    // And streamed again from the cache: the same message, event by event.
    let replay = send(&env, KEY_A, &streamed, &[]).await;
    assert_eq!(replay.cache(), "HIT");
    let kinds: Vec<String> = events(&replay.text).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds.first().map(String::as_str), Some("message_start"));
    assert_eq!(kinds.last().map(String::as_str), Some("message_stop"));
    for k in [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    assert_eq!(assemble(&replay.text), m, "the replayed stream is the stored message");
    assert_eq!(env.stub.calls(), 1);

    // JSON first this time: a streaming client gets it as events.
    let plain = message("Tell me about SSE");
    let first = send(&env, KEY_A, &plain, &[]).await;
    assert_eq!(first.cache(), "MISS");
    let mut as_stream = plain.clone();
    as_stream["stream"] = json!(true);
    let replay = send(&env, KEY_A, &as_stream, &[]).await;
    assert_eq!(replay.cache(), "HIT");
    assert_eq!(assemble(&replay.text), first.json());
}

/// The message a client rebuilds from a Messages stream (the SDK's accumulation).
fn assemble(text: &str) -> Value {
    let mut msg = Value::Null;
    for (_, ev) in events(text) {
        match ev["type"].as_str().unwrap() {
            "message_start" => msg = ev["message"].clone(),
            "content_block_start" => {
                let i = ev["index"].as_u64().unwrap() as usize;
                let blocks = msg["content"].as_array_mut().unwrap();
                blocks.resize(i + 1, Value::Null);
                blocks[i] = ev["content_block"].clone();
            }
            "content_block_delta" => {
                let i = ev["index"].as_u64().unwrap() as usize;
                let block = &mut msg["content"][i];
                let d = &ev["delta"];
                let (field, add) = match d["type"].as_str().unwrap() {
                    "text_delta" => ("text", &d["text"]),
                    "thinking_delta" => ("thinking", &d["thinking"]),
                    "signature_delta" => ("signature", &d["signature"]),
                    "input_json_delta" => ("partial_json", &d["partial_json"]),
                    other => panic!("delta {other}"),
                };
                let cur = block[field].as_str().unwrap_or("").to_string();
                block[field] = json!(cur + add.as_str().unwrap());
            }
            "content_block_stop" => {
                let i = ev["index"].as_u64().unwrap() as usize;
                let block = msg["content"][i].as_object_mut().unwrap();
                if let Some(Value::String(p)) = block.remove("partial_json") {
                    block.insert("input".into(), serde_json::from_str(&p).unwrap());
                }
            }
            "message_delta" => {
                for (k, v) in ev["delta"].as_object().unwrap() {
                    msg[k] = v.clone();
                }
                for (k, v) in ev["usage"].as_object().unwrap() {
                    msg["usage"][k] = v.clone();
                }
            }
            _ => {}
        }
    }
    msg
}

async fn cache_control_is_forwarded_but_not_keyed(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    // Odd spacing and key order on purpose: the provider must get these bytes.
    let marked = r#"{"model":"claude-sonnet-4-5","max_tokens":64,
        "system":[{"type":"text","text":"You are terse.","cache_control":{"type":"ephemeral","ttl":"1h"}}],
        "messages":[{"role":"user","content":[{"type":"text","text":"Define TTL.","cache_control":{"type":"ephemeral"}}]}]}"#;
    let first = env
        .post_raw(
            "/v1/messages",
            None,
            marked.to_string(),
            &[("x-api-key", KEY_A), VERSION],
        )
        .await;
    assert_eq!(first.cache(), "MISS", "{}", first.text);
    assert_eq!(env.stub.last().unwrap().body, marked, "forwarded byte for byte");
    assert_eq!(first.json()["usage"]["cache_read_input_tokens"], 40);
    // Cache reads are priced at 0.1 x input: (12 x 3 + 40 x 0.3 + 24 x 15) / 1e6 USD.
    let second_price = |r: &common::Resp| r.header("x-recache-saved-usd").to_string();
    let unmarked = json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Define TTL."}]}]});
    let second = send(&env, KEY_A, &unmarked, &[]).await;
    assert_eq!(second.cache(), "HIT", "cache_control does not change the answer");
    assert_eq!(second_price(&second), "0.000408");
    assert_eq!(second.header("x-recache-saved-tokens"), "76");
    assert_eq!(env.stub.calls(), 1);
}

async fn every_answer_changing_field_changes_the_key(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let base = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "temperature": 0.2,
        "system": "Be brief.", "messages": [{"role": "user", "content": "Hello"}]});
    assert_eq!(send(&env, KEY_A, &base, &[]).await.cache(), "MISS");
    assert_eq!(send(&env, KEY_A, &base, &[]).await.cache(), "HIT");
    let changes: Vec<(&str, Value)> = vec![
        ("max_tokens", json!(65)),
        ("temperature", json!(0.3)),
        ("system", json!("Be long.")),
        ("top_k", json!(5)),
        ("stop_sequences", json!(["END"])),
        ("thinking", json!({"type": "enabled", "budget_tokens": 2048})),
        ("tools", json!([{"name": "t", "input_schema": {"type": "object"}}])),
        ("tool_choice", json!({"type": "any"})),
        ("metadata", json!({"user_id": "u-1"})),
    ];
    for (field, v) in changes {
        let mut b = base.clone();
        b[field] = v;
        assert_eq!(
            send(&env, KEY_A, &b, &[]).await.cache(),
            "MISS",
            "{field} changes the key"
        );
    }
    let beta = send(&env, KEY_A, &base, &[("anthropic-beta", "some-feature-2025-01-01")]).await;
    assert_eq!(beta.cache(), "MISS", "anthropic-beta changes the key");
    assert_eq!(
        env.stub.last().unwrap().anthropic_beta.as_deref(),
        Some("some-feature-2025-01-01"),
        "and is forwarded"
    );
    let mut streamed = base.clone();
    streamed["stream"] = json!(true);
    assert_eq!(
        send(&env, KEY_A, &streamed, &[]).await.cache(),
        "HIT",
        "stream does not"
    );
}

async fn errors_come_in_anthropics_shape(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let shape = |r: &common::Resp, status: u16, kind: &str| {
        assert_eq!(r.status, status, "{}", r.text);
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    let no_key = env
        .post_raw("/v1/messages", None, message("x").to_string(), &[VERSION])
        .await;
    shape(&no_key, 401, "authentication_error");
    let bad_key = send(&env, "sk-nobody", &message("x"), &[]).await;
    shape(&bad_key, 401, "authentication_error");
    let not_json = env
        .post_raw("/v1/messages", None, "{".into(), &[("x-api-key", KEY_A), VERSION])
        .await;
    shape(&not_json, 400, "invalid_request_error");
    let mut no_max = message("x");
    no_max.as_object_mut().unwrap().remove("max_tokens");
    shape(&send(&env, KEY_A, &no_max, &[]).await, 400, "invalid_request_error");
    // A model only an OpenAI upstream serves: a 400 that names both sides.
    let mut gpt = message("x");
    gpt["model"] = json!("gpt-4o-mini");
    let wrong = send(&env, KEY_A, &gpt, &[]).await;
    shape(&wrong, 400, "invalid_request_error");
    let text = wrong.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        text.contains("stub") && text.contains("openai") && text.contains("anthropic"),
        "{text}"
    );
    // The provider's own error is passed through in its shape, never cached.
    env.stub.update(|c| c.fail_status = Some(529));
    let overloaded = send(&env, KEY_A, &message("y"), &[]).await;
    shape(&overloaded, 529, "overloaded_error");
    env.stub.update(|c| c.fail_status = None);
    assert_eq!(send(&env, KEY_A, &message("y"), &[]).await.cache(), "MISS");
    // OpenAI's endpoints keep OpenAI's shape.
    let openai = env.post_raw("/v1/chat/completions", None, "{}".into(), &[]).await;
    assert_eq!(openai.status, 401);
    assert!(openai.json()["error"]["code"].is_string());
}

async fn an_incomplete_stream_is_never_stored(b: Backends) {
    let env = Env::on(
        b,
        StubConfig {
            truncate_stream_after: Some(2),
            ..Default::default()
        },
        "",
    )
    .await;
    let mut body = message("Cut me short, please, after two words");
    body["stream"] = json!(true);
    let cut = send(&env, KEY_A, &body, &[]).await;
    assert!(!cut.text.contains("message_stop"));
    env.stub.update(|c| c.truncate_stream_after = None);
    let again = send(&env, KEY_A, &body, &[]).await;
    assert_eq!(again.cache(), "MISS", "the cut stream was not stored");
    assert!(again.text.contains("message_stop"));
    assert_eq!(send(&env, KEY_A, &body, &[]).await.cache(), "HIT");
}

/// `[cache] tool_call_answers = "skip"`: an answer that calls a tool is
/// served but never stored; other answers are cached as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_answers_can_be_left_unstored() {
    let env = Env::on_with(
        Backends::Embedded,
        StubConfig::default(),
        "",
        &[("RECACHE_CACHE__TOOL_CALL_ANSWERS", "skip")],
    )
    .await;
    let first = send(&env, KEY_A, &rich(), &[]).await;
    assert_eq!(
        (first.cache(), first.json()["stop_reason"].as_str()),
        ("MISS", Some("tool_use"))
    );
    assert_eq!(send(&env, KEY_A, &rich(), &[]).await.cache(), "MISS", "not stored");
    assert_eq!(
        send(&env, KEY_A, &message("Plain text, please"), &[]).await.cache(),
        "MISS"
    );
    assert_eq!(
        send(&env, KEY_A, &message("Plain text, please"), &[]).await.cache(),
        "HIT"
    );
    assert_eq!(env.stub.calls(), 3);
}
