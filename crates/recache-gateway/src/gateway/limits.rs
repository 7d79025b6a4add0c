//! Tenant and key limits on the request path ("Tenant controls" in
//! `ARCHITECTURE.md`): requests per minute and concurrent requests are
//! counted before the lookup (a hit counts); provider tokens per minute and
//! USD per day and month are read then too, but only stop a request that
//! needs the provider (a hit is free), and are settled from the provider's
//! reported usage after the call. A tenant's counters and its keys' share one
//! Redis hash slot, so one pipelined round trip admits a request.
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
use recache_engine::cache::Cache;
use recache_engine::error::ApiError;
use recache_storage::roles::counters::{CounterOp, MemoryCounters};
use recache_storage::roles::{now_ms, AuditEvent, Index};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// A concurrency slot a crashed replica never gave back is freed after this.
const SLOT_TTL_MS: u64 = 600_000;

/// Limits of one scope: the tenant's, or one key's.
struct Scope<'a> {
    /// `tenant team-a`, `key key_…`: what a refusal names.
    label: String,
    /// Counter names start with this (the tenant's hash tag first).
    base: String,
    limits: &'a Limits,
}

/// The counters a request needs, in the order they are sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Requests,
    Concurrent,
    Tokens,
    UsdDay,
    UsdMonth,
    /// 1 on the first request of a day, or after the counters were lost:
    /// the spend counters are then re-seeded from `usage_hourly`.
    Seed,
}

/// What admitting a request decided.
#[derive(Default)]
pub struct Admission {
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(&'static str, String)>,
    /// Why the provider may not be called for this request (a hit still may be served).
    pub provider_block: Option<ApiError>,
    /// Counter names to settle after a provider call: (tokens per minute, USD per day, USD per month).
    settle: Vec<(Kind, String)>,
    /// Concurrency slots to give back when the request ends.
    release: Option<Release>,
    /// Counted in this process (the shared counters were out).
    local: bool,
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

/// The counters a request needs: per scope (the tenant, then its key),
/// each counted limit's counter, and the time windows they are named after.
struct Plan {
    /// What a refusal names, per scope.
    labels: Vec<String>,
    ops: Vec<CounterOp>,
    /// Per op: its scope, its kind, its limit.
    wanted: Vec<(usize, Kind, u64)>,
    minute: i64,
    day: i64,
    month: (i64, i64),
    /// Days since 1970-01-01 of the next month's first day.
    next_month: i64,
}

fn plan(caller: &Caller, now: i64) -> Plan {
    let t = &caller.tenant;
    let tag = format!("{{t:{}}}", t.id);
    let mut scopes = vec![Scope {
        label: format!("tenant '{}'", t.name),
        base: format!("{tag}:t"),
        limits: &t.limits,
    }];
    if let Some(k) = &caller.key {
        scopes.push(Scope {
            label: format!("key {}", k.id),
            base: format!("{tag}:k:{}", k.id),
            limits: &k.limits,
        });
    }
    let (minute, day) = (now.div_euclid(MINUTE_MS), now.div_euclid(DAY_MS));
    let (y, m) = civil(day);
    let next_month = if m == 12 {
        month_start(y + 1, 1)
    } else {
        month_start(y, m + 1)
    };
    let mut ops = Vec::new();
    let mut wanted: Vec<(usize, Kind, u64)> = Vec::new();
    for (i, s) in scopes.iter().enumerate() {
        let l = s.limits;
        let mut want = |kind, name: String, limit: Option<u64>| {
            if let Some(limit) = limit {
                ops.push(match kind {
                    Kind::Requests => CounterOp::add(name, 1, 2 * MINUTE_MS as u64),
                    Kind::Concurrent => CounterOp::add_renew(name, 1, SLOT_TTL_MS),
                    Kind::Seed => CounterOp::add(name, 1, 2 * DAY_MS as u64),
                    Kind::Tokens | Kind::UsdDay | Kind::UsdMonth => CounterOp::read(name),
                });
                wanted.push((i, kind, limit));
            }
        };
        want(Kind::Requests, format!("{}:rpm:{minute}", s.base), l.rpm);
        want(Kind::Concurrent, format!("{}:conc", s.base), l.max_concurrent);
        want(Kind::Tokens, format!("{}:tpm:{minute}", s.base), l.tpm);
        let usd = |b: Option<f64>| b.map(|x| micro_usd(x).max(0) as u64);
        want(Kind::UsdDay, format!("{}:usd_day:{day}", s.base), usd(l.budget_usd_day));
        want(
            Kind::UsdMonth,
            format!("{}:usd_month:{y}{m:02}", s.base),
            usd(l.budget_usd_month),
        );
        let budgets = l.budget_usd_day.is_some() || l.budget_usd_month.is_some();
        want(
            Kind::Seed,
            format!("{}:seeded:{day}", s.base),
            budgets.then_some(u64::MAX),
        );
    }
    Plan {
        labels: scopes.into_iter().map(|s| s.label).collect(),
        ops,
        wanted,
        minute,
        day,
        month: (y, m),
        next_month,
    }
}

/// Days since 1970-01-01 to (year, month) (proleptic Gregorian, UTC).
fn civil(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// Days since 1970-01-01 of the first day of (year, month).
fn month_start(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    /// Counts a request against its tenant's and key's limits.
    pub async fn admit(self: &Arc<Self>, caller: &Caller) -> Result<Admission, ApiError> {
        let counted = |l: &Limits| {
            l.rpm.is_some()
                || l.tpm.is_some()
                || l.max_concurrent.is_some()
                || l.budget_usd_day.is_some()
                || l.budget_usd_month.is_some()
        };
        if !counted(&caller.tenant.limits) && !caller.key.as_ref().is_some_and(|k| counted(&k.limits)) {
            return Ok(Admission::default());
        }
        let now = now_ms();
        let Plan {
            labels,
            ops,
            wanted,
            minute,
            day,
            month: (y, m),
            next_month,
        } = plan(caller, now);
        if ops.is_empty() {
            return Ok(Admission::default());
        }
        let names: Vec<String> = ops.iter().map(|o| o.name.clone()).collect();
        let Some((mut values, local)) = self.count_or_fall_back(&ops).await? else {
            return Ok(Admission::default());
        };
        if wanted
            .iter()
            .zip(&values)
            .any(|((_, k, _), v)| *k == Kind::Seed && *v == 1)
        {
            let month_ms = month_start(y, m) * DAY_MS;
            self.reseed(
                &caller.tenant.id,
                (day * DAY_MS, month_ms),
                &wanted,
                &names,
                &mut values,
                local,
            )
            .await;
        }
        let share = if local {
            self.replicas.load(Ordering::Relaxed).max(1)
        } else {
            1
        };
        let mut adm = Admission {
            local,
            ..Admission::default()
        };
        let minute_left_s = ((minute + 1) * MINUTE_MS - now).div_euclid(1000).max(1) as u64;
        let mut refused: Option<ApiError> = None;
        let mut headers_req: Option<(u64, i64)> = None;
        let mut headers_tok: Option<(u64, i64)> = None;
        let mut slots = Vec::new();
        for (j, (i, kind, limit)) in wanted.iter().enumerate() {
            let (v, name, label) = (values[j], &names[j], &labels[*i]);
            let limit = (*limit / share).max(1);
            let left = limit as i64 - v;
            match kind {
                Kind::Requests => {
                    headers_req = Some(headers_req.map_or((limit, left), |(l, r)| (l.min(limit), r.min(left))));
                    if v > limit as i64 && refused.is_none() {
                        refused = Some(refusal(
                            CODES[0],
                            format!("rate limit reached: {limit} requests per minute for {label} (rate_limit_requests); retry in {minute_left_s} s"),
                            minute_left_s,
                        ));
                    }
                }
                Kind::Concurrent => {
                    slots.push(name.clone());
                    if v > limit as i64 && refused.is_none() {
                        refused = Some(refusal(
                            CODES[1],
                            format!("{limit} requests at once for {label} already (concurrency_limit)"),
                            1,
                        ));
                    }
                }
                Kind::Tokens => {
                    headers_tok = Some(headers_tok.map_or((limit, left), |(l, r)| (l.min(limit), r.min(left))));
                    adm.settle.push((Kind::Tokens, name.clone()));
                    if v >= limit as i64 && adm.provider_block.is_none() {
                        adm.provider_block = Some(refusal(
                            CODES[2],
                            format!("rate limit reached: {limit} provider tokens per minute for {label} (rate_limit_tokens); retry in {minute_left_s} s"),
                            minute_left_s,
                        ));
                    }
                }
                Kind::Seed => {}
                Kind::UsdDay | Kind::UsdMonth => {
                    adm.settle.push((*kind, name.clone()));
                    if v >= limit as i64 && adm.provider_block.is_none() {
                        let (code, what, retry) = if *kind == Kind::UsdDay {
                            (CODES[3], "day", ((day + 1) * DAY_MS - now) / 1000)
                        } else {
                            (CODES[4], "month", (next_month * DAY_MS - now) / 1000)
                        };
                        adm.provider_block = Some(refusal(
                            code,
                            format!("budget reached: ${:.2} per {what} for {label} ({code}); cached answers are still served", limit as f64 / 1e6),
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
        if let Some(e) = refused {
            // A refused request takes back what it counted.
            let undo: Vec<CounterOp> = wanted
                .iter()
                .enumerate()
                .filter(|(_, (_, k, _))| *k == Kind::Requests)
                .map(|(j, _)| CounterOp::add(names[j].clone(), -1, 2 * MINUTE_MS as u64))
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

    /// Raises the spend counters to what metadata's `usage_hourly` says the
    /// tenant spent since the day's and the month's start (`from`), so a lost
    /// counter (a Redis flush, a new replica counting locally) never hands
    /// out a fresh budget. A key's budget is seeded with its tenant's spend:
    /// usage is not kept per key, and more is the safe side. When metadata
    /// cannot answer, the marker is taken back and the next request tries again.
    async fn reseed(
        &self,
        tenant_id: &str,
        from: (i64, i64),
        wanted: &[(usize, Kind, u64)],
        names: &[String],
        values: &mut [i64],
        local: bool,
    ) {
        let seeds: Vec<usize> = wanted
            .iter()
            .enumerate()
            .filter(|(j, (_, k, _))| *k == Kind::Seed && values[*j] == 1)
            .map(|(j, _)| j)
            .collect();
        let rows = match self.cache.roles.metadata.usage_since(from.1.min(from.0)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, tenant = tenant_id, "limits: spend not re-seeded (metadata); retried on the next request");
                let undo = seeds
                    .iter()
                    .map(|j| CounterOp::add(names[*j].clone(), -1, 2 * DAY_MS as u64))
                    .collect();
                let _ = self.add(undo, local).await;
                return;
            }
        };
        let spent = |since: i64| -> i64 {
            micro_usd(
                rows.iter()
                    .filter(|r| r.tenant == tenant_id && r.hour_ms >= since)
                    .map(|r| r.usd_spent)
                    .sum(),
            )
        };
        let (day, month) = (spent(from.0), spent(from.1));
        let scopes: Vec<usize> = seeds.iter().map(|j| wanted[*j].0).collect();
        let mut ops = Vec::new();
        for (j, (i, kind, _)) in wanted.iter().enumerate() {
            let target = match kind {
                Kind::UsdDay if scopes.contains(i) => day,
                Kind::UsdMonth if scopes.contains(i) => month,
                _ => continue,
            };
            let short = target - values[j];
            if short > 0 {
                values[j] += short;
                let ttl = if *kind == Kind::UsdDay { 2 * DAY_MS } else { 32 * DAY_MS };
                ops.push(CounterOp::add(names[j].clone(), short, ttl as u64));
            }
        }
        if !ops.is_empty() {
            tracing::info!(
                tenant = tenant_id,
                spent_day_usd = day as f64 / 1e6,
                spent_month_usd = month as f64 / 1e6,
                "limits: spend counters re-seeded from usage_hourly"
            );
            let _ = self.add(ops, local).await;
        }
    }

    /// The counters' values from the shared counters, or, while they are out,
    /// by `on_counter_loss`: this process's (`true`: counted locally), none
    /// (fail-open: admit), or a 503 (fail-closed).
    async fn count_or_fall_back(&self, ops: &[CounterOp]) -> Result<Option<(Vec<i64>, bool)>, ApiError> {
        match self.add(ops.to_vec(), false).await {
            Ok(v) => {
                self.switched(false);
                Ok(Some((v, false)))
            }
            Err(()) => {
                self.switched(true);
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                match self.cfg.on_counter_loss {
                    CounterLoss::FailOpen => Ok(None),
                    CounterLoss::FailClosed => {
                        self.refusals[5].fetch_add(1, Ordering::Relaxed);
                        Err(ApiError::LimitsUnavailable)
                    }
                    CounterLoss::LocalShare => Ok(Some((self.local.add(ops), true))),
                }
            }
        }
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

    /// When the provider's answer is complete: its tokens and cost onto the
    /// counters, then the concurrency slots given back (an answer that never
    /// completes settles nothing and gives them back).
    pub fn settle_when_done(
        self: &Arc<Self>,
        adm: &mut Admission,
        done: tokio::sync::oneshot::Receiver<bytes::Bytes>,
        endpoint: recache_core::endpoint::Endpoint,
        model: String,
        config: Arc<recache_core::config::Config>,
    ) {
        let release = adm.release.take();
        let (names, local) = (std::mem::take(&mut adm.settle), adm.local);
        if names.is_empty() && release.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Ok(body) = done.await {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let t = recache_core::endpoint::Tokens::of(endpoint, &json);
                let usd = t.cost_usd(&config.prices, &model);
                me.settle(&names, local, t.prompt() + t.output, usd).await;
            }
            drop(release);
        });
    }

    /// A provider call's tokens and cost onto the counters.
    async fn settle(&self, names: &[(Kind, String)], local: bool, tokens: u64, usd: f64) {
        let ops: Vec<CounterOp> = names
            .iter()
            .map(|(kind, name)| match kind {
                Kind::Tokens => CounterOp::add(name.clone(), tokens as i64, 2 * MINUTE_MS as u64),
                Kind::UsdDay => CounterOp::add(name.clone(), micro_usd(usd), 2 * DAY_MS as u64),
                _ => CounterOp::add(name.clone(), micro_usd(usd), 32 * DAY_MS as u64),
            })
            .filter(|o| !matches!(o.kind, recache_storage::roles::counters::CounterKind::Add { by: 0, .. }))
            .collect();
        if ops.is_empty() {
            return;
        }
        if self.add(ops.clone(), local).await.is_err() && self.cfg.on_counter_loss == CounterLoss::LocalShare {
            self.local.add(&ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        // 2026-12-06 is day 20793 of December 2026, which starts on day 20788; January 2027 on 20819.
        assert_eq!(civil(20_793), (2026, 12));
        assert_eq!(month_start(2026, 12), 20_788);
        assert_eq!(month_start(2027, 1), 20_819);
        assert_eq!(month_start(2024, 2), 19_754);
        assert_eq!(civil(0), (1970, 1));
        assert_eq!(civil(month_start(2024, 2) + 28), (2024, 2), "29 February 2024");
        assert_eq!(micro_usd(0.000_001_4), 1);
    }
}
