//! `bench load --dialect`: the request each provider API sends for the same
//! question, so hits can be measured per dialect in one run.

use clap::ValueEnum;
use serde_json::json;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchDialect {
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    Chat,
    /// OpenAI Responses (`/v1/responses`).
    Responses,
    /// Anthropic Messages (`/v1/messages`).
    Messages,
    /// Gemini (`/v1beta/models/{model}:generateContent`).
    Gemini,
}

impl BenchDialect {
    /// The model asked for when `--model` is left at its default.
    pub fn default_model(self) -> &'static str {
        match self {
            BenchDialect::Chat | BenchDialect::Responses => "gpt-4o-mini",
            BenchDialect::Messages => "claude-sonnet-4-5",
            BenchDialect::Gemini => "gemini-2.5-flash",
        }
    }

    pub fn url(self, base: &str, model: &str) -> String {
        let base = base.trim_end_matches('/');
        match self {
            BenchDialect::Chat => format!("{base}/v1/chat/completions"),
            BenchDialect::Responses => format!("{base}/v1/responses"),
            BenchDialect::Messages => format!("{base}/v1/messages"),
            BenchDialect::Gemini => format!("{base}/v1beta/models/{model}:generateContent"),
        }
    }

    /// One user question in the dialect's request shape.
    pub fn body(self, model: &str, content: &str) -> String {
        match self {
            BenchDialect::Chat => json!({"model": model, "messages": [{"role": "user", "content": content}]}),
            BenchDialect::Responses => json!({"model": model, "input": content}),
            BenchDialect::Messages => {
                json!({"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": content}]})
            }
            BenchDialect::Gemini => json!({"contents": [{"role": "user", "parts": [{"text": content}]}]}),
        }
        .to_string()
    }

    /// The client key the way the dialect's SDKs send it.
    pub fn auth(self, req: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
        match self {
            BenchDialect::Chat | BenchDialect::Responses => req.bearer_auth(key),
            BenchDialect::Messages => req.header("x-api-key", key).header("anthropic-version", "2023-06-01"),
            BenchDialect::Gemini => req.header("x-goog-api-key", key),
        }
    }
}
