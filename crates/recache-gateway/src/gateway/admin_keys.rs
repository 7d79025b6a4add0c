//! `GET|POST /admin/keys`, `DELETE /admin/keys/{id}` and
//! `POST /admin/keys/{id}/rotate`: what `recache keys` does, over HTTP. A
//! key revoked here is refused by this replica at once (the others within
//! `[keys] cache_seconds`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::ops::check_admin;
use super::AppState;
use recache_core::config::Limits;
use recache_engine::error::ApiError;
use recache_ops::keys::{self, KeyError, NewKey};

fn api(e: KeyError) -> ApiError {
    match e {
        KeyError::Invalid(m) => ApiError::InvalidRequest(m),
        KeyError::NotFound(id) => ApiError::NotFound {
            method: "key".into(),
            path: format!("/admin/keys/{id}"),
        },
        KeyError::Backend(e) => ApiError::Internal(e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    tenant: Option<String>,
}

pub(crate) async fn list(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let all = s
            .cache
            .roles
            .metadata
            .list_keys(q.tenant)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let rows: Vec<_> = all.iter().map(keys::record_json).collect();
        Ok(Json(json!({"keys": rows})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    tenant: String,
    #[serde(default)]
    name: Option<String>,
    /// e.g. `90d`.
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    limits: Limits,
}

pub(crate) async fn create(State(s): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let b: CreateBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::InvalidRequest(format!(
                "body must be {{\"tenant\", \"name\"?, \"expires\"?: \"90d\", \"limits\"?: {{\"rpm\", \"tpm\", ...}}}}: {e}"
            ))
        })?;
        let expires_in = b
            .expires
            .as_deref()
            .map(recache_core::time::parse_duration)
            .transpose()
            .map_err(|e| ApiError::InvalidRequest(format!("expires: {e}")))?;
        let req = NewKey {
            tenant: b.tenant,
            name: b.name,
            expires_in,
            limits: b.limits,
            rotated_from: None,
        };
        let c = keys::create(s.cache.roles.metadata.as_ref(), &s.config, req, "admin")
            .await
            .map_err(api)?;
        let body = json!({"key": c.key, "record": keys::record_json(&c.record)});
        Ok((StatusCode::CREATED, Json(body)).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

pub(crate) async fn revoke(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let k = keys::revoke(s.cache.roles.metadata.as_ref(), &id, "admin")
            .await
            .map_err(api)?;
        s.tenants.forget(&k.digest);
        Ok(Json(json!({"revoked": keys::record_json(&k)})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

#[derive(Deserialize)]
pub struct RotateQuery {
    /// How long the old key stays valid (default 1h).
    grace: Option<String>,
}

pub(crate) async fn rotate(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RotateQuery>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let grace = recache_core::time::parse_duration(q.grace.as_deref().unwrap_or("1h"))
            .map_err(|e| ApiError::InvalidRequest(format!("grace: {e}")))?;
        let c = keys::rotate(s.cache.roles.metadata.as_ref(), &s.config, &id, grace, "admin")
            .await
            .map_err(api)?;
        if let Ok(Some(old)) = s.cache.roles.metadata.key_by_id(id).await {
            s.tenants.forget(&old.digest);
        }
        let body = json!({"key": c.key, "record": keys::record_json(&c.record)});
        Ok((StatusCode::CREATED, Json(body)).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}
