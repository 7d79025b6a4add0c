//! Regression tests for the security review of issue 22, one per finding
//! (the finding's name leads each test's comment). Each one failed on the
//! code the review read and passes since; `docs/operations.md` ("Security")
//! says what each fix chose.

mod common;

use std::path::{Path, PathBuf};

use common::{Backends, Env, KEY_A};
use recache::backup::Manifest;
use recache_stub_provider::StubConfig;
use serde_json::Value;

/// Runs the CLI off the runtime's threads (on embedded stores a backup job is
/// handed to the running gateway's workers and waited for).
async fn cli(env: &Env, args: &[&str]) -> (i32, Value, String) {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["--format".into(), "json".into()]);
    let cfg = env.config_file();
    let out = tokio::task::spawn_blocking({
        let vars: Vec<(String, String)> = vec![
            ("RUST_LOG".into(), "warn".into()),
            ("RECACHE_ADMIN_TOKEN".into(), "admin-secret".into()),
        ];
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
                .args(&a)
                .arg("--config")
                .arg(cfg)
                .envs(vars)
                .envs(SIGNING_ENV.iter().copied())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// The signing key's variable, set for every CLI run (only configs that name it read it).
const SIGNING_ENV: &[(&str, &str)] = &[("BACKUP_SIGNING_KEY", "0123456789abcdef0123456789abcdef-test")];

/// A gateway on embedded stores with a local backup target at `target`.
async fn with_target(target: &Path, more: &str) -> Env {
    let extra = format!(
        "[backup]\ntarget = \"{}\"\nprune_grace = \"0s\"\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n{more}\n[warmer]\npoll_ms = 50\n",
        target.display()
    );
    Env::on_with(Backends::Embedded, StubConfig::default(), &extra, SIGNING_ENV).await
}

/// Writes `m` as a set's manifest (both copies), signed with `key` when given.
fn plant(dir: &Path, m: &Manifest, key: Option<&[u8]>) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = m.encode_signed(key);
    std::fs::write(dir.join("manifest.json"), &bytes).unwrap();
    std::fs::write(dir.join("manifest.copy.json"), &bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn read_manifest(set_dir: &Path) -> Manifest {
    Manifest::decode(&std::fs::read(set_dir.join("manifest.json")).unwrap()).unwrap()
}

/// H1: a manifest whose `id` leads out of the target (`../../../victim`), or
/// a set folder that is a link to elsewhere, makes `backup prune` delete
/// nothing outside the target; prune names the set and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_never_deletes_outside_the_target() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("target");
    let env = with_target(&target, "verify_after_create = false").await;
    assert_eq!(env.chat(KEY_A, "h1").await.status, 200);
    let (code, v, err) = cli(&env, &["backup", "create", "--scheduled"]).await;
    assert_eq!(code, 0, "{v} {err}");
    let real = v["set"].as_str().unwrap().to_string();
    let sets = target.join("default/sets");

    // The victims: directories beside the target, each with a file.
    let victim = outside.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"keep me").unwrap();
    let linked = outside.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::fs::write(linked.join("precious"), b"keep me too").unwrap();

    let mut m = read_manifest(&sets.join(&real));
    m.trigger = "scheduled".into();
    m.started_at_ms = 1_000;
    // 1. A well-named folder whose manifest names `../../../victim` (sets/<id> -> outside/victim).
    let planted = "20000101T000000000Z";
    let mut evil = m.clone();
    evil.id = "../../../victim".into();
    plant(&sets.join(planted), &evil, None);
    // 2. A folder that is not a set id at all.
    let mut odd = m.clone();
    odd.id = "not-a-set".into();
    plant(&sets.join("not-a-set"), &odd, None);
    // 3. A well-formed set whose folder is a link out of the target.
    let link_id = "20000102T000000000Z";
    let mut via_link = m.clone();
    via_link.id = link_id.into();
    plant(&linked, &via_link, None);
    std::os::unix::fs::symlink(&linked, sets.join(link_id)).unwrap();

    let (code, v, err) = cli(&env, &["backup", "prune"]).await;
    assert_eq!(code, 1, "prune must fail on sets it cannot trust: {v} {err}");
    let refused: Vec<&str> = v["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["set"].as_str().unwrap())
        .collect();
    assert!(refused.contains(&planted), "names the planted set: {v}");
    assert!(refused.contains(&"not-a-set"), "names the odd folder: {v}");
    assert_eq!(
        v["pool_collected"], false,
        "no pool collection beside untrusted sets: {v}"
    );
    // Nothing outside the target was touched; the planted folders are left for the operator.
    assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(linked.join("precious")).unwrap(), b"keep me too");
    assert!(
        linked.join("manifest.json").exists(),
        "nothing deleted through the link"
    );
    assert!(sets.join(planted).join("manifest.json").exists());
    assert!(
        sets.join(&real).join("manifest.json").exists(),
        "the real set is kept (keep_last)"
    );
    // `backup list` reports the untrusted folders too.
    let (_, l, _) = cli(&env, &["backup", "list"]).await;
    let invalid = l["invalid"].to_string();
    assert!(invalid.contains(planted) && invalid.contains("not-a-set"), "{l}");
}

/// M5: with `[backup] signing_key_env`, sets are signed; `verify` and
/// `restore` refuse a set that is unsigned or signed with another key (a set
/// planted in the target) unless `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_backup_sets_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("target");
    let env = with_target(
        &target,
        "verify_after_create = false\nsigning_key_env = \"BACKUP_SIGNING_KEY\"",
    )
    .await;
    assert_eq!(env.chat(KEY_A, "m5").await.status, 200);
    let (code, v, err) = cli(&env, &["backup", "create"]).await;
    assert_eq!(code, 0, "{v} {err}");
    let real = v["set"].as_str().unwrap().to_string();
    let sets = target.join("default/sets");
    let text = std::fs::read_to_string(sets.join(&real).join("manifest.json")).unwrap();
    assert!(text.contains("\"hmac_sha256\""), "the manifest is signed: {text}");
    let (code, v, _) = cli(&env, &["backup", "verify", &real, "--level", "read-data"]).await;
    assert_eq!(code, 0, "the genuine set verifies: {v}");

    // Forged copies of the genuine set: one unsigned, one signed with another key.
    let forged = |id: &str, key: Option<&[u8]>| -> PathBuf {
        let dir = sets.join(id);
        copy_dir(&sets.join(&real), &dir);
        let _ = std::fs::remove_dir_all(dir.join("verify"));
        let mut m = read_manifest(&dir);
        m.id = id.into();
        plant(&dir, &m, key);
        dir
    };
    let unsigned = "20000101T000000000Z";
    let wrong = "20000102T000000000Z";
    forged(unsigned, None);
    forged(wrong, Some(b"someone else's key, also 32 bytes long"));
    for (id, says) in [(unsigned, "not signed"), (wrong, "does not match")] {
        let (code, v, _) = cli(&env, &["backup", "verify", id, "--level", "structure"]).await;
        assert_eq!(code, 1, "{id}: {v}");
        assert!(v["problems"].to_string().contains(says), "{id}: {v}");
        let (code, _, err) = cli(&env, &["backup", "restore", id]).await;
        assert_eq!(code, 1, "{id}: {err}");
        assert!(err.contains(says) && err.contains("--force"), "{id}: {err}");
        // --force verifies it anyway (its files are the genuine set's).
        let (code, v, _) = cli(&env, &["backup", "verify", id, "--level", "structure", "--force"]).await;
        assert_eq!(code, 0, "{id}: {v}");
    }
    let (_, l, _) = cli(&env, &["backup", "list"]).await;
    let sig = |id: &str| {
        l["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["signature"].clone())
    };
    assert_eq!(sig(&real), Some("valid".into()), "{l}");
    assert_eq!(sig(unsigned), Some("unsigned".into()), "{l}");
    assert_eq!(sig(wrong), Some("wrong".into()), "{l}");
}
