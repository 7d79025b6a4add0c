//! The provider dialects and endpoints recache caches, the tokens an answer
//! reports, and what a call costs.

use std::collections::BTreeMap;

use crate::config::Price;

/// A provider API family: its request and answer shapes, its stream events,
/// its auth headers and its error bodies (ARCHITECTURE.md, "Dialects").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// OpenAI's Chat Completions, Completions and Embeddings.
    #[default]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API (`generateContent`).
    Gemini,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The provider endpoints recache caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens` (deterministic: cached too).
    CountTokens,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Gemini `POST /v1beta/models/{model}:generateContent` (and `:streamGenerateContent`).
    GenerateContent,
}

impl Endpoint {
    /// Path below the upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "messages/count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::GenerateContent => "models",
        }
    }
    /// The path below the upstream's base URL for a call of `model` (Gemini
    /// names the model and the method in the path).
    pub fn upstream_path(self, model: &str, stream: bool) -> String {
        match (self, stream) {
            (Endpoint::GenerateContent, false) => format!("models/{model}:generateContent"),
            (Endpoint::GenerateContent, true) => format!("models/{model}:streamGenerateContent?alt=sse"),
            _ => self.path().to_string(),
        }
    }
    /// Name used in cache keys and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::GenerateContent => "generate_content",
        }
    }
    /// The endpoint a stored name (or a request path) stands for.
    pub fn from_name(name: &str) -> Option<Endpoint> {
        let n = name.trim_start_matches('/').trim_start_matches("v1/");
        match n {
            "chat" | "chat/completions" => Some(Endpoint::Chat),
            "completions" => Some(Endpoint::Completions),
            "embeddings" => Some(Endpoint::Embeddings),
            "messages" => Some(Endpoint::Messages),
            "count_tokens" | "messages/count_tokens" => Some(Endpoint::CountTokens),
            "responses" => Some(Endpoint::Responses),
            "generate_content" => Some(Endpoint::GenerateContent),
            _ => None,
        }
    }
    pub fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings | Endpoint::CountTokens)
    }
    /// The API family the endpoint belongs to.
    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Chat | Endpoint::Completions | Endpoint::Embeddings | Endpoint::Responses => Dialect::OpenAi,
            Endpoint::Messages | Endpoint::CountTokens => Dialect::Anthropic,
            Endpoint::GenerateContent => Dialect::Gemini,
        }
    }
}

/// The tokens an answer reports, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Uncached input tokens.
    pub input: u64,
    pub output: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic `cache_creation_input_tokens`).
    pub cache_write: u64,
    /// Input tokens read from the provider's prompt cache (Anthropic `cache_read_input_tokens`).
    pub cache_read: u64,
}

impl Tokens {
    /// The usage a complete answer of `endpoint` reports (zero where it reports none).
    pub fn of(endpoint: Endpoint, answer: &serde_json::Value) -> Tokens {
        let n = |k: &str| {
            answer
                .get("usage")
                .and_then(|u| u.get(k))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        match endpoint.dialect() {
            Dialect::OpenAi if endpoint == Endpoint::Responses => Tokens {
                input: n("input_tokens"),
                output: n("output_tokens"),
                ..Tokens::default()
            },
            Dialect::OpenAi => Tokens {
                input: n("prompt_tokens"),
                output: n("completion_tokens"),
                ..Tokens::default()
            },
            Dialect::Anthropic => Tokens {
                input: n("input_tokens"),
                output: n("output_tokens"),
                cache_write: n("cache_creation_input_tokens"),
                cache_read: n("cache_read_input_tokens"),
            },
            Dialect::Gemini => {
                let m = |k: &str| {
                    answer
                        .get("usageMetadata")
                        .and_then(|u| u.get(k))
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0)
                };
                let cached = m("cachedContentTokenCount");
                Tokens {
                    input: m("promptTokenCount").saturating_sub(cached),
                    output: m("candidatesTokenCount") + m("thoughtsTokenCount"),
                    cache_write: 0,
                    cache_read: cached,
                }
            }
        }
    }

    /// Every prompt token, cached or not (what `prompt_tokens` counts in metadata).
    pub fn prompt(&self) -> u64 {
        self.input + self.cache_write + self.cache_read
    }

    /// USD from a price table (exact model, else the longest prefix; unknown: 0).
    /// Cache writes cost `cache_write` per million (default 1.25 x input), cache
    /// reads `cache_read` (default 0.1 x input), as Anthropic bills them.
    pub fn cost_usd(&self, prices: &BTreeMap<String, Price>, model: &str) -> f64 {
        price_of(prices, model)
            .map(|p| {
                let write = p.cache_write.unwrap_or(p.input * 1.25);
                let read = p.cache_read.unwrap_or(p.input * 0.1);
                (self.input as f64 * p.input
                    + self.cache_write as f64 * write
                    + self.cache_read as f64 * read
                    + self.output as f64 * p.output)
                    / 1e6
            })
            .unwrap_or(0.0)
    }
}

/// USD cost of a call from a price table (exact model, else the longest prefix; unknown: 0).
pub fn cost_usd(prices: &BTreeMap<String, Price>, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
    price_of(prices, model)
        .map(|p| (prompt_tokens as f64 * p.input + completion_tokens as f64 * p.output) / 1e6)
        .unwrap_or(0.0)
}

fn price_of<'a>(prices: &'a BTreeMap<String, Price>, model: &str) -> Option<&'a Price> {
    prices.get(model).or_else(|| {
        prices
            .iter()
            .filter(|(k, _)| model.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| p)
    })
}
