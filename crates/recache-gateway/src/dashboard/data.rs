//! `GET /dashboard/data`: what the page shows, built from the gateway's own
//! counters, the history ring, the backends' health checks, the job queue and
//! the last backup and drill.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::history::{self, Sample};
use crate::gateway::AppState;
use recache_storage::roles::now_ms;

/// Tenants listed, by requests.
const TOP_TENANTS: usize = 10;

fn ms(secs: Option<f64>) -> Value {
    secs.map(|s| json!((s * 1e5).round() / 100.0)).unwrap_or(Value::Null)
}

pub async fn build(s: &AppState) -> Value {
    let now = Sample::take(s);
    let m = &s.cache.metrics;
    let totals = {
        let answered = now.hits + now.semantic_hits;
        let lookups = answered + now.misses;
        json!({
            "requests": now.requests(),
            "hits": now.hits,
            "semantic_hits": now.semantic_hits,
            "misses": now.misses,
            "stale": m.stale_served.load(Ordering::Relaxed),
            "bypass": m.bypasses.load(Ordering::Relaxed),
            "coalesced": m.coalesced.load(Ordering::Relaxed),
            "errors": now.by_cache.get("ERROR").map(|b| b.count).unwrap_or(0),
            "hit_rate": (lookups > 0).then(|| answered as f64 / lookups as f64),
            "by_status": now.by_cache.iter().map(|(k, b)| (k.to_string(), json!(b.count))).collect::<serde_json::Map<_, _>>(),
        })
    };
    let samples = s.dashboard.history.with(now.clone());
    let window = history::window(&samples);
    let merged = |names: &[&str]| {
        let mut b = recache_engine::metrics::Buckets::default();
        for n in names {
            if let Some(x) = window.get(n) {
                b.add(x);
            }
        }
        b
    };
    let (hit, miss) = (merged(&["HIT", "SEMANTIC_HIT"]), merged(&["MISS"]));
    let latency = json!({
        "window_seconds": samples.first().map(|f| (now.at_ms - f.at_ms) / 1000).unwrap_or(0),
        "hit": {"count": hit.count, "p50_ms": ms(hit.quantile(0.5)), "p99_ms": ms(hit.quantile(0.99))},
        "miss": {"count": miss.count, "p50_ms": ms(miss.quantile(0.5)), "p99_ms": ms(miss.quantile(0.99))},
    });
    let split: serde_json::Map<String, Value> = window.iter().map(|(k, b)| (k.to_string(), json!(b.count))).collect();
    let money = json!({
        "usd_saved": now.usd_saved,
        "usd_spent": now.usd_spent,
        "warmer_usd_spent": m.warmer_usd_spent.get(),
        "tokens_saved": m.tokens_saved.load(Ordering::Relaxed),
        "last_outage": history::last_outage(&samples),
    });
    let (backends, warmer, (keys, limits)) = tokio::join!(backends(s), warmer(s), keys_and_limits(s));
    let ops = s.dashboard.ops.get();
    json!({
        "now_ms": now.at_ms,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "step_seconds": history::STEP.as_secs(),
        "totals": totals,
        "series": history::points(&samples),
        "split": split,
        "latency": latency,
        "money": money,
        "backends": backends,
        "warmer": warmer,
        "backup": ops.backup,
        "drill": ops.drill.map(|d| json!({
            "last": d.last, "last_pass_at_ms": d.last_pass_at_ms, "overdue": d.overdue, "error": d.error,
            "targets": s.config.drill.targets,
        })),
        "ops_read_at_ms": ops.read_at_ms,
        "tenants": tenants(s),
        "dialects": dialects(s),
        "keys": keys,
        "limits": limits,
    })
}

/// The metadata keys (digests never leave metadata) and each tenant's and
/// live key's use against each limit now (never waiting on a hung backend).
async fn keys_and_limits(s: &AppState) -> (Value, Value) {
    let (usage, keys) = crate::gateway::ops::limit_usage(s).await;
    let list: Vec<Value> = keys.iter().map(recache_ops::keys::record_json).collect();
    (Value::Array(list), json!(usage))
}

/// Answers, hit rate and money per dialect since this process started
/// (`recache report cost --by dialect` reads the same counters from metadata).
fn dialects(s: &AppState) -> Value {
    s.cache
        .usage
        .by_dialect()
        .into_iter()
        .map(|r| {
            let hits = r.hits + r.semantic_hits;
            let requests = hits + r.misses;
            json!({
                "dialect": r.dialect, "requests": requests, "hits": r.hits, "semantic_hits": r.semantic_hits,
                "misses": r.misses, "hit_rate": (requests > 0).then(|| hits as f64 / requests as f64),
                "tokens_spent": r.prompt_tokens, "tokens_saved": r.tokens_saved,
                "usd_saved": r.usd_saved, "usd_spent": r.usd_spent,
            })
        })
        .collect()
}

/// How long one round of health checks serves the pages polling the data.
const BACKENDS_TTL: Duration = Duration::from_secs(2);

/// Every backend (reused for [`BACKENDS_TTL`]): engine, up/down, check latency,
/// breaker state, settings and last transitions.
async fn backends(s: &AppState) -> Value {
    let fresh = |c: &Option<(std::time::Instant, Value)>| {
        c.as_ref()
            .filter(|(at, _)| at.elapsed() < BACKENDS_TTL)
            .map(|(_, v)| v.clone())
    };
    if let Some(v) = fresh(&s.dashboard.backends.lock().unwrap_or_else(|e| e.into_inner())) {
        return v;
    }
    let v = check_backends(s).await;
    *s.dashboard.backends.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), v.clone()));
    v
}

async fn check_backends(s: &AppState) -> Value {
    let mut out: Vec<Value> = s
        .health
        .get(&s.cache.roles)
        .await
        .iter()
        .map(|h| {
            json!({
                "role": h.role, "engine": h.engine, "status": h.status,
                "latency_ms": (h.latency_ms * 100.0).round() / 100.0,
                "version": h.info.version, "warnings": h.info.warnings, "error": h.error,
                "breaker": h.breaker,
            })
        })
        .collect();
    if let Some(sem) = &s.semantic {
        let b = sem.embedder_breaker().status();
        out.push(json!({
            "role": "embedder", "engine": "embedder",
            "status": if matches!(b.state, recache_core::breaker::BreakerState::Closed | recache_core::breaker::BreakerState::Disabled) { "up" } else { "down" },
            "latency_ms": Value::Null, "breaker": b,
        }));
    }
    let mut upstreams = Vec::new();
    for u in &s.config.upstreams {
        upstreams.push(json!({"name": u.name, "base_url": u.base_url}));
    }
    json!({"roles": out, "upstreams": upstreams})
}

/// Job counts by state, and what paused kinds wait for.
async fn warmer(s: &AppState) -> Value {
    let q = &s.recovery.queue;
    let limit = Duration::from_millis(500);
    let counts = tokio::time::timeout(limit, q.counts()).await;
    let workers = tokio::time::timeout(limit, q.workers(now_ms() - 30_000)).await;
    let mut by_state = serde_json::Map::new();
    let mut by_kind: Vec<Value> = Vec::new();
    let mut error = None;
    match counts {
        Ok(Ok(c)) => {
            for st in recache_storage::queue::JobState::ALL {
                let n: u64 = c.iter().filter(|k| k.state == st).map(|k| k.count).sum();
                by_state.insert(st.as_str().into(), json!(n));
            }
            for k in c {
                by_kind.push(json!({"kind": k.kind, "state": k.state.as_str(), "count": k.count}));
            }
        }
        Ok(Err(e)) => error = Some(e.to_string()),
        Err(_) => error = Some("the job queue did not answer within 500 ms".into()),
    }
    let mut paused = serde_json::Map::new();
    let mut live = 0;
    if let Ok(Ok(mut ws)) = workers {
        ws.retain(|w| !recache_storage::queue::worker::is_gateway(&w.owner));
        live = ws.len();
        for w in ws {
            if let Some(obj) = w.paused.as_object() {
                for (kind, backends) in obj {
                    paused.insert(kind.clone(), backends.clone());
                }
            }
        }
    }
    json!({
        "enabled": s.config.warmer.enabled,
        "by_state": by_state, "by_kind": by_kind, "paused": paused, "workers": live, "error": error,
    })
}

fn tenants(s: &AppState) -> Value {
    let mut rows: Vec<Value> = s
        .tenants
        .all()
        .into_iter()
        .filter(|t| t.usage.requests.load(Ordering::Relaxed) > 0)
        .map(|t| {
            let u = &t.usage;
            let (req, hits, misses) = (
                u.requests.load(Ordering::Relaxed),
                u.hits.load(Ordering::Relaxed),
                u.misses.load(Ordering::Relaxed),
            );
            json!({
                "name": t.name, "requests": req, "hits": hits, "misses": misses,
                "errors": u.errors.load(Ordering::Relaxed),
                "hit_rate": (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            })
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r["requests"].as_u64().unwrap_or(0)));
    rows.truncate(TOP_TENANTS);
    Value::Array(rows)
}
