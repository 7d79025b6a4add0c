//! Anthropic's Messages API (ARCHITECTURE.md, "Dialects"): what of a request
//! counts in its cache key, how a stream of events becomes the `message` a
//! JSON call returns, and how a stored message is replayed as that stream.
//!
//! Prompt-caching markers (`cache_control`, with its `type`, `ttl` and
//! `scope`, wherever it sits: system, message and tool-result blocks, tools)
//! are forwarded byte for byte but do not count in the key: they change what
//! the provider bills, not what it answers.

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Fields that change how an answer is delivered or billed, not what it is.
pub const EXCLUDED_FIELDS: &[&str] = &["stream", "cache_control"];

/// The request as it counts for the key: `stream` dropped at the top,
/// `cache_control` dropped at every depth.
pub fn key_body(body: &Value) -> Value {
    fn strip(v: &Value, top: bool) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| k.as_str() != "cache_control" && !(top && k.as_str() == "stream"))
                    .map(|(k, x)| (k.clone(), strip(x, false)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| strip(x, false)).collect()),
            other => other.clone(),
        }
    }
    strip(body, true)
}

/// The headers that can change an answer, appended to the canonical body in
/// the key's material (`anthropic-version`, `anthropic-beta`).
pub fn key_headers(version: Option<&str>, beta: Option<&str>) -> String {
    format!(
        "\nanthropic-version:{}\nanthropic-beta:{}",
        version.unwrap_or(""),
        beta.unwrap_or("")
    )
}

/// Rebuilds the `message` from a Messages stream's event payloads. Complete
/// only once `message_stop` arrived; an `error` event breaks it.
#[derive(Default)]
pub struct MessageAssembler {
    message: Option<Map<String, Value>>,
    blocks: Vec<Map<String, Value>>,
    /// `input_json_delta` text per block, parsed at its `content_block_stop`.
    partial_json: Vec<String>,
    done: bool,
    broken: bool,
}

/// Content blocks one message may hold; a stream naming a higher index is
/// not assembled (nor stored), so a hostile index cannot make us allocate.
pub const MAX_BLOCKS: usize = 4096;

impl MessageAssembler {
    pub fn push(&mut self, data: &str) {
        let Ok(Value::Object(ev)) = serde_json::from_str::<Value>(data) else {
            self.broken = true;
            return;
        };
        let index = ev.get("index").and_then(Value::as_u64).map(|i| i as usize);
        match ev.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => match ev.get("message") {
                Some(Value::Object(m)) => self.message = Some(m.clone()),
                _ => self.broken = true,
            },
            "content_block_start" => match (index, ev.get("content_block")) {
                (Some(i), Some(Value::Object(b))) if i < MAX_BLOCKS => {
                    if self.blocks.len() <= i {
                        self.blocks.resize_with(i + 1, Map::new);
                        self.partial_json.resize_with(i + 1, String::new);
                    }
                    self.blocks[i] = b.clone();
                }
                _ => self.broken = true,
            },
            "content_block_delta" => match (index, ev.get("delta")) {
                (Some(i), Some(Value::Object(d))) if i < self.blocks.len() => self.delta(i, d),
                _ => self.broken = true,
            },
            "content_block_stop" => match index {
                Some(i) if i < self.blocks.len() => {
                    let json = std::mem::take(&mut self.partial_json[i]);
                    if !json.is_empty() {
                        match serde_json::from_str::<Value>(&json) {
                            Ok(input) => {
                                self.blocks[i].insert("input".into(), input);
                            }
                            Err(_) => self.broken = true,
                        }
                    }
                }
                _ => self.broken = true,
            },
            "message_delta" => {
                let Some(m) = self.message.as_mut() else {
                    self.broken = true;
                    return;
                };
                if let Some(Value::Object(d)) = ev.get("delta") {
                    for (k, v) in d {
                        m.insert(k.clone(), v.clone());
                    }
                }
                if let Some(Value::Object(u)) = ev.get("usage") {
                    let usage = m.entry("usage").or_insert_with(|| json!({}));
                    if let Value::Object(mu) = usage {
                        for (k, v) in u {
                            mu.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            "message_stop" => self.done = true,
            "ping" => {}
            "error" => self.broken = true,
            // Event types added later are not understood: the answer is not stored.
            _ => self.broken = true,
        }
    }

    fn delta(&mut self, i: usize, d: &Map<String, Value>) {
        let block = &mut self.blocks[i];
        let mut append = |field: &str, text: Option<&str>| match text {
            Some(t) => {
                let cur = block.entry(field).or_insert_with(|| Value::String(String::new()));
                match cur {
                    Value::String(s) => s.push_str(t),
                    _ => *cur = Value::String(t.to_string()),
                }
            }
            None => self.broken = true,
        };
        let s = |k: &str| d.get(k).and_then(Value::as_str);
        match d.get("type").and_then(Value::as_str).unwrap_or("") {
            "text_delta" => append("text", s("text")),
            "thinking_delta" => append("thinking", s("thinking")),
            "signature_delta" => append("signature", s("signature")),
            "input_json_delta" => match s("partial_json") {
                Some(p) => self.partial_json[i].push_str(p),
                None => self.broken = true,
            },
            "citations_delta" => match d.get("citation") {
                Some(c) => {
                    let list = block.entry("citations").or_insert_with(|| json!([]));
                    match list {
                        Value::Array(a) => a.push(c.clone()),
                        _ => *list = json!([c]),
                    }
                }
                None => self.broken = true,
            },
            _ => self.broken = true,
        }
    }

    /// The message, when the stream ended with `message_stop` and nothing broke.
    pub fn finish(self) -> Option<Value> {
        if !self.done || self.broken {
            return None;
        }
        let mut m = self.message?;
        if self.blocks.iter().any(Map::is_empty) {
            return None;
        }
        m.insert(
            "content".into(),
            Value::Array(self.blocks.into_iter().map(Value::Object).collect()),
        );
        Some(Value::Object(m))
    }
}

fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// A stored `message` as the event sequence a streaming call receives:
/// `message_start`, per block `content_block_start` / `_delta` / `_stop`
/// (text, thinking with its signature, tool use as `input_json_delta`),
/// `message_delta` with the stop reason and usage, `message_stop`. Block
/// contents, signatures, tool-use ids and usage come back exactly.
pub fn replay(message: &Value) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut head = message.as_object().cloned().unwrap_or_default();
    let blocks = match head.remove("content") {
        Some(Value::Array(b)) => b,
        _ => Vec::new(),
    };
    let stop_reason = head.insert("stop_reason".into(), Value::Null).unwrap_or(Value::Null);
    let stop_sequence = head.insert("stop_sequence".into(), Value::Null).unwrap_or(Value::Null);
    head.insert("content".into(), json!([]));
    let usage = head.get("usage").cloned().unwrap_or_else(|| json!({}));
    out.push(frame(
        "message_start",
        &json!({"type": "message_start", "message": Value::Object(head)}),
    ));
    for (i, block) in blocks.iter().enumerate() {
        let (start, deltas) = split_block(block);
        out.push(frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": start}),
        ));
        for d in deltas {
            out.push(frame(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            ));
        }
        out.push(frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        ));
    }
    out.push(frame(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage}),
    ));
    out.push(frame("message_stop", &json!({"type": "message_stop"})));
    out
}

/// A block's `content_block_start` payload and the deltas that complete it.
fn split_block(block: &Value) -> (Value, Vec<Value>) {
    let mut start = block.as_object().cloned().unwrap_or_default();
    let mut deltas = Vec::new();
    match start.get("type").and_then(Value::as_str).unwrap_or("") {
        "text" => {
            let text = start.insert("text".into(), json!("")).unwrap_or(json!(""));
            let citations = start.remove("citations");
            if let Some(Value::Array(cs)) = &citations {
                for c in cs {
                    deltas.push(json!({"type": "citations_delta", "citation": c}));
                }
            }
            deltas.push(json!({"type": "text_delta", "text": text}));
        }
        "thinking" => {
            let thinking = start.insert("thinking".into(), json!("")).unwrap_or(json!(""));
            let signature = start.insert("signature".into(), json!("")).unwrap_or(json!(""));
            deltas.push(json!({"type": "thinking_delta", "thinking": thinking}));
            deltas.push(json!({"type": "signature_delta", "signature": signature}));
        }
        "tool_use" | "server_tool_use" => {
            let input = start.insert("input".into(), json!({})).unwrap_or(json!({}));
            deltas.push(json!({"type": "input_json_delta", "partial_json": input.to_string()}));
        }
        // Blocks that stream whole (redacted thinking, tool results): the start carries them.
        _ => {}
    }
    (Value::Object(start), deltas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn message() -> Value {
        json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
                {"type": "text", "text": "Hello \u{2728} there"},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
                {"type": "redacted_thinking", "data": "opaque"}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 4}
        })
    }

    fn assemble(frames: &[Bytes]) -> Option<Value> {
        let mut p = SseParser::default();
        let mut a = MessageAssembler::default();
        for f in frames {
            for ev in p.feed(f) {
                a.push(&ev);
            }
        }
        a.finish()
    }

    #[test]
    fn a_replayed_message_assembles_back_exactly() {
        let m = message();
        let frames = replay(&m);
        assert!(String::from_utf8_lossy(&frames[0]).starts_with("event: message_start\ndata: "));
        assert_eq!(assemble(&frames).unwrap(), m);
    }

    #[test]
    fn an_incomplete_or_broken_stream_is_never_a_message() {
        let frames = replay(&message());
        assert!(assemble(&frames[..frames.len() - 1]).is_none(), "no message_stop");
        let mut bad = frames.clone();
        bad.insert(2, Bytes::from("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n"));
        assert!(assemble(&bad).is_none(), "an error event");
        let mut a = MessageAssembler::default();
        a.push(r#"{"type":"content_block_start","index":999999,"content_block":{"type":"text","text":""}}"#);
        assert!(a.finish().is_none(), "a hostile index");
    }

    #[test]
    fn cache_control_and_stream_do_not_count_in_the_key() {
        let a = json!({"model": "m", "max_tokens": 5, "stream": true,
            "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]});
        let b = json!({"model": "m", "max_tokens": 5,
            "system": [{"type": "text", "text": "S"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(key_body(&a), key_body(&b));
        let c = json!({"model": "m", "max_tokens": 6,
            "system": [{"type": "text", "text": "S"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_ne!(key_body(&b), key_body(&c));
        // A field named "stream" below the top is the client's data, and counts.
        let d = json!({"model": "m", "metadata": {"stream": 1}});
        assert_eq!(key_body(&d)["metadata"]["stream"], 1);
    }
}
