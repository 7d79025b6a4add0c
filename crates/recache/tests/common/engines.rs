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

/// The harness's Qdrant (gRPC URL). Optional even in CI: no package ships a
/// Qdrant server, so the harness starts one only when a binary is at hand.
pub fn qdrant_url() -> Option<String> {
    match std::env::var("RECACHE_TEST_QDRANT_URL") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!(
                "Qdrant test skipped: no Qdrant server (scripts/with-engines.sh starts one from QDRANT_BIN or ../shared/bin/qdrant)"
            );
            None
        }
    }
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
