//! Configuration: one TOML file, `RECACHE_<SECTION>__<KEY>` environment
//! overrides, strict typed structs, validated before any I/O.

pub mod drill;
pub mod redis_url;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A configuration problem. Always a one-line message; the CLI exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub index: IndexConfig,
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    #[serde(default)]
    pub vectors: VectorsConfig,
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub warmer: WarmerConfig,
    #[serde(default)]
    pub semantic: SemanticConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub drill: drill::DrillConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    /// Name of the env var holding the admin API bearer token.
    pub admin_token_env: String,
    /// A client must send a request's headers within this (else the connection is closed).
    pub header_timeout_ms: u64,
    /// A client must send a request's whole body within this (else 408).
    pub body_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout_ms: u64,
    /// Requests served at once; past it, 503 with `Retry-After` (health and metrics are not counted).
    pub max_concurrent_requests: usize,
    /// The dashboard's session cookie is marked `Secure` (set it when clients reach recache over HTTPS).
    pub secure_cookies: bool,
    /// The env var holding a bearer token `/metrics` and the detailed `/health/ready?detail=1`
    /// require; unset: the admin token protects them. `/health/live` and the bare
    /// `/health/ready` stay open for orchestrators.
    pub metrics_token_env: Option<String>,
    /// A second listener for `/metrics` and `/health/*` only (e.g. `127.0.0.1:9090`), with no
    /// token: reachable by whoever can reach that address. The main listener still serves them with a token.
    pub ops_listen: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 8 * 1024 * 1024,
            admin_token_env: "RECACHE_ADMIN_TOKEN".into(),
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            idle_timeout_ms: 75_000,
            max_concurrent_requests: 2048,
            secure_cookies: false,
            metrics_token_env: None,
            ops_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `recache=debug`. `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// TTL for tenants that do not set their own.
    pub default_ttl_seconds: u64,
    /// Upper bound on any TTL a client asks for with `x-recache-ttl`.
    pub max_ttl_seconds: u64,
    /// How often expired entries are swept from every role.
    pub sweep_interval_seconds: u64,
    /// How often hit counters are flushed to metadata.
    pub hit_flush_interval_ms: u64,
    /// How long expired entries are kept so `stale-if-error` can serve them
    /// while the provider fails (0 drops them at expiry).
    pub max_stale_seconds: u64,
    /// Store-path writes (entry registrations, audit events, index pointers)
    /// committed together at most: one transaction or pipeline per batch.
    pub write_batch_max: usize,
    /// How long a batch waits for more writes after its first (0: it takes
    /// only what is already queued).
    pub write_batch_window_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            default_ttl_seconds: 86_400,
            max_ttl_seconds: 30 * 86_400,
            sweep_interval_seconds: 60,
            hit_flush_interval_ms: 1000,
            max_stale_seconds: 86_400,
            write_batch_max: 256,
            write_batch_window_ms: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// `embedded` (in-process, persisted to `path`) or `redis`.
    pub engine: String,
    pub path: PathBuf,
    pub url: Option<String>,
    pub key_prefix: String,
    pub timeout_ms: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            engine: "embedded".into(),
            path: PathBuf::from("./recache-data/index"),
            url: None,
            key_prefix: "recache:".into(),
            timeout_ms: 50,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// `embedded` (a local directory) or `s3`.
    pub engine: String,
    pub path: PathBuf,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: String,
    pub timeout_ms: u64,
    /// In-memory tier for hot artifacts, in MiB (0 turns it off).
    pub memory_cache_mb: u64,
    /// Artifacts larger than this (KiB) are never held in memory.
    pub memory_cache_max_item_kb: u64,
    /// Artifact writes of the store path in flight at once (an object store
    /// over the network); the rest wait their turn, and `timeout_ms` counts
    /// from the start of each write, not from the queue.
    pub write_concurrency: usize,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            engine: "embedded".into(),
            path: PathBuf::from("./recache-data/artifacts"),
            bucket: None,
            endpoint: None,
            region: None,
            prefix: "".into(),
            timeout_ms: 250,
            memory_cache_mb: 64,
            memory_cache_max_item_kb: 256,
            write_concurrency: 32,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorsConfig {
    /// `disabled`, `embedded` or `qdrant`.
    pub engine: String,
    /// `embedded`: the directory of the vector logs.
    pub path: PathBuf,
    /// `qdrant`: its gRPC address (e.g. `http://127.0.0.1:6334`). Collections are
    /// named per embedder fingerprint (`recache-…`), never configured by hand.
    pub url: Option<String>,
    /// Collection names start with this (deployments sharing one Qdrant keep apart).
    pub collection_prefix: String,
    /// `embedded`: scopes with at least this many points get an IVF index (smaller ones are scanned exactly).
    pub ivf_min_points: usize,
    /// `embedded`: IVF lists a search scans (more: better recall, slower).
    pub ivf_nprobe: usize,
    /// Time limit of one call (bulk calls get 40 times this, at least 5 s).
    pub timeout_ms: u64,
}

impl Default for VectorsConfig {
    fn default() -> Self {
        Self {
            engine: "disabled".into(),
            path: PathBuf::from("./recache-data/vectors"),
            url: None,
            collection_prefix: "recache-".into(),
            ivf_min_points: 16_384,
            ivf_nprobe: 4,
            timeout_ms: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `embedded` (SQLite at `path`) or `postgres`.
    pub engine: String,
    pub path: PathBuf,
    pub url: Option<String>,
    pub timeout_ms: u64,
    pub max_connections: u32,
    /// Local file where audit events and entry registrations wait while the
    /// store is unreachable (one per gateway; replayed when it returns).
    pub spool_path: PathBuf,
    pub spool_replay_interval_ms: u64,
    /// The spool stops growing at this size (audit events are kept first;
    /// dropped registrations are restored later from their artifacts).
    pub spool_max_mb: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            engine: "embedded".into(),
            path: PathBuf::from("./recache-data/metadata.db"),
            url: None,
            timeout_ms: 250,
            max_connections: 4,
            spool_path: PathBuf::from("./recache-data/metadata-spool.jsonl"),
            spool_replay_interval_ms: 1000,
            spool_max_mb: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// `false` turns every breaker off (timeouts still apply).
    pub enabled: bool,
    pub failure_threshold: u32,
    pub open_seconds: u64,
    pub close_after_successes: u32,
    /// `[breaker.index]`, `[breaker.artifacts]`, `[breaker.vectors]`, `[breaker.metadata]`,
    /// `[breaker.embedder]`: settings for one backend, over the ones above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<BreakerOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<BreakerOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vectors: Option<BreakerOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BreakerOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedder: Option<BreakerOverride>,
}

/// One backend's breaker settings; what is left out comes from `[breaker]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerOverride {
    pub enabled: Option<bool>,
    pub failure_threshold: Option<u32>,
    pub open_seconds: Option<u64>,
    pub close_after_successes: Option<u32>,
}

/// The backends that have a breaker of their own.
pub const BREAKER_BACKENDS: [&str; 5] = ["index", "artifacts", "vectors", "metadata", "embedder"];

/// A breaker's settings once `[breaker.<backend>]` is applied.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct BreakerSettings {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub open_seconds: u64,
    pub close_after_successes: u32,
}

impl BreakerConfig {
    fn override_for(&self, backend: &str) -> Option<&BreakerOverride> {
        match backend {
            "index" => self.index.as_ref(),
            "artifacts" => self.artifacts.as_ref(),
            "vectors" => self.vectors.as_ref(),
            "metadata" => self.metadata.as_ref(),
            "embedder" => self.embedder.as_ref(),
            _ => None,
        }
    }

    /// The settings in force for `backend`.
    pub fn for_backend(&self, backend: &str) -> BreakerSettings {
        let o = self.override_for(backend).cloned().unwrap_or_default();
        BreakerSettings {
            enabled: o.enabled.unwrap_or(self.enabled),
            failure_threshold: o.failure_threshold.unwrap_or(self.failure_threshold),
            open_seconds: o.open_seconds.unwrap_or(self.open_seconds),
            close_after_successes: o.close_after_successes.unwrap_or(self.close_after_successes),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            open_seconds: 30,
            close_after_successes: 3,
            index: None,
            artifacts: None,
            vectors: None,
            metadata: None,
            embedder: None,
        }
    }
}

/// The warmer: job workers, automatic recovery and its provider budget.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmerConfig {
    /// Run job workers inside `recache serve`.
    pub enabled: bool,
    /// Jobs one process runs at once.
    pub concurrency: usize,
    /// Workers heartbeat their lease this often; a lease lasts twice this.
    pub heartbeat_ms: u64,
    /// How often idle workers look for jobs.
    pub poll_ms: u64,
    /// Retry backoff: base × 2^(attempt-1), with jitter, at most `backoff_max_ms`.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    pub max_attempts: u32,
    /// Finished jobs are kept this long (dead ones seven times as long).
    pub retention_hours: u64,
    /// Provider spend of all warmers together, per rolling hour (refetch, refresh, warm).
    pub max_spend_usd_per_hour: f64,
    /// How often the gateway checks that the index still holds its data.
    pub detect_interval_ms: u64,
    /// After a backend outage, refresh entries that expired meanwhile (most hit first).
    pub refresh_stale_on_recovery: bool,
    /// Entries per page in rebuilds and audits.
    pub page_size: u32,
}

/// `[backup]`: backup sets of all four stores, a DR copy, retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Where sets go: a directory (`/path`, `file:///path`) or
    /// `s3://bucket/prefix?endpoint=…&region=…&access_key_env=…&secret_key_env=…`.
    pub target: Option<String>,
    /// A second target (another region) every set is copied to and checked on.
    pub dr_target: Option<String>,
    /// This deployment's folder in the targets (several deployments may share one).
    pub deployment: String,
    /// Take a backup this often inside `serve` (e.g. `15m`, `1h`); unset: never.
    pub schedule: Option<String>,
    /// Scheduled sets kept: the newest `keep_last`, plus the newest of each of
    /// the last `keep_daily` days and `keep_weekly` weeks. Manual sets are
    /// kept until deleted; the newest verified set is never pruned.
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    /// Verify each new set right after it is written (and its DR copy).
    pub verify_after_create: bool,
    /// The level of that verification: `structure`, `read-data` or `restore`.
    pub verify_level: String,
    /// Prune deletes pooled artifacts and unfinished sets only once they are this old (e.g. `24h`).
    pub prune_grace: String,
    /// Artifacts copied at once.
    pub parallel: usize,
    /// The RPO target (e.g. `5m`) that `backup list` checks the newest set's age against.
    pub rpo: Option<String>,
    /// The env var holding the key manifests are signed with (HMAC-SHA256, at
    /// least 32 bytes, kept outside the target). With it, `verify` and
    /// `restore` refuse a set that is unsigned or signed otherwise.
    pub signing_key_env: Option<String>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            target: None,
            dr_target: None,
            deployment: "default".into(),
            schedule: None,
            keep_last: 24,
            keep_daily: 7,
            keep_weekly: 4,
            verify_after_create: true,
            verify_level: "structure".into(),
            prune_grace: "24h".into(),
            parallel: 32,
            rpo: None,
            signing_key_env: None,
        }
    }
}

/// `[semantic]`: semantic matching (off unless a rule or `enabled` turns it on).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticConfig {
    /// The default for every tenant and namespace; `[[semantic.rules]]` override it.
    pub enabled: bool,
    /// `live` (serve semantic hits) or `shadow` (compute and compare, serve the provider's answer).
    pub mode: String,
    /// Cosine similarity at or above which a guarded candidate is a hit.
    pub threshold: f32,
    /// The embedder (a key of `[semantic.embedders]`).
    pub embedder: String,
    /// Requests with a higher `temperature` skip semantic matching.
    pub max_temperature: f64,
    /// Candidates fetched per search (the guards may refuse the best one).
    pub top_k: usize,
    /// Longer final messages (in characters) skip semantic matching.
    pub max_chars: usize,
    /// Time limit for one embedding (the embedder has its own breaker).
    pub embed_timeout_ms: u64,
    /// Share of live semantic hits also sent to the provider in the background and compared.
    pub verify_rate: f64,
    /// Highest false-hit rate a scope may show before its threshold is raised.
    pub error_budget: f64,
    /// Checks (shadow or verification) a scope needs before its rate is judged.
    pub min_samples: u64,
    /// How much the threshold rises each time the budget is exceeded.
    pub threshold_step: f32,
    /// The threshold never rises above this.
    pub max_threshold: f32,
    /// Answers whose texts embed at least this similar count as the same answer.
    pub answer_similarity: f32,
    pub embedders: BTreeMap<String, EmbedderConfig>,
    pub rules: Vec<SemanticRule>,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        let mut embedders = BTreeMap::new();
        embedders.insert(
            "local".to_string(),
            EmbedderConfig {
                kind: "local".into(),
                path: Some(PathBuf::from("models/all-MiniLM-L6-v2")),
                upstream: None,
                model: None,
                dimension: None,
                max_tokens: 256,
                weights: default_weights(),
            },
        );
        Self {
            enabled: false,
            mode: "live".into(),
            threshold: 0.90,
            embedder: "local".into(),
            max_temperature: 1.0,
            top_k: 4,
            max_chars: 4_000,
            embed_timeout_ms: 250,
            verify_rate: 0.0,
            error_budget: 0.02,
            min_samples: 20,
            threshold_step: 0.01,
            max_threshold: 0.995,
            answer_similarity: 0.95,
            embedders,
            rules: Vec::new(),
        }
    }
}

/// `[semantic.embedders.NAME]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    /// `local` (a sentence-transformers folder run in-process) or `provider` (an upstream's `/v1/embeddings`).
    pub kind: String,
    /// `local`: the model folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `provider`: the upstream's name.
    #[serde(default)]
    pub upstream: Option<String>,
    /// `provider`: the embedding model.
    #[serde(default)]
    pub model: Option<String>,
    /// `provider`: the vector dimension (checked on every answer).
    #[serde(default)]
    pub dimension: Option<usize>,
    /// `local`: longer inputs are truncated to this many tokens.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// `local`: `int8` (default: 8-bit linear layers, the same vectors on every CPU,
    /// cosine ≥ 0.998 to the f32 network, fingerprint suffix `-i8`; on AVX-512 VNNI
    /// about twice as fast per short embedding as f32, on AVX2 about as fast) or
    /// `f32` (the checkpoint's network to float rounding, half-float weights).
    #[serde(default = "default_weights")]
    pub weights: String,
}

fn default_weights() -> String {
    "int8".into()
}

fn default_max_tokens() -> usize {
    256
}

/// `[[semantic.rules]]`: semantic settings for one tenant, or one namespace of it.
/// The most specific rule wins (tenant + namespace, then tenant).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticRule {
    pub tenant: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub embedder: Option<String>,
    #[serde(default)]
    pub verify_rate: Option<f64>,
    #[serde(default)]
    pub error_budget: Option<f64>,
}

impl Default for WarmerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 2,
            heartbeat_ms: 5_000,
            poll_ms: 500,
            backoff_ms: 1_000,
            backoff_max_ms: 600_000,
            max_attempts: 5,
            retention_hours: 24,
            max_spend_usd_per_hour: 10.0,
            detect_interval_ms: 2_000,
            refresh_stale_on_recovery: true,
            page_size: 2_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub base_url: String,
    /// Env var holding the provider API key; unset means no key is sent.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model patterns routed here: exact names or prefixes ending in `*`.
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    #[serde(default = "default_upstream_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// The largest answer (JSON body or whole stream) taken from this provider;
    /// a larger one fails the request with 502 and is not stored.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_max_response_bytes() -> usize {
    64 * 1024 * 1024
}

fn all_models() -> Vec<String> {
    vec!["*".into()]
}
fn default_upstream_timeout() -> u64 {
    120_000
}
fn default_connect_timeout() -> u64 {
    5_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// The tenant's stable identity in cache keys and stored entries
    /// (default: the name). Set it before renaming a tenant, to the old name,
    /// so the renamed tenant keeps its entries; never give a retired tenant's
    /// id to a new one, which would inherit its entries.
    #[serde(default)]
    pub id: Option<String>,
    /// Client keys: `sha256:<hex>` (preferred) or a plain key (accepted with a warning).
    pub keys: Vec<String>,
    #[serde(default)]
    pub default_ttl_seconds: Option<u64>,
    /// Serve an expired entry up to this many seconds past expiry when the
    /// provider fails (requests can ask with `Cache-Control: stale-if-error=N`).
    #[serde(default)]
    pub stale_if_error_seconds: Option<u64>,
}

impl TenantConfig {
    /// The stable id: `id`, else the name.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million input tokens.
    pub input: f64,
    /// USD per million output tokens.
    pub output: f64,
}

/// Warnings found while validating (printed at start-up, never fatal).
pub type Warnings = Vec<String>;

/// The process environment as a map (config overrides and secrets come from here).
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

impl Config {
    /// Reads `path`, applies environment overrides from `env`, and validates.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<(Config, Warnings), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        Self::from_toml_str(&text, env)
    }

    pub fn from_toml_str(text: &str, env: &HashMap<String, String>) -> Result<(Config, Warnings), ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError(format!("invalid config: {}", one_line(&e.to_string()))))?;
        apply_env_overrides(&mut value, env)?;
        let config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("invalid config: {}", one_line(&e.to_string()))))?;
        let warnings = config.validate(env)?;
        Ok((config, warnings))
    }

    fn validate_drill(&self) -> Result<(), ConfigError> {
        self.drill.validate().map_err(ConfigError)
    }

    fn validate_backup(&self) -> Result<(), ConfigError> {
        let b = &self.backup;
        if b.deployment.is_empty() || b.deployment.contains('/') {
            return err(format!(
                "backup.deployment: '{}' must be a non-empty name without '/'",
                b.deployment
            ));
        }
        if !matches!(b.verify_level.as_str(), "structure" | "read-data" | "restore") {
            return err(format!(
                "backup.verify_level: '{}' (expected structure, read-data or restore)",
                b.verify_level
            ));
        }
        for (name, v) in [
            ("schedule", &b.schedule),
            ("rpo", &b.rpo),
            ("prune_grace", &Some(b.prune_grace.clone())),
        ] {
            if let Some(v) = v {
                let d = crate::time::parse_duration(v).map_err(|e| ConfigError(format!("backup.{name}: {e}")))?;
                if name == "schedule" && d.as_secs() < 10 {
                    return err("backup.schedule must be at least 10s");
                }
            }
        }
        if b.schedule.is_some() && b.target.is_none() {
            return err("backup.schedule is set but backup.target is not");
        }
        if b.keep_last == 0 {
            return err("backup.keep_last must be at least 1");
        }
        if b.parallel == 0 {
            return err("backup.parallel must be at least 1");
        }
        Ok(())
    }

    fn validate_semantic(&self) -> Result<(), ConfigError> {
        let s = &self.semantic;
        let modes = |m: &str| matches!(m, "live" | "shadow");
        if !modes(&s.mode) {
            return err(format!("semantic.mode: '{}' (expected live or shadow)", s.mode));
        }
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                err(format!("{name} must be between 0 and 1 (got {v})"))
            }
        };
        unit("semantic.threshold", s.threshold as f64)?;
        unit("semantic.max_threshold", s.max_threshold as f64)?;
        unit("semantic.verify_rate", s.verify_rate)?;
        unit("semantic.error_budget", s.error_budget)?;
        unit("semantic.answer_similarity", s.answer_similarity as f64)?;
        if s.top_k == 0 || s.max_chars == 0 || s.embed_timeout_ms == 0 {
            return err("semantic.top_k, max_chars and embed_timeout_ms must be above 0");
        }
        for (name, e) in &s.embedders {
            match e.kind.as_str() {
                "local" if e.path.is_none() => return err(format!("semantic.embedders.{name}: kind local needs path")),
                "provider" => {
                    let up = e.upstream.as_deref().unwrap_or("");
                    if !self.upstreams.iter().any(|u| u.name == up) {
                        return err(format!(
                            "semantic.embedders.{name}: upstream '{up}' is not in [[upstreams]]"
                        ));
                    }
                    if e.model.is_none() || e.dimension.unwrap_or(0) == 0 {
                        return err(format!(
                            "semantic.embedders.{name}: kind provider needs model and dimension"
                        ));
                    }
                }
                "local" if !matches!(e.weights.as_str(), "f32" | "int8") => {
                    return err(format!(
                        "semantic.embedders.{name}.weights: '{}' (expected f32 or int8)",
                        e.weights
                    ))
                }
                "local" => {}
                other => {
                    return err(format!(
                        "semantic.embedders.{name}: unknown kind '{other}' (expected local or provider)"
                    ))
                }
            }
        }
        let uses_semantic = s.enabled || s.rules.iter().any(|r| r.enabled.unwrap_or(s.enabled));
        for (i, r) in s.rules.iter().enumerate() {
            if let Some(m) = &r.mode {
                if !modes(m) {
                    return err(format!("semantic.rules[{i}].mode: '{m}' (expected live or shadow)"));
                }
            }
            if let Some(t) = r.threshold {
                unit(&format!("semantic.rules[{i}].threshold"), t as f64)?;
            }
            if let Some(e) = &r.embedder {
                if !s.embedders.contains_key(e) {
                    return err(format!(
                        "semantic.rules[{i}].embedder: '{e}' is not in [semantic.embedders]"
                    ));
                }
            }
        }
        if !s.embedders.contains_key(&s.embedder) {
            return err(format!(
                "semantic.embedder: '{}' is not in [semantic.embedders]",
                s.embedder
            ));
        }
        if uses_semantic && self.vectors.engine == "disabled" {
            return err("semantic matching is enabled but vectors.engine = \"disabled\"; set it to \"embedded\"");
        }
        Ok(())
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self, env: &HashMap<String, String>) -> Result<Warnings, ConfigError> {
        let mut warnings = Vec::new();
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return err(format!(
                "server.listen: '{}' is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if self.server.max_body_bytes == 0 {
            return err("server.max_body_bytes must be above 0");
        }
        let srv = &self.server;
        if srv.header_timeout_ms == 0
            || srv.body_timeout_ms == 0
            || srv.idle_timeout_ms == 0
            || srv.max_concurrent_requests == 0
        {
            return err(
                "server.header_timeout_ms, body_timeout_ms, idle_timeout_ms and max_concurrent_requests must be above 0",
            );
        }
        if let Some(ops) = &srv.ops_listen {
            if ops.parse::<std::net::SocketAddr>().is_err() {
                return err(format!(
                    "server.ops_listen: '{ops}' is not an address like 127.0.0.1:9090"
                ));
            }
        }
        if let Some(var) = &srv.metrics_token_env {
            if env.get(var).is_none_or(|v| v.is_empty()) {
                return err(format!("server.metrics_token_env: {var} is not set"));
            }
        }
        match self.index.engine.as_str() {
            "embedded" => {}
            "redis" => {
                let url = self
                    .index
                    .url
                    .as_deref()
                    .ok_or_else(|| ConfigError("index.url is required for engine redis".into()))?;
                if url.starts_with("redis+sentinel://") || url.starts_with("redis+cluster://") {
                    // Host lists are not URLs: the topology parser checks them.
                    redis_url::RedisUrl::parse(url)
                        .map_err(|e| ConfigError(format!("index.url: '{}': {e}", redact(url))))?;
                } else {
                    check_url(
                        "index.url",
                        url,
                        &["redis", "rediss", "redis+sentinel", "redis+cluster"],
                    )?;
                }
            }
            other => {
                return err(format!(
                    "index.engine: unknown engine '{other}' (expected embedded or redis)"
                ))
            }
        }
        match self.artifacts.engine.as_str() {
            "embedded" => {}
            "s3" => {
                if self.artifacts.bucket.as_deref().is_none_or(str::is_empty) {
                    return err("artifacts.bucket is required for engine s3");
                }
                if let Some(e) = &self.artifacts.endpoint {
                    check_url("artifacts.endpoint", e, &["http", "https"])?;
                }
            }
            other => {
                return err(format!(
                    "artifacts.engine: unknown engine '{other}' (expected embedded or s3)"
                ))
            }
        }
        self.validate_backup()?;
        if let Some(var) = &self.backup.signing_key_env {
            self.backup_signing_key(env)
                .map_err(|e| ConfigError(format!("backup.signing_key_env: {e}")))?
                .ok_or_else(|| ConfigError(format!("backup.signing_key_env: {var} is not set")))?;
        }
        self.validate_drill()?;
        let prefix = &self.vectors.collection_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        {
            return err("vectors.collection_prefix must be 1-64 characters of a-z 0-9 - _ .");
        }
        if self.vectors.ivf_nprobe == 0 || self.vectors.ivf_min_points == 0 {
            return err("vectors.ivf_nprobe and vectors.ivf_min_points must be above 0");
        }
        match self.vectors.engine.as_str() {
            "disabled" | "embedded" => {}
            "qdrant" => {
                match self.vectors.url.as_deref() {
                    None | Some("") => return err(
                        "vectors.engine = \"qdrant\" needs vectors.url (its gRPC address, e.g. http://127.0.0.1:6334)",
                    ),
                    Some(u) => check_url("vectors.url", u, &["http", "https"])?,
                }
            }
            other => {
                return err(format!(
                    "vectors.engine: unknown engine '{other}' (expected disabled, embedded or qdrant)"
                ))
            }
        }
        match self.metadata.engine.as_str() {
            "embedded" => {}
            "postgres" => {
                let url = self
                    .metadata
                    .url
                    .as_deref()
                    .ok_or_else(|| ConfigError("metadata.url is required for engine postgres".into()))?;
                check_url("metadata.url", url, &["postgres", "postgresql"])?;
            }
            other => {
                return err(format!(
                    "metadata.engine: unknown engine '{other}' (expected embedded or postgres)"
                ))
            }
        }
        for (name, t) in [
            ("index", self.index.timeout_ms),
            ("artifacts", self.artifacts.timeout_ms),
            ("metadata", self.metadata.timeout_ms),
        ] {
            if t == 0 {
                return err(format!("{name}.timeout_ms must be above 0"));
            }
        }
        if self.breaker.failure_threshold == 0 || self.breaker.close_after_successes == 0 {
            return err("breaker.failure_threshold and breaker.close_after_successes must be above 0");
        }
        for b in BREAKER_BACKENDS {
            let o = self.breaker.for_backend(b);
            if o.failure_threshold == 0 || o.close_after_successes == 0 {
                return err(format!(
                    "breaker.{b}.failure_threshold and breaker.{b}.close_after_successes must be above 0"
                ));
            }
        }
        let w = &self.warmer;
        if w.concurrency == 0 || w.heartbeat_ms == 0 || w.poll_ms == 0 || w.max_attempts == 0 || w.page_size == 0 {
            return err("warmer.concurrency, heartbeat_ms, poll_ms, max_attempts and page_size must be above 0");
        }
        if w.max_spend_usd_per_hour.is_nan() || w.max_spend_usd_per_hour < 0.0 {
            return err("warmer.max_spend_usd_per_hour must be a non-negative number");
        }
        self.validate_semantic()?;
        if self.upstreams.is_empty() {
            return err("no [[upstreams]] configured: recache needs at least one provider to forward to");
        }
        let mut names = std::collections::HashSet::new();
        for u in &self.upstreams {
            if !names.insert(u.name.as_str()) {
                return err(format!("upstreams: duplicate name '{}'", u.name));
            }
            let url = url::Url::parse(&u.base_url).map_err(|e| {
                ConfigError(format!(
                    "upstreams.{}.base_url: '{}' is not a URL: {e}",
                    u.name, u.base_url
                ))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return err(format!("upstreams.{}.base_url: scheme must be http or https", u.name));
            }
            if let Some(var) = &u.api_key_env {
                match env.get(var) {
                    Some(v) if !v.is_empty() => {}
                    _ => return err(format!("upstreams.{}: API key env var {var} is not set", u.name)),
                }
            }
            if u.models.is_empty() {
                return err(format!("upstreams.{}.models is empty", u.name));
            }
            if u.timeout_ms == 0 {
                return err(format!("upstreams.{}.timeout_ms must be above 0", u.name));
            }
            if u.max_response_bytes < 1024 {
                return err(format!("upstreams.{}.max_response_bytes must be at least 1024", u.name));
            }
        }
        if self.tenants.is_empty() {
            warnings.push("no [[tenants]] configured: every request will be refused with 401".into());
        }
        let mut seen_keys = HashMap::new();
        let mut tenant_names = std::collections::HashSet::new();
        let mut tenant_ids = std::collections::HashSet::new();
        for t in &self.tenants {
            if t.name.is_empty() || !tenant_names.insert(t.name.as_str()) {
                return err(format!("tenants: empty or duplicate tenant name '{}'", t.name));
            }
            let id = t.id();
            if id.is_empty() || !tenant_ids.insert(id) {
                return err(format!(
                    "tenants.{}: empty or duplicate tenant id '{id}' (ids default to the name)",
                    t.name
                ));
            }
            if t.keys.is_empty() {
                return err(format!("tenants.{}: no keys", t.name));
            }
            for k in &t.keys {
                let hash = key_hash(k).map_err(|e| ConfigError(format!("tenants.{}: {e}", t.name)))?;
                if !k.starts_with("sha256:") {
                    warnings.push(format!(
                        "tenants.{}: a plain client key is in the config; store it as sha256:{hash} instead",
                        t.name
                    ));
                }
                if let Some(other) = seen_keys.insert(hash, t.name.clone()) {
                    return err(format!(
                        "tenants: the same client key is given to '{other}' and '{}'",
                        t.name
                    ));
                }
            }
            if t.default_ttl_seconds == Some(0) {
                return err(format!(
                    "tenants.{}.default_ttl_seconds must be above 0: every entry expires",
                    t.name
                ));
            }
        }
        if self.cache.default_ttl_seconds == 0 || self.cache.max_ttl_seconds == 0 {
            return err("cache.default_ttl_seconds and cache.max_ttl_seconds must be above 0");
        }
        for (model, p) in &self.prices {
            if !(p.input >= 0.0 && p.output >= 0.0) {
                return err(format!("prices.{model}: prices must be non-negative numbers"));
            }
        }
        Ok(warnings)
    }

    /// The backup signing key, when `backup.signing_key_env` names one (`Err`: too short).
    pub fn backup_signing_key(&self, env: &HashMap<String, String>) -> Result<Option<Vec<u8>>, String> {
        let Some(var) = &self.backup.signing_key_env else {
            return Ok(None);
        };
        match env.get(var).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) if v.len() < 32 => Err(format!(
                "{var} holds {} bytes; a signing key needs at least 32 (e.g. `openssl rand -base64 32`)",
                v.len()
            )),
            Some(v) => Ok(Some(v.as_bytes().to_vec())),
        }
    }

    /// The token `/metrics` and detailed health need: `metrics_token_env`'s, else the admin token.
    pub fn metrics_token(&self, env: &HashMap<String, String>) -> Option<String> {
        match &self.server.metrics_token_env {
            Some(var) => env.get(var).filter(|v| !v.is_empty()).cloned(),
            None => self.admin_token(env),
        }
    }

    /// The admin token, if its env var is set.
    pub fn admin_token(&self, env: &HashMap<String, String>) -> Option<String> {
        env.get(&self.server.admin_token_env).filter(|v| !v.is_empty()).cloned()
    }
}

fn check_url(name: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let u = url::Url::parse(url).map_err(|e| ConfigError(format!("{name}: '{}' is not a URL: {e}", redact(url))))?;
    if !schemes.contains(&u.scheme()) {
        return err(format!("{name}: scheme must be one of {}", schemes.join(", ")));
    }
    Ok(())
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // A host list (`redis+cluster://user:pass@h1,h2`): hide the userinfo.
        Err(_) => match url.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let hosts = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
                format!("{scheme}://***@{hosts}")
            }
            Some(_) => url.to_string(),
            None => "<unparseable URL>".into(),
        },
    }
}

/// Hex SHA-256 of a client key, from either `sha256:<hex>` or the plain key.
pub fn key_hash(k: &str) -> Result<String, String> {
    if let Some(hex) = k.strip_prefix("sha256:") {
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("'{k}' is not sha256: followed by 64 hex digits"));
        }
        Ok(hex.to_ascii_lowercase())
    } else if k.is_empty() {
        Err("empty client key".into())
    } else {
        Ok(hex::encode(Sha256::digest(k.as_bytes())))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Applies `RECACHE_<SECTION>__<KEY>[__<KEY>...]` variables. Array indices are
/// numbers (`RECACHE_UPSTREAMS__0__BASE_URL`). Values are parsed as TOML
/// (numbers, booleans, arrays) and fall back to a string.
fn apply_env_overrides(root: &mut toml::Value, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let mut vars: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("RECACHE_") && k.contains("__"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name["RECACHE_".len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return err(format!("environment override {name}: empty path segment"));
        }
        let value = parse_env_value(raw);
        set_path(root, &path, value).map_err(|e| ConfigError(format!("environment override {name}: {e}")))?;
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(node: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    let (head, rest) = path.split_first().ok_or("empty path")?;
    match node {
        toml::Value::Table(t) => {
            if rest.is_empty() {
                t.insert(head.clone(), value);
                return Ok(());
            }
            let child = t.entry(head.clone()).or_insert_with(|| {
                if rest[0].parse::<usize>().is_ok() {
                    toml::Value::Array(Vec::new())
                } else {
                    toml::Value::Table(Default::default())
                }
            });
            set_path(child, rest, value)
        }
        toml::Value::Array(a) => {
            let i: usize = head.parse().map_err(|_| format!("'{head}' is not an array index"))?;
            if i > a.len() {
                return Err(format!("array index {i} skips entries (array has {})", a.len()));
            }
            if i == a.len() {
                a.push(toml::Value::Table(Default::default()));
            }
            if rest.is_empty() {
                a[i] = value;
                return Ok(());
            }
            set_path(&mut a[i], rest, value)
        }
        _ => Err(format!("'{head}' is inside a value that is not a table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[upstreams]]
name = "p"
base_url = "http://127.0.0.1:9/v1"
[[tenants]]
name = "a"
keys = ["sk-a"]
"#;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn design_sketch_parses_with_env_overrides() {
        let text = format!("{BASE}\n[index]\nengine = \"embedded\"\ntimeout_ms = 50\n");
        let (c, w) = Config::from_toml_str(
            &text,
            &env(&[
                ("RECACHE_INDEX__TIMEOUT_MS", "75"),
                ("RECACHE_SERVER__LISTEN", "127.0.0.1:9000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.index.timeout_ms, 75);
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.server.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(w.len(), 1, "plain key warns: {w:?}");
    }

    #[test]
    fn env_override_into_array_of_tables() {
        let (c, _) = Config::from_toml_str(BASE, &env(&[("RECACHE_UPSTREAMS__0__TIMEOUT_MS", "1234")])).unwrap();
        assert_eq!(c.upstreams[0].timeout_ms, 1234);
    }

    #[test]
    fn per_backend_breaker_settings_override_the_shared_ones() {
        let text =
            format!("{BASE}\n[breaker]\nopen_seconds = 20\n[breaker.artifacts]\nopen_seconds = 5\nenabled = false\n");
        let (c, _) = Config::from_toml_str(&text, &env(&[("RECACHE_BREAKER__INDEX__FAILURE_THRESHOLD", "9")])).unwrap();
        let a = c.breaker.for_backend("artifacts");
        assert_eq!((a.open_seconds, a.enabled, a.failure_threshold), (5, false, 5));
        let i = c.breaker.for_backend("index");
        assert_eq!((i.open_seconds, i.enabled, i.failure_threshold), (20, true, 9));
        let b = crate::breaker::Breaker::new("artifacts", &c.breaker);
        assert_eq!(b.state(), crate::breaker::BreakerState::Disabled);
        assert_eq!(b.status().settings.open_seconds, 5);
        let e = Config::from_toml_str(
            &format!("{BASE}\n[breaker.metadata]\nfailure_threshold = 0\n"),
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.0.contains("breaker.metadata"), "{e}");
        let e = Config::from_toml_str(&format!("{BASE}\n[breaker.nope]\nopen_seconds = 1\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::from_toml_str(&format!("{BASE}\n[server]\nlisten_on = \"x\"\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("listen_on"), "{e}");
        let e = Config::from_toml_str(BASE, &env(&[("RECACHE_SERVER__NOPE", "1")])).unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
    }

    #[test]
    fn bad_url_and_missing_secret_are_errors() {
        let e = Config::from_toml_str(&BASE.replace("http://127.0.0.1:9/v1", "not a url"), &env(&[])).unwrap_err();
        assert!(e.0.contains("base_url"), "{e}");
        let with_key = BASE.replace("base_url", "api_key_env = \"MY_KEY\"\nbase_url");
        let e = Config::from_toml_str(&with_key, &env(&[])).unwrap_err();
        assert!(e.0.contains("MY_KEY"), "{e}");
        assert!(Config::from_toml_str(&with_key, &env(&[("MY_KEY", "x")])).is_ok());
    }

    #[test]
    fn real_engines_need_their_settings() {
        let e = Config::from_toml_str(&format!("{BASE}[index]\nengine = \"redis\"\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("index.url"), "{e}");
        let e = Config::from_toml_str(
            &format!("{BASE}[index]\nengine = \"redis\"\nurl = \"http://x\"\n"),
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.0.contains("scheme"), "{e}");
        let e = Config::from_toml_str(&format!("{BASE}[artifacts]\nengine = \"s3\"\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("bucket"), "{e}");
        // Really invalid URLs (a bad port, a bad IPv6 host, a host list where one
        // host is expected): refused, and the password is not in the message.
        for url in [
            "postgres://u:hunter2@h:99999/db",
            "postgres://u:hunter2@[::1/db",
            "redis://u:hunter2@h1:1,h2:2:3/0",
        ] {
            let section = if url.starts_with("redis") {
                "[index]\nengine = \"redis\""
            } else {
                "[metadata]\nengine = \"postgres\""
            };
            let e = Config::from_toml_str(&format!("{BASE}{section}\nurl = \"{url}\"\n"), &env(&[])).expect_err(url);
            assert!(e.0.contains("not a URL"), "{url}: {e}");
            assert!(!e.0.contains("hunter2"), "passwords never appear in errors: {e}");
        }
        let text = format!(
            "{BASE}[index]\nengine = \"redis\"\nurl = \"redis://127.0.0.1:6379/2\"\n[artifacts]\nengine = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n[metadata]\nengine = \"postgres\"\nurl = \"postgres://recache@127.0.0.1/recache\"\n"
        );
        Config::from_toml_str(&text, &env(&[])).unwrap();
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../../recache.example.toml");
        let e = Config::from_toml_str(text, &env(&[])).unwrap_err();
        assert!(e.0.contains("OPENAI_API_KEY"), "{e}");
        let (c, w) = Config::from_toml_str(text, &env(&[("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.upstreams[0].name, "openai");
    }

    #[test]
    fn duplicate_keys_across_tenants_rejected() {
        let text = format!(
            "{BASE}\n[[tenants]]\nname = \"b\"\nkeys = [\"sha256:{}\"]\n",
            key_hash("sk-a").unwrap()
        );
        let e = Config::from_toml_str(&text, &env(&[])).unwrap_err();
        assert!(e.0.contains("same client key"), "{e}");
    }
}

#[cfg(test)]
mod override_repro {
    use super::*;
    #[test]
    fn override_existing_key_in_multiline_table() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[index]\nengine = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nkey_prefix = \"p:\"\ntimeout_ms = 500\n\
                 [metadata]\nengine = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/x\"\ntimeout_ms = 2000\n\
                 [[upstreams]]\nname = \"s\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
        let env: HashMap<String, String> = [
            ("RECACHE_INDEX__TIMEOUT_MS".to_string(), "50".to_string()),
            ("RECACHE_METADATA__TIMEOUT_MS".to_string(), "250".to_string()),
        ]
        .into();
        let (c, _) = Config::from_toml_str(text, &env).unwrap();
        assert_eq!((c.index.timeout_ms, c.metadata.timeout_ms), (50, 250));
    }
}
