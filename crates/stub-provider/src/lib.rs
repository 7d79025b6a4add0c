//! A FAKE LLM provider that speaks OpenAI's and Anthropic's APIs.
//!
//! This is the only fake in recache: the real LLM provider is external and
//! paid, so tests, benchmarks and the demo talk to this stub instead. It
//! answers `/v1/chat/completions` (JSON and SSE), `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses` (JSON and SSE) and Anthropic's
//! `/v1/messages` (JSON and SSE, with thinking, tool use and prompt-cache
//! usage) with deterministic content, counts every call, and can be
//! reconfigured at run time (latency, token counts, error injection, streams
//! cut short) through `POST /__stub/config`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod anthropic;
mod gemini;
mod responses;

/// Behaviour knobs, changeable while the stub runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct StubConfig {
    /// Added before every answer (and before the first stream chunk).
    pub latency_ms: u64,
    /// Delay between stream chunks.
    pub chunk_delay_ms: u64,
    /// Prompt tokens reported in `usage`.
    pub prompt_tokens: u64,
    /// Completion tokens reported in `usage`.
    pub completion_tokens: u64,
    /// When set, every call fails with this HTTP status and an OpenAI-style error body.
    pub fail_status: Option<u16>,
    /// When set, streams stop after this many content chunks, without `[DONE]`.
    pub truncate_stream_after: Option<usize>,
    /// Embedding dimension.
    pub embedding_dim: usize,
    /// When set, the API key every call must carry (`Authorization: Bearer ...`).
    pub require_api_key: Option<String>,
    /// When set, every chat and completion answer is this text (tests of answer agreement).
    pub fixed_answer: Option<String>,
}

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            chunk_delay_ms: 0,
            prompt_tokens: 12,
            completion_tokens: 24,
            fail_status: None,
            truncate_stream_after: None,
            embedding_dim: 8,
            require_api_key: None,
            fixed_answer: None,
        }
    }
}

/// Shared state: configuration and call counters.
#[derive(Default)]
pub struct StubState {
    config: Mutex<StubConfig>,
    calls: AtomicU64,
    /// The last model call as it arrived: its raw body and the headers tests look at.
    last: Mutex<Option<Recorded>>,
}

/// A model call as the stub received it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recorded {
    pub path: String,
    /// The body, byte for byte (as text).
    pub body: String,
    pub anthropic_version: Option<String>,
    pub anthropic_beta: Option<String>,
    pub x_api_key: Option<String>,
}

impl StubState {
    pub fn new(config: StubConfig) -> Arc<Self> {
        Arc::new(Self {
            config: Mutex::new(config),
            calls: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    /// The last model call, as it arrived.
    pub fn last(&self) -> Option<Recorded> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: &Bytes) {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Recorded {
            path: path.to_string(),
            body: String::from_utf8_lossy(body).into_owned(),
            anthropic_version: h("anthropic-version"),
            anthropic_beta: h("anthropic-beta"),
            x_api_key: h("x-api-key"),
        });
    }

    /// Number of model calls answered (or failed) so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn reset_calls(&self) {
        self.calls.store(0, Ordering::SeqCst);
    }

    pub fn config(&self) -> StubConfig {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, config: StubConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Change part of the configuration in place.
    pub fn update(&self, f: impl FnOnce(&mut StubConfig)) {
        f(&mut self.config.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The stub's HTTP routes.
pub fn router(state: Arc<StubState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses::responses))
        .route("/v1beta/models/{target}", post(gemini::generate))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/models", get(models))
        .route("/__stub/config", get(get_config).post(set_config))
        .route("/__stub/stats", get(stats))
        .route("/__stub/last", get(last))
        .with_state(state)
}

/// Starts the stub on `addr` (use port 0 for an ephemeral port) in the background.
pub async fn spawn(addr: SocketAddr, state: Arc<StubState>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    Ok(local)
}

/// The benchmarks' floor: a bare axum server that answers every POST to
/// `/v1/chat/completions` with the same fixed completion, reading the body
/// but doing nothing else (no parsing, no lookup). What a gateway hit is
/// compared with: the cost of HTTP alone on this machine.
pub async fn spawn_floor(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    static ANSWER: &str = r#"{"id":"chatcmpl-floor","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_floor","choices":[{"index":0,"message":{"role":"assistant","content":"recache floor: a fixed answer with no lookup behind it"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":11,"total_tokens":23}}"#;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|_body: Bytes| async { ([(header::CONTENT_TYPE, "application/json")], ANSWER) }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local)
}

/// The misses' floor: a bare proxy that forwards each POST to
/// `/v1/chat/completions` to `upstream` (a base URL ending in `/v1`) and
/// returns its status and body, with the gateway's HTTP client settings and
/// nothing else (no parsing, no key, no store). What a gateway miss is
/// compared with: the cost of two HTTP exchanges alone on this machine.
pub async fn spawn_proxy_floor(addr: SocketAddr, upstream: &str) -> std::io::Result<SocketAddr> {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(std::io::Error::other)?;
    let url = format!("{}/chat/completions", upstream.trim_end_matches('/'));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |body: Bytes| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let sent = client
                    .post(&url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
                            Err(e) => error(502, &format!("proxy floor: {e}")),
                        }
                    }
                    Err(e) => error(502, &format!("proxy floor: {e}")),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local)
}

pub(crate) fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"message": message, "type": "stub_error", "param": null, "code": "stub_injected"}});
    (status, Json(body)).into_response()
}

/// Common preamble of a model call: count it, check the key, apply latency and failures.
async fn begin(state: &StubState, headers: &HeaderMap, body: &Bytes) -> Result<(StubConfig, Value, u64), Response> {
    begin_as(state, headers, body, error).await
}

/// [`begin`], with errors in the shape `fail` writes (each dialect's own).
pub(crate) async fn begin_as(
    state: &StubState,
    headers: &HeaderMap,
    body: &Bytes,
    fail: fn(u16, &str) -> Response,
) -> Result<(StubConfig, Value, u64), Response> {
    let n = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let cfg = state.config();
    if let Some(key) = &cfg.require_api_key {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if bearer != Some(key.as_str()) && x_api_key != Some(key.as_str()) {
            return Err(fail(401, "stub: wrong or missing provider API key"));
        }
    }
    if cfg.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
    }
    if let Some(status) = cfg.fail_status {
        return Err(fail(status, "stub: injected failure"));
    }
    let req: Value = serde_json::from_slice(body).map_err(|e| fail(400, &format!("stub: invalid JSON: {e}")))?;
    Ok((cfg, req, n))
}

pub(crate) fn digest8(v: &Value) -> String {
    let h = Sha256::digest(v.to_string().as_bytes());
    hex::encode(&h[..4])
}

fn usage(cfg: &StubConfig) -> Value {
    json!({
        "prompt_tokens": cfg.prompt_tokens,
        "completion_tokens": cfg.completion_tokens,
        "total_tokens": cfg.prompt_tokens + cfg.completion_tokens
    })
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The deterministic answer text: depends on the request, plus the call number so
/// a test can tell a fresh answer from a cached one.
fn answer_text(req: &Value, n: u64) -> String {
    let last_user = req
        .get("messages")
        .and_then(|m| m.as_array())
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(|c| c.as_str())
        .or_else(|| req.get("prompt").and_then(|p| p.as_str()))
        .unwrap_or("");
    let echo: String = last_user.chars().take(40).collect();
    format!("stub answer #{n} [{}] to: {echo}", digest8(req))
}

pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        cur.push(ch);
        if ch == ' ' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

async fn chat(State(state): State<Arc<StubState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (cfg, req, n) = match begin(&state, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("stub-model")
        .to_string();
    let text = cfg.fixed_answer.clone().unwrap_or_else(|| answer_text(&req, n));
    let id = format!("chatcmpl-stub-{n}");
    let created = now_secs();
    let stream = req.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    if !stream {
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "fp_stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage(&cfg)
        });
        return Json(body).into_response();
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut events = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "system_fingerprint": "fp_stub",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    events.push(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    let pieces = words(&text);
    let truncate = cfg.truncate_stream_after;
    for (i, w) in pieces.iter().enumerate() {
        if truncate == Some(i) {
            return sse_response(events, false, cfg.chunk_delay_ms);
        }
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": "fp_stub", "choices": [], "usage": usage(&cfg)}),
        );
    }
    sse_response(events, true, cfg.chunk_delay_ms)
}

async fn completions(State(state): State<Arc<StubState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (cfg, req, n) = match begin(&state, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("stub-model")
        .to_string();
    let text = cfg.fixed_answer.clone().unwrap_or_else(|| answer_text(&req, n));
    let id = format!("cmpl-stub-{n}");
    let created = now_secs();
    let stream = req.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    if !stream {
        return Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage(&cfg)
        }))
        .into_response();
    }
    let mut events = Vec::new();
    let pieces = words(&text);
    for (i, w) in pieces.iter().enumerate() {
        if cfg.truncate_stream_after == Some(i) {
            return sse_response(events, false, cfg.chunk_delay_ms);
        }
        events.push(
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                           "choices": [{"text": w, "index": 0, "logprobs": null, "finish_reason": null}]}),
        );
    }
    events.push(
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]}),
    );
    sse_response(events, true, cfg.chunk_delay_ms)
}

async fn embeddings(State(state): State<Arc<StubState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (cfg, req, _n) = match begin(&state, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("stub-embedding")
        .to_string();
    let inputs: Vec<Value> = match req.get("input") {
        Some(Value::Array(a)) => a.clone(),
        Some(v) => vec![v.clone()],
        None => return error(400, "stub: missing input"),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let h = Sha256::digest(input.to_string().as_bytes());
            let v: Vec<f32> = (0..cfg.embedding_dim)
                .map(|d| (h[d % 32] as f32 / 255.0) * 2.0 - 1.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    Json(json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": cfg.prompt_tokens, "total_tokens": cfg.prompt_tokens}
    }))
    .into_response()
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "stub-model", "object": "model", "owned_by": "recache-stub"}]}))
}

async fn get_config(State(state): State<Arc<StubState>>) -> Json<StubConfig> {
    Json(state.config())
}

async fn set_config(State(state): State<Arc<StubState>>, Json(cfg): Json<StubConfig>) -> Json<StubConfig> {
    state.set_config(cfg.clone());
    Json(cfg)
}

async fn last(State(state): State<Arc<StubState>>) -> Json<Option<Recorded>> {
    Json(state.last())
}

async fn stats(State(state): State<Arc<StubState>>) -> Json<Value> {
    Json(json!({"calls": state.calls()}))
}

fn sse_response(events: Vec<Value>, done: bool, delay_ms: u64) -> Response {
    let mut frames: Vec<Bytes> = events
        .into_iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    if done {
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    let stream = futures_util::stream::iter(frames).then(move |f| async move {
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Ok::<Bytes, std::io::Error>(f)
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(500, "stub: response build failed"))
}

use futures_util::StreamExt as _;
