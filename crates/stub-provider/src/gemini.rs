//! The stub's Gemini API: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse` (chunks as `data:` events, text in
//! word-sized pieces, the finish reason and usage on the last one). A thought
//! part comes first when `generationConfig.thinkingConfig.includeThoughts` is
//! set; a `functionCall` part when function declarations are offered and the
//! last user text asks for the weather. Key: `x-goog-api-key` or `?key=`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::{begin_as, digest8, words, StubConfig, StubState};

/// An error in Google's shape.
fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message, "status": name}})),
    )
        .into_response()
}

fn last_user_text(req: &Value) -> String {
    req["contents"]
        .as_array()
        .and_then(|c| c.iter().rev().find(|c| c["role"] == "user" || c["role"].is_null()))
        .and_then(|c| c["parts"].as_array())
        .map(|p| {
            p.iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn answers_a_call(req: &Value) -> bool {
    req["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()))
}

fn response(cfg: &StubConfig, req: &Value, model: &str, n: u64) -> Value {
    let user = last_user_text(req);
    let mut parts = Vec::new();
    // (Protobuf JSON takes either spelling.)
    let thoughts = [
        "/generationConfig/thinkingConfig/includeThoughts",
        "/generationConfig/thinkingConfig/include_thoughts",
    ]
    .iter()
    .any(|p| req.pointer(p) == Some(&json!(true)));
    if thoughts {
        parts.push(
            json!({"text": format!("The user asks: {}.", user.chars().take(30).collect::<String>()),
                          "thought": true, "thoughtSignature": format!("c3R1Yi1{n}")}),
        );
    }
    let tool = req["tools"]
        .as_array()
        .and_then(|t| t.iter().find_map(|t| t["functionDeclarations"].as_array()?.first()))
        .and_then(|f| f["name"].as_str());
    match (tool, answers_a_call(req), user.to_lowercase().contains("weather")) {
        (Some(name), false, true) => parts.push(json!({"functionCall": {"name": name, "args": {"city": "Paris"}}})),
        _ => {
            let text = cfg.fixed_answer.clone().unwrap_or_else(|| {
                let echo: String = user.chars().take(40).collect();
                format!("stub answer #{n} [{}] to: {echo}", digest8(req))
            });
            parts.push(json!({"text": text}));
        }
    }
    json!({
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": cfg.prompt_tokens, "candidatesTokenCount": cfg.completion_tokens,
                          "totalTokenCount": cfg.prompt_tokens + cfg.completion_tokens},
        "modelVersion": model, "responseId": format!("stub-{n}"),
    })
}

pub(crate) async fn generate(
    State(state): State<Arc<StubState>>,
    Path(target): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record(&format!("/v1beta/models/{target}"), &headers, &body);
    // `?key=` stands for the header.
    if let Some(k) = query.get("key").and_then(|k| HeaderValue::from_str(k).ok()) {
        headers.insert("x-goog-api-key", k);
    }
    if let Some(k) = headers.get("x-goog-api-key").cloned() {
        headers.insert("x-api-key", k);
    }
    let Some((model, action)) = target.split_once(':') else {
        return error(404, "stub: no such method");
    };
    let stream = match action {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return error(404, "stub: no such method"),
    };
    let (cfg, req, n) = match begin_as(&state, &headers, &body, error).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = response(&cfg, &req, model, n);
    if !stream {
        return Json(r).into_response();
    }
    chunks(r, &cfg)
}

fn chunks(r: Value, cfg: &StubConfig) -> Response {
    let mut out: Vec<Value> = Vec::new();
    let parts = r["candidates"][0]["content"]["parts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let chunk = |part: Value| {
        json!({"candidates": [{"content": {"parts": [part], "role": "model"}, "index": 0}],
               "modelVersion": r["modelVersion"], "responseId": r["responseId"]})
    };
    let mut pieces = 0usize;
    for p in &parts {
        match p.get("text").and_then(Value::as_str) {
            Some(text) if p.get("thought").is_none() => {
                for w in words(text) {
                    if cfg.truncate_stream_after == Some(pieces) {
                        return sse(out, cfg.chunk_delay_ms);
                    }
                    pieces += 1;
                    out.push(chunk(json!({"text": w})));
                }
            }
            _ => out.push(chunk(p.clone())),
        }
    }
    if let Some(last) = out.last_mut() {
        last["candidates"][0]["finishReason"] = json!("STOP");
        last["usageMetadata"] = r["usageMetadata"].clone();
    }
    sse(out, cfg.chunk_delay_ms)
}

fn sse(chunks: Vec<Value>, delay_ms: u64) -> Response {
    let frames: Vec<Bytes> = chunks
        .into_iter()
        .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
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
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(500, "stub: response build failed"))
}
