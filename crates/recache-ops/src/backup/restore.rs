//! `backup restore`: metadata first, then the artifacts the destination
//! lacks (each hash-checked on the way), then the vectors, and the index
//! last — the switch-over: until a key's pointer is written, requests for it
//! miss and go to the provider, so a running gateway keeps serving
//! throughout and never sees a pointer whose artifact is not there yet.
//! `verify --level restore` runs the same code into a scratch set.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;

use super::codec;
use super::manifest::{FileEntry, Manifest};
use super::target::Target;
use super::{set_dir, BResult, BackupError};
use recache_core::key::CacheKey;
use recache_storage::queue::worker::JobCtx;
use recache_storage::queue::Job;
use recache_storage::roles::keys::KeyRecord;
use recache_storage::roles::{ArtifactId, AuditEvent, EntryRecord, IndexEntry, Roles, SnapshotBatch, UsageRow};

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    pub set: String,
    pub entries: u64,
    pub entries_written: u64,
    pub audit_events: u64,
    pub jobs: u64,
    /// Client keys of the set written (digests); a key the destination
    /// already holds (by id) is kept as it is there, so a revocation made
    /// after the set was taken stands.
    pub keys: u64,
    pub keys_present: u64,
    /// Tenants' data keys written (wrapped, from the target's key file); one
    /// the destination holds stays as it is there.
    pub data_keys: u64,
    /// Entries sealed with a key that no longer opens (destroyed by an
    /// erasure after the set was taken): not restored, counted per tenant.
    pub entries_unreadable: u64,
    pub unreadable_tenants: std::collections::BTreeMap<String, u64>,
    /// Hourly usage rows written; none when the destination had usage of its
    /// own (the counters add up, so a set is never added twice).
    pub usage_rows: u64,
    pub artifacts: u64,
    pub artifacts_copied: u64,
    pub artifacts_present: u64,
    /// Entries whose artifact was missing at backup time (marked for refetch).
    pub entries_without_artifact: u64,
    pub pointers: u64,
    pub pointers_written: u64,
    /// Pointers of keys the snapshot has no entry for (written between the two reads).
    pub pointers_skipped: u64,
    /// Live entries the exported index lacked, given a pointer from their entry
    /// (as the index rebuild does).
    pub pointers_derived: u64,
    pub vectors: String,
    pub vectors_written: u64,
    /// A restore under traffic (step 5): entries written since the stores
    /// were lost, checked against their artifact; pointers rewritten from
    /// their row, rows whose artifact was gone put back from the set (or
    /// dropped, when the set has none for the key).
    pub reconciled_entries: u64,
    pub reconciled_pointers: u64,
    pub reconciled_replaced: u64,
    pub reconciled_dropped: u64,
    pub seconds: f64,
    /// Seconds per step: metadata, artifacts, vectors, index.
    pub steps: Vec<(&'static str, f64)>,
    pub problems: Vec<String>,
}

/// Reads a set file, checking its size and SHA-256 against the manifest, and decompresses it.
pub(crate) async fn read_file(target: &Target, m: &Manifest, f: &FileEntry) -> BResult<Vec<u8>> {
    let rel = format!("{}/{}", set_dir(&m.id), f.path);
    let bytes = target
        .get(&rel)
        .await?
        .ok_or_else(|| BackupError::Invalid(format!("{} is missing from set {}", f.path, m.id)))?;
    if bytes.len() as u64 != f.size || codec::sha256_hex(&bytes) != f.sha256 {
        return Err(BackupError::Invalid(format!(
            "{} in set {} is damaged: SHA-256 or size differs from the manifest",
            f.path, m.id
        )));
    }
    codec::unpack(&bytes).map_err(|e| BackupError::Invalid(format!("{} in set {}: {e}", f.path, m.id)))
}

fn files<'a>(m: &'a Manifest, prefix: &'a str) -> impl Iterator<Item = &'a FileEntry> + 'a {
    m.files.iter().filter(move |f| f.path.starts_with(prefix))
}

fn bad(f: &FileEntry, e: String) -> BackupError {
    BackupError::Invalid(format!("{}: {e}", f.path))
}

/// Restores exported vector points into their collections (created with
/// their dimension if missing). Returns the points written.
async fn restore_vectors(
    roles: &Roles,
    target: &Target,
    m: &Manifest,
    keys: &HashMap<CacheKey, Option<IndexEntry>>,
) -> BResult<u64> {
    use recache_storage::roles::VectorPoint;
    let mut n = 0;
    let mut ensured: HashSet<String> = HashSet::new();
    for f in files(m, "vectors/points-") {
        let text = read_file(target, m, f).await?;
        let rows: Vec<codec::PointLine> = codec::parse_json_lines(&text).map_err(|e| bad(f, e))?;
        let mut by_collection: HashMap<String, Vec<VectorPoint>> = HashMap::new();
        for p in rows {
            let Some(key) = CacheKey::from_hex(&p.key) else {
                continue;
            };
            // Only points whose entry came back (a vector without an entry is never searched for).
            if !keys.contains_key(&key) {
                continue;
            }
            if ensured.insert(p.collection.clone()) {
                roles.vectors.ensure_collection(&p.collection, p.dimension).await?;
            }
            by_collection.entry(p.collection).or_default().push(VectorPoint {
                key,
                scope: p.scope,
                tenant: p.tenant,
                text: p.text,
                expires_at_ms: p.expires_at_ms,
                vector: p.vector,
            });
        }
        for (c, points) in by_collection {
            for chunk in points.chunks(1000) {
                n += chunk.len() as u64;
                roles.vectors.upsert(&c, chunk.to_vec()).await?;
            }
        }
    }
    Ok(n)
}

/// Restores set `m` from `target` into `roles`. Problems that leave the
/// restore incomplete are returned in the report (the caller decides the
/// verdict); a set file that fails its hash stops the restore.
/// `reconcile_since_ms`: traffic may have written entries since then (the
/// stores were lost then, and a gateway kept serving): step 5 reconciles them.
pub(crate) async fn restore_into(
    roles: &Roles,
    target: &Target,
    m: &Manifest,
    parallel: usize,
    reconcile_since_ms: Option<i64>,
    ctx: &dyn JobCtx,
) -> BResult<RestoreReport> {
    let started = Instant::now();
    let mut run = Restore {
        roles,
        target,
        m,
        ctx,
        r: RestoreReport {
            set: m.id.clone(),
            ..Default::default()
        },
        total_steps: m.roles.metadata.entries + m.roles.artifacts.referenced + m.roles.index.pointers,
        done: 0,
        keys: HashMap::with_capacity(m.roles.metadata.entries as usize),
        wanted: HashMap::new(),
        artifact_missing: Vec::new(),
    };
    // In this order: the index last, so no pointer names what is not there yet.
    let step = Instant::now();
    run.metadata().await?;
    run.r.steps.push(("metadata", step.elapsed().as_secs_f64()));
    let step = Instant::now();
    run.artifacts(parallel).await?;
    run.r.steps.push(("artifacts", step.elapsed().as_secs_f64()));
    let step = Instant::now();
    run.vectors().await?;
    run.r.steps.push(("vectors", step.elapsed().as_secs_f64()));
    let step = Instant::now();
    run.index().await?;
    run.r.steps.push(("index", step.elapsed().as_secs_f64()));
    if let Some(since) = reconcile_since_ms {
        let step = Instant::now();
        run.reconcile(since, parallel).await?;
        run.r.steps.push(("reconcile", step.elapsed().as_secs_f64()));
    }
    let mut r = run.r;
    r.seconds = started.elapsed().as_secs_f64();
    tracing::info!(set = %m.id, steps = ?r.steps, "restore: done");
    Ok(r)
}

/// One restore in progress.
struct Restore<'a> {
    roles: &'a Roles,
    target: &'a Target,
    m: &'a Manifest,
    ctx: &'a dyn JobCtx,
    r: RestoreReport,
    total_steps: u64,
    done: u64,
    /// Every key; live entries with their artifact also keep the pointer their entry implies.
    keys: HashMap<CacheKey, Option<IndexEntry>>,
    /// The artifacts the entries use, with their sizes.
    wanted: HashMap<ArtifactId, u64>,
    /// Entries whose artifact was missing at backup time.
    artifact_missing: Vec<CacheKey>,
}

impl Restore<'_> {
    fn progress(&self) {
        self.ctx
            .progress(self.done.min(self.total_steps), Some(self.total_steps));
    }

    /// Step 1, metadata: entries (remembering keys and artifacts), audit events, jobs.
    async fn metadata(&mut self) -> BResult<()> {
        let (roles, target, m) = (self.roles, self.target, self.m);
        let now = recache_storage::roles::now_ms();
        let listed: HashSet<ArtifactId> = super::verify::artifact_list(target, m)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        self.data_keys().await?;
        let mut opens: HashMap<String, bool> = HashMap::new();
        for f in files(m, "metadata/entries-") {
            let text = read_file(target, m, f).await?;
            let rows: Vec<EntryRecord> = codec::parse_json_lines(&text).map_err(|e| bad(f, e))?;
            for chunk in rows.chunks(5000) {
                let mut chunk = self.readable(chunk.to_vec(), &mut opens).await?;
                for e in &mut chunk {
                    if listed.contains(&e.artifact) {
                        self.wanted.insert(e.artifact, e.response_bytes);
                        self.keys
                            .insert(e.key, (e.expires_at_ms > now).then(|| e.index_entry()));
                    } else {
                        self.keys.insert(e.key, None);
                        // Missing at backup time: restored marked, so refetch can buy it back.
                        e.artifact_missing = true;
                        self.artifact_missing.push(e.key);
                    }
                }
                self.r.entries += chunk.len() as u64;
                self.r.entries_written += roles.metadata.import_snapshot(SnapshotBatch::Entries(chunk)).await?;
                self.done += 5000.min(rows.len() as u64);
                self.progress();
            }
        }
        self.r.entries_without_artifact = self.artifact_missing.len() as u64;
        for f in files(m, "metadata/audit-") {
            let text = read_file(target, m, f).await?;
            let rows: Vec<AuditEvent> = codec::parse_json_lines(&text).map_err(|e| bad(f, e))?;
            for chunk in rows.chunks(5000) {
                self.r.audit_events += roles
                    .metadata
                    .import_snapshot(SnapshotBatch::Audit(chunk.to_vec()))
                    .await?;
            }
        }
        for f in files(m, "metadata/jobs-") {
            let text = read_file(target, m, f).await?;
            let rows: Vec<serde_json::Value> = codec::parse_json_lines(&text).map_err(|e| bad(f, e))?;
            // A backup or restore that was running when the snapshot was taken is
            // never run again by the restored queue.
            let jobs: Vec<Job> = rows
                .into_iter()
                .filter_map(job_from_json)
                .filter(|j| !matches!(j.kind.as_str(), super::run::BACKUP | super::run::BACKUP_RESTORE))
                .collect();
            self.r.jobs += roles.metadata.import_snapshot(SnapshotBatch::Jobs(jobs)).await?;
        }
        let usage_files: Vec<&FileEntry> = files(m, "metadata/usage-").collect();
        if !usage_files.is_empty() && roles.metadata.usage_since(0).await?.is_empty() {
            for f in usage_files {
                let text = read_file(target, m, f).await?;
                let rows: Vec<UsageRow> = codec::parse_json_lines(&text).map_err(|e| bad(f, e))?;
                for chunk in rows.chunks(1000) {
                    roles.metadata.record_usage(chunk.to_vec()).await?;
                    self.r.usage_rows += chunk.len() as u64;
                }
            }
        }
        for f in files(m, "metadata/keys-") {
            let text = read_file(target, m, f).await?;
            let rows: Vec<serde_json::Value> = codec::parse_json_lines(&text).map_err(|e| bad(f, e))?;
            for row in rows {
                let k = KeyRecord::from_backup_json(row)
                    .ok_or_else(|| bad(f, "a key without a well-formed digest".into()))?;
                if roles.metadata.key_by_id(k.id.clone()).await?.is_some() {
                    self.r.keys_present += 1;
                } else {
                    roles.metadata.create_key(k).await?;
                    self.r.keys += 1;
                }
            }
        }
        Ok(())
    }

    /// The data keys of the target's key file the destination lacks (a set
    /// carries none: see `keyfile`). A key destroyed there stays destroyed.
    async fn data_keys(&mut self) -> BResult<()> {
        let meta = &self.roles.metadata;
        let held: HashSet<String> = meta.list_data_keys(None).await?.into_iter().map(|k| k.id).collect();
        for k in super::keyfile::read(self.target).await? {
            if !held.contains(&k.id) {
                meta.create_data_key(k, false).await?;
                self.r.data_keys += 1;
            }
        }
        Ok(())
    }

    /// Leaves out (and counts) the entries whose stored request is sealed
    /// with a key that does not open: destroyed by an erasure, or not in the
    /// key file. Sealed entries and no master key at all: refused.
    async fn readable(
        &mut self,
        rows: Vec<EntryRecord>,
        opens: &mut HashMap<String, bool>,
    ) -> BResult<Vec<EntryRecord>> {
        use recache_storage::roles::keyring::text_key_id;
        let mut out = Vec::with_capacity(rows.len());
        for e in rows {
            let Some(id) = e.request.as_deref().and_then(text_key_id) else {
                out.push(e);
                continue;
            };
            let ok = match opens.get(&id) {
                Some(ok) => *ok,
                None => {
                    let Some(k) = self.roles.keyring.as_ref() else {
                        return Err(BackupError::Config(format!(
                            "set {} holds answers sealed at rest: it restores only with the master key \
                             ([encryption] master_key_env or master_key_file)",
                            self.m.id
                        )));
                    };
                    use recache_core::seal::SealError;
                    use recache_storage::roles::keyring::KeyringError;
                    let ok = match k.key(&id).await {
                        Ok(_) => true,
                        Err(KeyringError::Destroyed(_)) | Err(KeyringError::Seal(SealError::UnknownKey(_))) => false,
                        Err(KeyringError::Metadata(e)) => return Err(e.into()),
                        Err(e) => {
                            return Err(BackupError::Config(format!(
                                "data key {id} does not open with the configured master key: {e}"
                            )))
                        }
                    };
                    if !ok {
                        tracing::warn!(key = %id, tenant = %e.tenant, "restore: entries sealed with a key that no longer opens are left out");
                    }
                    opens.insert(id, ok);
                    ok
                }
            };
            if ok {
                out.push(e);
            } else {
                self.r.entries_unreadable += 1;
                *self.r.unreadable_tenants.entry(e.tenant.clone()).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Step 2: the artifacts the destination lacks, hash-checked.
    async fn artifacts(&mut self, parallel: usize) -> BResult<()> {
        let roles = self.roles;
        let present: HashSet<ArtifactId> = roles.artifacts.list().await?.into_iter().map(|a| a.id).collect();
        self.r.artifacts = self.wanted.len() as u64;
        let want: Vec<ArtifactId> = self.wanted.keys().filter(|id| !present.contains(id)).copied().collect();
        self.r.artifacts_present = self.r.artifacts - want.len() as u64;
        self.done += self.r.artifacts_present;
        let (dest, pool) = (roles.artifacts.clone(), self.target.clone());
        let mut s = futures_util::stream::iter(want.into_iter().map(move |id| {
            let (dest, pool) = (dest.clone(), pool.clone());
            async move {
                let bytes = pool.get(&Target::pool_rel(id)).await?;
                match bytes {
                    Some(b) if ArtifactId::of(&b) == id => {
                        dest.put(id, b).await?;
                        Ok::<_, BackupError>(Ok(()))
                    }
                    Some(_) => Ok(Err(format!(
                        "pooled artifact {} is damaged (SHA-256 differs)",
                        id.hex()
                    ))),
                    None => Ok(Err(format!("pooled artifact {} is missing from the target", id.hex()))),
                }
            }
        }))
        .buffer_unordered(parallel.max(1));
        while let Some(res) = s.next().await {
            match res? {
                Ok(()) => self.r.artifacts_copied += 1,
                Err(p) => self.r.problems.push(p),
            }
            self.done += 1;
            if self.done.is_multiple_of(256) {
                self.progress();
            }
        }
        drop(s);
        for chunk in self.artifact_missing.chunks(5000) {
            roles.metadata.set_artifact_missing(chunk.to_vec(), true).await?;
        }
        Ok(())
    }

    /// Step 3, vectors: the exported points; without an export (or a vectors
    /// role here) the caller's warmer rebuilds them from the restored requests.
    async fn vectors(&mut self) -> BResult<()> {
        let m = self.m;
        self.r.vectors = m.roles.vectors.state.clone();
        if self.roles.vectors.enabled() && m.roles.vectors.state == "exported" {
            self.r.vectors_written = restore_vectors(self.roles, self.target, m, &self.keys).await?;
            self.r.vectors = "restored".into();
        }
        Ok(())
    }

    /// Step 4, the index, last: the set's pointers for keys it restored, then the
    /// pointers live entries imply where the set had none.
    async fn index(&mut self) -> BResult<()> {
        let (roles, target, m) = (self.roles, self.target, self.m);
        for f in files(m, "index/pointers-") {
            let text = read_file(target, m, f).await?;
            let rows = codec::parse_pointer_lines(&text).map_err(|e| bad(f, e))?;
            let read = rows.len() as u64;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|(k, _)| match self.keys.get_mut(k) {
                    Some(derived) => {
                        *derived = None;
                        true
                    }
                    None => false,
                })
                .collect();
            self.r.pointers += read;
            self.r.pointers_skipped += read - rows.len() as u64;
            for chunk in rows.chunks(5000) {
                self.r.pointers_written += roles.index.put_many(chunk.to_vec(), true).await?;
                self.done += chunk.len() as u64;
                self.progress();
            }
        }
        let derived: Vec<(CacheKey, IndexEntry)> = std::mem::take(&mut self.keys)
            .into_iter()
            .filter_map(|(k, p)| Some((k, p?)))
            .collect();
        for chunk in derived.chunks(5000) {
            self.r.pointers_derived += roles.index.put_many(chunk.to_vec(), true).await?;
        }
        let _ = roles.index.flush().await;
        Ok(())
    }
}

impl Restore<'_> {
    /// Step 5, after a restore under traffic: the entries written since
    /// `since_ms` raced the loss and the restore. A store begun before the
    /// wipe may have left a row (and a pointer) whose artifact the wipe then
    /// deleted; a restored pointer may name the set's answer where traffic
    /// has since stored a new one. Each such entry's artifact is read: where
    /// it is there, the pointer is rewritten from the row; where it is gone,
    /// the row is dropped and the set's row for the key (whose artifact step
    /// 2 copied) is put back with its pointer.
    async fn reconcile(&mut self, since_ms: i64, parallel: usize) -> BResult<()> {
        let roles = self.roles;
        let entries = roles
            .metadata
            .live_entries(since_ms, recache_storage::roles::now_ms())
            .await?;
        self.r.reconciled_entries = entries.len() as u64;
        let checked: Vec<_> = futures_util::stream::iter(entries)
            .map(|(k, e)| async move {
                let there = roles.artifacts.get(e.artifact).await.map(|b| b.is_some());
                (k, e, there)
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        let mut gone = Vec::new();
        for (k, e, there) in checked {
            if !there? {
                gone.push((k, e.artifact));
            }
        }
        if !gone.is_empty() {
            self.put_back(gone).await?;
        }
        // Then every pointer of an entry written since agrees with its row.
        let (_, written) = crate::recovery::watch::settle_pointers(roles, since_ms).await?;
        self.r.reconciled_pointers = written;
        Ok(())
    }

    /// Drops the rows (and pointers) whose artifact is gone, and puts back
    /// the set's rows for their keys with their pointers.
    async fn put_back(&mut self, gone: Vec<(CacheKey, ArtifactId)>) -> BResult<()> {
        let roles = self.roles;
        tracing::warn!(
            entries = gone.len(),
            "restore: entries written during the restore lost their artifact; putting the set's rows back"
        );
        let keys: HashSet<CacheKey> = gone.iter().map(|(k, _)| *k).collect();
        roles.metadata.delete_entries(gone).await?;
        for k in &keys {
            roles.index.delete(*k).await?;
        }
        let now = recache_storage::roles::now_ms();
        let mut opens: HashMap<String, bool> = HashMap::new();
        let mut back: HashSet<CacheKey> = HashSet::new();
        for f in files(self.m, "metadata/entries-") {
            let text = read_file(self.target, self.m, f).await?;
            let rows: Vec<EntryRecord> = codec::parse_json_lines(&text).map_err(|e| bad(f, e))?;
            let rows: Vec<EntryRecord> = rows.into_iter().filter(|e| keys.contains(&e.key)).collect();
            if rows.is_empty() {
                continue;
            }
            let rows = self.readable(rows, &mut opens).await?;
            let pointers: Vec<(CacheKey, IndexEntry)> = rows
                .iter()
                .filter(|e| self.wanted.contains_key(&e.artifact) && e.expires_at_ms > now)
                .map(|e| (e.key, e.index_entry()))
                .collect();
            back.extend(rows.iter().map(|e| e.key));
            roles.metadata.import_snapshot(SnapshotBatch::Entries(rows)).await?;
            roles.index.put_many(pointers, false).await?;
        }
        self.r.reconciled_replaced = back.len() as u64;
        self.r.reconciled_dropped = (keys.len() - back.len()) as u64;
        Ok(())
    }
}

/// A job row of a snapshot (as `Job` serialises it) back into a `Job`.
fn job_from_json(v: serde_json::Value) -> Option<Job> {
    use recache_storage::queue::JobState;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let i = |k: &str| v.get(k).and_then(|x| x.as_i64());
    Some(Job {
        id: i("id")?,
        kind: s("kind")?,
        payload: v.get("payload").cloned().unwrap_or_default(),
        priority: i("priority").unwrap_or(0),
        state: JobState::parse(&s("state")?)?,
        attempts: i("attempts").unwrap_or(0),
        max_attempts: i("max_attempts").unwrap_or(5),
        run_after_ms: i("run_after_ms").unwrap_or(0),
        lease_owner: None,
        lease_token: None,
        lease_until_ms: None,
        heartbeat_at_ms: None,
        unique_key: s("unique_key"),
        namespace: s("namespace"),
        created_at_ms: i("created_at_ms").unwrap_or(0),
        started_at_ms: i("started_at_ms"),
        finished_at_ms: i("finished_at_ms"),
        updated_at_ms: i("updated_at_ms"),
        last_error: s("last_error"),
        result: v.get("result").cloned().filter(|r| !r.is_null()),
    })
}
