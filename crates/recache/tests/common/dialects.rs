//! The same question in every dialect, for tests that walk all of them.

use serde_json::{json, Value};

use super::{Env, Resp};

/// One request: its path, its headers (the client key among them), its body.
pub struct Request {
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

impl Request {
    /// The dialect's name, as metrics and reports spell it.
    pub fn dialect(&self) -> &'static str {
        match self.path {
            "/v1/messages" => "anthropic",
            p if p.starts_with("/v1beta/") => "gemini",
            _ => "openai",
        }
    }

    /// Sends it with `extra` headers.
    pub async fn send(&self, env: &Env, extra: &[(&str, &str)]) -> Resp {
        let mut h: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.extend_from_slice(extra);
        env.post_raw(self.path, None, self.body.to_string(), &h).await
    }
}

/// `q` asked with `key` as chat, Responses, Anthropic Messages and Gemini.
pub fn requests(q: &str, key: &str) -> Vec<Request> {
    let bearer = format!("Bearer {key}");
    vec![
        Request {
            path: "/v1/chat/completions",
            headers: vec![("authorization", bearer.clone())],
            body: json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}]}),
        },
        Request {
            path: "/v1/responses",
            headers: vec![("authorization", bearer)],
            body: json!({"model": "gpt-4o-mini", "input": q}),
        },
        Request {
            path: "/v1/messages",
            headers: vec![
                ("x-api-key", key.to_string()),
                ("anthropic-version", "2023-06-01".to_string()),
            ],
            body: json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": q}]}),
        },
        Request {
            path: "/v1beta/models/gemini-2.5-flash:generateContent",
            headers: vec![("x-goog-api-key", key.to_string())],
            body: json!({"contents": [{"role": "user", "parts": [{"text": q}]}]}),
        },
    ]
}
