//! The stub's OpenAI Responses API: `POST /v1/responses`, JSON and SSE (named
//! events, `sequence_number`s, text in word-sized deltas). A reasoning item
//! comes first when `reasoning` is set; a `function_call` item when function
//! tools are offered and the input asks for the weather.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::{begin, digest8, now_secs, words, StubConfig, StubState};

/// The last user input's text.
fn input_text(req: &Value) -> String {
    match &req["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|i| i["role"] == "user")
            .map(|i| match &i["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn answers_a_call(req: &Value) -> bool {
    req["input"]
        .as_array()
        .is_some_and(|i| i.iter().any(|x| x["type"] == "function_call_output"))
}

fn response(cfg: &StubConfig, req: &Value, n: u64) -> Value {
    let text_in = input_text(req);
    let mut output = Vec::new();
    if req.get("reasoning").is_some_and(|r| !r.is_null()) {
        output.push(json!({"type": "reasoning", "id": format!("rs_stub_{n}"), "summary": []}));
    }
    let tool = req["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "function"))
        .and_then(|t| t["name"].as_str());
    match (tool, answers_a_call(req), text_in.to_lowercase().contains("weather")) {
        (Some(name), false, true) => output.push(json!({
            "type": "function_call", "id": format!("fc_stub_{n}"), "call_id": format!("call_stub_{n}"),
            "name": name, "arguments": "{\"city\":\"Paris\"}", "status": "completed",
        })),
        _ => {
            let text = cfg.fixed_answer.clone().unwrap_or_else(|| {
                let echo: String = text_in.chars().take(40).collect();
                format!("stub answer #{n} [{}] to: {echo}", digest8(req))
            });
            output.push(json!({
                "type": "message", "id": format!("msg_stub_{n}"), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }));
        }
    }
    json!({
        "id": format!("resp_stub_{n}"), "object": "response", "created_at": now_secs(),
        "status": "completed", "background": false, "error": null, "incomplete_details": null,
        "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": req.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "model": req["model"], "output": output, "parallel_tool_calls": true,
        "previous_response_id": req.get("previous_response_id").cloned().unwrap_or(Value::Null),
        "reasoning": req.get("reasoning").cloned().unwrap_or(json!({"effort": null, "summary": null})),
        "store": req.get("store").cloned().unwrap_or(json!(true)),
        "temperature": req.get("temperature").cloned().unwrap_or(json!(1.0)),
        "text": {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": req.get("tools").cloned().unwrap_or(json!([])),
        "top_p": 1.0, "truncation": "disabled", "metadata": {},
        "usage": {
            "input_tokens": cfg.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": cfg.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": cfg.prompt_tokens + cfg.completion_tokens,
        },
    })
}

pub(crate) async fn responses(State(state): State<Arc<StubState>>, headers: HeaderMap, body: Bytes) -> Response {
    state.record("/v1/responses", &headers, &body);
    let (cfg, req, n) = match begin(&state, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = response(&cfg, &req, n);
    if req["stream"].as_bool() != Some(true) {
        return Json(r).into_response();
    }
    stream(r, &cfg)
}

fn stream(r: Value, cfg: &StubConfig) -> Response {
    let mut events: Vec<Value> = Vec::new();
    let mut head = r.clone();
    head["status"] = json!("in_progress");
    head["output"] = json!([]);
    head["usage"] = Value::Null;
    events.push(json!({"type": "response.created", "response": head}));
    events.push(json!({"type": "response.in_progress", "response": head}));
    let mut deltas = 0usize;
    for (oi, item) in r["output"].as_array().cloned().unwrap_or_default().iter().enumerate() {
        let id = item["id"].clone();
        match item["type"].as_str().unwrap_or("") {
            "message" => {
                let mut added = item.clone();
                added["content"] = json!([]);
                added["status"] = json!("in_progress");
                events.push(json!({"type": "response.output_item.added", "output_index": oi, "item": added}));
                let part = &item["content"][0];
                let at = |mut v: Value| {
                    v["item_id"] = id.clone();
                    v["output_index"] = json!(oi);
                    v["content_index"] = json!(0);
                    v
                };
                events.push(at(json!({"type": "response.content_part.added",
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})));
                for w in words(part["text"].as_str().unwrap_or("")) {
                    if cfg.truncate_stream_after == Some(deltas) {
                        return sse(events, cfg.chunk_delay_ms);
                    }
                    deltas += 1;
                    events.push(at(
                        json!({"type": "response.output_text.delta", "delta": w, "logprobs": []}),
                    ));
                }
                events.push(at(
                    json!({"type": "response.output_text.done", "text": part["text"], "logprobs": []}),
                ));
                events.push(at(json!({"type": "response.content_part.done", "part": part})));
            }
            "function_call" => {
                let mut added = item.clone();
                added["arguments"] = json!("");
                added["status"] = json!("in_progress");
                events.push(json!({"type": "response.output_item.added", "output_index": oi, "item": added}));
                events.push(json!({"type": "response.function_call_arguments.delta", "item_id": id,
                                   "output_index": oi, "delta": item["arguments"]}));
                events.push(json!({"type": "response.function_call_arguments.done", "item_id": id,
                                   "output_index": oi, "arguments": item["arguments"]}));
            }
            _ => events.push(json!({"type": "response.output_item.added", "output_index": oi, "item": item})),
        }
        events.push(json!({"type": "response.output_item.done", "output_index": oi, "item": item}));
    }
    events.push(json!({"type": "response.completed", "response": r}));
    sse(events, cfg.chunk_delay_ms)
}

fn sse(events: Vec<Value>, delay_ms: u64) -> Response {
    let frames: Vec<Bytes> = events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e["sequence_number"] = json!(i);
            Bytes::from(format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        })
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
        .unwrap_or_else(|_| super::error(500, "stub: response build failed"))
}
