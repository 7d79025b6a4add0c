//! The degradation matrix in every dialect: with the index's breaker open,
//! requests of each dialect go to the provider and are answered (never an
//! error); once it closes, they are hits again. With the provider down, an
//! expired entry is served under `stale-if-error` in each dialect's shape.
//! An answer bought while the index is out is kept, and is a hit once the
//! index is back (its pointer written from metadata), with no second call.

mod common;

use common::dialects::requests;
use common::{Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;
use serde_json::json;
use std::time::Duration;

on_both_backends!(every_dialect_survives_a_cache_outage_and_a_provider_outage);
on_both_backends!(answers_bought_during_an_index_outage_are_kept);

async fn every_dialect_survives_a_cache_outage_and_a_provider_outage(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    for r in requests("Outage?", KEY_A) {
        assert_eq!(r.send(&env, &[]).await.cache(), "MISS", "{}", r.path);
        assert_eq!(r.send(&env, &[]).await.cache(), "HIT", "{}", r.path);
    }
    // The index is unreachable (its breaker held open): every dialect is answered by the provider.
    let (status, _) = env
        .admin_post("/admin/breakers/index/open?seconds=30", &json!({}))
        .await;
    assert_eq!(status, 200);
    let calls = env.stub.calls();
    for r in requests("Outage?", KEY_A) {
        let a = r.send(&env, &[]).await;
        assert_eq!(a.status, 200, "{}: {}", r.path, a.text);
        assert_ne!(a.cache(), "HIT", "{}: no lookup while the index is out", r.path);
    }
    assert_eq!(env.stub.calls(), calls + 4, "each one was bought from the provider");
    let (status, _) = env.admin_post("/admin/breakers/index/reset", &json!({})).await;
    assert_eq!(status, 200);
    for r in requests("Outage?", KEY_A) {
        assert_eq!(
            r.send(&env, &[]).await.cache(),
            "HIT",
            "{}: hits again after the repair",
            r.path
        );
    }
    // Entries kept one second, then the provider down: stale-if-error serves them, in each shape.
    for r in requests("Stale?", KEY_A) {
        assert_eq!(
            r.send(&env, &[("x-recache-ttl", "1")]).await.cache(),
            "MISS",
            "{}",
            r.path
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    env.stub.update(|c| c.fail_status = Some(503));
    for r in requests("Stale?", KEY_A) {
        let a = r.send(&env, &[("cache-control", "stale-if-error=60")]).await;
        assert_eq!((a.status, a.cache()), (200, "STALE"), "{}: {}", r.path, a.text);
    }
}

/// An answer bought while the index is out is kept (artifact and metadata
/// written as usual); when the index is back, the recovery watch writes its
/// pointer from metadata, and the same question is a hit with no second
/// provider call, in every dialect.
async fn answers_bought_during_an_index_outage_are_kept(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "[warmer]\ndetect_interval_ms = 200\n").await;
    let (status, _) = env
        .admin_post("/admin/breakers/index/open?seconds=60", &json!({}))
        .await;
    assert_eq!(status, 200);
    let calls = env.stub.calls();
    let mut keys = Vec::new();
    for r in requests("Bought during the outage?", KEY_A) {
        let a = r.send(&env, &[]).await;
        assert_eq!((a.status, a.cache()), (200, "MISS"), "{}: {}", r.path, a.text);
        keys.push(a.header("x-recache-key").to_string());
    }
    assert_eq!(env.stub.calls(), calls + 4);
    assert_eq!(env.metric("cache_stored_unindexed_total").await, 4.0);
    // Not asked again before the pointers are back: a miss now would buy it twice.
    let (status, _) = env.admin_post("/admin/breakers/index/reset", &json!({})).await;
    assert_eq!(status, 200);
    for key in &keys {
        common::until(
            Duration::from_secs(10),
            "the pointer written from metadata",
            async || env.admin_entry(key).await["indexed"] == json!(true),
        )
        .await;
    }
    for r in requests("Bought during the outage?", KEY_A) {
        let a = r.send(&env, &[]).await;
        assert_eq!(a.cache(), "HIT", "{}: {}", r.path, a.text);
    }
    assert_eq!(env.stub.calls(), calls + 4, "each answer bought once");
}
