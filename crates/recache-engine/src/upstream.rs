//! Upstream providers: model routing and the HTTP client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Config, ConfigError};
use crate::endpoint::{Dialect, Endpoint};
use crate::error::ApiError;

pub struct Upstream {
    pub name: String,
    /// The API this provider speaks; requests of another dialect never go here.
    pub kind: Dialect,
    base_url: String,
    api_key: Option<String>,
    patterns: Vec<String>,
    pub timeout: Duration,
    /// The largest answer taken (`max_response_bytes`).
    pub max_response_bytes: usize,
    client: reqwest::Client,
}

/// The `anthropic-version` sent when the client named none (a warmer's re-buy).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
}

impl Upstreams {
    pub fn from_config(cfg: &Config, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut list = Vec::new();
        for u in &cfg.upstreams {
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(u.connect_timeout_ms))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                // A provider that redirects is misconfigured (or compromised): never
                // follow it elsewhere with the API key.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| ConfigError(format!("upstreams.{}: cannot build HTTP client: {e}", u.name)))?;
            list.push(Arc::new(Upstream {
                name: u.name.clone(),
                kind: u.kind,
                base_url: u.base_url.trim_end_matches('/').to_string(),
                api_key: u.api_key_env.as_ref().and_then(|v| env.get(v)).cloned(),
                patterns: u.models.clone(),
                timeout: Duration::from_millis(u.timeout_ms),
                max_response_bytes: u.max_response_bytes,
                client,
            }));
        }
        Ok(Self { list })
    }

    /// The upstream configured under `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<Arc<Upstream>> {
        self.list.iter().find(|u| u.name == name).cloned()
    }

    /// The upstream of `dialect` for `model`: an exact pattern anywhere wins,
    /// then the longest matching prefix pattern (`gpt-*`), then a catch-all `*`.
    pub fn route(&self, dialect: Dialect, model: &str) -> Option<Arc<Upstream>> {
        best_match(self.list.iter().filter(|u| u.kind == dialect), model)
    }

    /// Why `model` has no upstream of `dialect`: unrouted, or routed to an
    /// upstream that speaks another dialect (the error names both).
    pub fn route_error(&self, dialect: Dialect, model: &str) -> ApiError {
        match best_match(self.list.iter(), model) {
            Some(other) => ApiError::WrongDialect {
                model: model.to_string(),
                upstream: other.name.clone(),
                upstream_kind: other.kind,
                dialect,
            },
            None => ApiError::ModelNotRouted(model.to_string()),
        }
    }
}

fn best_match<'a>(list: impl Iterator<Item = &'a Arc<Upstream>>, model: &str) -> Option<Arc<Upstream>> {
    let mut best: Option<(usize, &Arc<Upstream>)> = None;
    for u in list {
        for p in &u.patterns {
            let score = if p == model {
                usize::MAX
            } else if let Some(prefix) = p.strip_suffix('*') {
                if model.starts_with(prefix) {
                    prefix.len()
                } else {
                    continue;
                }
            } else {
                continue;
            };
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, u));
            }
        }
    }
    best.map(|(_, u)| u.clone())
}

impl Upstream {
    /// Sends the client's body unchanged; waits at most `timeout` for the response head.
    pub async fn send(&self, endpoint: Endpoint, body: Bytes) -> Result<reqwest::Response, ApiError> {
        self.send_to(endpoint.path(), body, &[]).await
    }

    /// Sends `body` to `path` below the base URL (Gemini's paths name the
    /// model: [`Endpoint::upstream_path`]), with the client's headers the
    /// provider reads (`anthropic-version`, `anthropic-beta`) and this
    /// provider's own auth: `Authorization: Bearer` (OpenAI), `x-api-key`
    /// (Anthropic) or `x-goog-api-key` (Gemini).
    pub async fn send_to(
        &self,
        path: &str,
        body: Bytes,
        forward: &[(&'static str, String)],
    ) -> Result<reqwest::Response, ApiError> {
        let url = format!("{}/{}", self.base_url, path);
        let mut req = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in forward {
            req = req.header(*name, value);
        }
        match (self.kind, &self.api_key) {
            (Dialect::OpenAi, Some(k)) => req = req.bearer_auth(k),
            (Dialect::Anthropic, Some(k)) => req = req.header("x-api-key", k),
            (Dialect::Gemini, Some(k)) => req = req.header("x-goog-api-key", k),
            (_, None) => {}
        }
        if self.kind == Dialect::Anthropic && !forward.iter().any(|(n, _)| *n == "anthropic-version") {
            req = req.header("anthropic-version", ANTHROPIC_VERSION);
        }
        match tokio::time::timeout(self.timeout, req.send()).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(e)) if e.is_timeout() => Err(self.timed_out()),
            Ok(Err(e)) => Err(ApiError::UpstreamUnreachable {
                upstream: self.name.clone(),
                detail: error_chain(&e),
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Reads a whole response body, at most `max_response_bytes` (the
    /// declared length is checked first), each read within the timeout.
    pub async fn read_body(&self, resp: reqwest::Response) -> Result<Bytes, ApiError> {
        use futures_util::StreamExt;
        let limit = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(self.too_large());
        }
        let mut stream = resp.bytes_stream();
        let mut buf = bytes::BytesMut::new();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Err(self.timed_out()),
                Ok(None) => return Ok(buf.freeze()),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::UpstreamUnreachable {
                        upstream: self.name.clone(),
                        detail: error_chain(&e),
                    })
                }
                Ok(Some(Ok(chunk))) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(self.too_large());
                    }
                    buf.extend_from_slice(&chunk);
                }
            }
        }
    }

    pub fn too_large(&self) -> ApiError {
        ApiError::UpstreamTooLarge {
            upstream: self.name.clone(),
            limit: self.max_response_bytes,
        }
    }

    pub fn timed_out(&self) -> ApiError {
        ApiError::UpstreamTimeout {
            upstream: self.name.clone(),
            timeout_ms: self.timeout.as_millis() as u64,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
