//! Every router of the gateway, composed in one place: the provider
//! endpoints, health and metrics, the admin API and the dashboard on the main
//! listener; health and metrics alone on the ops listener (ARCHITECTURE.md,
//! "Request path").

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::gateway::{admin_entries, admin_keys, ops, proxy, AppState, Endpoint};
use recache_engine::error::ApiError;

async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Chat, headers, body).await
}
async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Completions, headers, body).await
}
async fn embeddings(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Embeddings, headers, body).await
}
async fn responses(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Responses, headers, body).await
}
async fn gemini(
    State(s): State<Arc<AppState>>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy::handle_gemini(s, target, query, headers, body).await
}
async fn messages(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Messages, headers, body).await
}
async fn count_tokens(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::CountTokens, headers, body).await
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response()
}

async fn method_not_allowed(method: Method) -> Response {
    ApiError::MethodNotAllowed(method.to_string()).into_response()
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat).fallback(method_not_allowed))
        .route("/v1/completions", post(completions).fallback(method_not_allowed))
        .route("/v1/embeddings", post(embeddings).fallback(method_not_allowed))
        .route("/v1/responses", post(responses).fallback(method_not_allowed))
        .route("/v1/messages", post(messages).fallback(method_not_allowed))
        .route("/v1beta/models/{target}", post(gemini).fallback(method_not_allowed))
        .route(
            "/v1/messages/count_tokens",
            post(count_tokens).fallback(method_not_allowed),
        )
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route(
            "/admin/entries/{key}",
            get(ops::admin_entry).delete(ops::admin_delete_entry),
        )
        .route("/admin/keys", get(admin_keys::list).post(admin_keys::create))
        .route("/admin/keys/{id}", delete(admin_keys::revoke))
        .route("/admin/keys/{id}/rotate", post(admin_keys::rotate))
        .route("/admin/entries", delete(admin_entries::purge_entries))
        .route("/admin/audit", get(ops::admin_audit))
        .route("/admin/breakers", get(ops::admin_breakers))
        .route("/admin/semantic", get(ops::admin_semantic))
        .route("/admin/jobs", get(ops::admin_jobs).post(ops::admin_enqueue))
        .route("/admin/jobs/{id}", get(ops::admin_job))
        .route("/admin/breakers/{backend}/{action}", post(ops::admin_breaker_action))
        .merge(crate::dashboard::routes())
        .fallback(not_found)
        .with_state(state)
}

/// The ops listener (`server.ops_listen`): health and metrics, no token.
pub(crate) fn ops_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ops_ready))
        .route("/metrics", get(ops::ops_metrics))
        .fallback(not_found)
        .with_state(state)
}
