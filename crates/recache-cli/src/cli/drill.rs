//! `recache drill run | list | schedule`.
//!
//! Exit codes: 0 the drill passed (or nothing is overdue); 1 a target was
//! missed, the drill was aborted or failed to run (or a drill is overdue);
//! 2 refused (a loss without `allow_destructive`) or bad usage.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::ops::{exit_code, parse_duration, print, Exit};
use super::{env_map, init_logging, load_config, ConfigArgs, OutputFormat, EXIT_CONFIG, EXIT_PROBLEM};
use crate::drill::run::{run as run_drill, DrillError, Options};
use crate::drill::scenario::{Scenario, ALL};
use crate::drill::{history, report::Report};
use recache_core::config::LogFormat;

#[derive(Args, Debug)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub command: DrillCommand,
}

#[derive(Subcommand, Debug)]
pub enum DrillCommand {
    /// Inject a failure under load, measure RTO, RPO, integrity and cost, and write the report.
    Run(Box<RunArgs>),
    /// Past drills: scenario, time, verdict, RTO, RPO, report.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// The drill calendar (each backend quarterly, a full restore twice a year); exit 1 when one is overdue.
    Schedule {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// index-down, artifacts-down, vectors-down, metadata-down, all-down, provider-down,
    /// index-loss, artifacts-loss, metadata-loss or full-restore.
    #[arg(long)]
    pub scenario: String,
    /// Start a throw-away gateway on the configured engines (networked engines behind relays the drill cuts).
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub managed: bool,
    /// Drill a running gateway (admin token from the env var named by server.admin_token_env).
    #[arg(long)]
    pub url: Option<String>,
    /// The report folder (default: a new folder under drill.out_dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Requests per second of the load.
    #[arg(long, default_value_t = 20.0)]
    pub rps: f64,
    /// The shortest time the load runs (it runs on until recovery, within drill.recovery_timeout).
    #[arg(long, default_value = "20s")]
    pub duration: String,
    /// The steady state measured before the fault.
    #[arg(long, default_value = "5s")]
    pub steady: String,
    /// How long an outage lasts.
    #[arg(long, default_value_t = 5)]
    pub fault_seconds: u64,
    /// Prompts seeded before the drill (generated workload).
    #[arg(long, default_value_t = 200)]
    pub entries: usize,
    /// The share of artifacts deleted by artifacts-loss.
    #[arg(long, default_value_t = 0.1)]
    pub fraction: f64,
    /// A JSONL file of chat requests to seed and replay instead of generated prompts.
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// At most this many seeded entries are probed after recovery (RPO).
    #[arg(long, default_value_t = 2000)]
    pub probe_max: usize,
    /// The integrity audit after recovery reads at most this many entries (a random run of them).
    #[arg(long, default_value_t = 20_000)]
    pub audit_sample: u64,
    /// The model of the generated prompts.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// The env var holding the client key for --url traffic.
    #[arg(long, default_value = "RECACHE_DRILL_KEY")]
    pub key_env: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

pub async fn run(a: DrillArgs) -> i32 {
    match a.command {
        DrillCommand::Run(r) => exit_code("drill", run_one(*r).await),
        DrillCommand::List { config, limit, format } => exit_code("drill", list(&config, limit, format).await),
        DrillCommand::Schedule { config, format } => exit_code("drill", schedule(&config, format).await),
    }
}

async fn run_one(a: RunArgs) -> Result<i32, Exit> {
    let env = env_map();
    let (config, warnings) =
        recache_core::config::Config::load(&a.config.config, &env).map_err(|e| Exit::config(e.to_string()))?;
    for w in warnings {
        // A managed drill brings its own tenant.
        if !(a.managed && w.starts_with("no [[tenants]]")) {
            eprintln!("recache: warning: {w}");
        }
    }
    // The timeline says what happened; the gateway's own logs only when they are errors.
    init_logging(LogFormat::Text, "error");
    let scenario = Scenario::parse(&a.scenario).ok_or_else(|| {
        Exit::config(format!(
            "unknown scenario '{}' (expected one of {})",
            a.scenario,
            ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let dur = |name: &str, s: &str| parse_duration(s).map_err(|e| Exit::config(format!("--{name}: {e}")));
    let workload = match &a.workload {
        Some(p) => {
            Some(std::fs::read_to_string(p).map_err(|e| Exit::config(format!("cannot read {}: {e}", p.display())))?)
        }
        None => None,
    };
    let o = Options {
        scenario,
        url: a.url.clone(),
        out: a.out.clone(),
        rps: a.rps,
        duration: dur("duration", &a.duration)?,
        steady: dur("steady", &a.steady)?,
        fault_seconds: a.fault_seconds,
        entries: a.entries,
        fraction: a.fraction,
        workload,
        probe_max: a.probe_max,
        audit_sample: a.audit_sample,
        model: a.model.clone(),
        key: env.get(&a.key_env).cloned().filter(|k| !k.is_empty()),
        config_path: Some(a.config.config.clone()),
        progress: a.format == OutputFormat::Text,
    };
    // Ctrl-C drops the drill: every fault it made is undone on the way out.
    let finished = tokio::select! {
        r = run_drill(&config, &env, o) => r,
        _ = tokio::signal::ctrl_c() => {
            return Err(Exit::problem("interrupted: the faults were undone, no report written"));
        }
    };
    let f = match finished {
        Ok(f) => f,
        Err(DrillError::Refused(m)) => return Err(Exit(EXIT_CONFIG, m)),
        Err(DrillError::Failed(e)) => return Err(Exit(EXIT_PROBLEM, format!("the drill failed to run: {e:#}"))),
    };
    let mut v = serde_json::to_value(&f.report).unwrap_or_default();
    v["report_dir"] = json!(f.dir.display().to_string());
    print(a.format, &v, |_| text(&f.report, &f.dir.display().to_string()));
    Ok(if f.report.verdict == "pass" { 0 } else { EXIT_PROBLEM })
}

fn text(r: &Report, dir: &str) -> String {
    let mut out = format!("\n{}\n\n", r.summary);
    let w = r.results.iter().map(|x| x.measure.chars().count()).max().unwrap_or(10);
    for x in &r.results {
        out += &format!(
            "  {:<w$}  {:<5}  {}  (target {})\n",
            x.measure,
            x.result(),
            x.actual,
            x.target
        );
    }
    out += &format!("\nreport: {dir}/report.md (and report.json, chart.svg)\n");
    out
}

async fn past(config: &ConfigArgs) -> Result<Vec<history::PastDrill>, Exit> {
    let env = env_map();
    let config = load_config(config, &env).map_err(|e| Exit::config(e.to_string()))?;
    init_logging(LogFormat::Text, "warn");
    let (meta, _) = recache_storage::roles::factory::open_metadata(&config)
        .await
        .map_err(|e| Exit::problem(format!("{e:#}")))?;
    history::list(meta.as_ref(), 10_000).await.map_err(Exit::problem)
}

async fn list(config: &ConfigArgs, limit: usize, format: OutputFormat) -> Result<i32, Exit> {
    let mut drills = past(config).await?;
    drills.truncate(limit);
    let v = json!({ "drills": drills });
    print(format, &v, |_| {
        if drills.is_empty() {
            return "no drills recorded yet: run `recache drill run --scenario index-down --managed`\n".into();
        }
        let mut out = format!(
            "{:<20} {:<15} {:<8} {:>9} {:>9}  {}\n",
            "started (UTC)", "scenario", "verdict", "RTO", "RPO", "report"
        );
        let s = |x: Option<f64>| x.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "—".into());
        for d in &drills {
            out += &format!(
                "{:<20} {:<15} {:<8} {:>9} {:>9}  {}\n",
                d.at,
                d.scenario,
                d.verdict,
                s(d.rto_seconds),
                s(d.rpo_seconds),
                d.report
            );
        }
        out
    });
    Ok(0)
}

async fn schedule(config: &ConfigArgs, format: OutputFormat) -> Result<i32, Exit> {
    let drills = past(config).await?;
    let cal = history::calendar(&drills, history::now());
    let overdue = cal.iter().filter(|d| d.status == "overdue").count();
    let v = json!({ "calendar": cal, "overdue": overdue });
    print(format, &v, |_| {
        let mut out = format!(
            "{:<15} {:>6}  {:<20} {:<8} {:<20}  {}\n",
            "scenario", "every", "last run (UTC)", "verdict", "due", "status"
        );
        for d in &cal {
            out += &format!(
                "{:<15} {:>5}d  {:<20} {:<8} {:<20}  {}\n",
                d.scenario,
                d.every_days,
                d.last_run.as_deref().unwrap_or("never"),
                d.last_verdict.as_deref().unwrap_or("—"),
                d.due,
                d.status
            );
        }
        out += &format!("\n{overdue} overdue\n");
        out
    });
    Ok(if overdue > 0 { EXIT_PROBLEM } else { 0 })
}
