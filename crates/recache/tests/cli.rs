//! The `recache` binary: help, exit codes, config errors, health, and the demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn recache() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_recache"));
    c.env_remove("RECACHE_CONFIG");
    c
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let d = dir.display();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[index]\npath = \"{d}/index\"\n[artifacts]\npath = \"{d}/artifacts\"\n[metadata]\npath = \"{d}/metadata.db\"\n{body}"
    );
    let p = dir.join("recache.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const UPSTREAM: &str = "[[upstreams]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[[tenants]]\nname = \"t\"\nkeys = [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]\n";

#[test]
fn help_everywhere() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["health", "--help"],
        vec!["bench", "--help"],
        vec!["bench", "load", "--help"],
        vec!["bench", "seed", "--help"],
        vec!["warmer", "--help"],
        vec!["warmer", "status", "--help"],
        vec!["warmer", "run", "--help"],
        vec!["warmer", "enqueue", "--help"],
        vec!["warmer", "priority", "--help"],
        vec!["warmer", "rebuild", "--help"],
        vec!["warmer", "retry", "--help"],
        vec!["audit", "--help"],
        vec!["repair", "--help"],
        vec!["purge", "--help"],
        vec!["erase", "--help"],
        vec!["encryption", "reseal", "--help"],
        vec!["semantic", "eval", "--help"],
    ] {
        let out = recache().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
    let out = recache().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A repair needs to be told what to repair.
    let out = recache()
        .args(["repair", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (format!("{UPSTREAM}[server]\nlisten_on = 1\n"), "listen_on"),
        (UPSTREAM.replace("http://127.0.0.1:9/v1", "not-a-url"), "base_url"),
        (
            UPSTREAM.replace("base_url", "api_key_env = \"RECACHE_TEST_MISSING_KEY\"\nbase_url"),
            "RECACHE_TEST_MISSING_KEY",
        ),
    ];
    for (body, needle) in cases {
        // A duplicate [server] table is itself an error; keep one per case.
        let body = body.replacen("[server]\nlisten_on", "[cache]\nlisten_on", 1);
        let p = write_config(dir.path(), &body);
        let out = recache().args(["health", "--config"]).arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{needle}: {err}");
        assert!(err.contains(needle), "{needle} not in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let out = recache()
        .args(["serve", "--config", "/nonexistent/recache.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // An env override that names an unknown key fails loudly too.
    let p = write_config(dir.path(), UPSTREAM);
    let out = recache()
        .args(["health", "--config"])
        .arg(&p)
        .env("RECACHE_INDEX__NOPE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines until one contains `http://`; returns that URL.
fn wait_for_url(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(i) = line.find("http://") {
            let url: String = line[i..].chars().take_while(|c| !c.is_whitespace()).collect();
            // Keep draining stdout: a closed pipe would kill the gateway at its next line.
            std::thread::spawn(move || lines.for_each(drop));
            return url;
        }
    }
    panic!("no URL printed");
}

/// `recache serve --demo` on an ephemeral port, run from `cwd` (the model is looked for there).
fn spawn_demo(cwd: Option<&std::path::Path>, data: &std::path::Path) -> Child {
    let mut cmd = recache();
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    Child(
        cmd.args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Asks the demo gateway one question; returns `x-recache-status`.
/// Waits until the demo's answers are stored: answers are sent before their
/// store, and a repeat during the store would join that flight (a coalesced
/// MISS) instead of hitting the cache.
async fn settle(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let m = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.lines().any(|l| l == "cache_flights_in_progress 0") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the demo's stores did not finish");
}

async fn demo_chat(url: &str, question: &str) -> String {
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]});
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("sk-recache-demo")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-recache-status"].to_str().unwrap().to_string()
}

/// With the model fetched (scripts/fetch-model.sh), the demo turns semantic
/// matching on for its tenant and says so at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_turns_semantic_matching_on_when_the_model_is_there() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !root.join("models/all-MiniLM-L6-v2/model.safetensors").exists() {
        // scripts/test.sh fetches the model and sets RECACHE_TEST_MODEL=1: then its absence fails.
        assert!(
            std::env::var("RECACHE_TEST_MODEL").map_or(true, |v| v != "1"),
            "RECACHE_TEST_MODEL=1 but no model (bash scripts/fetch-model.sh)"
        );
        eprintln!("skipped: no model (run `bash scripts/fetch-model.sh`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_demo(Some(&root), &dir.path().join("data"));
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut said) = (String::new(), String::new());
    while let Some(Ok(line)) = lines.next() {
        if let Some(i) = line.find("http://") {
            if url.is_empty() {
                url = line[i..].chars().take_while(|c| !c.is_whitespace()).collect();
            }
        }
        if line.starts_with("semantic matching:") {
            said = line;
            break;
        }
    }
    // Keep draining stdout so the gateway never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(said.contains("ON for the demo tenant"), "{said}");
    let mut statuses = Vec::new();
    for q in ["How do I reset my password?", "How can I reset my password?"] {
        statuses.push(demo_chat(&url, q).await);
        settle(&url).await;
    }
    assert_eq!(statuses, ["MISS", "SEMANTIC_HIT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_miss_then_hit_and_health_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_demo(None, &dir.path().join("data"));
    let url = wait_for_url(&mut child.0);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(demo_chat(&url, "hello").await);
        settle(&url).await;
    }
    assert_eq!(statuses, ["MISS", "HIT"]);

    // `recache health` against the demo's stores: everything up, JSON on request.
    let d = dir.path().join("data");
    let cfg = write_config(dir.path(), UPSTREAM).to_path_buf();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &format!("{}/index", dir.path().display()),
            &format!("{}/index", d.display()),
        )
        .replace(
            &format!("{}/artifacts", dir.path().display()),
            &format!("{}/artifacts", d.display()),
        )
        .replace(
            &format!("{}/metadata.db", dir.path().display()),
            &format!("{}/metadata.db", d.display()),
        );
    std::fs::write(&cfg, text).unwrap();
    let out = recache()
        .args(["health", "--format", "json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["backends"].as_array().unwrap().len(), 4);
    let meta = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["role"] == "metadata")
        .unwrap();
    assert_eq!(meta["entries"], 1);
    let out = recache()
        .args(["health", "--backend", "postgres", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("metadata"));

    // Asking the running gateway itself: per-role state with its circuit breakers.
    let out = recache()
        .args(["health", "--format", "json", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gateway"], "ready");
    let index = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["role"] == "index")
        .unwrap();
    assert_eq!(index["breaker"]["state"], "closed");
    let out = recache().args(["health", "--url", &url]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("breaker closed"));
}

#[test]
fn health_exits_nonzero_when_a_backend_is_down() {
    let dir = tempfile::tempdir().unwrap();
    // The index has never been created (no gateway ran), and metadata sits under a file.
    std::fs::write(dir.path().join("blocker"), b"x").unwrap();
    let p = write_config(dir.path(), UPSTREAM);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("metadata.db", "blocker/metadata.db");
    std::fs::write(&p, text).unwrap();
    let out = recache()
        .args(["health", "--format", "json", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let down: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "down")
        .map(|b| b["role"].as_str().unwrap())
        .collect();
    assert_eq!(down, ["index", "metadata"]);
}

/// The operations commands on the embedded stores, no gateway running:
/// queue a warm file, run a worker until idle, see it in `warmer status`,
/// audit clean, and bad input refused with exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmer_audit_and_repair_on_embedded_stores() {
    let dir = tempfile::tempdir().unwrap();
    let stub = recache_stub_provider::StubState::new(Default::default());
    let addr = recache_stub_provider::spawn("127.0.0.1:0".parse().unwrap(), stub.clone())
        .await
        .unwrap();
    let body = format!(
        "[warmer]\nheartbeat_ms = 200\npoll_ms = 50\n[[upstreams]]\nname = \"stub\"\nbase_url = \"http://{addr}/v1\"\n[[tenants]]\nname = \"t\"\nkeys = [\"sk-t\"]\n"
    );
    let cfg = write_config(dir.path(), &body);
    let run = |args: &[&str]| {
        let out = recache().args(args).arg("--config").arg(&cfg).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let file = dir.path().join("warm.jsonl");
    std::fs::write(
        &file,
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"model\":\"m\",\"prompt\":\"b\"}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = run(&["warmer", "enqueue", "--file", f, "--tenant", "nobody"]);
    assert_eq!(code, 2, "unknown tenant: {out}{err}");
    std::fs::write(dir.path().join("bad.jsonl"), "{\"model\":\"m\"}\n").unwrap();
    let bad = dir.path().join("bad.jsonl");
    let (code, _, err) = run(&["warmer", "enqueue", "--file", bad.to_str().unwrap(), "--tenant", "t"]);
    assert!(code == 2 && err.contains("line 1"), "{err}");
    let (code, out, err) = run(&[
        "warmer",
        "enqueue",
        "--file",
        f,
        "--tenant",
        "t",
        "--namespace",
        "org/repo",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 requests"), "{out}");
    let (code, out, _) = run(&["warmer", "status", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["counts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["kind"] == "warm" && c["state"] == "queued"));
    let (code, out, err) = run(&["warmer", "priority", "--repos", "org/repo,other"]);
    assert!(code == 0 && out.contains("moved 1 jobs"), "{out}{err}");
    let (code, _, err) = run(&["warmer", "run", "--exit-when-idle"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stub.calls(), 2, "each request bought once");
    let (code, out, _) = run(&["warmer", "status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warm") && out.contains("jobs succeeded in the last hour"),
        "{out}"
    );
    let (code, out, err) = run(&["audit", "--check", "all", "--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entries_scanned"], 2, "{v}");
    let (code, out, _) = run(&["audit", "--gaps", "--hours", "3"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("entries created per hour"), "{out}");
    // Nothing is running beside us: the index repair opens the embedded index itself.
    let (code, out, err) = run(&["repair", "--index", "--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(&["repair", "--orphans", "--grace", "soon"]);
    assert!(code == 2 && err.contains("duration"), "{err}");
    // Enqueueing the same file twice is harmless once done: the answers are cached.
    let (code, _, _) = run(&[
        "warmer",
        "enqueue",
        "--file",
        f,
        "--tenant",
        "t",
        "--namespace",
        "org/repo",
    ]);
    assert_eq!(code, 0);
    let (code, _, _) = run(&["warmer", "run", "--exit-when-idle"]);
    assert_eq!(code, 0);
    assert_eq!(stub.calls(), 2, "a second run of the same file buys nothing");
}

/// `recache … | head`: a reader that goes away early ends the command quietly
/// (exit 141, as on SIGPIPE), not with a panic and a backtrace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_a_command_quietly() {
    use recache_stub_provider::{spawn, StubConfig, StubState};
    let stub = spawn("127.0.0.1:0".parse().unwrap(), StubState::new(StubConfig::default()))
        .await
        .unwrap();
    let mut child = recache()
        .args(["bench", "load", "--url", &format!("http://{stub}"), "--key", "k"])
        .args(["--mode", "miss", "--connections", "1", "--duration", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
