//! Builds the roles from config, starts the gateway and its background
//! tasks, and shuts it all down cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a gateway writes its heartbeat row (live replicas: rows of the last three periods).
const REPLICA_HEARTBEAT_SECONDS: u64 = 10;

use anyhow::Context;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::gateway::{auth::Tenants, flight::Coalescer, AppState};
use recache_core::config::Config;
use recache_engine::cache::Cache;
use recache_engine::metrics::Metrics;
use recache_engine::upstream::Upstreams;
use recache_ops::recovery::{Recovery, RECONCILE_METADATA};
use recache_storage::queue::worker::WorkerConfig;
use recache_storage::queue::NewJob;

use recache_storage::roles::factory::open_roles;

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The ops listener's address (`server.ops_listen`), when there is one.
    pub ops_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// The warmer and the recovery watch: told to stop, then awaited.
    recovery: Vec<JoinHandle<()>>,
    stop_recovery: watch::Sender<bool>,
}

impl Gateway {
    /// Opens the roles and serves on `config.server.listen` (port 0 picks one).
    pub async fn start(config: Config, env: &HashMap<String, String>) -> anyhow::Result<Gateway> {
        let (roles, queue) = open_roles(&config).await?;
        refuse_sealed_without_key(&roles).await?;
        let metrics = Arc::new(Metrics::default());
        let spool = recache_engine::spool::Spool::open(&config.metadata.spool_path)
            .with_context(|| {
                format!(
                    "cannot open the metadata spool at {}",
                    config.metadata.spool_path.display()
                )
            })?
            .with_limit(config.metadata.spool_max_mb * 1024 * 1024);
        let cache = Arc::new(
            Cache::new(
                roles,
                metrics,
                Some(Arc::new(spool)),
                Duration::from_secs(config.cache.max_stale_seconds),
                recache_engine::batch::Batching::from_config(&config),
            )
            .with_answer_events(config.metadata.audit_answer_events),
        );
        let upstreams = Arc::new(Upstreams::from_config(&config, env)?);
        let config = Arc::new(config);
        let recovery = Arc::new(recache_ops::backup::run::with_backup_jobs(
            Recovery::new(cache.clone(), queue, config.clone(), upstreams.clone()).with_env(env),
        ));
        let semantic = recache_engine::semantic::Semantic::open(&config, cache.clone(), &upstreams).await?;
        if let Some(sem) = &semantic {
            let _ = recovery.semantic.set(sem.clone());
        }
        let state = Arc::new(AppState {
            semantic,
            tenants: Tenants::from_config(&config),
            limiter: Arc::new(crate::gateway::limits::Limiter::new(
                config.limits.clone(),
                cache.roles.index.clone(),
                cache.clone(),
            )),
            admin_token: config.admin_token(env),
            metrics_token: config.metrics_token(env),
            health: crate::gateway::ops::HealthRound::default(),
            config,
            cache,
            upstreams,
            coalescer: Arc::new(Coalescer::default()),
            started: Instant::now(),
            recovery,
            dashboard: Arc::new(crate::dashboard::Dashboard::default()),
        });
        // The first loss check runs before the first request, so the generation marker is
        // in place before any traffic and a fresh start is never mistaken for a loss.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            recache_ops::recovery::watch::check_index(&state.recovery),
        )
        .await;
        // An empty active vector collection (new embedder, lost store) is refilled from metadata.
        let _ = tokio::time::timeout(Duration::from_secs(2), state.recovery.check_vectors()).await;
        let listener = tokio::net::TcpListener::bind(&state.config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.config.server.listen))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = crate::routes::app(state.clone());
        let limits = crate::http::Limits::from_config(&state.config.server);
        // The ops listener (health and metrics only, no token), when configured.
        let (ops_tx, ops_rx) = watch::channel(false);
        let ops_addr = match &state.config.server.ops_listen {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} (server.ops_listen)"))?;
                let addr = l.local_addr()?;
                let mut stop = ops_rx.clone();
                tokio::spawn(crate::http::serve(
                    l,
                    crate::routes::ops_app(state.clone()),
                    limits,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                ));
                Some(addr)
            }
            None => None,
        };
        let server = tokio::spawn(async move {
            crate::http::serve(listener, app, limits, async {
                let _ = rx.await;
            })
            .await;
            let _ = ops_tx.send(true);
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut background = spawn_background(&state);
        // Spawned once the start cannot fail: the report holds the roles while it runs.
        background.push(tokio::spawn(recache_storage::roles::factory::report_backends(
            state.cache.roles.clone(),
        )));
        let recovery = spawn_recovery(&state, stop_rx);
        Ok(Gateway {
            addr,
            ops_addr,
            state,
            shutdown: Some(tx),
            server,
            background,
            recovery,
            stop_recovery: stop_tx,
        })
    }

    /// Stops accepting, lets requests in progress finish, flushes counters and the index.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.server).await;
        // Answers already sent may still be being stored: let those flights finish.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state.coalescer.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Workers release their jobs (no attempt used) so another process takes them at once.
        let _ = self.stop_recovery.send(true);
        for t in &mut self.recovery {
            if tokio::time::timeout(Duration::from_secs(10), &mut *t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        // Awaited after the abort: a cancelled task drops its state (and the stores'
        // locks with it) only when it is polled again, and a restart needs them free.
        for t in self.background.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.state.cache.flush_hits().await;
        if let Err(e) = self.state.cache.roles.index.flush().await {
            tracing::error!(error = %e, "index flush at shutdown failed");
        }
        if let Err(e) = self.state.cache.roles.vectors.flush().await {
            tracing::error!(error = %e, "vector store flush at shutdown failed");
        }
    }
}

/// The warmer's workers (when `warmer.enabled`) and the recovery watch.
fn spawn_recovery(state: &Arc<AppState>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let w = &state.config.warmer;
    let mut out = Vec::new();
    let r = state.recovery.clone();
    out.push(tokio::spawn(recache_ops::recovery::watch::run(
        r.clone(),
        Duration::from_millis(w.detect_interval_ms.max(50)),
        stop.clone(),
    )));
    if let Some(every) = recache_ops::backup::schedule::interval(&state.config) {
        match recache_ops::backup::Targets::open(state.config.clone(), &state.recovery.env) {
            Ok(t) if w.enabled => out.push(tokio::spawn(recache_ops::backup::schedule::run(
                r.clone(),
                t,
                every,
                stop.clone(),
            ))),
            Ok(_) => {
                tracing::warn!("backup.schedule is set but warmer.enabled is false: no worker would run the backups")
            }
            Err(e) => tracing::error!(error = %e, "backup.schedule is set but the target cannot be opened"),
        }
    }
    if w.enabled {
        let cfg = WorkerConfig::from_config(&state.config, "gateway");
        out.push(tokio::spawn(recache_storage::queue::worker::run(
            r.queue.clone(),
            r.clone(),
            state.cache.roles.breakers.clone(),
            cfg,
            r.progress.clone(),
            stop,
        )));
    }
    out
}

fn spawn_background(state: &Arc<AppState>) -> Vec<JoinHandle<()>> {
    let hits = {
        let s = state.clone();
        let every = Duration::from_millis(s.config.cache.hit_flush_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                s.cache.flush_hits().await;
            }
        })
    };
    let sweep = {
        let s = state.clone();
        let every = Duration::from_secs(s.config.cache.sweep_interval_seconds.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (i, m, a) = s.cache.sweep().await;
                if i + m as u64 + a as u64 > 0 {
                    tracing::info!(index = i, metadata = m, artifacts = a, "swept expired entries");
                }
                use recache_storage::roles::AuditClass;
                let m = &s.config.metadata;
                for (class, days) in [
                    (AuditClass::Answers, m.audit_retention_days),
                    (AuditClass::Operations, m.admin_audit_retention_days),
                ] {
                    if days == 0 {
                        continue;
                    }
                    let keep = Duration::from_secs(days.min(36_500) * 86_400);
                    let n = s.cache.prune_audit(class, keep).await;
                    if n > 0 {
                        tracing::info!(audit_events = n, class = ?class, retention_days = days, "pruned old audit events");
                    }
                }
            }
        })
    };
    let spool = {
        let s = state.clone();
        let every = Duration::from_millis(s.config.metadata.spool_replay_interval_ms.max(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut reconciled_drops = 0;
            loop {
                tick.tick().await;
                s.cache.replay_spool().await;
                // Registrations dropped at the spool's cap: restore them from their artifacts.
                let Some(spool) = &s.cache.spool else { continue };
                let (dropped, _) = spool.dropped();
                if dropped > reconciled_drops && spool.size_bytes() == 0 {
                    let job = NewJob::new(
                        RECONCILE_METADATA,
                        serde_json::json!({"reason": "spool dropped registrations"}),
                    )
                    .priority(recache_ops::recovery::jobs::default_priority(RECONCILE_METADATA))
                    .unique(format!("{RECONCILE_METADATA}:spool"));
                    if let Ok(e) = s.recovery.queue.enqueue(job).await {
                        tracing::warn!(
                            dropped_registrations = dropped - reconciled_drops,
                            job = e.id,
                            "metadata is back: reconciling the entries the full spool dropped"
                        );
                        reconciled_drops = dropped;
                    }
                }
            }
        })
    };
    // Live replicas, for `[limits] on_counter_loss = "local-share"`: each
    // gateway writes a heartbeat row in metadata's worker table (its owner
    // starts with `gateway:`) and counts the rows seen in the last 30 s.
    let replicas = {
        let s = state.clone();
        let owner = recache_storage::queue::worker::gateway_owner();
        let started = recache_storage::roles::now_ms();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(REPLICA_HEARTBEAT_SECONDS));
            loop {
                tick.tick().await;
                let now = recache_storage::roles::now_ms();
                let me = recache_storage::queue::WorkerInfo {
                    owner: owner.clone(),
                    host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_string())
                        .unwrap_or_default(),
                    pid: std::process::id() as i64,
                    started_at_ms: started,
                    seen_at_ms: now,
                    paused: serde_json::json!({}),
                };
                if let Err(e) = s.recovery.queue.register_worker(me).await {
                    tracing::debug!(error = %e, "limits: could not write this replica's heartbeat");
                    continue;
                }
                if let Ok(ws) = s
                    .recovery
                    .queue
                    .workers(now - 3 * REPLICA_HEARTBEAT_SECONDS as i64 * 1000)
                    .await
                {
                    let n = ws
                        .iter()
                        .filter(|w| recache_storage::queue::worker::is_gateway(&w.owner))
                        .count();
                    s.limiter
                        .replicas
                        .store(n.max(1) as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let mut out = vec![hits, sweep, spool, replicas];
    out.extend(crate::dashboard::spawn(state));
    out
}

/// A gateway with sealed answers and no master key refuses to start: it could
/// serve none of them and would store new ones in plain text beside them.
async fn refuse_sealed_without_key(roles: &recache_storage::roles::Roles) -> anyhow::Result<()> {
    if roles.keyring.is_some() {
        return Ok(());
    }
    match roles.metadata.list_data_keys(None).await {
        Ok(keys) => {
            let live = keys.iter().filter(|k| k.destroyed_at_ms.is_none()).count();
            if live > 0 {
                anyhow::bail!(
                    "metadata holds {live} tenant data key(s): the cache holds sealed answers, and no master key is configured (set [encryption] master_key_env or master_key_file)"
                );
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check metadata for sealed answers at start-up");
            Ok(())
        }
    }
}
