//! `recache health`: checks each storage backend named in the config.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{env_map, load_config, ConfigArgs, OutputFormat, EXIT_CONFIG, EXIT_PROBLEM};
use crate::roles::index_embedded::EmbeddedIndex;
use crate::roles::index_redis::RedisIndex;
use crate::roles::{CheckInfo, Index, RoleHealth};
use crate::server::{open_artifacts, open_metadata};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    All,
    Index,
    Artifacts,
    Vectors,
    Metadata,
    /// The index engine.
    Redis,
    /// The artifacts engine.
    S3,
    /// The vectors engine.
    Qdrant,
    /// The metadata engine.
    Postgres,
}

impl Backend {
    fn role(self) -> Option<&'static str> {
        match self {
            Backend::All => None,
            Backend::Index | Backend::Redis => Some("index"),
            Backend::Artifacts | Backend::S3 => Some("artifacts"),
            Backend::Vectors | Backend::Qdrant => Some("vectors"),
            Backend::Metadata | Backend::Postgres => Some("metadata"),
        }
    }
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Which backend to check.
    #[arg(long, value_enum, default_value = "all")]
    pub backend: Backend,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Per-check timeout in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Ask a running gateway instead (its `/health/ready`, which includes the
    /// circuit breakers' states), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: Option<String>,
}

async fn check<F>(role: &'static str, engine: &'static str, timeout: Duration, fut: F) -> RoleHealth
where
    F: std::future::Future<Output = Result<CheckInfo, String>>,
{
    let start = Instant::now();
    let res = tokio::time::timeout(timeout, fut).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (status, info, error) = match res {
        Ok(Ok(i)) => ("up", i, None),
        Ok(Err(e)) => ("down", CheckInfo::default(), Some(e)),
        Err(_) => (
            "down",
            CheckInfo::default(),
            Some(format!("timed out after {} ms", timeout.as_millis())),
        ),
    };
    RoleHealth {
        role,
        engine,
        status,
        latency_ms,
        info,
        error,
        breaker: None,
    }
}

pub async fn run(args: HealthArgs) -> i32 {
    if let Some(url) = &args.url {
        return from_gateway(url, &args).await;
    }
    let env = env_map();
    let config = match load_config(&args.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_CONFIG;
        }
    };
    let t = Duration::from_millis(args.timeout_ms);
    let want = |r: &str| args.backend.role().is_none_or(|w| w == r);
    let mut report = Vec::new();
    if want("index") {
        let engine = if config.index.engine == "redis" {
            "redis"
        } else {
            "embedded"
        };
        report.push(
            check("index", engine, t, async {
                if engine == "embedded" {
                    // Read-only: a running gateway owns the log, so only inspect it.
                    let path = config.index.path.clone();
                    return tokio::task::spawn_blocking(move || EmbeddedIndex::probe(&path))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string());
                }
                let c = &config.index;
                let idx = RedisIndex::new(c.url.as_deref().unwrap_or_default(), &c.key_prefix, t)
                    .map_err(|e| e.to_string())?;
                idx.check().await.map_err(|e| e.to_string())
            })
            .await,
        );
    }
    if want("artifacts") {
        let engine = if config.artifacts.engine == "s3" {
            "s3"
        } else {
            "embedded"
        };
        report.push(
            check("artifacts", engine, t, async {
                let a = open_artifacts(&config).map_err(|e| format!("{e:#}"))?;
                a.check().await.map_err(|e| e.to_string())
            })
            .await,
        );
    }
    if want("vectors") {
        report.push(RoleHealth {
            role: "vectors",
            engine: "disabled",
            status: "disabled",
            latency_ms: 0.0,
            info: CheckInfo::default(),
            error: None,
            breaker: None,
        });
    }
    if want("metadata") {
        let engine = if config.metadata.engine == "postgres" {
            "postgres"
        } else {
            "embedded"
        };
        report.push(
            check("metadata", engine, t, async {
                let m = open_metadata(&config).await.map_err(|e| format!("{e:#}"))?;
                m.check().await.map_err(|e| e.to_string())
            })
            .await,
        );
    }
    print_report(&report, args.format)
}

/// Prints a report and returns the exit code (1 when a backend is down).
fn print_report(report: &[RoleHealth], format: OutputFormat) -> i32 {
    let down = report.iter().filter(|r| r.status == "down").count();
    match format {
        OutputFormat::Json => {
            println!("{}", json!({"ok": down == 0, "backends": report}));
        }
        OutputFormat::Text => {
            println!(
                "{:<10} {:<9} {:<9} {:>9}  detail",
                "role", "engine", "status", "latency"
            );
            for r in report {
                let mut detail = Vec::new();
                if let Some(v) = &r.info.version {
                    detail.push(v.clone());
                }
                if let Some(n) = r.info.entries {
                    detail.push(format!("{n} entries"));
                }
                detail.extend(r.info.warnings.iter().map(|w| format!("WARNING: {w}")));
                if let Some(b) = &r.breaker {
                    detail.push(format!("breaker {}", b.state.as_str()));
                }
                if let Some(e) = &r.error {
                    detail.push(format!("ERROR: {e}"));
                }
                println!(
                    "{:<10} {:<9} {:<9} {:>7.1}ms  {}",
                    r.role,
                    r.engine,
                    r.status,
                    r.latency_ms,
                    detail.join("; ")
                );
            }
        }
    }
    if down > 0 {
        EXIT_PROBLEM
    } else {
        0
    }
}

/// `recache health --url`: reads a running gateway's `/health/ready`.
async fn from_gateway(url: &str, args: &HealthArgs) -> i32 {
    let ready = format!("{}/health/ready", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms.max(100) * 2))
        .build();
    let body: serde_json::Value = match client {
        Ok(c) => match c.get(&ready).send().await {
            Ok(r) => match r.json().await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("recache: {ready} did not answer JSON: {e}");
                    return EXIT_PROBLEM;
                }
            },
            Err(e) => {
                eprintln!("recache: cannot reach the gateway at {ready}: {e}");
                return EXIT_PROBLEM;
            }
        },
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_PROBLEM;
        }
    };
    let want = |r: &str| args.backend.role().is_none_or(|w| w == r);
    let roles = body["roles"].as_array().cloned().unwrap_or_default();
    if args.format == OutputFormat::Json {
        let picked: Vec<_> = roles
            .iter()
            .filter(|r| want(r["role"].as_str().unwrap_or("")))
            .cloned()
            .collect();
        let down = picked.iter().filter(|r| r["status"] == "down").count();
        println!(
            "{}",
            json!({"ok": down == 0, "gateway": body["status"], "backends": picked})
        );
        return if down > 0 { EXIT_PROBLEM } else { 0 };
    }
    println!("gateway {}: {}", url, body["status"].as_str().unwrap_or("?"));
    println!(
        "{:<10} {:<9} {:<9} {:>9}  detail",
        "role", "engine", "status", "latency"
    );
    let mut down = 0;
    for r in roles.iter().filter(|r| want(r["role"].as_str().unwrap_or(""))) {
        if r["status"] == "down" {
            down += 1;
        }
        let mut detail = Vec::new();
        if let Some(v) = r["version"].as_str() {
            detail.push(v.to_string());
        }
        if let Some(b) = r["breaker"]["state"].as_str() {
            detail.push(format!("breaker {b}"));
        }
        if let Some(e) = r["error"].as_str() {
            detail.push(format!("ERROR: {e}"));
        }
        println!(
            "{:<10} {:<9} {:<9} {:>7.1}ms  {}",
            r["role"].as_str().unwrap_or(""),
            r["engine"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["latency_ms"].as_f64().unwrap_or(0.0),
            detail.join("; ")
        );
    }
    if down > 0 {
        EXIT_PROBLEM
    } else {
        0
    }
}
