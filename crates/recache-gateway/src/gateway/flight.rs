//! Provider calls ("flights"). A flight runs in its own task, so a client
//! that hangs up does not waste the tokens already paid for: the answer is
//! still read to the end and stored. Identical concurrent misses join one
//! flight and share its outcome.
//!
//! Answer first, store after: the outcome of a shared flight is published as
//! soon as the provider's answer is complete, and the store runs after it.
//! The flight stays registered until the store has finished, so an identical
//! request arriving meanwhile joins it and is answered at once from the
//! completed answer (`MISS` with `x-recache-coalesced: true`, like every
//! request that shares a provider call), never by a second provider call.
//! A flight of its own (`no-cache`, `no-store`) stores first, so a refresh is
//! in the cache by the time its client has the answer.
//!
//! A streaming flight records the provider's stream on a [`Tape`]: every
//! streaming client of the flight plays it live, from its first byte, so a
//! client that joins mid-stream gets its first token at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use super::tape::Tape;
use super::{AppState, Endpoint};
use recache_core::key::CacheKey;
use recache_engine::cache::StoreInput;
use recache_engine::error::ApiError;
use recache_engine::sse::{Assembler, SseParser};
use recache_engine::upstream::Upstream;

/// How a flight ended, as every client that waited on it sees it.
pub enum Outcome {
    /// A complete 2xx answer, as JSON (stream answers are assembled).
    Complete { body: Bytes, content_type: String },
    /// The provider answered non-2xx: passed through, never cached.
    Upstream {
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
    /// No usable answer (unreachable, timeout, stream cut short).
    Failed(ApiError),
}

pub type Shared = Arc<Outcome>;

/// The complete answer's body once the flight behind `rx` ends; dropped
/// (nothing sent) when it did not complete. What the semantic judge waits on.
pub(crate) fn body_when_done(mut rx: watch::Receiver<Option<Shared>>) -> tokio::sync::oneshot::Receiver<Bytes> {
    let (tx, out) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(Some(o)) = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone()) {
            if let Outcome::Complete { body, .. } = o.as_ref() {
                let _ = tx.send(body.clone());
            }
        }
    });
    out
}

/// A flight in the table: its outcome to come, and its tape when it streams.
type Flight = (watch::Receiver<Option<Shared>>, Option<Arc<Tape>>);

#[derive(Default)]
pub struct Coalescer {
    inflight: Mutex<HashMap<CacheKey, Flight>>,
    /// Answers sent whose store is still running.
    storing: std::sync::atomic::AtomicUsize,
}

/// Answers sent before their store, at most: past this, a flight stores
/// first, so a store backlog slows misses down instead of growing memory.
pub const MAX_STORING: usize = 1024;

pub enum Joined {
    Leader(watch::Sender<Option<Shared>>, FlightGuard),
    /// The flight's outcome, and its tape when it streams.
    Follower(watch::Receiver<Option<Shared>>, Option<Arc<Tape>>),
}

/// Removes the flight from the table when the flight task ends, however it ends.
pub struct FlightGuard {
    coalescer: Arc<Coalescer>,
    key: CacheKey,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.coalescer
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Coalescer {
    /// Joins the flight of `key`, or starts one (with `tape` when it streams).
    pub fn join(self: &Arc<Self>, key: CacheKey, tape: Option<Arc<Tape>>) -> Joined {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((rx, tape)) = map.get(&key) {
            return Joined::Follower(rx.clone(), tape.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key, (rx, tape));
        Joined::Leader(
            tx,
            FlightGuard {
                coalescer: self.clone(),
                key,
            },
        )
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Takes one of the [`MAX_STORING`] places of an answer sent before its
    /// store, given back when the slot drops (however the store ends); `None`
    /// when none is free (the caller stores first).
    fn reserve_store(&self) -> Option<StoreSlot<'_>> {
        // Counted first, then given back by the slot's drop: at once when over
        // the bound, or when the store ends.
        let slot = StoreSlot(self);
        (self.storing.fetch_add(1, Ordering::Relaxed) < MAX_STORING).then_some(slot)
    }

    /// Answers sent whose store is still running.
    pub fn storing(&self) -> usize {
        self.storing.load(Ordering::Relaxed)
    }
}

/// A place among the answers waiting for their store (see [`Coalescer::reserve_store`]).
struct StoreSlot<'a>(&'a Coalescer);

impl Drop for StoreSlot<'_> {
    fn drop(&mut self) {
        self.0.storing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits for a flight's outcome.
pub async fn wait(mut rx: watch::Receiver<Option<Shared>>) -> Shared {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => v.clone().unwrap_or_else(lost),
        Err(_) => lost(),
    }
}

fn lost() -> Shared {
    Arc::new(Outcome::Failed(ApiError::Internal(
        "the provider call this request joined ended without an answer".into(),
    )))
}

/// Ends a flight's tape however the flight ends (a panic included), so no
/// player waits forever; a complete stream was ended before.
struct TapeEnd(Option<Arc<Tape>>);

impl Drop for TapeEnd {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.end(false);
        }
    }
}

/// What a flight needs to call the provider and store the answer.
pub struct FlightSpec {
    pub state: Arc<AppState>,
    pub upstream: Arc<Upstream>,
    pub endpoint: Endpoint,
    pub body: Bytes,
    /// Below the upstream's base URL (`Endpoint::upstream_path`).
    pub path: String,
    /// The client's headers the provider reads (`anthropic-version`, `anthropic-beta`).
    pub forward: Vec<(&'static str, String)>,
    pub store: Option<StoreTemplate>,
}

/// The parts of a [`StoreInput`] known before the answer.
pub struct StoreTemplate {
    pub key: CacheKey,
    pub tenant: String,
    pub namespace: String,
    pub model: String,
    pub canonical_request: String,
    pub ttl: std::time::Duration,
    /// Not stored when the answer calls a tool (`tool_call_answers = "skip"`).
    pub skip_tool_answers: bool,
    /// The embedded request, stored in the vectors role once the entry is stored.
    pub vector: Option<Arc<recache_engine::semantic::Prepared>>,
}

/// Runs a flight to the end. A shared flight (with a `guard`) publishes its
/// outcome as soon as the answer is complete, then stores it, then leaves the
/// table (requests arriving during the store join it instead of calling the
/// provider again). A flight of its own stores first, then answers.
pub async fn run(
    spec: FlightSpec,
    tx: watch::Sender<Option<Shared>>,
    tape: Option<Arc<Tape>>,
    guard: Option<FlightGuard>,
) {
    let end = TapeEnd(tape);
    let (outcome, pending) = fetch(&spec, end.0.as_deref()).await.unwrap_or_else(|o| (o, None));
    if let Some(t) = &end.0 {
        t.end(matches!(outcome, Outcome::Complete { .. }));
    }
    let coalescer = &spec.state.coalescer;
    let Some(p) = pending else {
        let _ = tx.send(Some(Arc::new(outcome)));
        return;
    };
    let Some(_slot) = guard.as_ref().and_then(|_| coalescer.reserve_store()) else {
        p.store(&spec).await;
        let _ = tx.send(Some(Arc::new(outcome)));
        return;
    };
    let _ = tx.send(Some(Arc::new(outcome)));
    p.store(&spec).await;
    drop(guard);
}

/// A complete answer still to be stored.
struct PendingStore {
    input: StoreInput,
}

impl PendingStore {
    async fn store(self, spec: &FlightSpec) {
        let key = self.input.key;
        let stored = spec.state.cache.store(self.input).await;
        if let (Ok(expires), Some(t), Some(sem)) = (stored, &spec.store, &spec.state.semantic) {
            if let Some(p) = &t.vector {
                sem.remember(p, key, expires).await;
            }
        }
    }
}

/// Calls the provider and reads the answer to the end: the outcome, and the
/// store still to run when it is a complete answer to keep (`Err`: an outcome
/// with nothing to store).
async fn fetch(spec: &FlightSpec, tape: Option<&Tape>) -> Result<(Outcome, Option<PendingStore>), Outcome> {
    let m = &spec.state.cache.metrics;
    m.upstream_requests.fetch_add(1, Ordering::Relaxed);
    let up = &spec.upstream;
    let resp = match up.send_to(&spec.path, spec.body.clone(), &spec.forward).await {
        Ok(r) => r,
        Err(e) => {
            m.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(upstream = %up.name, error = %e, "provider call failed");
            return Err(Outcome::Failed(e));
        }
    };
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !status.is_success() {
        m.upstream_errors.fetch_add(1, Ordering::Relaxed);
        let body = up.read_body(resp).await.unwrap_or_default();
        return Err(Outcome::Upstream {
            status: status.as_u16(),
            content_type,
            body,
        });
    }
    let is_sse = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let (json, body) = if is_sse {
        match read_stream(spec, resp, tape).await {
            Ok(v) => {
                let body = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
                (v, body)
            }
            Err(e) => return Err(Outcome::Failed(e)),
        }
    } else {
        let body = match up.read_body(resp).await {
            Ok(b) => b,
            Err(e) => return Err(Outcome::Failed(e)),
        };
        match serde_json::from_slice::<Value>(&body) {
            // The provider's exact bytes are what is stored and served.
            Ok(v) if v.is_object() => (v, body),
            // A 2xx that is not a JSON object: pass it through, do not cache it.
            _ => {
                return Err(Outcome::Upstream {
                    status: status.as_u16(),
                    content_type,
                    body,
                })
            }
        }
    };
    let tokens = recache_core::endpoint::Tokens::of(spec.endpoint, &json);
    let (pt, ct) = (tokens.prompt(), tokens.output);
    let mut pending = None;
    let store = spec
        .store
        .as_ref()
        .filter(|t| !(t.skip_tool_answers && recache_engine::semantic::judge::asks_for_tool(&body)));
    if let Some(t) = store {
        let cost = tokens.cost_usd(&spec.state.config.prices, &t.model);
        m.usd_spent.add(cost);
        spec.state.cache.usage.record(
            recache_storage::roles::now_ms(),
            recache_engine::usage::Group {
                tenant: &t.tenant,
                namespace: &t.namespace,
                model: &t.model,
                dialect: spec.endpoint.dialect(),
            },
            recache_engine::usage::Delta::miss(pt, ct, cost),
        );
        pending = Some(PendingStore {
            input: StoreInput {
                key: t.key,
                tenant: t.tenant.clone(),
                namespace: t.namespace.clone(),
                endpoint: spec.endpoint.name(),
                model: t.model.clone(),
                canonical_request: t.canonical_request.clone(),
                body: body.clone(),
                content_type: "application/json".into(),
                ttl: t.ttl,
                prompt_tokens: pt,
                completion_tokens: ct,
                cost_usd: cost,
            },
        });
    }
    Ok((
        Outcome::Complete {
            body,
            content_type: "application/json".into(),
        },
        pending,
    ))
}

/// Records a provider's SSE stream on the flight's tape (its clients play
/// it live) and assembles the full answer. Errors when the stream breaks or
/// is incomplete. The stream is read to the end even when every client has
/// hung up, so the paid-for answer is stored.
async fn read_stream(spec: &FlightSpec, resp: reqwest::Response, tape: Option<&Tape>) -> Result<Value, ApiError> {
    let up = &spec.upstream;
    if let Some(t) = tape {
        t.start("text/event-stream");
    }
    let mut parser = SseParser::default();
    let mut asm = Assembler::new(spec.endpoint);
    let mut stream = resp.bytes_stream();
    let mut total = 0usize;
    loop {
        let next = tokio::time::timeout(up.timeout, stream.next()).await;
        let chunk = match next {
            Err(_) => return Err(up.timed_out()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::UpstreamUnreachable {
                    upstream: up.name.clone(),
                    detail: format!("stream broke: {e}"),
                })
            }
            Ok(Some(Ok(c))) => c,
        };
        total += chunk.len();
        if total > up.max_response_bytes {
            return Err(up.too_large());
        }
        for ev in parser.feed(&chunk) {
            asm.push(&ev);
        }
        if let Some(t) = tape {
            t.push(chunk);
        }
    }
    asm.finish().ok_or_else(|| ApiError::UpstreamUnreachable {
        upstream: up.name.clone(),
        detail: "stream ended before it was complete".into(),
    })
}
