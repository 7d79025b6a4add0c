//! The spend side of the limits ("Tenant controls" in `ARCHITECTURE.md`):
//! re-seeding the spend counters from `usage_hourly`, and settling a
//! provider call's tokens and cost onto the counters after its answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{micro_usd, Admission, Clock, Kind, Limiter, Want, DAY_MS, MINUTE_MS};
use recache_core::config::CounterLoss;
use recache_storage::roles::counters::CounterOp;

impl Limiter {
    /// When a seed marker answered 1 (the day's first count, or the counters
    /// were lost), the spend counters are raised to what `usage_hourly` says.
    pub(super) async fn reseed_if_due(
        &self,
        tenant_id: &str,
        clock: &Clock,
        wants: &[Want],
        values: &mut [i64],
        local: bool,
    ) {
        if wants
            .iter()
            .zip(values.iter())
            .any(|(w, v)| w.kind == Kind::Seed && *v == 1)
        {
            let from = (clock.day * DAY_MS, clock.month_start * DAY_MS);
            self.reseed(tenant_id, from, wants, values, local).await;
        }
    }

    /// Raises the spend counters to what metadata's `usage_hourly` says the
    /// tenant spent since the day's and the month's start (`from`), so a lost
    /// counter (a Redis flush, a new replica counting locally) never hands
    /// out a fresh budget. A key's budget is seeded with its tenant's spend:
    /// usage is not kept per key, and more is the safe side. When metadata
    /// cannot answer, the marker is taken back and the next request tries again.
    async fn reseed(&self, tenant_id: &str, from: (i64, i64), wants: &[Want], values: &mut [i64], local: bool) {
        let seeds: Vec<usize> = (0..wants.len())
            .filter(|j| wants[*j].kind == Kind::Seed && values[*j] == 1)
            .collect();
        let rows = match self.cache.roles.metadata.usage_since(from.1.min(from.0)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, tenant = tenant_id, "limits: spend not re-seeded (metadata); retried on the next request");
                let undo = seeds
                    .iter()
                    .map(|j| CounterOp::add(wants[*j].op.name.clone(), -1, 2 * DAY_MS as u64))
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
        // Counting locally, this replica holds its share of the limit, and of the spend.
        let share = if local {
            self.replicas.load(Ordering::Relaxed).max(1) as i64
        } else {
            1
        };
        let (day, month) = (spent(from.0) / share, spent(from.1) / share);
        let scopes: Vec<usize> = seeds.iter().map(|j| wants[*j].scope).collect();
        let mut ops = Vec::new();
        for (j, w) in wants.iter().enumerate() {
            let target = match w.kind {
                Kind::UsdDay if scopes.contains(&w.scope) => day,
                Kind::UsdMonth if scopes.contains(&w.scope) => month,
                _ => continue,
            };
            let short = target - values[j];
            if short > 0 {
                values[j] += short;
                let ttl = if w.kind == Kind::UsdDay {
                    2 * DAY_MS
                } else {
                    32 * DAY_MS
                };
                ops.push(CounterOp::add(w.op.name.clone(), short, ttl as u64));
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
        let names = std::mem::take(&mut adm.settle);
        if names.is_empty() && release.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Ok(body) = done.await {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let t = recache_core::endpoint::Tokens::of(endpoint, &json);
                let usd = t.cost_usd(&config.prices, &model);
                me.settle(&names, t.prompt() + t.output, usd).await;
            }
            drop(release);
        });
    }

    /// A provider call's tokens and cost onto the counters they were read from.
    async fn settle(&self, names: &[(Kind, String, bool)], tokens: u64, usd: f64) {
        for local in [false, true] {
            let ops: Vec<CounterOp> = names
                .iter()
                .filter(|(_, _, l)| *l == local)
                .map(|(kind, name, _)| match kind {
                    Kind::Tokens => CounterOp::add(name.clone(), tokens as i64, 2 * MINUTE_MS as u64),
                    Kind::UsdDay => CounterOp::add(name.clone(), micro_usd(usd), 2 * DAY_MS as u64),
                    _ => CounterOp::add(name.clone(), micro_usd(usd), 32 * DAY_MS as u64),
                })
                .filter(|o| !matches!(o.kind, recache_storage::roles::counters::CounterKind::Add { by: 0, .. }))
                .collect();
            if ops.is_empty() {
                continue;
            }
            if self.add(ops.clone(), local).await.is_err() && self.cfg.on_counter_loss == CounterLoss::LocalShare {
                self.local.add(&ops);
            }
        }
    }
}
