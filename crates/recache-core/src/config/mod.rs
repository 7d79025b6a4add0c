//! Configuration: one TOML file, `RECACHE_<SECTION>__<KEY>` environment
//! overrides, strict typed structs, validated before any I/O.

pub mod drill;
mod encryption;
mod load;
pub mod redis_url;
mod tenants;
#[cfg(test)]
mod tests;

pub use encryption::EncryptionConfig;
pub use load::{key_hash, redact};
pub use tenants::{CounterLoss, KeysConfig, Limits, LimitsConfig, TenantConfig};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    pub keys: KeysConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
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
    /// Answers that ask the client to run a tool: `store` (default: cached for
    /// their exact request; never served for a near-duplicate) or `skip` (never
    /// stored). `[[tenants]] tool_call_answers` overrides it per tenant.
    pub tool_call_answers: ToolCallAnswers,
}

/// What becomes of an answer that asks the client to run a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCallAnswers {
    #[default]
    Store,
    Skip,
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
            tool_call_answers: ToolCallAnswers::Store,
        }
    }
}

/// Declares an engine choice: a serde enum named by its lowercase config
/// value, so an impossible engine fails when the file is parsed.
macro_rules! engine_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The name the config file uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

engine_enum!(
    /// `index.engine`.
    IndexEngine { Embedded => "embedded", Redis => "redis" }
);
engine_enum!(
    /// `artifacts.engine`.
    ArtifactsEngine { Embedded => "embedded", S3 => "s3" }
);
engine_enum!(
    /// `vectors.engine`.
    VectorsEngine { Disabled => "disabled", Embedded => "embedded", Qdrant => "qdrant" }
);
engine_enum!(
    /// `metadata.engine`.
    MetadataEngine { Embedded => "embedded", Postgres => "postgres" }
);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// `embedded` (in-process, persisted to `path`) or `redis`.
    pub engine: IndexEngine,
    pub path: PathBuf,
    pub url: Option<String>,
    pub key_prefix: String,
    pub timeout_ms: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            engine: IndexEngine::Embedded,
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
    pub engine: ArtifactsEngine,
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
    /// `embedded`: artifacts up to this size (KiB) are appended to segment
    /// files; larger ones are one file each. 0: every artifact is one file.
    pub segment_max_item_kb: u64,
    /// `embedded`: a segment is sealed at this size (MiB).
    pub segment_mb: u64,
    /// `embedded`: a sealed segment is compacted once this fraction of its
    /// bytes belongs to deleted answers.
    pub segment_compact_ratio: f64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            engine: ArtifactsEngine::Embedded,
            path: PathBuf::from("./recache-data/artifacts"),
            bucket: None,
            endpoint: None,
            region: None,
            prefix: "".into(),
            timeout_ms: 250,
            memory_cache_mb: 64,
            memory_cache_max_item_kb: 256,
            write_concurrency: 32,
            segment_max_item_kb: 1024,
            segment_mb: 64,
            segment_compact_ratio: 0.5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorsConfig {
    /// `disabled`, `embedded` or `qdrant`.
    pub engine: VectorsEngine,
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
            engine: VectorsEngine::Disabled,
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
    pub engine: MetadataEngine,
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
    /// The per-answer audit events (`entry.store`: every stored answer adds
    /// one, about 420 bytes in SQLite) older than this many days are deleted
    /// by the gateway's expiry sweep, a bounded number per sweep (0: kept forever).
    pub audit_retention_days: u64,
    /// Whether each stored answer adds an `entry.store` audit event (true).
    /// Off, the store path writes one row per answer instead of two (the
    /// entry row stays, with its tenant, model and times); the operations
    /// record is kept either way.
    pub audit_answer_events: bool,
    /// The same for every other audit event, the operations record (admin and
    /// CLI actions, key changes, purges, erasures, repairs, backups, drills).
    /// 0 (the default): kept forever. Never shorter than `audit_retention_days`.
    pub admin_audit_retention_days: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            engine: MetadataEngine::Embedded,
            path: PathBuf::from("./recache-data/metadata.db"),
            url: None,
            timeout_ms: 250,
            max_connections: 4,
            spool_path: PathBuf::from("./recache-data/metadata-spool.jsonl"),
            spool_replay_interval_ms: 1000,
            spool_max_mb: 256,
            audit_retention_days: 0,
            audit_answer_events: true,
            admin_audit_retention_days: 0,
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
    /// Keep each question's text beside its vector (the guards compare it
    /// with a new question). `false`: no question text is kept in the vector
    /// store; the guards read it from the (sealed) artifact, one read per
    /// candidate. See "Data protection" in `docs/operations.md`.
    pub store_text: bool,
    /// The near-miss guards: `strict` (a substituted word is another
    /// question) or `lexical` (a substituted synonym is the same question,
    /// with WordNet from `lexicon`). See "The decision" in `docs/semantic.md`.
    pub guards: String,
    /// WordNet 3.0's database (Debian's `wordnet-base`), which tells the
    /// lexical guards which substituted words are synonyms. Empty: no
    /// lexicon. See "The evaluation corpus" in `docs/semantic.md`.
    pub lexicon: PathBuf,
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
            store_text: true,
            guards: "lexical".into(),
            lexicon: PathBuf::from("/usr/share/wordnet"),
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
    /// The API the provider speaks (`openai`, default, or `anthropic`): a request
    /// is sent only to an upstream of its own dialect.
    #[serde(default)]
    pub kind: crate::endpoint::Dialect,
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
    /// Times a call is sent again when its connection failed before any
    /// response: refused or reset, or closed by the provider without an
    /// answer (a stale keep-alive connection). Never after a response began,
    /// never on a timeout. 0 to 5; default 1.
    #[serde(default = "default_connection_retries")]
    pub connection_retries: u32,
}

fn default_connection_retries() -> u32 {
    1
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million input tokens.
    pub input: f64,
    /// USD per million output tokens.
    pub output: f64,
    /// USD per million input tokens written to the provider's prompt cache
    /// (Anthropic); unset: 1.25 x `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// USD per million input tokens read from the provider's prompt cache
    /// (Anthropic); unset: 0.1 x `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

/// Warnings found while validating (printed at start-up, never fatal).
pub type Warnings = Vec<String>;

/// The process environment as a map (config overrides and secrets come from here).
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}
