//! A backup target: an object store (a local directory or an S3-compatible
//! bucket and prefix) and, inside it, this deployment's folder:
//!
//! ```text
//! <target>/<deployment>/sets/<id>/manifest.json      written last
//! <target>/<deployment>/sets/<id>/manifest.copy.json the second copy
//! <target>/<deployment>/sets/<id>/...                the set's files
//! <target>/<deployment>/pool/sha256/<2 hex>/<64 hex> artifacts, shared by the sets
//! ```
//!
//! Target specs: `/path`, `file:///path`, or
//! `s3://bucket/prefix?endpoint=http://host:port&region=r&access_key_env=A&secret_key_env=S`
//! (credentials default to the standard `AWS_*` variables).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};

use recache_storage::roles::ArtifactId;

/// A target failed: which operation, on what, and why.
#[derive(Debug, thiserror::Error)]
#[error("backup target {target}: {what}: {detail}")]
pub struct TargetError {
    pub target: String,
    pub what: String,
    pub detail: String,
}

pub type TResult<T> = std::result::Result<T, TargetError>;

/// One object as a listing shows it.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Path relative to the deployment folder.
    pub rel: String,
    pub size: u64,
    pub modified_ms: i64,
}

#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    /// `prefix/deployment` (no slashes at either end).
    root: String,
    /// The spec with secrets left out, for messages.
    pub label: String,
    /// A local directory target: the deployment folder on disk (pool listings
    /// read it directly, one `statx` per file instead of object_store's three).
    local: Option<std::path::PathBuf>,
    /// `local` resolved, once it exists (every local delete is checked against it).
    canonical: Arc<std::sync::OnceLock<std::path::PathBuf>>,
    /// The key manifests are signed and checked with (`[backup] signing_key_env`).
    pub signing_key: Option<Arc<[u8]>>,
}

/// Whether a relative path is made of plain names only (see [`Target::path`]).
pub(crate) fn safe_rel(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains(['\\', '\0']))
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Target {
    /// Opens `spec` for `deployment`. `env` supplies credentials named in the spec.
    pub fn open(spec: &str, deployment: &str, env: &HashMap<String, String>) -> Result<Target, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("the backup target is empty".into());
        }
        if deployment.is_empty() || deployment.contains('/') {
            return Err(format!(
                "backup.deployment '{deployment}' must be a non-empty name without '/'"
            ));
        }
        let mut local = None;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) = spec.strip_prefix("s3://") {
            let (loc, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (bucket, prefix) = loc.split_once('/').unwrap_or((loc, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "backup target '{spec}': no bucket (expected s3://bucket/prefix)"
                ));
            }
            let q = parse_query(query);
            for k in q.keys() {
                if !matches!(k.as_str(), "endpoint" | "region" | "access_key_env" | "secret_key_env") {
                    return Err(format!(
                        "backup target '{spec}': unknown option '{k}' (expected endpoint, region, access_key_env, secret_key_env)"
                    ));
                }
            }
            use object_store::aws::AmazonS3Builder;
            use object_store::{ClientOptions, RetryConfig};
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(q.get("region").map(String::as_str).unwrap_or("us-east-1"))
                .with_virtual_hosted_style_request(false)
                .with_retry(RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                    ..Default::default()
                })
                .with_client_options(
                    ClientOptions::new()
                        .with_timeout(Duration::from_secs(60))
                        .with_connect_timeout(Duration::from_secs(5)),
                );
            if let Some(e) = q.get("endpoint") {
                b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
            }
            for (opt, set) in [("access_key_env", true), ("secret_key_env", false)] {
                if let Some(var) = q.get(opt) {
                    let v = env
                        .get(var)
                        .ok_or_else(|| format!("backup target '{spec}': {opt} names {var}, which is not set"))?;
                    b = if set {
                        b.with_access_key_id(v)
                    } else {
                        b.with_secret_access_key(v)
                    };
                }
            }
            let store = b.build().map_err(|e| format!("backup target '{spec}': {e}"))?;
            (Arc::new(store), prefix.trim_matches('/').to_string())
        } else {
            let dir = spec.strip_prefix("file://").unwrap_or(spec);
            if !dir.starts_with('/') && !dir.starts_with('.') {
                return Err(format!(
                    "backup target '{spec}': expected a directory (/path, ./path, file:///path) or s3://bucket/prefix"
                ));
            }
            std::fs::create_dir_all(dir).map_err(|e| format!("backup target '{dir}': cannot create it: {e}"))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| format!("backup target '{dir}': {e}"))?;
            local = Some(std::path::Path::new(dir).join(deployment));
            (Arc::new(fs), String::new())
        };
        let root = if prefix.is_empty() {
            deployment.to_string()
        } else {
            format!("{prefix}/{deployment}")
        };
        let label = spec.split('?').next().unwrap_or(spec).to_string();
        Ok(Target {
            store,
            root,
            label,
            local,
            canonical: Arc::default(),
            signing_key: None,
        })
    }

    /// The object path of `rel`, refused unless every segment is a plain name:
    /// no `..`, `.`, empty segment, backslash or NUL can lead out of the
    /// deployment folder, whatever a manifest or listing says.
    fn path(&self, rel: &str) -> TResult<ObjPath> {
        let rel = rel.trim_start_matches('/');
        if !safe_rel(rel) {
            return Err(self.err(
                format!("use {rel:?}"),
                "the path leads out of the target's folder; refused",
            ));
        }
        Ok(ObjPath::from(format!("{}/{}", self.root, rel)))
    }

    /// On a local target, refuses a destructive operation on `rel` when a
    /// symbolic link on the way from the deployment folder would take it
    /// elsewhere (`rel`'s existing ancestors must resolve to where their names
    /// say). Object stores have no links.
    fn check_local(&self, rel: &str) -> TResult<()> {
        let Some(root) = &self.local else { return Ok(()) };
        let canon_root = match self.canonical.get() {
            Some(p) => p,
            None => match std::fs::canonicalize(root) {
                Ok(p) => self.canonical.get_or_init(|| p),
                // Nothing there yet: nothing to delete either.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(self.err(format!("resolve {}", root.display()), e)),
            },
        };
        // The deepest ancestor of `rel` that exists (the path itself for a folder).
        let mut probe = std::path::PathBuf::from(rel.trim_start_matches('/'));
        loop {
            match std::fs::canonicalize(root.join(&probe)) {
                Ok(real) if real == canon_root.join(&probe) => return Ok(()),
                Ok(real) => {
                    return Err(self.err(
                        format!("delete {rel}"),
                        format!(
                            "it resolves to {}, outside the target's folder; refused",
                            real.display()
                        ),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !probe.pop() || probe.as_os_str().is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(self.err(format!("resolve {rel}"), e)),
            }
        }
    }

    fn err(&self, what: impl Into<String>, e: impl std::fmt::Display) -> TargetError {
        TargetError {
            target: self.label.clone(),
            what: what.into(),
            detail: e.to_string(),
        }
    }

    pub async fn put(&self, rel: &str, bytes: Bytes) -> TResult<()> {
        self.store
            .put(&self.path(rel)?, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.err(format!("write {rel}"), e))
    }

    pub async fn get(&self, rel: &str) -> TResult<Option<Bytes>> {
        match self.store.get(&self.path(rel)?).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(format!("read {rel}"), e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("read {rel}"), e)),
        }
    }

    /// The size of an object, or `None` when it does not exist.
    pub async fn head(&self, rel: &str) -> TResult<Option<u64>> {
        match self.store.head(&self.path(rel)?).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("look up {rel}"), e)),
        }
    }

    pub async fn delete(&self, rel: &str) -> TResult<()> {
        let path = self.path(rel)?;
        // A file's folder: a link there would send the delete elsewhere.
        self.check_local(rel.rsplit_once('/').map_or("", |(dir, _)| dir))?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("delete {rel}"), e)),
        }
    }

    /// Removes what is left of a folder once its objects are deleted (a local
    /// directory keeps its empty directories; object stores have none).
    pub(crate) async fn remove_dir(&self, rel: &str) -> TResult<()> {
        self.path(rel)?;
        let Some(root) = &self.local else { return Ok(()) };
        self.check_local(rel)?;
        let dir = root.join(rel);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(format!("remove {rel}"), e)),
        }
    }

    /// Every object under `rel_prefix` (recursively).
    pub async fn list(&self, rel_prefix: &str) -> TResult<Vec<Listed>> {
        let prefix = self.path(rel_prefix)?;
        let root_len = self.root.len() + 1;
        let mut out = Vec::new();
        let mut s = self.store.list(Some(&prefix));
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| self.err(format!("list {rel_prefix}"), e))?
        {
            let full = m.location.to_string();
            out.push(Listed {
                rel: full.get(root_len..).unwrap_or_default().to_string(),
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis(),
            });
        }
        Ok(out)
    }

    /// The immediate sub-folders of `rel_prefix` (names only).
    pub(crate) async fn dirs(&self, rel_prefix: &str) -> TResult<Vec<String>> {
        let prefix = self.path(rel_prefix)?;
        let l = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.err(format!("list {rel_prefix}"), e))?;
        Ok(l.common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// [`Target::pool`] on a local directory: two threads, each reading half the shards.
    async fn local_pool(&self, dir: std::path::PathBuf) -> TResult<HashMap<ArtifactId, (u64, i64)>> {
        let half = |lo: u16, hi: u16, dir: std::path::PathBuf| {
            tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(ArtifactId, (u64, i64))>> {
                let mut out = Vec::new();
                for b in lo..hi {
                    let rd = match std::fs::read_dir(dir.join(format!("{b:02x}"))) {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    for e in rd {
                        let e = e?;
                        let Some(id) = e.file_name().to_str().and_then(ArtifactId::from_hex) else {
                            continue;
                        };
                        let m = e.metadata()?;
                        let modified = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0);
                        out.push((id, (m.len(), modified)));
                    }
                }
                Ok(out)
            })
        };
        let (a, b) = tokio::join!(half(0, 128, dir.clone()), half(128, 256, dir));
        let mut out = HashMap::new();
        for part in [a, b] {
            let part = part
                .map_err(|e| self.err("list pool", e))?
                .map_err(|e| self.err("list pool", e))?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Where a pooled artifact lives.
    pub(crate) fn pool_rel(id: ArtifactId) -> String {
        let h = id.hex();
        format!("pool/sha256/{}/{h}", &h[..2])
    }

    /// Every pooled artifact: id → (size, last write ms). The 256 shards are
    /// listed concurrently (one listing of a million objects is the slowest
    /// step of an incremental backup otherwise).
    pub async fn pool(&self) -> TResult<HashMap<ArtifactId, (u64, i64)>> {
        use futures_util::StreamExt;
        if let Some(dir) = &self.local {
            return self.local_pool(dir.join("pool/sha256")).await;
        }
        let shards = (0..=255u8).map(|b| {
            let me = self.clone();
            async move { me.list(&format!("pool/sha256/{b:02x}")).await }
        });
        let mut s = futures_util::stream::iter(shards).buffer_unordered(16);
        let mut out = HashMap::new();
        while let Some(listed) = s.next().await {
            for l in listed? {
                if let Some(id) = l.rel.rsplit('/').next().and_then(ArtifactId::from_hex) {
                    out.insert(id, (l.size, l.modified_ms));
                }
            }
        }
        Ok(out)
    }
}
