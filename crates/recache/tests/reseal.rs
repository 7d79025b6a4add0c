//! Migration to encryption at rest (issue 26), on the embedded engines and
//! on Redis + S3 + PostgreSQL: answers stored in plain text before a master
//! key was configured are served as they are once it is, and `recache
//! encryption reseal` seals them in place (artifacts and stored requests),
//! keeping their hit counts and serving them as hits throughout; a second
//! run finds nothing to do; after a tenant's rotation it moves the tenant's
//! answers to the new key; a reseal killed with `kill -9` is finished by
//! running it again, leaving no plain artifact behind.

mod common;

use std::time::Duration;

use common::{until, Backends, Env, KEY_A};
use recache::seal;
use recache_stub_provider::StubConfig;
use serde_json::Value;

on_both_backends!(plain_answers_are_sealed_in_place);
on_both_backends!(a_killed_reseal_resumes_and_finishes);

/// 32 bytes, base64: the test's master key.
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const ENCRYPTION: &str = "[encryption]\nmaster_key_env = \"RECACHE_TEST_MASTER_KEY\"\n";
const WARMER: &str = "[warmer]\npoll_ms = 50\nheartbeat_ms = 300\n";

fn vars() -> Vec<(String, String)> {
    vec![("RECACHE_TEST_MASTER_KEY".into(), MASTER.into())]
}

/// (artifacts in all, of which sealed, of which hold `needle`).
async fn raw_census(env: &Env, needle: &str) -> (usize, usize, usize) {
    use futures_util::StreamExt;
    let store = env.raw_artifacts();
    let ids: Vec<_> = store.list().await.unwrap().into_iter().map(|a| a.id).collect();
    let store = &store;
    let raws: Vec<_> = futures_util::stream::iter(ids)
        .map(|id| async move { store.get(id).await.unwrap() })
        .buffer_unordered(32)
        .collect()
        .await;
    let raws: Vec<_> = raws.into_iter().flatten().collect();
    let sealed = raws.iter().filter(|r| seal::is_sealed(r)).count();
    let plain = raws
        .iter()
        .filter(|r| r.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .count();
    (raws.len(), sealed, plain)
}

async fn plain_answers_are_sealed_in_place(b: Backends) {
    let overrides = [
        ("RECACHE_TEST_MASTER_KEY", MASTER),
        ("RECACHE_ARTIFACTS__MEMORY_CACHE_MB", "0"),
    ];
    let mut env = Env::on_with(b, StubConfig::default(), WARMER, &overrides).await;
    let needle = format!("walrus-{}", recache::roles::now_ms());
    let prompts: Vec<String> = (0..5).map(|i| format!("reseal {needle} number {i}")).collect();
    for p in &prompts {
        assert_eq!(env.chat(KEY_A, p).await.cache(), "MISS");
    }
    for p in &prompts {
        until(Duration::from_secs(10), "stored", async || {
            env.chat(KEY_A, p).await.cache() == "HIT"
        })
        .await;
    }
    assert_eq!(raw_census(&env, &needle).await, (5, 0, 5), "stored in plain text");
    let (code, v, err) = env.cli_async(&["encryption", "reseal"], &[]).await;
    assert_eq!(code, 2, "no master key configured: {v} {err}");
    assert!(err.contains("master key"), "{err}");

    // A master key: the plain answers are still served (both forms are read).
    env.set_extra(&format!("{WARMER}{ENCRYPTION}"));
    env.restart().await;
    assert_eq!(env.chat(KEY_A, &prompts[0]).await.cache(), "HIT");
    until(Duration::from_secs(10), "hit counts recorded", async || {
        env.metadata_count("entries WHERE hit_count >= 1").await == 5
    })
    .await;
    let calls = env.stub.calls();
    let (code, v, err) = env.cli_async(&["encryption", "reseal"], &vars()).await;
    assert_eq!(code, 0, "reseal: {v} {err}");
    assert_eq!(
        (v["resealed"].as_u64(), v["already_sealed"].as_u64()),
        (Some(5), Some(0)),
        "{v}"
    );
    assert_eq!(v["old_deleted"], 5, "{v}");
    assert_eq!(
        raw_census(&env, &needle).await,
        (5, 5, 0),
        "sealed in place, no plain copy left"
    );
    assert_eq!(
        env.metadata_count(&format!("entries WHERE request_json LIKE '%{needle}%'"))
            .await,
        0,
        "no stored request in plain text"
    );
    assert_eq!(env.metadata_count("entries WHERE request_json LIKE 'rce1:%'").await, 5);
    assert_eq!(
        env.metadata_count("entries WHERE hit_count >= 1").await,
        5,
        "hit counts are kept"
    );
    for p in &prompts {
        let r = env.chat(KEY_A, p).await;
        assert_eq!(r.cache(), "HIT", "{}", r.text);
    }
    assert_eq!(env.stub.calls(), calls, "nothing bought again");
    let audit = env.admin_json("/admin/audit?limit=50").await.to_string();
    assert!(audit.contains("encryption.reseal"), "{audit}");
    assert!(!audit.contains(&needle), "no content in the audit log");

    // Again: nothing to do.
    let (code, v, err) = env.cli_async(&["encryption", "reseal"], &vars()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (v["resealed"].as_u64(), v["already_sealed"].as_u64()),
        (Some(0), Some(5)),
        "{v}"
    );

    // After a tenant's rotation, its answers move to the new key.
    let (code, rot, err) = env
        .cli_async(&["encryption", "rotate-tenant", "--tenant", "team-a"], &vars())
        .await;
    assert_eq!(code, 0, "{rot} {err}");
    let new_key = rot["key"].as_str().unwrap().to_string();
    let (code, v, err) = env
        .cli_async(&["encryption", "reseal", "--tenant", "team-a"], &vars())
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["resealed"], 5, "{v}");
    let store = env.raw_artifacts();
    for a in store.list().await.unwrap() {
        let raw = store.get(a.id).await.unwrap().unwrap();
        assert_eq!(seal::key_id_of(&raw).unwrap(), new_key);
    }
    for p in &prompts {
        assert_eq!(env.chat(KEY_A, p).await.cache(), "HIT");
    }
    let (code, out, err) = env
        .cli_async(&["audit", "--check", "artifact-integrity"], &vars())
        .await;
    assert_eq!(code, 0, "audit after the reseal: {out} {err}");
}

async fn a_killed_reseal_resumes_and_finishes(b: Backends) {
    const N: u64 = 1500;
    let mut env = Env::on_with(b, StubConfig::default(), WARMER, &[("RECACHE_TEST_MASTER_KEY", MASTER)]).await;
    // The gateway stops: the reseal runs in the CLI process, which is killed.
    if let Some(gw) = env.gw.take() {
        gw.shutdown().await;
    }
    let (code, _, err) = env.cli(&[
        "bench",
        "seed",
        "--artifacts",
        "--tenant",
        "bulk",
        "--entries",
        &N.to_string(),
    ]);
    assert_eq!(code, 0, "seed: {err}");
    env.set_extra(&format!("{WARMER}{ENCRYPTION}"));
    let sealed = async || env.metadata_count("entries WHERE request_json LIKE 'rce1:%'").await as u64;
    let reseal = |log: &str| {
        env.spawn_cli(
            &["encryption", "reseal", "--page-size", "10"],
            &[("RECACHE_TEST_MASTER_KEY", MASTER)],
            log,
        )
    };
    let mut first = reseal("reseal-1.log");
    until(Duration::from_secs(60), "the reseal to be under way", async || {
        assert!(first.try_wait().unwrap().is_none(), "the reseal ended before the kill");
        sealed().await >= 200
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let done = sealed().await;
    assert!(done < N, "killed mid-way: {done} sealed");

    let second = reseal("reseal-2.log");
    let out = tokio::task::spawn_blocking(move || second.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = std::fs::read_to_string(env.path("reseal-2.log")).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("joining job"), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("the second run: {v}");
    assert_eq!(sealed().await, N, "every stored request sealed: {v}");
    let resealed = v["resealed"].as_u64().unwrap() + v["already_sealed"].as_u64().unwrap();
    assert!((N..=N + 10).contains(&resealed), "the counts carry over the kill: {v}");
    // Every artifact is sealed, and there is one per entry: no plain copy
    // (and no stray sealed one) left by the kill.
    let (all, sealed_artifacts, _) = raw_census(&env, "seed 1").await;
    assert_eq!(sealed_artifacts, all, "no plain artifact left: {v}");
    assert!(
        (N as usize..=N as usize + 10).contains(&all),
        "{all} artifacts for {N} entries: {v}"
    );
    let taken_over = env
        .metadata_count("jobs WHERE kind = 'reseal' AND state = 'succeeded' AND attempts = 2")
        .await;
    assert_eq!(taken_over, 1, "{v}");
    // Served after all that: the index is rebuilt from metadata and a seeded entry is a hit.
    env.start().await;
    let (code, r, err) = env
        .cli_async(&["audit", "--check", "artifact-integrity"], &vars())
        .await;
    assert_eq!(code, 0, "audit: {r} {err}");
}
