//! Real engines started by `scripts/with-engines.sh`. Without it, tests that
//! need an engine return early with a note; with `RECACHE_TEST_ENGINES=1`
//! set (CI), a missing engine is a failure, never a silent skip.
#![allow(dead_code)]

fn var(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("RECACHE_TEST_ENGINES").is_ok_and(|v| v == "1") {
                panic!("{name} is not set although RECACHE_TEST_ENGINES=1");
            }
            eprintln!("skipping: {name} not set (run under scripts/with-engines.sh)");
            None
        }
    }
}

/// Like `var`, public for the server helpers.
pub fn var_opt(name: &str) -> Option<String> {
    var(name)
}

pub fn redis_url() -> Option<String> {
    var("RECACHE_TEST_REDIS_URL")
}

/// Whether `flag` is set to 1: then a missing requirement fails the test
/// instead of skipping it (`scripts/test.sh` sets them when it has what they need).
pub fn required(flag: &str) -> bool {
    std::env::var(flag).is_ok_and(|v| v == "1")
}

/// The harness's Qdrant (gRPC URL). No package ships a Qdrant server, so the
/// harness starts one only when a binary is at hand; when it has one
/// (`RECACHE_TEST_QDRANT=1`, set by `scripts/test.sh`), a missing Qdrant fails.
pub fn qdrant_url() -> Option<String> {
    match std::env::var("RECACHE_TEST_QDRANT_URL") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                !required("RECACHE_TEST_QDRANT"),
                "RECACHE_TEST_QDRANT=1 but no Qdrant server (RECACHE_TEST_QDRANT_URL is not set)"
            );
            eprintln!(
                "Qdrant test skipped: no Qdrant server (scripts/with-engines.sh starts one from QDRANT_BIN or ../shared/bin/qdrant)"
            );
            None
        }
    }
}

/// The embedding model (`scripts/fetch-model.sh`). Missing, the test is
/// skipped, unless `RECACHE_TEST_MODEL=1` (`scripts/test.sh` fetches it and
/// sets it): then a missing model is a failure, never a silent pass.
pub fn model_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Some(dir);
    }
    assert!(
        !required("RECACHE_TEST_MODEL"),
        "RECACHE_TEST_MODEL=1 but no model at {} (bash scripts/fetch-model.sh)",
        dir.display()
    );
    eprintln!(
        "skipped: no model at {} (run `bash scripts/fetch-model.sh`)",
        dir.display()
    );
    None
}

pub fn s3() -> Option<(String, String)> {
    Some((var("RECACHE_TEST_S3_ENDPOINT")?, var("RECACHE_TEST_S3_BUCKET")?))
}

/// A unique name for this test run.
pub fn unique(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{label}_{}_{t}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, empty database on the test PostgreSQL server; returns its URL.
pub async fn fresh_postgres(label: &str) -> Option<String> {
    use sqlx::Connection;
    let admin = var("RECACHE_TEST_POSTGRES_URL")?;
    let name = unique(label).to_lowercase();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to test postgres");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    Some(format!("{base}/{name}"))
}
