//! Per-tenant data keys kept in metadata for sealing answers at rest
//! ("Data protection" in `ARCHITECTURE.md`): only wrapped by the master key
//! (`recache_core::seal::wrap`), never plain. A tenant has at most one active
//! key (new writes); retired keys still open what they sealed; a destroyed
//! key (erasure) keeps its row, with the wrapped key gone, so what it sealed
//! is unreadable everywhere, backups included.

use serde::{Deserialize, Serialize};

use super::{BoxFuture, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataKeyRecord {
    /// `dk_` and 16 hex digits: named in every blob it seals.
    pub id: String,
    /// The tenant's stable id.
    pub tenant: String,
    /// The key wrapped by the master key (base64); empty once destroyed.
    pub wrapped: String,
    /// Fingerprint of the master key that wrapped it.
    pub master_id: String,
    pub created_at_ms: i64,
    /// Replaced for new writes (`recache encryption rotate-tenant`).
    pub retired_at_ms: Option<i64>,
    /// Destroyed by an erasure: what it sealed cannot be read again.
    pub destroyed_at_ms: Option<i64>,
}

impl DataKeyRecord {
    pub fn active(&self) -> bool {
        self.retired_at_ms.is_none() && self.destroyed_at_ms.is_none()
    }
}

/// The data keys of metadata: part of the metadata role.
pub trait DataKeyStore: Send + Sync {
    /// Stores a new key; with `retire_others`, the tenant's other active keys
    /// are retired at its creation time, in the same transaction.
    fn create_data_key(&self, key: DataKeyRecord, retire_others: bool) -> BoxFuture<'_, Result<()>>;
    /// Every key, or a tenant's, oldest first.
    fn list_data_keys(&self, tenant: Option<String>) -> BoxFuture<'_, Result<Vec<DataKeyRecord>>>;
    /// Re-wraps a key under another master key (a master rotation); false
    /// when it is destroyed or gone.
    fn rewrap_data_key(&self, id: String, wrapped: String, master_id: String) -> BoxFuture<'_, Result<bool>>;
    /// Destroys every key of a tenant (erasure): the wrapped keys are
    /// overwritten; answers how many were destroyed.
    fn destroy_data_keys(&self, tenant: String, at_ms: i64) -> BoxFuture<'_, Result<u64>>;
}

pub(crate) const DATA_KEY_COLUMNS: &str =
    "id, tenant, wrapped, master_id, created_at_ms, retired_at_ms, destroyed_at_ms";

pub(crate) fn row_to_data_key<R>(r: &R) -> Result<DataKeyRecord>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    use super::metadata_sql::map_err;
    Ok(DataKeyRecord {
        id: r.try_get("id").map_err(map_err)?,
        tenant: r.try_get("tenant").map_err(map_err)?,
        wrapped: r.try_get("wrapped").map_err(map_err)?,
        master_id: r.try_get("master_id").map_err(map_err)?,
        created_at_ms: r.try_get("created_at_ms").map_err(map_err)?,
        retired_at_ms: r.try_get("retired_at_ms").map_err(map_err)?,
        destroyed_at_ms: r.try_get("destroyed_at_ms").map_err(map_err)?,
    })
}

/// [`DataKeyStore`] for an SQL metadata engine that provides `sql(&str)`,
/// `ready()`, `reader()` and `writer()` (as `key_store!` uses).
macro_rules! data_key_store {
    ($ty:ty) => {
        impl super::data_keys::DataKeyStore for $ty {
            fn create_data_key(&self, k: super::data_keys::DataKeyRecord, retire_others: bool) -> BoxFuture<'_, Result<()>> {
                Box::pin(async move {
                    self.ready().await?;
                    let mut tx = self.writer().begin().await.map_err(map_err)?;
                    if retire_others {
                        let sql = Self::sql(
                            "UPDATE data_keys SET retired_at_ms = $1 WHERE tenant = $2 \
                             AND retired_at_ms IS NULL AND destroyed_at_ms IS NULL",
                        );
                        sqlx::query(&sql)
                            .bind(k.created_at_ms)
                            .bind(&k.tenant)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    }
                    let text = format!(
                        "INSERT INTO data_keys ({}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        super::data_keys::DATA_KEY_COLUMNS
                    );
                    let sql = Self::sql(&text);
                    sqlx::query(&sql)
                        .bind(&k.id)
                        .bind(&k.tenant)
                        .bind(&k.wrapped)
                        .bind(&k.master_id)
                        .bind(k.created_at_ms)
                        .bind(k.retired_at_ms)
                        .bind(k.destroyed_at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    tx.commit().await.map_err(map_err)?;
                    Ok(())
                })
            }
            fn list_data_keys(&self, tenant: Option<String>) -> BoxFuture<'_, Result<Vec<super::data_keys::DataKeyRecord>>> {
                Box::pin(async move {
                    self.ready().await?;
                    let filter = if tenant.is_some() { "WHERE tenant = $1" } else { "" };
                    let text = format!(
                        "SELECT {} FROM data_keys {filter} ORDER BY created_at_ms, id",
                        super::data_keys::DATA_KEY_COLUMNS
                    );
                    let sql = Self::sql(&text);
                    let mut q = sqlx::query(&sql);
                    if let Some(t) = tenant {
                        q = q.bind(t);
                    }
                    let rows = q.fetch_all(self.reader()).await.map_err(map_err)?;
                    rows.iter().map(super::data_keys::row_to_data_key).collect()
                })
            }
            fn rewrap_data_key(&self, id: String, wrapped: String, master_id: String) -> BoxFuture<'_, Result<bool>> {
                Box::pin(async move {
                    self.ready().await?;
                    let sql = Self::sql(
                        "UPDATE data_keys SET wrapped = $1, master_id = $2 WHERE id = $3 AND destroyed_at_ms IS NULL",
                    );
                    let n = sqlx::query(&sql)
                        .bind(wrapped)
                        .bind(master_id)
                        .bind(id)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                    Ok(n > 0)
                })
            }
            fn destroy_data_keys(&self, tenant: String, at_ms: i64) -> BoxFuture<'_, Result<u64>> {
                Box::pin(async move {
                    self.ready().await?;
                    let sql = Self::sql(
                        "UPDATE data_keys SET wrapped = '', destroyed_at_ms = $1 WHERE tenant = $2 AND destroyed_at_ms IS NULL",
                    );
                    let n = sqlx::query(&sql)
                        .bind(at_ms)
                        .bind(tenant)
                        .execute(self.writer())
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                    Ok(n)
                })
            }
        }
    };
}
pub(crate) use data_key_store;
