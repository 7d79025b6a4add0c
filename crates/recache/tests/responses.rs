//! OpenAI's Responses API through the gateway against the stub provider:
//! what counts in the key, provider-side state that is never cached, streams
//! stored only when `response.completed` arrived and replayed with numbered
//! events. The official SDK's view of the same is in `sdk.rs`.

mod common;

use common::{sse_events, Backends, Env, KEY_A, KEY_B};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

on_both_backends!(
    the_key_follows_the_chain_and_the_store_flag,
    provider_state_is_never_cached,
    only_a_completed_stream_is_stored_and_replayed_in_order,
);

fn ask(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "input": text})
}

async fn send(env: &Env, key: &str, body: &Value) -> common::Resp {
    env.post_raw("/v1/responses", Some(key), body.to_string(), &[]).await
}

async fn the_key_follows_the_chain_and_the_store_flag(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let first = send(&env, KEY_A, &ask("Hello")).await;
    assert_eq!((first.status, first.cache()), (200, "MISS"), "{}", first.text);
    assert_eq!(first.json()["object"], "response");
    let hit = send(&env, KEY_A, &ask("Hello")).await;
    assert_eq!(hit.cache(), "HIT");
    assert_eq!(hit.text, first.text);
    // gpt-4o-mini is priced at 0.15 / 0.60 per million: 12 and 24 tokens.
    assert_eq!(hit.header("x-recache-saved-usd"), "0.000016");
    assert_eq!(send(&env, KEY_B, &ask("Hello")).await.cache(), "MISS", "tenants apart");
    for (field, v) in [
        ("previous_response_id", json!("resp_a")),
        ("store", json!(false)),
        ("instructions", json!("Be brief.")),
        ("reasoning", json!({"effort": "high"})),
        ("text", json!({"format": {"type": "json_object"}})),
    ] {
        let mut b = ask("Hello");
        b[field] = v;
        assert_eq!(send(&env, KEY_A, &b).await.cache(), "MISS", "{field} changes the key");
    }
    let mut chained = ask("Hello");
    chained["previous_response_id"] = json!("resp_b");
    assert_eq!(send(&env, KEY_A, &chained).await.cache(), "MISS", "another chain");
    assert_eq!(send(&env, KEY_A, &chained).await.cache(), "HIT", "the same chain");
    let mut streamed = ask("Hello");
    streamed["stream"] = json!(true);
    assert_eq!(
        send(&env, KEY_A, &streamed).await.cache(),
        "HIT",
        "stream does not count"
    );
}

async fn provider_state_is_never_cached(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    for (field, v, reason) in [
        ("background", json!(true), "background"),
        ("conversation", json!("conv_1"), "conversation"),
    ] {
        let mut body = ask("Keep this state");
        body[field] = v;
        for _ in 0..2 {
            let r = send(&env, KEY_A, &body).await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.cache(), "BYPASS");
            assert_eq!(r.header("x-recache-bypass"), reason);
        }
    }
    assert_eq!(env.stub.calls(), 4, "every one went to the provider");
}

async fn only_a_completed_stream_is_stored_and_replayed_in_order(b: Backends) {
    let env = Env::on(
        b,
        StubConfig {
            truncate_stream_after: Some(2),
            ..Default::default()
        },
        "",
    )
    .await;
    let mut body = ask("Stream a few words to me please");
    body["stream"] = json!(true);
    let cut = send(&env, KEY_A, &body).await;
    assert!(!cut.text.contains("response.completed"));
    env.stub.update(|c| c.truncate_stream_after = None);
    let live = send(&env, KEY_A, &body).await;
    assert_eq!(live.cache(), "MISS", "the cut stream was not stored");
    let replay = send(&env, KEY_A, &body).await;
    assert_eq!(replay.cache(), "HIT");
    let events = sse_events(&replay.text);
    let seq: Vec<u64> = events
        .iter()
        .map(|(_, e)| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>(), "numbered from 0");
    assert_eq!(events.first().unwrap().0, "response.created");
    let (last, completed) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    let text: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap().to_string())
        .collect();
    let json_hit = send(&env, KEY_A, &ask("Stream a few words to me please")).await;
    assert_eq!(json_hit.cache(), "HIT", "a JSON request shares the stream's entry");
    let stored = json_hit.json();
    assert_eq!(completed["response"], stored);
    assert_eq!(text, stored["output"][0]["content"][0]["text"].as_str().unwrap());
}
