//! `recache serve`.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;

use super::{env_map, init_logging, load_config, ConfigArgs, EXIT_CONFIG, EXIT_PROBLEM};
use recache_core::config::Config;
use recache_gateway::server::Gateway;

/// The client key of the demo tenant.
pub const DEMO_KEY: &str = "sk-recache-demo";

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Zero-setup demo: embedded stores under --data-dir, the stub provider
    /// in-process, and a demo tenant with the key sk-recache-demo.
    #[arg(long)]
    pub demo: bool,
    /// Listen address (overrides server.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Where the demo keeps its data.
    #[arg(long, default_value = "./recache-data")]
    pub data_dir: PathBuf,
}

/// Where `scripts/fetch-model.sh` puts the demo's embedding model.
pub const DEMO_MODEL: &str = "models/all-MiniLM-L6-v2";

/// The demo's model folder, when it has been fetched.
pub(crate) fn demo_model() -> Option<PathBuf> {
    let dir = PathBuf::from(DEMO_MODEL);
    (dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists()).then_some(dir)
}

/// The demo configuration: everything embedded, the stub provider upstream;
/// semantic matching for the demo tenant when a model folder is given.
pub(crate) fn demo_config(
    stub_url: &str,
    data_dir: &std::path::Path,
    listen: &str,
    model: Option<&std::path::Path>,
) -> String {
    let d = data_dir.display();
    let gemini_url = format!("{}/v1beta", stub_url.trim_end_matches("/v1"));
    let semantic = match model {
        Some(m) => format!(
            "[vectors]\nengine = \"embedded\"\npath = \"{d}/vectors\"\n\
             [semantic.embedders.local]\nkind = \"local\"\npath = \"{}\"\n\
             [[semantic.rules]]\ntenant = \"demo\"\nenabled = true\n",
            m.display()
        ),
        None => String::new(),
    };
    format!(
        r#"
[server]
listen = "{listen}"
[index]
engine = "embedded"
path = "{d}/index"
[artifacts]
engine = "embedded"
path = "{d}/artifacts"
[metadata]
engine = "embedded"
path = "{d}/metadata.db"
spool_path = "{d}/metadata-spool.jsonl"
[[upstreams]]
name = "stub"
base_url = "{stub_url}"
models = ["*"]
timeout_ms = 30000
[[upstreams]]
name = "stub-anthropic"
kind = "anthropic"
base_url = "{stub_url}"
models = ["claude-*"]
timeout_ms = 30000
[[upstreams]]
name = "stub-gemini"
kind = "gemini"
base_url = "{gemini_url}"
models = ["gemini-*"]
timeout_ms = 30000
[[tenants]]
name = "demo"
keys = ["sha256:{hash}"]
default_ttl_seconds = 86400
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[prices."claude-"]
input = 3.0
output = 15.0
[prices."gemini-"]
input = 0.3
output = 2.5
{semantic}
"#,
        gemini_url = gemini_url,
        hash = recache_core::config::key_hash(DEMO_KEY).unwrap_or_default()
    )
}

async fn build_config(args: &ServeArgs, env: &HashMap<String, String>) -> Result<Config, String> {
    if args.demo {
        let stub = recache_stub_provider::StubState::new(Default::default());
        let addr = recache_stub_provider::spawn("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?, stub)
            .await
            .map_err(|e| format!("cannot start the stub provider: {e}"))?;
        let listen = args.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
        let model = demo_model();
        let text = demo_config(&format!("http://{addr}/v1"), &args.data_dir, &listen, model.as_deref());
        let (mut c, _) = Config::from_toml_str(&text, env).map_err(|e| e.to_string())?;
        c.server.listen = listen;
        return Ok(c);
    }
    let mut c = load_config(&args.config, env).map_err(|e| e.to_string())?;
    if let Some(l) = &args.listen {
        c.server.listen = l.clone();
        c.validate(env).map_err(|e| e.to_string())?;
    }
    Ok(c)
}

pub async fn run(args: ServeArgs) -> i32 {
    let env = env_map();
    let config = match build_config(&args, &env).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_CONFIG;
        }
    };
    init_logging(config.log.format, &config.log.level);
    let started = std::time::Instant::now();
    let gw = match Gateway::start(config, &env).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("recache: {e:#}");
            return EXIT_PROBLEM;
        }
    };
    tracing::info!(addr = %gw.addr, startup_ms = started.elapsed().as_millis() as u64, "recache gateway listening");
    if let Some(ops) = gw.ops_addr {
        tracing::info!(addr = %ops, "ops listener (health and metrics, no token) listening");
    }
    if gw.state.metrics_token.is_none() && !args.demo {
        tracing::warn!(
            "/metrics and the detailed /health/ready are open to anyone who can reach the listener: set server.metrics_token_env (or an admin token), or serve them on server.ops_listen"
        );
    }
    if args.demo {
        println!(
            "recache demo gateway on http://{}  (FAKE stub provider in-process)",
            gw.addr
        );
        println!("demo client key: {DEMO_KEY}");
        match demo_model() {
            Some(m) => println!(
                "semantic matching: ON for the demo tenant (local model {}; a paraphrase answers as SEMANTIC_HIT)",
                m.display()
            ),
            None => {
                println!("semantic matching: off (no model at {DEMO_MODEL}; `bash scripts/fetch-model.sh` fetches it)")
            }
        }
        println!(
            "try: curl -si http://{}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' -H 'Content-Type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'",
            gw.addr
        );
        println!(
            "or Anthropic's Messages API: curl -si http://{}/v1/messages -H 'x-api-key: {DEMO_KEY}' -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' -d '{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":256,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'",
            gw.addr
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    gw.shutdown().await;
    0
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
