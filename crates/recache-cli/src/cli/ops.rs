//! What the operations commands (`warmer`, `audit`, `repair`) share: the
//! config, the roles opened as a worker opens them, and one JSON-or-text printer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{env_map, init_logging, load_config, ConfigArgs, OutputFormat, EXIT_CONFIG};
use recache_core::config::LogFormat;
use recache_engine::cache::Cache;
use recache_engine::metrics::Metrics;
use recache_engine::upstream::Upstreams;
use recache_ops::recovery::Recovery;
use recache_storage::roles::factory::{open_roles_as, IndexAccess};

/// A failure that decides the exit code.
pub struct Exit(pub i32, pub String);

impl Exit {
    pub fn config(msg: impl Into<String>) -> Self {
        Exit(EXIT_CONFIG, msg.into())
    }
    pub fn problem(msg: impl Into<String>) -> Self {
        Exit(super::EXIT_PROBLEM, msg.into())
    }
}

/// The exit code of a command's result; a failure is printed as `recache <command>: <message>`.
pub(crate) fn exit_code(command: &str, res: Result<i32, Exit>) -> i32 {
    match res {
        Ok(code) => code,
        Err(Exit(code, msg)) => {
            eprintln!("recache {command}: {msg}");
            code
        }
    }
}

/// Loads the config and opens the roles and the queue. Logs go to stderr at
/// `warn` unless `RUST_LOG` says otherwise, so reports stay readable.
pub async fn open(config: &ConfigArgs, access: IndexAccess, log_level: &str) -> Result<Arc<Recovery>, Exit> {
    let env: HashMap<String, String> = env_map();
    let mut config = load_config(config, &env).map_err(|e| Exit::config(e.to_string()))?;
    init_logging(LogFormat::Text, log_level);
    // No hot-artifact tier: audits and repairs read each artifact once, and
    // the tier would only hold up to `memory_cache_mb` of them for nothing.
    config.artifacts.memory_cache_mb = 0;
    let (roles, queue) = open_roles_as(&config, access).await.map_err(|e| {
        let msg = format!("{e:#}");
        // Another process owns the embedded index: a usage problem, not a broken store.
        if msg.contains("in use by another recache process") {
            Exit::config(msg)
        } else {
            Exit::problem(msg)
        }
    })?;
    // A process that works the queue logs its backends, as a gateway does.
    if matches!(access, IndexAccess::Write | IndexAccess::WriteShared) {
        tokio::spawn(recache_storage::roles::factory::report_backends(roles.clone()));
    }
    let upstreams = Arc::new(Upstreams::from_config(&config, &env).map_err(|e| Exit::config(e.to_string()))?);
    // No spool: a CLI process that cannot reach metadata fails its job instead
    // of leaving records in a file nobody replays.
    let cache = Arc::new(
        Cache::new(
            roles,
            Arc::new(Metrics::default()),
            None,
            Duration::from_secs(config.cache.max_stale_seconds),
            recache_engine::batch::Batching::from_config(&config),
        )
        .with_answer_events(config.metadata.audit_answer_events),
    );
    Ok(Arc::new(recache_ops::backup::run::with_backup_jobs(
        Recovery::new(cache, queue, Arc::new(config), upstreams).with_env(&env),
    )))
}

/// The config and the job queue, without opening the other stores (queue-only commands).
pub struct QueueEnv {
    pub config: recache_core::config::Config,
    pub queue: Arc<dyn recache_storage::queue::Queue>,
}

pub(crate) async fn open_queue(config: &ConfigArgs) -> Result<QueueEnv, Exit> {
    let env: HashMap<String, String> = env_map();
    let config = load_config(config, &env).map_err(|e| Exit::config(e.to_string()))?;
    init_logging(LogFormat::Text, "warn");
    let (_, queue) = recache_storage::roles::factory::open_metadata(&config)
        .await
        .map_err(|e| Exit::problem(format!("{e:#}")))?;
    Ok(QueueEnv { config, queue })
}

/// Prints a JSON value as JSON, or as text with `text`.
pub fn print(format: OutputFormat, value: &serde_json::Value, text: impl FnOnce(&serde_json::Value) -> String) {
    match format {
        OutputFormat::Json => println!("{value}"),
        OutputFormat::Text => print!("{}", text(value)),
    }
}

pub use recache_core::time::parse_duration;

/// A short human form of a JSON summary: `key=value` pairs.
pub fn pairs(v: &serde_json::Value) -> String {
    match v.as_object() {
        Some(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null() && !v.is_array() && !v.is_object())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                serde_json::Value::Number(n) if n.is_f64() => format!("{k}={:.4}", n.as_f64().unwrap_or(0.0)),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => v.to_string(),
    }
}

/// The configuration and metadata for a command that works on metadata alone
/// (`keys`, `encryption`): a config error exits 2, an unreachable store 1.
pub async fn open_metadata(
    args: &super::ConfigArgs,
) -> Result<
    (
        recache_core::config::Config,
        std::sync::Arc<dyn recache_storage::roles::Metadata>,
    ),
    Exit,
> {
    let config = super::load_config(args, &super::env_map()).map_err(|e| Exit::config(e.to_string()))?;
    super::init_logging(recache_core::config::LogFormat::Text, "warn");
    let (meta, _) = recache_storage::roles::factory::open_metadata(&config)
        .await
        .map_err(|e| Exit::problem(format!("{e:#}")))?;
    Ok((config, meta))
}
