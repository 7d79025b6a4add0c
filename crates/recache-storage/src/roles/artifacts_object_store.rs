//! Artifacts in any `object_store` backend: a local directory (the embedded
//! engine) or S3-compatible storage (AWS S3, MinIO, Garage, Ceph).
//! Artifacts live at `<prefix>sha256/<2 hex>/<64 hex>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};

use super::{ArtifactId, ArtifactInfo, Artifacts, BackendError, BoxFuture, CheckInfo, Result};

const NAME: &str = "artifacts";

pub struct ObjectStoreArtifacts {
    store: Arc<dyn ObjectStore>,
    /// For listings (audits, repairs, backups, drills): a whole bucket is many
    /// pages, each of which may take longer than a request-path call may.
    bulk: Arc<dyn ObjectStore>,
    prefix: String,
    engine: &'static str,
    /// The directory of a local store: batches are written there directly,
    /// in one blocking task (one thread hand-off per batch, not per file).
    local_root: Option<std::path::PathBuf>,
}

/// A listing page's limits: generous, since no client waits on a listing.
const BULK_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn map_err(e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotSupported { .. } => BackendError::NotSupported {
            backend: NAME,
            what: "operation",
        },
        other => BackendError::unavailable(NAME, other),
    }
}

impl ObjectStoreArtifacts {
    /// A local directory (created if missing).
    pub fn local(dir: &Path, prefix: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| BackendError::unavailable(NAME, e))?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(map_err)?;
        let mut s = Self::new(Arc::new(fs), prefix, "embedded");
        s.local_root = Some(dir.canonicalize().map_err(|e| BackendError::unavailable(NAME, e))?);
        Ok(s)
    }

    /// S3-compatible storage. Credentials come from the standard `AWS_*`
    /// environment variables; `endpoint` (for non-AWS servers) switches to
    /// path-style addressing. Retries are kept short: a slow store must fail
    /// fast so the request goes to the provider.
    pub fn s3(
        bucket: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self> {
        use object_store::aws::AmazonS3Builder;
        use object_store::{BackoffConfig, ClientOptions, RetryConfig};
        // One client per use, each with its limits; the endpoint goes last, since
        // allow_http lives in the client options that `with_client_options` replaces.
        let client = |retry: RetryConfig, options: ClientOptions| {
            let b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(region.unwrap_or("us-east-1"))
                .with_virtual_hosted_style_request(false)
                .with_retry(retry)
                .with_client_options(options);
            match endpoint {
                Some(e) => b.with_endpoint(e).with_allow_http(e.starts_with("http://")),
                None => b,
            }
            .build()
            .map_err(map_err)
        };
        let store = client(
            RetryConfig {
                max_retries: 1,
                retry_timeout: timeout * 2,
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(20),
                    ..Default::default()
                },
            },
            ClientOptions::new()
                .with_timeout(timeout.max(Duration::from_millis(100)))
                .with_connect_timeout(timeout.clamp(Duration::from_millis(100), Duration::from_secs(2))),
        )?;
        let bulk = client(
            RetryConfig {
                max_retries: 3,
                retry_timeout: BULK_TIMEOUT * 3,
                backoff: BackoffConfig::default(),
            },
            ClientOptions::new()
                .with_timeout(BULK_TIMEOUT)
                .with_connect_timeout(Duration::from_secs(5)),
        )?;
        let mut s = Self::new(Arc::new(store), prefix, "s3");
        s.bulk = Arc::new(bulk);
        Ok(s)
    }

    /// Any object store.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, engine: &'static str) -> Self {
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Self {
            bulk: store.clone(),
            store,
            prefix,
            engine,
            local_root: None,
        }
    }

    /// Writes files as the local object store does (a staged file renamed
    /// into place, so a reader never sees half of one; a staged name with `#`
    /// is never listed), creating directories as needed.
    fn write_local(root: &std::path::Path, items: &[(String, Bytes)]) -> std::io::Result<()> {
        use std::io::Write;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for (rel, bytes) in items {
            let path = root.join(rel);
            let staged = path.with_file_name(format!(
                "{}#batch-{}-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact"),
                std::process::id(),
                SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let mut file = match std::fs::File::create(&staged) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(dir) = staged.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::File::create(&staged)?
                }
                Err(e) => return Err(e),
            };
            let written = file.write_all(bytes);
            drop(file);
            if let Err(e) = written.and_then(|()| std::fs::rename(&staged, &path)) {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        }
        Ok(())
    }

    fn path(&self, id: ArtifactId) -> ObjPath {
        let hex = id.hex();
        ObjPath::from(format!("{}sha256/{}/{}", self.prefix, &hex[..2], hex))
    }
}

impl Artifacts for ObjectStoreArtifacts {
    fn engine(&self) -> &'static str {
        self.engine
    }

    fn put_many(&self, items: Vec<(ArtifactId, Bytes)>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(root) = self.local_root.clone() else {
                futures_util::future::try_join_all(items.into_iter().map(|(id, b)| self.put(id, b))).await?;
                return Ok(());
            };
            let files: Vec<(String, Bytes)> = items
                .into_iter()
                .map(|(id, b)| (self.path(id).to_string(), b))
                .collect();
            tokio::task::spawn_blocking(move || Self::write_local(&root, &files))
                .await
                .map_err(|e| BackendError::unavailable(NAME, e))?
                .map_err(|e| BackendError::unavailable(NAME, e))
        })
    }

    fn put(&self, id: ArtifactId, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.store
                .put(&self.path(id), PutPayload::from_bytes(bytes))
                .await
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn get(&self, id: ArtifactId) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(async move {
            match self.store.get(&self.path(id)).await {
                Ok(r) => Ok(Some(r.bytes().await.map_err(map_err)?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(map_err(e)),
            }
        })
    }

    fn delete(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            match self.store.delete(&self.path(id)).await {
                Ok(()) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(map_err(e)),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ArtifactInfo>>> {
        Box::pin(async move {
            let prefix = ObjPath::from(format!("{}sha256", self.prefix));
            let mut out = Vec::new();
            let mut listing = self.bulk.list(Some(&prefix));
            while let Some(m) = listing.try_next().await.map_err(map_err)? {
                if let Some(id) = m.location.filename().and_then(ArtifactId::from_hex) {
                    out.push(ArtifactInfo {
                        id,
                        size: m.size,
                        modified_ms: m.last_modified.timestamp_millis(),
                    });
                }
            }
            Ok(out)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            // A write-read-delete round trip proves the store is read-write. Each
            // check has its own key: replicas (and `doctor`) sharing a bucket check
            // at the same time, and one's delete must not fail another's read.
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = super::now_ms();
            let probe = ObjPath::from(format!(
                "{}health/probe-{}-{now}-{}",
                self.prefix,
                std::process::id(),
                SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let body = Bytes::from(format!("recache health probe {now}"));
            self.store
                .put(&probe, PutPayload::from_bytes(body.clone()))
                .await
                .map_err(map_err)?;
            let back = self
                .store
                .get(&probe)
                .await
                .map_err(map_err)?
                .bytes()
                .await
                .map_err(map_err)?;
            if back != body {
                return Err(BackendError::Corrupt {
                    backend: NAME,
                    detail: "health probe read back different bytes".into(),
                });
            }
            let _ = self.store.delete(&probe).await;
            Ok(CheckInfo {
                version: Some(self.store.to_string()),
                ..Default::default()
            })
        })
    }
}
