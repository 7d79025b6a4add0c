//! `DELETE /admin/entries?tenant=…[&namespace=…&model=…&before=…&key_prefix=…][&dry_run=true]`:
//! what `recache purge` does, over HTTP. The purge runs as a job (202 with
//! its id; `GET /admin/jobs` follows it) in this gateway, whose spool it
//! purges too; a dry run answers the counts at once (200) and changes nothing.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::ops::check_admin;
use super::AppState;
use recache_engine::error::ApiError;
use recache_ops::recovery::purge::{self, PURGE};
use recache_storage::roles::filter::EntryFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    tenant: Option<String>,
    namespace: Option<String>,
    model: Option<String>,
    before: Option<String>,
    key_prefix: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

pub(crate) async fn purge_entries(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<PurgeQuery>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let before_ms = match &q.before {
            Some(t) => Some(
                recache_core::time::parse_time(t, recache_core::time::now_ms()).map_err(ApiError::InvalidRequest)?,
            ),
            None => None,
        };
        let f = EntryFilter {
            tenant: q.tenant.clone().unwrap_or_default(),
            namespace: q.namespace.clone(),
            model: q.model.clone(),
            before_ms,
            key_prefix: q.key_prefix.as_ref().map(|p| p.to_ascii_lowercase()),
        };
        f.validate()
            .map_err(|e| ApiError::InvalidRequest(format!("{e} (DELETE /admin/entries?tenant=…)")))?;
        let internal = |e: String| ApiError::Internal(e);
        if q.dry_run {
            let v = s
                .recovery
                .purge_count(&f)
                .await
                .map_err(|e| internal(format!("{e:?}")))?;
            return Ok(Json(v).into_response());
        }
        let payload = json!({"filter": f, "actor": "admin"});
        let (id, created) = purge::enqueue(&s.recovery, PURGE, payload)
            .await
            .map_err(|e| internal(e.to_string()))?;
        if created && !s.config.warmer.enabled {
            // No workers in this gateway: it runs this one job itself.
            tokio::spawn(purge::run_here_until_done(
                s.recovery.clone(),
                vec![PURGE],
                id,
                "gateway-purge",
            ));
        }
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"job": id, "created": created, "filter": f, "follow": "/admin/jobs"})),
        )
            .into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}
