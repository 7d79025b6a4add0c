//! Semantic matching through the gateway: real HTTP, the local embedding model
//! (all-MiniLM-L6-v2, fetched by scripts/fetch-model.sh), the embedded vector
//! store, and the stub provider. Skipped (with a message) when the model
//! folder is absent; `bash scripts/test.sh` fetches it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Backends, Env, KEY_A, KEY_B};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

fn model_dir() -> Option<PathBuf> {
    common::engines::model_dir()
}

/// `[semantic]` with the local model and both test tenants on, plus `more`
/// (rule fields for team-a; lines after a `|` go to `[semantic]` itself).
fn semantic_toml(model: &std::path::Path, more: &str) -> String {
    let (more, global) = more.split_once('|').unwrap_or((more, ""));
    format!(
        r#"
[semantic]
embed_timeout_ms = 10000
{global}
[semantic.embedders.local]
kind = "local"
path = "{}"
[[semantic.rules]]
tenant = "team-a"
enabled = true
{more}
[[semantic.rules]]
tenant = "team-b"
enabled = true
"#,
        model.display()
    )
}

/// Where the vectors go: the embedded store, or a Qdrant server (gRPC URL).
#[derive(Clone, Debug)]
enum VectorStore {
    Embedded,
    Qdrant(String),
}

async fn env_with(b: Backends, stub: StubConfig, more: &str) -> Option<Env> {
    env_on(b, VectorStore::Embedded, stub, more).await
}

async fn env_on(b: Backends, v: VectorStore, stub: StubConfig, more: &str) -> Option<Env> {
    let model = model_dir()?;
    Some(env_raw(b, v, stub, &semantic_toml(&model, more)).await)
}

/// A gateway with the vectors on `v` and `extra` as its extra config.
async fn env_raw(b: Backends, v: VectorStore, stub: StubConfig, extra: &str) -> Env {
    let overrides: Vec<(&str, String)> = match v {
        VectorStore::Embedded => vec![("RECACHE_VECTORS__ENGINE", "embedded".into())],
        // Each test its own collections on the shared server.
        VectorStore::Qdrant(url) => vec![
            ("RECACHE_VECTORS__ENGINE", "qdrant".into()),
            ("RECACHE_VECTORS__URL", url),
            (
                "RECACHE_VECTORS__COLLECTION_PREFIX",
                format!("{}-", common::engines::unique("t").to_lowercase()),
            ),
        ],
    };
    let o: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Env::on_with(b, stub, extra, &o).await
}

fn body(system: Option<&str>, question: &str) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": question}));
    json!({"model": "gpt-4o-mini", "messages": messages})
}

async fn ask(env: &Env, key: &str, body: &Value, headers: &[(&str, &str)]) -> common::Resp {
    let r = env.post("/v1/chat/completions", Some(key), body, headers).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

async fn report(env: &Env) -> Value {
    env.admin_json("/admin/semantic").await
}

fn team_a(report: &Value) -> Value {
    report["report"]["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "team-a" && t["namespace"] == "default")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Runs each named test on the embedded stores (vectors embedded), on Redis +
/// S3 + PostgreSQL (vectors embedded), and on Redis + S3 + PostgreSQL with the
/// vectors on Qdrant (skipped, saying so, when no Qdrant server is at hand).
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            use super::VectorStore;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::Backends::Embedded, VectorStore::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real_engines() {
                if let Some(b) = super::Backends::real().await {
                    super::$name(b, VectorStore::Embedded).await
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn qdrant() {
                let Some(url) = super::common::engines::qdrant_url() else { return };
                if let Some(b) = super::Backends::real().await {
                    super::$name(b, VectorStore::Qdrant(url)).await
                }
            }
        }
    )* };
}

on_every_engine!(
    paraphrase_hits_and_context_changes_miss,
    vectors_breaker_open_keeps_exact_hits_flowing,
    shadow_mode_serves_the_provider_and_counts_agreement,
    error_budget_exceeded_raises_the_threshold,
    labelled_pairs_no_near_miss_is_ever_served,
    embedder_change_never_mixes_vectors_and_rebuilds_them,
);

async fn paraphrase_hits_and_context_changes_miss(b: Backends, v: VectorStore) {
    let Some(env) = env_on(b, v, StubConfig::default(), "").await else {
        return;
    };
    const SYSTEM: &str = "You are a support agent for Acme.";
    let sys = Some(SYSTEM);
    let first = ask(&env, KEY_A, &body(sys, "How do I reset my password?"), &[]).await;
    assert_eq!(first.cache(), "MISS");
    assert_eq!(env.stub.calls(), 1);

    // A paraphrase in the same context is answered from the cache.
    let para = ask(&env, KEY_A, &body(sys, "How can I reset my password?"), &[]).await;
    assert_eq!(para.cache(), "SEMANTIC_HIT", "{}", para.text);
    let sim: f32 = para.header("x-recache-similarity").parse().unwrap();
    assert!((0.9..=1.0).contains(&sim), "similarity {sim}");
    assert_eq!(para.content(), first.content());
    assert_eq!(para.header("x-recache-key"), first.header("x-recache-key"));
    assert_eq!(env.stub.calls(), 1);

    // ... and replayed as SSE for a streaming client.
    let mut sb = body(sys, "How can I reset my password, please?");
    sb["stream"] = json!(true);
    let streamed = ask(&env, KEY_A, &sb, &[]).await;
    assert_eq!(streamed.cache(), "SEMANTIC_HIT");
    assert_eq!(streamed.content(), first.content());
    assert_eq!(env.stub.calls(), 1);

    // Opt-outs: no semantic matching, or a stricter threshold than the match has.
    let off = ask(
        &env,
        KEY_A,
        &body(sys, "How should I reset my password?"),
        &[("x-recache-semantic", "off")],
    )
    .await;
    assert_eq!(off.cache(), "MISS");
    let strict = ask(
        &env,
        KEY_A,
        &body(sys, "how do I reset my password"),
        &[("x-recache-semantic-threshold", "0.9999")],
    )
    .await;
    assert_eq!(strict.cache(), "MISS");
    let calls = env.stub.calls();
    assert_eq!(calls, 3);

    // The same paraphrase in every other context is a miss.
    let other_turns = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "I use the mobile app."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "How can I reset my password?"}]});
    let mut other_model = body(sys, "How can I reset my password?");
    other_model["model"] = json!("gpt-4o");
    let mut tools = body(sys, "How can I reset my password?");
    tools["tools"] =
        json!([{"type": "function", "function": {"name": "lookup_user", "parameters": {"type": "object"}}}]);
    let mut temperature = body(sys, "How can I reset my password?");
    temperature["temperature"] = json!(0.2);
    let mut n = 0;
    for (what, key, b) in [
        ("another tenant", KEY_B, body(sys, "How can I reset my password?")),
        (
            "another system prompt",
            KEY_A,
            body(Some("You are a pirate."), "How can I reset my password?"),
        ),
        ("no system prompt", KEY_A, body(None, "How can I reset my password?")),
        ("other earlier turns", KEY_A, other_turns),
        ("another model", KEY_A, other_model),
        ("tools", KEY_A, tools),
        ("another temperature", KEY_A, temperature),
    ] {
        let r = ask(&env, key, &b, &[]).await;
        assert_eq!(r.cache(), "MISS", "{what} must not match");
        n += 1;
        assert_eq!(env.stub.calls(), calls + n, "{what}");
    }
    // Another namespace of the same tenant is another scope too.
    let r = ask(
        &env,
        KEY_A,
        &body(sys, "How can I reset my password?"),
        &[("x-recache-namespace", "org/other")],
    )
    .await;
    assert_eq!(r.cache(), "MISS");

    // Near-misses the guards refuse, however similar the embeddings.
    for (a, b) in [
        ("Solve x+2=8", "Solve a+2=8"),
        (
            "Enable the firewall on the server.",
            "Do not enable the firewall on the server.",
        ),
        (
            "What service usually runs on port 8080?",
            "What service usually runs on port 8081?",
        ),
    ] {
        assert_eq!(ask(&env, KEY_A, &body(sys, a), &[]).await.cache(), "MISS");
        let r = ask(&env, KEY_A, &body(sys, b), &[]).await;
        assert_eq!(r.cache(), "MISS", "'{b}' must not be answered with '{a}'");
    }

    let text = env.metrics_text().await;
    assert!(text.contains("cache_semantic_hits_total 2"), "{text}");
    assert!(env.metric("cache_semantic_vectors_stored_total").await >= 10.0);
    let refused: f64 = text
        .lines()
        .filter(|l| l.starts_with("cache_semantic_guard_refusals_total{"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum();
    // "x+2=8" / "a+2=8" already scores under the threshold (about 0.74); the other two
    // score above it and are stopped by the guards.
    assert!(refused >= 2.0, "guard refusals {refused}");
    let rep = report(&env).await;
    assert_eq!(team_a(&rep)["semantic_hits"], 2, "{rep}");
    let rows = rep["report"]["tenants"].as_array().unwrap();
    assert!(
        !rows.iter().any(|t| t["tenant"] == "team-a" && t["namespace"] == "*"),
        "no placeholder row once the tenant has traffic: {rep}"
    );
    assert!(
        rows.iter().any(|t| t["tenant"] == "team-b"),
        "configured tenants are listed: {rep}"
    );
}

async fn vectors_breaker_open_keeps_exact_hits_flowing(b: Backends, v: VectorStore) {
    let Some(env) = env_on(b, v, StubConfig::default(), "").await else {
        return;
    };
    let q = body(None, "What is the difference between a process and a thread?");
    assert_eq!(ask(&env, KEY_A, &q, &[]).await.cache(), "MISS");
    let (code, _) = env.admin_post("/admin/breakers/vectors/open", &json!({})).await;
    assert_eq!(code, 200);
    // Exact hits go on; paraphrases and new questions go to the provider; no client error.
    for _ in 0..5 {
        assert_eq!(ask(&env, KEY_A, &q, &[]).await.cache(), "HIT");
    }
    let para = body(None, "What's the difference between a process and a thread?");
    assert_eq!(ask(&env, KEY_A, &para, &[]).await.cache(), "MISS");
    let fresh = body(None, "Explain how a hash map works.");
    assert_eq!(ask(&env, KEY_A, &fresh, &[]).await.cache(), "MISS");
    assert!(env.metric("cache_semantic_vector_store_errors_total").await >= 1.0);
    // Back on: paraphrases match again.
    let (code, _) = env.admin_post("/admin/breakers/vectors/reset", &json!({})).await;
    assert_eq!(code, 200);
    let para2 = body(None, "Please explain how a hash map works.");
    let r = ask(&env, KEY_A, &para2, &[]).await;
    // The hash-map answer was stored while vectors were down, so it has no vector:
    // its paraphrase is a miss (which stores one), and the next paraphrase matches.
    assert_eq!(r.cache(), "MISS");
    let again = body(None, "Could you explain how a hash map works?");
    assert_eq!(ask(&env, KEY_A, &again, &[]).await.cache(), "SEMANTIC_HIT");
}

async fn shadow_mode_serves_the_provider_and_counts_agreement(b: Backends, v: VectorStore) {
    let stub = StubConfig {
        fixed_answer: Some("Open Settings, choose Security, then Reset password.".into()),
        ..Default::default()
    };
    let Some(env) = env_on(b, v, stub, "mode = \"shadow\"").await else {
        return;
    };
    let first = ask(&env, KEY_A, &body(None, "How do I reset my password?"), &[]).await;
    assert_eq!(first.cache(), "MISS");
    let para = ask(&env, KEY_A, &body(None, "How can I reset my password?"), &[]).await;
    assert_eq!(para.cache(), "MISS", "shadow mode never serves a semantic hit");
    assert_eq!(env.stub.calls(), 2);
    // The comparison runs in the background.
    let mut t = Value::Null;
    for _ in 0..100 {
        t = team_a(&report(&env).await);
        if t["shadow_checks"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t["mode"], "shadow", "{t}");
    assert_eq!(t["shadow_candidates"], 1, "{t}");
    assert_eq!(t["shadow_checks"], 1, "{t}");
    assert_eq!(t["shadow_agreements"], 1, "{t}");
    assert_eq!(t["false_hit_rate"], 0.0, "{t}");
    assert_eq!(t["semantic_hits"], 0, "{t}");
    let (code, v) = env.cli_json(&["semantic", "report", "--url", &env.base]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(team_a(&v)["shadow_agreements"], 1);
    let text = env.metrics_text().await;
    assert!(
        text.contains("cache_semantic_checks_total{kind=\"shadow\",agreed=\"true\"} 1"),
        "{text}"
    );
}

async fn error_budget_exceeded_raises_the_threshold(b: Backends, v: VectorStore) {
    // Every fresh answer differs from every stored one: each shadow comparison is a false hit.
    let answers = [
        "Open Settings, choose Security, then Reset password.",
        "Bananas are rich in potassium.",
        "The Pacific is the largest ocean on Earth.",
        "Mount Everest is about 8,849 metres tall.",
        "Rust frees memory without a garbage collector.",
    ];
    let stub = StubConfig {
        fixed_answer: Some(answers[0].into()),
        ..Default::default()
    };
    let more = "mode = \"shadow\"\nerror_budget = 0.1|min_samples = 3";
    let Some(env) = env_on(b, v, stub, more).await else {
        return;
    };
    assert_eq!(
        ask(&env, KEY_A, &body(None, "How do I reset my password?"), &[])
            .await
            .cache(),
        "MISS"
    );
    let paraphrases = [
        "How can I reset my password?",
        "How should I reset my password?",
        "How do you reset my password?",
    ];
    for (i, p) in paraphrases.iter().enumerate() {
        env.stub.update(|c| c.fixed_answer = Some(answers[i + 1].into()));
        ask(&env, KEY_A, &body(None, p), &[]).await;
        // Wait for this comparison before the next request, so each one is judged in turn.
        for _ in 0..100 {
            if team_a(&report(&env).await)["shadow_checks"].as_u64() == Some(i as u64 + 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let t = team_a(&report(&env).await);
    assert_eq!(t["shadow_checks"], 3, "{t}");
    assert_eq!(t["shadow_agreements"], 0, "{t}");
    assert_eq!(t["threshold_raises"], 1, "{t}");
    let (base, now) = (t["base_threshold"].as_f64().unwrap(), t["threshold"].as_f64().unwrap());
    assert!(now > base + 0.005, "threshold {base} -> {now}");
    let ci = t["false_hit_rate_ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() > 0.2 && ci[1].as_f64().unwrap() <= 1.0, "{t}");
    assert_eq!(env.metric("cache_semantic_threshold_raises_total").await, 1.0);
    let audit = env.admin_json("/admin/audit?limit=50").await;
    let raised = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "semantic.threshold_raised")
        .cloned()
        .expect("the raise is audited");
    assert_eq!(raised["tenant"], "team-a");
    assert!(raised["detail"]["to"].as_f64().unwrap() > raised["detail"]["from"].as_f64().unwrap());

    // The CLI report says the same, and exits 1: a tenant is over its budget.
    let (code, v) = env.cli_json(&["semantic", "report", "--url", &env.base]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(team_a(&v)["threshold_raises"], 1);
    let (code, out, err) = env.cli(&["semantic", "report", "--url", &env.base]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("raised from 0.900") && out.contains("team-a"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_init_and_list_from_the_cli() {
    let Some(mut env) = env_with(Backends::Embedded, StubConfig::default(), "").await else {
        return;
    };
    // The running gateway owns the embedded store: the CLI says so.
    let (code, _, err) = env.cli(&["vectors", "init", "--collection", "ops-test", "--dimension", "8"]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by another recache process"), "{err}");
    env.gw.take().unwrap().shutdown().await;
    let (code, out, err) = env.cli(&["vectors", "init", "--collection", "ops-test", "--dimension", "8"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ops-test"), "{out}");
    // Idempotent; another dimension for the same name is refused.
    assert_eq!(
        env.cli(&["vectors", "init", "--collection", "ops-test", "--dimension", "8"])
            .0,
        0
    );
    let (code, _, err) = env.cli(&["vectors", "init", "--collection", "ops-test", "--dimension", "16"]);
    assert_eq!(code, 1, "{err}");
    let (code, v) = env.cli_json(&["vectors", "list"]);
    assert_eq!(code, 0);
    let cols = v["collections"].as_array().unwrap();
    assert!(
        cols.iter().any(|c| c["name"] == "ops-test" && c["dimension"] == 8),
        "{v}"
    );
    // The gateway's own collection (its embedder's fingerprint) is there too.
    assert!(
        cols.iter()
            .any(|c| c["name"].as_str().unwrap().starts_with("recache-local")),
        "{v}"
    );
    let (code, v) = env.cli_json(&["health", "--backend", "vectors"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["backends"][0]["engine"], "embedded");
    // The audit reads every collection (no vector here lacks its entry).
    let (code, v) = env.cli_json(&["audit", "--check", "vectors"]);
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("recache-local") && notes.contains("vectors checked"),
        "{v}"
    );
    assert_eq!(v["counts"].get("dangling_vector"), None, "{v}");
    assert_eq!(code, 0, "{v}");
}

/// The labelled pair set: paraphrases that should match and near-misses that
/// must not. Reports both rates at the default threshold; any near-miss served fails.
async fn labelled_pairs_no_near_miss_is_ever_served(b: Backends, v: VectorStore) {
    let Some(env) = env_on(b, v, StubConfig::default(), "").await else {
        return;
    };
    assert_pair_set(&env, "", include_str!("data/semantic_pairs.jsonl"), 50).await;
}

/// Issue #27's acceptance, through the gateway with its default (lexical)
/// guards: the held-out test half of the evaluation corpus, each pair in its
/// own namespace. No near-miss is served; at least 70 % of paraphrases are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_out_half_through_the_gateway() {
    let Some(env) = env_on(Backends::Embedded, VectorStore::Embedded, StubConfig::default(), "").await else {
        return;
    };
    assert_pair_set(&env, " (held-out half)", include_str!("data/semantic_test.jsonl"), 70).await;
}

/// Asks every pair of a labelled set through `env`, prints the paraphrase hit
/// rate and the near-miss false-hit rate, and fails if any near-miss is
/// served or fewer than `min_pct` % of the paraphrases are.
async fn assert_pair_set(env: &Env, label: &str, text: &str, min_pct: u32) {
    let (mut para, mut para_hits, mut near, mut near_hits) = (0, 0, 0, 0);
    let mut served = Vec::new();
    let mut missed = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let pair: Value = serde_json::from_str(line).unwrap();
        let ns = format!("pairs-{i}");
        let h = [("x-recache-namespace", ns.as_str())];
        let (a, b) = (pair["a"].as_str().unwrap(), pair["b"].as_str().unwrap());
        assert_eq!(ask(env, KEY_A, &body(None, a), &h).await.cache(), "MISS");
        let r = ask(env, KEY_A, &body(None, b), &h).await;
        let hit = r.cache() == "SEMANTIC_HIT";
        if pair["label"] == "paraphrase" {
            para += 1;
            para_hits += hit as u32;
            if !hit {
                missed.push(format!("{a} | {b}"));
            }
        } else {
            near += 1;
            near_hits += hit as u32;
            if hit {
                served.push(format!(
                    "[{}] {a} | {b} ({})",
                    pair["kind"],
                    r.header("x-recache-similarity")
                ));
            }
        }
    }
    println!(
        "semantic pairs at the default threshold{label}: paraphrase hit rate {para_hits}/{para} ({:.0} %), near-miss false-hit rate {near_hits}/{near} ({:.0} %)",
        100.0 * para_hits as f64 / para as f64,
        100.0 * near_hits as f64 / near as f64
    );
    for m in &missed {
        println!("  paraphrase not matched: {m}");
    }
    assert!(served.is_empty(), "near-misses served: {served:#?}");
    assert!(
        para_hits * 100 >= para * min_pct,
        "paraphrase hit rate under {min_pct} %: {para_hits}/{para}"
    );
}

/// A new embedder fingerprint gets its own empty collection: no hit from the old
/// vectors; a rebuild-vectors job (queued by itself at start-up) re-embeds the
/// stored requests, and paraphrases hit again, with zero provider calls.
async fn embedder_change_never_mixes_vectors_and_rebuilds_them(b: Backends, v: VectorStore) {
    let Some(model) = model_dir() else { return };
    let two_embedders = |active: &str, warmer_on: bool| {
        format!(
            r#"
[semantic]
embed_timeout_ms = 10000
[semantic.embedders.local]
kind = "local"
path = "{m}"
[semantic.embedders.short]
kind = "local"
path = "{m}"
max_tokens = 128
[[semantic.rules]]
tenant = "team-a"
enabled = true
embedder = "{active}"
[warmer]
enabled = {warmer_on}
poll_ms = 50
"#,
            m = model.display()
        )
    };
    let mut env = env_raw(b, v, StubConfig::default(), &two_embedders("local", true)).await;
    let original = ask(&env, KEY_A, &body(None, "How do I install Rust on Linux?"), &[]).await;
    assert_eq!(original.cache(), "MISS");
    let p1 = ask(&env, KEY_A, &body(None, "How can I install Rust on Linux?"), &[]).await;
    assert_eq!(p1.cache(), "SEMANTIC_HIT");

    // Another embedder, the warmer off: the old collection is never searched.
    env.set_extra(&two_embedders("short", false));
    env.restart().await;
    let rep = report(&env).await;
    let short = rep["report"]["embedders"][0]["collection"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(short.ends_with("128"), "{rep}");
    let p2 = ask(
        &env,
        KEY_A,
        &body(None, "How can I install Rust on Linux?"),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(p2.cache(), "BYPASS");
    let p2 = ask(
        &env,
        KEY_A,
        &body(None, "How should I install Rust on Linux?"),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(p2.cache(), "BYPASS");
    let jobs = env.admin_json("/admin/jobs?limit=100").await;
    let queued = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["kind"] == "rebuild-vectors" && j["state"] == "queued");
    assert!(queued, "a rebuild of the empty collection is queued: {jobs}");
    let calls = env.stub.calls();

    // The warmer on: the job re-embeds the stored request, and paraphrases hit again.
    env.set_extra(&two_embedders("short", true));
    env.restart().await;
    let done = env
        .job_in_state("rebuild-vectors", "succeeded", Duration::from_secs(10))
        .await;
    assert!(done["result"]["embedded"].as_u64().unwrap_or(0) >= 1, "{done}");
    let p3 = ask(&env, KEY_A, &body(None, "How can I install Rust on Linux?"), &[]).await;
    assert_eq!(p3.cache(), "SEMANTIC_HIT");
    assert_eq!(p3.header("x-recache-key"), original.header("x-recache-key"));
    assert_eq!(env.stub.calls(), calls, "the rebuild called no provider");
    let rep = report(&env).await;
    let collections = rep["report"]["collections"].as_array().unwrap();
    assert_eq!(collections.len(), 2, "both collections exist, apart: {rep}");
}

/// Qdrant killed with `kill -9` under traffic: exact hits go on, paraphrases
/// and new questions go to the provider, no client ever sees an error; the
/// vectors breaker opens, and closes again once Qdrant is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_qdrant_keeps_exact_hits_flowing_with_zero_errors() {
    let Some(mut qdrant) = common::servers::Server::qdrant() else {
        assert!(
            !common::engines::required("RECACHE_TEST_QDRANT"),
            "RECACHE_TEST_QDRANT=1 but no Qdrant binary (RECACHE_TEST_QDRANT_BIN)"
        );
        eprintln!(
            "Qdrant test skipped: no Qdrant server binary (scripts/with-engines.sh sets RECACHE_TEST_QDRANT_BIN)"
        );
        return;
    };
    let Some(model) = model_dir() else { return };
    let extra = format!("{}\n[breaker]\nopen_seconds = 1\n", semantic_toml(&model, ""));
    let env = env_raw(
        Backends::Embedded,
        VectorStore::Qdrant(qdrant.url()),
        StubConfig::default(),
        &extra,
    )
    .await;
    let q = body(None, "How do I rotate an API key?");
    assert_eq!(ask(&env, KEY_A, &q, &[]).await.cache(), "MISS");
    assert_eq!(
        ask(&env, KEY_A, &body(None, "How can I rotate an API key?"), &[])
            .await
            .cache(),
        "SEMANTIC_HIT"
    );

    qdrant.kill9();
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(ask(&env, KEY_A, &q, &[]).await.cache().to_string());
        let fresh = ask(
            &env,
            KEY_A,
            &body(None, &format!("What is item number {i} of the list?")),
            &[],
        )
        .await;
        assert_eq!(fresh.cache(), "MISS");
    }
    assert!(statuses.iter().all(|s| s == "HIT"), "{statuses:?}");
    let para = ask(&env, KEY_A, &body(None, "How should I rotate an API key?"), &[]).await;
    assert_eq!(para.cache(), "MISS", "no vectors: the provider answers");
    let text = env.metrics_text().await;
    assert!(
        text.contains("cache_breaker_state{backend=\"vectors\"} 1"),
        "the vectors breaker is open: {}",
        text.lines()
            .filter(|l| l.contains("breaker_state"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Back: after the open period the probe succeeds and paraphrases match again.
    qdrant.start();
    let mut back = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = ask(
            &env,
            KEY_A,
            &body(None, "How can I rotate an API key?"),
            &[("cache-control", "no-store")],
        )
        .await;
        back = r.cache().to_string();
        if back == "SEMANTIC_HIT" {
            break;
        }
    }
    assert_eq!(back, "SEMANTIC_HIT", "semantic matching is back once Qdrant is");
}

/// The default `weights = "int8"` stays within 0.998 cosine of the f32 network
/// on every text of the pair set and carries its own fingerprint; the gateway
/// with `weights = "f32"` answers a paraphrase from the cache and serves no
/// near-miss of the labelled set (the default is run through the pair set by
/// `labelled_pairs_no_near_miss_is_ever_served`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int8_embedder_agrees_with_f32() {
    let Some(model) = model_dir() else { return };
    let f32m = recache_embed::LocalModel::load_weights(&model, 256, recache_embed::Weights::F32).unwrap();
    let i8m = recache_embed::LocalModel::load(&model, 256).unwrap();
    assert_ne!(f32m.name(), i8m.name(), "another fingerprint");
    let mut worst = 1.0f32;
    for line in include_str!("data/semantic_pairs.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let pair: Value = serde_json::from_str(line).unwrap();
        for t in [pair["a"].as_str().unwrap(), pair["b"].as_str().unwrap()] {
            let (a, b) = (&f32m.embed(&[t]).unwrap()[0], &i8m.embed(&[t]).unwrap()[0]);
            worst = worst.min(recache_embed::cosine(a, b));
        }
    }
    assert!(worst >= 0.998, "int8 vs f32 cosine {worst}");
    let extra = format!(
        "{}\n",
        semantic_toml(&model, "").replace("kind = \"local\"", "kind = \"local\"\nweights = \"f32\"")
    );
    let env = env_raw(Backends::Embedded, VectorStore::Embedded, StubConfig::default(), &extra).await;
    assert_eq!(
        ask(&env, KEY_A, &body(None, "How do I reset my password?"), &[])
            .await
            .cache(),
        "MISS"
    );
    assert_eq!(
        ask(&env, KEY_A, &body(None, "How can I reset my password?"), &[])
            .await
            .cache(),
        "SEMANTIC_HIT"
    );
    let rep = report(&env).await;
    let fingerprint = rep["report"]["embedders"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        fingerprint.contains(f32m.name()) && !fingerprint.contains("-i8"),
        "{rep}"
    );
    assert!(i8m.name().ends_with("-i8"), "{}", i8m.name());
    assert_pair_set(
        &env,
        &format!(" ({})", f32m.name()),
        include_str!("data/semantic_pairs.jsonl"),
        50,
    )
    .await;
}

/// Issue 22, M2: the embedding cache is per tenant. Team B sending a text team
/// A sent is not served from A's cached embedding, so B cannot learn from
/// its latency or the hit counter that A sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_cache_tells_nothing_across_tenants() {
    let Some(env) = env_with(Backends::Embedded, StubConfig::default(), "").await else {
        return;
    };
    let q = body(None, "What is the tallest mountain in Scotland?");
    assert_eq!(ask(&env, KEY_A, &q, &[]).await.cache(), "MISS");
    let hits = env.metric("cache_semantic_embed_cache_hits_total").await;
    assert_eq!(ask(&env, KEY_B, &q, &[]).await.cache(), "MISS");
    assert_eq!(
        env.metric("cache_semantic_embed_cache_hits_total").await,
        hits,
        "team B's text was embedded anew, not taken from team A's"
    );
    // The control: team A's own repeat (no-cache: looked up anew, embedded for the store) hits it.
    ask(&env, KEY_A, &q, &[("cache-control", "no-cache")]).await;
    assert_eq!(env.metric("cache_semantic_embed_cache_hits_total").await, hits + 1.0);
}

/// Issue 22, L3: under `only-if-cached` a semantic hit never starts a
/// sampled verification (a provider call), even with `verify_rate = 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_never_calls_the_provider_for_a_verification() {
    let Some(env) = env_with(Backends::Embedded, StubConfig::default(), "verify_rate = 1.0").await else {
        return;
    };
    assert_eq!(
        ask(&env, KEY_A, &body(None, "How do I reset my password?"), &[])
            .await
            .cache(),
        "MISS"
    );
    assert_eq!(env.stub.calls(), 1);
    let r = ask(
        &env,
        KEY_A,
        &body(None, "How can I reset my password?"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.cache(), "SEMANTIC_HIT", "{}", r.text);
    assert_eq!(env.stub.calls(), 1, "no verification call under only-if-cached");
    // The control: without the directive, the same hit is verified (one provider call).
    ask(&env, KEY_A, &body(None, "How can I reset my password?"), &[]).await;
    assert_eq!(env.stub.calls(), 2, "verify_rate = 1 samples every semantic hit");
}
