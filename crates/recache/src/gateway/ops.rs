//! Health, metrics and the admin API.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::error::ApiError;
use crate::key::CacheKey;
use crate::metrics::rss_bytes;
use crate::roles::{now_ms, AuditEvent};

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Per-role health. The gateway stays ready while any backend is down: it
/// still answers every request from the provider, so the status says
/// `degraded` and the code stays 200.
pub async fn ready(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let roles = s.cache.roles.health(Duration::from_millis(500)).await;
    let degraded = roles.iter().any(|r| r.status == "down");
    Json(json!({
        "status": if degraded { "degraded" } else { "ready" },
        "uptime_seconds": s.started.elapsed().as_secs(),
        "roles": roles,
    }))
}

pub async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let entries = s.cache.roles.index.count().await.unwrap_or(0) as f64;
    let mut body = s.cache.metrics.render(&[
        (
            "process_resident_memory_bytes",
            "Resident memory of the gateway process.",
            rss_bytes() as f64,
        ),
        ("cache_index_entries", "Entries in the index.", entries),
        (
            "cache_flights_in_progress",
            "Provider calls in flight.",
            s.coalescer.in_flight() as f64,
        ),
        (
            "process_uptime_seconds",
            "Seconds since the gateway started.",
            s.started.elapsed().as_secs_f64(),
        ),
    ]);
    use std::fmt::Write as _;
    let statuses: Vec<_> = s.cache.roles.breakers.iter().map(|b| b.status()).collect();
    type Value = fn(&crate::breaker::BreakerStatus) -> u64;
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "cache_breaker_state",
            "gauge",
            "Circuit breaker state: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled.",
            |b| b.state.code() as u64,
        ),
        (
            "cache_breaker_transitions_total",
            "counter",
            "Circuit breaker state changes.",
            |b| b.transitions,
        ),
        (
            "cache_breaker_rejections_total",
            "counter",
            "Calls skipped because the breaker was open.",
            |b| b.rejections,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(body, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for b in &statuses {
            let _ = writeln!(body, "{name}{{backend=\"{}\"}} {}", b.backend, value(b));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn check_admin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &s.admin_token else {
        return Err(ApiError::AdminUnauthorized);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError::AdminUnauthorized),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_key(k: &str) -> Result<CacheKey, ApiError> {
    CacheKey::from_hex(k).ok_or_else(|| ApiError::InvalidRequest("cache key must be 64 hex digits".into()))
}

pub async fn admin_entry(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let key = parse_key(&key)?;
        let entry = s
            .cache
            .roles
            .metadata
            .get_entry(key)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let indexed = s.cache.roles.index.get(key).await.ok().flatten().is_some();
        match entry {
            Some(e) => Ok(Json(json!({"entry": e, "indexed": indexed})).into_response()),
            None => Err(ApiError::NotFound {
                method: "GET".into(),
                path: format!("/admin/entries/{}", key.hex()),
            }),
        }
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

pub async fn admin_delete_entry(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let key = parse_key(&key)?;
        let internal = |e: crate::error::BackendError| ApiError::Internal(e.to_string());
        let in_index = s.cache.roles.index.delete(key).await.map_err(internal)?;
        let entry = s.cache.roles.metadata.get_entry(key).await.map_err(internal)?;
        let in_meta = s.cache.roles.metadata.delete_entry(key).await.map_err(internal)?;
        if let Some(e) = &entry {
            let _ = s.cache.roles.artifacts.delete(e.artifact).await;
        }
        s.cache
            .audit(AuditEvent {
                id: format!("admin-{}-{}", now_ms(), key.hex()),
                at_ms: now_ms(),
                tenant: entry.as_ref().map(|e| e.tenant.clone()),
                actor: "admin".into(),
                action: "entry.delete".into(),
                cache_key: Some(key.hex()),
                detail: json!({"index": in_index, "metadata": in_meta}),
            })
            .await;
        Ok(Json(json!({"deleted": in_index || in_meta})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

#[derive(serde::Deserialize)]
pub struct AuditQuery {
    limit: Option<u32>,
}

pub async fn admin_audit(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let events = s
            .cache
            .roles
            .metadata
            .recent_audit(q.limit.unwrap_or(100).min(10_000))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Json(json!({"events": events})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

pub async fn admin_breakers(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_admin(&s, &headers) {
        return e.into_response();
    }
    let statuses: Vec<_> = s.cache.roles.breakers.iter().map(|b| b.status()).collect();
    Json(json!({"breakers": statuses})).into_response()
}

/// `POST /admin/breakers/{backend}/{open|reset}`: force a breaker open (drills) or reset it.
pub async fn admin_breaker_action(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((backend, action)): Path<(String, String)>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let b = s.cache.roles.breaker(&backend).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "unknown backend '{backend}' (index, artifacts, vectors, metadata)"
            ))
        })?;
        match action.as_str() {
            "open" => b.force_open(),
            "reset" => b.reset(),
            other => {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown action '{other}' (open, reset)"
                )))
            }
        }
        s.cache
            .audit(AuditEvent {
                id: format!("admin-breaker-{}-{backend}-{action}-{}", now_ms(), std::process::id()),
                at_ms: now_ms(),
                tenant: None,
                actor: "admin".into(),
                action: format!("breaker.{action}"),
                cache_key: None,
                detail: json!({"backend": backend}),
            })
            .await;
        Ok(Json(json!({"breaker": b.status()})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}
