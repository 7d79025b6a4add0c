//! Semantic matching in the Anthropic and Responses dialects: a paraphrase of
//! the final user text is answered from the cache, and an answer that calls a
//! tool is never served for a near-duplicate (guard `tool_answer`). Needs the
//! local model (`scripts/fetch-model.sh`).

mod common;

use common::{Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

async fn env() -> Option<Env> {
    let model = common::engines::model_dir()?;
    let extra = format!(
        "[semantic]\nembed_timeout_ms = 10000\n[semantic.embedders.local]\nkind = \"local\"\npath = \"{}\"\n\
         [[semantic.rules]]\ntenant = \"team-a\"\nenabled = true\n",
        model.display()
    );
    Some(
        Env::on_with(
            Backends::Embedded,
            StubConfig::default(),
            &extra,
            &[("RECACHE_VECTORS__ENGINE", "embedded")],
        )
        .await,
    )
}

async fn messages(env: &Env, text: &str, tools: bool) -> common::Resp {
    let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 128,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": text}]});
    if tools {
        body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    }
    env.post_raw(
        "/v1/messages",
        None,
        body.to_string(),
        &[("x-api-key", KEY_A), ("anthropic-version", "2023-06-01")],
    )
    .await
}

async fn responses(env: &Env, input: Value) -> common::Resp {
    let body = json!({"model": "gpt-4o-mini", "instructions": "Be brief.", "input": input});
    env.post_raw("/v1/responses", Some(KEY_A), body.to_string(), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrases_hit_in_every_matched_dialect_but_tool_calls_never_do() {
    let Some(env) = env().await else { return };
    // Anthropic: the stored message answers the paraphrase.
    assert_eq!(
        messages(&env, "How do I reset my password?", false).await.cache(),
        "MISS"
    );
    let para = messages(&env, "How can I reset my password?", false).await;
    assert_eq!(para.cache(), "SEMANTIC_HIT", "{}", para.text);
    assert!(para.json()["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("reset my password"));

    // Responses, with the input as a string and as a user item of text.
    assert_eq!(
        responses(&env, json!("How do I export my invoices?")).await.cache(),
        "MISS"
    );
    let item = json!([{"role": "user", "content": [{"type": "input_text", "text": "How can I export my invoices?"}]}]);
    let para = responses(&env, item).await;
    assert_eq!(para.cache(), "SEMANTIC_HIT", "{}", para.text);
    assert_eq!(para.json()["object"], "response");

    // A tool call is its exact request's: the paraphrase goes to the provider.
    let first = messages(&env, "How do I check the weather in Paris?", true).await;
    assert_eq!(first.json()["stop_reason"], "tool_use");
    let calls = env.stub.calls();
    let para = messages(&env, "How can I check the weather in Paris?", true).await;
    assert_eq!(para.cache(), "MISS", "never a semantic hit for a tool call");
    assert_eq!(env.stub.calls(), calls + 1);
    assert_eq!(
        env.metric("cache_semantic_guard_refusals_total{reason=\"tool_answer\"}")
            .await,
        1.0
    );
}
