//! Builds the roles from config, starts the gateway and its background
//! tasks, and shuts it all down cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cache::{Cache, Timeouts};
use crate::config::Config;
use crate::gateway::{self, auth::Tenants, flight::Coalescer, AppState};
use crate::metrics::Metrics;
use crate::roles::artifacts_local::ObjectStoreArtifacts;
use crate::roles::artifacts_memory::MemoryTier;
use crate::roles::index_embedded::EmbeddedIndex;
use crate::roles::metadata_sqlite::SqliteMetadata;
use crate::roles::vectors_disabled::DisabledVectors;
use crate::roles::{now_ms, Artifacts, Roles};
use crate::upstream::Upstreams;

/// Opens every role named in the config. Config validation has already
/// refused engines this build does not have.
pub async fn open_roles(config: &Config) -> anyhow::Result<Roles> {
    let started = Instant::now();
    let meta_cfg = &config.metadata;
    let metadata = SqliteMetadata::open(
        &meta_cfg.path,
        meta_cfg.max_connections,
        Duration::from_millis(meta_cfg.timeout_ms),
    )
    .await
    .with_context(|| format!("cannot open metadata at {}", meta_cfg.path.display()))?;
    let (index, stats) = tokio::task::spawn_blocking({
        let path = config.index.path.clone();
        move || EmbeddedIndex::open(&path)
    })
    .await?
    .with_context(|| format!("cannot open index at {}", config.index.path.display()))?;
    index.spawn_flusher(Duration::from_millis(100));
    let artifacts = ObjectStoreArtifacts::local(&config.artifacts.path, &config.artifacts.prefix)
        .with_context(|| format!("cannot open artifacts at {}", config.artifacts.path.display()))?;
    let mut artifacts: Arc<dyn Artifacts> = Arc::new(artifacts);
    if config.artifacts.memory_cache_mb > 0 {
        artifacts = Arc::new(MemoryTier::new(
            artifacts,
            (config.artifacts.memory_cache_mb * 1024 * 1024) as usize,
            (config.artifacts.memory_cache_max_item_kb * 1024) as usize,
        ));
    }
    let roles = Roles {
        index: index.clone(),
        artifacts,
        vectors: Arc::new(DisabledVectors),
        metadata: Arc::new(metadata),
    };
    let loaded = started.elapsed();
    let replayed = replay_index(&roles).await?;
    tracing::info!(
        index_records = stats.records,
        index_live = stats.live,
        compacted = stats.compacted,
        replayed_from_metadata = replayed,
        index_load_ms = loaded.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "storage roles open"
    );
    Ok(roles)
}

/// Puts back into the index whatever metadata knows and the index may have missed.
async fn replay_index(roles: &Roles) -> anyhow::Result<u64> {
    let Some(since) = roles.index.replay_from_ms() else {
        return Ok(0);
    };
    let entries = roles
        .metadata
        .live_entries(since, now_ms())
        .await
        .context("cannot read entries from metadata to rebuild the index")?;
    let mut n = 0;
    for (key, entry) in entries {
        if roles.index.get(key).await?.as_ref() != Some(&entry) {
            roles.index.put(key, entry).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Opens the roles and serves on `config.server.listen` (port 0 picks one).
    pub async fn start(config: Config, env: &HashMap<String, String>) -> anyhow::Result<Gateway> {
        let roles = open_roles(&config).await?;
        let metrics = Arc::new(Metrics::default());
        let cache = Arc::new(Cache::new(roles, metrics, Timeouts::from_config(&config)));
        let upstreams = Upstreams::from_config(&config, env)?;
        let state = Arc::new(AppState {
            tenants: Tenants::from_config(&config),
            admin_token: config.admin_token(env),
            config: Arc::new(config),
            cache,
            upstreams,
            coalescer: Arc::new(Coalescer::default()),
            started: Instant::now(),
        });
        let listener = tokio::net::TcpListener::bind(&state.config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.config.server.listen))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = gateway::app(state.clone());
        let server = tokio::spawn(async move {
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "HTTP server stopped with an error");
            }
        });
        let background = spawn_background(&state);
        Ok(Gateway {
            addr,
            state,
            shutdown: Some(tx),
            server,
            background,
        })
    }

    /// Stops accepting, lets requests in progress finish, flushes counters and the index.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.server).await;
        for t in &self.background {
            t.abort();
        }
        self.state.cache.flush_hits().await;
        if let Err(e) = self.state.cache.roles.index.flush().await {
            tracing::error!(error = %e, "index flush at shutdown failed");
        }
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
    vec![hits, sweep]
}
