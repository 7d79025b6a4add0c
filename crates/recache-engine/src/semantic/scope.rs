//! What a semantic match may compare: the final user message, and nothing else.
//!
//! The **scope** is a hash of everything about a request except the text of
//! its final user message: tenant, namespace, endpoint, the upstream it was
//! routed to, and the canonical request with that one text blanked out (so the
//! model, system prompt, earlier turns, tools, response format, temperature and
//! every other field count, unknown ones included), plus the embedder's
//! fingerprint. Two requests can only ever be semantic matches when their
//! scopes are equal, so a semantic hit never crosses a tenant, a parameter, a
//! conversation or an embedding model.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::endpoint::Endpoint;
use crate::key::canonical_request;

/// Why a request is not eligible for semantic matching (a label for metrics and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Only chat and completions are matched semantically.
    Endpoint,
    /// The last message is not from the user, or has non-text parts.
    NoFinalUserText,
    /// `n > 1`: several samples were asked for.
    ManyChoices,
    /// Sampling temperature above the configured maximum.
    Temperature,
    /// The text is empty or over the embedder's limit.
    TextSize,
}

impl Ineligible {
    pub fn as_str(self) -> &'static str {
        match self {
            Ineligible::Endpoint => "endpoint",
            Ineligible::NoFinalUserText => "no_final_user_text",
            Ineligible::ManyChoices => "n_above_1",
            Ineligible::Temperature => "temperature",
            Ineligible::TextSize => "text_size",
        }
    }
}

/// The final user text and the request with it blanked.
pub struct Split {
    pub text: String,
    pub rest: Value,
}

const BLANK: &str = "\u{0}recache:final-user-message\u{0}";

/// Splits out the final user message's text. Chat and Anthropic messages: the
/// last message must have role `user` and content that is a string or text
/// parts only. Responses: `input` as a string, or a last user item of text.
/// Completions: a single string prompt. Gemini: a last `contents` item from
/// the user of text parts only (its model, in the path, joins the scope
/// through the caller: `crate::keying::scope_extra`).
pub fn split(endpoint: &str, body: &Value, max_temperature: f64, max_chars: usize) -> Result<Split, Ineligible> {
    // Gemini keeps its sampling settings in `generationConfig`.
    let setting = |openai: &str, gemini: &str| {
        body.get(openai)
            .or_else(|| body.get("generationConfig").and_then(|g| g.get(gemini)))
            .and_then(Value::as_f64)
    };
    if setting("n", "candidateCount").is_some_and(|n| n > 1.0) {
        return Err(Ineligible::ManyChoices);
    }
    if setting("temperature", "temperature").is_some_and(|t| t > max_temperature) {
        return Err(Ineligible::Temperature);
    }
    // Prompt-caching markers change no answer: left out of the scope as of the key.
    let mut rest = if endpoint == "messages" {
        crate::anthropic::key_body(body)
    } else {
        body.clone()
    };
    let text = match endpoint {
        "responses" => responses_text(&mut rest)?,
        "generate_content" => gemini_text(&mut rest)?,
        "chat" | "messages" => {
            let last = rest
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .and_then(|m| m.last_mut())
                .ok_or(Ineligible::NoFinalUserText)?;
            take_user_text(last, "text")?
        }
        "completions" => match rest.get_mut("prompt") {
            Some(Value::String(s)) => {
                let t = std::mem::take(s);
                rest["prompt"] = Value::String(BLANK.into());
                t
            }
            _ => return Err(Ineligible::NoFinalUserText),
        },
        _ => return Err(Ineligible::Endpoint),
    };
    if text.trim().is_empty() || text.chars().count() > max_chars {
        return Err(Ineligible::TextSize);
    }
    Ok(Split { text, rest })
}

/// The final user text of a Responses request (`input` as a string, or a last
/// item that is a user message of text), blanked in `rest`.
fn responses_text(rest: &mut Value) -> Result<String, Ineligible> {
    let input = rest.get_mut("input").ok_or(Ineligible::NoFinalUserText)?;
    if let Value::String(s) = input {
        let t = std::mem::take(s);
        *input = Value::String(BLANK.into());
        return Ok(t);
    }
    let last = input
        .as_array_mut()
        .and_then(|items| items.last_mut())
        .ok_or(Ineligible::NoFinalUserText)?;
    let text = take_user_text(last, "input_text")?;
    // One user item is the string form written long: both share a scope.
    if input.as_array().is_some_and(|items| items.len() == 1) {
        *input = Value::String(BLANK.into());
    }
    Ok(text)
}

/// The final user text of a Gemini request: the last `contents` item, from
/// the user (`role` "user" or none, as Gemini reads it), of parts that hold
/// text and nothing else; blanked in `rest`, the role written out.
fn gemini_text(rest: &mut Value) -> Result<String, Ineligible> {
    let last = rest
        .get_mut("contents")
        .and_then(Value::as_array_mut)
        .and_then(|c| c.last_mut())
        .and_then(Value::as_object_mut)
        .ok_or(Ineligible::NoFinalUserText)?;
    if !matches!(last.get("role"), None | Some(Value::Null)) && last.get("role").and_then(Value::as_str) != Some("user")
    {
        return Err(Ineligible::NoFinalUserText);
    }
    last.insert("role".into(), Value::String("user".into()));
    let parts = last
        .get_mut("parts")
        .and_then(Value::as_array_mut)
        .ok_or(Ineligible::NoFinalUserText)?;
    let mut out = Vec::new();
    for p in parts.iter() {
        // A part with anything beside its text (inline data, a thought, a function response) is not matched.
        match p.as_object() {
            Some(o) if o.len() == 1 => out.push(
                o.get("text")
                    .and_then(Value::as_str)
                    .ok_or(Ineligible::NoFinalUserText)?,
            ),
            _ => return Err(Ineligible::NoFinalUserText),
        }
    }
    if out.is_empty() {
        return Err(Ineligible::NoFinalUserText);
    }
    let text = out.join("\n");
    *parts = vec![serde_json::json!({ "text": BLANK })];
    Ok(text)
}

/// The text of a final user message (`content` a string, or parts of type
/// `part_type` only), its content blanked.
fn take_user_text(last: &mut Value, part_type: &str) -> Result<String, Ineligible> {
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return Err(Ineligible::NoFinalUserText);
    }
    let content = last.get_mut("content").ok_or(Ineligible::NoFinalUserText)?;
    let text = match content {
        Value::String(s) => std::mem::take(s),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts.iter() {
                if p.get("type").and_then(Value::as_str) != Some(part_type) {
                    return Err(Ineligible::NoFinalUserText);
                }
                out.push(
                    p.get("text")
                        .and_then(Value::as_str)
                        .ok_or(Ineligible::NoFinalUserText)?,
                );
            }
            out.join("\n")
        }
        _ => return Err(Ineligible::NoFinalUserText),
    };
    *content = Value::String(BLANK.into());
    Ok(text)
}

/// A request as semantic matching reads it.
pub struct Asked<'a> {
    /// The tenant's stable id.
    pub tenant: &'a str,
    pub namespace: &'a str,
    pub endpoint: Endpoint,
    /// The upstream it was routed to.
    pub upstream: &'a str,
    /// The model (for Gemini, the one of the path).
    pub model: &'a str,
    pub body: &'a Value,
    /// The client's headers the provider reads (Anthropic's version headers).
    pub forward: &'a [(&'static str, String)],
}

/// The parts of a scope beside the request with its final text blanked.
pub(crate) struct ScopeParts<'a> {
    pub tenant: &'a str,
    pub namespace: &'a str,
    pub endpoint: &'a str,
    pub upstream: &'a str,
    pub fingerprint: &'a str,
    /// What counts beside the body ([`crate::keying::scope_extra`]: Gemini's
    /// model, Anthropic's version headers); empty for OpenAI's endpoints,
    /// whose scopes it leaves as they were.
    pub extra: &'a str,
}

/// The scope hash (hex).
pub(crate) fn scope_hash(p: &ScopeParts<'_>, rest: &Value) -> String {
    let canonical = canonical_request(rest);
    let mut h = Sha256::new();
    h.update(b"recache-scope-v1");
    for part in [
        p.tenant,
        p.namespace,
        p.endpoint,
        p.upstream,
        canonical.as_str(),
        p.fingerprint,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    if !p.extra.is_empty() {
        h.update((p.extra.len() as u64).to_le_bytes());
        h.update(p.extra.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The final user text of an entry's stored request, read from its
/// artifact (opened when sealed); `None` when the entry or its artifact is
/// gone or unreadable (the candidate is passed over).
pub async fn stored_text(cache: &crate::cache::Cache, key: crate::key::CacheKey) -> Option<String> {
    let roles = &cache.roles;
    let entry = roles.index.get(key).await.ok()??;
    let stored = roles.artifacts.get(entry.artifact).await.ok()??;
    let envelope = crate::roles::keyring::open_artifact(roles.keyring.as_deref(), &stored)
        .await
        .ok()?;
    let d = crate::artifact::decode(&envelope).ok()?;
    let body: serde_json::Value = serde_json::from_slice(&d.request).ok()?;
    split(&d.meta.endpoint, &body, f64::INFINITY, usize::MAX)
        .ok()
        .map(|s| s.text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hash(tenant: &str, namespace: &str, endpoint: &str, upstream: &str, rest: &Value, fingerprint: &str) -> String {
        let parts = ScopeParts {
            tenant,
            namespace,
            endpoint,
            upstream,
            fingerprint,
            extra: "",
        };
        scope_hash(&parts, rest)
    }

    fn scope_of(body: &Value) -> String {
        let s = split("chat", body, 1.0, 10_000).unwrap();
        hash("t", "ns", "chat", "up", &s.rest, "fp")
    }

    #[test]
    fn only_the_final_user_text_is_free() {
        let a = json!({"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "How do I reset my password?"}]});
        let b = json!({"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "password reset: how?"}]});
        assert_eq!(scope_of(&a), scope_of(&b));
        for changed in [
            json!({"model": "m2", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "system", "content": "T"}, {"role": "user", "content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "x"}]}),
            json!({"model": "m", "temperature": 0.5, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}]}),
            json!({"model": "m", "tools": [], "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}]}),
        ] {
            assert_ne!(scope_of(&a), scope_of(&changed), "{changed}");
        }
        let s = split("chat", &a, 1.0, 10_000).unwrap();
        assert_ne!(hash("t2", "ns", "chat", "up", &s.rest, "fp"), scope_of(&a), "tenant");
        assert_ne!(hash("t", "ns", "chat", "up", &s.rest, "fp2"), scope_of(&a), "embedder");
        assert_ne!(hash("t", "ns2", "chat", "up", &s.rest, "fp"), scope_of(&a), "namespace");
    }

    #[test]
    fn ineligible_requests() {
        let assistant_last = json!({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]});
        assert_eq!(
            split("chat", &assistant_last, 1.0, 100).err(),
            Some(Ineligible::NoFinalUserText)
        );
        let image = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert_eq!(split("chat", &image, 1.0, 100).err(), Some(Ineligible::NoFinalUserText));
        let n2 = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(split("chat", &n2, 1.0, 100).err(), Some(Ineligible::ManyChoices));
        let hot = json!({"model": "m", "temperature": 1.5, "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(split("chat", &hot, 1.0, 100).err(), Some(Ineligible::Temperature));
        let parts = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]});
        assert_eq!(split("chat", &parts, 1.0, 100).unwrap().text, "a\nb");
        assert_eq!(
            split("embeddings", &json!({"input": "x"}), 1.0, 100).err(),
            Some(Ineligible::Endpoint)
        );
        let p = json!({"model": "m", "prompt": "complete this"});
        assert_eq!(split("completions", &p, 1.0, 100).unwrap().text, "complete this");
    }

    #[test]
    fn gemini_final_user_text() {
        let g = |contents: Value| json!({"contents": contents, "systemInstruction": {"parts": [{"text": "S"}]}});
        let scope = |v: &Value| {
            let s = split("generate_content", v, 1.0, 10_000).unwrap();
            (s.text.clone(), hash("t", "n", "generate_content", "up", &s.rest, "fp"))
        };
        let (ta, a) = scope(&g(json!([{"role": "user", "parts": [{"text": "How do I reset it?"}]}])));
        let (tb, b) = scope(&g(json!([{"parts": [{"text": "Reset: how?"}, {"text": "Thanks"}]}])));
        assert_eq!(
            (ta.as_str(), tb.as_str()),
            ("How do I reset it?", "Reset: how?\nThanks")
        );
        assert_eq!(a, b, "no role is the user's role, and the parts are blanked as one");
        let (_, c) = scope(&json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}]}));
        assert_ne!(a, c, "the system instruction counts");
        for bad in [
            g(json!([{"role": "model", "parts": [{"text": "x"}]}])),
            g(json!([{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": ""}}]}])),
            g(json!([{"role": "user", "parts": [{"text": "x", "thought": true}]}])),
            g(json!([{"role": "user", "parts": []}])),
            g(json!([])),
        ] {
            assert_eq!(
                split("generate_content", &bad, 1.0, 10_000).err(),
                Some(Ineligible::NoFinalUserText),
                "{bad}"
            );
        }
        let two = json!({"generationConfig": {"candidateCount": 2}, "contents": [{"parts": [{"text": "x"}]}]});
        assert_eq!(
            split("generate_content", &two, 1.0, 100).err(),
            Some(Ineligible::ManyChoices)
        );
        let hot = json!({"generationConfig": {"temperature": 1.5}, "contents": [{"parts": [{"text": "x"}]}]});
        assert_eq!(
            split("generate_content", &hot, 1.0, 100).err(),
            Some(Ineligible::Temperature)
        );
    }
}
