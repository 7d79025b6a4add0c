//! Backups on real engines (Redis + S3 + PostgreSQL as the source, a second
//! S3 server as the backup target, a third as the DR target) and on the
//! embedded engines (local directory targets): restore after every store is
//! wiped, incremental copies, damage detection, retention and pool GC,
//! `kill -9` mid-backup, a target failing mid-backup, the DR copy.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::backups::{extra, setup, walk, Bk, Kind};
use common::{Backends, Env};
use recache_stub_provider::StubConfig;
use serde_json::Value;

/// `recache bench seed --artifacts` of `n` entries for team-a into the config's stores.
fn seed(cfg: &Path, n: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args([
            "bench",
            "seed",
            "--artifacts",
            "--tenant",
            "team-a",
            "--entries",
            n,
            "--config",
        ])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `recache backup create` in the background (stderr captured).
fn spawn_create(cfg: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args(["backup", "create", "--format", "json", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

impl Bk {
    /// Waits until the backup in progress has copied `n` artifacts into the pool.
    async fn wait_pool(&self, n: usize, child: &mut std::process::Child) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.pool_files(&self.primary).len() < n {
            assert!(std::time::Instant::now() < deadline, "the backup never started copying");
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                let copied = self.pool_files(&self.primary).len();
                panic!("the backup finished before the fault ({status}; {copied} artifacts in the pool): {err}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn flip_byte(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    std::fs::write(p, b).unwrap();
}

/// 1 and 6: create, wipe every store, restore: every entry a HIT with zero
/// provider calls, audit clean; the DR copy verifies on its own.
async fn restore_after_wipe(kind: Kind) {
    let Some(mut b) = setup(kind, "").await else { return };
    assert!(b.chats(0, 12).await.iter().all(|s| s == "MISS"));
    let calls = b.env.stub.calls();
    assert_eq!(calls, 12);
    // A client key of metadata: the set carries its digest, never the key.
    let (code, made, err) = b
        .cli(&["keys", "create", "--tenant", "team-a", "--name", "backed-up"])
        .await;
    assert_eq!(code, 0, "{made} {err}");
    let key = made["key"].as_str().unwrap().to_string();
    // With the gateway running (on embedded engines its workers take the backup).
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "create: {v} {err}");
    assert_eq!(v["entries"], 13, "12 entries and the canary: {v}");
    assert_eq!(v["copied"], 12, "{v}");
    assert_eq!(v["verified"]["ok"], true, "{v}");
    assert_eq!(v["verified"]["canary"], true, "{v}");
    assert_eq!(v["dr"]["verified"]["ok"], true, "{v}");
    let set = v["set"].as_str().unwrap().to_string();

    b.wipe().await;
    // Restore into the empty stores, gateway stopped.
    let (code, r, err) = b.cli(&["backup", "restore", "--latest"]).await;
    assert_eq!(code, 0, "restore: {r} {err}");
    assert_eq!(r["set"], set.as_str());
    assert_eq!(r["entries_written"], 13, "{r}");
    assert_eq!(r["artifacts_copied"], 13, "{r}");
    assert_eq!(
        (r["keys"].as_u64(), r["keys_present"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert!(r["usage_rows"].as_u64().unwrap() >= 1, "usage_hourly comes back: {r}");
    assert!(r["seconds"].as_f64().unwrap() > 0.0);
    // A second restore over the now non-empty stores is refused without --force.
    let (code, _, err) = b.cli(&["backup", "restore", &set]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not empty") && err.contains("--force"), "{err}");

    b.env.start().await;
    let statuses = b.chats(0, 12).await;
    assert!(statuses.iter().all(|s| s == "HIT"), "after restore: {statuses:?}");
    assert_eq!(b.env.stub.calls(), calls, "no provider call after the restore");
    let restored = b.env.chat(&key, "backup question 0").await;
    assert_eq!(
        (restored.status, restored.cache()),
        (200, "HIT"),
        "the restored key works"
    );
    let (code, a, err) = b.cli(&["audit", "--check", "all"]).await;
    assert_eq!(code, 0, "audit after restore: {a} {err}");

    // 6: the DR copy exists and verifies on its own, down to a test restore.
    assert!(b.dr.join("sets").join(&set).join("manifest.json").exists());
    let (code, v, err) = b.cli(&["backup", "verify", "--dr", &set, "--level", "restore"]).await;
    assert_eq!(code, 0, "DR verify: {v} {err}");
    assert_eq!(v["target"], "dr");
    assert_eq!(v["restored_entries"], 13);
    let (code, l, _) = b.cli(&["backup", "list"]).await;
    assert_eq!(code, 0);
    assert_eq!(l["sets"][0]["dr"], "verified", "{l}");
}
on_both!(restore_after_wipe);

/// 2: a second backup after N new entries copies exactly N new artifacts.
async fn incremental(kind: Kind) {
    let Some(b) = setup(kind, "verify_after_create = false").await else {
        return;
    };
    b.chats(0, 10).await;
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(
        (v["kind"].as_str(), v["copied"].as_u64()),
        (Some("full"), Some(10)),
        "{v}"
    );
    b.chats(10, 17).await;
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["kind"], "incremental", "{v}");
    assert_eq!(v["copied"], 7, "exactly the new artifacts: {v}");
    assert_eq!(v["reused"], 10, "{v}");
    // An artifact that vanished from the pool is copied again, not referenced blindly.
    // (An entry's artifact, not a canary: earlier sets' canaries are referenced by no new set.)
    let pool = b.pool_files(&b.primary);
    let victim = pool
        .iter()
        .find(|p| !String::from_utf8_lossy(&std::fs::read(p).unwrap()).contains("_recache"))
        .unwrap();
    std::fs::remove_file(victim).unwrap();
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["copied"], 1, "the vanished artifact is uploaded again: {v}");
    let (code, v, _) = b.cli(&["backup", "verify", "--latest", "--level", "read-data"]).await;
    assert_eq!(code, 0, "{v}");
}
on_both!(incremental);

/// 3: one flipped byte in any file of a set, or in a pooled artifact, is found and named.
async fn damage_is_detected(kind: Kind) {
    let Some(b) = setup(kind, "verify_after_create = false").await else {
        return;
    };
    b.chats(0, 6).await;
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    let set = v["set"].as_str().unwrap().to_string();
    let files = b.set_files(&b.primary, &set);
    assert!(files.len() >= 5, "entries, audit, jobs, pointers, artifacts: {files:?}");
    for f in &files {
        let original = std::fs::read(f).unwrap();
        flip_byte(f);
        let name = f.file_name().unwrap().to_str().unwrap();
        let (code, v, err) = b.cli(&["backup", "verify", &set, "--level", "structure"]).await;
        assert_eq!(code, 1, "a flipped byte in {name} must fail verify: {v} {err}");
        assert!(v["problems"].to_string().contains(name), "names {name}: {v}");
        std::fs::write(f, original).unwrap();
    }
    // A damaged manifest is detected too (its copy is intact).
    let manifest = b.primary.join("sets").join(&set).join("manifest.json");
    let original = std::fs::read(&manifest).unwrap();
    flip_byte(&manifest);
    let (code, v, _) = b.cli(&["backup", "verify", &set, "--level", "structure"]).await;
    assert_eq!(code, 1);
    assert!(v["problems"].to_string().contains("manifest"), "{v}");
    std::fs::write(&manifest, original).unwrap();
    let (code, v, _) = b.cli(&["backup", "verify", &set, "--level", "structure"]).await;
    assert_eq!(code, 0, "{v}");

    // A pooled artifact with one flipped byte: found by reading it, and named.
    let pool = b.pool_files(&b.primary);
    let victim = &pool[2];
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    flip_byte(victim);
    let (code, v, _) = b.cli(&["backup", "verify", &set]).await;
    assert_eq!(code, 1, "{v}");
    assert!(v["problems"].to_string().contains(&name), "names the artifact: {v}");
    // The failed verification is on record: restore refuses the set without --force.
    let mut b = b;
    b.wipe().await;
    let (code, _, err) = b.cli(&["backup", "restore", &set]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("failed its last verification") && err.contains("--force"),
        "{err}"
    );
}
on_both!(damage_is_detected);

/// 4: retention keeps what the rules say; GC removes only unreferenced artifacts.
async fn retention_and_gc(kind: Kind) {
    let Some(b) = setup(
        kind,
        "keep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\nverify_after_create = false",
    )
    .await
    else {
        return;
    };
    let keys: Vec<String> = {
        let mut k = Vec::new();
        for i in 0..4 {
            let r = b.env.chat(common::KEY_A, &format!("retained {i}")).await;
            k.push(r.header("x-recache-key").to_string());
        }
        b.settle(&k).await;
        k
    };
    let mut sets = Vec::new();
    let (_, manual, _) = b.cli(&["backup", "create"]).await;
    sets.push(manual["set"].as_str().unwrap().to_string());
    // Delete one entry: only the manual set and the first scheduled one still refer to its artifact.
    let (_, s1, _) = b.cli(&["backup", "create", "--scheduled"]).await;
    sets.push(s1["set"].as_str().unwrap().to_string());
    let r = b
        .env
        .http
        .delete(format!("{}/admin/entries/{}", b.env.base, keys[0]))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for _ in 0..3 {
        let (code, s, err) = b.cli(&["backup", "create", "--scheduled"]).await;
        assert_eq!(code, 0, "{s} {err}");
        sets.push(s["set"].as_str().unwrap().to_string());
    }
    let pool_before = b.pool_files(&b.primary).len();
    let (code, d, _) = b.cli(&["backup", "prune", "--dry-run"]).await;
    assert_eq!(code, 0);
    let keep: Vec<(String, bool)> = d["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["set"].as_str().unwrap().to_string(), x["keep"].as_bool().unwrap()))
        .collect();
    // Manual kept; of four scheduled, the newest two kept.
    let kept = |id: &str| keep.iter().find(|(s, _)| s == id).map(|(_, k)| *k);
    assert_eq!(kept(&sets[0]), Some(true), "manual: {d}");
    assert_eq!(kept(&sets[1]), Some(false), "{d}");
    assert_eq!(kept(&sets[2]), Some(false), "{d}");
    assert_eq!((kept(&sets[3]), kept(&sets[4])), (Some(true), Some(true)), "{d}");
    assert_eq!(
        d["pool_deleted"], 2,
        "the two deleted sets' canaries; the manual set still refers to the entry: {d}"
    );
    assert_eq!(b.pool_files(&b.primary).len(), pool_before, "a dry run deletes nothing");
    // Delete the manual set by hand (it is never pruned), then prune for real.
    let _ = std::fs::remove_dir_all(b.primary.join("sets").join(&sets[0]));
    let (code, d, _) = b.cli(&["backup", "prune"]).await;
    assert_eq!(code, 0);
    assert_eq!(d["sets_deleted"], 2, "{d}");
    // Three canaries (the manual set's too) and the deleted entry's artifact.
    assert_eq!(d["pool_deleted"], 4, "{d}");
    assert_eq!(b.pool_files(&b.primary).len(), pool_before - 4);
    let (code, l, _) = b.cli(&["backup", "list"]).await;
    assert_eq!(code, 0);
    assert_eq!(l["sets"].as_array().unwrap().len(), 2, "{l}");
    // What remains still verifies down to a test restore.
    let (code, v, _) = b.cli(&["backup", "verify", "--latest"]).await;
    assert_eq!(code, 0, "{v}");
}
on_both!(retention_and_gc);

/// 5: `kill -9` during `backup create` leaves nothing listed as complete; the
/// next create succeeds and reuses what was already copied.
async fn kill9_mid_backup(kind: Kind) {
    let Some(mut b) = setup(kind, "verify_after_create = false\nparallel = 2").await else {
        return;
    };
    b.stop().await;
    // Enough entries that the copy takes a while.
    let n = if kind == Kind::Real { "1500" } else { "20000" };
    let cfg = b.env.config_file();
    seed(&cfg, n);
    let mut child = spawn_create(&cfg);
    // Wait until it is copying artifacts, then kill it.
    b.wait_pool(200, &mut child).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let copied_before = b.pool_files(&b.primary).len() as u64;
    let (code, l, _) = b.cli(&["backup", "list"]).await;
    assert_eq!(code, 0);
    assert!(l["sets"].as_array().unwrap().is_empty(), "nothing complete: {l}");
    assert_eq!(l["unfinished"].as_array().unwrap().len(), 1, "{l}");
    let (code, v, _) = b.cli(&["backup", "verify", "--latest"]).await;
    assert_eq!(code, 1, "no complete set to verify: {v}");
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    assert!(
        v["reused"].as_u64().unwrap() + 1 >= copied_before,
        "what the killed run copied is reused: {v} (pool had {copied_before})"
    );
    let (_, l, _) = b.cli(&["backup", "list"]).await;
    assert_eq!(l["sets"].as_array().unwrap().len(), 1, "{l}");
}
on_both!(kill9_mid_backup);

/// A target that fails mid-backup: `backup create` exits non-zero and no
/// complete manifest exists (real engines: the target server is killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_failure_mid_backup() {
    let Some(mut b) = setup(Kind::Real, "verify_after_create = false\nparallel = 2").await else {
        return;
    };
    b.stop().await;
    let cfg = b.env.config_file();
    seed(&cfg, "3000");
    let mut child = spawn_create(&cfg);
    b.wait_pool(100, &mut child).await;
    b._servers[1].kill9();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "a failed target fails the backup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backup target"), "says the target failed: {err}");
    b._servers[1].start();
    let (code, l, _) = b.cli(&["backup", "list"]).await;
    assert_eq!(code, 0, "{l}");
    assert!(l["sets"].as_array().unwrap().is_empty(), "no complete set: {l}");
}

/// Vectors are exported with the set and restored with it: after every store
/// (the vector store too) is wiped and restored, a paraphrase is a semantic
/// hit again with no provider call and no re-embedding of the stored entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vectors_are_exported_and_restored() {
    let Some(model) = common::engines::model_dir() else {
        return;
    };
    let targets = tempfile::tempdir().unwrap();
    let (t, d) = (targets.path().join("primary"), targets.path().join("dr"));
    let semantic = format!(
        "[semantic]\nembed_timeout_ms = 10000\n[semantic.embedders.local]\nkind = \"local\"\npath = \"{}\"\n[[semantic.rules]]\ntenant = \"team-a\"\nenabled = true\n",
        model.display()
    );
    let vars = vec![("RECACHE_VECTORS__ENGINE".to_string(), "embedded".to_string())];
    let env = Env::on_with(
        Backends::Embedded,
        StubConfig::default(),
        &format!(
            "{semantic}{}",
            extra(&t.display().to_string(), &d.display().to_string(), "")
        ),
        &[("RECACHE_VECTORS__ENGINE", "embedded")],
    )
    .await;
    let mut b = Bk {
        env,
        primary: t.join("default"),
        dr: d.join("default"),
        _targets: targets,
        _servers: Vec::new(),
        kind: Kind::Embedded,
        vars,
    };
    let first = b.env.chat(common::KEY_A, "How do I reset my password?").await;
    assert_eq!(first.cache(), "MISS");
    b.settle(&[first.header("x-recache-key").to_string()]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["vectors"], "exported", "{v}");
    b.wipe().await;
    let (code, r, err) = b.cli(&["backup", "restore", "--latest"]).await;
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["vectors"], "restored", "{r}");
    assert_eq!(r["vectors_written"], 1, "{r}");
    b.env.start().await;
    let calls = b.env.stub.calls();
    let para = b.env.chat(common::KEY_A, "How can I reset my password?").await;
    assert_eq!(para.cache(), "SEMANTIC_HIT", "{}", para.text);
    assert_eq!(para.content(), first.content());
    assert_eq!(b.env.stub.calls(), calls, "no provider call");
}

/// `schedule`: `serve` takes backups by itself, and of two replicas sharing
/// the stores only one takes each (the job queue's unique key and lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_one_replica_each() {
    let Some(redis) = common::engines::redis_url() else {
        return;
    };
    let targets = tempfile::tempdir().unwrap();
    let t = targets.path().join("primary");
    let more = "schedule = \"10s\"\nverify_after_create = false";
    let extra = format!(
        "[backup]\ntarget = \"{}\"\n{more}\n[warmer]\npoll_ms = 50\n",
        t.display()
    );
    let backends = Backends::SqliteRedis {
        redis,
        prefix: common::engines::unique("sched"),
    };
    let env = Env::on(backends, StubConfig::default(), &extra).await;
    let token: std::collections::HashMap<String, String> =
        [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
    let second = recache::server::Gateway::start(env.config(), &token).await.unwrap();
    let r = env.chat(common::KEY_A, "scheduled question").await;
    assert_eq!(r.status, 200);
    let sets = || -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&t.join("default/sets"), &mut out);
        out.retain(|p| p.ends_with("manifest.json"));
        out
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sets().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no scheduled backup within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both replicas look every 2.5 s; for the rest of the interval no second set appears.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let found = sets();
    assert_eq!(found.len(), 1, "one set per interval among two replicas: {found:?}");
    let m: Value = serde_json::from_slice(&std::fs::read(&found[0]).unwrap()).unwrap();
    assert_eq!(m["manifest"]["trigger"], "scheduled");
    second.shutdown().await;
}

/// A running gateway keeps serving while a restore runs underneath it (real
/// engines: the CLI writes to the same Redis, S3 and PostgreSQL): no client
/// error at any point, misses go to the provider until the index is written,
/// and afterwards every restored prompt is a HIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_under_live_traffic() {
    let Some(mut b) = setup(Kind::Real, "verify_after_create = false").await else {
        return;
    };
    b.chats(0, 10).await;
    let (code, v, err) = b.cli(&["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    b.wipe().await;
    b.env.start().await;
    // Traffic on other prompts for as long as the restore runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (http, base, flag) = (b.env.http.clone(), b.env.base.clone(), stop.clone());
    let load = tokio::spawn(async move {
        let (mut ok, mut bad, mut i) = (0u32, 0u32, 0u32);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(common::KEY_A)
                .json(&common::chat_body(&format!("live traffic {}", i % 20), false))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => ok += 1,
                _ => bad += 1,
            }
            i += 1;
        }
        (ok, bad)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The live traffic has written entries by now: the restore needs --force.
    let (code, r, err) = b.cli(&["backup", "restore", "--latest", "--force"]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = load.await.unwrap();
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(bad, 0, "no client-visible error during the restore ({ok} answered)");
    assert!(ok > 0);
    let calls = b.env.stub.calls();
    let statuses = b.chats(0, 10).await;
    assert!(statuses.iter().all(|s| s == "HIT"), "{statuses:?}");
    assert_eq!(b.env.stub.calls(), calls);
}
