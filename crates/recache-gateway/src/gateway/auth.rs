//! Client authentication: the tenant comes from the key, never from a header
//! the client chooses. Keys are held only as SHA-256 digests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use recache_core::config::{key_hash, Config};
use recache_engine::error::ApiError;

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
}

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
}

impl Tenants {
    pub fn from_config(cfg: &Config) -> Self {
        let mut by_hash = HashMap::new();
        for t in &cfg.tenants {
            let tenant = Arc::new(Tenant {
                name: t.name.clone(),
                id: t.id().to_string(),
                default_ttl: Duration::from_secs(t.default_ttl_seconds.unwrap_or(cfg.cache.default_ttl_seconds)),
                stale_if_error: t.stale_if_error_seconds.unwrap_or(0).min(cfg.cache.max_stale_seconds),
                skip_tool_answers: t.tool_call_answers.unwrap_or(cfg.cache.tool_call_answers)
                    == recache_core::config::ToolCallAnswers::Skip,
                usage: TenantUsage::default(),
            });
            for k in &t.keys {
                // Validated already; skip anything odd rather than panic.
                let Ok(hex) = key_hash(k) else { continue };
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(&hex, &mut digest).is_ok() {
                    by_hash.insert(digest, tenant.clone());
                }
            }
        }
        Self { by_hash }
    }

    /// Every tenant once, by name.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        let mut out: Vec<Arc<Tenant>> = Vec::new();
        for t in self.by_hash.values() {
            if !out.iter().any(|o| Arc::ptr_eq(o, t)) {
                out.push(t.clone());
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The tenant whose client key the request carries: `Authorization:
    /// Bearer <key>` (OpenAI, and accepted everywhere), `x-api-key: <key>`
    /// (Anthropic's SDKs), `x-goog-api-key: <key>` or `?key=<key>` (Gemini's).
    pub(crate) fn authenticate_with(
        &self,
        headers: &HeaderMap,
        query_key: Option<&str>,
    ) -> Result<Arc<Tenant>, ApiError> {
        let goog = headers.get("x-goog-api-key");
        let key = match (headers.get(header::AUTHORIZATION), goog, query_key) {
            (None, Some(v), _) => v.to_str().map_err(|_| ApiError::InvalidKey)?.trim(),
            (None, None, Some(q)) => q.trim(),
            _ => self.bearer_or_x_api_key(headers)?,
        };
        if key.is_empty() {
            return Err(ApiError::MissingKey);
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&digest).cloned().ok_or(ApiError::InvalidKey)
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
