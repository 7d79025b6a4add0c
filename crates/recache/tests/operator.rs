//! The operator surface: the dashboard in a real browser (headless Chromium
//! driven over the DevTools protocol), its authentication, the alert rules and
//! the metrics page checked by promtool, and `recache doctor` against real
//! engines configured badly and well on purpose.

mod common;

use std::time::{Duration, Instant};

use common::servers::Server;
use common::{engines, Backends, Env};
use futures_util::{SinkExt, StreamExt};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The engines of the harness when it runs, else the embedded ones.
async fn backends() -> Backends {
    match Backends::real().await {
        Some(b) => b,
        None => {
            eprintln!("no engine harness: the dashboard test runs on the embedded stores");
            Backends::Embedded
        }
    }
}

/// A DevTools session on one page of a headless Chromium.
struct Browser {
    child: std::process::Child,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open(chromium: &str) -> Browser {
        use std::io::BufRead;
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(chromium)
            .args(common::CHROMIUM_FLAGS)
            .args([
                "--window-size=1280,1400",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium prints its DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools connects");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next: 0,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"})).await;
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b
            .call("Target.attachToTarget", json!({"targetId": target, "flatten": true}))
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// One DevTools command (on the page's session once attached); its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// One DevTools command; its result, or the error the browser answered with.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer in 30 s"))
                .expect("DevTools socket open")
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == json!(id) {
                return match v.get("error") {
                    Some(_) => Err(v),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Evaluates an expression in the page; its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page. A page that is navigating (a form
    /// just submitted) answers an evaluation with "Inspected target navigated or
    /// closed": that is a "not yet", and the next try reaches the new page.
    async fn wait_for(&mut self, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let params = json!({"expression": format!("Boolean({expr})"), "returnByValue": true});
            match self.try_call("Runtime.evaluate", params).await {
                Ok(r) if r["result"]["value"] == json!(true) => return,
                Ok(_) => {}
                Err(e) if e.to_string().contains("navigated") => {}
                Err(e) => panic!("waiting for {what}: {e}"),
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a sample line of the metrics page (`name{labels} value`).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series}"))
}

fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_agrees_with_the_metrics_in_a_real_browser() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find_map(common::tool) else {
        return;
    };
    let env = Env::on(backends().await, StubConfig::default(), "").await;
    // Traffic: 8 questions, 5 of them asked again, one bad request; two tenants.
    for i in 0..8 {
        assert_eq!(env.chat(common::KEY_A, &format!("question {i}")).await.cache(), "MISS");
    }
    for i in 0..5 {
        assert_eq!(env.chat(common::KEY_A, &format!("question {i}")).await.cache(), "HIT");
    }
    env.chat(common::KEY_B, "question from b").await;
    env.post_raw("/v1/chat/completions", Some(common::KEY_A), "{".into(), &[])
        .await
        .assert_error(400);
    // A breaker forced open, so the page has a state other than closed to show.
    let (code, _) = env
        .admin_post("/admin/breakers/artifacts/open?seconds=300", &json!({}))
        .await;
    assert_eq!(code, 200);

    let mut b = Browser::open(&chromium).await;
    b.call("Page.enable", json!({})).await;
    b.call("Page.navigate", json!({"url": format!("{}/dashboard", env.base)}))
        .await;
    b.wait_for("document.getElementById('token')", "the login form").await;
    // A wrong token is refused and the form comes back.
    b.eval("document.getElementById('token').value = 'wrong'; document.getElementById('login').submit(); true")
        .await;
    b.wait_for("document.getElementById('login-error')", "the refusal")
        .await;
    b.eval("document.getElementById('token').value = 'admin-secret'; document.getElementById('login').submit(); true")
        .await;
    b.wait_for(
        "document.getElementById('status') && document.getElementById('status').dataset.loaded === '1'",
        "the dashboard's data",
    )
    .await;
    // The session cookie is HttpOnly: the page's script cannot read it.
    let cookie = b.eval("document.cookie").await;
    assert!(!cookie.as_str().unwrap_or("").contains("recache_session"), "{cookie}");

    let shown = b
        .eval(
            r#"(() => {
                const $ = (id) => document.getElementById(id);
                const breakers = {};
                for (const el of document.querySelectorAll('[id^="breaker-"]')) breakers[el.id.slice(8)] = el.dataset.state;
                return {
                    requests: Number($('requests-total').dataset.value),
                    hit_rate: Number($('hit-rate').dataset.value),
                    hit_rate_text: $('hit-rate').textContent,
                    breakers,
                    tenants: document.getElementById('tenants').textContent,
                    backends: document.getElementById('backends').textContent,
                };
            })()"#,
        )
        .await;
    let metrics = env.metrics_text().await;
    let requests = sum_of(&metrics, "recache_request_duration_seconds_count");
    assert_eq!(shown["requests"].as_f64().unwrap(), requests, "{shown}");
    assert_eq!(requests, 15.0);
    let (hits, misses) = (
        sample(&metrics, "cache_hits_total"),
        sample(&metrics, "cache_misses_total"),
    );
    let rate = hits / (hits + misses);
    assert!(
        (shown["hit_rate"].as_f64().unwrap() - rate).abs() < 1e-9,
        "{shown} vs {rate}"
    );
    assert_eq!(shown["hit_rate_text"], json!(format!("{:.1} %", rate * 100.0)));
    let names = ["closed", "open", "half_open", "forced_open", "disabled"];
    for backend in ["index", "artifacts", "metadata", "vectors"] {
        let code = sample(&metrics, &format!("cache_breaker_state{{backend=\"{backend}\"}}")) as usize;
        assert_eq!(shown["breakers"][backend], json!(names[code]), "{backend}: {shown}");
    }
    assert_eq!(shown["breakers"]["artifacts"], json!("forced_open"));
    assert!(shown["tenants"].as_str().unwrap().contains("team-a"), "{shown}");

    // A screenshot of the page: not blank.
    let shot = b
        .call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )
        .await;
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    if let Ok(dir) = std::env::var("RECACHE_TEST_SCREENSHOT_DIR") {
        std::fs::write(std::path::Path::new(&dir).join("dashboard.png"), &png).unwrap();
    }
    let (w, h, channels, px) = common::png_pixels(&png);
    assert!(w >= 1000 && h >= 800, "{w}x{h}");
    let pixels: Vec<&[u8]> = px.chunks(channels).collect();
    let background = pixels[pixels.len() / 2];
    let differing = pixels.iter().filter(|p| p[..3] != background[..3]).count();
    assert!(
        differing > pixels.len() / 20,
        "{differing} of {} pixels drawn",
        pixels.len()
    );
    let mut colours: Vec<[u8; 3]> = pixels.iter().map(|p| [p[0] & 0xf0, p[1] & 0xf0, p[2] & 0xf0]).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 20, "{} colours: more than a blank page", colours.len());
    // The forced-open breaker is drawn red (the bad class).
    let red = pixels.iter().filter(|p| p[0] > 170 && p[1] < 80 && p[2] < 80).count();
    assert!(red > 20, "the open breaker is marked ({red} red pixels)");

    // Signing out clears the session: the data endpoint refuses the browser again.
    let status = b
        .eval("fetch('/dashboard/logout', {method: 'POST'}).then(() => fetch('/dashboard/data')).then(r => r.status)")
        .await;
    assert_eq!(status, json!(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_the_dashboard_and_its_data_answer_401() {
    let env = Env::new().await;
    let get = |path: &str, headers: Vec<(&'static str, String)>| {
        let mut r = env.http.get(format!("{}{path}", env.base));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    let page = get("/dashboard", vec![]).await.unwrap();
    assert_eq!(page.status(), 401);
    let body = page.text().await.unwrap();
    assert!(
        body.contains("name=\"token\"") && !body.contains("requests-total"),
        "the login form only"
    );
    let data = get("/dashboard/data", vec![]).await.unwrap();
    assert_eq!(data.status(), 401);
    assert_eq!(
        data.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_admin_token"
    );
    for bad in ["Bearer nope", "Basic YWRtaW4="] {
        assert_eq!(
            get("/dashboard/data", vec![("authorization", bad.into())])
                .await
                .unwrap()
                .status(),
            401
        );
    }
    // A forged or stale cookie is refused too.
    let forged = get("/dashboard/data", vec![("cookie", "recache_session=00ff".into())])
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    // The bearer header works, and so does the cookie the login form sets.
    let ok = get("/dashboard/data", vec![("authorization", "Bearer admin-secret".into())])
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let d: Value = ok.json().await.unwrap();
    assert_eq!(d["totals"]["requests"], 0);
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let wrong = no_redirect
        .post(format!("{}/dashboard/login", env.base))
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let login = no_redirect
        .post(format!("{}/dashboard/login", env.base))
        .form(&[("token", "admin-secret")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("admin-secret"),
        "the cookie never holds the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = get("/dashboard", vec![("cookie", pair)]).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("requests-total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_alert_rules_and_the_live_metrics() {
    let Some(promtool) = common::tool("promtool") else {
        return;
    };
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus/recache-rules.yml");
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules", rules])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The Grafana board is JSON over the same metric names.
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/recache-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(board["panels"].as_array().unwrap().len() >= 10);

    // A live gateway with semantic metrics off and on would differ only in families; traffic
    // of every kind fills the histogram and counters.
    // A tenant whose name holds `"` and `\` (label values must be escaped), with
    // semantic matching on so its name is a label (when the model is at hand).
    let odd = match common::engines::model_dir() {
        Some(model) => format!(
            "[[tenants]]\nname = 'we\"ird\\name'\nkeys = [\"sk-odd\"]\n[semantic.embedders.local]\nkind = \"local\"\npath = \"{}\"\n[[semantic.rules]]\ntenant = 'we\"ird\\name'\nenabled = true\n",
            model.display()
        ),
        None => String::new(),
    };
    let env = Env::on_with(
        common::Backends::Embedded,
        StubConfig::default(),
        &odd,
        &[("RECACHE_VECTORS__ENGINE", "embedded")],
    )
    .await;
    env.chat(common::KEY_A, "hello").await;
    env.chat(common::KEY_A, "hello").await;
    env.post_raw("/v1/chat/completions", Some(common::KEY_A), "{".into(), &[])
        .await;
    if !odd.is_empty() {
        env.chat("sk-odd", "How do I reset my password?").await;
        env.chat("sk-odd", "How can I reset my password?").await;
    }
    let text = env.metrics_text().await;
    if !odd.is_empty() {
        assert!(
            text.contains(r#"tenant="we\"ird\\name""#),
            "the odd tenant's label, escaped: {text}"
        );
    }
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every family has HELP and TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(name);
        assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {family}");
        assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {family}");
    }
}

/// `recache doctor` on a config; its exit code and report.
fn doctor(env: &Env, extra_env: &[(&str, &str)]) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args(["doctor", "--format", "json", "--url", &env.base, "--config"])
        .arg(env.config_file())
        .envs(extra_env.iter().copied())
        .env("RUST_LOG", "warn")
        // The operator's environment: the config's admin token (detailed health needs it).
        .env("RECACHE_ADMIN_TOKEN", "admin-secret")
        .output()
        .expect("recache runs");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_what_is_configured_badly_and_passes_what_is_not() {
    let Some(bad_redis) = Server::redis_with(&["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"])
    else {
        eprintln!("skipping: no engine harness (scripts/with-engines.sh)");
        return;
    };
    let good_redis = Server::redis_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory",
        "64mb",
        "--maxmemory-policy",
        "volatile-lru",
    ])
    .unwrap();
    let backup_dir = tempfile::tempdir().unwrap();
    let extra = format!("[backup]\ntarget = \"{}\"\nrpo = \"1h\"\n", backup_dir.path().display());

    // Badly configured: Redis without persistence and with noeviction; no backup yet.
    let backends = Backends::real_with_redis(bad_redis.url()).await.unwrap();
    let env = Env::on(backends, StubConfig::default(), &extra).await;
    env.chat(common::KEY_A, "something to store").await;
    let (code, r) = doctor(&env, &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "fail");
    assert_eq!(finding(&r, "redis.persistence")["status"], "fail", "{r:#}");
    assert_eq!(finding(&r, "redis.eviction")["status"], "fail", "{r:#}");
    assert_eq!(finding(&r, "redis.memory")["status"], "warn", "{r:#}");
    assert!(finding(&r, "redis.eviction")["fix"]
        .as_str()
        .unwrap()
        .contains("volatile-lru"));
    // s3s-fs does not implement bucket versioning: it cannot be known, which is a warning.
    let v = finding(&r, "s3.versioning");
    assert_eq!(v["status"], "warn", "{r:#}");
    assert!(v["detail"].as_str().unwrap().contains("cannot be known"), "{v}");
    assert_eq!(finding(&r, "s3.reachable")["status"], "ok");
    assert_eq!(finding(&r, "s3.permissions")["status"], "ok", "{r:#}");
    assert_eq!(finding(&r, "postgres.reachable")["status"], "ok");
    assert_eq!(finding(&r, "postgres.migrations")["status"], "ok", "{r:#}");
    assert_eq!(finding(&r, "postgres.connections")["status"], "ok", "{r:#}");
    assert_eq!(finding(&r, "recache.breakers")["status"], "ok", "{r:#}");
    assert_eq!(
        finding(&r, "recache.backup")["status"],
        "fail",
        "no verified backup: {r:#}"
    );
    assert_eq!(finding(&r, "recache.drill")["status"], "warn", "{r:#}");
    // Issue 22, M5: no signing key for the backup sets is a warning.
    assert_eq!(finding(&r, "recache.backup_signing")["status"], "warn", "{r:#}");
    for c in r["checks"].as_array().unwrap() {
        assert!(!c["advice"].as_str().unwrap().is_empty(), "{c}");
        if c["status"] != "ok" {
            assert!(
                !c["fix"].as_str().unwrap_or("").is_empty(),
                "a finding has its fix: {c}"
            );
        }
    }
    // A breaker open on the running gateway is a failure.
    env.admin_post("/admin/breakers/index/open?seconds=60", &json!({}))
        .await;
    let (_, r) = doctor(&env, &[]);
    assert_eq!(finding(&r, "recache.breakers")["status"], "fail", "{r:#}");
    env.admin_post("/admin/breakers/index/reset", &json!({})).await;

    // Well configured: AOF everysec, maxmemory with volatile-lru, a verified backup.
    let backends = Backends::real_with_redis(good_redis.url()).await.unwrap();
    let env = Env::on(backends, StubConfig::default(), &extra).await;
    env.chat(common::KEY_A, "something to store").await;
    let (code, out, err) = env.cli(&["backup", "create"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = env.cli(&["backup", "verify", "--latest", "--level", "read-data"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, r) = doctor(&env, &[]);
    assert_eq!(code, 0, "{r:#}");
    for check in [
        "redis.reachable",
        "redis.persistence",
        "redis.memory",
        "redis.eviction",
        "redis.clients",
        "s3.permissions",
        "postgres.migrations",
        "recache.spool",
        "recache.breakers",
        "recache.backup",
    ] {
        assert_eq!(finding(&r, check)["status"], "ok", "{check}: {r:#}");
    }
    // Each upstream answers HTTP (the stub's API root).
    assert_eq!(finding(&r, "upstream.stub")["status"], "ok", "{r:#}");
    // The audit log, counted by class on PostgreSQL: this gateway's one stored answer.
    let audit = finding(&r, "recache.audit_retention");
    assert_eq!(audit["status"], "ok", "{r:#}");
    assert!(
        audit["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 per-answer events (about 0 MiB) kept forever;"),
        "{audit}"
    );
    // The text report: one line per check, and the summary.
    let (code, out, _) = env.cli(&["doctor", "--url", &env.base]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("ok    redis.persistence")), "{out}");
    assert!(out.contains(" ok, ") && out.contains(" fail"), "{out}");
    drop((bad_redis, good_redis));
    let _ = engines::unique("done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_report_adds_up_per_tenant_and_model() {
    let env = Env::on(backends().await, StubConfig::default(), "").await;
    // team-a: 3 questions, 2 asked again (3 misses, 2 hits); team-b: 1 question twice, in a namespace.
    for q in ["one", "two", "three", "one", "two"] {
        env.chat(common::KEY_A, q).await;
    }
    for _ in 0..2 {
        env.post(
            "/v1/chat/completions",
            Some(common::KEY_B),
            &common::chat_body("b's question", false),
            &[("x-recache-namespace", "support")],
        )
        .await;
    }
    // Counters reach metadata with the hit flush (50 ms in tests).
    let metrics = env.metrics_text().await;
    let spent = sample(&metrics, "upstream_usd_spent_total");
    let saved = sample(&metrics, "cache_usd_saved_total");
    assert!(
        spent > 0.0 && saved > 0.0,
        "the stub reports usage and gpt-4o-mini has a price"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let (code, r) = env.cli_json(&["report", "cost", "--since", "1h", "--by", "tenant"]);
        assert_eq!(code, 0, "{r}");
        if r["total"]["requests"] == 7 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let group = |name: &str| {
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report:#}"))
            .clone()
    };
    let a = group("team-a");
    assert_eq!(
        (a["requests"].as_u64(), a["hits"].as_u64(), a["misses"].as_u64()),
        (Some(5), Some(2), Some(3)),
        "{report:#}"
    );
    let b = group("team-b");
    assert_eq!((b["requests"].as_u64(), b["hits"].as_u64()), (Some(2), Some(1)));
    let total = &report["total"];
    assert!(
        (total["usd_spent"].as_f64().unwrap() - spent).abs() < 1e-9,
        "{report:#} vs {spent}"
    );
    assert!(
        (total["usd_saved"].as_f64().unwrap() - saved).abs() < 1e-9,
        "{report:#} vs {saved}"
    );
    assert!(total["tokens_saved"].as_u64().unwrap() > 0);

    let (code, r) = env.cli_json(&["report", "cost", "--since", "1h", "--by", "namespace"]);
    assert_eq!(code, 0);
    let names: Vec<&str> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"support") && names.len() == 2, "{r:#}");
    let (code, out, _) = env.cli(&["report", "cost", "--by", "model", "--format", "csv"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("model,requests,hits,"), "{out}");
    assert!(lines[1].starts_with("gpt-4o-mini,7,3,0,4,"), "{out}");
    assert!(lines.last().unwrap().starts_with("total,7,"), "{out}");
    let (code, _, err) = env.cli(&["report", "cost", "--since", "soon"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_qdrant_collections_and_replication() {
    let Some(url) = engines::qdrant_url() else { return };
    let prefix = format!("{}-", engines::unique("doc").to_lowercase());
    let overrides = [
        ("RECACHE_VECTORS__ENGINE", "qdrant"),
        ("RECACHE_VECTORS__URL", url.as_str()),
        ("RECACHE_VECTORS__COLLECTION_PREFIX", prefix.as_str()),
    ];
    let env = Env::on_with(Backends::Embedded, StubConfig::default(), "", &overrides).await;
    let (_, r) = doctor(&env, &overrides);
    assert_eq!(finding(&r, "qdrant.reachable")["status"], "ok", "{r:#}");
    assert_eq!(finding(&r, "qdrant.collections")["status"], "warn", "none yet: {r:#}");
    // A collection whose name says 384 dimensions but holds 8: the wrong dimension is a failure.
    let name = format!("{prefix}local_all-minilm-l6-v2_384_l2_256");
    let (code, out, err) = env.cli(&["vectors", "init", "--collection", &name, "--dimension", "8"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, r) = doctor(&env, &overrides);
    assert_eq!(code, 1, "{r:#}");
    let c = finding(&r, "qdrant.collections");
    assert_eq!(c["status"], "fail", "{r:#}");
    assert!(c["detail"].as_str().unwrap().contains("dimension 8"), "{c}");
    // One node: replication factor 1 is a warning.
    assert_eq!(finding(&r, "qdrant.replication")["status"], "warn", "{r:#}");
}
