//! Test support: a stub provider and a gateway on ephemeral loopback ports,
//! with the gateway's data in a temporary directory.
#![allow(dead_code)]

pub mod backups;
pub mod dialects;
pub mod engines;
pub mod servers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recache::config::Config;
use recache::server::Gateway;
use recache_stub_provider::{StubConfig, StubState};
use serde_json::{json, Value};

pub const KEY_A: &str = "sk-tenant-a";
pub const KEY_B: &str = "sk-tenant-b";

/// Which storage engines a test gateway uses.
#[derive(Clone, Debug)]
pub enum Backends {
    Embedded,
    /// Redis + S3 + PostgreSQL from scripts/with-engines.sh, isolated per test
    /// by a key prefix, an object prefix and a fresh database.
    Real {
        redis: String,
        prefix: String,
        s3_endpoint: String,
        bucket: String,
        postgres: String,
    },
    /// SQLite metadata and local artifacts with the index on Redis: several
    /// processes can share these stores (an embedded index belongs to one).
    SqliteRedis {
        redis: String,
        prefix: String,
    },
}

impl Backends {
    /// The real engines, or `None` (test skipped) when the harness is not running.
    pub async fn real() -> Option<Backends> {
        let redis = engines::redis_url()?;
        let (s3_endpoint, bucket) = engines::s3()?;
        let postgres = engines::fresh_postgres("gw").await?;
        Some(Backends::Real {
            redis,
            prefix: engines::unique("gw"),
            s3_endpoint,
            bucket,
            postgres,
        })
    }

    fn toml(&self, dir: &std::path::Path) -> String {
        let d = dir.display();
        match self {
            Backends::Embedded => format!(
                "[index]\npath = \"{d}/index\"\n[artifacts]\npath = \"{d}/artifacts\"\n[metadata]\npath = \"{d}/metadata.db\"\nspool_path = \"{d}/spool.jsonl\"\n"
            ),
            Backends::SqliteRedis { redis, prefix } => format!(
                "[index]\nengine = \"redis\"\nurl = \"{redis}\"\nkey_prefix = \"{prefix}:\"\ntimeout_ms = 500\n\
                 [artifacts]\npath = \"{d}/artifacts\"\n[metadata]\npath = \"{d}/metadata.db\"\ntimeout_ms = 2000\nspool_path = \"{d}/spool.jsonl\"\n"
            ),
            Backends::Real { redis, prefix, s3_endpoint, bucket, postgres } => format!(
                "[index]\nengine = \"redis\"\nurl = \"{redis}\"\nkey_prefix = \"{prefix}:\"\ntimeout_ms = 500\n\
                 [artifacts]\nengine = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"{s3_endpoint}\"\nprefix = \"{prefix}\"\n\
                 [metadata]\nengine = \"postgres\"\nurl = \"{postgres}\"\ntimeout_ms = 2000\nspool_path = \"{d}/spool.jsonl\"\n"
            ),
        }
    }

    /// The real engines, with the index on a Redis the test owns (it may flush or pause it).
    pub async fn real_with_redis(redis: String) -> Option<Backends> {
        match Self::real().await? {
            Backends::Real {
                prefix,
                s3_endpoint,
                bucket,
                postgres,
                ..
            } => Some(Backends::Real {
                redis,
                prefix,
                s3_endpoint,
                bucket,
                postgres,
            }),
            other => Some(other),
        }
    }

    pub fn is_real(&self) -> bool {
        matches!(self, Backends::Real { .. })
    }
}

pub struct Env {
    pub backends: Backends,
    pub stub: Arc<StubState>,
    pub stub_url: String,
    pub dir: tempfile::TempDir,
    pub gw: Option<Gateway>,
    pub base: String,
    pub http: reqwest::Client,
    extra: String,
    overrides: Vec<(String, String)>,
}

/// Polls `f` every 20 ms until it is true, and says how long that took;
/// panics naming `what` when `limit` passes first.
pub async fn until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f().await {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The gateway config for a test.
pub fn config_text(backends: &Backends, dir: &std::path::Path, stub_url: &str, extra: &str) -> String {
    let roles = backends.toml(dir);
    let vectors = dir.join("vectors");
    let vectors = vectors.display();
    let gemini_url = format!("{}/v1beta", stub_url.trim_end_matches("/v1"));
    format!(
        r#"
[vectors]
path = "{vectors}"
[server]
listen = "127.0.0.1:0"
[cache]
hit_flush_interval_ms = 50
sweep_interval_seconds = 1
max_stale_seconds = 2
{roles}
[[upstreams]]
name = "stub"
base_url = "{stub_url}"
models = ["gpt-*", "text-embedding-*", "stub-*"]
timeout_ms = 2000
[[upstreams]]
name = "stub-anthropic"
kind = "anthropic"
base_url = "{stub_url}"
models = ["claude-*"]
timeout_ms = 2000
[[upstreams]]
name = "stub-gemini"
kind = "gemini"
base_url = "{gemini_url}"
models = ["gemini-*"]
timeout_ms = 2000
[[tenants]]
name = "team-a"
keys = ["{KEY_A}"]
[[tenants]]
name = "team-b"
keys = ["{KEY_B}"]
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[prices."claude-"]
input = 3.0
output = 15.0
[prices."gemini-"]
input = 0.3
output = 2.5
{extra}
"#
    )
}

impl Env {
    pub async fn new() -> Env {
        Self::with(StubConfig::default(), "").await
    }

    pub async fn with(stub_cfg: StubConfig, extra: &str) -> Env {
        Self::on(Backends::Embedded, stub_cfg, extra).await
    }

    pub async fn on(backends: Backends, stub_cfg: StubConfig, extra: &str) -> Env {
        Self::on_with(backends, stub_cfg, extra, &[]).await
    }

    /// With `RECACHE_*` overrides for the gateway's config.
    pub async fn on_with(backends: Backends, stub_cfg: StubConfig, extra: &str, overrides: &[(&str, &str)]) -> Env {
        let stub = StubState::new(stub_cfg);
        let addr = recache_stub_provider::spawn("127.0.0.1:0".parse().unwrap(), stub.clone())
            .await
            .expect("stub starts");
        let mut env = Env {
            backends,
            stub,
            stub_url: format!("http://{addr}/v1"),
            dir: tempfile::tempdir().unwrap(),
            gw: None,
            base: String::new(),
            http: reqwest::Client::new(),
            extra: extra.to_string(),
            overrides: overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        env.start().await;
        env
    }

    pub fn config(&self) -> Config {
        let mut env: HashMap<String, String> = [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
        env.extend(self.overrides.iter().cloned());
        Config::from_toml_str(
            &config_text(&self.backends, self.dir.path(), &self.stub_url, &self.extra),
            &env,
        )
        .expect("test config is valid")
        .0
    }

    pub async fn start(&mut self) {
        let mut env: HashMap<String, String> = [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
        env.extend(self.overrides.iter().cloned());
        let gw = Gateway::start(self.config(), &env).await.expect("gateway starts");
        self.base = format!("http://{}", gw.addr);
        self.gw = Some(gw);
    }

    /// Replaces the extra config (takes effect at the next restart).
    pub fn set_extra(&mut self, extra: &str) {
        self.extra = extra.to_string();
    }

    pub async fn restart(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
        self.start().await;
    }

    /// The artifact store, opened directly (behind the gateway's back).
    /// Embedded: the gateway's own segmented store when it runs in this
    /// process (one owner per directory), else the store opened as its owner.
    pub fn raw_artifacts(&self) -> std::sync::Arc<dyn recache::roles::Artifacts> {
        use recache::roles::artifacts_object_store::ObjectStoreArtifacts;
        std::sync::Arc::new(match &self.backends {
            Backends::Embedded | Backends::SqliteRedis { .. } => return std::sync::Arc::new(self.raw_segments()),
            Backends::Real {
                prefix,
                s3_endpoint,
                bucket,
                ..
            } => ObjectStoreArtifacts::s3(
                bucket,
                Some(s3_endpoint),
                None,
                prefix,
                std::time::Duration::from_secs(5),
            )
            .unwrap(),
        })
    }

    /// The embedded segmented artifact store (see [`Env::raw_artifacts`]).
    pub fn raw_segments(&self) -> recache::roles::artifacts_segments::SegmentArtifacts {
        use recache::roles::artifacts_segments::{Access, SegmentArtifacts, SegmentOptions};
        SegmentArtifacts::open(&self.path("artifacts"), "", SegmentOptions::default(), Access::Own).unwrap()
    }

    /// Flips one bit inside a stored answer, behind the gateway's back: in
    /// its segment file (embedded) or by overwriting the object (S3).
    pub async fn corrupt_artifact(&self, artifact_hex: &str) {
        self.flip_artifact_byte(artifact_hex, 5).await
    }

    /// Flips one bit of the stored artifact's byte `from_end` bytes before its end.
    pub async fn flip_artifact_byte(&self, artifact_hex: &str, from_end: usize) {
        use recache::roles::ArtifactId;
        use std::os::unix::fs::FileExt;
        let id = ArtifactId::from_hex(artifact_hex).expect("artifact id");
        if !matches!(self.backends, Backends::Real { .. }) {
            let (path, off, len) = self.raw_segments().locate(id).expect("artifact in a segment");
            let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
            let mut b = [0u8; 1];
            let at = off + u64::from(len) - from_end as u64;
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
            return;
        }
        let store = self.raw_artifacts();
        let mut bytes = store.get(id).await.unwrap().expect("artifact exists").to_vec();
        let n = bytes.len();
        bytes[n - from_end] ^= 0x20; // flip one bit inside the stored answer
        store.put(id, bytes.into()).await.unwrap();
    }

    /// `GET path` as JSON, with no credentials.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET path` as JSON, with the admin token.
    pub async fn admin_json(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// The first job of `kind` in `state` (from `/admin/jobs`), polled for
    /// up to `limit`; `Null` when none got there.
    pub async fn job_in_state(&self, kind: &str, state: &str, limit: Duration) -> Value {
        let t = Instant::now();
        loop {
            let jobs = self.admin_json("/admin/jobs?limit=100").await;
            let found = jobs["jobs"]
                .as_array()
                .and_then(|a| a.iter().find(|j| j["kind"] == kind && j["state"] == state).cloned());
            match found {
                Some(j) => return j,
                None if t.elapsed() >= limit => return Value::Null,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `POST path` with the admin token and a JSON body: (status, JSON answer).
    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth("admin-secret")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The admin view of an entry.
    pub async fn admin_entry(&self, key: &str) -> Value {
        self.admin_json(&format!("/admin/entries/{key}")).await
    }

    /// Runs one SQL statement on the metadata store behind the gateway's back.
    pub async fn metadata_sql(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        match &self.backends {
            Backends::Embedded | Backends::SqliteRedis { .. } => {
                let url = format!("sqlite://{}", self.path("metadata.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap().rows_affected()
            }
            Backends::Real { postgres, .. } => {
                let mut c = sqlx::PgConnection::connect(postgres).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap().rows_affected()
            }
        }
    }

    /// `SELECT COUNT(*) FROM {from_where}` on the metadata store: reads
    /// only, so it takes no row lock a running job could deadlock with.
    pub async fn metadata_count(&self, from_where: &str) -> i64 {
        use sqlx::Connection;
        let sql = format!("SELECT COUNT(*) FROM {from_where}");
        match &self.backends {
            Backends::Embedded | Backends::SqliteRedis { .. } => {
                let url = format!("sqlite://{}", self.path("metadata.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(&sql).fetch_one(&mut c).await.unwrap()
            }
            Backends::Real { postgres, .. } => {
                let mut c = sqlx::PgConnection::connect(postgres).await.unwrap();
                sqlx::query_scalar(&sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }

    /// Writes the gateway's config to a file, for the CLI.
    pub fn config_file(&self) -> PathBuf {
        let p = self.path("recache.toml");
        std::fs::write(
            &p,
            config_text(&self.backends, self.dir.path(), &self.stub_url, &self.extra),
        )
        .unwrap();
        p
    }

    /// Runs `recache ARGS --config <this gateway's config>` (same env overrides);
    /// returns the exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
            .args(args)
            .arg("--config")
            .arg(self.config_file())
            .envs(self.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .env("RECACHE_ADMIN_TOKEN", "admin-secret")
            .output()
            .expect("recache runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// [`Env::cli`] with `--format json`, off the runtime's threads (the
    /// command may wait for this gateway's workers), with `vars` set as well:
    /// (exit code, the parsed report or null, stderr).
    pub async fn cli_async(&self, args: &[&str], vars: &[(String, String)]) -> (i32, Value, String) {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--format".into(), "json".into(), "--config".into()]);
        a.push(self.config_file().display().to_string());
        let mut all: Vec<(String, String)> = self.overrides.clone();
        all.extend(vars.iter().cloned());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
                .args(&a)
                .envs(all)
                .env("RUST_LOG", "warn")
                .env("RECACHE_ADMIN_TOKEN", "admin-secret")
                .output()
                .expect("recache runs")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Starts `recache ARGS --format json --config <this gateway's config>`
    /// in the background (the env overrides and `vars` set, `RUST_LOG=info`),
    /// its stdout piped and its stderr written to `log` in the test's
    /// directory: a command the test kills part-way, or waits for.
    pub fn spawn_cli(&self, args: &[&str], vars: &[(&str, &str)], log: &str) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
            .args(args)
            .args(["--format", "json", "--config"])
            .arg(self.config_file())
            .envs(self.overrides.iter().cloned())
            .envs(vars.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(self.path(log)).unwrap())
            .spawn()
            .unwrap()
    }

    /// Like [`Env::cli`] with `--format json`: the parsed report.
    pub fn cli_json(&self, args: &[&str]) -> (i32, Value) {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let (code, out, err) = self.cli(&a);
        let v = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}\nstderr: {err}"));
        (code, v)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value, headers: &[(&str, &str)]) -> Resp {
        self.post_raw(path, key, body.to_string(), headers).await
    }

    pub async fn post_raw(&self, path: &str, key: Option<&str>, body: String, headers: &[(&str, &str)]) -> Resp {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = Resp::from(req.send().await.expect("gateway answers")).await;
        self.settle().await;
        resp
    }

    /// Waits (up to 10 s) until no provider call is in flight. Misses are answered
    /// before they are stored: tests that look at the stores, or at the next request's
    /// status, after a miss wait for its store this way.
    pub async fn settle(&self) {
        let Some(gw) = &self.gw else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gw.state.coalescer.in_flight() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    pub async fn chat(&self, key: &str, content: &str) -> Resp {
        self.post("/v1/chat/completions", Some(key), &chat_body(content, false), &[])
            .await
    }

    /// The gateway's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found"))
    }
}

pub fn chat_body(content: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": content}]})
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub async fn from(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        Resp { status, headers, text }
    }
    pub fn cache(&self) -> &str {
        self.headers
            .get("x-recache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    /// The assistant text of a JSON answer or of an SSE stream.
    pub fn content(&self) -> String {
        if self.header("content-type").starts_with("text/event-stream") {
            sse_content(&self.text)
        } else {
            self.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        }
    }
    /// Asserts an OpenAI-style error body with this status.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text);
        let v = self.json();
        assert!(
            v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body: {}",
            self.text
        );
        assert!(v["error"]["type"].is_string(), "error body: {}", self.text);
    }
}

/// The events of an SSE body with `event:` names (Anthropic's streams): (name, data).
pub fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let data: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data {data}: {e}"));
            assert_eq!(
                data["type"].as_str(),
                Some(name.as_str()),
                "the event name is its data's type"
            );
            (name, data)
        })
        .collect()
}

/// Concatenates the delta contents of an SSE chat stream; panics on a stream without [DONE].
pub fn sse_content(text: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("SSE data is JSON");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            out.push_str(c);
        }
    }
    assert!(done, "stream ended without [DONE]: {text}");
    out
}

/// Decodes an 8-bit RGB or RGBA PNG (what Chromium writes) into its pixels:
/// (width, height, channels, rows).
pub fn png_pixels(png: &[u8]) -> (u32, u32, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(png).read_info().expect("a PNG file");
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("a decodable PNG frame");
    assert_eq!(frame.bit_depth, png::BitDepth::Eight, "8-bit samples");
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        t => panic!("colour type {t:?}"),
    };
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, channels, buf)
}

/// A command on the PATH, or `None` (the test is skipped) when it is missing
/// outside the engine harness, which installs it; missing under the harness fails.
pub fn tool(name: &str) -> Option<String> {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if found.is_none() {
        assert!(
            std::env::var("RECACHE_TEST_ENGINES").is_err(),
            "{name} is missing although scripts/with-engines.sh installs it"
        );
        eprintln!("skipping: no {name} (scripts/with-engines.sh installs it)");
    }
    found
}

/// Headless Chromium, quiet and offline (add a fresh `--user-data-dir`).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
];

/// Runs each named test twice: on the embedded engines and on real
/// Redis + S3 + PostgreSQL (skipped unless scripts/with-engines.sh runs).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::Backends::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real_engines() {
                if let Some(b) = super::Backends::real().await {
                    super::$name(b).await
                }
            }
        }
    )* };
}
