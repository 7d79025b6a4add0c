//! `backup create`: the canary, then three streams at once — the index
//! pointers, the metadata snapshot (one read transaction) and the target's
//! pool listing — then the artifacts the pool lacks, the artifact list, the
//! vectors, and last the manifest (twice). Until the manifest is written the
//! set does not exist for `list`, `verify` or `restore`; a crash leaves an
//! unfinished folder that `prune` removes after its grace period, and pooled
//! artifacts the next run reuses.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

use super::codec::{self, Packed, PART_ROWS};
use super::manifest::{self, FileEntry, Manifest};
use super::target::Target;
use super::{canary, set_dir, BResult, BackupError, Targets};
use recache_storage::queue::worker::JobCtx;
use recache_storage::roles::{now_ms, ArtifactId, Roles, SnapshotBatch};

#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// `manual` or `scheduled`.
    pub trigger: String,
    /// Copy every artifact again, even those already in the pool.
    pub full: bool,
}

/// Records not yet written out: each page turns itself into text when its
/// part is cut, on the blocking thread that also compresses it.
type Page = Box<dyn FnOnce(&mut Vec<u8>) + Send>;

/// Writes the parts of one export (`<stem>-00000.<ext>.gz`, …) as they fill,
/// serialising, compressing and uploading each on its own task.
struct PartWriter {
    target: Target,
    dir: String,
    stem: &'static str,
    ext: &'static str,
    pages: Vec<Page>,
    rows: u64,
    n: usize,
    pending: Vec<JoinHandle<BResult<FileEntry>>>,
    done: Vec<FileEntry>,
}

impl PartWriter {
    fn new(target: &Target, dir: &str, stem: &'static str, ext: &'static str) -> Self {
        Self {
            target: target.clone(),
            dir: dir.to_string(),
            stem,
            ext,
            pages: Vec::new(),
            rows: 0,
            n: 0,
            pending: Vec::new(),
            done: Vec::new(),
        }
    }

    /// Adds a page of `rows` records; `write` serialises them later.
    async fn push(&mut self, rows: u64, write: impl FnOnce(&mut Vec<u8>) + Send + 'static) -> BResult<()> {
        self.pages.push(Box::new(write));
        self.rows += rows;
        if self.rows >= PART_ROWS as u64 {
            self.cut().await?;
        }
        Ok(())
    }

    async fn cut(&mut self) -> BResult<()> {
        let pages = std::mem::take(&mut self.pages);
        let rows = std::mem::take(&mut self.rows);
        let path = format!("{}/{}-{:05}.{}.gz", self.stem_dir(), self.stem, self.n, self.ext);
        self.n += 1;
        let target = self.target.clone();
        let full = format!("{}/{path}", self.dir);
        // At most two parts of one stream in flight: bounded memory.
        if self.pending.len() >= 2 {
            let first = self.pending.remove(0);
            self.done.push(join(first).await?);
        }
        self.pending.push(tokio::spawn(async move {
            let packed = tokio::task::spawn_blocking(move || {
                let mut text = Vec::new();
                for page in pages {
                    page(&mut text);
                }
                codec::pack(text, rows)
            })
            .await
            .map_err(|e| BackupError::Invalid(format!("compressing {path} failed: {e}")))?;
            let Packed { bytes, sha256, rows } = packed;
            let size = bytes.len() as u64;
            target.put(&full, bytes).await?;
            Ok(FileEntry {
                path,
                sha256,
                size,
                rows,
            })
        }));
        Ok(())
    }

    fn stem_dir(&self) -> &'static str {
        match self.stem {
            "entries" | "audit" | "jobs" | "keys" | "data_keys" | "usage" => "metadata",
            "pointers" => "index",
            "artifacts" => "artifacts",
            _ => "vectors",
        }
    }

    /// Flushes the last part (an empty export still gets one, so every
    /// export is present in the manifest) and waits for every upload.
    async fn finish(mut self) -> BResult<Vec<FileEntry>> {
        if self.rows > 0 || self.n == 0 {
            self.cut().await?;
        }
        let mut out = self.done;
        for h in self.pending {
            out.push(join(h).await?);
        }
        Ok(out)
    }
}

impl MetaScan {
    /// Counts one exported entry: its time window, liveness and artifact.
    fn note(&mut self, artifact: ArtifactId, size: u64, missing: bool, created_ms: i64, expires_ms: i64, now: i64) {
        self.part.entries += 1;
        self.part.window.add(created_ms);
        if expires_ms > now {
            self.part.live_entries += 1;
        }
        if !missing {
            self.referenced.insert(artifact, size);
        }
    }
}

async fn join(h: JoinHandle<BResult<FileEntry>>) -> BResult<FileEntry> {
    h.await
        .map_err(|e| BackupError::Invalid(format!("a part upload task failed: {e}")))?
}

/// What the metadata stream learned.
#[derive(Default)]
struct MetaScan {
    files: Vec<FileEntry>,
    part: manifest::MetadataPart,
    /// Artifact → size, for every entry.
    referenced: HashMap<ArtifactId, u64>,
}

async fn export_metadata(roles: &Roles, target: &Target, dir: &str, now: i64) -> BResult<MetaScan> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SnapshotBatch>(4);
    let metadata = roles.metadata.clone();
    let producer = tokio::spawn(async move { metadata.export_snapshot(tx).await });
    let mut scan = MetaScan::default();
    scan.part.engine = roles.metadata.engine().to_string();
    let mut entries = PartWriter::new(target, dir, "entries", "jsonl");
    let mut audit = PartWriter::new(target, dir, "audit", "jsonl");
    let mut jobs = PartWriter::new(target, dir, "jobs", "jsonl");
    while let Some(batch) = rx.recv().await {
        match batch {
            SnapshotBatch::EntryLines(page) => {
                for e in &page {
                    let (created, expires) = (e.created_at_ms, e.expires_at_ms);
                    scan.note(e.artifact, e.response_bytes, e.artifact_missing, created, expires, now);
                }
                entries
                    .push(page.len() as u64, move |out| {
                        for e in &page {
                            out.extend_from_slice(e.json.as_bytes());
                            out.push(b'\n');
                        }
                    })
                    .await?;
            }
            SnapshotBatch::Entries(page) => {
                for e in &page {
                    let (created, expires) = (e.created_at_ms, e.expires_at_ms);
                    scan.note(e.artifact, e.response_bytes, e.artifact_missing, created, expires, now);
                }
                entries
                    .push(page.len() as u64, move |out| codec::json_lines(&page, out))
                    .await?;
            }
            SnapshotBatch::Audit(page) => {
                scan.part.audit_events += page.len() as u64;
                audit
                    .push(page.len() as u64, move |out| codec::json_lines(&page, out))
                    .await?;
            }
            SnapshotBatch::Jobs(page) => {
                scan.part.jobs += page.len() as u64;
                jobs.push(page.len() as u64, move |out| codec::json_lines(&page, out))
                    .await?;
            }
        }
    }
    producer
        .await
        .map_err(|e| BackupError::Invalid(format!("the metadata snapshot task failed: {e}")))??;
    scan.files.extend(entries.finish().await?);
    scan.files.extend(audit.finish().await?);
    scan.files.extend(jobs.finish().await?);
    // Client keys: their digests, never a key (none is stored).
    let keys: Vec<serde_json::Value> = roles
        .metadata
        .list_keys(None)
        .await?
        .iter()
        .map(|k| k.to_backup_json())
        .collect();
    scan.part.keys = keys.len() as u64;
    let mut part = PartWriter::new(target, dir, "keys", "jsonl");
    part.push(keys.len() as u64, move |out| codec::json_lines(&keys, out))
        .await?;
    scan.files.extend(part.finish().await?);
    // The tenants' data keys, wrapped by the master key only, go to the
    // target's key file beside the sets (see `keyfile`): an erasure rewrites
    // that one file, and every older set of the tenant becomes unreadable.
    let data_keys = roles.metadata.list_data_keys(None).await?;
    scan.part.data_keys = super::keyfile::write_merged(target, data_keys).await?.0;
    // The hourly usage counters (`report cost`, the spend limits' durable truth).
    let usage = roles.metadata.usage_since(0).await?;
    scan.part.usage_rows = usage.len() as u64;
    let mut part = PartWriter::new(target, dir, "usage", "jsonl");
    part.push(usage.len() as u64, move |out| codec::json_lines(&usage, out))
        .await?;
    scan.files.extend(part.finish().await?);
    Ok(scan)
}

async fn export_index(roles: &Roles, target: &Target, dir: &str) -> BResult<(Vec<FileEntry>, manifest::IndexPart)> {
    let mut part = manifest::IndexPart {
        engine: roles.index.engine().to_string(),
        ..Default::default()
    };
    let mut w = PartWriter::new(target, dir, "pointers", "tsv");
    let mut cursor = 0u64;
    loop {
        let (page, next) = roles.index.scan(cursor, 5000).await?;
        for (_, e) in &page {
            part.window.add(e.created_at_ms);
        }
        part.pointers += page.len() as u64;
        w.push(page.len() as u64, move |out| codec::pointer_lines(&page, out))
            .await?;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok((w.finish().await?, part))
}

async fn export_vectors(roles: &Roles, target: &Target, dir: &str) -> BResult<(Vec<FileEntry>, manifest::VectorsPart)> {
    let mut part = manifest::VectorsPart {
        engine: roles.vectors.engine().into(),
        state: "disabled".into(),
        ..Default::default()
    };
    if !roles.vectors.enabled() {
        return Ok((Vec::new(), part));
    }
    part.state = "exported".into();
    let mut w = PartWriter::new(target, dir, "points", "jsonl");
    for c in roles.vectors.collections().await? {
        let mut after = None;
        loop {
            let page = roles.vectors.points(&c.name, after, 2000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key);
            let lines: Vec<codec::PointLine> = page
                .into_iter()
                .map(|p| codec::PointLine {
                    collection: c.name.clone(),
                    dimension: c.dimension,
                    key: p.key.hex(),
                    scope: p.scope,
                    tenant: p.tenant,
                    text: p.text,
                    expires_at_ms: p.expires_at_ms,
                    vector: p.vector,
                })
                .collect();
            part.points += lines.len() as u64;
            w.push(lines.len() as u64, move |out| codec::json_lines(&lines, out))
                .await?;
        }
        part.collections.push(c.name);
    }
    Ok((w.finish().await?, part))
}

/// Copies the artifacts the pool lacks (or all with `full`), hash-checked.
/// Returns (copied, copied bytes, missing or damaged at the source).
pub(crate) async fn copy_artifacts(
    roles: &Roles,
    target: &Target,
    want: Vec<(ArtifactId, u64)>,
    parallel: usize,
    ctx: &dyn JobCtx,
    done_before: u64,
    total: u64,
) -> BResult<(u64, u64, Vec<ArtifactId>)> {
    let mut copied = (0u64, 0u64);
    let mut missing = Vec::new();
    let mut done = done_before;
    let (artifacts, target) = (roles.artifacts.clone(), target.clone());
    let mut s = futures_util::stream::iter(want.into_iter().map(move |(id, _)| {
        let (artifacts, target) = (artifacts.clone(), target.clone());
        async move {
            let bytes = match artifacts.get(id).await? {
                Some(b) if ArtifactId::of(&b) == id => b,
                // Gone or damaged at the source: never copied as if it were fine.
                _ => return Ok::<_, BackupError>((id, None)),
            };
            let n = bytes.len() as u64;
            target.put(&Target::pool_rel(id), bytes).await?;
            Ok((id, Some(n)))
        }
    }))
    .buffer_unordered(parallel.max(1));
    while let Some(r) = s.next().await {
        match r? {
            (_, Some(n)) => {
                copied.0 += 1;
                copied.1 += n;
            }
            (id, None) => missing.push(id),
        }
        done += 1;
        if done.is_multiple_of(256) {
            ctx.progress(done, Some(total));
        }
    }
    ctx.progress(done, Some(total));
    Ok((copied.0, copied.1, missing))
}

/// Copies the artifacts the pool lacks (all of them for a full set) and
/// writes the set's artifact list.
#[allow(clippy::too_many_arguments)]
async fn export_artifacts(
    roles: &Roles,
    targets: &Targets,
    dir: &str,
    referenced: &HashMap<ArtifactId, u64>,
    pool: &HashMap<ArtifactId, (u64, i64)>,
    canary: &manifest::Canary,
    opts: &CreateOptions,
    ctx: &dyn JobCtx,
) -> BResult<(Vec<FileEntry>, manifest::ArtifactsPart)> {
    let target = &targets.primary;
    let mut sorted: Vec<(ArtifactId, u64)> = referenced.iter().map(|(k, v)| (*k, *v)).collect();
    sorted.sort_unstable();
    let want: Vec<(ArtifactId, u64)> = sorted
        .iter()
        .filter(|(id, size)| opts.full || pool.get(id).is_none_or(|(s, _)| s != size))
        .copied()
        .collect();
    let total = sorted.len() as u64;
    let already = total - want.len() as u64;
    ctx.progress(already, Some(total));
    // The canary is new with every set: counted apart, so `copied` is what the cache added.
    let canary_id = ArtifactId::from_hex(&canary.artifact);
    let canary_new = want.iter().find(|(id, _)| Some(*id) == canary_id).map(|(_, s)| *s);
    let (mut copied, mut copied_bytes, missing) =
        copy_artifacts(roles, target, want, targets.config.backup.parallel, ctx, already, total).await?;
    if let Some(size) = canary_new.filter(|_| copied > 0) {
        copied -= 1;
        copied_bytes = copied_bytes.saturating_sub(size);
    }
    let reused = already - u64::from(canary_new.is_none() && canary_id.is_some_and(|c| referenced.contains_key(&c)));
    if !missing.is_empty() {
        tracing::warn!(
            missing = missing.len(),
            "backup: artifacts missing or damaged at the source are not in the set (audit and repair --missing-artifacts find them)"
        );
    }
    let missing_set: std::collections::HashSet<ArtifactId> = missing.iter().copied().collect();
    let present: Vec<(ArtifactId, u64)> = sorted
        .iter()
        .filter(|(id, _)| !missing_set.contains(id))
        .copied()
        .collect();
    let mut w = PartWriter::new(target, dir, "artifacts", "tsv");
    for chunk in present.chunks(PART_ROWS) {
        let chunk = chunk.to_vec();
        w.push(chunk.len() as u64, move |out| codec::artifact_lines(&chunk, out))
            .await?;
    }
    let files = w.finish().await?;
    let part = manifest::ArtifactsPart {
        engine: roles.artifacts.engine().to_string(),
        referenced: present.len() as u64,
        bytes: present.iter().map(|(_, s)| s).sum(),
        copied,
        copied_bytes,
        reused,
        missing: missing.len() as u64,
        missing_artifacts: missing.iter().take(100).map(|a| a.hex()).collect(),
    };
    Ok((files, part))
}

/// Takes a backup set. Returns its manifest (already written).
pub async fn create(targets: &Targets, roles: &Roles, opts: &CreateOptions, ctx: &dyn JobCtx) -> BResult<Manifest> {
    let config = &targets.config;
    let target = &targets.primary;
    let started = Instant::now();
    let started_at = now_ms();
    let id = super::format_id(started_at);
    let dir = set_dir(&id);
    let parent = super::list::newest(target, false).await?.map(|m| m.id);
    tracing::info!(set = %id, target = %target.label, "backup: starting");

    // 1. The canary, through every store, before anything is read.
    let canary = canary::write(roles, &config.backup.deployment, &id, started_at).await?;

    // 2. Index pointers, the metadata snapshot and the pool listing, at once.
    let timed = |what: &'static str| {
        let t = Instant::now();
        move || tracing::debug!(what, seconds = t.elapsed().as_secs_f64(), "backup: read")
    };
    let (index, meta, pool) = tokio::join!(
        async {
            let done = timed("index");
            let r = export_index(roles, target, &dir).await;
            done();
            r
        },
        async {
            let done = timed("metadata");
            let r = export_metadata(roles, target, &dir, started_at).await;
            done();
            r
        },
        async {
            let done = timed("pool listing");
            let r = target.pool().await;
            done();
            r
        },
    );
    let ((index_files, index_part), meta, pool) = (index?, meta?, pool?);
    let read_s = started.elapsed().as_secs_f64();

    // 3. Artifacts the pool lacks: checked against the target's own listing.
    let (artifact_files, artifacts) =
        export_artifacts(roles, targets, &dir, &meta.referenced, &pool, &canary, opts, ctx).await?;
    let reused = artifacts.reused;
    tracing::info!(set = %id, read_s, copy_s = started.elapsed().as_secs_f64() - read_s, "backup: stores read, artifacts copied");

    // 4. Vectors: every point of every collection, when the role is on.
    let (vector_files, vectors) = export_vectors(roles, target, &dir).await?;

    let mut files = meta.files;
    files.extend(index_files);
    files.extend(artifact_files);
    files.extend(vector_files);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let m = Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        id: id.clone(),
        deployment: config.backup.deployment.clone(),
        kind: if parent.is_some() && !opts.full && reused > 0 {
            "incremental".into()
        } else {
            "full".into()
        },
        trigger: if opts.trigger.is_empty() {
            "manual".into()
        } else {
            opts.trigger.clone()
        },
        parent,
        started_at_ms: started_at,
        finished_at_ms: now_ms(),
        recache_version: env!("CARGO_PKG_VERSION").into(),
        config_fingerprint: super::config_fingerprint(config),
        roles: manifest::Roles {
            metadata: meta.part,
            index: index_part,
            artifacts,
            vectors,
        },
        canary,
        files,
    };
    // 5. The manifest, last: the set exists from this write on.
    write_manifest(target, &m).await?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        set = %id,
        seconds,
        entries = m.roles.metadata.entries,
        copied = m.roles.artifacts.copied,
        reused,
        "backup: set written"
    );
    super::audit(
        roles.metadata.as_ref(),
        "backup.create",
        json!({
            "set": id, "target": target.label, "kind": m.kind, "trigger": m.trigger,
            "entries": m.roles.metadata.entries, "copied": m.roles.artifacts.copied, "reused": reused,
            "missing": m.roles.artifacts.missing, "seconds": seconds,
        }),
    )
    .await;
    Ok(m)
}

/// The manifest and its copy (the copy second: a set with only the first is
/// complete; one with neither is not).
pub(crate) async fn write_manifest(target: &Target, m: &Manifest) -> BResult<()> {
    let bytes = bytes::Bytes::from(m.encode_signed(target.signing_key.as_deref()));
    let dir = set_dir(&m.id);
    target
        .put(&format!("{dir}/{}", manifest::MANIFEST), bytes.clone())
        .await?;
    target.put(&format!("{dir}/{}", manifest::MANIFEST_COPY), bytes).await?;
    Ok(())
}

/// Copies a set to another target (the DR copy): the pooled artifacts that
/// target lacks (by its own listing), the set's files, then the manifest.
pub(crate) async fn copy_set(
    from: &Target,
    to: &Target,
    m: &Manifest,
    parallel: usize,
    ctx: &dyn JobCtx,
) -> BResult<u64> {
    let dir = set_dir(&m.id);
    let listed = super::verify::artifact_list(from, m).await?;
    let pool = to.pool().await?;
    let want: Vec<(ArtifactId, u64)> = listed
        .into_iter()
        .filter(|(id, size)| pool.get(id).is_none_or(|(s, _)| s != size))
        .collect();
    let total = want.len() as u64;
    let mut copied = 0u64;
    let (src, dst) = (from.clone(), to.clone());
    let mut s = futures_util::stream::iter(want.into_iter().map(move |(id, _)| {
        let (from, to) = (src.clone(), dst.clone());
        async move {
            let rel = Target::pool_rel(id);
            let bytes = from.get(&rel).await?.ok_or_else(|| {
                BackupError::Invalid(format!("pooled artifact {} is missing from {}", id.hex(), from.label))
            })?;
            if ArtifactId::of(&bytes) != id {
                return Err(BackupError::Invalid(format!(
                    "pooled artifact {} is damaged in {}",
                    id.hex(),
                    from.label
                )));
            }
            to.put(&rel, bytes).await?;
            Ok::<_, BackupError>(())
        }
    }))
    .buffer_unordered(parallel.max(1));
    while let Some(r) = s.next().await {
        r?;
        copied += 1;
        if copied.is_multiple_of(256) {
            ctx.progress(copied, Some(total));
        }
    }
    drop(s);
    for f in &m.files {
        let rel = format!("{dir}/{}", f.path);
        let bytes = from
            .get(&rel)
            .await?
            .ok_or_else(|| BackupError::Invalid(format!("{rel} is missing from {}", from.label)))?;
        if codec::sha256_hex(&bytes) != f.sha256 {
            return Err(BackupError::Invalid(format!("{rel} is damaged in {}", from.label)));
        }
        to.put(&rel, bytes).await?;
    }
    // The keys that open the set travel with it (merged: a key destroyed on
    // either side stays destroyed).
    super::keyfile::write_merged(to, super::keyfile::read(from).await?).await?;
    write_manifest(to, m).await?;
    Ok(copied)
}
