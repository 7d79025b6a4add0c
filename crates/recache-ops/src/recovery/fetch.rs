//! Buying an answer from the provider and storing it, for the job kinds that
//! cost money (refetch, refresh-stale, warm), within the warmers' budgets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::Recovery;
use recache_core::endpoint::Endpoint;
use recache_core::key::CacheKey;
use recache_engine::cache::StoreInput;
use recache_storage::queue::worker::JobError;
use recache_storage::roles::now_ms;

/// One request to buy again.
pub struct Purchase<'a> {
    pub key: CacheKey,
    pub tenant: &'a str,
    pub namespace: &'a str,
    pub endpoint: Endpoint,
    pub model: &'a str,
    /// The canonical request: what is sent, and what the key was computed over.
    pub canonical: &'a str,
    /// The client's headers the provider reads (`anthropic-version`,
    /// `anthropic-beta`), when known (a warm file's; none for a re-buy).
    pub forward: &'a [(&'static str, String)],
    pub ttl: Duration,
}

/// How one purchase went.
pub enum Bought {
    Stored {
        cost_usd: f64,
    },
    /// The provider refused this request (non-2xx, not JSON): not retried in this run.
    Refused(String),
}

impl Recovery {
    /// Refuses to start a call that would take the warmers past their hourly budget.
    pub(crate) async fn check_hourly_budget(&self, estimate_usd: f64) -> Result<(), JobError> {
        let cap = self.config.warmer.max_spend_usd_per_hour;
        let spent = self
            .queue
            .spend_since(now_ms() - 3_600_000)
            .await
            .map_err(JobError::Backend)?;
        if spent + estimate_usd > cap {
            return Err(JobError::Wait {
                reason: format!(
                    "warmer.max_spend_usd_per_hour reached: ${spent:.4} spent in the last hour of ${cap:.2}"
                ),
                retry_in: Duration::from_secs(300),
            });
        }
        Ok(())
    }

    /// Sends the canonical request to its provider and stores a complete
    /// answer through the same store path as the gateway. Provider failures
    /// (unreachable, timeout, 5xx) are `Failed` (the job retries later);
    /// storage failures are `Backend` (the job pauses).
    pub async fn buy(&self, p: &Purchase<'_>, job_id: i64) -> Result<Bought, JobError> {
        let Some(upstream) = self.upstreams.route(p.endpoint.dialect(), p.model) else {
            return Ok(Bought::Refused(format!("no upstream serves model '{}'", p.model)));
        };
        let metrics = &self.cache.metrics;
        metrics.upstream_requests.fetch_add(1, Ordering::Relaxed);
        let resp = upstream
            .send_to(
                &p.endpoint.upstream_path(p.model, false),
                bytes::Bytes::copy_from_slice(p.canonical.as_bytes()),
                p.forward,
            )
            .await
            .map_err(|e| {
                metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                JobError::Failed(e.to_string())
            })?;
        let status = resp.status();
        let body = tokio::time::timeout(upstream.timeout, resp.bytes())
            .await
            .map_err(|_| JobError::Failed(upstream.timed_out().to_string()))?
            .map_err(|e| JobError::Failed(format!("provider answer broke: {e}")))?;
        if status.is_server_error() || status.as_u16() == 429 {
            metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return Err(JobError::Failed(format!("provider answered {status}")));
        }
        if !status.is_success() {
            metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return Ok(Bought::Refused(format!(
                "provider answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        let json: Value = match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Ok(Bought::Refused("provider answer is not a JSON object".into())),
        };
        let tokens = recache_core::endpoint::Tokens::of(p.endpoint, &json);
        let (pt, ct) = (tokens.prompt(), tokens.output);
        let cost = tokens.cost_usd(&self.config.prices, p.model);
        metrics.usd_spent.add(cost);
        metrics.warmer_usd_spent.add(cost);
        self.cache.usage.record(
            recache_storage::roles::now_ms(),
            recache_engine::usage::Group {
                tenant: p.tenant,
                namespace: p.namespace,
                model: p.model,
                dialect: p.endpoint.dialect(),
            },
            recache_engine::usage::Delta::miss(pt, ct, cost),
        );
        if let Err(e) = self.queue.record_spend(job_id, cost).await {
            tracing::warn!(error = %e, "warmer: could not record spend in the ledger");
        }
        self.cache
            .store(StoreInput {
                key: p.key,
                tenant: p.tenant.to_string(),
                namespace: p.namespace.to_string(),
                endpoint: p.endpoint.name(),
                model: p.model.to_string(),
                canonical_request: p.canonical.to_string(),
                body,
                content_type: "application/json".into(),
                ttl: p.ttl,
                prompt_tokens: pt,
                completion_tokens: ct,
                cost_usd: cost,
            })
            .await
            .map_err(JobError::from)?;
        Ok(Bought::Stored { cost_usd: cost })
    }
}
