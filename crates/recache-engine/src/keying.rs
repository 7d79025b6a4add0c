//! A request's cache key in every dialect: the one derivation the gateway
//! and the warmers (`warm` files) share, so an answer bought ahead of time
//! is found by the request that asks for it. What each dialect leaves out of
//! the key is in ARCHITECTURE.md, "Dialects".

use serde_json::Value;

use crate::{anthropic, gemini};
use recache_core::endpoint::{Dialect, Endpoint};
use recache_core::key::{cache_key, canonical_request, CacheKey};

/// The request headers each dialect forwards to the provider and counts in
/// the key (`anthropic-version`, `anthropic-beta`; none for the others).
pub fn forwarded_header_names(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Anthropic => &["anthropic-version", "anthropic-beta"],
        Dialect::OpenAi | Dialect::Gemini => &[],
    }
}

/// The canonical request (stored, and re-sent by warmers) and the key's
/// material: the canonical request, plus the model for Gemini (it is in the
/// path, not the body) and the version headers for Anthropic. `None`: the
/// canonical request is the material.
pub fn key_material(
    endpoint: Endpoint,
    model: &str,
    value: &Value,
    forward: &[(&'static str, String)],
) -> (String, Option<String>) {
    match endpoint.dialect() {
        Dialect::Gemini => {
            let canonical = canonical_request(value);
            let material = gemini::key_material(model, &canonical);
            (canonical, Some(material))
        }
        Dialect::OpenAi => (canonical_request(value), None),
        Dialect::Anthropic => {
            let canonical = canonical_request(&anthropic::key_body(value));
            let header = |n: &str| forward.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
            let material = format!(
                "{canonical}{}",
                anthropic::key_headers(header("anthropic-version"), header("anthropic-beta"))
            );
            (canonical, Some(material))
        }
    }
}

/// What a semantic scope counts beside the body (ARCHITECTURE.md,
/// "Semantic matching"): what the key counts beside it, that is Gemini's model
/// (in the path) and Anthropic's version headers; nothing for OpenAI's
/// endpoints (their scopes stay as they were before dialects).
pub fn scope_extra(endpoint: Endpoint, model: &str, forward: &[(&'static str, String)]) -> String {
    match endpoint.dialect() {
        Dialect::OpenAi => String::new(),
        Dialect::Gemini => format!("model:{model}"),
        Dialect::Anthropic => {
            let header = |n: &str| forward.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
            anthropic::key_headers(header("anthropic-version"), header("anthropic-beta"))
        }
    }
}

/// The canonical request and the key of `value` sent to `endpoint` for
/// `model` by the tenant whose stable id is `tenant_id`.
pub fn request_key(
    tenant_id: &str,
    namespace: &str,
    endpoint: Endpoint,
    model: &str,
    value: &Value,
    forward: &[(&'static str, String)],
) -> (String, CacheKey) {
    let (canonical, material) = key_material(endpoint, model, value, forward);
    let key = cache_key(
        tenant_id,
        namespace,
        endpoint.name(),
        material.as_deref().unwrap_or(&canonical),
    );
    (canonical, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_dialect_keys_what_changes_the_answer() {
        let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let v = |s: &str| vec![("anthropic-version", s.to_string())];
        let k = |ep, fwd: &[(&'static str, String)]| request_key("t", "default", ep, "m", &body, fwd).1;
        assert_ne!(
            k(Endpoint::Messages, &v("2023-06-01")),
            k(Endpoint::Messages, &v("2023-01-01"))
        );
        assert_ne!(
            k(Endpoint::Messages, &[]),
            k(Endpoint::Chat, &[]),
            "the endpoint counts"
        );
        let marked = json!({"model": "m", "max_tokens": 5, "stream": true,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]});
        let plain = json!({"model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(
            request_key("t", "n", Endpoint::Messages, "m", &marked, &v("x")).1,
            request_key("t", "n", Endpoint::Messages, "m", &plain, &v("x")).1
        );
        let g = json!({"contents": [{"parts": [{"text": "hi"}]}]});
        assert_ne!(
            request_key("t", "n", Endpoint::GenerateContent, "gemini-a", &g, &[]).1,
            request_key("t", "n", Endpoint::GenerateContent, "gemini-b", &g, &[]).1,
            "Gemini's model is in the path"
        );
    }
}
