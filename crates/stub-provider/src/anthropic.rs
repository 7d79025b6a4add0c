//! The stub's Anthropic Messages API: `POST /v1/messages` (JSON, and SSE with
//! `event:` lines, paced) and `POST /v1/messages/count_tokens`. Answers are
//! deterministic: a text block that names the call number; a thinking block
//! with a signature when `thinking` is enabled; a `tool_use` block when tools
//! are offered and the last user text asks for the weather. Prompt-cache
//! usage is reported when the request carries `cache_control` markers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::{begin_as, digest8, words, StubConfig, StubState};

/// An error in Anthropic's shape.
fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    };
    (
        status,
        Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

/// The last user turn's text (a string, or its text blocks).
fn last_user_text(req: &Value) -> String {
    let Some(last) = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Whether the last user turn answers a tool call.
fn answers_a_tool(req: &Value) -> bool {
    req.pointer("/messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
}

fn usage(cfg: &StubConfig, raw: &Bytes) -> Value {
    let marked = raw.windows(b"cache_control".len()).any(|w| w == b"cache_control");
    json!({
        "input_tokens": cfg.prompt_tokens,
        "output_tokens": cfg.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": if marked { 40 } else { 0 },
    })
}

/// The content blocks of call `n`, and its stop reason.
fn answer(cfg: &StubConfig, req: &Value, n: u64) -> (Vec<Value>, &'static str) {
    let user = last_user_text(req);
    let mut blocks = Vec::new();
    if req.pointer("/thinking/type").and_then(Value::as_str) == Some("enabled") {
        blocks.push(json!({
            "type": "thinking",
            "thinking": format!("The user asks: {}. Answer briefly.", user.chars().take(40).collect::<String>()),
            "signature": format!("stub-signature-{n}-{}==", digest8(req)),
        }));
    }
    let tool = req["tools"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t["name"].as_str());
    if let (Some(name), false, true) = (tool, answers_a_tool(req), user.to_lowercase().contains("weather")) {
        blocks.push(json!({"type": "text", "text": "Let me look that up."}));
        blocks.push(json!({
            "type": "tool_use",
            "id": format!("toolu_stub_{n}"),
            "name": name,
            "input": {"city": "Paris", "unit": "celsius"},
        }));
        return (blocks, "tool_use");
    }
    let text = cfg.fixed_answer.clone().unwrap_or_else(|| {
        let echo: String = user.chars().take(40).collect();
        format!("stub answer #{n} [{}] to: {echo}", digest8(req))
    });
    blocks.push(json!({"type": "text", "text": text}));
    (blocks, "end_turn")
}

pub(crate) async fn messages(State(state): State<Arc<StubState>>, headers: HeaderMap, body: Bytes) -> Response {
    state.record("/v1/messages", &headers, &body);
    let (cfg, req, n) = match begin_as(&state, &headers, &body, error).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !headers.contains_key("anthropic-version") {
        return error(400, "anthropic-version: header is required");
    }
    let model = req["model"].as_str().unwrap_or("claude-stub").to_string();
    let (blocks, stop_reason) = answer(&cfg, &req, n);
    let message = json!({
        "id": format!("msg_stub_{n}"), "type": "message", "role": "assistant", "model": model,
        "content": blocks, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": usage(&cfg, &body),
    });
    if req["stream"].as_bool() != Some(true) {
        return Json(message).into_response();
    }
    stream(message, &cfg)
}

/// The message as Anthropic streams it: text in word-sized deltas, thinking
/// then its signature, tool input as JSON fragments; cut short (no
/// `message_stop`) after `truncate_stream_after` text deltas.
fn stream(message: Value, cfg: &StubConfig) -> Response {
    let mut events: Vec<(&str, Value)> = Vec::new();
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    events.push(("message_start", json!({"type": "message_start", "message": start})));
    events.push(("ping", json!({"type": "ping"})));
    let mut text_deltas = 0usize;
    let blocks = message["content"].as_array().cloned().unwrap_or_default();
    for (i, b) in blocks.iter().enumerate() {
        let delta = |d: Value| {
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": d}),
            )
        };
        match b["type"].as_str().unwrap_or("") {
            "text" => {
                events.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                ));
                for w in words(b["text"].as_str().unwrap_or("")) {
                    if cfg.truncate_stream_after == Some(text_deltas) {
                        return sse(events, cfg.chunk_delay_ms);
                    }
                    text_deltas += 1;
                    events.push(delta(json!({"type": "text_delta", "text": w})));
                }
            }
            "thinking" => {
                events.push(("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
                for w in words(b["thinking"].as_str().unwrap_or("")) {
                    events.push(delta(json!({"type": "thinking_delta", "thinking": w})));
                }
                events.push(delta(json!({"type": "signature_delta", "signature": b["signature"]})));
            }
            "tool_use" => {
                let mut head = b.clone();
                head["input"] = json!({});
                events.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block": head}),
                ));
                let input = b["input"].to_string();
                let (a, z) = input.split_at(input.len() / 2);
                for part in [a, z] {
                    events.push(delta(json!({"type": "input_json_delta", "partial_json": part})));
                }
            }
            _ => events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": i, "content_block": b}),
            )),
        }
        events.push(("content_block_stop", json!({"type": "content_block_stop", "index": i})));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": null},
               "usage": {"output_tokens": message["usage"]["output_tokens"]}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    sse(events, cfg.chunk_delay_ms)
}

fn sse(events: Vec<(&str, Value)>, delay_ms: u64) -> Response {
    let frames: Vec<Bytes> = events
        .into_iter()
        .map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
        .collect();
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

pub(crate) async fn count_tokens(State(state): State<Arc<StubState>>, headers: HeaderMap, body: Bytes) -> Response {
    state.record("/v1/messages/count_tokens", &headers, &body);
    let (cfg, _req, _) = match begin_as(&state, &headers, &body, error).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    Json(json!({"input_tokens": cfg.prompt_tokens})).into_response()
}
