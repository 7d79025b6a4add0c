//! The semantic step of the request path (ARCHITECTURE.md, "Request path", the semantic step): after an
//! exact miss, a near-duplicate request of the same scope may answer.
//!
//! - live mode: a candidate that passes threshold and guards is served as
//!   `SEMANTIC_HIT` (with `x-recache-similarity`; `x-recache-key` names the
//!   entry served); a sampled share is also sent to the provider in the
//!   background and compared (verification);
//! - shadow mode: the candidate is only recorded; the provider's answer is
//!   served and compared with it.
//!
//! Either way the request's embedding is kept, so its own answer is stored
//! with a vector after a miss.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderValue;
use axum::response::Response;

use super::flight::{self, Joined};
use super::proxy::{render_answer, CacheStatus, Request};
use recache_engine::semantic::{Candidate, Prepared};

pub(super) enum Step {
    /// A semantic hit was served.
    Served(Response),
    /// Go on to the provider; store the vector with the answer; judge a shadow candidate.
    Continue {
        prepared: Option<Arc<Prepared>>,
        shadow: Option<(Candidate, Bytes)>,
    },
}

pub(super) async fn lookup(req: &Request<'_>) -> Step {
    // Stored entries and vectors are the tenant's id's; rules name the tenant.
    let (state, d, tenant) = (req.state, req.directives, &req.tenant.id);
    let Some(sem) = &state.semantic else {
        return Step::Continue {
            prepared: None,
            shadow: None,
        };
    };
    let mut prepared = None;
    // Off by header, or neither looked up (no-cache) nor stored (no-store): no embedding.
    let wanted = !(d.semantic_off || (d.no_cache && d.no_store));
    if wanted {
        if let Some(policy) = sem.policy(&req.tenant.name, &d.namespace) {
            let asked = recache_engine::semantic::Asked {
                tenant,
                namespace: &d.namespace,
                endpoint: req.endpoint,
                upstream: &req.upstream.name,
                model: &req.parsed.model,
                body: &req.parsed.value,
                forward: req.forward,
            };
            prepared = sem
                .prepare(policy, &asked)
                .await
                .map_err(|why| sem.skipped(why))
                .ok()
                .map(Arc::new);
        }
    }
    let mut shadow = None;
    let (Some(p), false) = (&prepared, d.no_cache) else {
        return Step::Continue { prepared, shadow };
    };
    let found = sem.find(p, d.semantic_threshold).await;
    for c in &found.candidates {
        if !p.policy.live {
            if let Some(hit) = state.cache.peek(c.key, tenant).await {
                tracing::debug!(similarity = c.score, key = %c.key, "shadow mode: semantic candidate found; serving the provider's answer");
                sem.outcome(p, &found, true);
                shadow = Some((c.clone(), hit.body));
                return Step::Continue { prepared, shadow };
            }
            sem.forget_if_gone(c.key);
            continue;
        }
        let Some(hit) = state.cache.lookup(c.key, tenant, d.max_age, 0).await else {
            sem.forget_if_gone(c.key);
            continue;
        };
        // An answer that calls a tool belongs to its exact request only.
        if recache_engine::semantic::judge::asks_for_tool(&hit.body) {
            sem.refused(recache_engine::semantic::Refusal::ToolAnswer);
            continue;
        }
        sem.outcome(p, &found, true);
        let m = &state.cache.metrics;
        m.tokens_saved
            .fetch_add(hit.meta.prompt_tokens + hit.meta.completion_tokens, Ordering::Relaxed);
        m.usd_saved.add(hit.meta.cost_usd);
        state.cache.usage.record(
            recache_storage::roles::now_ms(),
            recache_engine::usage::Group {
                tenant: &req.tenant.id,
                namespace: &req.directives.namespace,
                model: &req.parsed.model,
                dialect: req.endpoint.dialect(),
            },
            recache_engine::usage::Delta::hit(
                hit.meta.prompt_tokens + hit.meta.completion_tokens,
                hit.meta.cost_usd,
                true,
            ),
        );
        // A verification is a provider call: never under `only-if-cached`.
        if !req.directives.only_if_cached && sem.sample_verification(p) {
            let fresh = match state.coalescer.join(req.key, None) {
                Joined::Follower(rx, _) => rx,
                Joined::Leader(tx, guard) => {
                    let rx = tx.subscribe();
                    tokio::spawn(flight::run(req.flight(Some(p.clone())), tx, None, Some(guard)));
                    rx
                }
            };
            sem.judge_later(
                p.clone(),
                c.clone(),
                hit.body.clone(),
                flight::body_when_done(fresh),
                false,
            );
        }
        let mut resp = render_answer(
            req.endpoint,
            req.parsed,
            &hit.body,
            &hit.meta.content_type,
            CacheStatus::SemanticHit,
            c.key,
            hit.age_secs,
        );
        super::proxy::saved_headers(&mut resp, &hit);
        if let Ok(v) = HeaderValue::from_str(&format!("{:.4}", c.score)) {
            resp.headers_mut().insert("x-recache-similarity", v);
        }
        return Step::Served(resp);
    }
    sem.outcome(p, &found, false);
    Step::Continue { prepared, shadow }
}
