//! Bulk purge and erasure (issue 26), on the embedded engines and on Redis +
//! S3 + PostgreSQL: a purge by namespace takes that namespace out of every
//! store and leaves the other namespace and the other tenant alone; a purge
//! killed with `kill -9` is finished by running it again; an erased tenant's
//! entries in a set taken before the erasure are not restored, and are
//! reported, while every other tenant's are hits.

mod common;

use std::time::Duration;

use common::backups::{setup_with, Kind};
use common::{until, Backends, Env, KEY_A, KEY_B};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

on_both_backends!(purge_by_namespace_leaves_the_rest);
on_both_backends!(a_killed_purge_resumes_and_finishes);
on_both!(erased_tenant_is_not_restored_from_an_older_set);

/// 32 bytes, base64: the test's master key.
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

const QUESTIONS: [&str; 4] = [
    "How do I reset my password?",
    "What is the boiling point of water at sea level?",
    "Recommend a good book about Roman history.",
    "How many legs does a spider have?",
];
const PARAPHRASE: &str = "How can I reset my password?";

fn semantic_toml() -> String {
    let model = common::engines::model_dir().expect("the embedding model (bash scripts/fetch-model.sh)");
    format!(
        "[semantic]\nembed_timeout_ms = 10000\n[semantic.embedders.local]\nkind = \"local\"\npath = \"{}\"\n\
         [[semantic.rules]]\ntenant = \"team-a\"\nenabled = true\n[[semantic.rules]]\ntenant = \"team-b\"\nenabled = true\n",
        model.display()
    )
}

async fn ask(env: &Env, key: &str, namespace: &str, q: &str) -> common::Resp {
    let r = env
        .post(
            "/v1/chat/completions",
            Some(key),
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}]}),
            &[("x-recache-namespace", namespace)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

/// Rows of metadata's entries that `filter` (an SQL condition) takes.
async fn rows(env: &Env, filter: &str) -> u64 {
    env.metadata_count(&format!("entries WHERE {filter}")).await as u64
}

async fn purge_by_namespace_leaves_the_rest(b: Backends) {
    let env = Env::on_with(
        b,
        StubConfig::default(),
        &semantic_toml(),
        &[("RECACHE_VECTORS__ENGINE", "embedded")],
    )
    .await;
    // team-a: three questions in "alpha", two in "beta"; team-b: two in "alpha".
    let mut keys = Vec::new();
    for (key, ns, qs) in [
        (KEY_A, "alpha", &QUESTIONS[..3]),
        (KEY_A, "beta", &QUESTIONS[2..]),
        (KEY_B, "alpha", &QUESTIONS[..2]),
    ] {
        for q in qs {
            let r = ask(&env, key, ns, q).await;
            assert_eq!(r.cache(), "MISS");
            keys.push(r.header("x-recache-key").to_string());
        }
    }
    for k in &keys {
        until(Duration::from_secs(20), "every entry registered", async || {
            env.admin_entry(k).await["indexed"] == Value::Bool(true)
        })
        .await;
    }
    // The paraphrase is a semantic hit for both tenants: the vectors are there.
    for key in [KEY_A, KEY_B] {
        assert_eq!(ask(&env, key, "alpha", PARAPHRASE).await.cache(), "SEMANTIC_HIT");
    }
    let artifacts = env.raw_artifacts();
    assert_eq!(artifacts.list().await.unwrap().len(), 7);

    // A dry run counts and changes nothing.
    let (code, dry, err) = env
        .cli_async(
            &["purge", "--tenant", "team-a", "--namespace", "alpha", "--dry-run"],
            &[],
        )
        .await;
    assert_eq!(code, 0, "{dry} {err}");
    assert_eq!(
        (dry["entries"].as_u64(), dry["dry_run"].as_bool()),
        (Some(3), Some(true)),
        "{dry}"
    );
    assert_eq!(rows(&env, "tenant = 'team-a' AND namespace = 'alpha'").await, 3);
    // Bad input: a clear error, exit 2.
    let (code, _, err) = env
        .cli_async(&["purge", "--tenant", "team-a", "--key-prefix", "xyz"], &[])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("hex digits"), "{err}");
    let refused = env
        .http
        .delete(format!("{}/admin/entries?namespace=alpha", env.base))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400, "a purge needs a tenant");

    // The purge, through the admin API (this gateway's workers run it).
    let resp = env
        .http
        .delete(format!("{}/admin/entries?tenant=team-a&namespace=alpha", env.base))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job = resp.json::<Value>().await.unwrap()["job"].as_i64().unwrap();
    let mut result = Value::Null;
    until(Duration::from_secs(30), "the purge job to succeed", async || {
        let jobs = env.admin_json("/admin/jobs?limit=50").await;
        let j = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == job)
            .cloned();
        match j {
            Some(j) if j["state"] == "succeeded" => {
                result = j["result"].clone();
                true
            }
            Some(j) => {
                assert_ne!(j["state"], "dead", "{j}");
                false
            }
            None => false,
        }
    })
    .await;
    for store in ["index", "vectors", "artifacts", "metadata"] {
        assert_eq!(result[store], 3, "{store}: {result}");
    }
    // Every store: the namespace is gone, the rest is there.
    assert_eq!(rows(&env, "tenant = 'team-a' AND namespace = 'alpha'").await, 0);
    assert_eq!(rows(&env, "tenant = 'team-a' AND namespace = 'beta'").await, 2);
    assert_eq!(rows(&env, "tenant = 'team-b'").await, 2);
    assert_eq!(artifacts.list().await.unwrap().len(), 4);
    assert_eq!(
        ask(&env, KEY_A, "alpha", PARAPHRASE).await.cache(),
        "MISS",
        "its vector is gone"
    );
    assert_eq!(ask(&env, KEY_A, "alpha", QUESTIONS[1]).await.cache(), "MISS");
    for q in &QUESTIONS[2..] {
        assert_eq!(ask(&env, KEY_A, "beta", q).await.cache(), "HIT");
    }
    assert_eq!(ask(&env, KEY_B, "alpha", QUESTIONS[0]).await.cache(), "HIT");
    assert_eq!(ask(&env, KEY_B, "alpha", PARAPHRASE).await.cache(), "SEMANTIC_HIT");
    // The audit log keeps the fact, not the content.
    let audit = env.admin_json("/admin/audit?limit=200").await.to_string();
    assert!(audit.contains("\"purge\""), "{audit}");
    assert!(!audit.contains("boiling"), "no question text in the audit log");
}

async fn a_killed_purge_resumes_and_finishes(b: Backends) {
    const N: u64 = 3000;
    let settings = "[warmer]\nheartbeat_ms = 300\npoll_ms = 50\n";
    let mut env = Env::on(b, StubConfig::default(), settings).await;
    // The gateway stops: the purge runs in the CLI process, which is killed.
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
    let others = rows(&env, "tenant <> 'bulk'").await;
    assert_eq!(rows(&env, "tenant = 'bulk'").await, N);
    let purge = |log: &str| env.spawn_cli(&["purge", "--tenant", "bulk", "--page-size", "10"], &[], log);
    let mut first = purge("purge-1.log");
    until(Duration::from_secs(60), "the purge to be under way", async || {
        assert!(first.try_wait().unwrap().is_none(), "the purge ended before the kill");
        rows(&env, "tenant = 'bulk'").await <= N - 200
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let left = rows(&env, "tenant = 'bulk'").await;
    assert!(left > 0, "killed mid-way: {left} entries left");

    // The same command again joins the job and finishes it.
    let second = purge("purge-2.log");
    let out = tokio::task::spawn_blocking(move || second.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = std::fs::read_to_string(env.path("purge-2.log")).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("joining job"), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows(&env, "tenant = 'bulk'").await, 0, "{v}");
    assert_eq!(rows(&env, "tenant <> 'bulk'").await, others);
    let scanned = v["entries"].as_u64().unwrap();
    assert!((N - 10..=N).contains(&scanned), "the counts carry over the kill: {v}");
    // One job, taken over once: its second attempt finished it.
    let jobs = env.metadata_count("jobs WHERE kind = 'purge'").await;
    let taken_over = env
        .metadata_count("jobs WHERE kind = 'purge' AND state = 'succeeded' AND attempts = 2")
        .await;
    assert_eq!((jobs, taken_over), (1, 1), "{v}");
    let left = env.raw_artifacts().list().await.unwrap().len() as u64;
    assert!(left <= others, "{left} artifacts left");
}

/// Erasure reaches the backups: a set taken before the erasure, restored into
/// empty stores, gives back every other tenant's entries and none of the
/// erased tenant's, which are counted as unreadable.
async fn erased_tenant_is_not_restored_from_an_older_set(kind: Kind) {
    let more = "[encryption]\nmaster_key_env = \"RECACHE_TEST_MASTER_KEY\"";
    let Some(mut b) = setup_with(kind, more, &[("RECACHE_TEST_MASTER_KEY", MASTER)]).await else {
        return;
    };
    assert!(b.chats(0, 3).await.iter().all(|s| s == "MISS"));
    let mut keys = Vec::new();
    for q in &QUESTIONS[..2] {
        let r = b.env.chat(KEY_B, q).await;
        assert_eq!(r.cache(), "MISS");
        keys.push(r.header("x-recache-key").to_string());
    }
    b.settle(&keys).await;
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "create: {v} {err}");
    assert_eq!(
        v["verified"]["ok"], true,
        "a sealed set test-restores with the master key: {v}"
    );

    let (code, _, err) = b.cli(&["erase", "--tenant", "team-a", "--confirm", "team-b"]).await;
    assert_eq!(code, 2, "a confirmation that differs is refused: {err}");
    let (code, e, err) = b.cli(&["erase", "--tenant", "team-a", "--confirm", "team-a"]).await;
    assert_eq!(code, 0, "erase: {e} {err}");
    assert_eq!(e["metadata"], 3, "{e}");
    assert!(e["data_keys_destroyed"].as_u64().unwrap() >= 1, "{e}");
    assert_eq!(e["key_files"].as_object().unwrap().len(), 2, "primary and DR: {e}");
    // Both key files hold team-a's keys destroyed, team-b's whole.
    for root in [&b.primary, &b.dr] {
        let text = std::fs::read_to_string(root.join("keys/data-keys.jsonl")).unwrap();
        let keys: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(keys.iter().any(|k| k["tenant"] == "team-a"), "{text}");
        for k in &keys {
            assert_eq!(k["tenant"] == "team-a", k["wrapped"] == "", "{text}");
        }
    }
    let audit = b.env.admin_json("/admin/audit?limit=50").await.to_string();
    assert!(audit.contains("\"erase\""), "the fact of the erasure is kept: {audit}");

    // The set from before the erasure, into empty stores.
    b.wipe().await;
    let (code, r, err) = b.cli(&["backup", "restore", "--latest"]).await;
    assert_eq!(code, 0, "restore: {r} {err}");
    assert_eq!(r["entries_unreadable"], 3, "{r}");
    assert_eq!(r["unreadable_tenants"]["team-a"], 3, "{r}");
    b.env.start().await;
    let calls = b.env.stub.calls();
    for q in &QUESTIONS[..2] {
        assert_eq!(b.env.chat(KEY_B, q).await.cache(), "HIT", "team-b is restored");
    }
    assert_eq!(b.env.stub.calls(), calls);
    let a = b.env.chat(KEY_A, "backup question 0").await;
    assert_eq!(a.cache(), "MISS", "team-a's answers are gone for good");
}
