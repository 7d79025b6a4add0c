//! Pre-warming: a JSONL file of requests in any dialect, bought from the
//! provider and stored for a tenant and namespace (a repository) under the
//! key the gateway would give them (`recache_engine::keying`). The file is
//! split into jobs of at most [`CHUNK`] requests carried in the payload, so
//! any worker on any machine can run them; a request already cached is
//! skipped, so running a file twice costs nothing the second time.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::fetch::{Bought, Purchase};
use super::Recovery;
use recache_core::config::Config;
use recache_core::endpoint::{Dialect, Endpoint};
use recache_engine::keying::{forwarded_header_names, request_key};
use recache_engine::upstream::ANTHROPIC_VERSION;
use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::queue::NewJob;
use recache_storage::roles::now_ms;

pub const CHUNK: usize = 500;
/// Requests in flight at once within one warm job.
const PARALLEL: usize = 4;

/// One request of a warm file.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmRequest {
    pub endpoint: Endpoint,
    /// The body's `model`, or for Gemini the model of the path (not in the body).
    pub model: String,
    pub body: Value,
    /// The headers that count in the key (`anthropic-version`, `anthropic-beta`).
    pub headers: Vec<(&'static str, String)>,
}

impl WarmRequest {
    /// A request of `endpoint`, its model taken from the body (and, for
    /// Gemini, out of it), its headers from `headers` (for Anthropic,
    /// `anthropic-version` defaults to the one every SDK sends).
    pub fn new(
        endpoint: Endpoint,
        mut body: Value,
        model: Option<String>,
        headers: Option<&Value>,
    ) -> Result<Self, String> {
        let Some(obj) = body.as_object_mut() else {
            return Err("the request body must be a JSON object".into());
        };
        let in_body = obj.get("model").and_then(Value::as_str).map(str::to_string);
        if endpoint == Endpoint::GenerateContent {
            obj.remove("model");
        }
        let model = model
            .or(in_body)
            .map(|m| m.strip_prefix("models/").map(str::to_string).unwrap_or(m))
            .filter(|m| !m.is_empty())
            .ok_or("the request needs a 'model'")?;
        if endpoint == Endpoint::Responses {
            if let Some(why) = recache_engine::responses::bypass_reason(&body) {
                return Err(format!("a Responses request with {why} is never cached"));
            }
        }
        let names = forwarded_header_names(endpoint.dialect());
        let mut out: Vec<(&'static str, String)> = Vec::new();
        if let Some(h) = headers {
            let h = h.as_object().ok_or("'headers' must be an object")?;
            for (k, v) in h {
                let name = names
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(k))
                    .ok_or_else(|| format!("header '{k}' does not count for {} requests", endpoint.dialect()))?;
                let v = v.as_str().ok_or_else(|| format!("header '{k}' must be a string"))?;
                out.push((name, v.to_string()));
            }
        }
        if endpoint.dialect() == Dialect::Anthropic && !out.iter().any(|(n, _)| *n == "anthropic-version") {
            out.push(("anthropic-version", ANTHROPIC_VERSION.to_string()));
        }
        out.sort();
        Ok(WarmRequest {
            endpoint,
            model,
            body,
            headers: out,
        })
    }

    fn to_payload(&self) -> Value {
        let headers: Map<String, Value> = self.headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        json!({"endpoint": self.endpoint.name(), "model": self.model, "body": self.body, "headers": headers})
    }

    /// Back from a job's payload (payloads queued before dialects have no model or headers).
    fn from_payload(r: &Value) -> Option<Self> {
        let endpoint = Endpoint::from_name(r["endpoint"].as_str()?)?;
        let model = r["model"].as_str().map(str::to_string);
        let headers = r
            .get("headers")
            .filter(|h| h.as_object().is_some_and(|m| !m.is_empty()));
        WarmRequest::new(endpoint, r["body"].clone(), model, headers).ok()
    }
}

/// The endpoint and model a request line's `url` names: an OpenAI or
/// Anthropic path (`/v1/chat/completions`, `/v1/messages`, ...) or a Gemini
/// one (`/v1beta/models/{model}:generateContent`).
fn endpoint_of_url(url: &str) -> Option<(Endpoint, Option<String>)> {
    let path = url.split('?').next().unwrap_or(url);
    if let Some(target) = path.trim_start_matches('/').strip_prefix("v1beta/models/") {
        let (model, method) = target.split_once(':')?;
        return matches!(method, "generateContent" | "streamGenerateContent")
            .then(|| (Endpoint::GenerateContent, Some(model.to_string())));
    }
    Some((Endpoint::from_name(path)?, None))
}

/// Reads a warm file: one JSON object per line, in any of these shapes.
/// Blank lines and `#` comments are skipped.
/// - a batch-file line: `url` (any endpoint recache serves, e.g.
///   `/v1/chat/completions`, `/v1/responses`, `/v1/messages` or
///   `/v1beta/models/{model}:generateContent`), `body`, and optionally
///   `headers` (`anthropic-version`, `anthropic-beta`);
/// - an Anthropic Message Batches line: `params` (and `custom_id`);
/// - a Gemini batch line: `request` (and `key`), the model in `request.model`;
/// - a bare request body, for `endpoint` if given, else told by its fields:
///   `contents` (Gemini, with a `model`), `messages` (chat), `prompt`
///   (completions), `input` (embeddings).
pub fn parse_file(text: &str, endpoint: Option<Endpoint>) -> Result<Vec<WarmRequest>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |msg: &str| format!("line {}: {msg}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| at(&format!("not JSON: {e}")))?;
        let headers = v.get("headers");
        let (ep, body, model) = if let (Some(url), Some(body)) = (v.get("url").and_then(Value::as_str), v.get("body")) {
            let (ep, model) = endpoint_of_url(url).ok_or_else(|| at(&format!("unknown endpoint '{url}'")))?;
            (ep, body.clone(), model)
        } else if let Some(params) = v.get("params") {
            (Endpoint::Messages, params.clone(), None)
        } else if let Some(request) = v.get("request") {
            (Endpoint::GenerateContent, request.clone(), None)
        } else {
            let ep =
                match endpoint {
                    Some(ep) => ep,
                    None if v.get("contents").is_some() => Endpoint::GenerateContent,
                    None if v.get("messages").is_some() => Endpoint::Chat,
                    None if v.get("prompt").is_some() => Endpoint::Completions,
                    None if v.get("input").is_some() => Endpoint::Embeddings,
                    None => return Err(at(
                        "needs 'messages', 'prompt', 'input' or 'contents' (or 'url' and 'body', 'params', 'request')",
                    )),
                };
            let mut body = v.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("headers");
            }
            (ep, body, None)
        };
        out.push(WarmRequest::new(ep, body, model, headers).map_err(|e| at(&e))?);
    }
    Ok(out)
}

/// The jobs for a warm file: chunks of requests, each unique by its content,
/// tenant and namespace (enqueueing the same file twice is harmless).
pub fn jobs_for(
    requests: &[WarmRequest],
    tenant: &str,
    namespace: &str,
    priority: i64,
    max_attempts: u32,
) -> Vec<NewJob> {
    use sha2::Digest;
    requests
        .chunks(CHUNK)
        .map(|chunk| {
            let reqs: Vec<Value> = chunk.iter().map(WarmRequest::to_payload).collect();
            let mut h = sha2::Sha256::new();
            h.update(tenant.as_bytes());
            h.update([0]);
            h.update(namespace.as_bytes());
            h.update([0]);
            h.update(serde_json::to_vec(&reqs).unwrap_or_default());
            let unique = format!("warm:{}", hex::encode(&h.finalize()[..12]));
            NewJob::new(
                super::WARM,
                json!({"tenant": tenant, "namespace": namespace, "requests": reqs, "cursor": 0}),
            )
            .priority(priority)
            .namespace(namespace)
            .unique(unique)
            .max_attempts(max_attempts)
        })
        .collect()
}

/// The TTL a tenant's entries get by default.
pub fn tenant_ttl(config: &Config, tenant: &str) -> Option<Duration> {
    let t = config.tenants.iter().find(|t| t.name == tenant)?;
    Some(Duration::from_secs(
        t.default_ttl_seconds.unwrap_or(config.cache.default_ttl_seconds),
    ))
}

impl Recovery {
    pub async fn warm(&self, mut p: Value, ctx: &dyn JobCtx) -> Result<Value, JobError> {
        let tenant = p["tenant"].as_str().unwrap_or_default().to_string();
        let namespace = p["namespace"].as_str().unwrap_or("default").to_string();
        let ttl = tenant_ttl(&self.config, &tenant)
            .ok_or_else(|| JobError::Fatal(format!("tenant '{tenant}' is not in the configuration")))?;
        // Keys and entries carry the tenant's stable id, as the gateway's do.
        let tenant_id = self
            .config
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .map(|t| t.id().to_string())
            .unwrap_or_else(|| tenant.clone());
        let requests: Vec<WarmRequest> = p["requests"]
            .as_array()
            .map(|a| a.iter().filter_map(WarmRequest::from_payload).collect())
            .unwrap_or_default();
        let total = requests.len() as u64;
        let start = u64::min(p["cursor"].as_u64().unwrap_or(0), total);
        if start > 0 {
            tracing::info!(cursor = start, total, "warm: resuming from its checkpoint");
            p["resumed_from"] = json!(start);
        }
        let max = p.get("max_cost_usd").and_then(Value::as_f64);
        let mut stats = (
            p["fetched"].as_u64().unwrap_or(0),
            p["skipped"].as_u64().unwrap_or(0),
            p["refused"].as_u64().unwrap_or(0),
        );
        let mut spent = p["spent_usd"].as_f64().unwrap_or(0.0);
        let mut i = start as usize;
        while i < requests.len() {
            if max.is_some_and(|m| spent >= m) {
                p["stopped"] = json!("max_cost_usd reached");
                break;
            }
            self.check_hourly_budget(0.0).await?;
            let end = (i + PARALLEL).min(requests.len());
            let calls = requests[i..end]
                .iter()
                .map(|r| self.warm_one(r, &tenant_id, &namespace, ttl, ctx.job_id()));
            for r in futures_util::future::join_all(calls).await {
                match r? {
                    WarmOutcome::Skipped => stats.1 += 1,
                    WarmOutcome::Bought(Bought::Stored { cost_usd }) => {
                        stats.0 += 1;
                        spent += cost_usd;
                    }
                    WarmOutcome::Bought(Bought::Refused(_)) => stats.2 += 1,
                }
            }
            i = end;
            p["cursor"] = json!(i);
            p["fetched"] = json!(stats.0);
            p["skipped"] = json!(stats.1);
            p["refused"] = json!(stats.2);
            p["spent_usd"] = json!(spent);
            ctx.checkpoint(p.clone()).await?;
            ctx.progress(i as u64, Some(total));
        }
        Ok(
            json!({"tenant": tenant, "namespace": namespace, "requests": total, "fetched": stats.0,
                  "skipped": stats.1, "refused": stats.2, "spent_usd": spent,
                  "resumed_from": p.get("resumed_from"), "stopped": p.get("stopped")}),
        )
    }

    async fn warm_one(
        &self,
        r: &WarmRequest,
        tenant_id: &str,
        namespace: &str,
        ttl: Duration,
        job_id: i64,
    ) -> Result<WarmOutcome, JobError> {
        let (canonical, key) = request_key(tenant_id, namespace, r.endpoint, &r.model, &r.body, &r.headers);
        if let Ok(Some(e)) = self.cache.roles.index.get(key).await {
            if e.expires_at_ms > now_ms() {
                return Ok(WarmOutcome::Skipped);
            }
        }
        let bought = self
            .buy(
                &Purchase {
                    key,
                    tenant: tenant_id,
                    namespace,
                    endpoint: r.endpoint,
                    model: &r.model,
                    canonical: &canonical,
                    forward: &r.headers,
                    ttl,
                },
                job_id,
            )
            .await?;
        Ok(WarmOutcome::Bought(bought))
    }
}

enum WarmOutcome {
    Skipped,
    Bought(Bought),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bodies_and_batch_lines() {
        let text = r#"{"model":"m","messages":[{"role":"user","content":"a"}]}
# a comment

{"custom_id":"x","method":"POST","url":"/v1/embeddings","body":{"model":"e","input":"b"}}
{"model":"m","prompt":"c"}"#;
        let r = parse_file(text, None).unwrap();
        assert_eq!(
            r.iter().map(|r| r.endpoint).collect::<Vec<_>>(),
            vec![Endpoint::Chat, Endpoint::Embeddings, Endpoint::Completions]
        );
        assert_eq!(r[1].model, "e");
        assert!(parse_file("{\"messages\":[]}", None).unwrap_err().contains("line 1"));
        assert!(parse_file("{}\n", None).unwrap_err().contains("needs"));
        assert!(parse_file("not json", None).is_err());
        let jobs = jobs_for(&r, "t", "org/repo", 5, 3);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs_for(&r, "t", "org/repo", 5, 3)[0].unique_key, jobs[0].unique_key);
        assert_ne!(jobs_for(&r, "t", "other", 5, 3)[0].unique_key, jobs[0].unique_key);
    }

    #[test]
    fn parses_every_dialect() {
        let text = r#"{"custom_id":"a","params":{"model":"claude-x","max_tokens":9,"messages":[{"role":"user","content":"a"}]}}
{"url":"/v1/messages","headers":{"anthropic-beta":"b1"},"body":{"model":"claude-x","max_tokens":9,"messages":[]}}
{"url":"/v1/responses","body":{"model":"gpt-x","input":"b"}}
{"url":"/v1beta/models/gemini-x:generateContent","body":{"contents":[{"parts":[{"text":"c"}]}]}}
{"key":"k","request":{"model":"models/gemini-y","contents":[{"parts":[{"text":"d"}]}]}}
{"model":"gemini-z","contents":[{"parts":[{"text":"e"}]}]}"#;
        let r = parse_file(text, None).unwrap();
        let eps: Vec<Endpoint> = r.iter().map(|r| r.endpoint).collect();
        use Endpoint::*;
        assert_eq!(
            eps,
            [
                Messages,
                Messages,
                Responses,
                GenerateContent,
                GenerateContent,
                GenerateContent
            ]
        );
        let models: Vec<&str> = r.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(
            models,
            ["claude-x", "claude-x", "gpt-x", "gemini-x", "gemini-y", "gemini-z"]
        );
        assert_eq!(r[0].headers, [("anthropic-version", ANTHROPIC_VERSION.to_string())]);
        assert_eq!(
            r[1].headers,
            [
                ("anthropic-beta", "b1".to_string()),
                ("anthropic-version", ANTHROPIC_VERSION.to_string())
            ]
        );
        assert!(
            r[4].body.get("model").is_none(),
            "Gemini's model is in the path, not the body"
        );
        // The payload round trip keeps everything the key is made of.
        for w in &r {
            assert_eq!(WarmRequest::from_payload(&w.to_payload()).as_ref(), Some(w));
        }
        // Bare bodies for another endpoint, told by --endpoint.
        let m = parse_file(r#"{"model":"claude-x","max_tokens":9,"messages":[]}"#, Some(Messages)).unwrap();
        assert_eq!((m[0].endpoint, m[0].headers.len()), (Messages, 1));
        let e = parse_file(
            r#"{"url":"/v1/responses","body":{"model":"g","input":"x","background":true}}"#,
            None,
        );
        assert!(e.unwrap_err().contains("background"));
        let e = parse_file(
            r#"{"url":"/v1/chat/completions","headers":{"anthropic-beta":"x"},"body":{"model":"g","messages":[]}}"#,
            None,
        );
        assert!(e.unwrap_err().contains("does not count"));
        let e = parse_file(r#"{"contents":[]}"#, None);
        assert!(e.unwrap_err().contains("model"));
        // A payload queued before dialects (no model, no headers) still reads.
        let old = json!({"endpoint": "chat", "body": {"model": "m", "messages": []}});
        assert_eq!(WarmRequest::from_payload(&old).unwrap().model, "m");
    }
}
