//! Client keys as data (`recache keys …` and `/admin/keys`): a key is made
//! here, shown once, and kept in metadata only as its SHA-256, with its
//! tenant, limits and life. Every change is an audit event. See "Tenant
//! controls" in `docs/operations.md`.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use recache_core::config::{Config, Limits};
use recache_storage::roles::keys::KeyRecord;
use recache_storage::roles::{now_ms, AuditEvent, BackendError, Metadata};

/// What a new key is for.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub tenant: String,
    pub name: Option<String>,
    pub expires_in: Option<Duration>,
    pub limits: Limits,
    /// The key this one replaces (set by [`rotate`]).
    pub rotated_from: Option<String>,
}

/// A key just made: the key itself (shown once, never stored) and its record.
#[derive(Clone, Debug)]
pub struct Created {
    pub key: String,
    pub record: KeyRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Bad input: an unknown tenant, limits out of range (exit 2, HTTP 400).
    #[error("{0}")]
    Invalid(String),
    #[error("no key with id '{0}'")]
    NotFound(String),
    #[error("metadata: {0}")]
    Backend(#[from] BackendError),
}

/// Characters of a key shown in lists (`rk-` and 6 more).
const PREFIX_LEN: usize = 9;

/// A new random key: `rk-` and 48 hex digits (192 bits).
fn new_key() -> String {
    let mut b = [0u8; 24];
    getrandom::getrandom(&mut b).expect("the OS random number generator is available");
    format!("rk-{}", hex::encode(b))
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the OS random number generator is available");
    format!("key_{}", hex::encode(b))
}

/// SHA-256 of a client key, hex: what metadata holds.
pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn audit(actor: &str, action: &str, k: &KeyRecord, detail: serde_json::Value) -> AuditEvent {
    AuditEvent {
        id: format!("{action}:{}:{}", k.id, now_ms()),
        at_ms: now_ms(),
        tenant: Some(k.tenant.clone()),
        actor: actor.to_string(),
        action: action.to_string(),
        cache_key: None,
        detail: json!({"key_id": k.id, "name": k.name, "detail": detail}),
    }
}

/// A key's record as reports show it.
pub fn record_json(k: &KeyRecord) -> serde_json::Value {
    let now = now_ms();
    let state = if k.revoked_at_ms.is_some() {
        "revoked"
    } else if k.expires_at_ms.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    };
    let mut v = serde_json::to_value(k).unwrap_or_default();
    v["state"] = json!(state);
    v
}

/// Makes a key for a tenant of the configuration and stores its digest.
pub async fn create(meta: &dyn Metadata, config: &Config, req: NewKey, actor: &str) -> Result<Created, KeyError> {
    if !config.tenants.iter().any(|t| t.name == req.tenant) {
        return Err(KeyError::Invalid(format!(
            "tenant '{}' is not in the configuration ([[tenants]])",
            req.tenant
        )));
    }
    req.limits.check().map_err(KeyError::Invalid)?;
    let key = new_key();
    let now = now_ms();
    let record = KeyRecord {
        id: new_id(),
        tenant: req.tenant,
        name: req.name,
        digest: digest(&key),
        prefix: key[..PREFIX_LEN].to_string(),
        created_at_ms: now,
        expires_at_ms: req.expires_in.map(|d| now + d.as_millis() as i64),
        revoked_at_ms: None,
        limits: req.limits,
        rotated_from: req.rotated_from,
    };
    meta.create_key(record.clone()).await?;
    let event = audit(actor, "key.create", &record, json!({"limits": record.limits}));
    if let Err(e) = meta.append_audit(vec![event]).await {
        tracing::warn!(error = %e, key = %record.id, "keys: created, but the audit event was not written");
    }
    Ok(Created { key, record })
}

/// Revokes a key now.
pub async fn revoke(meta: &dyn Metadata, id: &str, actor: &str) -> Result<KeyRecord, KeyError> {
    let k = meta
        .key_by_id(id.to_string())
        .await?
        .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
    if k.revoked_at_ms.is_none() {
        meta.revoke_key(id.to_string(), now_ms()).await?;
        meta.append_audit(vec![audit(actor, "key.revoke", &k, json!({}))])
            .await?;
    }
    Ok(meta.key_by_id(id.to_string()).await?.unwrap_or(k))
}

/// A new key with the same tenant, name and limits; the old one stays valid
/// for `grace` (then expires).
pub async fn rotate(
    meta: &dyn Metadata,
    config: &Config,
    id: &str,
    grace: Duration,
    actor: &str,
) -> Result<Created, KeyError> {
    let old = meta
        .key_by_id(id.to_string())
        .await?
        .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
    if !old.valid_at(now_ms()) {
        return Err(KeyError::Invalid(format!(
            "key '{id}' is revoked or expired: create a new one"
        )));
    }
    let lifetime = old
        .expires_at_ms
        .map(|e| Duration::from_millis((e - old.created_at_ms).max(0) as u64));
    let req = NewKey {
        tenant: old.tenant.clone(),
        name: old.name.clone(),
        expires_in: lifetime,
        limits: old.limits.clone(),
        rotated_from: Some(old.id.clone()),
    };
    let created = create(meta, config, req, actor).await?;
    meta.expire_key(old.id.clone(), now_ms() + grace.as_millis() as i64)
        .await?;
    let event = audit(
        actor,
        "key.rotate",
        &old,
        json!({"new_key_id": created.record.id, "grace_ms": grace.as_millis() as u64}),
    );
    meta.append_audit(vec![event]).await?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_only_their_digest_is_kept() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(a.starts_with("rk-") && a.len() == 51, "{a}");
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), digest(&b));
        assert!(new_id().starts_with("key_"));
    }
}
