//! `recache doctor`: checks the configured engines against the operations
//! guides' prevention advice, and recache's own health (see `doctor/`).

use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::{env_map, load_config, ConfigArgs, OutputFormat, EXIT_CONFIG, EXIT_PROBLEM};
use crate::doctor::{self, Finding, Status};
use recache_core::config::{ArtifactsEngine, IndexEngine, MetadataEngine, VectorsEngine};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A running gateway, for its breaker states (default: http://<server.listen>).
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// The gateway's base URL from `server.listen` (a wildcard address becomes loopback).
fn default_url(listen: &str) -> String {
    let l = listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    format!("http://{l}")
}

pub async fn run(args: DoctorArgs) -> i32 {
    let env = env_map();
    let config = match load_config(&args.config, &env) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_CONFIG;
        }
    };
    let url = args.url.clone().unwrap_or_else(|| default_url(&config.server.listen));
    let findings = check_all(&config, &url).await;
    match args.format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "status": doctor::worst(&findings).as_str(),
                "summary": doctor::summary(&findings),
                "checks": findings,
            }))
            .unwrap_or_default()
        ),
        OutputFormat::Text => print!("{}", doctor::render_text(&findings)),
    }
    if doctor::worst(&findings) == Status::Fail {
        EXIT_PROBLEM
    } else {
        0
    }
}

/// Every check for this config, engines first.
pub(crate) async fn check_all(config: &Arc<recache_core::config::Config>, url: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if config.index.engine == IndexEngine::Redis {
        match doctor::redis::read(config.index.url.as_deref().unwrap_or_default()).await {
            Ok(o) => out.extend(doctor::redis::check(&o)),
            Err(e) => out.push(Finding::fail(
                "redis.reachable",
                format!("cannot reach Redis: {e}"),
                "start Redis or fix index.url; requests go to the provider meanwhile",
                "Redis recovery: verify connectivity first",
            )),
        }
    }
    if config.artifacts.engine == ArtifactsEngine::S3 {
        out.extend(doctor::s3::check(config).await);
    }
    if config.vectors.engine == VectorsEngine::Qdrant {
        out.extend(doctor::qdrant::check(config).await);
    }
    if config.metadata.engine == MetadataEngine::Postgres {
        match doctor::postgres::read(config.metadata.url.as_deref().unwrap_or_default()).await {
            Ok(o) => out.extend(doctor::postgres::check(&o)),
            Err(e) => out.push(Finding::fail(
                "postgres.reachable",
                format!("cannot reach PostgreSQL: {e}"),
                "start PostgreSQL or fix metadata.url; entries wait in the spool meanwhile",
                "PostgreSQL recovery: check connectivity, pool configuration and max connections",
            )),
        }
    }
    out.extend(doctor::upstreams::check(config).await);
    out.extend(doctor::recache::check(config, url).await);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_url_uses_loopback_for_wildcards() {
        assert_eq!(super::default_url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(super::default_url("127.0.0.1:9"), "http://127.0.0.1:9");
    }
}
