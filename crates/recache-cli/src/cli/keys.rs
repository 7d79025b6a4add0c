//! `recache keys create|list|revoke|rotate`: client keys kept in metadata
//! (only their SHA-256). A key is printed once, when it is made.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::ops::{print, Exit};
use super::{ConfigArgs, OutputFormat};
use recache_core::config::Limits;
use recache_ops::keys::{self, Created, KeyError, NewKey};

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key for a tenant; it is printed once and only its SHA-256 is kept.
    Create(CreateArgs),
    /// The keys in metadata (never the keys themselves).
    List(ListArgs),
    /// Refuse a key from now on (every replica within `[keys] cache_seconds`).
    Revoke(IdArgs),
    /// A new key with the same tenant, name and limits; the old one stays valid for --grace.
    Rotate(RotateArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A tenant of the configuration ([[tenants]] name).
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub name: Option<String>,
    /// The key stops working after this long (e.g. 90d, 12h).
    #[arg(long)]
    pub expires: Option<String>,
    /// Models the key may ask for, comma-separated (exact or prefix*).
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Upstreams (by name) its requests may go to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub upstreams: Option<Vec<String>>,
    /// Requests per minute (cache hits included).
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Provider tokens per minute (cache hits never count).
    #[arg(long)]
    pub tpm: Option<u64>,
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Provider spend per UTC day, USD.
    #[arg(long)]
    pub budget_usd_day: Option<f64>,
    /// Provider spend per UTC month, USD.
    #[arg(long)]
    pub budget_usd_month: Option<f64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The key's id (`key_…`, from `keys list`).
    pub id: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    pub id: String,
    /// How long the old key keeps working beside the new one.
    #[arg(long, default_value = "1h")]
    pub grace: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

pub async fn run(args: KeysArgs) -> i32 {
    let res = match args.command {
        KeysCommand::Create(a) => create(a).await,
        KeysCommand::List(a) => list(a).await,
        KeysCommand::Revoke(a) => revoke(a).await,
        KeysCommand::Rotate(a) => rotate(a).await,
    };
    super::ops::exit_code("keys", res)
}

fn key_error(e: KeyError) -> Exit {
    match e {
        KeyError::Invalid(_) | KeyError::NotFound(_) => Exit::config(e.to_string()),
        KeyError::Backend(_) => Exit::problem(e.to_string()),
    }
}

fn duration(flag: &str, s: &str) -> Result<Duration, Exit> {
    super::ops::parse_duration(s).map_err(|e| Exit::config(format!("{flag}: {e}")))
}

fn created_json(c: &Created) -> Value {
    json!({"key": c.key, "record": keys::record_json(&c.record)})
}

fn created_text(v: &Value) -> String {
    format!(
        "{}\n\nkey {} for tenant {} (shown once: store it now; recache keeps only its SHA-256)\n",
        v["key"].as_str().unwrap_or_default(),
        v["record"]["id"].as_str().unwrap_or_default(),
        v["record"]["tenant"].as_str().unwrap_or_default()
    )
}

async fn create(a: CreateArgs) -> Result<i32, Exit> {
    let expires_in = a.expires.as_deref().map(|s| duration("--expires", s)).transpose()?;
    let (config, meta) = super::ops::open_metadata(&a.config).await?;
    let req = NewKey {
        tenant: a.tenant,
        name: a.name,
        expires_in,
        limits: Limits {
            rpm: a.rpm,
            tpm: a.tpm,
            max_concurrent: a.max_concurrent,
            budget_usd_day: a.budget_usd_day,
            budget_usd_month: a.budget_usd_month,
            models: a.models,
            upstreams: a.upstreams,
        },
        rotated_from: None,
    };
    let created = keys::create(meta.as_ref(), &config, req, "cli")
        .await
        .map_err(key_error)?;
    print(a.format, &created_json(&created), created_text);
    Ok(0)
}

async fn list(a: ListArgs) -> Result<i32, Exit> {
    let (_, meta) = super::ops::open_metadata(&a.config).await?;
    let all = meta
        .list_keys(a.tenant.clone())
        .await
        .map_err(|e| Exit::problem(e.to_string()))?;
    let rows: Vec<Value> = all.iter().map(keys::record_json).collect();
    print(a.format, &json!({"keys": rows}), |v| {
        let mut out = format!(
            "{:<21} {:<16} {:<16} {:<12} {:<8} limits\n",
            "id", "tenant", "name", "prefix", "state"
        );
        for k in v["keys"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{:<21} {:<16} {:<16} {:<12} {:<8} {}\n",
                k["id"].as_str().unwrap_or_default(),
                k["tenant"].as_str().unwrap_or_default(),
                k["name"].as_str().unwrap_or("-"),
                format!("{}…", k["prefix"].as_str().unwrap_or_default()),
                k["state"].as_str().unwrap_or_default(),
                k["limits"]
            ));
        }
        out
    });
    Ok(0)
}

async fn revoke(a: IdArgs) -> Result<i32, Exit> {
    let (config, meta) = super::ops::open_metadata(&a.config).await?;
    let k = keys::revoke(meta.as_ref(), &a.id, "cli").await.map_err(key_error)?;
    let cache = config.keys.cache_seconds;
    print(a.format, &keys::record_json(&k), |v| {
        format!(
            "revoked {} (tenant {}); every gateway refuses it within {cache} s ([keys] cache_seconds)\n",
            v["id"].as_str().unwrap_or_default(),
            v["tenant"].as_str().unwrap_or_default()
        )
    });
    Ok(0)
}

async fn rotate(a: RotateArgs) -> Result<i32, Exit> {
    let grace = duration("--grace", &a.grace)?;
    let (config, meta) = super::ops::open_metadata(&a.config).await?;
    let created = keys::rotate(meta.as_ref(), &config, &a.id, grace, "cli")
        .await
        .map_err(key_error)?;
    let old = a.id.clone();
    print(a.format, &created_json(&created), |v| {
        format!("{}the old key {old} stays valid for {}\n", created_text(v), a.grace)
    });
    Ok(0)
}
