//! `recache health`: checks each storage backend named in the config.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{env_map, load_config, ConfigArgs, OutputFormat, EXIT_CONFIG, EXIT_PROBLEM};
use recache_core::config::{ArtifactsEngine, IndexEngine, MetadataEngine, VectorsEngine};
use recache_storage::roles::factory::{open_artifacts_as, open_metadata, IndexAccess};
use recache_storage::roles::index_embedded::EmbeddedIndex;
use recache_storage::roles::index_redis::RedisIndex;
use recache_storage::roles::{timed_check, CheckInfo, Index, RoleHealth, Vectors};

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

pub async fn run(args: HealthArgs) -> i32 {
    if let Some(url) = &args.url {
        return from_gateway(url, &args).await;
    }
    let env = env_map();
    let mut config = match load_config(&args.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_CONFIG;
        }
    };
    // The engines' clients get this command's time limit, not the request
    // path's (a 250 ms S3 PUT on a busy machine is not a down S3).
    super::raise_timeouts(&mut config, args.timeout_ms);
    let t = Duration::from_millis(args.timeout_ms);
    let want = |r: &str| args.backend.role().is_none_or(|w| w == r);
    let mut report = Vec::new();
    if want("index") {
        let engine = if config.index.engine == IndexEngine::Redis {
            "redis"
        } else {
            "embedded"
        };
        report.push(
            timed_check(
                "index",
                engine,
                async {
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
                },
                t,
            )
            .await,
        );
    }
    if want("artifacts") {
        let engine = if config.artifacts.engine == ArtifactsEngine::S3 {
            "s3"
        } else {
            "embedded"
        };
        report.push(
            timed_check(
                "artifacts",
                engine,
                async {
                    let a = open_artifacts_as(&config, IndexAccess::ReadOnly).map_err(|e| format!("{e:#}"))?;
                    a.check().await.map_err(|e| e.to_string())
                },
                t,
            )
            .await,
        );
    }
    if want("vectors") {
        report.push(match config.vectors.engine {
            VectorsEngine::Embedded => {
                let path = config.vectors.path.clone();
                timed_check(
                    "vectors",
                    "embedded",
                    async move {
                        // Read-only: a running gateway owns the store, so only inspect its logs.
                        let cols = tokio::task::spawn_blocking(move || {
                            recache_storage::roles::vectors_embedded::EmbeddedVectors::probe(&path)
                        })
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                        let list: Vec<String> = cols
                            .iter()
                            .map(|(n, d, bytes)| format!("{n} (dimension {d}, {bytes} bytes)"))
                            .collect();
                        Ok::<_, String>(CheckInfo {
                            version: Some(format!("{} collection(s): {}", cols.len(), list.join(", "))),
                            entries: None,
                            warnings: Vec::new(),
                        })
                    },
                    t,
                )
                .await
            }
            VectorsEngine::Qdrant => {
                timed_check(
                    "vectors",
                    "qdrant",
                    async {
                        let v = recache_storage::roles::vectors_qdrant::QdrantVectors::new(
                            config.vectors.url.as_deref().unwrap_or_default(),
                            t,
                            &config.vectors.collection_prefix,
                        )
                        .map_err(|e| format!("{e:#}"))?;
                        v.check().await.map_err(|e| e.to_string())
                    },
                    t,
                )
                .await
            }
            VectorsEngine::Disabled => RoleHealth {
                role: "vectors",
                engine: "disabled",
                status: "disabled",
                latency_ms: 0.0,
                info: CheckInfo::default(),
                error: None,
                breaker: None,
            },
        });
    }
    if want("metadata") {
        let engine = if config.metadata.engine == MetadataEngine::Postgres {
            "postgres"
        } else {
            "embedded"
        };
        report.push(
            timed_check(
                "metadata",
                engine,
                async {
                    let (m, _) = open_metadata(&config).await.map_err(|e| format!("{e:#}"))?;
                    m.check().await.map_err(|e| e.to_string())
                },
                t,
            )
            .await,
        );
    }
    let rows: Vec<serde_json::Value> = report
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .collect();
    print_report(&rows, args.format, None)
}

/// Prints backend rows (the JSON shape of [`RoleHealth`], which is also what
/// a gateway's `/health/ready` returns) and gives the exit code: 1 when a
/// backend is down.
fn print_report(rows: &[serde_json::Value], format: OutputFormat, gateway: Option<&serde_json::Value>) -> i32 {
    let down = rows.iter().filter(|r| r["status"] == "down").count();
    match format {
        OutputFormat::Json => {
            let mut out = json!({"ok": down == 0, "backends": rows});
            if let Some(g) = gateway {
                out["gateway"] = g.clone();
            }
            println!("{out}");
        }
        OutputFormat::Text => {
            if let Some(g) = gateway {
                println!("gateway: {}", g.as_str().unwrap_or("?"));
            }
            println!(
                "{:<10} {:<9} {:<9} {:>9}  detail",
                "role", "engine", "status", "latency"
            );
            for r in rows {
                let mut detail = Vec::new();
                if let Some(v) = r["version"].as_str() {
                    detail.push(v.to_string());
                }
                if let Some(n) = r["entries"].as_u64() {
                    detail.push(format!("{n} entries"));
                }
                for w in r["warnings"].as_array().into_iter().flatten() {
                    detail.push(format!("WARNING: {}", w.as_str().unwrap_or("")));
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
    let req = |c: reqwest::Client| {
        let r = c.get(&ready);
        match super::metrics_token(&args.config) {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    let body: serde_json::Value = match client {
        Ok(c) => match req(c).send().await {
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
    if body.get("roles").is_none() {
        eprintln!(
            "recache: {ready} answered only its status ({}): the roles need the metrics token (RECACHE_METRICS_TOKEN, or --config with server.metrics_token_env or the admin token)",
            body["status"]
        );
        return EXIT_PROBLEM;
    }
    let want = |r: &str| args.backend.role().is_none_or(|w| w == r);
    let rows: Vec<serde_json::Value> = body["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| want(r["role"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    print_report(&rows, args.format, Some(&body["status"]))
}
