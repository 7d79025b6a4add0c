//! Operations in every dialect (chat, Responses, Anthropic Messages, Gemini):
//! `only-if-cached` answers from the cache or with a 504 in the dialect's own
//! error shape and no provider call; a `warm` file in each dialect's batch
//! shapes is bought ahead and then served as hits (the warmer keys requests
//! exactly as the gateway does, for a tenant whose stable id is not its
//! name); and the money is counted per dialect, in `report cost --by
//! dialect` and on the dashboard.

mod common;

use std::time::Duration;

use common::dialects::requests;
use common::{Backends, Env};
use recache_stub_provider::StubConfig;
use serde_json::Value;

on_both_backends!(every_dialect_is_warmed_served_only_if_cached_and_counted);

const KEY_C: &str = "sk-tenant-c";
const Q: &str = "Warm me up?";

const EXTRA: &str = r#"
[warmer]
poll_ms = 50
max_spend_usd_per_hour = 100.0
[[tenants]]
name = "team-c"
id = "team-c-2024"
keys = ["sk-tenant-c"]
"#;

/// The same question as [`requests`] asks, in each dialect's batch-file shape.
fn warm_file() -> String {
    let q = Q;
    [
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{q}"}}]}}"#),
        format!(r#"{{"custom_id":"r1","method":"POST","url":"/v1/responses","body":{{"model":"gpt-4o-mini","input":"{q}"}}}}"#),
        format!(
            r#"{{"custom_id":"m1","params":{{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{{"role":"user","content":"{q}"}}]}}}}"#
        ),
        format!(
            r#"{{"key":"g1","request":{{"model":"models/gemini-2.5-flash","contents":[{{"role":"user","parts":[{{"text":"{q}"}}]}}]}}}}"#
        ),
    ]
    .join("\n")
}

fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

async fn every_dialect_is_warmed_served_only_if_cached_and_counted(b: Backends) {
    let env = Env::on(b, StubConfig::default(), EXTRA).await;
    let only = [("cache-control", "only-if-cached")];
    // Nothing cached yet: each dialect's own 504, and no provider call.
    for r in requests(Q, KEY_C) {
        let a = r.send(&env, &only).await;
        assert_eq!(a.status, 504, "{}: {}", r.path, a.text);
        let v = a.json();
        match r.dialect() {
            "anthropic" => assert_eq!(
                (&v["type"], &v["error"]["type"]),
                (&"error".into(), &"timeout_error".into())
            ),
            "gemini" => assert_eq!(
                (&v["error"]["code"], &v["error"]["status"]),
                (&504.into(), &"DEADLINE_EXCEEDED".into())
            ),
            _ => assert_eq!(v["error"]["code"], "not_cached", "{v}"),
        }
    }
    assert_eq!(env.stub.calls(), 0);

    // The same four questions warmed from one file, in four shapes.
    let file = env.path("warm.jsonl");
    std::fs::write(&file, warm_file()).unwrap();
    let (code, out, err) = env.cli(&[
        "warmer",
        "enqueue",
        "--file",
        file.to_str().unwrap(),
        "--tenant",
        "team-c",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let warm = env.job_in_state("warm", "succeeded", Duration::from_secs(20)).await;
    assert!(!warm.is_null(), "the warm job succeeds");
    assert_eq!(env.stub.calls(), 4, "each warmed request bought once");

    // Each is now a hit in its own shape, still without a provider call.
    for r in requests(Q, KEY_C) {
        let a = r.send(&env, &only).await;
        assert_eq!((a.status, a.cache()), (200, "HIT"), "{}: {}", r.path, a.text);
        let v = a.json();
        let shaped = match (r.dialect(), r.path) {
            ("anthropic", _) => v["type"] == "message",
            ("gemini", _) => v["candidates"].is_array(),
            (_, "/v1/responses") => v["object"] == "response",
            _ => v["object"] == "chat.completion",
        };
        assert!(shaped, "{}: {v}", r.path);
        assert!(
            a.header("x-recache-saved-usd").parse::<f64>().unwrap() > 0.0,
            "{}",
            r.path
        );
    }
    assert_eq!(env.stub.calls(), 4);

    // Counted per dialect: openai has two endpoints (chat, responses).
    let mut report = Value::Null;
    common::until(Duration::from_secs(20), "the usage to reach metadata", async || {
        let (code, r) = env.cli_json(&["report", "cost", "--since", "1h", "--by", "dialect"]);
        assert_eq!(code, 0, "{r}");
        report = r;
        report["total"]["requests"] == 8
    })
    .await;
    let (openai, anthropic, gemini) = (
        group(&report, "openai"),
        group(&report, "anthropic"),
        group(&report, "gemini"),
    );
    assert_eq!(
        (openai["misses"].as_u64(), openai["hits"].as_u64()),
        (Some(2), Some(2)),
        "{report:#}"
    );
    for g in [anthropic, gemini] {
        assert_eq!(
            (g["misses"].as_u64(), g["hits"].as_u64()),
            (Some(1), Some(1)),
            "{report:#}"
        );
        assert!(g["usd_spent"].as_f64().unwrap() > 0.0 && g["usd_saved"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(report["groups"].as_array().unwrap().len(), 3);
    // By tenant: the name it has now, not the stable id usage is kept under.
    let (code, r) = env.cli_json(&["report", "cost", "--since", "1h", "--by", "tenant"]);
    assert_eq!(code, 0);
    assert_eq!(group(&r, "team-c")["requests"], 8, "{r:#}");

    // The dashboard splits the same counters by dialect.
    let data = env.admin_json("/dashboard/data").await;
    let row = |d: &str| {
        data["dialects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["dialect"] == d)
            .cloned()
            .unwrap_or_else(|| panic!("no {d} in {data:#}"))
    };
    assert_eq!(
        (row("openai")["requests"].as_u64(), row("openai")["hits"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(row("gemini")["hit_rate"], 0.5);
    assert!(
        (row("anthropic")["usd_spent"].as_f64().unwrap() - anthropic["usd_spent"].as_f64().unwrap()).abs() < 1e-9,
        "{data:#}"
    );
}
