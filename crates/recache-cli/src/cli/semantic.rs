//! `recache semantic report` (`semantic eval` is in `semantic_eval.rs`) and
//! `recache vectors init|list`.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{env_map, load_config, ConfigArgs, OutputFormat, EXIT_CONFIG, EXIT_PROBLEM};
use recache_core::config::VectorsEngine;
use recache_storage::roles::Vectors;

#[derive(Args, Debug)]
pub struct SemanticArgs {
    #[command(subcommand)]
    pub command: SemanticCommand,
}

#[derive(Subcommand, Debug)]
pub enum SemanticCommand {
    /// Per tenant and namespace: semantic hits, shadow agreements, measured
    /// false-hit rate with its 95 % interval, the threshold in force. Asks the
    /// running gateway (the counters live there); exit 1 when a tenant's
    /// measured rate is over its error budget.
    Report(ReportArgs),
    /// Recall on paraphrases and false hits on near-misses of a labelled
    /// pairs file, at each threshold from 0.70 to 0.98, with and without the
    /// guards, and the guards' refusals by class: the curve to choose a
    /// threshold by. Runs the embedder here; no gateway needed.
    Eval(super::semantic_eval::EvalArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The gateway (default: http:// + server.listen from the config).
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct VectorsArgs {
    #[command(subcommand)]
    pub command: VectorsCommand,
}

#[derive(Subcommand, Debug)]
pub enum VectorsCommand {
    /// Create a collection (idempotent; an existing one with another dimension is an error).
    Init(InitArgs),
    /// The collections, their dimensions and point counts.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long)]
    pub collection: String,
    #[arg(long)]
    pub dimension: usize,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

pub(crate) async fn run_semantic(a: SemanticArgs) -> i32 {
    match a.command {
        SemanticCommand::Report(r) => report(r).await,
        SemanticCommand::Eval(e) => super::semantic_eval::run(e).await,
    }
}

pub(crate) async fn run_vectors(a: VectorsArgs) -> i32 {
    match a.command {
        VectorsCommand::Init(i) => init(i).await,
        VectorsCommand::List(l) => list(l).await,
    }
}

async fn report(a: ReportArgs) -> i32 {
    let env = env_map();
    let config = load_config(&a.config, &env);
    let url = match (&a.url, &config) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Ok(c)) => format!("http://{}", c.server.listen),
        (None, Err(e)) => {
            eprintln!("recache: {e} (or give --url)");
            return EXIT_CONFIG;
        }
    };
    let token = match &config {
        Ok(c) => c.admin_token(&env),
        Err(_) => env.get("RECACHE_ADMIN_TOKEN").cloned(),
    };
    let Some(token) = token else {
        eprintln!(
            "recache: no admin token (set the variable server.admin_token_env names, RECACHE_ADMIN_TOKEN by default)"
        );
        return EXIT_CONFIG;
    };
    let endpoint = format!("{url}/admin/semantic");
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_PROBLEM;
        }
    };
    let resp = match client.get(&endpoint).bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("recache: cannot reach the gateway at {endpoint}: {e}");
            return EXIT_PROBLEM;
        }
    };
    let status = resp.status();
    let body: Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("recache: {endpoint} did not answer JSON: {e}");
            return EXIT_PROBLEM;
        }
    };
    if !status.is_success() {
        eprintln!(
            "recache: {endpoint} answered {status}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        );
        return EXIT_PROBLEM;
    }
    let over_budget = body["report"]["tenants"].as_array().into_iter().flatten().any(|t| {
        t["false_hit_rate"]
            .as_f64()
            .is_some_and(|r| r > t["error_budget"].as_f64().unwrap_or(1.0))
    });
    match a.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default()),
        OutputFormat::Text => print!("{}", text(&body)),
    }
    if over_budget {
        EXIT_PROBLEM
    } else {
        0
    }
}

fn text(body: &Value) -> String {
    if body["enabled"] != true {
        return format!(
            "semantic matching is off on this gateway (vectors engine: {})\n",
            body["vectors_engine"].as_str().unwrap_or("?")
        );
    }
    let r = &body["report"];
    let mut out = String::new();
    for e in r["embedders"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "embedder {}: {} -> collection {}\n",
            e["name"].as_str().unwrap_or(""),
            e["fingerprint"].as_str().unwrap_or(""),
            e["collection"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "embedder breaker: {}; vectors engine: {}\n",
        r["embedder_breaker"]["state"].as_str().unwrap_or("?"),
        r["vectors_engine"].as_str().unwrap_or("?")
    ));
    for c in r["collections"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "collection {}: dimension {}, {} vectors\n",
            c["name"].as_str().unwrap_or(""),
            c["dimension"],
            c["points"]
        ));
    }
    let lookups: Vec<String> = r["lookups"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out.push_str(&format!("lookups: {}\n\n", lookups.join(", ")));
    out.push_str(&format!(
        "{:<16} {:<16} {:<7} {:>7} {:>9} {:>9} {:>8} {:>22} {:>9}\n",
        "tenant", "namespace", "mode", "hits", "shadow", "verified", "refused", "false hits (95% CI)", "threshold"
    ));
    for t in r["tenants"].as_array().into_iter().flatten() {
        let checks = t["shadow_checks"].as_u64().unwrap_or(0) + t["verifications"].as_u64().unwrap_or(0);
        let rate = match (t["false_hit_rate"].as_f64(), t["false_hit_rate_ci95"].as_array()) {
            (Some(p), Some(ci)) => format!(
                "{:.1}% ({:.1}-{:.1}) n={checks}",
                p * 100.0,
                ci[0].as_f64().unwrap_or(0.0) * 100.0,
                ci[1].as_f64().unwrap_or(0.0) * 100.0
            ),
            _ => "no checks yet".into(),
        };
        let th = t["threshold"].as_f64().unwrap_or(0.0);
        let base = t["base_threshold"].as_f64().unwrap_or(0.0);
        let threshold = if th > base + 1e-6 {
            format!("{th:.3} (raised from {base:.3})")
        } else {
            format!("{th:.3}")
        };
        out.push_str(&format!(
            "{:<16} {:<16} {:<7} {:>7} {:>4}/{:<4} {:>4}/{:<4} {:>8} {:>22} {:>9}\n",
            t["tenant"].as_str().unwrap_or(""),
            t["namespace"].as_str().unwrap_or(""),
            t["mode"].as_str().unwrap_or(""),
            t["semantic_hits"],
            t["shadow_agreements"],
            t["shadow_checks"],
            t["verification_agreements"],
            t["verifications"],
            t["guard_refusals"],
            rate,
            threshold
        ));
    }
    out.push_str("(shadow and verified: agreements/checks; refused: candidates the guards stopped)\n");
    out
}

async fn open_vectors(config: &ConfigArgs) -> Result<std::sync::Arc<dyn Vectors>, i32> {
    let env = env_map();
    let config = load_config(config, &env).map_err(|e| {
        eprintln!("recache: {e}");
        EXIT_CONFIG
    })?;
    if config.vectors.engine == VectorsEngine::Disabled {
        eprintln!("recache: vectors.engine is \"disabled\" in this configuration");
        return Err(EXIT_CONFIG);
    }
    let breaker = recache_core::breaker::Breaker::new("vectors", &config.breaker);
    recache_storage::roles::factory::open_vectors(&config, breaker, recache_storage::roles::factory::IndexAccess::Write)
        .map_err(|e| {
            eprintln!("recache: {e:#}");
            EXIT_PROBLEM
        })
}

async fn init(a: InitArgs) -> i32 {
    let v = match open_vectors(&a.config).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    match v.ensure_collection(&a.collection, a.dimension).await {
        Ok(()) => {
            let _ = v.flush().await;
            println!(
                "collection {} ready (dimension {}, engine {})",
                a.collection,
                a.dimension,
                v.engine()
            );
            0
        }
        Err(e) => {
            eprintln!("recache: {e}");
            EXIT_PROBLEM
        }
    }
}

async fn list(a: ListArgs) -> i32 {
    let v = match open_vectors(&a.config).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    match v.collections().await {
        Ok(cols) => {
            match a.format {
                OutputFormat::Json => println!("{}", json!({"engine": v.engine(), "collections": cols})),
                OutputFormat::Text => {
                    for c in &cols {
                        println!("{}  dimension {}  {} vectors", c.name, c.dimension, c.points);
                    }
                    if cols.is_empty() {
                        println!("no collections");
                    }
                }
            }
            0
        }
        Err(e) => {
            eprintln!("recache: {e}");
            EXIT_PROBLEM
        }
    }
}
