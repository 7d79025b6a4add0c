//! Regression tests for the security review of issue 22, one per finding
//! (the finding's name leads each test's comment). Each one failed on the
//! code the review read and passes since; `docs/operations.md` ("Security")
//! says what each fix chose.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// A gateway on embedded stores with `[server]` settings (as env overrides).
async fn server_env(stub: StubConfig, server: &[(&str, &str)]) -> Env {
    Env::on_with(Backends::Embedded, stub, "", server).await
}

/// A raw TCP connection to the gateway: what a slow or hostile client does.
async fn raw(env: &Env) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(env.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `limit` passes): what it
/// sent, and how long it took to close (`None`: still open at `limit`).
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (String, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// M4: a connection that sends part of its headers is closed within
/// `server.header_timeout_ms`; a body that does not arrive within
/// `body_timeout_ms` gets 408; an idle keep-alive connection is closed after
/// `idle_timeout_ms`; past `max_concurrent_requests`, 503 with `Retry-After`
/// at once, while health stays reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_excess_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let env = server_env(
        StubConfig {
            latency_ms: 1500,
            ..Default::default()
        },
        &[
            ("RECACHE_SERVER__HEADER_TIMEOUT_MS", "400"),
            ("RECACHE_SERVER__BODY_TIMEOUT_MS", "400"),
            ("RECACHE_SERVER__IDLE_TIMEOUT_MS", "600"),
            ("RECACHE_SERVER__MAX_CONCURRENT_REQUESTS", "1"),
        ],
    )
    .await;
    // Partial headers: closed after the header timeout (the review saw them open after 40 s).
    let mut s = raw(&env).await;
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("a connection with partial headers is closed");
    assert!(
        closed >= Duration::from_millis(300),
        "not before the timeout: {closed:?}"
    );
    // A body that stops short: 408 in the OpenAI dialect.
    let mut s = raw(&env).await;
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(closed.is_some(), "and the connection is closed");
    // An idle keep-alive connection: closed after the idle timeout.
    let mut s = raw(&env).await;
    s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(
        closed >= Duration::from_millis(500),
        "kept alive until the idle timeout: {closed:?}"
    );

    // One request at a time: the second gets 503 with Retry-After at once.
    let slow = {
        let http = env.http.clone();
        let url = format!("{}/v1/chat/completions", env.base);
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(KEY_A)
                .json(&common::chat_body("slow one", false))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = env
        .http
        .post(format!("{}/v1/chat/completions", env.base))
        .bearer_auth(KEY_A)
        .json(&common::chat_body("second one", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "refused at once, not queued"
    );
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    // Health is outside the limit.
    assert_eq!(env.get_json("/health/live").await["status"], "ok");
    assert_eq!(slow.await.unwrap(), 200);
    // The place is given back when the answer ends.
    assert_eq!(env.chat(KEY_A, "third one").await.status, 200);
}

/// M1: dashboard sessions are random, end at logout on the server (the old
/// cookie gets 401), failed logins are throttled per address, and `Secure`
/// comes from the config, not from a client header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sessions_end_on_the_server() {
    let env = server_env(StubConfig::default(), &[("RECACHE_SERVER__SECURE_COOKIES", "true")]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |token: &'static str| {
        let http = http.clone();
        let url = format!("{}/dashboard/login", env.base);
        async move {
            http.post(url)
                .header("x-forwarded-proto", "http")
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
        }
    };
    let data = |cookie: String| {
        let http = http.clone();
        let url = format!("{}/dashboard/data", env.base);
        async move { http.get(url).header("cookie", cookie).send().await.unwrap().status() }
    };
    let cookie_of = |r: &reqwest::Response| {
        let c = r.headers()["set-cookie"].to_str().unwrap().to_string();
        (c.split(';').next().unwrap().to_string(), c)
    };
    let r = login("admin-secret").await;
    assert_eq!(r.status(), 303);
    let (first, full) = cookie_of(&r);
    assert!(full.contains("; Secure"), "Secure from server.secure_cookies: {full}");
    let (second, _) = cookie_of(&login("admin-secret").await);
    assert_ne!(first, second, "every login gets its own session");
    assert_eq!(data(first.clone()).await, 200);
    // Logout ends the session on the server: the old cookie, replayed, is refused.
    let out = http
        .post(format!("{}/dashboard/logout", env.base))
        .header("cookie", first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(data(first).await, 401, "a logged-out cookie is refused");
    assert_eq!(data(second.clone()).await, 200, "other sessions go on");
    // Failed logins: throttled after five, even with the right token, with Retry-After.
    for _ in 0..5 {
        assert_eq!(login("wrong").await.status(), 401);
    }
    let r = login("admin-secret").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("set-cookie").is_none());
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 300, "{wait}");
}

/// M3: `/health/ready` without a token shows only the status (no engines,
/// paths or buckets) and probes the engines at most once per round whatever
/// the request rate; `/metrics` needs the token; the ops listener serves both
/// without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_show_nothing_without_a_token() {
    let env = server_env(StubConfig::default(), &[("RECACHE_SERVER__OPS_LISTEN", "127.0.0.1:0")]).await;
    let open = env.get_json("/health/ready").await;
    assert_eq!(
        open,
        serde_json::json!({"status": "ready"}),
        "no details without a token"
    );
    for _ in 0..200 {
        let r = env.http.get(format!("{}/health/ready", env.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let probes = env.metric("cache_health_probes_total").await;
    assert!(probes <= 2.0, "200 readiness calls, {probes} engine probes");
    let detail = env.admin_json("/health/ready").await;
    assert_eq!(detail["roles"].as_array().unwrap().len(), 4, "{detail}");
    // /metrics: 401 without the token, in the OpenAI dialect.
    let r = env.http.get(format!("{}/metrics", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_metrics_token"
    );
    assert!(env.metrics_text().await.contains("process_uptime_seconds"));
    // The ops listener: health and metrics without a token, nothing else.
    let ops = format!("http://{}", env.gw.as_ref().unwrap().ops_addr.unwrap());
    let m = env.http.get(format!("{ops}/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    assert!(m.text().await.unwrap().contains("cache_health_probes_total"));
    let ready: Value = env
        .http
        .get(format!("{ops}/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ready["roles"].is_array(), "{ready}");
    let chat = env
        .http
        .post(format!("{ops}/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&common::chat_body("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 404, "the ops listener serves no traffic");
}

/// L2: a provider that cannot be reached gives the client a 502 that names
/// the upstream and nothing of its address; a provider that redirects is not
/// followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failures_reveal_nothing_and_redirects_are_not_followed() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let env = Env::with(
        StubConfig::default(),
        &format!("[[upstreams]]\nname = \"gone\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodels = [\"gone-*\"]\n"),
    )
    .await;
    let mut body = common::chat_body("where are you", false);
    body["model"] = "gone-1".into();
    let r = env.post("/v1/chat/completions", Some(KEY_A), &body, &[]).await;
    assert_eq!(r.status, 502);
    let text = r.json().to_string();
    assert!(text.contains("gone"), "{text}");
    assert!(
        !text.contains(&port.to_string()) && !text.contains("127.0.0.1"),
        "{text}"
    );

    // A provider answering 307 to the stub: the stub must never be called.
    let app = axum::Router::new().fallback({
        let to = env.stub_url.clone();
        move || {
            let to = to.clone();
            async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [("location", format!("{to}/chat/completions"))],
                )
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let env2 = Env::with(
        StubConfig::default(),
        &format!("[[upstreams]]\nname = \"redirecting\"\nbase_url = \"http://{addr}/v1\"\nmodels = [\"moved-*\"]\n"),
    )
    .await;
    let mut body = common::chat_body("follow me", false);
    body["model"] = "moved-1".into();
    let r = env2.post("/v1/chat/completions", Some(KEY_A), &body, &[]).await;
    assert_ne!(r.status, 200, "the redirect is not followed");
    assert_eq!(
        env2.stub.calls(),
        0,
        "the provider behind the redirect was never called"
    );
}

/// L4: cache keys and stored entries use the tenant's stable id (default:
/// its name): a tenant renamed with its id kept keeps its entries; the name
/// alone decides nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_tenant_keeps_its_entries_by_id() {
    let tenant = |name: &str, id: Option<&str>| {
        let id = id.map(|i| format!("id = \"{i}\"\n")).unwrap_or_default();
        format!("[[tenants]]\nname = \"{name}\"\n{id}keys = [\"sk-l4\"]\n")
    };
    let mut env = Env::with(StubConfig::default(), &tenant("old-name", None)).await;
    assert_eq!(env.chat("sk-l4", "renamed").await.cache(), "MISS");
    assert_eq!(env.chat("sk-l4", "renamed").await.cache(), "HIT");
    // Renamed, id kept: the same entries.
    env.set_extra(&tenant("new-name", Some("old-name")));
    env.restart().await;
    assert_eq!(env.chat("sk-l4", "renamed").await.cache(), "HIT", "the id is kept");
    // Renamed without an id: a new tenant identity, nothing inherited.
    env.set_extra(&tenant("new-name", None));
    env.restart().await;
    assert_eq!(env.chat("sk-l4", "renamed").await.cache(), "MISS");
    // Two tenants cannot share an id.
    let dup = format!("{}{}", tenant("x", Some("team-a")), "");
    let text = common::config_text(&Backends::Embedded, env.dir.path(), &env.stub_url, &dup);
    let e = recache::config::Config::from_toml_str(&text, &Default::default()).unwrap_err();
    assert!(e.0.contains("duplicate tenant id"), "{e}");
}

/// L1: an answer over the upstream's `max_response_bytes` (JSON or stream)
/// fails with 502 and is not stored; nothing grows without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_provider_answers_are_refused() {
    let env = server_env(
        StubConfig {
            fixed_answer: Some("x".repeat(8000)),
            ..Default::default()
        },
        &[("RECACHE_UPSTREAMS__0__MAX_RESPONSE_BYTES", "4096")],
    )
    .await;
    for stream in [false, true] {
        let body = common::chat_body(&format!("big answer, stream {stream}"), stream);
        let r = env.post("/v1/chat/completions", Some(KEY_A), &body, &[]).await;
        if stream {
            // The stream's head went out before the limit was passed: the
            // client sees it cut short, and nothing is stored.
            assert!(!r.text.contains("[DONE]"), "{}", r.text.len());
        } else {
            assert_eq!(r.status, 502, "{}", r.text);
            assert_eq!(r.json()["error"]["code"], "upstream_response_too_large");
        }
        let again = env.post("/v1/chat/completions", Some(KEY_A), &body, &[]).await;
        assert_ne!(again.cache(), "HIT", "an oversized answer is never stored");
    }
    assert_eq!(env.stub.calls(), 4);
}

/// The last line of tenant isolation: an index pointer from tenant B's key to
/// tenant A's artifact (storage tampered with, or a bug) is a MISS for B, a
/// counted integrity failure and an audit event; A's answer is never served to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pointer_to_another_tenants_artifact_is_never_served() {
    use recache::key::CacheKey;
    let env = Env::new().await;
    let a = env.chat(KEY_A, "the secret plan").await;
    assert_eq!(a.cache(), "MISS");
    let b = env.chat(common::KEY_B, "something else").await;
    assert_eq!(b.cache(), "MISS");
    let (ka, kb) = (
        CacheKey::from_hex(a.header("x-recache-key")).unwrap(),
        CacheKey::from_hex(b.header("x-recache-key")).unwrap(),
    );
    let index = env.gw.as_ref().unwrap().state.cache.roles.index.clone();
    let a_entry = index.get(ka).await.unwrap().expect("A's entry is indexed");
    // Plant: B's key now points at A's artifact.
    index.put(kb, a_entry).await.unwrap();
    let before = env.metric("cache_integrity_failures_total").await;
    let r = env.chat(common::KEY_B, "something else").await;
    assert_eq!(r.cache(), "MISS", "never a HIT on another tenant's artifact");
    assert!(!r.content().contains("secret plan"), "{}", r.content());
    assert_eq!(env.metric("cache_integrity_failures_total").await, before + 1.0);
    // Audit events are written after the answer: poll for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = env.admin_json("/admin/audit?limit=1000").await;
        let found = audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "artifact.foreign" && e["cache_key"] == kb.hex().as_str());
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no artifact.foreign audit event for B's key: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A still gets its own answer.
    assert_eq!(env.chat(KEY_A, "the secret plan").await.cache(), "HIT");
}
