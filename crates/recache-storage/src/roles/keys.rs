//! Client keys kept in metadata (`recache keys create`): only a key's SHA-256
//! is stored, with its tenant, its limits and its life (expiry, revocation).
//! Both SQL engines implement [`KeyStore`] with the queries written once here.

use serde::{Deserialize, Serialize};

use super::{BoxFuture, Result};
use recache_core::config::Limits;

/// One key as stored (never the key itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `key_` and 16 hex digits: how the key is named in lists, revocations and logs.
    pub id: String,
    /// The tenant's name, as `[[tenants]]` gives it.
    pub tenant: String,
    pub name: Option<String>,
    /// SHA-256 of the key, hex.
    #[serde(skip)]
    pub digest: String,
    /// The key's first characters, to recognise it by (`rk-1a2b3c…`).
    pub prefix: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub limits: Limits,
    /// The key this one replaced (`keys rotate`).
    pub rotated_from: Option<String>,
}

impl KeyRecord {
    /// The record with its digest, as a backup set holds it (`metadata/keys-*.jsonl`).
    pub fn to_backup_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["digest"] = serde_json::Value::String(self.digest.clone());
        v
    }

    /// A record of a backup set; `None` without a well-formed digest.
    pub fn from_backup_json(v: serde_json::Value) -> Option<Self> {
        let digest = v.get("digest")?.as_str()?.to_string();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut k: KeyRecord = serde_json::from_value(v).ok()?;
        k.digest = digest;
        Some(k)
    }

    /// Whether it authenticates at `now_ms`.
    pub fn valid_at(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|e| e > now_ms)
    }
}

/// The key store: part of the metadata role.
pub trait KeyStore: Send + Sync {
    /// Stores a new key (its id and digest unique).
    fn create_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<()>>;
    /// Every key, or a tenant's, newest first.
    fn list_keys(&self, tenant: Option<String>) -> BoxFuture<'_, Result<Vec<KeyRecord>>>;
    fn key_by_digest(&self, digest: String) -> BoxFuture<'_, Result<Option<KeyRecord>>>;
    fn key_by_id(&self, id: String) -> BoxFuture<'_, Result<Option<KeyRecord>>>;
    /// Revokes a key at `at_ms`; false when there is no such key or it was revoked already.
    fn revoke_key(&self, id: String, at_ms: i64) -> BoxFuture<'_, Result<bool>>;
    /// Makes a key expire at `at_ms` at the latest (a rotation's grace).
    fn expire_key(&self, id: String, at_ms: i64) -> BoxFuture<'_, Result<bool>>;
}

pub(crate) const KEY_COLUMNS: &str =
    "id, tenant, name, digest, prefix, created_at_ms, expires_at_ms, revoked_at_ms, limits_json, rotated_from";

pub(crate) fn row_to_key<R>(r: &R) -> Result<KeyRecord>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    use super::metadata_sql::map_err;
    let limits: String = r.try_get("limits_json").map_err(map_err)?;
    Ok(KeyRecord {
        id: r.try_get("id").map_err(map_err)?,
        tenant: r.try_get("tenant").map_err(map_err)?,
        name: r.try_get("name").map_err(map_err)?,
        digest: r.try_get("digest").map_err(map_err)?,
        prefix: r.try_get("prefix").map_err(map_err)?,
        created_at_ms: r.try_get("created_at_ms").map_err(map_err)?,
        expires_at_ms: r.try_get("expires_at_ms").map_err(map_err)?,
        revoked_at_ms: r.try_get("revoked_at_ms").map_err(map_err)?,
        limits: serde_json::from_str(&limits).map_err(|e| super::BackendError::Protocol {
            backend: super::metadata_sql::NAME,
            detail: format!("key limits: {e}"),
        })?,
        rotated_from: r.try_get("rotated_from").map_err(map_err)?,
    })
}

/// [`KeyStore`] for an SQL metadata engine that provides `sql(&str)`,
/// `ready()`, `reader()` and `writer()` (as `recovery_queries!` uses).
macro_rules! key_store {
    ($ty:ty) => {
        impl $ty {
            async fn q_keys_where(&self, filter: &str, arg: Option<String>) -> Result<Vec<super::keys::KeyRecord>> {
                self.ready().await?;
                let text = format!(
                    "SELECT {} FROM api_keys {filter} ORDER BY created_at_ms DESC, id",
                    super::keys::KEY_COLUMNS
                );
                let sql = Self::sql(&text);
                let mut q = sqlx::query(&sql);
                if let Some(a) = arg {
                    q = q.bind(a);
                }
                let rows = q.fetch_all(self.reader()).await.map_err(map_err)?;
                rows.iter().map(super::keys::row_to_key).collect()
            }

            async fn q_update_key(&self, text: &str, id: String, at_ms: i64) -> Result<bool> {
                self.ready().await?;
                let sql = Self::sql(text);
                let n = sqlx::query(&sql)
                    .bind(at_ms)
                    .bind(id)
                    .execute(self.writer())
                    .await
                    .map_err(map_err)?
                    .rows_affected();
                Ok(n > 0)
            }
        }

        impl super::keys::KeyStore for $ty {
            fn create_key(&self, k: super::keys::KeyRecord) -> BoxFuture<'_, Result<()>> {
                Box::pin(async move {
                    self.ready().await?;
                    let limits = serde_json::to_string(&k.limits).unwrap_or_else(|_| "{}".into());
                    let text = format!(
                        "INSERT INTO api_keys ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        super::keys::KEY_COLUMNS
                    );
                    let sql = Self::sql(&text);
                    sqlx::query(&sql)
                        .bind(&k.id)
                        .bind(&k.tenant)
                        .bind(&k.name)
                        .bind(&k.digest)
                        .bind(&k.prefix)
                        .bind(k.created_at_ms)
                        .bind(k.expires_at_ms)
                        .bind(k.revoked_at_ms)
                        .bind(limits)
                        .bind(&k.rotated_from)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?;
                    Ok(())
                })
            }
            fn list_keys(&self, tenant: Option<String>) -> BoxFuture<'_, Result<Vec<super::keys::KeyRecord>>> {
                Box::pin(async move {
                    match tenant {
                        Some(t) => self.q_keys_where("WHERE tenant = $1", Some(t)).await,
                        None => self.q_keys_where("", None).await,
                    }
                })
            }
            fn key_by_digest(&self, digest: String) -> BoxFuture<'_, Result<Option<super::keys::KeyRecord>>> {
                Box::pin(async move { Ok(self.q_keys_where("WHERE digest = $1", Some(digest)).await?.pop()) })
            }
            fn key_by_id(&self, id: String) -> BoxFuture<'_, Result<Option<super::keys::KeyRecord>>> {
                Box::pin(async move { Ok(self.q_keys_where("WHERE id = $1", Some(id)).await?.pop()) })
            }
            fn revoke_key(&self, id: String, at_ms: i64) -> BoxFuture<'_, Result<bool>> {
                Box::pin(self.q_update_key(
                    "UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
                    id,
                    at_ms,
                ))
            }
            fn expire_key(&self, id: String, at_ms: i64) -> BoxFuture<'_, Result<bool>> {
                Box::pin(self.q_update_key(
                    "UPDATE api_keys SET expires_at_ms = $1 WHERE id = $2 AND (expires_at_ms IS NULL OR expires_at_ms > $1)",
                    id,
                    at_ms,
                ))
            }
        }
    };
}
pub(crate) use key_store;
