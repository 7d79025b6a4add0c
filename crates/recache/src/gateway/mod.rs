//! The HTTP gateway: `fn app(state) -> Router`, so tests can drive it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::cache::Cache;
use crate::config::Config;
use crate::error::ApiError;
use crate::upstream::Upstreams;

pub mod auth;
pub mod directives;
pub mod flight;
pub mod ops;
pub mod proxy;
pub mod semantic;
pub mod tape;

pub use recache_core::endpoint::{cost_usd, Endpoint};

/// Everything a request handler needs.
pub struct AppState {
    pub config: Arc<Config>,
    pub cache: Arc<Cache>,
    pub upstreams: Arc<Upstreams>,
    pub tenants: auth::Tenants,
    pub coalescer: Arc<flight::Coalescer>,
    pub admin_token: Option<String>,
    /// What `/metrics` and detailed health need (`None`: open).
    pub metrics_token: Option<String>,
    /// The last engine health round (`/health/ready`, the dashboard).
    pub health: ops::HealthRound,
    pub started: Instant,
    /// The warmer's queue and job kinds (admin API, metrics).
    pub recovery: Arc<crate::recovery::Recovery>,
    /// Semantic matching, when some tenant has it on.
    pub semantic: Option<Arc<crate::semantic::Semantic>>,
    /// The dashboard's history ring and backup/drill status.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
}

impl AppState {
    /// USD cost of a call, from the price table (exact model, else the longest prefix).
    pub fn price(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        cost_usd(&self.config.prices, model, prompt_tokens, completion_tokens)
    }
}

async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Chat, headers, body).await
}
async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Completions, headers, body).await
}
async fn embeddings(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(s, Endpoint::Embeddings, headers, body).await
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
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route(
            "/admin/entries/{key}",
            get(ops::admin_entry).delete(ops::admin_delete_entry),
        )
        .route("/admin/audit", get(ops::admin_audit))
        .route("/admin/breakers", get(ops::admin_breakers))
        .route("/admin/semantic", get(ops::admin_semantic))
        .route("/admin/jobs", get(ops::admin_jobs).post(ops::admin_enqueue))
        .route("/admin/breakers/{backend}/{action}", post(ops::admin_breaker_action))
        .merge(crate::dashboard::routes())
        .fallback(not_found)
        .with_state(state)
}

/// The ops listener (`server.ops_listen`): health and metrics, no token.
pub fn ops_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ops_ready))
        .route("/metrics", get(ops::ops_metrics))
        .fallback(not_found)
        .with_state(state)
}
