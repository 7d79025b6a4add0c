//! Pre-warming: a JSONL file of OpenAI-style requests, bought from the
//! provider and stored for a tenant and namespace (a repository). The file
//! is split into jobs of at most [`CHUNK`] requests carried in the payload,
//! so any worker on any machine can run them; a request already cached is
//! skipped, so running a file twice costs nothing the second time.

use std::time::Duration;

use serde_json::{json, Value};

use super::fetch::{Bought, Purchase};
use super::Recovery;
use recache_core::config::Config;
use recache_core::endpoint::Endpoint;
use recache_core::key::{cache_key, canonical_request};
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
    pub body: Value,
}

/// Reads a warm file: one JSON object per line, either a request body
/// (the endpoint is told by `messages`, `prompt` or `input`) or a batch-file
/// line with `url` and `body`. Blank lines and `#` comments are skipped.
pub fn parse_file(text: &str) -> Result<Vec<WarmRequest>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |msg: &str| format!("line {}: {msg}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| at(&format!("not JSON: {e}")))?;
        let (endpoint, body) = match (v.get("url").and_then(Value::as_str), v.get("body")) {
            (Some(url), Some(body)) => (
                Endpoint::from_name(url).ok_or_else(|| at(&format!("unknown endpoint '{url}'")))?,
                body.clone(),
            ),
            _ => {
                let ep = if v.get("messages").is_some() {
                    Endpoint::Chat
                } else if v.get("prompt").is_some() {
                    Endpoint::Completions
                } else if v.get("input").is_some() {
                    Endpoint::Embeddings
                } else {
                    return Err(at("needs 'messages', 'prompt' or 'input' (or 'url' and 'body')"));
                };
                (ep, v)
            }
        };
        if !body.is_object() || body.get("model").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(at("the request needs a 'model'"));
        }
        out.push(WarmRequest { endpoint, body });
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
            let reqs: Vec<Value> = chunk
                .iter()
                .map(|r| json!({"endpoint": r.endpoint.name(), "body": r.body}))
                .collect();
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
        let requests: Vec<(Endpoint, Value)> = p["requests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| Some((Endpoint::from_name(r["endpoint"].as_str()?)?, r["body"].clone())))
                    .collect()
            })
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
                .map(|(ep, body)| self.warm_one(*ep, body, &tenant, &namespace, ttl, ctx.job_id()));
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
        endpoint: Endpoint,
        body: &Value,
        tenant: &str,
        namespace: &str,
        ttl: Duration,
        job_id: i64,
    ) -> Result<WarmOutcome, JobError> {
        let canonical = canonical_request(body);
        let key = cache_key(tenant, namespace, endpoint.name(), &canonical);
        if let Ok(Some(e)) = self.cache.roles.index.get(key).await {
            if e.expires_at_ms > now_ms() {
                return Ok(WarmOutcome::Skipped);
            }
        }
        let model = body["model"].as_str().unwrap_or_default();
        let bought = self
            .buy(
                &Purchase {
                    key,
                    tenant,
                    namespace,
                    endpoint,
                    model,
                    canonical: &canonical,
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
        let r = parse_file(text).unwrap();
        assert_eq!(
            r.iter().map(|r| r.endpoint).collect::<Vec<_>>(),
            vec![Endpoint::Chat, Endpoint::Embeddings, Endpoint::Completions]
        );
        assert!(parse_file("{\"messages\":[]}").unwrap_err().contains("line 1"));
        assert!(parse_file("{}\n").unwrap_err().contains("needs"));
        assert!(parse_file("not json").is_err());
        let jobs = jobs_for(&r, "t", "org/repo", 5, 3);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs_for(&r, "t", "org/repo", 5, 3)[0].unique_key, jobs[0].unique_key);
        assert_ne!(jobs_for(&r, "t", "other", 5, 3)[0].unique_key, jobs[0].unique_key);
    }
}
