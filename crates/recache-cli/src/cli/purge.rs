//! `recache purge` and `recache erase` ("Data protection" in
//! `docs/operations.md`). Both run as a job of the queue, in this process
//! (or, when a running gateway owns the embedded index, in the gateway's
//! workers), so a run stopped in any way is finished by running the same
//! command again: it joins the job there is and resumes at its checkpoint.

use std::sync::Arc;

use clap::Args;
use serde_json::{json, Value};

use super::ops::{open, print, Exit};
use super::warmer::wait_jobs;
use super::{ConfigArgs, OutputFormat};
use recache_ops::backup::erase::ERASE;
use recache_ops::recovery::purge::{self, PURGE, STORES};
use recache_ops::recovery::Recovery;
use recache_storage::roles::factory::IndexAccess;
use recache_storage::roles::filter::EntryFilter;

#[derive(Args, Debug)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The tenant whose entries go (required).
    #[arg(long)]
    pub tenant: String,
    /// Only this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only answers of this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only entries created before this time: RFC 3339, a date (UTC) or an age (7d).
    #[arg(long)]
    pub before: Option<String>,
    /// Only cache keys starting with these hex digits (`x-recache-key` of a response).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Print how many entries would go, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Entries per page (each page is checkpointed).
    #[arg(long, default_value_t = purge::PAGE, hide = true)]
    pub page_size: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct EraseArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The tenant to erase.
    #[arg(long)]
    pub tenant: String,
    /// The tenant's name again: an erasure cannot be undone.
    #[arg(long)]
    pub confirm: String,
    #[arg(long, default_value_t = purge::PAGE, hide = true)]
    pub page_size: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

pub async fn run_purge(a: PurgeArgs) -> i32 {
    super::ops::exit_code("purge", purge_cmd(a).await)
}

pub async fn run_erase(a: EraseArgs) -> i32 {
    super::ops::exit_code("erase", erase_cmd(a).await)
}

fn filter_of(a: &PurgeArgs) -> Result<EntryFilter, Exit> {
    let before_ms = match &a.before {
        Some(t) => Some(recache_core::time::parse_time(t, recache_core::time::now_ms()).map_err(Exit::config)?),
        None => None,
    };
    let f = EntryFilter {
        tenant: a.tenant.clone(),
        namespace: a.namespace.clone(),
        model: a.model.clone(),
        before_ms,
        key_prefix: a.key_prefix.as_ref().map(|p| p.to_ascii_lowercase()),
    };
    f.validate().map_err(Exit::config)?;
    Ok(f)
}

fn report_text(kind: &str, v: &Value) -> String {
    let counts: Vec<String> = STORES.iter().map(|s| format!("{s} {}", v[*s])).collect();
    let mut out = format!(
        "{kind} of tenant {}: {} entries; deleted from {}\n",
        v["filter"]["tenant"].as_str().unwrap_or(""),
        v["entries"],
        counts.join(", ")
    );
    if let Some(n) = v["data_keys_destroyed"].as_u64() {
        out.push_str(&format!("data keys destroyed: {n}\n"));
        if let Some(files) = v["key_files"].as_object().filter(|m| !m.is_empty()) {
            for (which, f) in files {
                out.push_str(&format!(
                    "key file on the {which} target ({}): rewritten ({} keys, {} destroyed)\n",
                    f["target"].as_str().unwrap_or(""),
                    f["keys"],
                    f["destroyed"]
                ));
            }
        } else {
            out.push_str("no backup target configured: no key file to rewrite\n");
        }
    }
    out
}

async fn purge_cmd(a: PurgeArgs) -> Result<i32, Exit> {
    let f = filter_of(&a)?;
    if a.dry_run {
        let r = open(&a.config, IndexAccess::ReadOnly, "warn").await?;
        let mut v = r.purge_count(&f).await.map_err(|e| Exit::problem(format!("{e:?}")))?;
        v["spool"] = json!(local_spool_count(&r, &f));
        print(a.format, &v, |v| {
            format!(
                "purge (dry run) of tenant {}: {} entries in metadata, {} waiting in this host's spool; nothing changed\n",
                f.tenant, v["entries"], v["spool"]
            )
        });
        return Ok(0);
    }
    let payload = json!({"filter": f, "page": a.page_size, "actor": "cli"});
    let v = run_job(&a.config, PURGE, payload, a.format).await?;
    print(a.format, &v, |v| report_text("purge", v));
    Ok(0)
}

async fn erase_cmd(a: EraseArgs) -> Result<i32, Exit> {
    if a.confirm != a.tenant {
        return Err(Exit::config(format!(
            "--confirm must repeat the tenant ('{}'): an erasure destroys the tenant's keys and cannot be undone",
            a.tenant
        )));
    }
    let f = EntryFilter::tenant(&a.tenant);
    f.validate().map_err(Exit::config)?;
    let payload = json!({"filter": f, "page": a.page_size, "actor": "cli"});
    let v = run_job(&a.config, ERASE, payload, a.format).await?;
    print(a.format, &v, |v| report_text("erase", v));
    Ok(0)
}

/// Spooled registrations on this host (a dry run reads the file, changes nothing).
fn local_spool_count(r: &Recovery, f: &EntryFilter) -> u64 {
    let path = &r.config.metadata.spool_path;
    match recache_engine::spool::Spool::open(path) {
        Ok(s) if path.exists() => s.count_entries(|e| f.matches(e)),
        _ => 0,
    }
}

/// Queues the job (or joins the live one for the same filter), runs it
/// here unless a gateway owns the stores, and waits for its end.
pub(super) async fn run_job(
    config: &ConfigArgs,
    kind: &'static str,
    payload: Value,
    format: OutputFormat,
) -> Result<Value, Exit> {
    let bar = format == OutputFormat::Text;
    let (r, here) = match open(config, IndexAccess::Write, "warn").await {
        Ok(r) => (r, true),
        Err(Exit(_, msg)) if msg.contains("in use by another recache process") => {
            eprintln!("recache {kind}: the embedded index belongs to the running gateway; its workers run this {kind}");
            (open(config, IndexAccess::ReadOnly, "warn").await?, false)
        }
        Err(e) => return Err(e),
    };
    let (id, created) = purge::enqueue(&r, kind, payload)
        .await
        .map_err(|e| Exit::problem(e.to_string()))?;
    if !created {
        eprintln!("recache {kind}: joining job #{id}, left by an earlier run; it resumes at its checkpoint");
    }
    let worker = here.then(|| tokio::spawn(purge::run_here_until_done(Arc::clone(&r), vec![kind], id, kind)));
    let q = super::ops::QueueEnv {
        config: (*r.config).clone(),
        queue: r.queue.clone(),
    };
    let (jobs, finished) = wait_jobs(&q, &[id], 7 * 24 * 3600, bar).await?;
    if let Some(w) = worker {
        let _ = w.await;
    }
    let j = super::warmer::succeeded(jobs, finished, &format!("{kind} job"))?;
    let mut v = j.result.unwrap_or_default();
    v["job"] = json!(j.id);
    Ok(v)
}
