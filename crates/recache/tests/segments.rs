//! The embedded artifact store's segments through the gateway (issue #28,
//! `docs/backends/segments.md`): compaction under traffic loses nothing, and
//! a damaged byte inside a segment is found by the audit (a CLI process that
//! reads beside the gateway) and never served.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{chat_body, until, Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;

/// Answers of about 8 KiB, so that 1 MiB segments fill with a few hundred.
fn big_answers() -> StubConfig {
    StubConfig {
        fixed_answer: Some("a long cached answer ".repeat(400)),
        ..Default::default()
    }
}

async fn segmented_env() -> Env {
    Env::on_with(
        Backends::Embedded,
        big_answers(),
        "",
        &[
            ("RECACHE_ARTIFACTS__SEGMENT_MB", "1"),
            ("RECACHE_ARTIFACTS__MEMORY_CACHE_MB", "0"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_under_traffic_loses_nothing() {
    let env = Arc::new(segmented_env().await);
    // Kept answers and answers that expire in a second, interleaved, so that
    // every sealed segment holds both.
    for i in 0..240 {
        let short = i % 3 != 0;
        let headers: &[(&str, &str)] = if short { &[("x-recache-ttl", "1")] } else { &[] };
        let r = env
            .post(
                "/v1/chat/completions",
                Some(KEY_A),
                &chat_body(&format!("seg {i}"), false),
                headers,
            )
            .await;
        assert_eq!((r.status, r.cache()), (200, "MISS"), "{}", r.text);
    }
    let store = env.raw_segments();
    let before = store.stats();
    assert!(before.segments >= 2, "1 MiB segments were sealed: {before:?}");
    assert_eq!(
        env.metric("cache_artifact_segment_live_bytes").await,
        before.live_bytes as f64
    );
    // The sweep deletes the expired answers (expiry 1 s, kept 2 s for stale-if-error).
    until(Duration::from_secs(15), "the expired answers to be swept", async || {
        store.stats().artifacts <= 80
    })
    .await;
    // Traffic on the kept answers and new ones while segments are compacted.
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (env, stop, misses) = (env.clone(), stop.clone(), misses.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let kept = env.chat(KEY_A, &format!("seg {}", (n % 80) * 3)).await;
                assert_eq!(
                    (kept.status, kept.cache()),
                    (200, "HIT"),
                    "a kept answer, mid-compaction"
                );
                let new = env.chat(KEY_A, &format!("new {n}")).await;
                assert_eq!(new.status, 200);
                misses.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    let mut compacted = 0;
    for _ in 0..5 {
        compacted += store.compact_now(true).await.unwrap().segments;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(compacted >= 2, "segments were compacted: {compacted}");
    store.compact_now(true).await.unwrap();
    let after = store.stats();
    assert_eq!(
        after.dead_bytes, 0,
        "every deleted answer is gone from the disk: {after:?}"
    );
    assert_eq!(env.metric("cache_artifact_segment_dead_bytes").await, 0.0);
    assert_eq!(env.metric("cache_artifact_segments").await, after.segments as f64);
    // Everything kept or bought during the compactions is there, and is a hit.
    let calls = env.stub.calls();
    for i in 0..80 {
        assert_eq!(env.chat(KEY_A, &format!("seg {}", i * 3)).await.cache(), "HIT");
    }
    for n in 0..misses.load(Ordering::Relaxed) {
        assert_eq!(env.chat(KEY_A, &format!("new {n}")).await.cache(), "HIT", "new {n}");
    }
    assert_eq!(env.stub.calls(), calls, "nothing bought twice");
    // The audit, a CLI process reading beside the gateway, finds nothing wrong.
    let (code, report) = env.cli_json(&["audit", "--check", "artifact-integrity"]);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_byte_in_a_segment_is_found_and_never_served() {
    let env = segmented_env().await;
    let mut keys = Vec::new();
    for i in 0..20 {
        let r = env.chat(KEY_A, &format!("damage {i}")).await;
        assert_eq!(r.cache(), "MISS");
        keys.push(r.header("x-recache-key").to_string());
    }
    let entry = env.admin_entry(&keys[7]).await;
    let artifact = entry["entry"]["artifact"].as_str().unwrap().to_string();
    env.flip_artifact_byte(&artifact, 300).await;
    let (code, report) = env.cli_json(&["audit", "--check", "artifact-integrity"]);
    assert_eq!(code, 1, "{report}");
    let found: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "corrupt_artifact")
        .collect();
    assert_eq!(found.len(), 1, "{report}");
    assert_eq!(found[0]["artifact"], artifact.as_str());
    let calls = env.stub.calls();
    let again = env.chat(KEY_A, "damage 7").await;
    assert_eq!((again.status, again.cache()), (200, "MISS"), "never served");
    assert_eq!(env.stub.calls(), calls + 1);
    for i in (0..20).filter(|i| *i != 7) {
        assert_eq!(
            env.chat(KEY_A, &format!("damage {i}")).await.cache(),
            "HIT",
            "its neighbours are intact"
        );
    }
}
