//! Storage failures: what a role's engine reports. They never reach a
//! client (a lookup that meets one is a miss); the gateway's own client-facing
//! errors are in `recache::error`.

/// A failure of a storage backend. Lookups that hit one of these count as a
/// miss and a `cache_errors_total{backend}`; they never reach the client.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("{backend}: timed out after {after_ms} ms")]
    Timeout { backend: &'static str, after_ms: u64 },
    #[error("{backend}: unavailable: {detail}")]
    Unavailable { backend: &'static str, detail: String },
    #[error("{backend}: protocol error: {detail}")]
    Protocol { backend: &'static str, detail: String },
    #[error("{backend}: corrupt data: {detail}")]
    Corrupt { backend: &'static str, detail: String },
    #[error("{backend}: not supported: {what}")]
    NotSupported { backend: &'static str, what: &'static str },
    #[error("{backend}: circuit breaker open; call skipped")]
    CircuitOpen { backend: &'static str },
    /// The backend is up but refused the operation (e.g. Redis out of memory).
    #[error("{backend}: refused: {detail}")]
    Rejected { backend: &'static str, detail: String },
}

impl BackendError {
    /// Whether this error says the backend is unhealthy (counts toward its breaker).
    pub fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            BackendError::Timeout { .. } | BackendError::Unavailable { .. } | BackendError::Protocol { .. }
        )
    }

    pub fn unavailable(backend: &'static str, e: impl std::fmt::Display) -> Self {
        BackendError::Unavailable {
            backend,
            detail: e.to_string(),
        }
    }
}
