//! The role factories: each storage role and the job queue opened as the
//! config names them, each behind its breaker and time limit ([`guarded`]).
//! Used by `serve` and by every command that opens the stores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::breaker::Breaker;
use crate::config::{ArtifactsEngine, Config, IndexEngine, MetadataEngine, VectorsEngine};
use crate::queue::Queue;
use crate::roles::artifacts_memory::MemoryTier;
use crate::roles::artifacts_object_store::ObjectStoreArtifacts;
use crate::roles::artifacts_segments::{Access, SegmentArtifacts, SegmentOptions};
use crate::roles::guarded::{Guard, GuardedArtifacts, GuardedIndex, GuardedMetadata};
use crate::roles::index_embedded::EmbeddedIndex;
use crate::roles::index_redis::RedisIndex;
use crate::roles::index_snapshot::SnapshotIndex;
use crate::roles::metadata_postgres::PostgresMetadata;
use crate::roles::metadata_sqlite::SqliteMetadata;
use crate::roles::vectors_disabled::DisabledVectors;
use crate::roles::{now_ms, Artifacts, Index, Metadata, Roles};

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
    /// Like `Write`, beside a gateway that owns the embedded artifact store
    /// (standalone warmer workers): answers are written one file each.
    WriteShared,
}

/// The index named in the config. Serving opens the embedded index for
/// writing (and starts its log flusher); remote engines connect lazily.
pub async fn open_index(config: &Config) -> anyhow::Result<Arc<dyn Index>> {
    open_index_as(config, IndexAccess::Write).await
}

pub(crate) async fn open_index_as(config: &Config, access: IndexAccess) -> anyhow::Result<Arc<dyn Index>> {
    let c = &config.index;
    if access == IndexAccess::ReadOnly && c.engine != IndexEngine::Redis {
        let path = c.path.clone();
        let index = tokio::task::spawn_blocking(move || SnapshotIndex::load(&path))
            .await?
            .with_context(|| format!("cannot read the index at {}", c.path.display()))?;
        return Ok(Arc::new(index));
    }
    match c.engine {
        IndexEngine::Redis => {
            let url = c.url.as_deref().unwrap_or_default();
            let retain = Duration::from_secs(config.cache.max_stale_seconds);
            let index = RedisIndex::new(url, &c.key_prefix, Duration::from_millis(c.timeout_ms))?;
            Ok(Arc::new(index.retain_expired_for(retain)))
        }
        IndexEngine::Embedded => {
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

/// The artifact store named in the config (without the memory tier), to write.
pub fn open_artifacts(config: &Config) -> anyhow::Result<Arc<dyn Artifacts>> {
    open_artifacts_as(config, IndexAccess::Write)
}

/// The artifact store named in the config. The embedded store has one
/// writer: `Write` fails while another process owns it (the CLI then queues
/// its work for the gateway); `ReadOnly` reads beside the owner.
pub fn open_artifacts_as(config: &Config, access: IndexAccess) -> anyhow::Result<Arc<dyn Artifacts>> {
    let c = &config.artifacts;
    let store = match c.engine {
        ArtifactsEngine::S3 => ObjectStoreArtifacts::s3(
            c.bucket.as_deref().unwrap_or_default(),
            c.endpoint.as_deref(),
            c.region.as_deref(),
            &c.prefix,
            Duration::from_millis(c.timeout_ms),
        )?,
        ArtifactsEngine::Embedded if c.segment_max_item_kb == 0 => ObjectStoreArtifacts::local(&c.path, &c.prefix)
            .with_context(|| format!("cannot open artifacts at {}", c.path.display()))?,
        ArtifactsEngine::Embedded => {
            let opts = SegmentOptions {
                segment_bytes: c.segment_mb << 20,
                max_item_bytes: c.segment_max_item_kb << 10,
                compact_ratio: c.segment_compact_ratio,
            };
            let mode = match access {
                IndexAccess::Write | IndexAccess::WriteNoReplay => Access::Own,
                IndexAccess::ReadOnly => Access::Read,
                IndexAccess::WriteShared => Access::OwnOrShare,
            };
            // Blocking (a scan of the open segment): start-up.
            let store = SegmentArtifacts::open(&c.path, &c.prefix, opts, mode)
                .with_context(|| format!("cannot open artifacts at {}", c.path.display()))?;
            return Ok(Arc::new(store));
        }
    };
    Ok(Arc::new(store))
}

/// The metadata store named in the config, and the job queue it holds.
/// PostgreSQL connects lazily.
pub async fn open_metadata(config: &Config) -> anyhow::Result<(Arc<dyn Metadata>, Arc<dyn Queue>)> {
    let c = &config.metadata;
    let timeout = Duration::from_millis(c.timeout_ms);
    match c.engine {
        MetadataEngine::Postgres => {
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
        MetadataEngine::Embedded => {
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
    let artifacts = open_artifacts_as(config, access)?;
    // Replay on the raw roles: a million guarded calls would add seconds to start-up.
    let replayed = if !matches!(access, IndexAccess::Write | IndexAccess::WriteShared) {
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
    if config.vectors.engine == VectorsEngine::Disabled {
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
    let keyring = super::keyring::Keyring::new(config.encryption.keys.clone(), metadata.clone());
    let roles = Roles {
        index,
        artifacts,
        vectors: open_vectors(config, bv.clone(), access)?,
        metadata,
        breakers: vec![bi, ba, bv, bm],
        keyring,
    };
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
    let inner: Arc<dyn crate::roles::Vectors> = match config.vectors.engine {
        VectorsEngine::Embedded => match crate::roles::vectors_embedded::EmbeddedVectors::open_with(
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
        VectorsEngine::Qdrant => Arc::new(
            // The client's own limit is generous (collection creation); every call is
            // bounded by vectors.timeout_ms in the guard.
            crate::roles::vectors_qdrant::QdrantVectors::new(
                config.vectors.url.as_deref().unwrap_or_default(),
                Duration::from_secs(30),
                &config.vectors.collection_prefix,
            )
            .context("cannot set up the Qdrant client")?,
        ),
        VectorsEngine::Disabled => return Ok(Arc::new(DisabledVectors)),
    };
    Ok(Arc::new(crate::roles::guarded::GuardedVectors {
        inner,
        guard: Guard::new(breaker, Duration::from_millis(config.vectors.timeout_ms)),
    }))
}

/// Logs each backend's state and the guides' warnings (in the background:
/// start-up never waits on a slow or hung backend).
/// Logs each backend's health and warnings. The caller spawns it, so start-up never
/// waits on a slow or hung backend, and owns the task: it holds the roles (and the
/// embedded stores' locks) until it ends, so a gateway aborts it at shutdown and
/// never spawns it for a start that fails.
pub async fn report_backends(report: Roles) {
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
