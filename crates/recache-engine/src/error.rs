//! Named errors, and the one place where they become HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::endpoint::Dialect;

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
    /// A key kept in metadata could not be checked (metadata down, nothing cached).
    #[error("the API key cannot be checked right now; retry shortly")]
    KeyCheckUnavailable,
    /// Over a tenant's or a key's limit: `code` names it (`rate_limit_requests`,
    /// `rate_limit_tokens`, `concurrency_limit`, `budget_day_exceeded`,
    /// `budget_month_exceeded`); retry after `retry_after_s`.
    #[error("{message}")]
    LimitReached {
        code: &'static str,
        message: String,
        retry_after_s: u64,
    },
    /// The limits' counters are unreachable and `[limits] on_counter_loss = "fail-closed"`.
    #[error("limits cannot be enforced right now (counters unreachable); retry shortly")]
    LimitsUnavailable,
    /// The model or upstream is not on the tenant's or key's allow-list.
    #[error("{0}")]
    NotAllowed(String),
    /// The model is routed to an upstream that speaks another dialect.
    #[error("model '{model}' is routed to upstream '{upstream}', which speaks the {upstream_kind} API, not the {dialect} API of this endpoint; add an upstream of kind \"{dialect}\" for it")]
    WrongDialect {
        model: String,
        upstream: String,
        upstream_kind: Dialect,
        dialect: Dialect,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::WrongDialect { .. } => StatusCode::BAD_REQUEST,
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
            ApiError::KeyCheckUnavailable | ApiError::LimitsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::LimitReached { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotAllowed(_) => StatusCode::FORBIDDEN,
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
            ApiError::WrongDialect { .. } => ("invalid_request_error", "model_wrong_dialect"),
            ApiError::KeyCheckUnavailable => ("server_error", "key_check_unavailable"),
            ApiError::LimitReached { code, .. } => ("rate_limit_error", code),
            ApiError::LimitsUnavailable => ("server_error", "limits_unavailable"),
            ApiError::NotAllowed(_) => ("permission_error", "not_allowed"),
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
        self.to_response_in(Dialect::OpenAi)
    }

    /// The error response in the client's dialect: OpenAI's
    /// `{"error":{"message","type","param","code"}}`, or Anthropic's
    /// `{"type":"error","error":{"type","message"}}` with the type Anthropic
    /// uses for the status.
    pub fn to_response_in(&self, dialect: Dialect) -> Response {
        let body = match dialect {
            Dialect::OpenAi => {
                let (kind, code) = self.kind();
                json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}})
            }
            Dialect::Anthropic => anthropic_error(self.status(), &self.to_string()),
            Dialect::Gemini => gemini_error(self.status(), &self.to_string()),
        };
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
        match self {
            ApiError::Overloaded | ApiError::KeyCheckUnavailable | ApiError::LimitsUnavailable => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::LimitReached { retry_after_s, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from((*retry_after_s).max(1)));
            }
            _ => {}
        }
        if matches!(self, ApiError::BodyTimeout { .. }) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

pub use recache_core::error::BackendError;

/// An error body in Anthropic's shape; the type follows the status as
/// Anthropic's API documents it.
pub fn anthropic_error(status: StatusCode, message: &str) -> serde_json::Value {
    let kind = match status.as_u16() {
        400 | 405 | 408 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// An error body in Google's shape: `{"error":{"code","message","status"}}`
/// with the canonical status name of the HTTP status.
pub fn gemini_error(status: StatusCode, message: &str) -> serde_json::Value {
    let name = match status.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 | 405 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status.as_u16(), "message": message, "status": name}})
}
