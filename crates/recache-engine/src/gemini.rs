//! Google's Gemini API (`generateContent`, `streamGenerateContent`;
//! ARCHITECTURE.md, "Dialects"): how a stream of response chunks becomes the
//! response a JSON call returns, and how a stored response is replayed as
//! chunks.
//!
//! The model is named in the path, not the body: the key's material is the
//! model and the canonical body. Every body field counts, `cachedContent`
//! included: it names context the provider holds, which is part of the prompt
//! (two requests with different cached contexts are different questions).

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The key's material: the model from the path, then the canonical body.
pub fn key_material(model: &str, canonical: &str) -> String {
    format!("model:{model}\n{canonical}")
}

#[derive(Default)]
struct Candidate {
    head: Map<String, Value>,
    role: Option<Value>,
    parts: Vec<Map<String, Value>>,
}

/// Rebuilds a response from `streamGenerateContent` chunks: text parts are
/// joined (thought text apart from answer text), other parts (function calls,
/// inline data) kept whole, the last chunk's finish reason, usage and model
/// version kept. Complete when every candidate has a `finishReason`.
#[derive(Default)]
pub struct ResponseAssembler {
    top: Map<String, Value>,
    candidates: std::collections::BTreeMap<u64, Candidate>,
    broken: bool,
}

/// Candidates one response may hold (a hostile index allocates nothing).
const MAX_CANDIDATES: u64 = 64;

fn is_text(p: &Map<String, Value>) -> bool {
    p.contains_key("text")
        && p.keys()
            .all(|k| matches!(k.as_str(), "text" | "thought" | "thoughtSignature"))
}

impl ResponseAssembler {
    pub fn push(&mut self, data: &str) {
        let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) else {
            self.broken = true;
            return;
        };
        if chunk.contains_key("error") {
            self.broken = true;
            return;
        }
        for (k, v) in &chunk {
            if k != "candidates" {
                self.top.insert(k.clone(), v.clone());
            }
        }
        for (i, c) in chunk
            .get("candidates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(c) = c.as_object() else {
                self.broken = true;
                return;
            };
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            if index >= MAX_CANDIDATES {
                self.broken = true;
                return;
            }
            let acc = self.candidates.entry(index).or_default();
            for (k, v) in c {
                if k != "content" {
                    acc.head.insert(k.clone(), v.clone());
                }
            }
            let content = c.get("content").and_then(Value::as_object);
            if let Some(role) = content.and_then(|c| c.get("role")) {
                acc.role = Some(role.clone());
            }
            for p in content
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(p) = p.as_object() else { continue };
                match acc.parts.last_mut() {
                    Some(last)
                        if is_text(last)
                            && is_text(p)
                            && last.get("thought") == p.get("thought")
                            && !last.contains_key("thoughtSignature") =>
                    {
                        let add = p.get("text").and_then(Value::as_str).unwrap_or("");
                        if let Some(Value::String(t)) = last.get_mut("text") {
                            t.push_str(add);
                        }
                        if let Some(sig) = p.get("thoughtSignature") {
                            last.insert("thoughtSignature".into(), sig.clone());
                        }
                    }
                    _ => acc.parts.push(p.clone()),
                }
            }
        }
    }

    pub fn finish(self) -> Option<Value> {
        if self.broken
            || self.candidates.is_empty()
            || self.candidates.values().any(|c| !c.head.contains_key("finishReason"))
        {
            return None;
        }
        let mut out = self.top;
        let candidates: Vec<Value> = self
            .candidates
            .into_values()
            .map(|c| {
                let mut m = Map::new();
                let mut content = Map::new();
                content.insert(
                    "parts".into(),
                    Value::Array(c.parts.into_iter().map(Value::Object).collect()),
                );
                if let Some(r) = c.role {
                    content.insert("role".into(), r);
                }
                m.insert("content".into(), Value::Object(content));
                m.extend(c.head);
                Value::Object(m)
            })
            .collect();
        out.insert("candidates".into(), Value::Array(candidates));
        Some(Value::Object(out))
    }
}

/// A stored response as `streamGenerateContent?alt=sse` chunks: one per part
/// (per candidate), the last one of a candidate with its finish reason and
/// ratings, and the usage and model version on the last chunk.
pub fn replay(response: &Value) -> Vec<Bytes> {
    let mut top = response.as_object().cloned().unwrap_or_default();
    let candidates = match top.remove("candidates") {
        Some(Value::Array(c)) => c,
        _ => Vec::new(),
    };
    let usage = top.remove("usageMetadata");
    let mut chunks: Vec<Value> = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let index = c.get("index").cloned().unwrap_or(json!(i));
        let role = c.pointer("/content/role").cloned().unwrap_or(json!("model"));
        let parts = c
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let n = parts.len().max(1);
        for k in 0..n {
            let part = parts.get(k).cloned();
            let mut cand =
                json!({"content": {"parts": part.into_iter().collect::<Vec<_>>(), "role": role}, "index": index});
            if k + 1 == n {
                for (key, v) in c.as_object().into_iter().flatten() {
                    if key != "content" {
                        cand[key] = v.clone();
                    }
                }
            }
            let mut chunk = Value::Object(top.clone());
            chunk["candidates"] = json!([cand]);
            chunks.push(chunk);
        }
    }
    if let (Some(u), Some(last)) = (usage, chunks.last_mut()) {
        last["usageMetadata"] = u;
    }
    chunks
        .into_iter()
        .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn response() -> Value {
        json!({
            "candidates": [{
                "content": {"parts": [
                    {"text": "Thinking it over.", "thought": true, "thoughtSignature": "c2ln"},
                    {"text": "Hello there, friend."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
                ], "role": "model"},
                "finishReason": "STOP", "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 5, "totalTokenCount": 8},
            "modelVersion": "gemini-x", "responseId": "r1"
        })
    }

    #[test]
    fn a_replayed_response_assembles_back_exactly() {
        let mut p = SseParser::default();
        let mut a = ResponseAssembler::default();
        for f in replay(&response()) {
            for ev in p.feed(&f) {
                a.push(&ev);
            }
        }
        assert_eq!(a.finish().unwrap(), response());
    }

    #[test]
    fn text_chunks_are_joined_and_an_unfinished_stream_is_nothing() {
        let mut a = ResponseAssembler::default();
        a.push(r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}]}"#);
        a.push(r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"index":0}]}"#);
        let mut b = ResponseAssembler::default();
        b.push(r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}]}"#);
        assert!(b.finish().is_none(), "no finishReason");
        a.push(r#"{"candidates":[{"content":{"parts":[],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"totalTokenCount":2}}"#);
        let r = a.finish().unwrap();
        assert_eq!(r["candidates"][0]["content"]["parts"], json!([{"text": "Hello"}]));
        assert_eq!(r["usageMetadata"]["totalTokenCount"], 2);
    }
}
