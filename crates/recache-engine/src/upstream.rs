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
    /// `connection_retries`: sends again after a connection failed with no response.
    connection_retries: u32,
    /// Calls sent again that way (`upstream_connection_retries_total`).
    retried: std::sync::atomic::AtomicU64,
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
                connection_retries: u.connection_retries,
                retried: Default::default(),
            }));
        }
        Ok(Self { list })
    }

    /// Calls sent again after a connection failure, per upstream name.
    pub fn retried_calls(&self) -> Vec<(String, u64)> {
        self.list
            .iter()
            .map(|u| (u.name.clone(), u.retried.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
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
        // One deadline for every attempt: a retry never stretches the timeout.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let req = self.request(&url, body.clone(), forward);
            match tokio::time::timeout_at(deadline, req.send()).await {
                Err(_) => return Err(self.timed_out()),
                Ok(Err(e)) if e.is_timeout() => return Err(self.timed_out()),
                Ok(Err(e)) if attempt < self.connection_retries && no_response(&e) => {
                    attempt += 1;
                    self.retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(upstream = %self.name, attempt, error = %error_chain(&e),
                        "provider connection failed before any response; sending again");
                    // A refused connect waits a moment; a stale connection is replaced at once.
                    if e.is_connect() {
                        tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                    }
                }
                Ok(Err(e)) => {
                    return Err(ApiError::UpstreamUnreachable {
                        upstream: self.name.clone(),
                        detail: error_chain(&e),
                    })
                }
                Ok(Ok(r)) => return Ok(r),
            }
        }
    }

    fn request(&self, url: &str, body: Bytes, forward: &[(&'static str, String)]) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(url)
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
        req
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

/// Whether a failed call got no response at all, so sending it again cannot
/// repeat an answer the client already saw: the connection was refused, or it
/// closed or was reset before the response began (the provider closing an idle
/// keep-alive connection as the call went out is the usual cause). The provider
/// may have read the request; the official SDKs send again in this case too.
fn no_response(e: &reqwest::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// An error and its sources, `: `-joined (what a provider call's failure says
/// in logs and reports).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
