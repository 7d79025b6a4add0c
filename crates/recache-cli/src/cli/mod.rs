//! The `recache` command line.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use recache_core::config::{Config, ConfigError, LogFormat};

pub mod audit;
pub mod backup;
pub mod bench;
pub mod bench_dialect;
pub mod bench_semantic;
pub mod doctor;
pub mod drill;
pub mod encryption;
pub mod health;
pub mod keys;
pub mod ops;
pub mod purge;
pub mod repair;
pub mod report;
pub mod semantic;
mod semantic_eval;
pub mod serve;
pub mod warmer;

/// Exit codes: 0 fine, 1 a problem was found or a runtime failure, 2 bad usage or configuration.
pub const EXIT_PROBLEM: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "recache",
    version,
    about = "A resilient cache gateway for LLM and API traffic, with disaster recovery built in."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Check the storage backends and report their state.
    Health(health::HealthArgs),
    /// Measure a running gateway (load) or fill a store with entries (seed).
    Bench(bench::BenchArgs),
    /// The job queue: status, a standalone worker, warm files, priorities, rebuilds, retries.
    Warmer(warmer::WarmerArgs),
    /// Check that the stores agree (read-only); exit 1 when a problem is found.
    Audit(audit::AuditArgs),
    /// Fix what audit finds: missing artifacts, metadata rows, orphans, the index.
    Repair(repair::RepairArgs),
    /// Semantic matching: the per-tenant report (hits, measured false-hit rate, thresholds).
    Semantic(semantic::SemanticArgs),
    /// The vector store: create and list collections.
    Vectors(semantic::VectorsArgs),
    /// Backup sets of all four stores: create, list, verify, restore, prune.
    Backup(backup::BackupArgs),
    /// DR drills: inject a failure under load, measure RTO/RPO/integrity/cost, write the report.
    Drill(drill::DrillArgs),
    /// Check the engines against the operations guides' advice and recache's own health
    /// (ok | warn | fail, one fix per finding); exit 1 on any fail.
    Doctor(doctor::DoctorArgs),
    /// Client keys kept in metadata: create (printed once), list, revoke, rotate.
    Keys(keys::KeysArgs),
    /// Answers sealed at rest: status of the tenants' data keys, rotate-master, rotate-tenant.
    Encryption(encryption::EncryptionArgs),
    /// Delete a tenant's entries (by namespace, model, age, key prefix) from every store, as a resumable job.
    Purge(purge::PurgeArgs),
    /// Erase a tenant: purge its entries and destroy its data keys, so its answers in older backups cannot be opened.
    Erase(purge::EraseArgs),
    /// Reports from metadata: `report cost` (requests, hits, tokens, USD saved and spent per group).
    Report(report::ReportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Path to the TOML configuration file.
    #[arg(long, short = 'c', default_value = "recache.toml", env = "RECACHE_CONFIG")]
    pub config: PathBuf,
}

/// The bearer token a running gateway's `/metrics` and detailed
/// `/health/ready` need: `RECACHE_METRICS_TOKEN` when set, else what the
/// config names (`server.metrics_token_env`, else the admin token).
pub fn metrics_token(config: &ConfigArgs) -> Option<String> {
    let env = env_map();
    if let Some(t) = env.get("RECACHE_METRICS_TOKEN").filter(|t| !t.is_empty()) {
        return Some(t.clone());
    }
    load_config(config, &env).ok().and_then(|c| c.metrics_token(&env))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

pub use recache_core::config::env_map;

/// Loads and validates the config, printing warnings; exits 2 on a problem.
/// Operator and bulk commands (health checks, backups, seeding) call the
/// engines many times on what may be a busy machine: each call gets at least
/// `ms`, not the request path's per-call limit (250 ms for artifacts by default).
pub(crate) fn raise_timeouts(config: &mut Config, ms: u64) {
    for t in [
        &mut config.index.timeout_ms,
        &mut config.artifacts.timeout_ms,
        &mut config.metadata.timeout_ms,
        &mut config.vectors.timeout_ms,
    ] {
        *t = (*t).max(ms);
    }
}

pub(crate) fn load_config(args: &ConfigArgs, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let (config, warnings) = Config::load(&args.config, env)?;
    for w in warnings {
        eprintln!("recache: warning: {w}");
    }
    Ok(config)
}

pub(crate) fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the CLI and returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve(a) => serve::run(a).await,
        Command::Health(a) => health::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Warmer(a) => warmer::run(a).await,
        Command::Audit(a) => audit::run(a).await,
        Command::Repair(a) => repair::run(a).await,
        Command::Semantic(a) => semantic::run_semantic(a).await,
        Command::Vectors(a) => semantic::run_vectors(a).await,
        Command::Backup(a) => backup::run(a).await,
        Command::Drill(a) => drill::run(a).await,
        Command::Doctor(a) => doctor::run(a).await,
        Command::Keys(a) => keys::run(a).await,
        Command::Encryption(a) => encryption::run(a).await,
        Command::Report(a) => report::run(a).await,
        Command::Purge(a) => purge::run_purge(a).await,
        Command::Erase(a) => purge::run_erase(a).await,
    }
}
