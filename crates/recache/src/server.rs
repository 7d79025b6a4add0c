//! Builds the roles from config, starts the gateway and its background
//! tasks, and shuts it all down cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::breaker::Breaker;
use crate::cache::Cache;
use crate::config::Config;
use crate::gateway::{self, auth::Tenants, flight::Coalescer, AppState};
use crate::metrics::Metrics;
use crate::queue::worker::WorkerConfig;
use crate::queue::{NewJob, Queue};
use crate::recovery::{Recovery, RECONCILE_METADATA};
use crate::roles::artifacts_memory::MemoryTier;
use crate::roles::artifacts_object_store::ObjectStoreArtifacts;
use crate::roles::guarded::{Guard, GuardedArtifacts, GuardedIndex, GuardedMetadata};
use crate::roles::index_embedded::EmbeddedIndex;
use crate::roles::index_redis::RedisIndex;
use crate::roles::index_snapshot::SnapshotIndex;
use crate::roles::metadata_postgres::PostgresMetadata;
use crate::roles::metadata_sqlite::SqliteMetadata;
use crate::roles::vectors_disabled::DisabledVectors;
use crate::roles::{now_ms, Artifacts, Index, Metadata, Roles};
use crate::upstream::Upstreams;

/// How a process uses the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexAccess {
    /// Serving or repairing: the embedded index is opened for writing (one process at a time).
    Write,
    /// Auditing: the embedded index is read from a snapshot of its log, so it
    /// works beside a running gateway.
    ReadOnly,
    /// Like `Write`, without the start-up replay from metadata (benchmarks of the rebuild itself).
    WriteNoReplay,
}

/// The index named in the config. Serving opens the embedded index for
/// writing (and starts its log flusher); remote engines connect lazily.
pub async fn open_index(config: &Config) -> anyhow::Result<Arc<dyn Index>> {
    open_index_as(config, IndexAccess::Write).await
}

pub async fn open_index_as(config: &Config, access: IndexAccess) -> anyhow::Result<Arc<dyn Index>> {
    let c = &config.index;
    if access == IndexAccess::ReadOnly && c.engine != "redis" {
        let path = c.path.clone();
        let index = tokio::task::spawn_blocking(move || SnapshotIndex::load(&path))
            .await?
            .with_context(|| format!("cannot read the index at {}", c.path.display()))?;
        return Ok(Arc::new(index));
    }
    match c.engine.as_str() {
        "redis" => {
            let url = c.url.as_deref().unwrap_or_default();
            let retain = Duration::from_secs(config.cache.max_stale_seconds);
            let index = RedisIndex::new(url, &c.key_prefix, Duration::from_millis(c.timeout_ms))?;
            Ok(Arc::new(index.retain_expired_for(retain)))
        }
        _ => {
            let path = c.path.clone();
            let (index, stats) = tokio::task::spawn_blocking(move || EmbeddedIndex::open(&path))
                .await?
                .with_context(|| format!("cannot open index at {}", c.path.display()))?;
            index.spawn_flusher(Duration::from_millis(100));
            tracing::info!(
                records = stats.records,
                live = stats.live,
                compacted = stats.compacted,
                "embedded index loaded"
            );
            Ok(index)
        }
    }
}

/// The artifact store named in the config (without the memory tier).
pub fn open_artifacts(config: &Config) -> anyhow::Result<Arc<dyn Artifacts>> {
    let c = &config.artifacts;
    let store = match c.engine.as_str() {
        "s3" => ObjectStoreArtifacts::s3(
            c.bucket.as_deref().unwrap_or_default(),
            c.endpoint.as_deref(),
            c.region.as_deref(),
            &c.prefix,
            Duration::from_millis(c.timeout_ms),
        )?,
        _ => ObjectStoreArtifacts::local(&c.path, &c.prefix)
            .with_context(|| format!("cannot open artifacts at {}", c.path.display()))?,
    };
    Ok(Arc::new(store))
}

/// The metadata store named in the config, and the job queue it holds.
/// PostgreSQL connects lazily.
pub async fn open_metadata(config: &Config) -> anyhow::Result<(Arc<dyn Metadata>, Arc<dyn Queue>)> {
    let c = &config.metadata;
    let timeout = Duration::from_millis(c.timeout_ms);
    match c.engine.as_str() {
        "postgres" => {
            let pg = PostgresMetadata::new(c.url.as_deref().unwrap_or_default(), c.max_connections, timeout)?;
            // Migrate before serving when PostgreSQL is reachable, so no request pays for it;
            // bounded, so a down or hung server delays start-up by at most 2 s (it migrates later).
            match tokio::time::timeout(Duration::from_secs(2), pg.prepare()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "metadata not ready at start-up; schema is migrated on first use")
                }
                Err(_) => {
                    tracing::warn!("metadata did not answer within 2 s at start-up; schema is migrated on first use")
                }
            }
            let pg = Arc::new(pg);
            Ok((pg.clone(), pg))
        }
        _ => {
            let lite = Arc::new(
                SqliteMetadata::open(&c.path, c.max_connections, timeout)
                    .await
                    .with_context(|| format!("cannot open metadata at {}", c.path.display()))?,
            );
            Ok((lite.clone(), lite))
        }
    }
}

/// Opens every role named in the config. A remote engine that is down does
/// not stop the gateway: it starts and serves from the provider.
pub async fn open_roles(config: &Config) -> anyhow::Result<(Roles, Arc<dyn Queue>)> {
    open_roles_as(config, IndexAccess::Write).await
}

pub async fn open_roles_as(config: &Config, access: IndexAccess) -> anyhow::Result<(Roles, Arc<dyn Queue>)> {
    let started = Instant::now();
    let (metadata, queue) = open_metadata(config).await?;
    let index = open_index_as(config, access).await?;
    let artifacts = open_artifacts(config)?;
    // Replay on the raw roles: a million guarded calls would add seconds to start-up.
    let replayed = if access != IndexAccess::Write {
        0
    } else {
        match replay_index(index.as_ref(), metadata.as_ref()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not replay index entries from metadata; the index may miss some entries until they are refetched");
                0
            }
        }
    };
    let breaker = |name: &'static str| Breaker::new(name, &config.breaker);
    let (bi, ba, bv, bm) = (
        breaker("index"),
        breaker("artifacts"),
        breaker("vectors"),
        breaker("metadata"),
    );
    if config.vectors.engine == "disabled" {
        bv.disable();
    }
    let ms = |v: u64| Duration::from_millis(v);
    let index: Arc<dyn Index> = Arc::new(GuardedIndex {
        inner: index,
        guard: Guard::new(bi.clone(), ms(config.index.timeout_ms)),
    });
    let mut artifacts: Arc<dyn Artifacts> = Arc::new(GuardedArtifacts {
        inner: artifacts,
        guard: Guard::new(ba.clone(), ms(config.artifacts.timeout_ms)),
    });
    if config.artifacts.memory_cache_mb > 0 {
        // Outside the guard: hot artifacts are still served while the store is down.
        artifacts = Arc::new(MemoryTier::new(
            artifacts,
            (config.artifacts.memory_cache_mb * 1024 * 1024) as usize,
            (config.artifacts.memory_cache_max_item_kb * 1024) as usize,
        ));
    }
    let metadata: Arc<dyn Metadata> = Arc::new(GuardedMetadata {
        inner: metadata,
        guard: Guard::new(bm.clone(), ms(config.metadata.timeout_ms)),
    });
    let roles = Roles {
        index,
        artifacts,
        vectors: open_vectors(config, bv.clone(), access)?,
        metadata,
        breakers: vec![bi, ba, bv, bm],
    };
    // Report each backend in the background: start-up never waits on a slow or hung one.
    // (Only for processes that serve or work; the CLI's reports say what matters to them.)
    if access == IndexAccess::Write {
        tokio::spawn(report_backends(roles.clone()));
    }
    tracing::info!(
        replayed_from_metadata = replayed,
        total_ms = started.elapsed().as_millis() as u64,
        "storage roles open"
    );
    Ok((roles, queue))
}

/// The vectors role: disabled, or the engine behind its breaker. A read-only
/// process (audit) beside a gateway that owns the embedded store goes without.
pub fn open_vectors(
    config: &Config,
    breaker: Arc<Breaker>,
    access: IndexAccess,
) -> anyhow::Result<Arc<dyn crate::roles::Vectors>> {
    let inner: Arc<dyn crate::roles::Vectors> = match config.vectors.engine.as_str() {
        "embedded" => match crate::roles::vectors_embedded::EmbeddedVectors::open_with(
            &config.vectors.path,
            crate::roles::vectors_embedded::IvfParams {
                min_rows: config.vectors.ivf_min_points,
                nprobe: config.vectors.ivf_nprobe,
                ..Default::default()
            },
        ) {
            Ok(v) => Arc::new(v),
            Err(e) if access == IndexAccess::ReadOnly => {
                tracing::info!(error = %e, "vectors not opened (read-only process)");
                return Ok(Arc::new(DisabledVectors));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the vector store at {}", config.vectors.path.display()))
            }
        },
        "qdrant" => Arc::new(
            // The client's own limit is generous (collection creation); every call is
            // bounded by vectors.timeout_ms in the guard.
            crate::roles::vectors_qdrant::QdrantVectors::new(
                config.vectors.url.as_deref().unwrap_or_default(),
                Duration::from_secs(30),
                &config.vectors.collection_prefix,
            )
            .context("cannot set up the Qdrant client")?,
        ),
        _ => return Ok(Arc::new(DisabledVectors)),
    };
    Ok(Arc::new(crate::roles::guarded::GuardedVectors {
        inner,
        guard: Guard::new(breaker, Duration::from_millis(config.vectors.timeout_ms)),
    }))
}

/// Logs each backend's state and the guides' warnings (in the background:
/// start-up never waits on a slow or hung backend).
async fn report_backends(report: Roles) {
    for h in report.health(Duration::from_secs(2)).await {
        match h.status {
            "down" => tracing::warn!(
                role = h.role,
                engine = h.engine,
                error = h.error.as_deref().unwrap_or(""),
                "backend is down at start-up; requests go to the provider until it returns"
            ),
            _ => tracing::info!(
                role = h.role,
                engine = h.engine,
                status = h.status,
                version = h.info.version.as_deref().unwrap_or(""),
                "backend"
            ),
        }
        for w in &h.info.warnings {
            tracing::warn!(role = h.role, engine = h.engine, "{w}");
        }
    }
}

/// Puts back into the index whatever metadata knows and the index may have missed.
async fn replay_index(index: &dyn Index, metadata: &dyn Metadata) -> anyhow::Result<u64> {
    let Some(since) = index.replay_from_ms() else {
        return Ok(0);
    };
    let entries = metadata
        .live_entries(since, now_ms())
        .await
        .context("cannot read entries from metadata to rebuild the index")?;
    let mut n = 0;
    for (key, entry) in entries {
        if index.get(key).await?.as_ref() != Some(&entry) {
            index.put(key, entry).await?;
            n += 1;
        }
    }
    Ok(n)
}

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
        let metrics = Arc::new(Metrics::default());
        let spool = crate::spool::Spool::open(&config.metadata.spool_path)
            .with_context(|| {
                format!(
                    "cannot open the metadata spool at {}",
                    config.metadata.spool_path.display()
                )
            })?
            .with_limit(config.metadata.spool_max_mb * 1024 * 1024);
        let cache = Arc::new(Cache::new(
            roles,
            metrics,
            Some(Arc::new(spool)),
            Duration::from_secs(config.cache.max_stale_seconds),
            crate::batch::Batching::from_config(&config),
        ));
        let upstreams = Arc::new(Upstreams::from_config(&config, env)?);
        let config = Arc::new(config);
        let recovery = Arc::new(Recovery::new(cache.clone(), queue, config.clone(), upstreams.clone()).with_env(env));
        let semantic = crate::semantic::Semantic::open(&config, cache.clone(), &upstreams).await?;
        if let Some(sem) = &semantic {
            let _ = recovery.semantic.set(sem.clone());
        }
        let state = Arc::new(AppState {
            semantic,
            tenants: Tenants::from_config(&config),
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
            crate::recovery::watch::check_index(&state.recovery),
        )
        .await;
        // An empty active vector collection (new embedder, lost store) is refilled from metadata.
        let _ = tokio::time::timeout(Duration::from_secs(2), state.recovery.check_vectors()).await;
        let listener = tokio::net::TcpListener::bind(&state.config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.config.server.listen))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = gateway::app(state.clone());
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
                    gateway::ops_app(state.clone()),
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
        let background = spawn_background(&state);
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
    out.push(tokio::spawn(crate::recovery::watch::run(
        r.clone(),
        Duration::from_millis(w.detect_interval_ms.max(50)),
        stop.clone(),
    )));
    if let Some(every) = crate::backup::schedule::interval(&state.config) {
        match crate::backup::Targets::open(state.config.clone(), &state.recovery.env) {
            Ok(t) if w.enabled => out.push(tokio::spawn(crate::backup::schedule::run(
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
        let cfg = worker_config(&state.config, "gateway");
        out.push(tokio::spawn(crate::queue::worker::run(
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

/// Worker settings from `[warmer]`.
pub fn worker_config(config: &Config, role: &str) -> WorkerConfig {
    let w = &config.warmer;
    WorkerConfig {
        owner: crate::queue::worker::worker_name(role),
        concurrency: w.concurrency,
        heartbeat: Duration::from_millis(w.heartbeat_ms),
        poll: Duration::from_millis(w.poll_ms),
        backoff_base: Duration::from_millis(w.backoff_ms),
        backoff_max: Duration::from_millis(w.backoff_max_ms.max(w.backoff_ms)),
        retention: Duration::from_secs(w.retention_hours * 3600),
    }
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
                    .priority(crate::recovery::jobs::default_priority(RECONCILE_METADATA))
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
    let mut out = vec![hits, sweep, spool];
    out.extend(crate::dashboard::spawn(state));
    out
}
