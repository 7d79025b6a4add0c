//! The gateway a drill runs against: a throw-away one the drill starts on the
//! configured engines (`--managed`), each networked engine and the provider
//! behind a relay the drill can cut; or a running one (`--url`), acted on
//! through its admin API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use super::relay::{host_port, through, Relay};
use recache_core::config::{ArtifactsEngine, IndexEngine, MetadataEngine, VectorsEngine};
use recache_core::config::{Config, TenantConfig};
use recache_gateway::server::Gateway;
use recache_ops::recovery::Recovery;
use recache_storage::queue::new_token;
use recache_storage::roles::Roles;

/// The drill's own tenant in a managed gateway.
pub const TENANT: &str = "drill";

/// The drill tenant's requests per minute: counted on every request, far
/// above any drill's rate.
const DRILL_RPM: u64 = 100_000_000;

pub struct Subject {
    pub base: String,
    /// The client key traffic is sent with.
    pub key: String,
    pub admin_token: Option<String>,
    pub http: reqwest::Client,
    /// The configuration in effect (managed: with the relays and the drill tenant).
    pub config: Arc<Config>,
    pub managed: Option<Managed>,
}

pub struct Managed {
    gateway: Option<Gateway>,
    /// By backend name (`index`, `artifacts`, `vectors`, `metadata`, `provider`).
    pub relays: BTreeMap<String, Relay>,
    _dir: tempfile::TempDir,
}

impl Managed {
    pub fn state(&self) -> &Arc<recache_gateway::gateway::AppState> {
        &self
            .gateway
            .as_ref()
            .expect("gateway runs until the subject is closed")
            .state
    }
}

impl Subject {
    /// Starts a gateway of its own on the configured engines. Embedded stores
    /// live in a throw-away folder; networked engines and the provider are
    /// reached through relays.
    pub async fn managed(config: &Config, env: &HashMap<String, String>) -> anyhow::Result<Subject> {
        let dir = tempfile::Builder::new().prefix("recache-drill-").tempdir()?;
        let d = dir.path();
        let mut c = config.clone();
        c.server.listen = "127.0.0.1:0".into();
        // Embedded stores: a throw-away folder.
        if c.index.engine != IndexEngine::Redis {
            c.index.path = d.join("index");
        }
        if c.artifacts.engine != ArtifactsEngine::S3 {
            c.artifacts.path = d.join("artifacts");
        }
        if c.metadata.engine != MetadataEngine::Postgres {
            c.metadata.path = d.join("metadata.db");
        }
        c.metadata.spool_path = d.join("spool.jsonl");
        if c.vectors.engine == VectorsEngine::Embedded {
            c.vectors.path = d.join("vectors");
        }
        // Networked engines and the provider: behind a relay each.
        let networked = [
            c.index.engine == IndexEngine::Redis,
            c.artifacts.engine == ArtifactsEngine::S3,
            c.metadata.engine == MetadataEngine::Postgres,
            c.vectors.engine == VectorsEngine::Qdrant,
        ];
        let mut urls: Vec<(String, &mut Option<String>)> = vec![
            ("index".into(), &mut c.index.url),
            ("artifacts".into(), &mut c.artifacts.endpoint),
            ("metadata".into(), &mut c.metadata.url),
            ("vectors".into(), &mut c.vectors.url),
        ];
        let mut provider = Vec::new();
        for (i, u) in c.upstreams.iter_mut().enumerate() {
            let name = if i == 0 {
                "provider".to_string()
            } else {
                format!("provider-{i}")
            };
            provider.push((name, u));
        }
        let mut relays = BTreeMap::new();
        for ((backend, url), on) in urls.iter_mut().zip(networked) {
            if let Some(r) = relay_for(backend, url.as_deref().filter(|_| on)).await? {
                **url =
                    through(url.as_deref().unwrap_or_default(), r.addr).map(|u| u.trim_end_matches('/').to_string());
                relays.insert(backend.clone(), r);
            }
        }
        for (name, u) in provider {
            if let Some(r) = relay_for(&name, Some(&u.base_url)).await? {
                if let Some(url) = through(&u.base_url, r.addr) {
                    u.base_url = url.trim_end_matches('/').to_string();
                }
                relays.insert(name, r);
            }
        }
        // The drill's tenant, with a key nobody else has.
        let key = format!("sk-drill-{}", new_token());
        c.tenants.retain(|t| t.name != TENANT);
        c.tenants.push(TenantConfig {
            id: None,
            name: TENANT.into(),
            keys: vec![format!(
                "sha256:{}",
                recache_ops::backup::codec::sha256_hex(key.as_bytes())
            )],
            // Counted, never reached: the drill measures what the limits'
            // counters do while their engine is faulted.
            rpm: Some(DRILL_RPM),
            ..TenantConfig::default()
        });
        // The recovery jobs run in this gateway; a full restore needs a backup target.
        c.warmer.enabled = true;
        c.backup.schedule = None;
        if c.backup.target.is_none() {
            c.backup.target = Some(d.join("backups").display().to_string());
        }
        let token = new_token();
        let mut env = env.clone();
        env.insert(c.server.admin_token_env.clone(), token.clone());
        let gateway = Gateway::start(c.clone(), &env)
            .await
            .context("the managed gateway did not start")?;
        Ok(Subject {
            base: format!("http://{}", gateway.addr),
            key,
            admin_token: Some(token),
            http: client(),
            config: Arc::new(c),
            managed: Some(Managed {
                gateway: Some(gateway),
                relays,
                _dir: dir,
            }),
        })
    }

    /// A running gateway at `url`.
    pub fn remote(config: &Config, url: &str, key: String, admin_token: Option<String>) -> Subject {
        Subject {
            base: url.trim_end_matches('/').to_string(),
            key,
            admin_token,
            http: client(),
            config: Arc::new(config.clone()),
            managed: None,
        }
    }

    pub(crate) fn is_managed(&self) -> bool {
        self.managed.is_some()
    }

    /// The stores the drill acts on directly (losses, restore, audit): the
    /// managed gateway's own roles.
    pub fn roles(&self) -> Option<&Roles> {
        self.managed.as_ref().map(|m| &m.state().cache.roles)
    }

    pub fn recovery(&self) -> Option<&Arc<Recovery>> {
        self.managed.as_ref().map(|m| &m.state().recovery)
    }

    pub(crate) fn relay(&self, backend: &str) -> Option<&Relay> {
        self.managed.as_ref().and_then(|m| m.relays.get(backend))
    }

    /// Every relay of the provider (one per upstream address).
    pub(crate) fn provider_relays(&self) -> Vec<&Relay> {
        self.managed
            .as_ref()
            .map(|m| m.relays.values().filter(|r| r.name.starts_with("provider")).collect())
            .unwrap_or_default()
    }

    /// Requests admitted while the shared limit counters were out
    /// (`[limits] on_counter_loss`), and requests refused by a limit, since
    /// the gateway started: from the managed gateway itself, or a remote
    /// one's `/metrics` (`None` when it cannot be read).
    pub async fn limit_counts(&self) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(m) = &self.managed {
            let l = &m.state().limiter;
            let refused = l.refusals.iter().map(|n| n.load(Relaxed)).sum();
            return Some((l.fallbacks.load(Relaxed), refused));
        }
        let r = self
            .admin(self.http.get(format!("{}/metrics", self.base)))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let text = r.error_for_status().ok()?.text().await.ok()?;
        let sum = |family: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Some((
            sum("recache_limit_fallback_admissions_total"),
            sum("recache_limit_refusals_total"),
        ))
    }

    fn admin(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.admin_token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn admin_json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let r = self.admin(req).timeout(Duration::from_secs(10)).send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(anyhow!(
                "admin API answered {status}: {}",
                v.pointer("/error/message").and_then(Value::as_str).unwrap_or("")
            ));
        }
        Ok(v)
    }

    /// Each breaker's state (`closed`, `open`, `half_open`, `forced_open`, `disabled`).
    pub async fn breakers(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let v = self
            .admin_json(self.http.get(format!("{}/admin/breakers", self.base)))
            .await?;
        Ok(v["breakers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|b| Some((b["backend"].as_str()?.to_string(), b["state"].as_str()?.to_string())))
            .collect())
    }

    /// Forces a breaker open; the gateway closes it by itself after `seconds`.
    pub async fn force_open(&self, backend: &str, seconds: u64) -> anyhow::Result<()> {
        self.admin_json(self.http.post(format!(
            "{}/admin/breakers/{backend}/open?seconds={}",
            self.base,
            seconds.max(1)
        )))
        .await
        .map(|_| ())
    }

    pub async fn reset(&self, backend: &str) -> anyhow::Result<()> {
        self.admin_json(self.http.post(format!("{}/admin/breakers/{backend}/reset", self.base)))
            .await
            .map(|_| ())
    }

    pub async fn enqueue(&self, kind: &str, payload: Value) -> anyhow::Result<i64> {
        let v = self
            .admin_json(
                self.http
                    .post(format!("{}/admin/jobs", self.base))
                    .json(&json!({"kind": kind, "payload": payload})),
            )
            .await?;
        v["job"].as_i64().ok_or_else(|| anyhow!("no job id in {v}"))
    }

    /// Enqueues a job on the gateway and waits (at most `limit`) until it
    /// has finished: its result, or an error with the job's last error.
    pub async fn run_job(&self, kind: &str, payload: Value, limit: Duration) -> anyhow::Result<Value> {
        let id = self.enqueue(kind, payload).await?;
        let until = std::time::Instant::now() + limit;
        loop {
            let v = self
                .admin_json(self.http.get(format!("{}/admin/jobs/{id}", self.base)))
                .await?;
            let job = &v["job"];
            match job["state"].as_str() {
                Some("succeeded") => return Ok(job["result"].clone()),
                Some("dead") => {
                    return Err(anyhow!(
                        "{kind} job #{id} failed: {}",
                        job["last_error"].as_str().unwrap_or("no error given")
                    ))
                }
                _ if std::time::Instant::now() > until => {
                    return Err(anyhow!(
                        "{kind} job #{id} still {} after {} s",
                        job["state"].as_str().unwrap_or("?"),
                        limit.as_secs()
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Jobs queued or running.
    pub(crate) async fn live_jobs(&self) -> anyhow::Result<u64> {
        let v = self
            .admin_json(self.http.get(format!("{}/admin/jobs?limit=1", self.base)))
            .await?;
        Ok(v["counts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|c| matches!(c["state"].as_str(), Some("queued" | "running")))
            .filter_map(|c| c["count"].as_u64())
            .sum())
    }

    /// `/health/ready` says `ready` (every role up).
    pub async fn ready(&self) -> bool {
        match self
            .http
            .get(format!("{}/health/ready", self.base))
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => r.json::<Value>().await.ok().is_some_and(|v| v["status"] == "ready"),
            Err(_) => false,
        }
    }

    /// Stops the managed gateway (a remote one is left alone).
    pub async fn close(mut self) {
        if let Some(m) = self.managed.as_mut() {
            for r in m.relays.values() {
                r.heal();
            }
            if let Some(gw) = m.gateway.take() {
                gw.shutdown().await;
            }
        }
    }
}

/// A relay in front of the host and port of `url` (none for a URL without them).
async fn relay_for(name: &str, url: Option<&str>) -> std::io::Result<Option<Relay>> {
    match url.and_then(host_port) {
        Some((h, p)) => Ok(Some(Relay::start(name, &format!("{h}:{p}")).await?)),
        None => Ok(None),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_default()
}
