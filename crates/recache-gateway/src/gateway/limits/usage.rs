//! Use against each limit now, for `/metrics`, the dashboard and `recache
//! report cost` ("Tenant controls" in `ARCHITECTURE.md`).

use std::sync::Arc;

use super::{counted, plan, Caller, Clock, Kind, Phase};
use recache_storage::roles::counters::CounterOp;
use recache_storage::roles::keys::KeyRecord;
use recache_storage::roles::now_ms;

/// One limit's use now (see [`Limiter::usage`]).
#[derive(serde::Serialize, Debug)]
pub struct LimitUse {
    pub tenant: String,
    /// The key's id; empty for the tenant's own limit.
    pub key: String,
    /// `requests_per_minute`, `concurrent_requests`, `tokens_per_minute`, `usd_per_day`, `usd_per_month`.
    pub limit: &'static str,
    /// This minute's, day's or month's use (USD for budgets).
    pub used: f64,
    pub max: f64,
}

/// Each counted limit's use now, per tenant and per live key of `keys`,
/// from the counters `read` answers: what `/metrics`, the dashboard and
/// `recache report cost` show. One read per tenant (its keys' counters share
/// its hash slot); a tenant whose read fails is left out.
pub async fn usage_of<F, Fut>(
    tenants: &[Arc<crate::gateway::auth::Tenant>],
    keys: &[KeyRecord],
    read: F,
) -> Vec<LimitUse>
where
    F: Fn(Vec<CounterOp>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<i64>, ()>>,
{
    let clock = Clock::at(now_ms());
    let mut out = Vec::new();
    for t in tenants {
        let mut callers = vec![(
            Caller {
                tenant: t.clone(),
                key: None,
            },
            0,
        )];
        let live = keys
            .iter()
            .filter(|k| k.tenant == t.name && k.valid_at(clock.now) && counted(&k.limits));
        for k in live {
            let key = Some(Arc::new(k.clone()));
            callers.push((Caller { tenant: t.clone(), key }, 1));
        }
        let mut wants = Vec::new();
        for (caller, scope) in &callers {
            let id = caller.key.as_ref().map(|k| k.id.clone()).unwrap_or_default();
            let mine = plan(caller, &clock, Phase::All, 0)
                .into_iter()
                .filter(|w| w.scope == *scope && w.kind != Kind::Seed);
            wants.extend(mine.map(|w| (id.clone(), w)));
        }
        if wants.is_empty() {
            continue;
        }
        let ops = wants.iter().map(|(_, w)| CounterOp::read(w.op.name.clone())).collect();
        let Ok(values) = read(ops).await else {
            continue;
        };
        for ((key, w), v) in wants.into_iter().zip(values) {
            let (limit, scale) = match w.kind {
                Kind::Requests => ("requests_per_minute", 1.0),
                Kind::Concurrent => ("concurrent_requests", 1.0),
                Kind::Tokens => ("tokens_per_minute", 1.0),
                Kind::UsdDay => ("usd_per_day", 1e6),
                _ => ("usd_per_month", 1e6),
            };
            out.push(LimitUse {
                tenant: t.name.clone(),
                key,
                limit,
                used: v.max(0) as f64 / scale,
                max: w.limit as f64 / scale,
            });
        }
    }
    out
}
