//! Client authentication: the tenant comes from the key, never from a header
//! the client chooses. Keys are held only as SHA-256 digests: those of the
//! config file in memory, those made with `recache keys create` in metadata,
//! each read cached in this replica for at most `[keys] cache_seconds`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use recache_core::config::{key_hash, Config, Limits};
use recache_engine::error::ApiError;
use recache_storage::roles::keys::KeyRecord;
use recache_storage::roles::{now_ms, Metadata};

pub struct Tenant {
    /// Shown in metrics, logs and the dashboard; matched by `[[semantic.rules]]`.
    pub name: String,
    /// In cache keys and stored entries: stays when the tenant is renamed.
    pub id: String,
    pub default_ttl: Duration,
    pub stale_if_error: u64,
    /// Answers that call a tool are not stored (`tool_call_answers = "skip"`).
    pub skip_tool_answers: bool,
    /// Requests of this tenant since start (dashboard's top tenants).
    pub usage: TenantUsage,
    /// The tenant's own limits (`[[tenants]] rpm`, ...).
    pub limits: Limits,
}

/// Who sent a request: the tenant, and the metadata key it used (none for a
/// key of the config file).
#[derive(Clone)]
pub struct Caller {
    pub tenant: Arc<Tenant>,
    pub key: Option<Arc<KeyRecord>>,
}

/// What this replica last read of a key digest from metadata.
struct Cached {
    key: Option<Arc<KeyRecord>>,
    read: Instant,
}

/// Digests remembered at most; past it the cache starts again (a flood of
/// made-up keys costs metadata reads, never memory).
const MAX_CACHED_KEYS: usize = 100_000;

/// Per-tenant request counters, kept in memory by this process.
#[derive(Default)]
pub struct TenantUsage {
    pub requests: AtomicU64,
    /// Answered from the cache (exact or semantic).
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
}

impl TenantUsage {
    /// Counts one request by its cache status (`HIT`, `MISS`, `ERROR`, ...).
    pub fn record(&self, cache_status: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let c = match cache_status {
            "HIT" | "SEMANTIC_HIT" => &self.hits,
            // A stale answer was a miss the provider failed (as in `cache_misses_total`).
            "MISS" | "STALE" => &self.misses,
            "ERROR" => &self.errors,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Tenants {
    by_hash: HashMap<[u8; 32], Arc<Tenant>>,
    by_name: HashMap<String, Arc<Tenant>>,
    /// Metadata keys by digest.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    cache_for: Duration,
}

impl Tenants {
    pub fn from_config(cfg: &Config) -> Self {
        let mut by_hash = HashMap::new();
        let mut by_name = HashMap::new();
        for t in &cfg.tenants {
            let tenant = Arc::new(Tenant {
                name: t.name.clone(),
                id: t.id().to_string(),
                default_ttl: Duration::from_secs(t.default_ttl_seconds.unwrap_or(cfg.cache.default_ttl_seconds)),
                stale_if_error: t.stale_if_error_seconds.unwrap_or(0).min(cfg.cache.max_stale_seconds),
                skip_tool_answers: t.tool_call_answers.unwrap_or(cfg.cache.tool_call_answers)
                    == recache_core::config::ToolCallAnswers::Skip,
                usage: TenantUsage::default(),
                limits: t.limits(),
            });
            by_name.insert(t.name.clone(), tenant.clone());
            for k in &t.keys {
                // Validated already; skip anything odd rather than panic.
                let Ok(hex) = key_hash(k) else { continue };
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(&hex, &mut digest).is_ok() {
                    by_hash.insert(digest, tenant.clone());
                }
            }
        }
        Self {
            by_hash,
            by_name,
            cache: Mutex::new(HashMap::new()),
            cache_for: Duration::from_secs(cfg.keys.cache_seconds),
        }
    }

    /// Every tenant once, by name.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        let mut out: Vec<Arc<Tenant>> = self.by_name.values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The tenant of the configuration named `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Tenant>> {
        self.by_name.get(name).cloned()
    }

    /// Drops what this replica remembers of a metadata key (after revoking it here).
    pub fn forget(&self, digest_hex: &str) {
        let mut d = [0u8; 32];
        if hex::decode_to_slice(digest_hex, &mut d).is_ok() {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&d);
        }
    }

    /// The caller of a request: a key of the config file, else a key in
    /// metadata (read through this replica's cache). A key that cannot be
    /// checked (metadata down and nothing remembered) is a 503, never a 401.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        query_key: Option<&str>,
        metadata: &dyn Metadata,
    ) -> Result<Caller, ApiError> {
        let digest = self.digest_of(headers, query_key)?;
        if let Some(t) = self.by_hash.get(&digest) {
            return Ok(Caller {
                tenant: t.clone(),
                key: None,
            });
        }
        let remembered = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&digest)
                .map(|c| (c.key.clone(), c.read.elapsed() < self.cache_for))
        };
        let key = match remembered {
            Some((key, true)) => key,
            _ => match metadata.key_by_digest(hex::encode(digest)).await {
                Ok(found) => {
                    let key = found.map(Arc::new);
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= MAX_CACHED_KEYS {
                        cache.clear();
                    }
                    cache.insert(
                        digest,
                        Cached {
                            key: key.clone(),
                            read: Instant::now(),
                        },
                    );
                    key
                }
                // Metadata is down: what was read before still holds.
                Err(e) => match remembered {
                    Some((key, _)) => key,
                    None => {
                        tracing::warn!(error = %e, "auth: a key could not be checked in metadata");
                        return Err(ApiError::KeyCheckUnavailable);
                    }
                },
            },
        };
        let key = key.filter(|k| k.valid_at(now_ms())).ok_or(ApiError::InvalidKey)?;
        let tenant = self.by_name(&key.tenant).ok_or(ApiError::InvalidKey)?;
        Ok(Caller { tenant, key: Some(key) })
    }

    /// The digest of the client key the request carries: `Authorization:
    /// Bearer <key>` (OpenAI, and accepted everywhere), `x-api-key: <key>`
    /// (Anthropic's SDKs), `x-goog-api-key: <key>` or `?key=<key>` (Gemini's).
    fn digest_of(&self, headers: &HeaderMap, query_key: Option<&str>) -> Result<[u8; 32], ApiError> {
        let goog = headers.get("x-goog-api-key");
        let key = match (headers.get(header::AUTHORIZATION), goog, query_key) {
            (None, Some(v), _) => v.to_str().map_err(|_| ApiError::InvalidKey)?.trim(),
            (None, None, Some(q)) => q.trim(),
            _ => self.bearer_or_x_api_key(headers)?,
        };
        if key.is_empty() {
            return Err(ApiError::MissingKey);
        }
        Ok(Sha256::digest(key.as_bytes()).into())
    }

    fn bearer_or_x_api_key<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, ApiError> {
        let key = match headers.get(header::AUTHORIZATION) {
            Some(v) => {
                let raw = v.to_str().map_err(|_| ApiError::InvalidKey)?;
                raw.strip_prefix("Bearer ")
                    .or_else(|| raw.strip_prefix("bearer "))
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .ok_or(ApiError::MissingKey)?
            }
            None => headers
                .get("x-api-key")
                .ok_or(ApiError::MissingKey)?
                .to_str()
                .map_err(|_| ApiError::InvalidKey)?
                .trim(),
        };
        Ok(key)
    }
}
