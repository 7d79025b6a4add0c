//! Data protection (issue 26), first step: the keyring on both metadata
//! engines. A tenant's data key is made on first use and stored only wrapped
//! by the master key; a second replica opens what the first sealed; a
//! tenant's rotation keeps old blobs readable; a master rotation re-wraps
//! every key, after which the old master key is no longer needed; erasing a
//! tenant makes its blobs unreadable everywhere and leaves others alone.

mod common;

use bytes::Bytes;
use common::{Backends, Env};
use recache::roles::keyring::{open_artifact, Keyring, KeyringError};
use recache::seal::{self, Key32};
use recache_stub_provider::StubConfig;

on_both_backends!(keyring_seals_rotates_and_erases);
on_both_backends!(answers_are_sealed_at_rest);
on_both_backends!(sealed_streams_hit_and_a_flipped_byte_is_never_served);
on_both_backends!(semantic_and_warm_work_sealed);
on_both_backends!(a_refetched_answer_is_sealed);

/// 32 bytes, base64: the test's master key.
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// With a master key, no prompt or answer text is in any stored artifact or
/// metadata row; hits are served as before; the audit opens every artifact;
/// a gateway without the key refuses to start on these stores.
async fn answers_are_sealed_at_rest(b: Backends) {
    let extra = "[encryption]\nmaster_key_env = \"RECACHE_TEST_MASTER_KEY\"\n";
    let mut env = Env::on_with(b, StubConfig::default(), extra, &[("RECACHE_TEST_MASTER_KEY", MASTER)]).await;
    let prompt = format!("zebra-secret-{}", recache::roles::now_ms());
    let first = env.chat(common::KEY_A, &prompt).await;
    assert_eq!((first.status, first.cache()), (200, "MISS"), "{}", first.text);
    let key = first.header("x-recache-key").to_string();
    let hit = common::until(
        std::time::Duration::from_secs(10),
        "the sealed answer is a hit",
        async || env.chat(common::KEY_A, &prompt).await.cache() == "HIT",
    )
    .await;
    println!("hit after {hit:?}");
    let again = env.chat(common::KEY_A, &prompt).await;
    assert_eq!(again.content(), first.content(), "the same answer, opened");

    // Raw bytes: every stored artifact is sealed and none holds the prompt.
    let store = env.raw_artifacts();
    let listed = store.list().await.unwrap();
    assert!(!listed.is_empty());
    for a in listed {
        let raw = store.get(a.id).await.unwrap().unwrap();
        assert!(seal::is_sealed(&raw), "artifact {} is sealed", a.id.hex());
        assert!(
            !raw.windows(prompt.len()).any(|w| w == prompt.as_bytes()),
            "no prompt in {}",
            a.id.hex()
        );
    }
    // Metadata rows: the stored request is sealed too.
    let plain_rows = env
        .metadata_sql(&format!(
            "UPDATE entries SET hit_count = hit_count WHERE request_json LIKE '%{prompt}%'"
        ))
        .await;
    assert_eq!(plain_rows, 0, "no metadata row holds the prompt");
    let sealed_rows = env
        .metadata_sql("UPDATE entries SET hit_count = hit_count WHERE request_json LIKE 'rce1:%'")
        .await;
    assert!(sealed_rows >= 1, "the stored request is sealed");

    // The audit opens and checks every artifact (the CLI reads the key from the same variable).
    let (code, out, err) = env.cli(&["audit", "--check", "artifact-integrity"]);
    assert_eq!(code, 0, "audit: {out}{err}");
    assert!(out.contains("1 verified") || out.contains("verified"), "{out}");

    // Rotations: a tenant's new key for new answers, then a new master key.
    let (code, st, err) = cli_json(&env, &["encryption", "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(st["keys"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["keys"][0]["tenant"], "team-a");
    assert!(!st.to_string().contains(MASTER));
    let (code, rot, err) = cli_json(&env, &["encryption", "rotate-tenant", "--tenant", "team-a"]).await;
    assert_eq!(code, 0, "{rot} {err}");
    let (_, st, _) = cli_json(&env, &["encryption", "status"]).await;
    let states: Vec<&str> = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["retired", "active"], "{st}");
    const NEW_MASTER: &str = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
    let rotating = [
        ("RECACHE_TEST_MASTER_KEY", NEW_MASTER),
        ("RECACHE_TEST_OLD_MASTER_KEY", MASTER),
        (
            "RECACHE_ENCRYPTION__PREVIOUS_MASTER_KEY_ENV",
            "RECACHE_TEST_OLD_MASTER_KEY",
        ),
    ];
    let (code, v, err) = cli_json_with(&env, &["encryption", "rotate-master"], &rotating).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["rewrapped"], 2, "{v}");
    let (_, st, _) = cli_json_with(
        &env,
        &["encryption", "status"],
        &[("RECACHE_TEST_MASTER_KEY", NEW_MASTER)],
    )
    .await;
    assert_eq!(st["not_under_current_master"], 0, "{st}");

    // Without the master key, a gateway on these stores refuses to start.
    if let Some(gw) = env.gw.take() {
        gw.shutdown().await;
    }
    let mut keyless = env.config();
    keyless.encryption = Default::default();
    let vars = [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
    // Three times in a row, then a start: a refused start leaves no task behind that
    // holds the embedded stores' locks (CI once saw the next start refused as "in use").
    for _ in 0..3 {
        let refused = recache::server::Gateway::start(keyless.clone(), &vars)
            .await
            .err()
            .expect("refused");
        let why = format!("{refused:#}");
        assert!(why.contains("no master key"), "{why}");
        // At once, with no await in between: the lock is free already.
        if keyless.index.engine == recache::config::IndexEngine::Embedded {
            let lock = std::fs::File::open(keyless.index.path.join("index.lock")).unwrap();
            assert!(lock.try_lock().is_ok(), "a refused start still holds the index");
        }
    }
    // With only the new master key, the answer sealed before both rotations is a hit.
    let mut renewed = env.config();
    renewed.encryption.keys = vec![Key32::from_base64(NEW_MASTER).unwrap()];
    let gw = recache::server::Gateway::start(renewed, &vars)
        .await
        .expect("starts with the new key");
    let r = env
        .http
        .post(format!("http://{}/v1/chat/completions", gw.addr))
        .bearer_auth(common::KEY_A)
        .json(&common::chat_body(&prompt, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-recache-status"], "HIT");
    gw.shutdown().await;
    assert!(!key.is_empty());
}

async fn keyring_seals_rotates_and_erases(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let (meta, _) = recache::roles::factory::open_metadata(&env.config()).await.unwrap();
    let (m1, m2) = (Key32::random(), Key32::random());
    let ring = Keyring::new(vec![m1.clone()], meta.clone()).unwrap();
    let plain = Bytes::from_static(b"RCA1 the prompt and the answer");
    let sealed = ring.seal("team-a", &plain).await.unwrap();
    assert!(seal::is_sealed(&sealed));
    assert!(
        !sealed.windows(10).any(|w| w == b"the prompt"),
        "no plain text in a sealed blob"
    );
    assert_eq!(ring.open(&sealed).await.unwrap(), plain);
    let other_tenant = ring.seal("team-b", b"team b's answer").await.unwrap();

    // Stored wrapped by the master key, one active key per tenant.
    let recs = meta.list_data_keys(Some("team-a".into())).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(seal::wrapped_by(&recs[0].wrapped).unwrap(), m1.fingerprint());
    assert_eq!(recs[0].master_id, m1.fingerprint());

    // Another replica, nothing in memory: opens it through metadata.
    let replica = Keyring::new(vec![m1.clone()], meta.clone()).unwrap();
    assert_eq!(replica.open(&sealed).await.unwrap(), plain);

    // A tenant's rotation: new writes under a new key, old blobs still open.
    let (new_id, _) = ring.make_key("team-a", true).await.unwrap();
    let sealed2 = ring.seal("team-a", &plain).await.unwrap();
    assert_eq!(seal::key_id_of(&sealed2).unwrap(), new_id);
    assert_ne!(seal::key_id_of(&sealed).unwrap(), new_id);
    assert_eq!(ring.open(&sealed).await.unwrap(), plain);
    let recs = meta.list_data_keys(Some("team-a".into())).await.unwrap();
    assert_eq!(recs.iter().filter(|r| r.active()).count(), 1, "{recs:?}");

    // A master rotation: the new key first, the old one accepted meanwhile.
    let rotating = Keyring::new(vec![m2.clone(), m1.clone()], meta.clone()).unwrap();
    let (rewrapped, _) = rotating.rewrap_all().await.unwrap();
    assert_eq!(rewrapped, 3, "team-a's two keys and team-b's");
    assert_eq!(rotating.rewrap_all().await.unwrap(), (0, 3), "done once");
    let only_new = Keyring::new(vec![m2.clone()], meta.clone()).unwrap();
    assert_eq!(only_new.open(&sealed).await.unwrap(), plain);
    assert_eq!(only_new.open(&sealed2).await.unwrap(), plain);
    let only_old = Keyring::new(vec![m1.clone()], meta.clone()).unwrap();
    assert!(
        only_old.open(&sealed).await.is_err(),
        "the old master key no longer opens the keys"
    );

    // Erasure: team-a's keys destroyed, its blobs unreadable; team-b untouched.
    assert_eq!(only_new.destroy_tenant("team-a").await.unwrap(), 2);
    let fresh = Keyring::new(vec![m2.clone()], meta.clone()).unwrap();
    assert!(matches!(fresh.open(&sealed).await, Err(KeyringError::Destroyed(_))));
    assert!(
        matches!(only_new.open(&sealed2).await, Err(KeyringError::Destroyed(_))),
        "forgotten in memory too"
    );
    assert_eq!(&fresh.open(&other_tenant).await.unwrap()[..], b"team b's answer");
    let gone = meta.list_data_keys(Some("team-a".into())).await.unwrap();
    assert!(gone.iter().all(|r| r.wrapped.is_empty()), "no wrapped key is kept");
    // A new write for the erased tenant gets a new key.
    let after = fresh.seal("team-a", b"a new answer").await.unwrap();
    assert_eq!(&fresh.open(&after).await.unwrap()[..], b"a new answer");

    // Without a keyring: a plain artifact reads as it is; a sealed one says what is missing.
    assert_eq!(open_artifact(None, &plain).await.unwrap(), plain);
    let e = open_artifact(None, &other_tenant).await.unwrap_err().to_string();
    assert!(e.contains("no master key"), "{e}");
}

/// Runs the CLI off the runtime's threads (a backup waits for the gateway's workers).
async fn cli_json(env: &Env, args: &[&str]) -> (i32, serde_json::Value, String) {
    cli_json_with(env, args, &[("RECACHE_TEST_MASTER_KEY", MASTER)]).await
}

async fn cli_json_with(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    env.cli_async(args, &vars).await
}

/// A backup set of sealed answers carries the tenants' data keys, wrapped
/// only: restored into empty stores (with the master key), every answer is a
/// hit again, and no file of the set holds the prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_set_restores_with_its_keys() {
    let targets = tempfile::tempdir().unwrap();
    let extra = format!(
        "[encryption]\nmaster_key_env = \"RECACHE_TEST_MASTER_KEY\"\n[backup]\ntarget = \"{}\"\n[warmer]\npoll_ms = 50\n",
        targets.path().display()
    );
    let mut env = Env::on_with(
        Backends::Embedded,
        StubConfig::default(),
        &extra,
        &[("RECACHE_TEST_MASTER_KEY", MASTER)],
    )
    .await;
    let prompt = format!("okapi-secret-{}", recache::roles::now_ms());
    assert_eq!(env.chat(common::KEY_A, &prompt).await.cache(), "MISS");
    common::until(std::time::Duration::from_secs(10), "a hit", async || {
        env.chat(common::KEY_A, &prompt).await.cache() == "HIT"
    })
    .await;
    let calls = env.stub.calls();
    let (code, v, err) = cli_json(&env, &["backup", "create"]).await;
    assert_eq!(code, 0, "create: {v} {err}");
    // No file of the set holds the prompt (compressed or not, it would be plain inside).
    for f in common::backups::files_under(targets.path()) {
        let raw = std::fs::read(&f).unwrap();
        let mut text = Vec::new();
        if f.extension().is_some_and(|e| e == "gz") {
            use std::io::Read;
            let _ = flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut text);
        } else {
            text = raw;
        }
        assert!(
            !text.windows(prompt.len()).any(|w| w == prompt.as_bytes()),
            "the prompt in {}",
            f.display()
        );
    }
    if let Some(gw) = env.gw.take() {
        gw.shutdown().await;
    }
    common::backups::wipe_embedded(&env);
    let (code, r, err) = cli_json(&env, &["backup", "restore", "--latest"]).await;
    assert_eq!(code, 0, "restore: {r} {err}");
    assert_eq!(r["data_keys"], 1, "the tenant's data key, wrapped: {r}");
    env.start().await;
    let after = env.chat(common::KEY_A, &prompt).await;
    assert_eq!(after.cache(), "HIT", "{}", after.text);
    assert_eq!(env.stub.calls(), calls, "no provider call after the restore");
}

/// A streamed answer is sealed and served as a hit like a JSON one; a byte
/// flipped in a sealed artifact is a counted integrity failure, never served.
async fn sealed_streams_hit_and_a_flipped_byte_is_never_served(b: Backends) {
    let extra = "[encryption]\nmaster_key_env = \"RECACHE_TEST_MASTER_KEY\"\n";
    // Without the memory tier, which would keep serving the hot answer from memory.
    let vars = [
        ("RECACHE_TEST_MASTER_KEY", MASTER),
        ("RECACHE_ARTIFACTS__MEMORY_CACHE_MB", "0"),
    ];
    let env = Env::on_with(b, StubConfig::default(), extra, &vars).await;
    let stream = |q: String| {
        let env = &env;
        async move {
            env.post(
                "/v1/chat/completions",
                Some(common::KEY_A),
                &common::chat_body(&q, true),
                &[],
            )
            .await
        }
    };
    let q = format!("streamed-secret-{}", recache::roles::now_ms());
    let first = stream(q.clone()).await;
    assert_eq!((first.status, first.cache()), (200, "MISS"), "{}", first.text);
    common::until(
        std::time::Duration::from_secs(10),
        "the sealed stream is a hit",
        async || stream(q.clone()).await.cache() == "HIT",
    )
    .await;
    assert!(
        stream(q.clone()).await.text.contains("data: [DONE]"),
        "replayed as a stream"
    );

    // Every stored artifact is sealed; flip one byte of each.
    let store = env.raw_artifacts();
    let listed = store.list().await.unwrap();
    assert!(!listed.is_empty());
    for a in listed {
        let raw = store.get(a.id).await.unwrap().unwrap();
        assert!(seal::is_sealed(&raw));
        env.flip_artifact_byte(&a.id.hex(), 20).await;
    }
    let before = env.metric("cache_integrity_failures_total").await;
    let calls = env.stub.calls();
    let after = stream(q.clone()).await;
    assert_eq!(
        (after.status, after.cache()),
        (200, "MISS"),
        "never served: {}",
        after.text
    );
    assert_eq!(env.stub.calls(), calls + 1, "bought again from the provider");
    assert!(env.metric("cache_integrity_failures_total").await > before, "counted");
}

/// With answers sealed and `[semantic] store_text = false`: a paraphrase is a
/// semantic hit (the guards read the question from the sealed artifact), no
/// file of the gateway's holds the question, a warmed request is a hit, and
/// a repair started from the CLI afterwards is done.
async fn semantic_and_warm_work_sealed(b: Backends) {
    let model = common::engines::model_dir().expect("the embedding model (bash scripts/fetch-model.sh)");
    let extra = format!(
        "[encryption]\nmaster_key_env = \"RECACHE_TEST_MASTER_KEY\"\n[warmer]\npoll_ms = 50\n\
         [semantic]\nstore_text = false\nembed_timeout_ms = 10000\n[semantic.embedders.local]\nkind = \"local\"\npath = \"{}\"\n\
         [[semantic.rules]]\ntenant = \"team-a\"\nenabled = true\n",
        model.display()
    );
    let vars = [
        ("RECACHE_TEST_MASTER_KEY", MASTER),
        ("RECACHE_VECTORS__ENGINE", "embedded"),
        ("RECACHE_ARTIFACTS__MEMORY_CACHE_MB", "0"),
    ];
    let env = Env::on_with(b, StubConfig::default(), &extra, &vars).await;
    let tag = recache::roles::now_ms();
    let question = format!("How do I reset the password of my quokka account {tag}?");
    let first = env.chat(common::KEY_A, &question).await;
    assert_eq!(first.cache(), "MISS");
    let key = first.header("x-recache-key").to_string();
    common::until(std::time::Duration::from_secs(10), "registered", async || {
        env.admin_entry(&key).await["indexed"] == serde_json::Value::Bool(true)
    })
    .await;
    let para = format!("How can I reset the password of my quokka account {tag}?");
    let hit = common::until(std::time::Duration::from_secs(10), "a semantic hit", async || {
        env.chat(common::KEY_A, &para).await.cache() == "SEMANTIC_HIT"
    })
    .await;
    println!("semantic hit after {hit:?}");
    // No file of the gateway's (index, vectors, metadata, artifacts, spool) holds the question.
    // A child process reads them: the gateway runs in this process, and a file
    // descriptor of SQLite's database opened and closed here, outside SQLite,
    // would release SQLite's POSIX locks on it (see docs/operations.md).
    let needle = format!("quokka account {tag}");
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", "-a", "-F", "--exclude=*.toml", &needle])
        .arg(env.path(""))
        .output()
        .expect("grep runs");
    assert_eq!(
        grep.status.code(),
        Some(1),
        "the question in {} {}",
        String::from_utf8_lossy(&grep.stdout),
        String::from_utf8_lossy(&grep.stderr)
    );

    // Warm: a warmed request is a hit, its answer sealed like the rest.
    let warm = env.path("warm.jsonl");
    let warm_q = format!("warm quokka {tag}");
    std::fs::write(&warm, format!("{}\n", common::chat_body(&warm_q, false))).unwrap();
    let (code, v, err) = env
        .cli_async(
            &[
                "warmer",
                "enqueue",
                "--file",
                warm.to_str().unwrap(),
                "--tenant",
                "team-a",
            ],
            &[],
        )
        .await;
    assert_eq!(code, 0, "warm: {v} {err}");
    // Asked only once the warm job has succeeded: an earlier ask would store it itself.
    common::until(
        std::time::Duration::from_secs(30),
        "the warm job to succeed",
        async || {
            let jobs = env.admin_json("/admin/jobs?limit=20").await;
            jobs["jobs"]
                .as_array()
                .unwrap_or_else(|| panic!("/admin/jobs: {jobs}"))
                .iter()
                .any(|j| j["kind"] == "warm" && j["state"] == "succeeded")
        },
    )
    .await;
    let warmed = env.chat(common::KEY_A, &warm_q).await;
    assert_eq!(warmed.cache(), "HIT", "{}", warmed.text);

    // The gateway's SQLite is still shared soundly with a CLI process: a
    // repair handed to its workers is taken and done (it once waited forever
    // when this test read the database's files in the gateway's process).
    use recache::roles::ArtifactId;
    let store = env.raw_artifacts();
    let id = ArtifactId::from_hex(env.admin_entry(&key).await["entry"]["artifact"].as_str().unwrap()).unwrap();
    assert!(store.delete(id).await.unwrap());
    let calls = env.stub.calls();
    let repair = env.cli_async(&["repair", "--missing-artifacts"], &[]);
    let Ok((code, r, err)) = tokio::time::timeout(std::time::Duration::from_secs(60), repair).await else {
        panic!(
            "the repair was not taken: {}",
            env.admin_json("/admin/jobs?limit=20").await
        );
    };
    assert_eq!(code, 0, "refetch: {r} {err}");
    assert_eq!(env.stub.calls() - calls, 1, "{r}");
    assert_eq!(env.chat(common::KEY_A, &question).await.cache(), "HIT");
}

/// An answer whose artifact is lost is bought back once by `repair
/// --missing-artifacts` (on the embedded engines, by the running gateway's
/// workers), sealed again, and served.
async fn a_refetched_answer_is_sealed(b: Backends) {
    let extra = "[encryption]\nmaster_key_env = \"RECACHE_TEST_MASTER_KEY\"\n[warmer]\npoll_ms = 50\n";
    let vars = [
        ("RECACHE_TEST_MASTER_KEY", MASTER),
        ("RECACHE_ARTIFACTS__MEMORY_CACHE_MB", "0"),
    ];
    let env = Env::on_with(b, StubConfig::default(), extra, &vars).await;
    let question = format!("refetch quokka {}", recache::roles::now_ms());
    let first = env.chat(common::KEY_A, &question).await;
    assert_eq!(first.cache(), "MISS");
    let key = first.header("x-recache-key").to_string();
    common::until(std::time::Duration::from_secs(10), "registered", async || {
        env.admin_entry(&key).await["indexed"] == serde_json::Value::Bool(true)
    })
    .await;
    use recache::roles::ArtifactId;
    let store = env.raw_artifacts();
    let id = ArtifactId::from_hex(env.admin_entry(&key).await["entry"]["artifact"].as_str().unwrap()).unwrap();
    assert!(store.delete(id).await.unwrap());
    let calls = env.stub.calls();
    let (code, r, err) = env.cli_async(&["repair", "--missing-artifacts"], &[]).await;
    assert_eq!(code, 0, "refetch: {r} {err}");
    assert_eq!(env.stub.calls() - calls, 1, "{r}");
    let now = ArtifactId::from_hex(env.admin_entry(&key).await["entry"]["artifact"].as_str().unwrap()).unwrap();
    assert_ne!(now, id, "the entry names its new artifact: {r}");
    let raw = store.get(now).await.unwrap().expect("bought back");
    assert!(seal::is_sealed(&raw), "the bought-back answer is sealed");
    assert_eq!(env.chat(common::KEY_A, &question).await.cache(), "HIT");
}
