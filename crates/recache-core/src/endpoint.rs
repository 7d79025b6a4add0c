//! The provider endpoints recache caches, and what a call costs.

use std::collections::BTreeMap;

use crate::config::Price;

/// The OpenAI-compatible endpoints recache caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Path below the upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
    /// Name used in cache keys and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
    /// The endpoint a stored name (or a request path) stands for.
    pub fn from_name(name: &str) -> Option<Endpoint> {
        let n = name.trim_start_matches('/').trim_start_matches("v1/");
        match n {
            "chat" | "chat/completions" => Some(Endpoint::Chat),
            "completions" => Some(Endpoint::Completions),
            "embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }
    pub fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
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
