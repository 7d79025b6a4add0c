//! Client authentication: the tenant comes from the key, never from a header
//! the client chooses. Keys are held only as SHA-256 digests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::config::{key_hash, Config};
use crate::error::ApiError;

pub struct Tenant {
    pub name: String,
    pub default_ttl: Duration,
    pub stale_if_error: u64,
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
                default_ttl: Duration::from_secs(t.default_ttl_seconds.unwrap_or(cfg.cache.default_ttl_seconds)),
                stale_if_error: t.stale_if_error_seconds.unwrap_or(0).min(cfg.cache.max_stale_seconds),
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

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Tenant>, ApiError> {
        let raw = headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::MissingKey)?
            .to_str()
            .map_err(|_| ApiError::InvalidKey)?;
        let key = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::MissingKey)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&digest).cloned().ok_or(ApiError::InvalidKey)
    }
}
