//! The audit log's retention and size queries of the SQL metadata engines,
//! written once for SQLite and PostgreSQL like `metadata_sql`'s (see "Audit
//! log retention" in `docs/operations.md`).

/// [`super::Metadata::prune_audit`] and [`super::Metadata::audit_summary`] for an
/// engine type that provides `sql(&str)`, `ready()`, `reader()` and `writer()`.
macro_rules! audit_methods {
    () => {
        fn prune_audit(
            &self,
            class: $crate::roles::AuditClass,
            before_ms: i64,
            limit: u32,
        ) -> BoxFuture<'_, Result<u64>> {
            Box::pin(async move {
                self.ready().await?;
                let sql = Self::sql(&format!(
                    "DELETE FROM audit_log WHERE seq IN \
                     (SELECT seq FROM audit_log WHERE at_ms < $1 AND {} ORDER BY at_ms LIMIT $2)",
                    class.sql_condition()
                ));
                let r = sqlx::query(&sql)
                    .bind(before_ms)
                    .bind(limit as i64)
                    .execute(self.writer())
                    .await
                    .map_err(map_err)?;
                Ok(r.rows_affected())
            })
        }

        fn audit_summary(&self) -> BoxFuture<'_, Result<$crate::roles::AuditSummary>> {
            Box::pin(async move {
                use sqlx::Row;
                self.ready().await?;
                let answers = $crate::roles::AuditClass::Answers.sql_condition();
                let sql = format!(
                    "SELECT COUNT(*) AS n, \
                     SUM(CASE WHEN {answers} THEN 1 ELSE 0 END) AS answers, \
                     MIN(CASE WHEN {answers} THEN at_ms END) AS oldest_answer, \
                     MIN(CASE WHEN {answers} THEN NULL ELSE at_ms END) AS oldest_operation \
                     FROM audit_log"
                );
                let row = sqlx::query(&sql)
                    .fetch_one(self.reader())
                    .await
                    .map_err(map_err)?;
                let n: i64 = row.try_get("n").map_err(map_err)?;
                let answers: Option<i64> = row.try_get("answers").map_err(map_err)?;
                let answers = answers.unwrap_or(0).max(0) as u64;
                Ok($crate::roles::AuditSummary {
                    answers,
                    operations: (n.max(0) as u64).saturating_sub(answers),
                    oldest_answer_ms: row.try_get("oldest_answer").map_err(map_err)?,
                    oldest_operation_ms: row.try_get("oldest_operation").map_err(map_err)?,
                })
            })
        }
    };
}
pub(crate) use audit_methods;
