//! The providers' official SDKs as recache's clients (installed into a venv
//! by `scripts/sdk-venv.sh`): each runs its dialect's scenario against a
//! gateway on both engine sets, and the provider calls it cost are counted.

mod common;

use common::{Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;

/// The venv's python; the test fails when the harness made one and it is gone.
fn sdk_python() -> Option<String> {
    let py = std::env::var("RECACHE_SDK_PYTHON")
        .ok()
        .filter(|p| std::path::Path::new(p).exists());
    if py.is_none() {
        assert!(
            !common::engines::required("RECACHE_TEST_SDK"),
            "RECACHE_TEST_SDK=1 but no SDK venv (bash scripts/sdk-venv.sh)"
        );
    }
    py
}

async fn run_script(env: &Env, script: &str) {
    let py = sdk_python().expect("checked by the caller");
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let base = env.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .arg(path)
            .env("RECACHE_URL", base)
            .env("RECACHE_KEY", KEY_A)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn anthropic(b: Backends) {
    if sdk_python().is_none() {
        return;
    }
    let env = Env::on(b, StubConfig::default(), "").await;
    run_script(&env, "anthropic_client.py").await;
    // Provider calls: the first message, the thinking/tool message, the tool
    // result, count_tokens. Every repeat was served by recache.
    assert_eq!(env.stub.calls(), 4);
}

async fn openai_responses(b: Backends) {
    if sdk_python().is_none() {
        return;
    }
    let env = Env::on(b, StubConfig::default(), "").await;
    run_script(&env, "openai_responses_client.py").await;
    // Provider calls: the first question, the function-call request, its
    // result on two chains, and two background runs (never cached).
    assert_eq!(env.stub.calls(), 6);
}

async fn gemini(b: Backends) {
    if sdk_python().is_none() {
        return;
    }
    let env = Env::on(b, StubConfig::default(), "").await;
    run_script(&env, "gemini_client.py").await;
    // Provider calls: the first question, the thoughts-and-function-call
    // request, and the function's result. Every repeat was recache's.
    assert_eq!(env.stub.calls(), 3);
}

on_both_backends!(anthropic, openai_responses, gemini);
