//! Tenant and key limits on the request path ("Tenant controls" in
//! `ARCHITECTURE.md`): requests per minute and concurrent requests are
//! counted beside the lookup (a hit counts), and provider tokens per minute
//! read there for the headers; USD per day and month are read only before a
//! provider call (a hit is free, and pays for no spend read). Tokens and
//! spend are settled from the provider's reported usage after the call. A
//! tenant's counters and its keys' share one Redis hash slot, so one
//! pipelined round trip admits a request.
//!
//! While the counters cannot be reached, `[limits] on_counter_loss` decides:
//! `local-share` counts in this process against each limit divided by the
//! live replicas, `fail-closed` refuses (503), `fail-open` admits. Every
//! switch is logged, counted and audited.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::auth::Caller;
use recache_core::config::{CounterLoss, Limits, LimitsConfig};
use recache_core::time::{civil, month_start};
use recache_engine::cache::Cache;
use recache_engine::error::ApiError;
use recache_storage::roles::counters::{CounterOp, MemoryCounters};
use recache_storage::roles::keys::KeyRecord;
use recache_storage::roles::{now_ms, AuditEvent, Index};

mod spend;
mod usage;
pub use usage::{usage_of, LimitUse};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// A concurrency slot a crashed replica never gave back is freed after this.
const SLOT_TTL_MS: u64 = 600_000;

/// The counters a request needs, in the order they are sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Requests,
    Concurrent,
    Tokens,
    UsdDay,
    UsdMonth,
    /// 1 on the first provider call of a day, or after the counters were
    /// lost: the spend counters are then re-seeded from `usage_hourly`.
    Seed,
}

/// One counter a request needs: whose (an index into the labels), which, its limit.
#[derive(Clone)]
struct Want {
    scope: usize,
    kind: Kind,
    limit: u64,
    op: CounterOp,
}

/// The windows a request's counters are named after.
#[derive(Clone, Copy)]
struct Clock {
    now: i64,
    minute: i64,
    day: i64,
    /// Days since 1970-01-01 of this month's and the next month's first day.
    month_start: i64,
    next_month: i64,
}

impl Clock {
    fn at(now: i64) -> Self {
        let (minute, day) = (now.div_euclid(MINUTE_MS), now.div_euclid(DAY_MS));
        let (y, m) = civil(day);
        let next_month = if m == 12 {
            month_start(y + 1, 1)
        } else {
            month_start(y, m + 1)
        };
        Self {
            now,
            minute,
            day,
            month_start: month_start(y, m),
            next_month,
        }
    }

    fn minute_left_s(&self) -> u64 {
        ((self.minute + 1) * MINUTE_MS - self.now).div_euclid(1000).max(1) as u64
    }
}

/// What admitting a request decided.
#[derive(Default)]
pub struct Admission {
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(&'static str, String)>,
    /// Why the provider may not be called for this request (a hit still may be served).
    provider_block: Option<ApiError>,
    /// Counters to settle after a provider call (tokens per minute, USD per
    /// day and per month), each with where it was counted (`true`: locally).
    settle: Vec<(Kind, String, bool)>,
    /// Concurrency slots to give back when the request ends.
    release: Option<Release>,
    /// The spend counters, read only before a provider call: a hit is free.
    later: Option<Later>,
}

/// An admission begun by [`Limiter::begin`].
pub struct Pending {
    adm: Admission,
    caller: Caller,
    first: Vec<Want>,
    clock: Clock,
}

impl Pending {
    /// The counter operations to send now (`None`: nothing to count).
    pub fn ops(&self) -> Option<Vec<CounterOp>> {
        (!self.first.is_empty()).then(|| self.first.iter().map(|w| w.op.clone()).collect())
    }
}

/// The spend counters a request reads only when it needs the provider.
struct Later {
    caller: Caller,
    clock: Clock,
}

/// Gives concurrency slots back when dropped.
pub struct Release {
    limiter: Arc<Limiter>,
    names: Vec<String>,
    local: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        let ops: Vec<CounterOp> = self
            .names
            .iter()
            .map(|n| CounterOp::add_renew(n.clone(), -1, SLOT_TTL_MS))
            .collect();
        let (limiter, local) = (self.limiter.clone(), self.local);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { limiter.add(ops, local).await });
        }
    }
}

pub struct Limiter {
    cfg: LimitsConfig,
    index: Arc<dyn Index>,
    cache: Arc<Cache>,
    local: MemoryCounters,
    /// Live replicas (heartbeat rows in metadata), for `local-share`.
    pub replicas: AtomicU64,
    degraded: AtomicBool,
    /// Names the spend's seed markers (see [`plan`]).
    seed_gen: AtomicU64,
    /// The metadata keys as last listed (what `/metrics` shows while metadata is slow).
    keys_seen: std::sync::RwLock<Arc<Vec<KeyRecord>>>,
    /// Refusals by limit code, and requests admitted while the counters were out.
    pub refusals: [AtomicU64; 6],
    pub fallbacks: AtomicU64,
}

/// The codes of [`ApiError::LimitReached`], in [`Limiter::refusals`]' order.
pub const CODES: [&str; 6] = [
    "rate_limit_requests",
    "concurrency_limit",
    "rate_limit_tokens",
    "budget_day_exceeded",
    "budget_month_exceeded",
    "limits_unavailable",
];

fn refusal(code: &'static str, message: String, retry_after_s: u64) -> ApiError {
    ApiError::LimitReached {
        code,
        message,
        retry_after_s,
    }
}

/// Whether any limit of `l` is counted (the allow-lists are not).
fn counted(l: &Limits) -> bool {
    l.rpm.is_some()
        || l.tpm.is_some()
        || l.max_concurrent.is_some()
        || l.budget_usd_day.is_some()
        || l.budget_usd_month.is_some()
}

/// Which of a request's counters a plan holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Beside the lookup: requests, concurrency and tokens (what a hit
    /// answers to, or its headers show).
    Lookup,
    /// Before a provider call: the spend, and the seed marker.
    Provider,
    /// Both (a budget that also stops hits; the use `/metrics` shows).
    All,
}

/// What a refusal names: `tenant 'team-a'` (scope 0) or `key key_…` (scope 1).
fn label(caller: &Caller, scope: usize) -> String {
    match (&caller.key, scope) {
        (Some(k), 1) => format!("key {}", k.id),
        _ => format!("tenant '{}'", caller.tenant.name),
    }
}

/// Whether the tenant or the key has a budget.
fn has_budget(caller: &Caller) -> bool {
    let b = |l: &Limits| l.budget_usd_day.is_some() || l.budget_usd_month.is_some();
    b(&caller.tenant.limits) || caller.key.as_ref().is_some_and(|k| b(&k.limits))
}

/// The counters of `phase` a request needs: per scope (the tenant, then its
/// key), each counted limit's counter, named after its window under the
/// tenant's hash tag. Names are made only for the limits that are set.
/// `seed_gen` names the seed markers: it moves on when the shared counters
/// come back, so each replica re-seeds the spend once after an outage.
fn plan(caller: &Caller, clock: &Clock, phase: Phase, seed_gen: u64) -> Vec<Want> {
    let t = &caller.tenant;
    let mut scopes: Vec<(&Limits, Option<&str>)> = vec![(&t.limits, None)];
    if let Some(k) = &caller.key {
        scopes.push((&k.limits, Some(k.id.as_str())));
    }
    let (minute, day) = (clock.minute, clock.day);
    let mut out = Vec::new();
    for (i, (l, key)) in scopes.into_iter().enumerate() {
        let base = match key {
            None => format!("{{t:{}}}:t", t.id),
            Some(k) => format!("{{t:{}}}:k:{k}", t.id),
        };
        let mut want = |kind: Kind, limit: Option<u64>, name: &dyn Fn() -> String| {
            let spend = matches!(kind, Kind::UsdDay | Kind::UsdMonth | Kind::Seed);
            let wanted = match phase {
                Phase::Lookup => !spend,
                Phase::Provider => spend,
                Phase::All => true,
            };
            let Some(limit) = limit.filter(|_| wanted) else { return };
            let name = name();
            let op = match kind {
                Kind::Requests => CounterOp::add(name, 1, 2 * MINUTE_MS as u64),
                Kind::Concurrent => CounterOp::add_renew(name, 1, SLOT_TTL_MS),
                Kind::Seed => CounterOp::add(name, 1, 2 * DAY_MS as u64),
                Kind::Tokens | Kind::UsdDay | Kind::UsdMonth => CounterOp::read(name),
            };
            out.push(Want {
                scope: i,
                kind,
                limit,
                op,
            });
        };
        want(Kind::Requests, l.rpm, &|| format!("{base}:rpm:{minute}"));
        want(Kind::Concurrent, l.max_concurrent, &|| format!("{base}:conc"));
        want(Kind::Tokens, l.tpm, &|| format!("{base}:tpm:{minute}"));
        let usd = |b: Option<f64>| b.map(|x| micro_usd(x).max(0) as u64);
        want(Kind::UsdDay, usd(l.budget_usd_day), &|| format!("{base}:usd_day:{day}"));
        want(Kind::UsdMonth, usd(l.budget_usd_month), &|| {
            let (y, m) = civil(day);
            format!("{base}:usd_month:{y}{m:02}")
        });
        let budgets = l.budget_usd_day.is_some() || l.budget_usd_month.is_some();
        want(Kind::Seed, budgets.then_some(u64::MAX), &|| {
            format!("{base}:seeded:{day}:{seed_gen}")
        });
    }
    out
}

fn micro_usd(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

impl Limiter {
    pub fn new(cfg: LimitsConfig, index: Arc<dyn Index>, cache: Arc<Cache>) -> Self {
        Self {
            cfg,
            index,
            cache,
            local: MemoryCounters::default(),
            replicas: AtomicU64::new(1),
            degraded: AtomicBool::new(false),
            seed_gen: AtomicU64::new(0),
            keys_seen: Default::default(),
            refusals: Default::default(),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// The model and upstream allow-lists of the tenant and the key.
    pub fn check_allowed(caller: &Caller, model: &str, upstream: &str) -> Result<(), ApiError> {
        let t = &caller.tenant;
        // Named only on a refusal: every request passes through here.
        let scopes = std::iter::once((None, &t.limits)).chain(caller.key.iter().map(|k| (Some(k), &k.limits)));
        for (key, l) in scopes {
            let who = || match key {
                Some(k) => format!("key {}", k.id),
                None => format!("tenant '{}'", t.name),
            };
            if !l.allows_model(model) {
                return Err(ApiError::NotAllowed(format!(
                    "model '{model}' is not allowed for {}",
                    who()
                )));
            }
            if !l.allows_upstream(upstream) {
                return Err(ApiError::NotAllowed(format!(
                    "upstream '{upstream}' (model '{model}') is not allowed for {}",
                    who()
                )));
            }
        }
        Ok(())
    }

    /// Adds to the shared counters, or to this process's when asked (`local`).
    async fn add(&self, ops: Vec<CounterOp>, local: bool) -> Result<Vec<i64>, ()> {
        if local {
            return Ok(self.local.add(&ops));
        }
        self.index.counters_add(ops).await.map_err(|e| {
            tracing::debug!(error = %e, "limits: the shared counters did not answer");
        })
    }

    /// Logs, counts and audits a switch to or from counting without the shared counters.
    fn switched(&self, degraded: bool) {
        if self.degraded.swap(degraded, Ordering::Relaxed) == degraded {
            return;
        }
        let mode = self.cfg.on_counter_loss.as_str();
        if degraded {
            tracing::warn!(
                mode,
                "limits: the shared counters are unreachable; enforcing by [limits] on_counter_loss"
            );
        } else {
            // What was spent meanwhile reached usage_hourly, not the shared
            // counters: each tenant's spend is re-seeded once more.
            self.seed_gen.fetch_add(1, Ordering::Relaxed);
            tracing::info!("limits: the shared counters answer again");
        }
        let cache = self.cache.clone();
        let action = if degraded {
            "limits.counters_lost"
        } else {
            "limits.counters_back"
        };
        tokio::spawn(async move {
            cache
                .audit(AuditEvent {
                    id: format!("{action}-{}", now_ms()),
                    at_ms: now_ms(),
                    tenant: None,
                    actor: "gateway".into(),
                    action: action.into(),
                    cache_key: None,
                    detail: json!({"on_counter_loss": mode}),
                })
                .await;
        });
    }

    /// Counts a request against its tenant's and key's limits: requests per
    /// minute and concurrency now (a hit counts), tokens per minute read now
    /// (for the headers); the spend only in [`Limiter::before_provider`].
    pub async fn admit(self: &Arc<Self>, caller: &Caller) -> Result<Admission, ApiError> {
        let Some(p) = self.begin(caller) else {
            return Ok(Admission::default());
        };
        let shared = match p.ops() {
            Some(ops) => self.index.counters_add(ops).await,
            None => Ok(Vec::new()),
        };
        self.finish(p, shared).await
    }

    /// An admission begun: what to count, for the caller to send (with its
    /// lookup, [`Pending::ops`]) and hand back to [`Limiter::finish`].
    /// `None`: neither the tenant nor the key has a counted limit.
    pub fn begin(&self, caller: &Caller) -> Option<Pending> {
        if !counted(&caller.tenant.limits) && !caller.key.as_ref().is_some_and(|k| counted(&k.limits)) {
            return None;
        }
        let clock = Clock::at(now_ms());
        let spend_first = !self.cfg.serve_hits_over_budget;
        let phase = if spend_first { Phase::All } else { Phase::Lookup };
        let first = plan(caller, &clock, phase, self.seed_gen.load(Ordering::Relaxed));
        let mut adm = Admission::default();
        if !spend_first && has_budget(caller) {
            adm.later = Some(Later {
                caller: caller.clone(),
                clock,
            });
        }
        Some(Pending {
            adm,
            caller: caller.clone(),
            first,
            clock,
        })
    }

    /// Ends an admission with what the shared counters answered to
    /// [`Pending::ops`] (`Err`: they could not be reached).
    pub async fn finish<E: std::fmt::Display>(
        self: &Arc<Self>,
        p: Pending,
        shared: Result<Vec<i64>, E>,
    ) -> Result<Admission, ApiError> {
        let Pending {
            mut adm,
            caller,
            first,
            clock,
        } = p;
        if first.is_empty() {
            return Ok(adm);
        }
        let shared = shared.map_err(|e| {
            tracing::debug!(error = %e, "limits: the shared counters did not answer");
        });
        let Some((mut values, local)) = self.or_fall_back(&first, true, shared)? else {
            return Ok(adm);
        };
        self.reseed_if_due(&caller.tenant.id, &clock, &first, &mut values, local)
            .await;
        let refused = self.judge(&mut adm, &caller, &first, &values, local, &clock);
        if let Some(e) = refused {
            // A refused request takes back what it counted.
            let undo: Vec<CounterOp> = first
                .iter()
                .filter(|w| w.kind == Kind::Requests)
                .map(|w| CounterOp::add(w.op.name.clone(), -1, 2 * MINUTE_MS as u64))
                .collect();
            let me = self.clone();
            tokio::spawn(async move { me.add(undo, local).await });
            return Err(self.count(e));
        }
        if !self.cfg.serve_hits_over_budget {
            if let Some(e) = adm.provider_block.take() {
                return Err(self.count(e));
            }
        }
        Ok(adm)
    }

    /// Before a provider call: the spend counters read (re-seeded on the
    /// day's first call), and a 429 when a token or spend limit is reached.
    pub async fn before_provider(self: &Arc<Self>, adm: &mut Admission) -> Result<(), ApiError> {
        if let Some(Later { caller, clock }) = adm.later.take() {
            let wants = plan(&caller, &clock, Phase::Provider, self.seed_gen.load(Ordering::Relaxed));
            if let Some((mut values, local)) = self.count_or_fall_back(&wants, false).await? {
                self.reseed_if_due(&caller.tenant.id, &clock, &wants, &mut values, local)
                    .await;
                self.judge(adm, &caller, &wants, &values, local, &clock);
            }
        }
        match adm.provider_block.take() {
            Some(e) => Err(self.count(e)),
            None => Ok(()),
        }
    }

    /// Weighs counted values against their limits (each divided by the live
    /// replicas when counted locally): the headers, the counters to settle,
    /// the slots to give back and `provider_block` onto `adm`; a refusal of
    /// the request itself (requests per minute, concurrency) returned.
    fn judge(
        self: &Arc<Self>,
        adm: &mut Admission,
        caller: &Caller,
        wants: &[Want],
        values: &[i64],
        local: bool,
        clock: &Clock,
    ) -> Option<ApiError> {
        let share = if local {
            self.replicas.load(Ordering::Relaxed).max(1)
        } else {
            1
        };
        let minute_left_s = clock.minute_left_s();
        let mut refused: Option<ApiError> = None;
        let mut headers_req: Option<(u64, i64)> = None;
        let mut headers_tok: Option<(u64, i64)> = None;
        let mut slots = Vec::new();
        let tighter = |h: Option<(u64, i64)>, limit: u64, left: i64| {
            Some(h.map_or((limit, left), |(l, r)| (l.min(limit), r.min(left))))
        };
        for (w, &v) in wants.iter().zip(values) {
            let name = &w.op.name;
            // Named only on a refusal: every admission passes through here.
            let label = || label(caller, w.scope);
            let limit = (w.limit / share).max(1);
            let left = limit as i64 - v;
            match w.kind {
                Kind::Requests => {
                    headers_req = tighter(headers_req, limit, left);
                    if v > limit as i64 && refused.is_none() {
                        refused = Some(refusal(
                            CODES[0],
                            format!("rate limit reached: {limit} requests per minute for {} (rate_limit_requests); retry in {minute_left_s} s", label()),
                            minute_left_s,
                        ));
                    }
                }
                Kind::Concurrent => {
                    slots.push(name.clone());
                    if v > limit as i64 && refused.is_none() {
                        refused = Some(refusal(
                            CODES[1],
                            format!("{limit} requests at once for {} already (concurrency_limit)", label()),
                            1,
                        ));
                    }
                }
                Kind::Tokens => {
                    headers_tok = tighter(headers_tok, limit, left);
                    adm.settle.push((Kind::Tokens, name.clone(), local));
                    if v >= limit as i64 && adm.provider_block.is_none() {
                        adm.provider_block = Some(refusal(
                            CODES[2],
                            format!("rate limit reached: {limit} provider tokens per minute for {} (rate_limit_tokens); retry in {minute_left_s} s", label()),
                            minute_left_s,
                        ));
                    }
                }
                Kind::Seed => {}
                Kind::UsdDay | Kind::UsdMonth => {
                    adm.settle.push((w.kind, name.clone(), local));
                    if v >= limit as i64 && adm.provider_block.is_none() {
                        let (code, what, retry) = if w.kind == Kind::UsdDay {
                            (CODES[3], "day", ((clock.day + 1) * DAY_MS - clock.now) / 1000)
                        } else {
                            (CODES[4], "month", (clock.next_month * DAY_MS - clock.now) / 1000)
                        };
                        adm.provider_block = Some(refusal(
                            code,
                            format!(
                                "budget reached: ${:.2} per {what} for {} ({code}); cached answers are still served",
                                limit as f64 / 1e6,
                                label()
                            ),
                            retry.max(1) as u64,
                        ));
                    }
                }
            }
        }
        if !slots.is_empty() {
            adm.release = Some(Release {
                limiter: self.clone(),
                names: slots,
                local,
            });
        }
        if let Some((l, r)) = headers_req {
            adm.headers.push(("x-ratelimit-limit-requests", l.to_string()));
            adm.headers
                .push(("x-ratelimit-remaining-requests", r.max(0).to_string()));
            adm.headers
                .push(("x-ratelimit-reset-requests", format!("{minute_left_s}s")));
        }
        if let Some((l, r)) = headers_tok {
            adm.headers.push(("x-ratelimit-limit-tokens", l.to_string()));
            adm.headers.push(("x-ratelimit-remaining-tokens", r.max(0).to_string()));
            adm.headers
                .push(("x-ratelimit-reset-tokens", format!("{minute_left_s}s")));
        }
        refused
    }

    /// The counters' values from the shared counters, or, while they are out,
    /// by `on_counter_loss`: this process's (`true`: counted locally), none
    /// (fail-open: admit), or a 503 (fail-closed).
    /// `admitting`: this is a request's admission (counted as a fallback
    /// admission while the counters are out), not its spend check.
    async fn count_or_fall_back(&self, wants: &[Want], admitting: bool) -> Result<Option<(Vec<i64>, bool)>, ApiError> {
        let ops: Vec<CounterOp> = wants.iter().map(|w| w.op.clone()).collect();
        let shared = self.add(ops, false).await;
        self.or_fall_back(wants, admitting, shared)
    }

    /// What the shared counters answered, or, when they could not be
    /// reached, what `on_counter_loss` says (see [`Limiter::count_or_fall_back`]).
    fn or_fall_back(
        &self,
        wants: &[Want],
        admitting: bool,
        shared: Result<Vec<i64>, ()>,
    ) -> Result<Option<(Vec<i64>, bool)>, ApiError> {
        match shared {
            Ok(v) => {
                self.switched(false);
                if self.cfg.on_counter_loss == CounterLoss::LocalShare {
                    self.shadow(wants, &v);
                }
                Ok(Some((v, false)))
            }
            Err(()) => {
                self.switched(true);
                if admitting {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                match self.cfg.on_counter_loss {
                    CounterLoss::FailOpen => Ok(None),
                    CounterLoss::FailClosed => {
                        self.refusals[5].fetch_add(1, Ordering::Relaxed);
                        Err(ApiError::LimitsUnavailable)
                    }
                    CounterLoss::LocalShare => {
                        let ops: Vec<CounterOp> = wants.iter().map(|w| w.op.clone()).collect();
                        Ok(Some((self.local.add(&ops), true)))
                    }
                }
            }
        }
    }

    /// Keeps the metadata keys as listed now.
    pub fn remember_keys(&self, keys: Vec<KeyRecord>) {
        *self.keys_seen.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// The metadata keys as last listed.
    pub fn last_keys(&self) -> Vec<KeyRecord> {
        self.keys_seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .clone()
    }

    /// Each counted limit's use now (see [`usage_of`]), read from where
    /// admissions count: the shared counters, or this process's while they are out.
    pub async fn usage(&self, tenants: &[Arc<super::auth::Tenant>], keys: &[KeyRecord]) -> Vec<LimitUse> {
        let local = self.degraded.load(Ordering::Relaxed);
        usage_of(tenants, keys, |ops| self.add(ops, local)).await
    }

    /// Keeps this replica's share of what the shared counters answered in its
    /// own: counting here after they are lost starts from it, so a loss
    /// hands out no fresh window (requests and tokens this minute, the
    /// spend). Concurrency is not copied: slots in flight end on their own.
    fn shadow(&self, wants: &[Want], values: &[i64]) {
        let share = self.replicas.load(Ordering::Relaxed).max(1) as i64;
        self.local.set(wants.iter().zip(values).filter_map(|(w, &v)| {
            let (v, ttl) = match w.kind {
                Kind::Requests | Kind::Tokens => ((v + share - 1) / share, 2 * MINUTE_MS),
                Kind::UsdDay => ((v + share - 1) / share, 2 * DAY_MS),
                Kind::UsdMonth => ((v + share - 1) / share, 32 * DAY_MS),
                Kind::Seed => (v, 2 * DAY_MS),
                Kind::Concurrent => return None,
            };
            Some((w.op.name.as_str(), v, ttl as u64))
        }));
    }

    /// Counts a refusal by its code.
    pub fn count(&self, e: ApiError) -> ApiError {
        if let ApiError::LimitReached { code, .. } = &e {
            if let Some(i) = CODES.iter().position(|c| c == code) {
                self.refusals[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_usd_rounds() {
        assert_eq!(micro_usd(0.000_001_4), 1);
    }
}
