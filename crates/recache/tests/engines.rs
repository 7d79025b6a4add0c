//! Behaviour that needs the real engines: replicas sharing one set of
//! engines, a gateway starting while Redis is down, and `recache health`
//! against Redis, S3 and PostgreSQL.

mod common;

use std::time::Duration;

use common::{chat_body, Backends, Env, KEY_A};
use recache::server::Gateway;
use recache_stub_provider::StubConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_set_of_engines() {
    let Some(b) = Backends::real().await else { return };
    let env = Env::on(b, StubConfig::default(), "").await;
    // A second, independent gateway process state over the same Redis + S3 + PostgreSQL.
    let env_vars = [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
    let second = Gateway::start(env.config(), &env_vars).await.unwrap();
    let second_base = format!("http://{}", second.addr);
    assert_ne!(second_base, env.base);

    let first = env.chat(KEY_A, "shared across replicas").await;
    assert_eq!(first.cache(), "MISS");
    let r = env
        .http
        .post(format!("{second_base}/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&chat_body("shared across replicas", false))
        .send()
        .await
        .unwrap();
    let r = common::Resp::from(r).await;
    assert_eq!(
        r.cache(),
        "HIT",
        "an entry written through one gateway is a hit through the other"
    );
    assert_eq!(r.text, first.text);
    // And the other way round, streamed.
    let s = env
        .http
        .post(format!("{second_base}/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&chat_body("written by the second", true))
        .send()
        .await
        .unwrap();
    let s = common::Resp::from(s).await;
    assert_eq!(s.cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let back = env.chat(KEY_A, "written by the second").await;
    assert_eq!(back.cache(), "HIT");
    assert_eq!(back.content(), s.content());
    assert_eq!(env.stub.calls(), 2);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_started_while_redis_is_down_answers_everything_from_the_provider() {
    let Some(Backends::Real {
        s3_endpoint,
        bucket,
        postgres,
        prefix,
        ..
    }) = Backends::real().await
    else {
        return;
    };
    // Nothing listens on this port: Redis is "down" from the start.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let b = Backends::Real {
        redis: dead_url,
        prefix,
        s3_endpoint,
        bucket,
        postgres,
    };
    let env = Env::on(b, StubConfig::default(), "").await;
    for i in 0..20 {
        let r = env.chat(KEY_A, &format!("redis is down {}", i % 5)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.cache(), "MISS", "every lookup misses while the index is down");
    }
    assert_eq!(env.stub.calls(), 20, "all from the provider");
    // Five failed calls open the index breaker (the recovery watch's generation
    // check is one of the callers); after that, lookups skip Redis at once.
    let errors = env.metric("cache_errors_total{backend=\"index\"}").await;
    assert!((1.0..20.0).contains(&errors), "index errors {errors}");
    assert_eq!(
        env.metric("cache_breaker_state{backend=\"index\"}").await,
        1.0,
        "breaker open"
    );
    assert!(env.metric("cache_breaker_rejections_total{backend=\"index\"}").await >= 1.0);
    let ready = env.admin_json("/health/ready").await;
    assert_eq!(ready["status"], "degraded");
    let index = ready["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "index")
        .unwrap();
    assert_eq!(
        (index["engine"].as_str(), index["status"].as_str()),
        (Some("redis"), Some("down"))
    );
    assert_eq!(index["breaker"]["state"], "open");
    // `recache health --url` shows the same, and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args(["health", "--backend", "redis", "--format", "json", "--url", &env.base])
        .env("RECACHE_METRICS_TOKEN", "admin-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["breaker"]["state"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_cli_reports_real_engines_with_guide_warnings() {
    let Some(b) = Backends::real().await else { return };
    let env = Env::on(b, StubConfig::default(), "").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("recache.toml");
    std::fs::write(&cfg, common::config_text(&env.backends, dir.path(), &env.stub_url, "")).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = run(&["health", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_role = |r: &str| {
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["role"] == r)
            .unwrap()
            .clone()
    };
    let redis = by_role("index");
    assert_eq!(redis["engine"], "redis");
    assert!(redis["version"].as_str().unwrap().starts_with("Redis "));
    let warnings = redis["warnings"].to_string();
    // The test Redis runs without persistence and without maxmemory: both are called out.
    assert!(warnings.contains("persistence is off"), "{warnings}");
    assert!(warnings.contains("maxmemory is unset"), "{warnings}");
    assert!(by_role("metadata")["version"]
        .as_str()
        .unwrap()
        .starts_with("PostgreSQL"));
    assert_eq!(by_role("artifacts")["engine"], "s3");
    let out = run(&["health", "--backend", "redis"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WARNING: persistence is off"), "{text}");

    // Point the index at a dead port: health says so and exits 1.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args([
            "health",
            "--backend",
            "redis",
            "--format",
            "json",
            "--timeout-ms",
            "1000",
            "--config",
        ])
        .arg(&cfg)
        .env("RECACHE_INDEX__URL", format!("redis://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["status"], "down");
}
