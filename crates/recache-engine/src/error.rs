//! Named errors, and the one place where they become HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What a client can be told went wrong. Every case maps to one status code
/// and an OpenAI-style JSON body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is over the limit of {limit} bytes (read {size} bytes)")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("missing API key: send 'Authorization: Bearer <key>'")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("admin token required")]
    AdminUnauthorized,
    #[error("metrics token required (server.metrics_token_env, else the admin token)")]
    MetricsUnauthorized,
    #[error("unknown route {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    #[error("no upstream serves model '{0}'")]
    ModelNotRouted(String),
    /// The detail (an address, a TLS or DNS message) goes to the log, never to the client.
    #[error("upstream '{upstream}' is unreachable")]
    UpstreamUnreachable { upstream: String, detail: String },
    #[error("upstream '{upstream}' sent an answer over the limit of {limit} bytes")]
    UpstreamTooLarge { upstream: String, limit: usize },
    #[error("upstream '{upstream}' did not answer within {timeout_ms} ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u64 },
    #[error("internal error: {0}")]
    Internal(String),
    /// `Cache-Control: only-if-cached` and no entry to serve.
    #[error("no cached answer for this request (Cache-Control: only-if-cached)")]
    NotCached,
    /// `server.max_concurrent_requests` requests are being served.
    #[error("the gateway is at its limit of concurrent requests; retry shortly")]
    Overloaded,
    /// The body did not arrive within `server.body_timeout_ms`.
    #[error("the request body did not arrive within {after_ms} ms")]
    BodyTimeout { after_ms: u64 },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::AdminUnauthorized
            | ApiError::MetricsUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::ModelNotRouted(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpstreamUnreachable { .. } | ApiError::UpstreamTooLarge { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// OpenAI's `error.type` and `error.code`.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => ("invalid_request_error", "invalid_request"),
            ApiError::BodyTooLarge { .. } => ("invalid_request_error", "request_too_large"),
            ApiError::MissingKey => ("invalid_request_error", "missing_api_key"),
            ApiError::InvalidKey => ("invalid_request_error", "invalid_api_key"),
            ApiError::AdminUnauthorized => ("invalid_request_error", "invalid_admin_token"),
            ApiError::MetricsUnauthorized => ("invalid_request_error", "invalid_metrics_token"),
            ApiError::NotFound { .. } => ("invalid_request_error", "unknown_url"),
            ApiError::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            ApiError::ModelNotRouted(_) => ("invalid_request_error", "model_not_found"),
            ApiError::UpstreamUnreachable { .. } => ("upstream_error", "upstream_unreachable"),
            ApiError::UpstreamTooLarge { .. } => ("upstream_error", "upstream_response_too_large"),
            ApiError::UpstreamTimeout { .. } => ("upstream_error", "upstream_timeout"),
            ApiError::Internal(_) => ("server_error", "internal_error"),
            ApiError::NotCached => ("cache_error", "not_cached"),
            ApiError::Overloaded => ("server_error", "overloaded"),
            ApiError::BodyTimeout { .. } => ("invalid_request_error", "request_timeout"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.to_response()
    }
}

impl ApiError {
    /// The OpenAI-style error response for this error.
    pub fn to_response(&self) -> Response {
        let (kind, code) = self.kind();
        let body = json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}});
        let mut resp = (self.status(), axum::Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(
            self,
            ApiError::MissingKey | ApiError::InvalidKey | ApiError::AdminUnauthorized | ApiError::MetricsUnauthorized
        ) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::Overloaded) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::BodyTimeout { .. }) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

pub use recache_core::error::BackendError;
