//! `recache audit`: are the stores consistent? Read-only; exit 1 when a problem is found.

use clap::Args;
use serde_json::json;

use super::ops::{open, parse_duration, print, Exit};
use super::{ConfigArgs, OutputFormat, EXIT_PROBLEM};
use recache_ops::recovery::audit::{AuditOptions, Check};
use recache_ops::recovery::gaps::gaps;
use recache_ops::recovery::local::LocalCtx;
use recache_storage::roles::factory::IndexAccess;

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to check.
    #[arg(long, value_enum, default_value = "all")]
    pub check: Check,
    /// Look at N entries only (from a random point), for a quick look.
    #[arg(long)]
    pub sample: Option<u64>,
    /// Instead: entries created per hour and the gap window (post-failover reconciliation).
    #[arg(long)]
    pub gaps: bool,
    /// Hours covered by --gaps.
    #[arg(long, default_value_t = 48)]
    pub hours: u64,
    /// Artifacts younger than this are never reported as orphans (e.g. 24h, 30m).
    #[arg(long, default_value = "24h")]
    pub grace: String,
    /// Findings listed (counts are always complete).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

pub async fn run(a: AuditArgs) -> i32 {
    super::ops::exit_code("audit", audit(a).await)
}

async fn audit(a: AuditArgs) -> Result<i32, Exit> {
    let grace = parse_duration(&a.grace).map_err(Exit::config)?;
    let r = open(&a.config, IndexAccess::ReadOnly, "warn").await?;
    if a.gaps {
        let g = gaps(r.cache.roles.metadata.as_ref(), a.hours)
            .await
            .map_err(|e| Exit::problem(e.to_string()))?;
        let v = serde_json::to_value(&g).unwrap_or_default();
        print(a.format, &v, |_| {
            let mut out = format!(
                "entries created per hour, last {} hours ({} in all)\n",
                g.hours, g.total_entries
            );
            let max = g.per_hour.iter().map(|h| h.entries).max().unwrap_or(0).max(1);
            for h in &g.per_hour {
                let bar = "#".repeat(((h.entries * 40) / max) as usize);
                out.push_str(&format!("{}  {:>8}  {bar}\n", fmt_hour(h.hour_start_ms), h.entries));
            }
            match (g.first_record_ms, g.last_record_ms) {
                (Some(f), Some(l)) => out.push_str(&format!(
                    "first record in hour {}, last before {}\n",
                    fmt_hour(f),
                    fmt_hour(l)
                )),
                _ => out.push_str("no entries in the window\n"),
            }
            for (s, e) in &g.gaps {
                out.push_str(&format!("GAP: no entries from {} to {}\n", fmt_hour(*s), fmt_hour(*e)));
            }
            out
        });
        return Ok(if g.gaps.is_empty() { 0 } else { EXIT_PROBLEM });
    }
    let opts = AuditOptions {
        check: a.check,
        sample: a.sample,
        max_findings: a.limit.max(1),
        orphan_grace_ms: grace.as_millis() as i64,
        ..Default::default()
    };
    let ctx = LocalCtx::new("audit", a.format == OutputFormat::Text);
    let report = r
        .audit(&opts, None, ctx.as_ref())
        .await
        .map_err(|e| Exit::problem(format!("audit stopped: {e:?}")))?;
    ctx.finish();
    let v = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    print(a.format, &v, |_| {
        let mut out = format!(
            "audit {}: {} entries, {} artifacts listed, {} verified, {} index pointers in {:.1} s{}\n",
            a.check
                .to_possible_value()
                .map(|p| p.get_name().to_string())
                .unwrap_or_default(),
            report.entries_scanned,
            report.artifacts_listed,
            report.artifacts_verified,
            report.index_pointers,
            report.seconds,
            if report.sampled { " (sampled)" } else { "" }
        );
        for n in &report.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        if report.counts.is_empty() {
            out.push_str("no problems found\n");
        }
        for (kind, n) in &report.counts {
            out.push_str(&format!("{kind}: {n}\n"));
        }
        if report.missing_cost_usd > 0.0 {
            out.push_str(&format!(
                "buying the missing artifacts back would cost about ${:.4} (recache repair --missing-artifacts)\n",
                report.missing_cost_usd
            ));
        }
        for f in &report.findings {
            out.push_str(&format!(
                "  {:<24} key={} artifact={} {}\n",
                f.kind,
                f.key.as_deref().unwrap_or("-"),
                f.artifact.as_deref().map(|a| &a[..16.min(a.len())]).unwrap_or("-"),
                f.detail
            ));
        }
        if report.findings_truncated {
            out.push_str(&format!(
                "  ... (first {} findings shown; --limit N for more)\n",
                report.findings.len()
            ));
        }
        out
    });
    Ok(if report.problems() > 0 { EXIT_PROBLEM } else { 0 })
}

use clap::ValueEnum as _;

fn fmt_hour(ms: i64) -> String {
    recache_core::time::format_hour(ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hours_format_as_utc() {
        assert_eq!(super::fmt_hour(0), "1970-01-01 00:00Z");
        assert_eq!(super::fmt_hour(1_795_435_200_000), "2026-11-23 12:00Z");
    }
}
