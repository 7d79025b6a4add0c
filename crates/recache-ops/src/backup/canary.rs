//! The canary: a synthetic entry written through every store when a backup
//! starts, whose exact bytes the manifest records. Verification looks it up
//! through a test restore and compares byte for byte: proof that a restored
//! set answers, not only that its files hash right.
//!
//! Its key comes from the reserved tenant `_recache` and the endpoint
//! `canary`, which no request can produce, so it is never served to anyone.
//! There is one canary per deployment: each backup replaces the previous one.

use base64::Engine as _;
use bytes::Bytes;

use super::manifest::Canary;
use recache_core::artifact::{self, ArtifactMeta};
use recache_core::key::{cache_key, CacheKey};
use recache_storage::roles::{ArtifactId, EntryRecord, Roles};

pub const TENANT: &str = "_recache";
pub const ENDPOINT: &str = "canary";
/// Far in the future: the canary must still be there when an old set is restored.
const LIFETIME_MS: i64 = 10 * 365 * 86_400_000;

pub fn key(deployment: &str) -> CacheKey {
    cache_key(TENANT, "backup", ENDPOINT, deployment)
}

/// Builds the canary entry and its artifact for set `id`.
pub fn build(deployment: &str, id: &str, now_ms: i64) -> (EntryRecord, Bytes) {
    let key = key(deployment);
    let request = serde_json::json!({"canary": deployment}).to_string();
    let body = serde_json::json!({"backup_set": id, "written_at_ms": now_ms, "deployment": deployment}).to_string();
    let meta = ArtifactMeta {
        key: key.hex(),
        tenant: TENANT.into(),
        namespace: "backup".into(),
        endpoint: ENDPOINT.into(),
        model: "recache-canary".into(),
        created_at_ms: now_ms,
        expires_at_ms: now_ms + LIFETIME_MS,
        content_type: "application/json".into(),
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_usd: 0.0,
    };
    let bytes = artifact::encode(&meta, request.as_bytes(), body.as_bytes());
    let entry = EntryRecord {
        key,
        tenant: TENANT.into(),
        namespace: "backup".into(),
        endpoint: ENDPOINT.into(),
        model: "recache-canary".into(),
        artifact: ArtifactId::of(&bytes),
        request_bytes: request.len() as u64,
        response_bytes: bytes.len() as u64,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_usd: 0.0,
        created_at_ms: now_ms,
        expires_at_ms: now_ms + LIFETIME_MS,
        last_hit_at_ms: None,
        hit_count: 0,
        request: Some(request),
        artifact_missing: false,
    };
    (entry, bytes)
}

/// Writes the canary through the stores in the gateway's order (artifact,
/// metadata, index) and removes the previous canary's artifact.
pub async fn write(
    roles: &Roles,
    deployment: &str,
    id: &str,
    now_ms: i64,
) -> Result<Canary, recache_storage::roles::BackendError> {
    let (entry, bytes) = build(deployment, id, now_ms);
    roles.artifacts.put(entry.artifact, bytes.clone()).await?;
    let replaced = roles.metadata.upsert_entry(entry.clone()).await?;
    roles.index.put(entry.key, entry.index_entry()).await?;
    if let Some(old) = replaced.filter(|old| *old != entry.artifact) {
        let _ = roles.artifacts.delete(old).await;
    }
    Ok(Canary {
        key: entry.key.hex(),
        artifact: entry.artifact.hex(),
        bytes_b64: base64::engine::general_purpose::STANDARD.encode(&bytes),
    })
}

/// The canary's exact bytes as the manifest records them.
pub(crate) fn bytes_of(c: &Canary) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(&c.bytes_b64).ok()
}
