//! OpenAI's Responses API (ARCHITECTURE.md, "Dialects"): which requests are
//! cached, how a stream becomes the response a JSON call returns, and how a
//! stored response is replayed as that stream.
//!
//! State the provider keeps decides what may be cached:
//! - `background: true` runs at the provider and is polled later: never cached
//!   (`BYPASS`, `x-recache-bypass: background`);
//! - `conversation` names provider-side state that every call appends to: an
//!   answer from the cache would leave the conversation without its turn, so
//!   such requests are never cached (`x-recache-bypass: conversation`);
//! - `previous_response_id` names an immutable chain: it counts in the key like
//!   every body field, so a cached answer is only ever served for the same chain;
//! - `store` counts in the key too: an answer the provider did not keep
//!   (`store: false`) is never served to a client that expects to chain on it.

use bytes::Bytes;
use serde_json::{json, Value};

/// Why a request is passed through uncached, if it is.
pub fn bypass_reason(body: &Value) -> Option<&'static str> {
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Some("background");
    }
    match body.get("conversation") {
        None | Some(Value::Null) => None,
        Some(_) => Some("conversation"),
    }
}

/// Rebuilds the response from a Responses stream: the `response` of its
/// `response.completed` event. `response.incomplete`, `response.failed` or an
/// `error` event leave nothing to store.
#[derive(Default)]
pub struct ResponseAssembler {
    completed: Option<Value>,
    broken: bool,
}

impl ResponseAssembler {
    pub fn push(&mut self, data: &str) {
        let Ok(ev) = serde_json::from_str::<Value>(data) else {
            self.broken = true;
            return;
        };
        match ev.get("type").and_then(Value::as_str).unwrap_or("") {
            "response.completed" => match ev.get("response") {
                Some(r @ Value::Object(_)) if r["status"] == "completed" => self.completed = Some(r.clone()),
                _ => self.broken = true,
            },
            "response.failed" | "response.incomplete" | "error" => self.broken = true,
            _ => {}
        }
    }

    pub fn finish(self) -> Option<Value> {
        if self.broken {
            return None;
        }
        self.completed
    }
}

/// Writes events with their `event:` names and consecutive `sequence_number`s.
struct Events {
    out: Vec<Bytes>,
    seq: u64,
}

impl Events {
    fn push(&mut self, mut data: Value) {
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let name = data["type"].as_str().unwrap_or("").to_string();
        self.out.push(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
    }
}

/// A stored response as the event sequence a streaming call receives:
/// `response.created`, `response.in_progress`, per output item
/// `output_item.added`, its parts and deltas (text, refusal, function call
/// arguments) and `output_item.done`, then `response.completed` carrying the
/// stored response itself.
pub fn replay(response: &Value) -> Vec<Bytes> {
    let mut ev = Events {
        out: Vec::new(),
        seq: 0,
    };
    let mut head = response.clone();
    head["status"] = json!("in_progress");
    head["output"] = json!([]);
    if let Some(m) = head.as_object_mut() {
        m.insert("usage".into(), Value::Null);
        m.insert("completed_at".into(), Value::Null);
    }
    ev.push(json!({"type": "response.created", "response": head}));
    ev.push(json!({"type": "response.in_progress", "response": head}));
    let items = response["output"].as_array().cloned().unwrap_or_default();
    for (oi, item) in items.iter().enumerate() {
        item_events(&mut ev, oi, item);
    }
    ev.push(json!({"type": "response.completed", "response": response}));
    ev.out
}

fn item_events(ev: &mut Events, oi: usize, item: &Value) {
    let id = item["id"].clone();
    match item["type"].as_str().unwrap_or("") {
        "message" => {
            let mut added = item.clone();
            added["content"] = json!([]);
            added["status"] = json!("in_progress");
            ev.push(json!({"type": "response.output_item.added", "output_index": oi, "item": added}));
            let parts = item["content"].as_array().cloned().unwrap_or_default();
            for (ci, part) in parts.iter().enumerate() {
                let at = json!({"item_id": id, "output_index": oi, "content_index": ci});
                let with = |mut v: Value| {
                    for (k, x) in at.as_object().into_iter().flatten() {
                        v[k] = x.clone();
                    }
                    v
                };
                match part["type"].as_str().unwrap_or("") {
                    "output_text" => {
                        let empty = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                        ev.push(with(json!({"type": "response.content_part.added", "part": empty})));
                        let text = part["text"].clone();
                        ev.push(with(
                            json!({"type": "response.output_text.delta", "delta": text, "logprobs": []}),
                        ));
                        for (ai, a) in part["annotations"].as_array().into_iter().flatten().enumerate() {
                            ev.push(with(json!({"type": "response.output_text.annotation.added",
                                                "annotation_index": ai, "annotation": a})));
                        }
                        ev.push(with(
                            json!({"type": "response.output_text.done", "text": text, "logprobs": []}),
                        ));
                    }
                    "refusal" => {
                        ev.push(with(
                            json!({"type": "response.content_part.added", "part": {"type": "refusal", "refusal": ""}}),
                        ));
                        ev.push(with(
                            json!({"type": "response.refusal.delta", "delta": part["refusal"]}),
                        ));
                        ev.push(with(
                            json!({"type": "response.refusal.done", "refusal": part["refusal"]}),
                        ));
                    }
                    _ => ev.push(with(json!({"type": "response.content_part.added", "part": part}))),
                }
                ev.push(with(json!({"type": "response.content_part.done", "part": part})));
            }
        }
        "function_call" => {
            let mut added = item.clone();
            added["arguments"] = json!("");
            added["status"] = json!("in_progress");
            ev.push(json!({"type": "response.output_item.added", "output_index": oi, "item": added}));
            ev.push(json!({"type": "response.function_call_arguments.delta", "item_id": id,
                           "output_index": oi, "delta": item["arguments"]}));
            ev.push(json!({"type": "response.function_call_arguments.done", "item_id": id,
                           "output_index": oi, "arguments": item["arguments"]}));
        }
        // Reasoning and tool-call items arrive whole.
        _ => ev.push(json!({"type": "response.output_item.added", "output_index": oi, "item": item})),
    }
    ev.push(json!({"type": "response.output_item.done", "output_index": oi, "item": item}));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn response() -> Value {
        json!({
            "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
            "model": "gpt-4o-mini", "previous_response_id": null, "store": true,
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "Hello", "annotations": []}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f",
                 "arguments": "{\"a\":1}", "status": "completed"}
            ],
            "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
        })
    }

    #[test]
    fn a_replayed_response_assembles_back_with_numbered_events() {
        let frames = replay(&response());
        let mut p = SseParser::default();
        let mut a = ResponseAssembler::default();
        let mut seqs = Vec::new();
        for f in &frames {
            for ev in p.feed(f) {
                seqs.push(
                    serde_json::from_str::<Value>(&ev).unwrap()["sequence_number"]
                        .as_u64()
                        .unwrap(),
                );
                a.push(&ev);
            }
        }
        assert_eq!(seqs, (0..frames.len() as u64).collect::<Vec<_>>());
        assert_eq!(a.finish().unwrap(), response());
        assert!(String::from_utf8_lossy(&frames[0]).starts_with("event: response.created\n"));
    }

    #[test]
    fn only_a_completed_response_is_kept_and_provider_state_bypasses() {
        let mut a = ResponseAssembler::default();
        a.push(r#"{"type":"response.incomplete","response":{"status":"incomplete"}}"#);
        assert!(a.finish().is_none());
        let mut a = ResponseAssembler::default();
        a.push(r#"{"type":"response.created","response":{"status":"in_progress"}}"#);
        assert!(a.finish().is_none(), "no response.completed");
        assert_eq!(bypass_reason(&json!({"background": true})), Some("background"));
        assert_eq!(bypass_reason(&json!({"conversation": "conv_1"})), Some("conversation"));
        assert_eq!(
            bypass_reason(&json!({"previous_response_id": "resp_0", "store": false})),
            None
        );
    }
}
