//! `recache bench`: load a running gateway on loopback and print latency
//! percentiles, throughput and the gateway's RSS; or seed a store with many
//! entries to measure index memory and start-up time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::bench_dialect::BenchDialect;
use super::{env_map, load_config, ConfigArgs, OutputFormat, EXIT_CONFIG, EXIT_PROBLEM};
use recache_core::artifact::{self, ArtifactMeta};
use recache_core::key::{cache_key, canonical_request};
use recache_storage::roles::factory::{open_artifacts, open_metadata};
use recache_storage::roles::{now_ms, ArtifactId, EntryRecord};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Send a bounded load to a gateway on loopback and report p50/p99, throughput and RSS.
    Load(LoadArgs),
    /// Register N synthetic entries in the configured metadata store (for index size and start-up figures).
    Seed(SeedArgs),
    /// Rebuild the configured index from metadata and report entries/s, seconds and peak RSS.
    Rebuild(RebuildArgs),
    /// The embedded vector store in-process: N synthetic vectors, lookup p50/p99, recall, RSS.
    Vectors(super::bench_semantic::VectorsBenchArgs),
    /// The local embedding model: latency p50/p99 for short and long prompts.
    Embed(super::bench_semantic::EmbedBenchArgs),
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The same request every time (after one warm-up): cache hits.
    Hit,
    /// A paraphrase of one stored question every time (after one warm-up):
    /// semantic hits, on a gateway where the tenant has semantic matching on.
    Semantic,
    /// Like `semantic`, but the paraphrase's spacing differs every time (the
    /// same tokens, another text), so each request pays a fresh embedding.
    SemanticFresh,
    /// A unique request every time: misses through to the provider.
    Miss,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Gateway base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Client key.
    #[arg(long, default_value = "sk-recache-demo")]
    pub key: String,
    #[arg(long, value_enum, default_value = "hit")]
    pub mode: Mode,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Stop after this many requests in all (bounds the run).
    #[arg(long, default_value_t = 2_000_000)]
    pub max_requests: u64,
    /// The model; left at its default, each dialect asks for its own
    /// (`claude-sonnet-4-5` for messages, `gemini-2.5-flash` for gemini).
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// The provider API the requests speak (`semantic` modes: chat only).
    #[arg(long, value_enum, default_value = "chat")]
    pub dialect: BenchDialect,
    /// An extra request header, `NAME: VALUE` (repeatable); for example
    /// `--header 'cache-control: no-store'` measures the gateway as a plain proxy.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or_else(|| format!("'{s}' is not NAME: VALUE"))?;
    let name = name.trim();
    reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
    reqwest::header::HeaderValue::from_str(value.trim()).map_err(|e| format!("{name}: {e}"))?;
    Ok((name.to_string(), value.trim().to_string()))
}

#[derive(Args, Debug)]
pub struct SeedArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// How many entries to register.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Tenant the entries belong to.
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    /// Write a real artifact per entry (for audit figures); without it all
    /// entries share one placeholder (index size and start-up figures).
    #[arg(long)]
    pub artifacts: bool,
}

pub async fn run(args: BenchArgs) -> i32 {
    match args.command {
        BenchCommand::Load(a) => load(a).await,
        BenchCommand::Seed(a) => seed(a).await,
        BenchCommand::Rebuild(a) => rebuild(a).await,
        BenchCommand::Vectors(a) => super::bench_semantic::vectors(a).await,
        BenchCommand::Embed(a) => super::bench_semantic::embed(a).await,
    }
}

/// `--mode semantic`: the question stored by the warm-up, and the paraphrase asked.
const SEMANTIC_STORED: &str = "How do I reset my password in the recache benchmark app?";
const SEMANTIC_ASKED: &str = "How can I reset my password in the recache benchmark app?";

/// `text` with one to three spaces in each gap, chosen by the base-3 digits of `n`
/// (3^gaps different texts, the same tokens).
fn spaced(text: &str, n: u64) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut digits = n;
    for (i, w) in text.split(' ').enumerate() {
        if i > 0 {
            out.push_str(&" ".repeat(1 + (digits % 3) as usize));
            digits /= 3;
        }
        out.push_str(w);
    }
    out
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| h == "localhost" || h == "[::1]" || h.starts_with("127."))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

async fn load(a: LoadArgs) -> i32 {
    if !is_loopback(&a.url) {
        eprintln!(
            "recache bench: refusing to load {}: benchmarks only target loopback",
            a.url
        );
        return EXIT_CONFIG;
    }
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(a.connections * 2)
        .tcp_nodelay(true)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recache bench: {e}");
            return EXIT_PROBLEM;
        }
    };
    let dialect = a.dialect;
    if dialect != BenchDialect::Chat && matches!(a.mode, Mode::Semantic | Mode::SemanticFresh) {
        eprintln!("recache bench: the semantic modes send chat requests only (--dialect chat)");
        return EXIT_CONFIG;
    }
    let model = if a.model == "gpt-4o-mini" {
        dialect.default_model().to_string()
    } else {
        a.model.clone()
    };
    let url = dialect.url(&a.url, &model);
    let body_for = |n: u64| {
        let content = match a.mode {
            Mode::Hit => "recache benchmark: the same question every time".to_string(),
            Mode::Semantic | Mode::SemanticFresh => SEMANTIC_STORED.to_string(),
            Mode::Miss => format!("recache benchmark miss {} {n}", now_ms()),
        };
        dialect.body(&model, &content)
    };
    // Warm-up: makes the hit entry exist.
    if let Err(e) = dialect
        .auth(client.post(&url), &a.key)
        .header("content-type", "application/json")
        .body(body_for(0))
        .send()
        .await
    {
        eprintln!("recache bench: gateway not reachable at {}: {e}", a.url);
        return EXIT_PROBLEM;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    let shared = Arc::new(Shared {
        client: client.clone(),
        url,
        key: a.key.clone(),
        model,
        mode: a.mode,
        dialect,
        max: a.max_requests,
        headers: a.headers.clone(),
        deadline,
        sent: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        statuses: std::sync::Mutex::default(),
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.connections.max(1))
        .map(|_| tokio::spawn(connection(shared.clone())))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let gauge = gateway_gauges(&client, &a.url).await;
    let errors = shared.errors.load(Ordering::Relaxed);
    let report = json!({
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "dialect": format!("{:?}", a.dialect).to_lowercase(),
        "connections": a.connections,
        "requests": all.len(),
        "errors": errors,
        "seconds": elapsed,
        "throughput_rps": all.len() as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&all, 0.50), "p90": percentile(&all, 0.90),
            "p99": percentile(&all, 0.99), "max": percentile(&all, 1.0),
        },
        "cache_status": shared.statuses.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "gateway_rss_mb": gauge("process_resident_memory_bytes") / 1048576.0,
        "gateway_index_entries": gauge("cache_index_entries"),
    });
    match a.format {
        OutputFormat::Json => println!("{report}"),
        OutputFormat::Text => print_load(&report, &all),
    }
    if errors > 0 {
        EXIT_PROBLEM
    } else {
        0
    }
}

/// What the load's connections share.
struct Shared {
    client: reqwest::Client,
    url: String,
    key: String,
    model: String,
    mode: Mode,
    dialect: BenchDialect,
    max: u64,
    headers: Vec<(String, String)>,
    deadline: Instant,
    sent: AtomicU64,
    errors: AtomicU64,
    statuses: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// One connection's requests, one after the other; their latencies in µs.
async fn connection(s: Arc<Shared>) -> Vec<u32> {
    let mut lat = Vec::with_capacity(100_000);
    let model = &s.model;
    let d = s.dialect;
    let fixed = d.body(model, "recache benchmark: the same question every time");
    let paraphrase = d.body(model, SEMANTIC_ASKED);
    while Instant::now() < s.deadline {
        let n = s.sent.fetch_add(1, Ordering::Relaxed);
        if n >= s.max {
            break;
        }
        let body = match s.mode {
            Mode::Hit => fixed.clone(),
            Mode::Semantic => paraphrase.clone(),
            Mode::SemanticFresh => d.body(model, &spaced(SEMANTIC_ASKED, n)),
            Mode::Miss => d.body(model, &format!("recache benchmark miss {} {n}", now_ms())),
        };
        let t = Instant::now();
        let mut req = d
            .auth(s.client.post(&s.url), &s.key)
            .header("content-type", "application/json");
        for (name, value) in &s.headers {
            req = req.header(name, value);
        }
        let ok = match req.body(body).send().await {
            Ok(r) => {
                let good = r.status().is_success();
                let status = r
                    .headers()
                    .get("x-recache-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                *s.statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(status)
                    .or_default() += 1;
                good && r.bytes().await.is_ok()
            }
            Err(_) => false,
        };
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    lat
}

/// The gateway's own figures after the load, from its `/metrics` (0 where unreadable).
async fn gateway_gauges(client: &reqwest::Client, base: &str) -> impl Fn(&str) -> f64 {
    let mut metrics = client.get(format!("{}/metrics", base.trim_end_matches('/')));
    // A gateway with a metrics (or admin) token wants it for /metrics.
    if let Some(t) = ["RECACHE_METRICS_TOKEN", "RECACHE_ADMIN_TOKEN"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty()))
    {
        metrics = metrics.bearer_auth(t);
    }
    let text = match metrics.send().await.ok() {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    move |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    }
}

fn print_load(report: &Value, all: &[u32]) {
    println!(
        "mode={} dialect={} connections={} requests={} errors={} duration={:.1}s",
        report["mode"].as_str().unwrap_or(""),
        report["dialect"].as_str().unwrap_or(""),
        report["connections"],
        all.len(),
        report["errors"],
        report["seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "throughput {:.0} req/s   latency p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        report["throughput_rps"].as_f64().unwrap_or(0.0),
        percentile(all, 0.50),
        percentile(all, 0.90),
        percentile(all, 0.99),
        percentile(all, 1.0)
    );
    println!("x-recache-status: {}", report["cache_status"]);
    println!(
        "gateway RSS {:.1} MB, index entries {}",
        report["gateway_rss_mb"].as_f64().unwrap_or(0.0),
        report["gateway_index_entries"]
    );
}

async fn seed(a: SeedArgs) -> i32 {
    let env = env_map();
    let config = match load_config(&a.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_CONFIG;
        }
    };
    // Seeding is bulk work: the request path's per-call limits would fail it on a busy store.
    let mut config = config;
    super::raise_timeouts(&mut config, 10_000);
    let config = config;
    let run = async {
        let (meta, _) = open_metadata(&config).await.map_err(|e| format!("{e:#}"))?;
        let store = open_artifacts(&config).map_err(|e| format!("{e:#}"))?;
        let now = now_ms();
        let envelope = |key: String, canonical: &str| {
            artifact::encode(
                &ArtifactMeta {
                    key,
                    tenant: a.tenant.clone(),
                    namespace: "default".into(),
                    endpoint: "chat".into(),
                    model: "seed".into(),
                    created_at_ms: now,
                    expires_at_ms: now + 86_400_000,
                    content_type: "application/json".into(),
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cost_usd: 0.0,
                },
                canonical.as_bytes(),
                b"{\"seed\":true}",
            )
        };
        // One shared placeholder artifact unless --artifacts: then entries measure index size and start-up, not hits.
        let placeholder = envelope("seed".into(), "{}");
        let placeholder_id = ArtifactId::of(&placeholder);
        if !a.artifacts {
            store
                .put(placeholder_id, placeholder.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        let started = Instant::now();
        let batch = 10_000u64;
        let mut done = 0u64;
        while done < a.entries {
            let n = batch.min(a.entries - done);
            let mut blobs = Vec::new();
            let entries: Vec<EntryRecord> = (done..done + n)
                .map(|i| {
                    let canonical = canonical_request(
                        &json!({"model": "seed", "messages": [{"role": "user", "content": format!("seed {i}")}]}),
                    );
                    let key = cache_key(&a.tenant, "default", "chat", &canonical);
                    let (id, size) = if a.artifacts {
                        let bytes = envelope(key.hex(), &canonical);
                        let id = ArtifactId::of(&bytes);
                        let size = bytes.len() as u64;
                        blobs.push((id, bytes));
                        (id, size)
                    } else {
                        (placeholder_id, placeholder.len() as u64)
                    };
                    EntryRecord {
                        key,
                        tenant: a.tenant.clone(),
                        namespace: "default".into(),
                        endpoint: "chat".into(),
                        model: "seed".into(),
                        artifact: id,
                        request_bytes: canonical.len() as u64,
                        response_bytes: size,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        cost_usd: 0.0,
                        // Spread over the past day, as a real cache fills up.
                        created_at_ms: now - 86_400_000 + (i as i64 * 86_400_000 / a.entries.max(1) as i64),
                        expires_at_ms: now + 86_400_000,
                        last_hit_at_ms: None,
                        hit_count: 0,
                        request: Some(canonical),
                        artifact_missing: false,
                    }
                })
                .collect();
            use futures_util::StreamExt;
            let puts = futures_util::stream::iter(blobs.into_iter().map(|(id, b)| store.put(id, b)))
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await;
            for p in puts {
                p.map_err(|e| e.to_string())?;
            }
            meta.insert_missing_entries(entries).await.map_err(|e| e.to_string())?;
            done += n;
            eprint!("\rseeded {done}/{} entries", a.entries);
        }
        eprintln!();
        println!(
            "seeded {} entries{} in {:.1}s",
            a.entries,
            if a.artifacts { " with an artifact each" } else { "" },
            started.elapsed().as_secs_f64()
        );
        Ok::<(), String>(())
    };
    match run.await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("recache bench seed: {e}");
            EXIT_PROBLEM
        }
    }
}

/// Peak resident memory of this process, in MiB.
pub(crate) fn peak_rss_mb() -> f64 {
    recache_engine::metrics::peak_rss_bytes() as f64 / 1048576.0
}

async fn rebuild(a: RebuildArgs) -> i32 {
    super::ops::exit_code("bench rebuild", rebuild_index(a).await)
}

async fn rebuild_index(a: RebuildArgs) -> Result<i32, super::ops::Exit> {
    let r = super::ops::open(
        &a.config,
        recache_storage::roles::factory::IndexAccess::WriteNoReplay,
        "warn",
    )
    .await?;
    let ctx = recache_ops::recovery::local::LocalCtx::new("rebuild", a.format == OutputFormat::Text);
    let started = Instant::now();
    let res = r.rebuild_index(json!({}), ctx.as_ref()).await;
    let secs = started.elapsed().as_secs_f64();
    ctx.finish();
    let _ = r.cache.roles.index.flush().await;
    match res {
        Ok(v) => {
            let report = json!({"engine_metadata": r.cache.roles.metadata.engine(), "engine_index": r.cache.roles.index.engine(),
                                "scanned": v["scanned"], "written": v["written"], "seconds": secs,
                                "entries_per_second": v["scanned"].as_f64().unwrap_or(0.0) / secs.max(1e-9),
                                "peak_rss_mb": peak_rss_mb()});
            super::ops::print(a.format, &report, |v| {
                format!(
                    "rebuild {} -> {}: {} entries scanned, {} written in {:.2} s ({:.0} entries/s), peak RSS {:.0} MB\n",
                    v["engine_metadata"].as_str().unwrap_or(""),
                    v["engine_index"].as_str().unwrap_or(""),
                    v["scanned"],
                    v["written"],
                    secs,
                    v["entries_per_second"].as_f64().unwrap_or(0.0),
                    v["peak_rss_mb"].as_f64().unwrap_or(0.0)
                )
            });
            Ok(0)
        }
        Err(e) => Err(super::ops::Exit::problem(format!("{e:?}"))),
    }
}
