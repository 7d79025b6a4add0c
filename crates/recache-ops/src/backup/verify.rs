//! `backup verify`: three levels, each including the ones before.
//!
//! - `structure`: both manifests, every file's size and SHA-256, every
//!   referenced artifact present in the pool with its size;
//! - `read-data`: every referenced pooled artifact read and hashed (or the
//!   `N/T` slice of them);
//! - `restore` (the default): a test restore into a scratch embedded set in
//!   a temporary directory, the canary looked up through it and compared
//!   byte for byte, then an audit of the scratch set and its counts against
//!   the manifest. Production is never touched.
//!
//! The result is written beside the manifest (`verify/<time>.json`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::manifest::{Manifest, Verification};
use super::restore::{read_file, restore_into};
use super::target::Target;
use super::{canary, list, BResult, BackupError, Which};
use recache_storage::queue::worker::JobCtx;
use recache_storage::roles::{now_ms, ArtifactId, Roles};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Structure,
    ReadData,
    Restore,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Structure => "structure",
            Level::ReadData => "read-data",
            Level::Restore => "restore",
        }
    }
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "structure" => Some(Level::Structure),
            "read-data" => Some(Level::ReadData),
            "restore" => Some(Level::Restore),
            _ => None,
        }
    }
}

/// `N/T`: the N-th (1-based) of T slices of the artifacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subset {
    pub n: u64,
    pub t: u64,
}

impl Subset {
    pub fn parse(s: &str) -> Result<Subset, String> {
        let (n, t) = s
            .split_once('/')
            .ok_or_else(|| format!("--subset '{s}': expected N/T, e.g. 3/7"))?;
        let (n, t): (u64, u64) = (
            n.trim()
                .parse()
                .map_err(|_| format!("--subset '{s}': N is not a number"))?,
            t.trim()
                .parse()
                .map_err(|_| format!("--subset '{s}': T is not a number"))?,
        );
        if t == 0 || n == 0 || n > t {
            return Err(format!("--subset '{s}': need 1 <= N <= T"));
        }
        Ok(Subset { n, t })
    }
    pub fn contains(&self, id: &ArtifactId) -> bool {
        let x = u64::from_be_bytes(id.0[..8].try_into().unwrap_or([0; 8]));
        x % self.t == self.n - 1
    }
}

/// The artifacts a set refers to, from its artifact list (hash-checked).
pub(crate) async fn artifact_list(target: &Target, m: &Manifest) -> BResult<Vec<(ArtifactId, u64)>> {
    let mut out = Vec::with_capacity(m.roles.artifacts.referenced as usize);
    for f in m.files.iter().filter(|f| f.path.starts_with("artifacts/")) {
        let text = read_file(target, m, f).await?;
        out.extend(
            super::codec::parse_artifact_lines(&text).map_err(|e| BackupError::Invalid(format!("{}: {e}", f.path)))?,
        );
    }
    Ok(out)
}

pub struct VerifyOptions {
    pub level: Level,
    pub subset: Option<Subset>,
    pub parallel: usize,
    /// Record the result beside the manifest.
    pub record: bool,
    /// Page sizes and the like for the scratch audit.
    pub config: Arc<recache_core::config::Config>,
    /// Verify a set whose signature is missing or wrong (reported as a warning).
    pub force: bool,
}

/// Verifies set `id` on one target. Problems are in the result (`ok` false);
/// an `Err` is a failure to run at all (the target unreachable).
pub async fn verify(
    target: &Target,
    which: Which,
    id: &str,
    opts: &VerifyOptions,
    ctx: &dyn JobCtx,
) -> BResult<Verification> {
    let started = Instant::now();
    let mut v = Verification {
        set: id.to_string(),
        at_ms: now_ms(),
        level: opts.level.name().into(),
        subset: opts.subset.map(|s| format!("{}/{}", s.n, s.t)),
        target: which.name().into(),
        ..Verification::scratch()
    };
    let found = match list::load(target, id).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(BackupError::Invalid(format!(
                "set {id} has no manifest on the {} target (unfinished, or no such set)",
                which.name()
            )))
        }
        Err(BackupError::Invalid(e)) => {
            v.problems.push(e);
            v.seconds = started.elapsed().as_secs_f64();
            return Ok(v);
        }
        Err(e) => return Err(e),
    };
    if let Some(d) = &found.damaged {
        v.problems.push(format!("manifest: {d} (the second copy is intact)"));
    }
    let refused = match found.signature.problem(id) {
        Some(p) if !opts.force => {
            v.problems.push(format!("{p}; refused (--force to verify it anyway)"));
            true
        }
        Some(p) => {
            tracing::warn!(set = %id, "{p}; verifying anyway (--force)");
            false
        }
        None => false,
    };
    if !refused {
        run(target, &found.manifest, opts, ctx, &mut v).await?;
    }
    v.ok = v.problems.is_empty();
    v.seconds = started.elapsed().as_secs_f64();
    if opts.record {
        list::record_verification(target, &v).await?;
    }
    Ok(v)
}

async fn run(
    target: &Target,
    m: &Manifest,
    opts: &VerifyOptions,
    ctx: &dyn JobCtx,
    v: &mut Verification,
) -> BResult<()> {
    // 1. Every file of the set.
    for f in &m.files {
        v.files_checked += 1;
        if let Err(e) = read_file(target, m, f).await {
            v.problems.push(e.to_string());
        }
    }
    if !v.problems.is_empty() {
        return Ok(());
    }
    let artifacts = artifact_list(target, m).await?;
    if artifacts.len() as u64 != m.roles.artifacts.referenced {
        v.problems.push(format!(
            "the artifact list holds {} artifacts, the manifest says {}",
            artifacts.len(),
            m.roles.artifacts.referenced
        ));
    }
    // 2. Presence and size of every pooled artifact, from the target's listing.
    let pool = target.pool().await?;
    let mut absent = 0u64;
    for (id, size) in &artifacts {
        match pool.get(id) {
            Some((s, _)) if s == size => {}
            Some((s, _)) => {
                absent += 1;
                if absent <= 20 {
                    v.problems.push(format!(
                        "pooled artifact {} has {s} bytes, the set says {size}",
                        id.hex()
                    ));
                }
            }
            None => {
                absent += 1;
                if absent <= 20 {
                    v.problems.push(format!("pooled artifact {} is missing", id.hex()));
                }
            }
        }
    }
    if absent > 20 {
        v.problems
            .push(format!("... {absent} pooled artifacts missing or resized in all"));
    }
    if opts.level == Level::Structure || !v.problems.is_empty() {
        return Ok(());
    }
    // 3. Content of every pooled artifact (or one slice).
    let slice: Vec<ArtifactId> = artifacts
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| opts.subset.is_none_or(|s| s.contains(id)))
        .collect();
    let total = slice.len() as u64;
    let pool = target.clone();
    let mut s = futures_util::stream::iter(slice.into_iter().map(move |id| {
        let pool = pool.clone();
        async move {
            match pool.get(&Target::pool_rel(id)).await? {
                Some(b) if ArtifactId::of(&b) == id => Ok::<_, BackupError>(None),
                Some(_) => Ok(Some(format!(
                    "pooled artifact {} is damaged: its content does not hash to its name",
                    id.hex()
                ))),
                None => Ok(Some(format!("pooled artifact {} vanished while verifying", id.hex()))),
            }
        }
    }))
    .buffer_unordered(opts.parallel.max(1));
    while let Some(r) = s.next().await {
        v.artifacts_checked += 1;
        if let Some(p) = r? {
            v.problems.push(p);
        }
        if v.artifacts_checked.is_multiple_of(256) {
            ctx.progress(v.artifacts_checked, Some(total));
        }
    }
    drop(s);
    if opts.level == Level::ReadData || !v.problems.is_empty() {
        return Ok(());
    }
    // 4. A test restore into a scratch embedded set, the canary, an audit. It
    // runs on a thread of its own (its stores are opened and dropped there),
    // with its own progress bar.
    let (target, m, parallel, config) = (target.clone(), m.clone(), opts.parallel, opts.config.clone());
    let handle = tokio::runtime::Handle::current();
    let found = tokio::task::spawn_blocking(move || {
        let ctx = crate::recovery::local::LocalCtx::new("test restore", true);
        let mut problems = Verification::scratch();
        let res = handle.block_on(scratch_restore(
            &target,
            &m,
            parallel,
            config,
            ctx.as_ref(),
            &mut problems,
        ));
        ctx.finish();
        res.map(|()| problems)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("the test restore stopped: {e}")))??;
    v.restored_entries = found.restored_entries;
    v.canary = found.canary;
    v.problems.extend(found.problems);
    Ok(())
}

async fn scratch_restore(
    target: &Target,
    m: &Manifest,
    parallel: usize,
    config: Arc<recache_core::config::Config>,
    ctx: &dyn JobCtx,
    v: &mut Verification,
) -> BResult<()> {
    use recache_storage::roles::artifacts_object_store::ObjectStoreArtifacts;
    use recache_storage::roles::index_embedded::EmbeddedIndex;
    use recache_storage::roles::metadata_sqlite::SqliteMetadata;
    let dir = tempfile::Builder::new()
        .prefix("recache-verify-")
        .tempdir()
        .map_err(|e| BackupError::Config(format!("cannot create a scratch directory: {e}")))?;
    let scratch_err = |e: String| BackupError::Invalid(format!("scratch set: {e}"));
    let metadata = Arc::new(
        SqliteMetadata::open(&dir.path().join("metadata.db"), 4, Duration::from_secs(30))
            .await
            .map_err(|e| scratch_err(e.to_string()))?,
    );
    let index_dir = dir.path().join("index");
    let (index, _) = tokio::task::spawn_blocking(move || EmbeddedIndex::open(&index_dir))
        .await
        .map_err(|e| scratch_err(e.to_string()))?
        .map_err(|e| scratch_err(e.to_string()))?;
    let artifacts = Arc::new(
        ObjectStoreArtifacts::local(&dir.path().join("artifacts"), "").map_err(|e| scratch_err(e.to_string()))?,
    );
    let roles = Roles {
        index: index.clone(),
        artifacts,
        vectors: Arc::new(recache_storage::roles::vectors_disabled::DisabledVectors),
        metadata: metadata.clone(),
        breakers: Vec::new(),
        // The master key opens the data keys of the target's key file: a set
        // of sealed answers test-restores only with it, as it restores.
        keyring: recache_storage::roles::keyring::Keyring::new(
            config.encryption.keys.clone(),
            metadata.clone() as Arc<dyn recache_storage::roles::Metadata>,
        ),
    };
    let report = restore_into(&roles, target, m, parallel, None, ctx).await?;
    v.restored_entries = report.entries;
    v.unreadable_entries = report.entries_unreadable;
    v.problems.extend(report.problems.iter().cloned());
    // Counts against the manifest.
    let entries = roles.metadata.count_entries().await?;
    if entries + report.entries_unreadable != m.roles.metadata.entries {
        v.problems.push(format!(
            "the scratch restore holds {entries} entries, the manifest says {}",
            m.roles.metadata.entries
        ));
    }
    let pointers = roles.index.count().await?;
    if pointers != report.pointers_written + report.pointers_derived || report.pointers != m.roles.index.pointers {
        v.problems.push(format!(
            "index: {} pointers read, {} written, {} derived from entries, {pointers} in the scratch index; the manifest says {}",
            report.pointers, report.pointers_written, report.pointers_derived, m.roles.index.pointers
        ));
    }
    // The canary, byte for byte, through the restored index and artifacts.
    let canary_ok = match canary_lookup(&roles, m).await {
        Ok(()) => true,
        Err(e) => {
            v.problems.push(format!("canary: {e}"));
            false
        }
    };
    v.canary = Some(canary_ok);
    // An audit of the scratch set.
    let recovery = scratch_recovery(roles.clone(), metadata, config)?;
    let opts = crate::recovery::audit::AuditOptions {
        max_findings: 20,
        orphan_grace_ms: 0,
        ..Default::default()
    };
    let audit = recovery
        .audit(&opts, None, ctx)
        .await
        .map_err(|e| scratch_err(format!("audit failed to run: {e:?}")))?;
    let mut counts: HashMap<&str, u64> = audit.counts.iter().map(|(k, v)| (*k, *v)).collect();
    // Entries whose artifact was already missing at backup time are recorded, not new damage;
    // entries past expiry and retention are the source's housekeeping, not the backup's.
    let known = counts.remove("missing_artifact").unwrap_or(0);
    if known > report.entries_without_artifact {
        v.problems.push(format!(
            "audit: {known} entries without their artifact; the set knew of {}",
            report.entries_without_artifact
        ));
    }
    counts.remove("expired_present");
    for (kind, n) in counts.iter().filter(|(_, n)| **n > 0) {
        let example = audit
            .findings
            .iter()
            .find(|f| f.kind == *kind)
            .map(|f| format!(" (e.g. {})", f.key.clone().or(f.artifact.clone()).unwrap_or_default()))
            .unwrap_or_default();
        v.problems
            .push(format!("audit of the scratch restore: {n} × {kind}{example}"));
    }
    let _ = roles.index.flush().await;
    drop(recovery);
    drop(roles);
    drop(index);
    Ok(())
}

async fn canary_lookup(roles: &Roles, m: &Manifest) -> Result<(), String> {
    let want = canary::bytes_of(&m.canary).ok_or("the manifest's canary bytes are not base64")?;
    let key = recache_core::key::CacheKey::from_hex(&m.canary.key).ok_or("the manifest's canary key is not hex")?;
    let p = roles
        .index
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("not found in the restored index")?;
    let got = roles
        .artifacts
        .get(p.artifact)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("its artifact is not in the restored artifacts")?;
    if got.as_ref() != want.as_slice() {
        return Err("the restored bytes differ from the bytes recorded at backup time".into());
    }
    Ok(())
}

fn scratch_recovery(
    roles: Roles,
    metadata: Arc<recache_storage::roles::metadata_sqlite::SqliteMetadata>,
    config: Arc<recache_core::config::Config>,
) -> BResult<crate::recovery::Recovery> {
    let cache = Arc::new(recache_engine::cache::Cache::new(
        roles,
        Arc::new(recache_engine::metrics::Metrics::default()),
        None,
        Duration::from_secs(0),
        recache_engine::batch::Batching::from_config(&config),
    ));
    let upstreams = recache_engine::upstream::Upstreams::from_config(&config, &HashMap::new())
        .map_err(|e| BackupError::Config(e.to_string()))?;
    Ok(crate::recovery::Recovery::new(
        cache,
        metadata,
        config,
        Arc::new(upstreams),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_partition_the_artifacts() {
        assert!(Subset::parse("0/3").is_err());
        assert!(Subset::parse("4/3").is_err());
        assert!(Subset::parse("x").is_err());
        let t = 7;
        let slices: Vec<Subset> = (1..=t).map(|n| Subset::parse(&format!("{n}/{t}")).unwrap()).collect();
        let mut sizes = vec![0usize; t as usize];
        for i in 0..7000u32 {
            let id = ArtifactId::of(&i.to_le_bytes());
            let hits: Vec<usize> = (0..t as usize).filter(|s| slices[*s].contains(&id)).collect();
            assert_eq!(hits.len(), 1, "every artifact is in exactly one slice");
            sizes[hits[0]] += 1;
        }
        // Slices are about even, so a daily cron does about the same work each day.
        assert!(sizes.iter().all(|n| (800..1200).contains(n)), "{sizes:?}");
    }
}
