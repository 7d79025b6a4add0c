//! Server-sent events: parse a provider's stream while it is teed to the
//! client, assemble the complete answer as the JSON a non-streaming call
//! would have returned, and replay a stored JSON answer as a stream.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::endpoint::{Dialect, Endpoint};

/// Splits a byte stream into SSE `data` payloads.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// How far `buf` has been searched for an event's end (a long event
    /// arriving in many chunks is scanned once, not once per chunk).
    scanned: usize,
}

impl SseParser {
    /// Feeds bytes; returns the data payloads of every event completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        // A separator may straddle the previous chunk's end: back up by its length less one.
        while let Some((end, sep)) = find_event_end(&self.buf, self.scanned.saturating_sub(3)) {
            self.scanned = 0;
            let raw: Vec<u8> = self.buf.drain(..end + sep).collect();
            let text = String::from_utf8_lossy(&raw[..end]);
            let mut data: Vec<&str> = Vec::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("data:") {
                    data.push(rest.strip_prefix(' ').unwrap_or(rest));
                }
            }
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        self.scanned = self.buf.len();
        events
    }
}

/// The first event end at or after `from`: (where the event ends, separator length).
fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    for i in from..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

/// Tool calls one choice may hold; a stream naming a higher index is not
/// assembled (nor stored), so a hostile index cannot make us allocate.
pub const MAX_TOOL_CALLS: usize = 1024;

#[derive(Default)]
struct ChoiceAcc {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    text: String,
    tool_calls: Vec<Map<String, Value>>,
    function_call: Option<Map<String, Value>>,
    logprobs: Vec<Value>,
    finish_reason: Option<Value>,
}

/// Rebuilds a complete answer, as the JSON a non-streaming call returns,
/// from a stream's event payloads, in the endpoint's dialect.
pub struct Assembler(Inner);

enum Inner {
    OpenAi(ChatAssembler),
    Responses(crate::responses::ResponseAssembler),
    Anthropic(crate::anthropic::MessageAssembler),
    Gemini(crate::gemini::ResponseAssembler),
}

impl Assembler {
    pub fn new(endpoint: Endpoint) -> Self {
        Assembler(match endpoint.dialect() {
            Dialect::OpenAi if endpoint == Endpoint::Responses => Inner::Responses(Default::default()),
            Dialect::OpenAi => Inner::OpenAi(ChatAssembler::new(endpoint)),
            Dialect::Anthropic => Inner::Anthropic(Default::default()),
            Dialect::Gemini => Inner::Gemini(Default::default()),
        })
    }

    pub fn push(&mut self, data: &str) {
        match &mut self.0 {
            Inner::OpenAi(a) => a.push(data),
            Inner::Responses(a) => a.push(data),
            Inner::Anthropic(a) => a.push(data),
            Inner::Gemini(a) => a.push(data),
        }
    }

    /// The complete answer, or `None` when the stream was cut short or broken.
    pub fn finish(self) -> Option<Value> {
        match self.0 {
            Inner::OpenAi(a) => a.finish(),
            Inner::Responses(a) => a.finish(),
            Inner::Anthropic(a) => a.finish(),
            Inner::Gemini(a) => a.finish(),
        }
    }
}

/// Rebuilds a complete OpenAI answer from stream chunks.
struct ChatAssembler {
    endpoint: Endpoint,
    head: Option<Map<String, Value>>,
    choices: std::collections::BTreeMap<u64, ChoiceAcc>,
    usage: Option<Value>,
    done: bool,
    broken: bool,
}

impl ChatAssembler {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            head: None,
            choices: Default::default(),
            usage: None,
            done: false,
            broken: false,
        }
    }

    fn push(&mut self, data: &str) {
        if data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) else {
            self.broken = true;
            return;
        };
        if chunk.contains_key("error") {
            self.broken = true;
            return;
        }
        if self.head.is_none() {
            let mut head = Map::new();
            for k in ["id", "created", "model", "system_fingerprint", "service_tier"] {
                if let Some(v) = chunk.get(k) {
                    head.insert(k.into(), v.clone());
                }
            }
            self.head = Some(head);
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = chunk.get("choices").and_then(|c| c.as_array()) else {
            return;
        };
        for c in choices {
            let idx = c.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
            let acc = self.choices.entry(idx).or_default();
            if let Some(fr) = c.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish_reason = Some(fr.clone());
            }
            if let Some(lp) = c.get("logprobs").filter(|l| !l.is_null()) {
                acc.logprobs.push(lp.clone());
            }
            if let Some(t) = c.get("text").and_then(|t| t.as_str()) {
                acc.text.push_str(t);
            }
            let Some(delta) = c.get("delta").and_then(|d| d.as_object()) else {
                continue;
            };
            if let Some(r) = delta.get("role").and_then(|r| r.as_str()) {
                acc.role = Some(r.to_string());
            }
            if let Some(t) = delta.get("content").and_then(|t| t.as_str()) {
                acc.content.get_or_insert_with(String::new).push_str(t);
            }
            if let Some(t) = delta.get("refusal").and_then(|t| t.as_str()) {
                acc.refusal.get_or_insert_with(String::new).push_str(t);
            }
            if let Some(fc) = delta.get("function_call").and_then(|f| f.as_object()) {
                merge_function(acc.function_call.get_or_insert_with(Map::new), fc);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(|t| t.as_array()) {
                for call in calls {
                    let ti = call.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
                    if ti >= MAX_TOOL_CALLS as u64 {
                        self.broken = true;
                        return;
                    }
                    let ti = ti as usize;
                    while acc.tool_calls.len() <= ti {
                        acc.tool_calls.push(Map::new());
                    }
                    let slot = &mut acc.tool_calls[ti];
                    for k in ["id", "type"] {
                        if let Some(v) = call.get(k).filter(|v| !v.is_null()) {
                            slot.insert(k.into(), v.clone());
                        }
                    }
                    if let Some(f) = call.get("function").and_then(|f| f.as_object()) {
                        let func = slot.entry("function").or_insert_with(|| json!({}));
                        if let Some(func) = func.as_object_mut() {
                            merge_function(func, f);
                        }
                    }
                }
            }
        }
    }

    /// The complete answer, or `None` when the stream was cut short or broken:
    /// it must have ended with `[DONE]` and every choice with a finish reason.
    fn finish(self) -> Option<Value> {
        if !self.done || self.broken || self.choices.is_empty() {
            return None;
        }
        if self.choices.values().any(|c| c.finish_reason.is_none()) {
            return None;
        }
        let mut out = self.head.unwrap_or_default();
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(i, c)| match self.endpoint {
                Endpoint::Completions => json!({
                    "text": c.text, "index": i,
                    "logprobs": merge_logprobs(&c.logprobs),
                    "finish_reason": c.finish_reason,
                }),
                _ => {
                    let mut msg = Map::new();
                    msg.insert("role".into(), json!(c.role.unwrap_or_else(|| "assistant".into())));
                    msg.insert("content".into(), c.content.map(Value::String).unwrap_or(Value::Null));
                    if let Some(r) = c.refusal {
                        msg.insert("refusal".into(), json!(r));
                    }
                    if !c.tool_calls.is_empty() {
                        msg.insert("tool_calls".into(), Value::Array(c.tool_calls.into_iter().map(Value::Object).collect()));
                    }
                    if let Some(f) = c.function_call {
                        msg.insert("function_call".into(), Value::Object(f));
                    }
                    json!({"index": i, "message": msg, "logprobs": merge_logprobs(&c.logprobs), "finish_reason": c.finish_reason})
                }
            })
            .collect();
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            _ => "chat.completion",
        };
        out.insert("object".into(), json!(object));
        out.insert("choices".into(), Value::Array(choices));
        if let Some(u) = self.usage {
            out.insert("usage".into(), u);
        }
        Some(Value::Object(out))
    }
}

fn merge_function(into: &mut Map<String, Value>, delta: &Map<String, Value>) {
    for (k, v) in delta {
        match (into.get_mut(k), v) {
            (Some(Value::String(s)), Value::String(add)) => s.push_str(add),
            (_, v) if !v.is_null() => {
                into.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

fn merge_logprobs(parts: &[Value]) -> Value {
    if parts.is_empty() {
        return Value::Null;
    }
    let mut content = Vec::new();
    for p in parts {
        if let Some(c) = p.get("content").and_then(|c| c.as_array()) {
            content.extend(c.iter().cloned());
        }
    }
    json!({"content": content})
}

fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Replays a stored JSON answer as SSE frames, ending with `[DONE]`.
/// `include_usage` adds the final usage chunk a client asks for with
/// `stream_options.include_usage`.
pub fn replay(endpoint: Endpoint, body: &Value, include_usage: bool) -> Vec<Bytes> {
    if endpoint.dialect() == Dialect::Anthropic {
        return crate::anthropic::replay(body);
    }
    if endpoint.dialect() == Dialect::Gemini {
        return crate::gemini::replay(body);
    }
    if endpoint == Endpoint::Responses {
        return crate::responses::replay(body);
    }
    let mut frames = Vec::new();
    let get = |k: &str| body.get(k).cloned().unwrap_or(Value::Null);
    let choices = body
        .get("choices")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    match endpoint {
        Endpoint::Completions => {
            for c in &choices {
                let mut first = c.clone();
                if let Some(o) = first.as_object_mut() {
                    o.insert("finish_reason".into(), Value::Null);
                }
                frames.push(frame(
                    &json!({"id": get("id"), "object": "text_completion", "created": get("created"),
                    "model": get("model"), "choices": [first]}),
                ));
                let last = json!({"text": "", "index": c.get("index").cloned().unwrap_or(json!(0)),
                    "logprobs": null, "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null)});
                frames.push(frame(
                    &json!({"id": get("id"), "object": "text_completion", "created": get("created"),
                    "model": get("model"), "choices": [last]}),
                ));
            }
        }
        _ => {
            let chunk = |choice: Value| {
                let mut o = Map::new();
                o.insert("id".into(), get("id"));
                o.insert("object".into(), json!("chat.completion.chunk"));
                o.insert("created".into(), get("created"));
                o.insert("model".into(), get("model"));
                if let Some(fp) = body.get("system_fingerprint") {
                    o.insert("system_fingerprint".into(), fp.clone());
                }
                o.insert("choices".into(), json!([choice]));
                Value::Object(o)
            };
            for c in &choices {
                let index = c.get("index").cloned().unwrap_or(json!(0));
                let mut delta = c
                    .get("message")
                    .and_then(|m| m.as_object())
                    .cloned()
                    .unwrap_or_default();
                if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                    for (i, call) in calls.iter_mut().enumerate() {
                        if let Some(o) = call.as_object_mut() {
                            o.insert("index".into(), json!(i));
                        }
                    }
                }
                frames.push(frame(&chunk(json!({"index": index, "delta": delta,
                    "logprobs": c.get("logprobs").cloned().unwrap_or(Value::Null), "finish_reason": null}))));
                frames.push(frame(&chunk(json!({"index": index, "delta": {}, "logprobs": null,
                    "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null)}))));
            }
            if include_usage {
                if let Some(u) = body.get("usage") {
                    let mut last = chunk(Value::Null);
                    if let Some(o) = last.as_object_mut() {
                        o.insert("choices".into(), json!([]));
                        o.insert("usage".into(), u.clone());
                    }
                    frames.push(frame(&last));
                }
            }
        }
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_split_across_chunks_are_found() {
        for sep in ["\n\n", "\r\n\r\n"] {
            let text = format!("data: one{sep}data: two{sep}");
            // Every split point, byte by byte too.
            for cut in 0..text.len() {
                let mut p = SseParser::default();
                let mut got = p.feed(&text.as_bytes()[..cut]);
                got.extend(p.feed(&text.as_bytes()[cut..]));
                assert_eq!(got, vec!["one", "two"], "{sep:?} cut at {cut}");
            }
            let mut p = SseParser::default();
            let got: Vec<String> = text.as_bytes().iter().flat_map(|b| p.feed(&[*b])).collect();
            assert_eq!(got, vec!["one", "two"]);
        }
    }

    #[test]
    fn a_long_event_is_scanned_once() {
        // 2 MB of one event in 1 kB chunks: each chunk is scanned once (the
        // old scan from the start made this quadratic, about 2 * 10^9 steps).
        let mut p = SseParser::default();
        let chunk = vec![b'x'; 1024];
        assert!(p.feed(b"data: ").is_empty());
        for _ in 0..2048 {
            assert!(p.feed(&chunk).is_empty());
        }
        let got = p.feed(b"\n\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 2048 * 1024);
    }

    #[test]
    fn a_huge_tool_call_index_is_refused_not_allocated() {
        let mut a = Assembler::new(Endpoint::Chat);
        a.push(r#"{"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":18446744073709551615,"function":{"name":"f"}}]}}]}"#);
        a.push("[DONE]");
        assert!(a.finish().is_none(), "not assembled, so not stored");
    }

    fn assemble(endpoint: Endpoint, frames: &[Bytes]) -> Option<Value> {
        let mut p = SseParser::default();
        let mut a = Assembler::new(endpoint);
        let all: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        // Feed in awkward 7-byte pieces to exercise event splitting.
        for piece in all.chunks(7) {
            for ev in p.feed(piece) {
                a.push(&ev);
            }
        }
        a.finish()
    }

    #[test]
    fn chat_replay_round_trips_with_tool_calls() {
        let body = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello world",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let frames = replay(Endpoint::Chat, &body, true);
        let back = assemble(Endpoint::Chat, &frames).unwrap();
        assert_eq!(back["choices"][0]["message"]["content"], "hello world");
        assert_eq!(
            back["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(back["usage"]["total_tokens"], 3);
    }

    #[test]
    fn incomplete_streams_do_not_assemble() {
        let body = json!({"id": "x", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]});
        let frames = replay(Endpoint::Chat, &body, false);
        assert!(
            assemble(Endpoint::Chat, &frames[..frames.len() - 1]).is_none(),
            "no [DONE]"
        );
        assert!(
            assemble(Endpoint::Chat, &[frames[0].clone(), frames[frames.len() - 1].clone()]).is_none(),
            "no finish_reason"
        );
    }

    #[test]
    fn completions_round_trip() {
        let body = json!({"id": "c", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"text": "abc", "index": 0, "logprobs": null, "finish_reason": "length"}]});
        let back = assemble(Endpoint::Completions, &replay(Endpoint::Completions, &body, false)).unwrap();
        assert_eq!(back["choices"][0]["text"], "abc");
        assert_eq!(back["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn crlf_events_parse() {
        let mut p = SseParser::default();
        let ev = p.feed(b"data: {\"a\":1}\r\n\r\ndata: [DONE]\r\n\r\n");
        assert_eq!(ev, vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
    }
}
