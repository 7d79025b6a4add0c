//! Semantic matching in the Anthropic, Responses and Gemini dialects: a
//! paraphrase of the final user text is answered from the cache, what the key
//! counts outside the body (Gemini's model in the path, Anthropic's beta
//! header) keeps scopes apart, and an answer that calls a tool is never
//! served for a near-duplicate (guard `tool_answer`). Needs the local model
//! (`scripts/fetch-model.sh`).

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
    messages_with(env, text, tools, &[]).await
}

async fn messages_with(env: &Env, text: &str, tools: bool, extra: &[(&str, &str)]) -> common::Resp {
    let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 128,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": text}]});
    if tools {
        body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    }
    let mut headers = vec![("x-api-key", KEY_A), ("anthropic-version", "2023-06-01")];
    headers.extend_from_slice(extra);
    env.post_raw("/v1/messages", None, body.to_string(), &headers).await
}

async fn gemini(env: &Env, model: &str, text: &str, tools: bool) -> common::Resp {
    let mut body = json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": text}]}]});
    if tools {
        body["tools"] = json!([{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}]);
    }
    let path = format!("/v1beta/models/{model}:generateContent");
    env.post_raw(&path, None, body.to_string(), &[("x-goog-api-key", KEY_A)])
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

    // Another anthropic-beta is another scope, as it is another key.
    let beta = messages_with(
        &env,
        "How can I reset my password?",
        false,
        &[("anthropic-beta", "context-1m-2025-08-07")],
    )
    .await;
    assert_eq!(beta.cache(), "MISS", "{}", beta.text);

    // Gemini: the paraphrase hits for the same model, never for another one.
    assert_eq!(
        gemini(&env, "gemini-2.5-flash", "How do I rotate my API keys?", false)
            .await
            .cache(),
        "MISS"
    );
    let para = gemini(&env, "gemini-2.5-flash", "How can I rotate my API keys?", false).await;
    assert_eq!(para.cache(), "SEMANTIC_HIT", "{}", para.text);
    assert!(para.json()["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap()
        .contains("rotate my API keys"));
    let other = gemini(&env, "gemini-2.5-pro", "How can I rotate my API keys?", false).await;
    assert_eq!(other.cache(), "MISS", "the model in the path is in the scope");

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
    // The same for a Gemini function call.
    let first = gemini(&env, "gemini-2.5-flash", "How do I check the weather in Rome?", true).await;
    assert!(first.text.contains("functionCall"), "{}", first.text);
    let para = gemini(&env, "gemini-2.5-flash", "How can I check the weather in Rome?", true).await;
    assert_eq!(para.cache(), "MISS", "never a semantic hit for a function call");
    assert_eq!(
        env.metric("cache_semantic_guard_refusals_total{reason=\"tool_answer\"}")
            .await,
        2.0
    );
}

/// A rebuild of the vectors (here after an embedder change) re-embeds
/// Anthropic and Gemini entries from their stored requests, in the scopes the
/// gateway gives them; an Anthropic entry bought with an `anthropic-beta`
/// header (not stored) is skipped rather than re-embedded in a wrong scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_vectors_keep_each_dialects_scope() {
    let Some(model) = common::engines::model_dir() else {
        return;
    };
    let config = |active: &str| {
        format!(
            "[semantic]\nembed_timeout_ms = 10000\n[semantic.embedders.local]\nkind = \"local\"\npath = \"{m}\"\n\
             [semantic.embedders.short]\nkind = \"local\"\npath = \"{m}\"\nmax_tokens = 128\n\
             [[semantic.rules]]\ntenant = \"team-a\"\nenabled = true\nembedder = \"{active}\"\n[warmer]\npoll_ms = 50\n",
            m = model.display()
        )
    };
    let mut env = Env::on_with(
        Backends::Embedded,
        StubConfig::default(),
        &config("local"),
        &[("RECACHE_VECTORS__ENGINE", "embedded")],
    )
    .await;
    let beta = [("anthropic-beta", "context-1m-2025-08-07")];
    assert_eq!(messages(&env, "How do I rename a branch?", false).await.cache(), "MISS");
    assert_eq!(
        messages_with(&env, "How do I delete a tag?", false, &beta)
            .await
            .cache(),
        "MISS"
    );
    assert_eq!(
        gemini(&env, "gemini-2.5-flash", "How do I squash commits?", false)
            .await
            .cache(),
        "MISS"
    );
    env.set_extra(&config("short"));
    env.restart().await;
    let done = env
        .job_in_state("rebuild-vectors", "succeeded", std::time::Duration::from_secs(20))
        .await;
    assert_eq!(
        (done["result"]["embedded"].as_u64(), done["result"]["skipped"].as_u64()),
        (Some(2), Some(1)),
        "{done}"
    );
    let calls = env.stub.calls();
    let a = messages(&env, "How can I rename a branch?", false).await;
    assert_eq!(a.cache(), "SEMANTIC_HIT", "{}", a.text);
    let g = gemini(&env, "gemini-2.5-flash", "How can I squash commits?", false).await;
    assert_eq!(g.cache(), "SEMANTIC_HIT", "{}", g.text);
    assert_eq!(env.stub.calls(), calls);
    let b = messages_with(&env, "How can I delete a tag?", false, &beta).await;
    assert_eq!(b.cache(), "MISS", "the beta entry was not re-embedded");
}
