//! The purge queries of the SQL metadata engines (`EntryFilter` pages and
//! guarded deletes), written once for SQLite and PostgreSQL like
//! `metadata_sql`'s (see "Purge and erasure" in `ARCHITECTURE.md`).

/// The `WHERE` clause of an [`super::filter::EntryFilter`]: tenant; a flag
/// and a namespace; a flag and a model; created before; the key range
/// `[low, high)`; after a cursor ($1 to $9).
pub const FILTER_WHERE: &str = "tenant = $1 AND ($2 = 0 OR namespace = $3) AND ($4 = 0 OR model = $5) \
     AND created_at_ms < $6 AND cache_key >= $7 AND cache_key < $8 AND cache_key > $9";

/// `q_select`, `q_delete_entries` and `q_replace_artifacts` for an engine type that provides
/// `sql(&str)`, `ready()`, `reader()` and `writer()`.
macro_rules! purge_queries {
    ($ty:ty) => {
        impl $ty {
            async fn q_select(
                &self,
                f: super::filter::EntryFilter,
                after: Option<CacheKey>,
                limit: Option<u32>,
            ) -> Result<std::result::Result<Vec<EntryRecord>, u64>> {
                self.ready().await?;
                let (low, high) = f.key_range();
                let what = match limit {
                    Some(_) => super::metadata_sql::PAGE_COLUMNS,
                    None => "COUNT(*)",
                };
                let text = format!(
                    "SELECT {what} FROM entries WHERE {} {}",
                    super::metadata_purge::FILTER_WHERE,
                    if limit.is_some() {
                        "ORDER BY cache_key LIMIT $10"
                    } else {
                        ""
                    }
                );
                let sql = Self::sql(&text);
                let q = sqlx::query(&sql)
                    .bind(f.tenant.clone())
                    .bind(f.namespace.is_some() as i64)
                    .bind(f.namespace.clone().unwrap_or_default())
                    .bind(f.model.is_some() as i64)
                    .bind(f.model.clone().unwrap_or_default())
                    .bind(f.before_ms.unwrap_or(i64::MAX))
                    .bind(low)
                    .bind(high)
                    .bind(after.map(|k| k.hex()).unwrap_or_default());
                match limit {
                    Some(limit) => {
                        let rows = q
                            .bind(limit as i64)
                            .fetch_all(self.reader())
                            .await
                            .map_err(map_err)?;
                        Ok(Ok(rows.iter().map(row_to_entry).collect::<Result<_>>()?))
                    }
                    None => {
                        let row = q.fetch_one(self.reader()).await.map_err(map_err)?;
                        let n: i64 = sqlx::Row::try_get(&row, 0).map_err(map_err)?;
                        Ok(Err(n as u64))
                    }
                }
            }

            async fn q_delete_entries(&self, entries: Vec<(CacheKey, ArtifactId)>) -> Result<u64> {
                self.ready().await?;
                let sql = Self::sql("DELETE FROM entries WHERE cache_key = $1 AND artifact_sha256 = $2");
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let mut n = 0;
                for (k, a) in &entries {
                    n += sqlx::query(&sql)
                        .bind(k.hex())
                        .bind(a.hex())
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                }
                tx.commit().await.map_err(map_err)?;
                Ok(n)
            }

            async fn q_replace_artifacts(&self, swaps: Vec<super::ArtifactSwap>) -> Result<Vec<bool>> {
                self.ready().await?;
                let sql = Self::sql(
                    "UPDATE entries SET artifact_sha256 = $1, response_bytes = $2, request_json = $3 \
                     WHERE cache_key = $4 AND artifact_sha256 = $5",
                );
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let mut changed = Vec::with_capacity(swaps.len());
                for s in &swaps {
                    let n = sqlx::query(&sql)
                        .bind(s.new.hex())
                        .bind(s.response_bytes as i64)
                        .bind(s.request.clone())
                        .bind(s.key.hex())
                        .bind(s.old.hex())
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                    changed.push(n > 0);
                }
                tx.commit().await.map_err(map_err)?;
                Ok(changed)
            }
        }
    };
}
pub(crate) use purge_queries;
