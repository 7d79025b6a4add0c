//! What the SQL metadata engines (SQLite, PostgreSQL) share: error mapping,
//! row decoding and the migration list format. Their queries differ only in
//! placeholders and a few functions, and live in each engine's file.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{ArtifactId, AuditEvent, BackendError, EntryRecord, Result};
use crate::key::CacheKey;

pub const NAME: &str = "metadata";

pub fn map_err(e: sqlx::Error) -> BackendError {
    match e {
        sqlx::Error::PoolTimedOut => BackendError::Timeout {
            backend: NAME,
            after_ms: 0,
        },
        sqlx::Error::Io(e) => BackendError::unavailable(NAME, e),
        sqlx::Error::Tls(e) => BackendError::unavailable(NAME, e),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => BackendError::unavailable(NAME, e),
        other => BackendError::Protocol {
            backend: NAME,
            detail: other.to_string(),
        },
    }
}

pub fn corrupt(what: &str) -> BackendError {
    BackendError::Corrupt {
        backend: NAME,
        detail: format!("bad {what} in a metadata row"),
    }
}

/// Decodes an `entries` row from either engine.
pub fn row_to_entry<'r, R>(r: &'r R) -> Result<EntryRecord>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
{
    let int = |c: &'static str| r.try_get::<i64, _>(c).map_err(map_err);
    let text = |c: &'static str| r.try_get::<String, _>(c).map_err(map_err);
    Ok(EntryRecord {
        key: CacheKey::from_hex(&text("cache_key")?).ok_or_else(|| corrupt("cache_key"))?,
        tenant: text("tenant")?,
        namespace: text("namespace")?,
        endpoint: text("endpoint")?,
        model: text("model")?,
        artifact: ArtifactId::from_hex(&text("artifact_sha256")?).ok_or_else(|| corrupt("artifact_sha256"))?,
        request_bytes: int("request_bytes")? as u64,
        response_bytes: int("response_bytes")? as u64,
        prompt_tokens: int("prompt_tokens")? as u64,
        completion_tokens: int("completion_tokens")? as u64,
        cost_usd: r.try_get::<f64, _>("cost_usd").map_err(map_err)?,
        created_at_ms: int("created_at_ms")?,
        expires_at_ms: int("expires_at_ms")?,
        last_hit_at_ms: r.try_get::<Option<i64>, _>("last_hit_at_ms").map_err(map_err)?,
        hit_count: int("hit_count")? as u64,
    })
}

/// Decodes an `audit_log` row from either engine.
pub fn row_to_audit<'r, R>(r: &'r R) -> Result<AuditEvent>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let detail: String = r.try_get("detail").map_err(map_err)?;
    Ok(AuditEvent {
        id: r.try_get("event_id").map_err(map_err)?,
        at_ms: r.try_get("at_ms").map_err(map_err)?,
        tenant: r.try_get::<Option<String>, _>("tenant").map_err(map_err)?,
        actor: r.try_get("actor").map_err(map_err)?,
        action: r.try_get("action").map_err(map_err)?,
        cache_key: r.try_get::<Option<String>, _>("cache_key").map_err(map_err)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
    })
}

/// Decodes the pointer columns of a live-entries row.
pub fn row_to_pointer<'r, R>(r: &'r R) -> Result<(CacheKey, super::IndexEntry)>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let key: String = r.try_get("cache_key").map_err(map_err)?;
    let artifact: String = r.try_get("artifact_sha256").map_err(map_err)?;
    let (Some(key), Some(artifact)) = (CacheKey::from_hex(&key), ArtifactId::from_hex(&artifact)) else {
        return Err(corrupt("key or artifact"));
    };
    Ok((
        key,
        super::IndexEntry {
            artifact,
            size: r.try_get::<i64, _>("response_bytes").map_err(map_err)? as u64,
            created_at_ms: r.try_get("created_at_ms").map_err(map_err)?,
            expires_at_ms: r.try_get("expires_at_ms").map_err(map_err)?,
        },
    ))
}
