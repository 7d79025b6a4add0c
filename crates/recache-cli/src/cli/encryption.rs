//! `recache encryption status|rotate-master|rotate-tenant|reseal`: the
//! tenants' data keys and the answers sealed with them ("Data protection" in
//! `ARCHITECTURE.md`). No key is ever printed.

use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::ops::{print, Exit};
use super::{ConfigArgs, OutputFormat};
use recache_core::config::Config;
use recache_storage::roles::keyring::Keyring;
use recache_storage::roles::{now_ms, AuditEvent, Metadata};

#[derive(Args, Debug)]
pub struct EncryptionArgs {
    #[command(subcommand)]
    pub command: EncryptionCommand,
}

#[derive(Subcommand, Debug)]
pub enum EncryptionCommand {
    /// The data keys in metadata: tenant, state and the master key wrapping each (never a key).
    Status(FormatArgs),
    /// Re-wrap every data key under the current master key. Put the new key in
    /// `master_key_env` (or `master_key_file`) and the one it replaces in
    /// `previous_master_key_env`; once this reports none left, drop the old one.
    RotateMaster(FormatArgs),
    /// A new data key for a tenant's new answers; older ones stay readable with the retired key.
    RotateTenant(TenantArgs),
    /// Seal the answers stored before encryption was on (or with a tenant's
    /// retired key) with each tenant's active key, in place. Runs as a
    /// resumable job: run it again after any stop to finish it.
    Reseal(ResealArgs),
}

#[derive(Args, Debug)]
pub struct ResealArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only this tenant's entries (its id, as in `recache purge`); all by default.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Entries per page (each page is checkpointed).
    #[arg(long, default_value_t = recache_ops::recovery::reseal::PAGE, hide = true)]
    pub page_size: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct FormatArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct TenantArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A tenant of the configuration ([[tenants]] name).
    #[arg(long)]
    pub tenant: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

pub async fn run(args: EncryptionArgs) -> i32 {
    let res = match args.command {
        EncryptionCommand::Status(a) => status(a).await,
        EncryptionCommand::RotateMaster(a) => rotate_master(a).await,
        EncryptionCommand::RotateTenant(a) => rotate_tenant(a).await,
        EncryptionCommand::Reseal(a) => reseal(a).await,
    };
    super::ops::exit_code("encryption", res)
}

fn keyring(config: &Config, meta: Arc<dyn Metadata>) -> Result<Arc<Keyring>, Exit> {
    Keyring::new(config.encryption.keys.clone(), meta)
        .ok_or_else(|| Exit::config("no master key is configured ([encryption] master_key_env or master_key_file)"))
}

async fn audit(meta: &dyn Metadata, action: &str, tenant: Option<String>, detail: Value) {
    let at = now_ms();
    let event = AuditEvent {
        id: format!("{action}-{at}"),
        at_ms: at,
        tenant,
        actor: "cli".into(),
        action: action.into(),
        cache_key: None,
        detail,
    };
    if let Err(e) = meta.write_batch(Vec::new(), vec![event]).await {
        eprintln!("recache: warning: the audit event was not written: {e}");
    }
}

async fn status(a: FormatArgs) -> Result<i32, Exit> {
    let (config, meta) = super::ops::open_metadata(&a.config).await?;
    let current = config.encryption.keys.first().map(|k| k.fingerprint());
    let keys = meta
        .list_data_keys(None)
        .await
        .map_err(|e| Exit::problem(e.to_string()))?;
    let name_of = |id: &str| {
        config
            .tenants
            .iter()
            .find(|t| t.id() == id)
            .map(|t| t.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let rows: Vec<Value> = keys
        .iter()
        .map(|k| {
            let state = if k.destroyed_at_ms.is_some() {
                "destroyed"
            } else if k.retired_at_ms.is_some() {
                "retired"
            } else {
                "active"
            };
            json!({
                "id": k.id, "tenant": name_of(&k.tenant), "state": state, "master_id": k.master_id,
                "under_current_master": current.as_deref() == Some(k.master_id.as_str()),
                "created_at_ms": k.created_at_ms,
            })
        })
        .collect();
    let stale = rows
        .iter()
        .filter(|r| r["state"] != "destroyed" && r["under_current_master"] == false)
        .count();
    let v = json!({"encryption": config.encryption.enabled(), "master_id": current, "keys": rows, "not_under_current_master": stale});
    print(a.format, &v, |v| {
        let mut out = format!(
            "encryption {}; master key {}; {} data key(s), {} not under the current master key\n",
            if v["encryption"] == true { "on" } else { "off" },
            v["master_id"].as_str().unwrap_or("none"),
            rows.len(),
            stale
        );
        for r in &rows {
            out.push_str(&format!(
                "  {}  {:<20} {:<9} master {}\n",
                r["id"].as_str().unwrap_or(""),
                r["tenant"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["master_id"].as_str().unwrap_or("")
            ));
        }
        out
    });
    Ok(0)
}

async fn rotate_master(a: FormatArgs) -> Result<i32, Exit> {
    let (config, meta) = super::ops::open_metadata(&a.config).await?;
    let ring = keyring(&config, meta.clone())?;
    let (rewrapped, already) = ring.rewrap_all().await.map_err(|e| Exit::problem(e.to_string()))?;
    let v = json!({"master_id": ring.master_id(), "rewrapped": rewrapped, "already_current": already});
    audit(meta.as_ref(), "encryption.rotate_master", None, v.clone()).await;
    print(a.format, &v, |v| {
        format!(
            "{} data key(s) re-wrapped under master key {} ({} already were); previous_master_key_env can be dropped\n",
            v["rewrapped"],
            v["master_id"].as_str().unwrap_or(""),
            v["already_current"]
        )
    });
    Ok(0)
}

async fn rotate_tenant(a: TenantArgs) -> Result<i32, Exit> {
    let (config, meta) = super::ops::open_metadata(&a.config).await?;
    let tenant = config.tenants.iter().find(|t| t.name == a.tenant).ok_or_else(|| {
        Exit::config(format!(
            "tenant '{}' is not in the configuration ([[tenants]])",
            a.tenant
        ))
    })?;
    let ring = keyring(&config, meta.clone())?;
    let (id, _) = ring
        .make_key(tenant.id(), true)
        .await
        .map_err(|e| Exit::problem(e.to_string()))?;
    let v = json!({"tenant": a.tenant, "key": id});
    audit(
        meta.as_ref(),
        "encryption.rotate_tenant",
        Some(tenant.id().to_string()),
        v.clone(),
    )
    .await;
    print(a.format, &v, |v| {
        format!(
            "tenant '{}': new answers are sealed with {} (gateways pick it up within a minute); older ones stay readable\n",
            v["tenant"].as_str().unwrap_or(""),
            v["key"].as_str().unwrap_or("")
        )
    });
    Ok(0)
}

async fn reseal(a: ResealArgs) -> Result<i32, Exit> {
    let config = super::load_config(&a.config, &super::env_map()).map_err(|e| Exit::config(e.to_string()))?;
    if !config.encryption.enabled() {
        return Err(Exit::config(
            "a reseal needs a master key ([encryption] master_key_env or master_key_file)",
        ));
    }
    let payload = json!({"filter": {"tenant": a.tenant}, "page": a.page_size, "actor": "cli"});
    let v = super::purge::run_job(&a.config, recache_ops::recovery::reseal::RESEAL, payload, a.format).await?;
    print(a.format, &v, |v| {
        let mut out = format!(
            "reseal: {} entries scanned; {} sealed again, {} already sealed with their tenant's key\n",
            v["scanned"], v["resealed"], v["already_sealed"]
        );
        for (k, what) in [
            ("changed_meanwhile", "stored again meanwhile (kept as stored)"),
            ("missing", "with no artifact (see `recache audit`)"),
            (
                "unusable",
                "left as they are: their artifact does not check out (see `recache audit`)",
            ),
        ] {
            if v[k].as_u64().unwrap_or(0) > 0 {
                out.push_str(&format!("{} entries {what}\n", v[k]));
            }
        }
        out
    });
    Ok(0)
}
