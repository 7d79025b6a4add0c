//! The request path for every dialect's endpoints (ARCHITECTURE.md, "Request path" and "Dialects").

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::watch;

use super::auth::Tenant;
use super::flight::{self, FlightSpec, Joined, Outcome, StoreTemplate};
use super::tape::Tape;
use super::{directives, AppState, Endpoint};
use recache_core::endpoint::Dialect;
use recache_core::key::CacheKey;
use recache_engine::error::ApiError;
use recache_engine::responses;
use recache_engine::sse;
use recache_engine::upstream::Upstream;

/// What `x-recache-status` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    /// Answered with the entry of a near-duplicate request of the same scope.
    SemanticHit,
    Miss,
    Bypass,
    /// An expired entry served because the provider failed (`stale-if-error`).
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::SemanticHit => "SEMANTIC_HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// The validated parts of a request body the gateway needs.
pub(super) struct Parsed {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub value: Value,
    /// Why the request must not be cached at all (Responses `background`, `conversation`).
    pub bypass: Option<&'static str>,
}

/// One authenticated, parsed request on its way through the cache.
pub(super) struct Request<'a> {
    pub state: &'a Arc<AppState>,
    pub endpoint: Endpoint,
    pub parsed: &'a Parsed,
    pub directives: &'a directives::Directives,
    pub tenant: &'a Tenant,
    pub upstream: &'a Arc<Upstream>,
    pub key: CacheKey,
    pub raw: &'a Bytes,
    pub canonical: &'a str,
    /// The client's headers the provider reads.
    pub forward: &'a [(&'static str, String)],
}

impl Request<'_> {
    /// The provider call for this request, storing its answer (and its vector) unless `no-store`.
    pub fn flight(&self, vector: Option<Arc<recache_engine::semantic::Prepared>>) -> FlightSpec {
        let d = self.directives;
        FlightSpec {
            state: self.state.clone(),
            upstream: self.upstream.clone(),
            endpoint: self.endpoint,
            body: self.raw.clone(),
            path: self.endpoint.upstream_path(&self.parsed.model, self.parsed.stream),
            forward: self.forward.to_vec(),
            store: (!d.no_store).then(|| StoreTemplate {
                key: self.key,
                tenant: self.tenant.id.clone(),
                namespace: d.namespace.clone(),
                model: self.parsed.model.clone(),
                canonical_request: self.canonical.to_string(),
                ttl: Duration::from_secs(d.ttl.unwrap_or(self.tenant.default_ttl.as_secs())),
                skip_tool_answers: self.tenant.skip_tool_answers,
                vector,
            }),
        }
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(msg.into())
}

/// What the route says of a request beyond its body: Gemini names the model
/// and whether it streams in the path, and may carry the key in the query.
pub struct Call {
    pub endpoint: Endpoint,
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub query_key: Option<String>,
}

impl Call {
    pub fn plain(endpoint: Endpoint) -> Call {
        Call {
            endpoint,
            model: None,
            stream: None,
            query_key: None,
        }
    }
}

fn parse_body(call: &Call, body: &[u8]) -> Result<Parsed, ApiError> {
    let endpoint = call.endpoint;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("request body is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("request body must be a JSON object"))?;
    let model = match (&call.model, obj.get("model")) {
        (Some(m), _) => m.clone(),
        (None, None) => return Err(invalid("missing required parameter: 'model'")),
        (None, Some(Value::String(s))) if !s.is_empty() => s.clone(),
        (None, Some(_)) => return Err(invalid("'model' must be a non-empty string")),
    };
    let stream = match (call.stream, obj.get("stream")) {
        (Some(s), _) => s,
        (None, None | Some(Value::Null)) => false,
        (None, Some(Value::Bool(b))) => *b,
        (None, Some(_)) => return Err(invalid("'stream' must be a boolean")),
    };
    match endpoint {
        Endpoint::Chat => match obj.get("messages") {
            None => return Err(invalid("missing required parameter: 'messages'")),
            Some(Value::Array(m)) if !m.is_empty() => {
                if m.iter().any(|x| !x.is_object()) {
                    return Err(invalid("'messages' must be an array of objects"));
                }
            }
            Some(Value::Array(_)) => return Err(invalid("'messages' must not be empty")),
            Some(_) => return Err(invalid("'messages' must be an array")),
        },
        Endpoint::Completions => match obj.get("prompt") {
            None => return Err(invalid("missing required parameter: 'prompt'")),
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => return Err(invalid("'prompt' must be a string or an array")),
        },
        Endpoint::Embeddings => match obj.get("input") {
            None => return Err(invalid("missing required parameter: 'input'")),
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => return Err(invalid("'input' must be a string or an array")),
        },
        Endpoint::GenerateContent => match obj.get("contents") {
            Some(Value::Array(c)) if !c.is_empty() && c.iter().all(Value::is_object) => {}
            Some(Value::Array(c)) if c.is_empty() => return Err(invalid("contents must not be empty")),
            None => return Err(invalid("contents is required")),
            Some(_) => return Err(invalid("contents must be a list of Content objects")),
        },
        Endpoint::Responses => match obj.get("input") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => return Err(invalid("'input' must be a string or an array")),
        },
        Endpoint::Messages | Endpoint::CountTokens => {
            match obj.get("messages") {
                None => return Err(invalid("messages: Field required")),
                Some(Value::Array(m)) if m.iter().all(Value::is_object) => {}
                Some(_) => return Err(invalid("messages: Input should be a valid list of objects")),
            }
            if endpoint == Endpoint::Messages {
                match obj.get("max_tokens") {
                    None => return Err(invalid("max_tokens: Field required")),
                    Some(v) if v.as_u64().is_some() => {}
                    Some(_) => return Err(invalid("max_tokens: Input should be a valid integer")),
                }
            }
        }
    }
    if let Some(so) = obj.get("stream_options") {
        if !so.is_object() && !so.is_null() {
            return Err(invalid("'stream_options' must be an object"));
        }
    }
    let include_usage = value
        .pointer("/stream_options/include_usage")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let bypass = match endpoint {
        Endpoint::Responses => responses::bypass_reason(&value),
        _ => None,
    };
    Ok(Parsed {
        model,
        stream: stream && endpoint.streams(),
        include_usage,
        value,
        bypass,
    })
}

/// Reads the body, refusing anything over the limit with 413. An oversized
/// body is still read (and dropped) up to a cap, so the client gets to read
/// the 413 instead of a broken pipe.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let drain_cap = limit.saturating_mul(4).max(64 * 1024 * 1024);
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match crate::http::BodyTimedOut::find(&e) {
            Some(after_ms) => ApiError::BodyTimeout { after_ms },
            None => invalid(format!("could not read request body: {e}")),
        })?;
        total += chunk.len();
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > drain_cap {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::BodyTooLarge { size: total, limit });
    }
    Ok(buf.freeze())
}

/// The client's headers the provider reads, forwarded as they came.
fn forward_headers(endpoint: Endpoint, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    recache_engine::keying::forwarded_header_names(endpoint.dialect())
        .iter()
        .filter_map(|n| Some((*n, headers.get(*n)?.to_str().ok()?.to_string())))
        .collect()
}

/// Entry point for every cached endpoint (`/v1/chat/completions`, `/v1/messages`, ...).
pub async fn handle(state: Arc<AppState>, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    handle_call(state, Call::plain(endpoint), headers, body).await
}

/// Entry point for `POST /v1beta/models/{model}:{method}` (Gemini).
pub async fn handle_gemini(
    state: Arc<AppState>,
    target: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let params: Vec<(String, String)> = query.as_deref().map(url_pairs).unwrap_or_default();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (model, method) = target.split_once(':').unwrap_or((target.as_str(), ""));
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" if param("alt").as_deref() == Some("sse") => true,
        "streamGenerateContent" => {
            return ApiError::InvalidRequest(
                "recache serves streamGenerateContent as server-sent events: add ?alt=sse".into(),
            )
            .to_response_in(Dialect::Gemini)
        }
        _ => {
            return ApiError::NotFound {
                method: "POST".into(),
                path: format!("/v1beta/models/{target}"),
            }
            .to_response_in(Dialect::Gemini)
        }
    };
    let call = Call {
        endpoint: Endpoint::GenerateContent,
        model: Some(model.to_string()),
        stream: Some(stream),
        query_key: param("key"),
    };
    handle_call(state, call, headers, body).await
}

/// `a=1&b=2` as pairs, percent-decoded.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// What serving a request learned that its response needs, whatever the outcome.
#[derive(Default)]
struct Served {
    tenant: Option<Arc<Tenant>>,
    /// The limits' verdict: `x-ratelimit-*` headers, concurrency slots held.
    admission: Option<super::limits::Admission>,
}

async fn handle_call(state: Arc<AppState>, call: Call, headers: HeaderMap, body: Body) -> Response {
    let endpoint = call.endpoint;
    let start = Instant::now();
    let mut served = Served::default();
    let (mut resp, status) = match serve(&state, &call, &headers, body, &mut served).await {
        Ok(r) => r,
        Err(e) => {
            // What the client is not told (addresses, TLS and DNS messages) is logged.
            if let ApiError::UpstreamUnreachable { upstream, detail } = &e {
                tracing::warn!(upstream = %upstream, error = %detail, "upstream unreachable");
            }
            (e.to_response_in(endpoint.dialect()), "ERROR")
        }
    };
    if let Some(t) = served.tenant {
        t.usage.record(status);
    }
    for (name, value) in served.admission.iter().flat_map(|a| a.headers.iter()) {
        // The names are lowercase constants (`x-ratelimit-*`).
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(header::HeaderName::from_static(name), v);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    state
        .cache
        .metrics
        .observe_request(resp.status().as_u16(), status, endpoint.dialect().as_str(), secs);
    tracing::debug!(
        target: "recache::access",
        endpoint = endpoint.name(),
        dialect = endpoint.dialect().as_str(),
        status = resp.status().as_u16(),
        cache = status,
        key = resp.headers().get("x-recache-key").and_then(|v| v.to_str().ok()).unwrap_or("-"),
        latency_ms = secs * 1000.0,
        "request"
    );
    resp
}

async fn serve(
    state: &Arc<AppState>,
    call: &Call,
    headers: &HeaderMap,
    body: Body,
    who: &mut Served,
) -> Result<(Response, &'static str), ApiError> {
    let endpoint = call.endpoint;
    let caller = state
        .tenants
        .authenticate(headers, call.query_key.as_deref(), state.cache.roles.metadata.as_ref())
        .await?;
    let tenant = caller.tenant.clone();
    who.tenant = Some(tenant.clone());
    let raw = read_body(body, state.config.server.max_body_bytes).await?;
    let parsed = parse_body(call, &raw)?;
    let mut d = directives::parse(headers, state.config.cache.max_ttl_seconds)?;
    if parsed.bypass.is_some() {
        // State the provider keeps (a background run, a conversation): never cached.
        d.no_cache = true;
        d.no_store = true;
    }
    let dialect = endpoint.dialect();
    let upstream = state
        .upstreams
        .route(dialect, &parsed.model)
        .ok_or_else(|| state.upstreams.route_error(dialect, &parsed.model))?;
    super::limits::Limiter::check_allowed(&caller, &parsed.model, &upstream.name)?;
    let forward = forward_headers(endpoint, headers);
    // The tenant's stable id, not its name: a renamed tenant keeps its entries,
    // a new tenant given an old name inherits nothing.
    let (canonical, key) = recache_engine::keying::request_key(
        &tenant.id,
        &d.namespace,
        endpoint,
        &parsed.model,
        &parsed.value,
        &forward,
    );
    let metrics = &state.cache.metrics;

    let (fresh, stale) = admit_and_look_up(state, &caller, key, &d, who).await?;
    if let Some(hit) = fresh {
        return Ok((serve_hit(state, &tenant, &d, endpoint, &parsed, &hit, key), "HIT"));
    }
    let req = Request {
        state,
        endpoint,
        parsed: &parsed,
        directives: &d,
        tenant: &tenant,
        upstream: &upstream,
        key,
        raw: &raw,
        canonical: &canonical,
        forward: &forward,
    };
    // Semantic lookup (ARCHITECTURE.md, "Request path", the semantic step), only after an exact miss.
    let (prepared, shadow) = match super::semantic::lookup(&req).await {
        super::semantic::Step::Served(resp) => return Ok((resp, CacheStatus::SemanticHit.as_str())),
        super::semantic::Step::Continue { prepared, shadow } => (prepared, shadow),
    };

    // `only-if-cached`: what the cache cannot answer is not bought (RFC 9111 §5.2.1.7).
    if d.only_if_cached {
        return Err(ApiError::NotCached);
    }
    // Over a token or spend limit: hits were served above, the provider is not called.
    if let Some(adm) = who.admission.as_mut() {
        state.limiter.before_provider(adm).await?;
    }
    let status = if d.no_cache || d.no_store {
        CacheStatus::Bypass
    } else {
        CacheStatus::Miss
    };
    match status {
        CacheStatus::Bypass => metrics.bypasses.fetch_add(1, Ordering::Relaxed),
        _ => metrics.misses.fetch_add(1, Ordering::Relaxed),
    };
    let spec = req.flight(prepared.clone());
    // Shadow mode: the recorded candidate is judged against this request's provider answer.
    let judge_shadow = |fresh: watch::Receiver<Option<flight::Shared>>| {
        if let (Some((c, body)), Some(p), Some(sem)) = (shadow, &prepared, &state.semantic) {
            sem.judge_later(p.clone(), c, body, flight::body_when_done(fresh), true);
        }
    };

    // Only plain misses coalesce: a no-cache refresh or a no-store call is the client's own.
    // A streaming request records the provider's stream for every client of its flight.
    let tape = parsed.stream.then(|| Arc::new(Tape::new(parsed.include_usage)));
    let (tx, guard) = if status == CacheStatus::Miss {
        match state.coalescer.join(key, tape.clone()) {
            Joined::Follower(rx, flight_tape) => {
                metrics.coalesced.fetch_add(1, Ordering::Relaxed);
                judge_shadow(rx.clone());
                // A streaming client of a streaming flight plays its stream live (same transport options only).
                if let Some(t) = flight_tape.filter(|t| parsed.stream && t.include_usage == parsed.include_usage) {
                    if let Some(content_type) = t.clone().wait_start().await {
                        let mut resp = live_response(t, &content_type, status, key);
                        resp.headers_mut()
                            .insert("x-recache-coalesced", HeaderValue::from_static("true"));
                        return Ok((resp, status.as_str()));
                    }
                }
                let outcome = flight::wait(rx).await;
                if let Some(r) = serve_stale(state, endpoint, &parsed, &outcome, stale.as_ref(), key) {
                    return Ok((r, "STALE"));
                }
                let mut resp = render_outcome(endpoint, &parsed, &outcome, status, key)?;
                resp.headers_mut()
                    .insert("x-recache-coalesced", HeaderValue::from_static("true"));
                return Ok((resp, status.as_str()));
            }
            Joined::Leader(tx, guard) => (tx, Some(guard)),
        }
    } else {
        (watch::channel(None).0, None)
    };
    let rx = tx.subscribe();
    judge_shadow(tx.subscribe());
    if let Some(adm) = who.admission.as_mut() {
        let done = flight::body_when_done(tx.subscribe());
        let model = parsed.model.clone();
        state
            .limiter
            .settle_when_done(adm, done, endpoint, model, state.config.clone());
    }
    tokio::spawn(flight::run(spec, tx, tape.clone(), guard));
    // A request cached never by its nature says why.
    let mark = |mut resp: Response| {
        if let Some(reason) = parsed.bypass {
            resp.headers_mut()
                .insert("x-recache-bypass", HeaderValue::from_static(reason));
        }
        resp
    };
    if let Some(t) = tape {
        if let Some(content_type) = t.wait_start().await {
            return Ok((mark(live_response(t, &content_type, status, key)), status.as_str()));
        }
    }
    let outcome = flight::wait(rx).await;
    if let Some(r) = serve_stale(state, endpoint, &parsed, &outcome, stale.as_ref(), key) {
        return Ok((r, "STALE"));
    }
    Ok((
        mark(render_outcome(endpoint, &parsed, &outcome, status, key)?),
        status.as_str(),
    ))
}

/// The limits' admission and the exact lookup together: the counters ride in
/// the lookup's round trip to the index (one Redis pipeline; side by side in
/// a cluster), so a limit costs no extra wait. A fresh hit, and an expired entry kept for
/// `stale-if-error`.
async fn admit_and_look_up(
    state: &Arc<AppState>,
    caller: &super::auth::Caller,
    key: CacheKey,
    d: &directives::Directives,
    who: &mut Served,
) -> Result<(Option<recache_engine::cache::Hit>, Option<recache_engine::cache::Hit>), ApiError> {
    let tenant = &caller.tenant;
    let stale_window = d
        .stale_if_error
        .unwrap_or(tenant.stale_if_error)
        .min(state.config.cache.max_stale_seconds);
    if d.no_cache {
        who.admission = Some(state.limiter.admit(caller).await?);
        return Ok((None, None));
    }
    let pending = state.limiter.begin(caller);
    let found = match pending.as_ref().and_then(|p| p.ops()) {
        None => {
            let found = state.cache.lookup(key, &tenant.id, d.max_age, stale_window).await;
            who.admission = Some(match pending {
                Some(p) => state.limiter.finish(p, Ok::<_, ApiError>(Vec::new())).await?,
                None => Default::default(),
            });
            found
        }
        Some(ops) => {
            let window = (d.max_age, stale_window);
            let (found, counted) = state.cache.lookup_counting(key, &tenant.id, window, ops).await;
            let p = pending.expect("ops come from a pending admission");
            who.admission = Some(state.limiter.finish(p, counted).await?);
            found
        }
    };
    Ok(match found {
        Some(hit) if hit.stale => (None, Some(hit)),
        fresh => (fresh, None),
    })
}

/// An exact hit: counted (hits, tokens and USD saved, the tenant's usage) and rendered.
fn serve_hit(
    state: &AppState,
    tenant: &super::auth::Tenant,
    d: &directives::Directives,
    endpoint: Endpoint,
    parsed: &Parsed,
    hit: &recache_engine::cache::Hit,
    key: CacheKey,
) -> Response {
    let metrics = &state.cache.metrics;
    let tokens = hit.meta.prompt_tokens + hit.meta.completion_tokens;
    metrics.hits.fetch_add(1, Ordering::Relaxed);
    metrics.tokens_saved.fetch_add(tokens, Ordering::Relaxed);
    metrics.usd_saved.add(hit.meta.cost_usd);
    state.cache.usage.record(
        recache_storage::roles::now_ms(),
        recache_engine::usage::Group {
            tenant: &tenant.id,
            namespace: &d.namespace,
            model: &parsed.model,
            dialect: endpoint.dialect(),
        },
        recache_engine::usage::Delta::hit(tokens, hit.meta.cost_usd, false),
    );
    let mut resp = render_answer(
        endpoint,
        parsed,
        &hit.body,
        &hit.meta.content_type,
        CacheStatus::Hit,
        key,
        hit.age_secs,
    );
    saved_headers(&mut resp, hit);
    resp
}

/// A live stream: the flight's tape, played from its first byte.
fn live_response(tape: Arc<Tape>, content_type: &str, status: CacheStatus, key: CacheKey) -> Response {
    let mut resp = Response::new(Body::from_stream(tape.play()));
    set_header(&mut resp, header::CONTENT_TYPE.as_str(), content_type);
    set_header(&mut resp, header::CACHE_CONTROL.as_str(), "no-cache");
    cache_headers(&mut resp, status, key, 0);
    resp
}

/// `stale-if-error`: when the provider failed (5xx, timeout, unreachable)
/// and an expired entry is within the window, serve it as `STALE`.
fn serve_stale(
    state: &AppState,
    endpoint: Endpoint,
    parsed: &Parsed,
    outcome: &Outcome,
    stale: Option<&recache_engine::cache::Hit>,
    key: CacheKey,
) -> Option<Response> {
    let hit = stale?;
    let provider_failed = match outcome {
        Outcome::Failed(_) => true,
        Outcome::Upstream { status, .. } => *status >= 500,
        Outcome::Complete { .. } => false,
    };
    if !provider_failed {
        return None;
    }
    state.cache.metrics.stale_served.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(key = %key, "provider failed; serving an expired entry (stale-if-error)");
    let mut resp = render_answer(
        endpoint,
        parsed,
        &hit.body,
        &hit.meta.content_type,
        CacheStatus::Stale,
        key,
        hit.age_secs,
    );
    saved_headers(&mut resp, hit);
    Some(resp)
}

/// What a cached answer saved: `x-recache-saved-tokens` and
/// `x-recache-saved-usd` (the provider price of the stored answer). Headers
/// only: the body stays the provider's bytes.
pub(super) fn saved_headers(resp: &mut Response, hit: &recache_engine::cache::Hit) {
    let h = resp.headers_mut();
    h.insert(
        "x-recache-saved-tokens",
        HeaderValue::from(hit.meta.prompt_tokens + hit.meta.completion_tokens),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", hit.meta.cost_usd)) {
        h.insert("x-recache-saved-usd", v);
    }
}

fn render_outcome(
    endpoint: Endpoint,
    parsed: &Parsed,
    outcome: &Outcome,
    status: CacheStatus,
    key: CacheKey,
) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Complete { body, content_type } => {
            Ok(render_answer(endpoint, parsed, body, content_type, status, key, 0))
        }
        Outcome::Upstream {
            status: code,
            content_type,
            body,
        } => {
            let mut resp = Response::new(Body::from(body.clone()));
            *resp.status_mut() = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = content_type {
                set_header(&mut resp, header::CONTENT_TYPE.as_str(), ct);
            }
            cache_headers(&mut resp, status, key, 0);
            Ok(resp)
        }
        Outcome::Failed(e) => Err(clone_error(e)),
    }
}

fn clone_error(e: &ApiError) -> ApiError {
    match e {
        ApiError::UpstreamTimeout { upstream, timeout_ms } => ApiError::UpstreamTimeout {
            upstream: upstream.clone(),
            timeout_ms: *timeout_ms,
        },
        ApiError::UpstreamUnreachable { upstream, detail } => ApiError::UpstreamUnreachable {
            upstream: upstream.clone(),
            detail: detail.clone(),
        },
        ApiError::UpstreamTooLarge { upstream, limit } => ApiError::UpstreamTooLarge {
            upstream: upstream.clone(),
            limit: *limit,
        },
        other => ApiError::Internal(other.to_string()),
    }
}

/// Renders a complete answer as JSON, or replays it as SSE for a streaming client.
pub(super) fn render_answer(
    endpoint: Endpoint,
    parsed: &Parsed,
    body: &Bytes,
    content_type: &str,
    status: CacheStatus,
    key: CacheKey,
    age: u64,
) -> Response {
    let mut resp = if parsed.stream {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let frames = sse::replay(endpoint, &value, parsed.include_usage);
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<Bytes, std::io::Error>));
        let mut r = Response::new(Body::from_stream(stream));
        set_header(&mut r, header::CONTENT_TYPE.as_str(), "text/event-stream");
        set_header(&mut r, header::CACHE_CONTROL.as_str(), "no-cache");
        r
    } else {
        let mut r = Response::new(Body::from(body.clone()));
        set_header(&mut r, header::CONTENT_TYPE.as_str(), content_type);
        r
    };
    cache_headers(&mut resp, status, key, age);
    resp
}

fn set_header(resp: &mut Response, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        header::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        resp.headers_mut().insert(n, v);
    }
}

fn cache_headers(resp: &mut Response, status: CacheStatus, key: CacheKey, age: u64) {
    let h = resp.headers_mut();
    h.insert("x-recache-status", HeaderValue::from_static(status.as_str()));
    if let Ok(v) = HeaderValue::from_str(&key.hex()) {
        h.insert("x-recache-key", v);
    }
    h.insert(header::AGE, HeaderValue::from(age));
}
