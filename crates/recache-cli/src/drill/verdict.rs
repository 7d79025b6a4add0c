//! From what a drill measured to its report (ARCHITECTURE.md, "DR drills"):
//! the figures, the verdict rows against the targets, the issues and
//! follow-ups, the summary and the timeline.

use serde_json::json;

use super::config::Targets;
use super::drive::Measured;
use super::measure::{self, counted_error, hit_rate, in_range, RECOVERY_SHARE, RECOVERY_WINDOW_S};
use super::report::{Event, Marks, Report, Row};
use super::run::{fmt_s, pct, Clock, Options};
use super::scenario::{Kind, Scenario};
use super::workload::{Outcome, Sample};
use recache_core::config::Config;

/// The figures the rows and the summary are made of.
struct Figures<'m> {
    all: &'m [Sample],
    errors: Vec<&'m Sample>,
    provider_errors: usize,
    rto: Option<f64>,
    before: &'m [Sample],
    during: &'m [Sample],
    after: &'m [Sample],
    window_len: f64,
    spend_during: f64,
    predicted: f64,
    extra: f64,
    fill: f64,
    backends: Vec<&'static str>,
    opened: Option<f64>,
    closed: Option<f64>,
    healthy_after: Option<f64>,
}

impl<'m> Figures<'m> {
    fn of(scenario: Scenario, m: &'m Measured) -> Self {
        let xs = &m.samples;
        let provider_window = (scenario == Scenario::ProviderDown).then_some((m.t_fault, m.t_repair + 2.0));
        let faulted = |s: &Sample| measure::in_window(s, provider_window);
        let all = in_range(xs, m.t_load, m.t_end + 1.0);
        let errors: Vec<&Sample> = all.iter().filter(|s| counted_error(s, faulted(s))).collect();
        let provider_errors = all
            .iter()
            .filter(|s| s.outcome == Outcome::ProviderError && faulted(s))
            .count();
        let rto = m.recovered.map(|r| (r - m.t_fault).max(0.0));
        let outage_end = match scenario.kind() {
            Kind::Outage => m.t_repair,
            _ => m.recovered.unwrap_or(m.t_end).max(m.t_repair),
        };
        let during = in_range(xs, m.t_fault, outage_end.max(m.t_fault + 0.5));
        let window_len = (outage_end - m.t_fault).max(0.5);
        let spend_during: f64 = during.iter().map(|s| s.cost_usd).sum::<f64>() + 0.0;
        let predicted = m.predicted_rate * window_len;
        let fill: f64 = xs
            .iter()
            .filter(|s| s.t >= m.t_fault && s.seeded.is_some() && s.outcome == Outcome::Miss)
            .map(|s| s.cost_usd)
            .sum::<f64>()
            + 0.0; // (an empty sum is -0.0)
        let backends: Vec<&'static str> = scenario
            .faulted()
            .iter()
            .copied()
            .filter(|b| *b != "provider")
            .collect();
        let opened = m.observed.first_open(&backends, m.t_fault);
        let closed = opened.and_then(|_| m.observed.first_closed(&backends, m.t_repair));
        Figures {
            all,
            errors,
            provider_errors,
            rto,
            before: in_range(xs, m.t_load + 1.0, m.t_fault),
            during,
            after: in_range(xs, m.recovered.unwrap_or(m.t_repair), m.t_end + 1.0),
            window_len,
            spend_during,
            predicted,
            extra: spend_during - m.steady_spend_rate * window_len,
            fill,
            backends,
            opened,
            closed,
            healthy_after: m.healthy.map(|h| (h - m.t_fault).max(0.0)),
        }
    }
}

/// The judged rows: recovery time and point, integrity.
fn recovery_rows(o: &Options, targets: &Targets, m: &Measured, f: &Figures) -> Vec<Row> {
    let mut rows = vec![
        Row {
            measure: "RTO".into(),
            definition: format!(
                "time from the fault until the hit rate is back to at least {} of its steady state ({}) over {RECOVERY_WINDOW_S:.0} s",
                pct(RECOVERY_SHARE),
                pct(m.steady_hit)
            ),
            target: format!("≤ {}", fmt_s(targets.rto_seconds)),
            actual: f.rto.map(fmt_s).unwrap_or_else(|| "not recovered".into()),
            value: f.rto,
            pass: Some(f.rto.is_some_and(|r| r <= targets.rto_seconds)),
        },
        Row {
            measure: "Time to fully healthy".into(),
            definition:
                "time from the fault until the gateway is ready, every breaker closed and no recovery job queued or running"
                    .into(),
            target: "—".into(),
            actual: f.healthy_after.map(fmt_s).unwrap_or_else(|| "not reached".into()),
            value: f.healthy_after,
            pass: None,
        },
        Row {
            measure: "RPO".into(),
            definition: if o.scenario == Scenario::FullRestore {
                "time between the backup restored and the fault (what was cached after it is lost)".into()
            } else {
                "age, at the fault, of the oldest entry cached before it and not served after recovery (0: nothing lost)"
                    .into()
            },
            target: format!("≤ {}", fmt_s(targets.rpo_seconds)),
            actual: format!("{} ({})", fmt_s(m.rpo_seconds), m.rpo_note),
            value: Some(m.rpo_seconds),
            pass: Some(m.rpo_seconds <= targets.rpo_seconds),
        },
    ];
    rows.push(integrity_row(o, m));
    rows
}

fn integrity_row(o: &Options, m: &Measured) -> Row {
    let measure = "Data integrity".to_string();
    let target = "100 %".to_string();
    match &m.integrity {
        Some((_, _, counts)) if counts.get("error").is_some() => Row {
            measure,
            definition: "share of entries that audit finds intact after recovery".into(),
            target,
            actual: format!("audit failed: {}", counts["error"].as_str().unwrap_or_default()),
            value: None,
            pass: Some(false),
        },
        Some((bad, scanned, _)) => {
            let share = if *scanned == 0 {
                1.0
            } else {
                1.0 - (*bad).min(*scanned) as f64 / *scanned as f64
            };
            Row {
                measure,
                definition: format!(
                    "share of entries that audit finds intact after recovery (artifact present and matching, \
                     pointer right); at most {} entries, a random run of them, are read",
                    o.audit_sample
                ),
                target,
                actual: if *bad == 0 {
                    format!("100 % (0 problems in {scanned} entries)")
                } else {
                    // (Never rounded up to 100 % while a problem is left.)
                    format!(
                        "{:.3} % ({bad} problems in {scanned} entries)",
                        (share * 100.0).min(99.999)
                    )
                },
                value: Some(share),
                pass: Some(*bad == 0),
            }
        }
        None => Row {
            measure,
            definition: "share of entries that audit finds intact after recovery".into(),
            target,
            actual: "not measured".into(),
            value: None,
            pass: None,
        },
    }
}

/// What clients saw: errors, breakers, hit rates, latency and spend.
fn traffic_rows(scenario: Scenario, m: &Measured, f: &Figures) -> Vec<Row> {
    let mut rows = vec![Row {
        measure: "Client-visible errors".into(),
        definition: if scenario == Scenario::ProviderDown {
            "requests that failed, other than new questions while the provider itself was down".into()
        } else {
            "requests that got an error or no answer (the promise is zero)".into()
        },
        target: "0".into(),
        actual: format!("{} of {} requests", f.errors.len(), f.all.len()),
        value: Some(f.errors.len() as f64),
        pass: Some(f.errors.is_empty()),
    }];
    if scenario == Scenario::ProviderDown {
        rows.push(Row {
            measure: "Provider errors passed on".into(),
            definition: "new questions that failed because the provider was down (no cache can answer them)".into(),
            target: "—".into(),
            actual: f.provider_errors.to_string(),
            value: Some(f.provider_errors as f64),
            pass: None,
        });
    }
    let reported = |measure: &str, definition: String, actual: String, value: Option<f64>| Row {
        measure: measure.into(),
        definition,
        target: "—".into(),
        actual,
        value,
        pass: None,
    };
    rows.push(reported(
        "Fault to breaker open",
        format!(
            "time from the fault until a breaker of {} left closed",
            f.backends.join(", ")
        ),
        f.opened
            .map(|t| fmt_s(t - m.t_fault))
            .unwrap_or_else(|| "did not open".into()),
        f.opened.map(|t| t - m.t_fault),
    ));
    rows.push(reported(
        "Repair to breaker closed",
        "time from the repair until every breaker that opened was closed again".into(),
        f.closed
            .map(|t| fmt_s((t - m.t_repair).max(0.0)))
            .unwrap_or_else(|| "—".into()),
        f.closed.map(|t| (t - m.t_repair).max(0.0)),
    ));
    rows.push(reported(
        "Hit rate before / during / after",
        "share of requests served from the cache in the steady state, during the fault, after recovery".into(),
        format!(
            "{} / {} / {}",
            pct(hit_rate(f.before)),
            pct(hit_rate(f.during)),
            pct(hit_rate(f.after))
        ),
        Some(hit_rate(f.after)),
    ));
    let (_, p99b) = measure::latency(f.before);
    let (_, p99d) = measure::latency(f.during);
    let (_, p99a) = measure::latency(f.after);
    rows.push(reported(
        "p99 latency before / during / after",
        "99th percentile of the client-seen latency".into(),
        format!("{p99b:.1} / {p99d:.1} / {p99a:.1} ms"),
        Some(p99d),
    ));
    rows.push(Row {
        measure: "Provider spend during the fault".into(),
        definition: format!(
            "USD paid to the provider from the fault to {} ({}), next to the prediction made before the fault \
             from the steady state ({} of requests to the provider at the mean miss price)",
            if scenario.kind() == Kind::Outage {
                "the repair"
            } else {
                "recovery"
            },
            fmt_s(f.window_len),
            pct(m.predicted_share)
        ),
        target: format!("predicted {:.6} USD", f.predicted),
        actual: format!(
            "{:.6} USD (extra over the steady state: {:.6} USD)",
            f.spend_during, f.extra
        ),
        value: Some(f.spend_during),
        pass: None,
    });
    if matches!(scenario, Scenario::IndexDown | Scenario::IndexLoss) {
        rows.push(reported(
            "Requests admitted against the limits during the fault",
            "requests admitted while the shared limit counters (on the index) were out, by [limits] on_counter_loss, \
             and requests refused by a tenant or key limit, from the fault to the repair"
                .into(),
            m.limits
                .map(|(admitted, refused)| {
                    format!("{admitted} admitted without the shared counters; {refused} refused by a limit")
                })
                .unwrap_or_else(|| "not measured (the gateway's counters could not be read)".into()),
            m.limits.map(|(admitted, _)| admitted as f64),
        ));
    }
    rows.push(reported(
        "Fill cost of the recovery",
        "USD paid after the fault to buy back answers that were cached before it, over the time to full warm-up (the RTO)".into(),
        format!("{:.6} USD over {}", f.fill, f.rto.map(fmt_s).unwrap_or_else(|| "—".into())),
        Some(f.fill),
    ));
    rows
}

/// The issues found, the runbook's updates and the action items.
fn follow_ups(
    o: &Options,
    config: &Config,
    started_ms: i64,
    m: &Measured,
    f: &Figures,
    failed: &[&Row],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let scenario = o.scenario;
    let mut issues = m.issues.clone();
    if let Some(a) = &m.aborted {
        issues.push(format!("The drill was aborted and rolled back: {a}."));
    }
    for r in failed {
        issues.push(format!("{}: {} against a target of {}.", r.measure, r.actual, r.target));
    }
    let mut seen = std::collections::BTreeMap::new();
    for e in &f.errors {
        *seen
            .entry(e.detail.clone().unwrap_or_else(|| e.status.to_string()))
            .or_insert(0u64) += 1;
    }
    for (d, n) in seen.iter().take(5) {
        issues.push(format!("{n} request(s) failed with: {d}"));
    }
    let (spend, predicted) = (f.spend_during, f.predicted);
    if predicted > 0.0 && (spend / predicted > 2.0 || spend / predicted < 0.5) {
        issues.push(format!(
            "The spend during the fault ({spend:.6} USD) is {:.1}× the prediction ({predicted:.6} USD).",
            spend / predicted
        ));
    }
    let mut updates = Vec::new();
    if let Some(t) = f.opened {
        updates.push(format!(
            "Expect the {} breaker to open about {} after such a fault; requests meanwhile go to the provider.",
            f.backends.join("/"),
            fmt_s(t - m.t_fault)
        ));
    }
    if let Some(t) = f.closed {
        updates.push(format!(
            "After the repair, expect the breakers to close within {} (breaker open_seconds = {}).",
            fmt_s((t - m.t_repair).max(0.0)),
            config.breaker.open_seconds
        ));
    }
    if let Some(r) = f.rto {
        updates.push(format!(
            "{}: hit rate back to 95 % of its steady state {} after the fault, at {} requests/s.",
            scenario.name(),
            fmt_s(r),
            o.rps
        ));
    }
    let mut actions: Vec<String> = failed
        .iter()
        .map(|r| {
            format!(
                "Find and fix why {} missed its target; run this drill again.",
                r.measure
            )
        })
        .collect();
    let next = recache_ops::backup::format_time(started_ms + scenario.cadence_days() as i64 * 86_400_000);
    actions.push(format!(
        "Next {} drill due by {} (runbook calendar).",
        scenario.name(),
        &next[..10]
    ));
    (issues, updates, actions)
}

/// Every figure by name, for the JSON report.
fn measures(m: &Measured, f: &Figures, targets: &Targets) -> serde_json::Value {
    let (_, p99b) = measure::latency(f.before);
    let (_, p99d) = measure::latency(f.during);
    let (_, p99a) = measure::latency(f.after);
    json!({
        "rto_seconds": f.rto, "rpo_seconds": m.rpo_seconds, "healthy_after_seconds": f.healthy_after,
        "recovered": f.rto.is_some(),
        "lost_entries": m.lost, "probed_entries": m.probed,
        "limits_admitted_without_counters": m.limits.map(|l| l.0), "limits_refused": m.limits.map(|l| l.1),
        "integrity": m.integrity.as_ref().map(|(bad, scanned, counts)| json!({"problems": bad, "entries": scanned, "counts": counts})),
        "client_errors": f.errors.len(), "provider_errors": f.provider_errors, "requests": f.all.len(),
        "fault_to_open_seconds": f.opened.map(|t| t - m.t_fault),
        "repair_to_closed_seconds": f.closed.map(|t| (t - m.t_repair).max(0.0)),
        "steady_hit_rate": m.steady_hit, "steady_rps": m.steady_rps,
        "hit_rate_before": hit_rate(f.before), "hit_rate_during": hit_rate(f.during), "hit_rate_after": hit_rate(f.after),
        "p99_ms_before": p99b, "p99_ms_during": p99d, "p99_ms_after": p99a,
        "spend_during_usd": f.spend_during, "predicted_spend_usd": f.predicted, "extra_spend_usd": f.extra,
        "fill_cost_usd": f.fill,
        "targets": {"rto_seconds": targets.rto_seconds, "rpo_seconds": targets.rpo_seconds},
        "aborted": m.aborted,
        "t": {"load": m.t_load, "fault": m.t_fault, "repair": m.t_repair, "recovered": m.recovered, "healthy": m.healthy, "end": m.t_end},
    })
}

/// Where the drill stands and what to do next.
pub(super) struct Context<'a> {
    pub clock: &'a Clock,
    pub config: &'a Config,
    pub o: &'a Options,
    pub id: &'a str,
    pub mode: &'a str,
    pub started_ms: i64,
    pub targets: Targets,
}

/// The report of one drill.
pub(super) fn build(c: Context<'_>, m: Measured) -> Report {
    let (o, started_ms) = (c.o, c.started_ms);
    let scenario = o.scenario;
    let f = Figures::of(scenario, &m);
    let mut rows = recovery_rows(o, &c.targets, &m, &f);
    rows.extend(traffic_rows(scenario, &m, &f));
    let failed: Vec<&Row> = rows.iter().filter(|r| r.pass == Some(false)).collect();
    let verdict = if m.aborted.is_some() {
        "aborted"
    } else if failed.is_empty() {
        "pass"
    } else {
        "fail"
    };
    let (issues, updates, actions) = follow_ups(o, c.config, started_ms, &m, &f, &failed);
    let summary = format!(
        "{} drill against a {} gateway. The fault ({}) started at t = {:.1} s{}. The hit rate ({} in the steady state) \
         was {} during the fault and came back to 95 % of it {}. {} client-visible errors. RPO {}. Verdict: {}.",
        scenario.name(),
        c.mode,
        m.fault_methods.join("; "),
        m.t_fault,
        if scenario.kind() == Kind::Outage {
            format!(" and was repaired at t = {:.1} s", m.t_repair)
        } else {
            format!(", repair started at t = {:.1} s", m.t_repair)
        },
        pct(m.steady_hit),
        pct(hit_rate(f.during)),
        f.rto.map(|r| format!("after {}", fmt_s(r))).unwrap_or_else(|| "not within the drill".into()),
        f.errors.len(),
        fmt_s(m.rpo_seconds),
        verdict.to_uppercase()
    );
    let mut timeline = c.clock.events.clone();
    for (t, b, from, to) in m.observed.transitions() {
        timeline.push(Event {
            t,
            at: recache_ops::backup::format_time(started_ms + (t * 1000.0) as i64),
            what: format!("breaker {b}: {from} → {to}"),
        });
    }
    timeline.sort_by(|a, b| a.t.total_cmp(&b.t));
    let measures = measures(&m, &f, &c.targets);
    let mut settings = m.settings.clone();
    settings["fault"] = json!(m.fault_methods);
    Report {
        id: c.id.to_string(),
        scenario: scenario.name().into(),
        mode: c.mode.into(),
        started_at: recache_ops::backup::format_time(started_ms),
        started_at_ms: started_ms,
        verdict: verdict.into(),
        summary,
        settings,
        results: rows,
        measures,
        timeline,
        issues,
        runbook_updates: updates,
        action_items: actions,
        marks: Marks {
            fault: m.t_fault,
            repair: Some(m.t_repair),
            recovered: m.recovered,
            end: m.t_end,
        },
        buckets: measure::buckets(&m.samples, m.t_end + 1.0),
    }
}
