//! `recache report cost`: requests, hits, tokens and money per tenant, model,
//! namespace or dialect, from the hourly usage counters in metadata.

use std::collections::BTreeMap;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::json;

use super::{env_map, load_config, ConfigArgs, EXIT_CONFIG, EXIT_PROBLEM};
use recache_gateway::gateway::limits::LimitUse;
use recache_storage::roles::{now_ms, UsageRow};

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub command: ReportCommand,
}

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Requests, hits, tokens, USD saved and USD spent per group (hourly counters in metadata).
    Cost(CostArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Tenant,
    Model,
    Namespace,
    /// The API the requests spoke: openai, anthropic, gemini.
    Dialect,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct CostArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// How far back (e.g. 24h, 7d, 30m); counted by whole hours, from the start of the hour.
    #[arg(long, default_value = "24h")]
    pub since: String,
    #[arg(long, value_enum, default_value = "tenant")]
    pub by: By,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
}

/// One group's totals.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Group {
    pub group: String,
    pub requests: u64,
    pub hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub tokens_spent: u64,
    pub tokens_saved: u64,
    pub usd_saved: f64,
    pub usd_spent: f64,
}

impl Group {
    fn add(&mut self, r: &UsageRow) {
        self.hits += r.hits;
        self.semantic_hits += r.semantic_hits;
        self.misses += r.misses;
        self.requests = self.hits + self.semantic_hits + self.misses;
        self.hit_rate = if self.requests > 0 {
            (self.hits + self.semantic_hits) as f64 / self.requests as f64
        } else {
            0.0
        };
        self.tokens_spent += r.prompt_tokens + r.completion_tokens;
        self.tokens_saved += r.tokens_saved;
        self.usd_saved += r.usd_saved;
        self.usd_spent += r.usd_spent;
    }
}

/// Groups (by spend, then name) and the total.
pub fn group(rows: &[UsageRow], by: By) -> (Vec<Group>, Group) {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut total = Group {
        group: "total".into(),
        ..Default::default()
    };
    for r in rows {
        let name = match by {
            By::Tenant => &r.tenant,
            By::Model => &r.model,
            By::Namespace => &r.namespace,
            By::Dialect => &r.dialect,
        };
        groups
            .entry(name.clone())
            .or_insert_with(|| Group {
                group: name.clone(),
                ..Default::default()
            })
            .add(r);
        total.add(r);
    }
    let mut v: Vec<Group> = groups.into_values().collect();
    v.sort_by(|a, b| b.usd_spent.total_cmp(&a.usd_spent).then(a.group.cmp(&b.group)));
    (v, total)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub async fn run(args: ReportArgs) -> i32 {
    match args.command {
        ReportCommand::Cost(a) => cost(a).await,
    }
}

async fn cost(a: CostArgs) -> i32 {
    let env = env_map();
    let config = match load_config(&a.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recache: {e}");
            return EXIT_CONFIG;
        }
    };
    let since = match super::ops::parse_duration(&a.since) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("recache: --since: {e}");
            return EXIT_CONFIG;
        }
    };
    let from = now_ms() - since.as_millis() as i64;
    let from = from - from.rem_euclid(3_600_000);
    let (meta, _) = match recache_storage::roles::factory::open_metadata(&config).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("recache: {e:#}");
            return EXIT_PROBLEM;
        }
    };
    let rows = match meta.usage_since(from).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("recache: cannot read usage from metadata: {e}");
            return EXIT_PROBLEM;
        }
    };
    let by = format!("{:?}", a.by).to_lowercase();
    // Usage is counted by the tenant's stable id; show the name it has now.
    let mut rows = rows;
    for r in &mut rows {
        if let Some(t) = config.tenants.iter().find(|t| t.id() == r.tenant) {
            r.tenant.clone_from(&t.name);
        }
    }
    let (groups, total) = group(&rows, a.by);
    let (limits, limits_note) = limit_use(&config, meta.as_ref()).await;
    match a.format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "since_ms": from,
                "since": recache_ops::backup::format_time(from),
                "by": by,
                "groups": groups,
                "total": total,
                "limits": limits,
                "limits_note": limits_note,
            }))
            .unwrap_or_default()
        ),
        ReportFormat::Csv => {
            println!("{by},requests,hits,semantic_hits,misses,hit_rate,tokens_spent,tokens_saved,usd_saved,usd_spent");
            for g in groups.iter().chain(std::iter::once(&total)) {
                println!(
                    "{},{},{},{},{},{:.4},{},{},{:.6},{:.6}",
                    csv_field(&g.group),
                    g.requests,
                    g.hits,
                    g.semantic_hits,
                    g.misses,
                    g.hit_rate,
                    g.tokens_spent,
                    g.tokens_saved,
                    g.usd_saved,
                    g.usd_spent
                );
            }
        }
        ReportFormat::Text => {
            println!("since {} (by {by})", recache_ops::backup::format_time(from));
            println!(
                "{:<24} {:>10} {:>8} {:>10} {:>14} {:>12} {:>12}",
                by, "requests", "hit rate", "misses", "tokens saved", "USD saved", "USD spent"
            );
            for g in groups.iter().chain(std::iter::once(&total)) {
                println!(
                    "{:<24} {:>10} {:>7.1}% {:>10} {:>14} {:>12.4} {:>12.4}",
                    g.group,
                    g.requests,
                    g.hit_rate * 100.0,
                    g.misses,
                    g.tokens_saved,
                    g.usd_saved,
                    g.usd_spent
                );
            }
            print_limits(&limits, limits_note.as_deref());
        }
    }
    0
}

/// Each tenant's and key's use against its limits now. On a Redis index the
/// live counters the gateways count in; on the embedded index those live in
/// the gateway's memory (its `/metrics` shows them), so only the tenants'
/// budgets are given, from `usage_hourly` (the durable truth of spend).
async fn limit_use(
    config: &recache_core::config::Config,
    meta: &dyn recache_storage::roles::Metadata,
) -> (Vec<LimitUse>, Option<String>) {
    use recache_gateway::gateway::{auth::Tenants, limits};
    let tenants = Tenants::from_config(config).all();
    let keys = meta.list_keys(None).await.unwrap_or_default();
    if config.index.engine == recache_core::config::IndexEngine::Redis {
        return match recache_storage::roles::factory::open_index(config).await {
            Ok(index) => {
                let read = |ops| {
                    let index = index.clone();
                    async move { index.counters_add(ops).await.map_err(|_| ()) }
                };
                let rows = limits::usage_of(&tenants, &keys, read).await;
                (rows, None)
            }
            Err(e) => (Vec::new(), Some(format!("the limit counters cannot be read: {e:#}"))),
        };
    }
    let now = now_ms();
    let day = now - now.rem_euclid(86_400_000);
    let month = month_start_ms(now);
    let spent = match meta.usage_since(month.min(day)).await {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(format!("cannot read usage: {e}"))),
    };
    let mut out = Vec::new();
    for t in &tenants {
        let since = |from: i64| -> f64 {
            spent
                .iter()
                .filter(|r| r.tenant == t.id && r.hour_ms >= from)
                .map(|r| r.usd_spent)
                .sum()
        };
        for (limit, max, from) in [
            ("usd_per_day", t.limits.budget_usd_day, day),
            ("usd_per_month", t.limits.budget_usd_month, month),
        ] {
            if let Some(max) = max {
                out.push(LimitUse {
                    tenant: t.name.clone(),
                    key: String::new(),
                    limit,
                    used: since(from),
                    max,
                });
            }
        }
    }
    let note = "embedded index: requests, tokens, concurrency and key limits are counted in the gateway's memory (GET /metrics: recache_limit_used); tenant budgets from usage_hourly";
    (out, Some(note.into()))
}

/// The first millisecond of `now_ms`'s month (UTC).
fn month_start_ms(now_ms: i64) -> i64 {
    let (y, m) = recache_core::time::civil(now_ms.div_euclid(86_400_000));
    recache_core::time::month_start(y, m) * 86_400_000
}

fn print_limits(rows: &[LimitUse], note: Option<&str>) {
    if rows.is_empty() && note.is_none() {
        return;
    }
    println!();
    println!("limits, use now (this minute, day or month)");
    if !rows.is_empty() {
        println!(
            "{:<24} {:<22} {:<20} {:>14} {:>14} {:>7}",
            "tenant", "key", "limit", "used", "max", "use"
        );
    }
    for u in rows {
        let pct = if u.max > 0.0 { 100.0 * u.used / u.max } else { 0.0 };
        let key = if u.key.is_empty() { "(tenant)" } else { &u.key };
        println!(
            "{:<24} {:<22} {:<20} {:>14} {:>14} {:>6.1}%",
            u.tenant,
            key,
            u.limit,
            fmt_amount(u.limit, u.used),
            fmt_amount(u.limit, u.max),
            pct
        );
    }
    if let Some(n) = note {
        println!("  note: {n}");
    }
}

fn fmt_amount(limit: &str, x: f64) -> String {
    if limit.starts_with("usd") {
        format!("${x:.4}")
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_add_up() {
        let row = |t: &str, m: &str, hits, misses, spent| UsageRow {
            tenant: t.into(),
            model: m.into(),
            dialect: if m == "x" { "openai" } else { "anthropic" }.into(),
            namespace: "default".into(),
            hits,
            misses,
            usd_spent: spent,
            ..Default::default()
        };
        let rows = [
            row("a", "x", 3, 1, 0.5),
            row("a", "y", 1, 1, 0.1),
            row("b", "x", 0, 2, 1.0),
        ];
        let (g, total) = group(&rows, By::Tenant);
        assert_eq!(g[0].group, "b", "most spend first");
        assert_eq!((g[1].requests, g[1].hits, g[1].misses), (6, 4, 2));
        assert!((g[1].hit_rate - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(total.requests, 8);
        let (g, _) = group(&rows, By::Model);
        assert_eq!(g.len(), 2);
        let (g, _) = group(&rows, By::Dialect);
        assert_eq!((g[0].group.as_str(), g[0].requests), ("openai", 6));
        assert_eq!((g[1].group.as_str(), g[1].requests), ("anthropic", 2));
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        // 2026-12-06 12:00 UTC: December starts on day 20788.
        assert_eq!(month_start_ms(20_793 * 86_400_000 + 43_200_000), 20_788 * 86_400_000);
    }
}
