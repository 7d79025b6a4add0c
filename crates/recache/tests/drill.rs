//! `recache drill`: every scenario once, `--managed`, on the harness's real
//! engines (Redis, S3, PostgreSQL; Qdrant for vectors-down when at hand) at a
//! small scale, plus the refusal of a loss without `allow_destructive`, the
//! history (`drill list`, `drill schedule`), and the chart rendered in
//! headless Chromium. Without the harness the same drills run on the embedded
//! stores (outages then force the breakers open).

mod common;

use std::path::{Path, PathBuf};

use common::{config_text, engines, Backends};
use recache_stub_provider::StubConfig;
use serde_json::Value;

struct Rig {
    _stub: std::sync::Arc<recache_stub_provider::StubState>,
    dir: tempfile::TempDir,
    config: PathBuf,
    real: bool,
    /// `RECACHE_*` overrides for the drill.
    env: Vec<(String, String)>,
    /// More `drill run` arguments.
    args: Vec<String>,
}

/// A stub provider and a config on fresh stores (no gateway: the drill starts its own).
async fn rig(extra: &str, qdrant: bool) -> Rig {
    let stub = recache_stub_provider::StubState::new(StubConfig::default());
    let addr = recache_stub_provider::spawn("127.0.0.1:0".parse().unwrap(), stub.clone())
        .await
        .unwrap();
    let backends = if std::env::var("RECACHE_TEST_ENGINES").is_ok_and(|v| v == "1") {
        Backends::real().await.expect("engines")
    } else {
        eprintln!("drill tests on the embedded stores (run under scripts/with-engines.sh for the real engines)");
        Backends::Embedded
    };
    let dir = tempfile::tempdir().unwrap();
    let mut text = config_text(&backends, dir.path(), &format!("http://{addr}/v1"), "");
    if qdrant {
        if let Some(url) = engines::qdrant_url() {
            // (config_text's [vectors] table comes first; a later key wins nothing in TOML, so replace it.)
            text = text.replace(
                &format!("[vectors]\npath = \"{}\"\n", dir.path().join("vectors").display()),
                &format!(
                    "[vectors]\nengine = \"qdrant\"\nurl = \"{url}\"\ncollection_prefix = \"{}\"\n",
                    engines::unique("drill")
                ),
            );
        }
    }
    let out = dir.path().join("drills");
    text.push_str(&format!(
        "[breaker]\nopen_seconds = 1\n[drill]\nout_dir = \"{}\"\nrecovery_timeout = \"60s\"\n{extra}",
        out.display()
    ));
    let config = dir.path().join("recache.toml");
    std::fs::write(&config, text).unwrap();
    Rig {
        _stub: stub,
        real: backends.is_real(),
        dir,
        config,
        env: Vec::new(),
        args: Vec::new(),
    }
}

const DESTRUCTIVE: &str = "[drill.engines.index]\nallow_destructive = true\n[drill.engines.artifacts]\nallow_destructive = true\n[drill.engines.metadata]\nallow_destructive = true\n[drill.engines.vectors]\nallow_destructive = true\n";

fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    cli_env(config, args, &[])
}

fn cli_env(config: &Path, args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("recache runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs one drill at a small scale; returns (exit code, report JSON, report folder).
async fn drill(rig: &Rig, scenario: &str) -> (i32, Value, PathBuf) {
    let out = rig.dir.path().join(format!("report-{scenario}"));
    let config = rig.config.clone();
    let env = rig.env.clone();
    let args: Vec<String> = [
        "drill",
        "run",
        "--managed",
        "--scenario",
        scenario,
        "--rps",
        "20",
        "--duration",
        "10s",
        "--steady",
        "3s",
        "--fault-seconds",
        "3",
        "--entries",
        "40",
        "--fraction",
        "0.3",
        "--format",
        "json",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .chain(rig.args.iter().cloned())
    .collect();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_env(&config, &a, &env)
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{scenario}: no JSON report ({e}) (exit {code}): {stdout}\nstderr: {stderr}"));
    (code, v, out)
}

/// The Markdown results table as (measure, target, actual, result) rows.
fn md_results(md: &str) -> Vec<[String; 4]> {
    let start = md.find("## Results").expect("a results section");
    md[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| Measure"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect();
            [cells[0].clone(), cells[1].clone(), cells[2].clone(), cells[3].clone()]
        })
        .collect()
}

/// What every drill must show.
fn check(scenario: &str, code: i32, v: &Value, dir: &Path) {
    let m = &v["measures"];
    let pretty = || serde_json::to_string_pretty(&v["results"]).unwrap() + &format!("\ntimeline: {}", v["timeline"]);
    assert_eq!(
        code,
        0,
        "{scenario}: verdict {} (exit {code})\n{}",
        v["verdict"],
        pretty()
    );
    assert_eq!(v["verdict"], "pass");
    assert_eq!(
        m["client_errors"],
        0,
        "{scenario}: zero client-visible errors\n{}",
        pretty()
    );
    assert!(m["requests"].as_u64().unwrap() > 100, "{scenario}: the load ran");
    let rto = m["rto_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{scenario}: a numeric RTO"));
    let rpo = m["rpo_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{scenario}: a numeric RPO"));
    assert!(rto >= 0.0 && rpo >= 0.0);
    let steady = m["steady_hit_rate"].as_f64().unwrap();
    assert!(
        steady > 0.6,
        "{scenario}: the steady state served repeats from the cache ({steady})"
    );
    assert!(
        m["hit_rate_after"].as_f64().unwrap() >= 0.9 * steady,
        "{scenario}: the hit rate recovered\n{}",
        pretty()
    );
    assert_eq!(m["integrity"]["problems"], 0, "{scenario}: audit clean after recovery");
    for f in ["report.md", "report.json", "chart.svg"] {
        assert!(dir.join(f).is_file(), "{scenario}: {f} written");
    }
    // The JSON file says what stdout said, and the Markdown table says the same.
    let file: Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(file["results"], v["results"]);
    let rows = md_results(&std::fs::read_to_string(dir.join("report.md")).unwrap());
    let json_rows = file["results"].as_array().unwrap();
    assert_eq!(rows.len(), json_rows.len(), "{scenario}: one Markdown row per result");
    for (row, j) in rows.iter().zip(json_rows) {
        let result = match j["pass"].as_bool() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "info",
        };
        assert_eq!(
            row,
            &[
                j["measure"].as_str().unwrap().to_string(),
                j["target"].as_str().unwrap().to_string(),
                j["actual"].as_str().unwrap().to_string(),
                result.to_string()
            ],
            "{scenario}: Markdown and JSON agree"
        );
    }
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "{scenario}: a chart with data"
    );
}

async fn outage(scenario: &str, qdrant: bool) -> (Value, bool) {
    let mut rig = rig("", qdrant).await;
    if scenario == "artifacts-down" {
        // Without the memory tier, which would keep serving every hot answer of this small set.
        rig.env.push(("RECACHE_ARTIFACTS__MEMORY_CACHE_MB".into(), "0".into()));
    }
    let (code, v, dir) = drill(&rig, scenario).await;
    check(scenario, code, &v, &dir);
    (v, rig.real)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_down() {
    let (v, real) = outage("index-down", false).await;
    let m = &v["measures"];
    assert!(
        m["hit_rate_during"].as_f64().unwrap() < 0.1,
        "no hit without the index: {m}"
    );
    assert!(m["fault_to_open_seconds"].is_number(), "the breaker opened: {m}");
    assert!(m["repair_to_closed_seconds"].is_number(), "and closed again: {m}");
    if real {
        assert!(v["settings"]["fault"][0]
            .as_str()
            .unwrap()
            .contains("cut the connection"));
    }
    assert!(m["spend_during_usd"].as_f64().unwrap() > 0.0, "misses were paid for");
    assert!(m["predicted_spend_usd"].as_f64().unwrap() > 0.0, "and predicted");
    // The drill tenant's request limit is counted on the index: during the
    // fault its requests were admitted by local-share, and none was refused.
    assert!(
        m["limits_admitted_without_counters"].as_u64().unwrap() > 0,
        "admissions without the shared counters were counted: {m}"
    );
    assert_eq!(m["limits_refused"], 0, "{m}");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["measure"] == "Requests admitted against the limits during the fault"),
        "the report has the line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_down() {
    let (v, _) = outage("artifacts-down", false).await;
    let m = &v["measures"];
    // (Once the breaker is open; the store may answer a few before it opens.)
    assert!(
        m["hit_rate_during"].as_f64().unwrap() < 0.5 * m["steady_hit_rate"].as_f64().unwrap(),
        "{m}"
    );
    assert!(m["fault_to_open_seconds"].is_number(), "the breaker opened: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_down() {
    let (v, _) = outage("vectors-down", true).await;
    let m = &v["measures"];
    assert!(m["rto_seconds"].as_f64().unwrap() < 1.0, "exact hits go on: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_down() {
    let (v, _) = outage("metadata-down", false).await;
    let m = &v["measures"];
    assert!(
        m["hit_rate_during"].as_f64().unwrap() > 0.6,
        "hits go on without metadata: {m}"
    );
    assert!(m["rto_seconds"].as_f64().unwrap() < 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down() {
    let (v, _) = outage("all-down", false).await;
    assert!(v["measures"]["hit_rate_during"].as_f64().unwrap() < 0.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down() {
    let (v, _) = outage("provider-down", false).await;
    let m = &v["measures"];
    assert!(
        m["provider_errors"].as_u64().unwrap() > 0,
        "new questions failed while the provider was down: {m}"
    );
    assert!(m["hit_rate_during"].as_f64().unwrap() > 0.6, "repeats were served: {m}");
    assert_eq!(m["predicted_spend_usd"].as_f64().unwrap(), 0.0);
}

async fn loss(scenario: &str) -> Value {
    let mut rig = rig(DESTRUCTIVE, false).await;
    if scenario == "index-loss" {
        // A sampled integrity audit (a random run of 25 entries of about 90).
        rig.args.extend(["--audit-sample".to_string(), "25".to_string()]);
    }
    let (code, v, dir) = drill(&rig, scenario).await;
    check(scenario, code, &v, &dir);
    let timeline = v["timeline"].to_string();
    assert!(timeline.contains("FAULT") && timeline.contains("REPAIR"), "{timeline}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_loss() {
    let v = loss("index-loss").await;
    assert!(
        v["measures"]["integrity"]["entries"].as_u64().unwrap() <= 25,
        "sampled: {}",
        v["measures"]
    );
    assert_eq!(v["measures"]["lost_entries"], 0, "the index was rebuilt from metadata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_loss() {
    let v = loss("artifacts-loss").await;
    assert_eq!(v["measures"]["lost_entries"], 0, "the lost answers were bought back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_loss() {
    let v = loss("metadata-loss").await;
    assert_eq!(v["measures"]["lost_entries"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restore_then_history() {
    let rig = rig(DESTRUCTIVE, false).await;
    let (code, v, dir) = drill(&rig, "full-restore").await;
    check("full-restore", code, &v, &dir);
    let m = &v["measures"];
    assert!(m["rpo_seconds"].as_f64().unwrap() > 0.0, "RPO = backup to fault: {m}");
    assert_eq!(m["lost_entries"], 0, "every seeded entry was in the backup");
    assert!(v["timeline"].to_string().contains("restored"));
    // The drill is in the history, and the calendar counts it.
    let (code, out, err) = cli(&rig.config, &["drill", "list", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let l: Value = serde_json::from_str(out.trim()).unwrap();
    let d = &l["drills"][0];
    assert_eq!(d["scenario"], "full-restore");
    assert_eq!(d["verdict"], "pass");
    assert!(d["rto_seconds"].is_number() && d["rpo_seconds"].is_number());
    assert_eq!(d["report"], dir.display().to_string());
    let (code, out, _) = cli(&rig.config, &["drill", "schedule", "--format", "json"]);
    assert_eq!(code, 1, "the other scenarios are overdue");
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    let row = |name: &str| {
        s["calendar"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scenario"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("full-restore")["status"], "ok");
    assert_eq!(row("index-down")["status"], "overdue");
    assert_eq!(s["overdue"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_without_allow_destructive_is_refused() {
    let rig = rig("", false).await;
    for scenario in ["index-loss", "artifacts-loss", "metadata-loss", "full-restore"] {
        let (code, _, err) = cli(&rig.config, &["drill", "run", "--managed", "--scenario", scenario]);
        assert_eq!(code, 2, "{scenario}: refused with exit 2: {err}");
        assert!(
            err.contains("allow_destructive"),
            "{scenario}: says how to allow it: {err}"
        );
    }
    assert!(!rig.dir.path().join("drills").exists(), "no drill ran, no report");
    let (code, _, err) = cli(&rig.config, &["drill", "run", "--managed", "--scenario", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("index-down"), "lists the scenarios: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_renders_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find_map(common::tool) else {
        return;
    };
    let rig = rig("", false).await;
    let (code, v, dir) = drill(&rig, "index-down").await;
    check("index-down", code, &v, &dir);
    let profile = tempfile::tempdir().unwrap();
    let shot = rig.dir.path().join("chart.png");
    let out = std::process::Command::new(chromium)
        .args(common::CHROMIUM_FLAGS)
        .arg("--window-size=900,700")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", dir.join("chart.svg").display()))
        .output()
        .expect("chromium runs");
    assert!(
        shot.is_file(),
        "chromium wrote a screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (w, h, channels, px) = common::png_pixels(&std::fs::read(&shot).unwrap());
    assert_eq!((w, h), (900, 700));
    // Not blank: many pixels differ from the background, and the chart's colours are there.
    let pixels: Vec<&[u8]> = px.chunks(channels).collect();
    let background = pixels[0];
    let differing = pixels.iter().filter(|p| p[..3] != background[..3]).count();
    assert!(
        differing > pixels.len() / 50,
        "{differing} of {} pixels drawn",
        pixels.len()
    );
    let blue = pixels.iter().filter(|p| p[2] > 150 && p[0] < 100).count();
    let red = pixels.iter().filter(|p| p[0] > 150 && p[1] < 100 && p[2] < 100).count();
    assert!(blue > 100, "the hit-rate line is drawn ({blue} blue pixels)");
    assert!(red > 50, "the fault is marked ({red} red pixels)");
}

/// A running gateway (`--url`): outages through the admin API (forced breaker
/// with a deadline), traffic with a client key from the environment, integrity
/// by `recache audit` on the config's stores, the drill recorded in its metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gateway_is_drilled_through_its_admin_api() {
    let env = common::Env::on_with(
        Backends::Embedded,
        StubConfig::default(),
        "",
        &[("RECACHE_DRILL_KEY", common::KEY_A)],
    )
    .await;
    let out = env.path("report");
    let (code, v) = drill_url(&env, "index-down", &out).await;
    assert_eq!(v["mode"], "remote");
    assert!(
        v["settings"]["fault"][0].as_str().unwrap().contains("breaker"),
        "{}",
        v["settings"]
    );
    check("index-down (--url)", code, &v, &out);
    assert!(v["measures"]["hit_rate_during"].as_f64().unwrap() < 0.1);
    // The gateway's breaker is closed again, and its metadata holds the drill.
    let breakers = env.admin_json("/admin/breakers").await;
    assert!(
        breakers["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] != "forced_open"),
        "{breakers}"
    );
    let (code, l) = env.cli_json(&["drill", "list"]);
    assert_eq!(code, 0);
    assert_eq!(l["drills"][0]["scenario"], "index-down");
    assert_eq!(l["drills"][0]["mode"], "remote");
    // Without a client key the drill refuses.
    let (code, _, err) = cli(
        &env.config_file(),
        &[
            "drill",
            "run",
            "--url",
            &env.base,
            "--scenario",
            "index-down",
            "--key-env",
            "NO_SUCH_VAR",
        ],
    );
    assert_eq!(code, 2, "{err}");
}

/// Runs a small drill against the running gateway of `env` (`--url`); returns (exit code, report).
async fn drill_url(env: &common::Env, scenario: &str, out: &Path) -> (i32, Value) {
    let (base, config, out, scenario) = (
        env.base.clone(),
        env.config_file(),
        out.to_path_buf(),
        scenario.to_string(),
    );
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
            .args(["drill", "run", "--url", &base, "--scenario", &scenario, "--rps", "20"])
            .args([
                "--duration",
                "10s",
                "--steady",
                "3s",
                "--fault-seconds",
                "3",
                "--entries",
                "40",
            ])
            .args(["--fraction", "0.3", "--format", "json", "--out"])
            .arg(&out)
            .arg("--config")
            .arg(&config)
            .env("RECACHE_ADMIN_TOKEN", "admin-secret")
            .env("RECACHE_DRILL_KEY", common::KEY_A)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, v)
}

/// Losses and a full restore against a running gateway (`--url`): the
/// gateway destroys its own stores with a `drill-wipe` job (which its config
/// must allow), restores with a `backup-restore` job, and the audit after is
/// clean. A gateway whose config does not allow it refuses the wipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_and_full_restore_through_the_admin_api() {
    let backups = tempfile::tempdir().unwrap();
    let extra = format!(
        "{DESTRUCTIVE}[backup]\ntarget = \"{}\"\n[breaker]\nopen_seconds = 1\n[drill]\nrecovery_timeout = \"60s\"\n",
        backups.path().display()
    );
    let env = common::Env::on_with(
        Backends::Embedded,
        StubConfig::default(),
        &extra,
        &[("RECACHE_DRILL_KEY", common::KEY_A)],
    )
    .await;
    for scenario in ["index-loss", "full-restore"] {
        let out = env.path(&format!("report-{scenario}"));
        let (code, v) = drill_url(&env, scenario, &out).await;
        assert_eq!(v["mode"], "remote");
        check(&format!("{scenario} (--url)"), code, &v, &out);
        let timeline = v["timeline"].to_string();
        println!("{scenario} (--url): {timeline}");
        let wiped = match scenario {
            "index-loss" => "FAULT index wiped: ",
            _ => "FAULT every store wiped: ",
        };
        let n: u64 = timeline
            .split(wiped)
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{scenario}: the gateway's wipe job reported what it destroyed: {timeline}"));
        assert!(n > 0, "{scenario}: pointers destroyed: {timeline}");
        if scenario == "full-restore" {
            assert!(timeline.contains("REPAIR backup"), "{timeline}");
        }
    }
    // The gateway checks its own config: without allow_destructive the wipe job is refused.
    let plain = common::Env::on_with(Backends::Embedded, StubConfig::default(), "", &[]).await;
    let body = serde_json::json!({"kind": "drill-wipe", "payload": {"stores": ["index"]}});
    let (code, job) = plain.admin_post("/admin/jobs", &body).await;
    assert_eq!(code, 200, "{job}");
    let path = format!("/admin/jobs/{}", job["job"]);
    let mut last = Value::Null;
    for _ in 0..100 {
        last = plain.admin_json(&path).await;
        if last["job"]["state"] == "dead" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last["job"]["state"], "dead", "{last}");
    assert!(
        last["job"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("allow_destructive"),
        "{last}"
    );
}
