//! The embedded vectors engine: in process, persisted under the data directory.
//!
//! Each collection (one per embedder fingerprint) is a set of scopes, and a
//! search only ever looks inside one scope. A scope under
//! [`IvfParams::min_rows`] is searched by an **exact scan** (a dot product per
//! point: recall 1.0 against the stored codes); a bigger one gets an **IVF
//! index** (`vectors_ivf.rs`), trained and filled by a maintainer thread off
//! the request path, so a search scans only the `nprobe` nearest lists. In
//! practice scopes stay small: a scope holds only near-duplicates of one kind of
//! request (same tenant, namespace, model, system prompt, earlier turns and
//! parameters), so scopes stay small in practice. Why not an ANN graph yet is
//! in `docs/semantic.md` (measured: HNSW with i8 vectors gave recall@1 0.72 on
//! clustered data at 100k points and ~3,300 inserts/s on two cores).
//!
//! Vectors are L2-normalised and held in memory as **i8 codes with one f32
//! scale per vector** (symmetric, scale = max |x| / 127): a quarter of the
//! memory of f32, and a scan reads a quarter of the bytes. The query is
//! quantised the same way once per search and the dot products run on
//! integers (measured by `recache bench vectors`: scores within about 0.003 of
//! the f32 cosine). The log keeps
//! the f32 vectors (until a compaction rewrites it from the codes).
//!
//! Persistence: one append-only log per collection (`<name>.vlog`) of upsert
//! and delete records, each length-prefixed; it is replayed at start, a torn
//! tail is cut, and a log with more dead records than live points is
//! rewritten. Writes reach the OS before the call returns; `flush` fsyncs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::vectors_ivf::{self, Ivf};
use super::vectors_ivf_file;
use super::{BackendError, BoxFuture, CheckInfo, CollectionInfo, Result, VectorMatch, VectorPoint, Vectors};
use crate::key::CacheKey;
use crate::roles::{normalised, now_ms};

mod maintain;
mod quant;
mod vlog;

use maintain::*;
use quant::*;
use vlog::*;

const MAGIC: &[u8; 8] = b"RCVEC01\n";
const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;

struct Meta {
    key: CacheKey,
    tenant: String,
    text: String,
    expires_at_ms: i64,
}

#[derive(Default)]
struct Scope {
    /// Present once the scope grew past `IvfParams::min_rows` and was trained.
    ivf: Option<Ivf>,
    meta: Vec<Meta>,
    /// Row-major, `dim` codes per point, in the order of `meta`.
    codes: Vec<i8>,
    /// One scale per point: the vector is `codes * scale`.
    scales: Vec<f32>,
    /// Each point's expiry, apart from `meta` so a scan touches only small arrays.
    expires: Vec<i64>,
}

impl Scope {
    /// Puts the rows in `order` (new row `i` was row `order[i]`, a permutation
    /// of every row), in place, following each cycle of the permutation.
    fn permute(&mut self, order: &[u32], dim: usize) {
        let mut done = vec![false; order.len()];
        let mut spare = vec![0i8; dim];
        for start in 0..order.len() {
            if done[start] {
                continue;
            }
            // Carry the start row along the cycle: each row takes the one it comes from.
            spare.copy_from_slice(&self.codes[start * dim..(start + 1) * dim]);
            let (scale, expires) = (self.scales[start], self.expires[start]);
            let mut j = start;
            loop {
                done[j] = true;
                let from = order[j] as usize;
                if from == start {
                    self.codes[j * dim..(j + 1) * dim].copy_from_slice(&spare);
                    self.scales[j] = scale;
                    self.expires[j] = expires;
                    break;
                }
                self.codes.copy_within(from * dim..(from + 1) * dim, j * dim);
                self.scales[j] = self.scales[from];
                self.expires[j] = self.expires[from];
                self.meta.swap(j, from);
                j = from;
            }
        }
    }
}

struct Collection {
    dim: usize,
    scopes: HashMap<Arc<str>, Scope>,
    /// Where each key lives: its scope (shared name) and row.
    at: BTreeMap<CacheKey, (Arc<str>, usize)>,
    log: Mutex<File>,
    dead: u64,
}

impl Collection {
    /// The point at `row` of `scope`, its vector dequantised from the codes.
    fn point(&self, scope_name: &str, scope: &Scope, row: usize) -> Option<VectorPoint> {
        let m = scope.meta.get(row)?;
        Some(VectorPoint {
            key: m.key,
            scope: scope_name.to_string(),
            tenant: m.tenant.clone(),
            text: m.text.clone(),
            expires_at_ms: m.expires_at_ms,
            vector: scope.codes[row * self.dim..(row + 1) * self.dim]
                .iter()
                .map(|x| *x as f32 * scope.scales[row])
                .collect(),
        })
    }

    /// Keys after `after`, in key order, with where they live.
    fn keys_after(&self, after: Option<CacheKey>) -> impl Iterator<Item = (&CacheKey, &(Arc<str>, usize))> {
        use std::ops::Bound;
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        self.at.range((lower, Bound::Unbounded))
    }

    fn insert(&mut self, p: VectorPoint) {
        self.remove(p.key);
        let name: Arc<str> = match self.scopes.get_key_value(p.scope.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(p.scope.as_str()),
        };
        let scope = self.scopes.entry(name.clone()).or_default();
        let row = scope.meta.len();
        scope.meta.push(Meta {
            key: p.key,
            tenant: p.tenant,
            text: p.text,
            expires_at_ms: p.expires_at_ms,
        });
        grow_huge(&mut scope.codes, self.dim);
        grow_huge(&mut scope.scales, 1);
        grow_huge(&mut scope.expires, 1);
        let scale = quantise_into(&p.vector, &mut scope.codes);
        scope.scales.push(scale);
        scope.expires.push(p.expires_at_ms);
        if let Some(ivf) = &mut scope.ivf {
            let codes = &scope.codes[row * self.dim..];
            let list = ivf.nearest(|c| dot_i8(c, codes));
            ivf.push_row(Some(list));
        }
        self.at.insert(p.key, (name, row));
    }

    fn remove(&mut self, key: CacheKey) -> bool {
        let Some((scope_name, row)) = self.at.remove(&key) else {
            return false;
        };
        self.dead += 1;
        let dim = self.dim;
        let Some(scope) = self.scopes.get_mut(&scope_name) else {
            return true;
        };
        let last = scope.meta.len() - 1;
        if let Some(ivf) = &mut scope.ivf {
            ivf.remove_row(row as u32);
        }
        scope.meta.swap_remove(row);
        scope.scales.swap_remove(row);
        scope.expires.swap_remove(row);
        if row != last {
            let (head, tail) = scope.codes.split_at_mut(last * dim);
            head[row * dim..(row + 1) * dim].copy_from_slice(&tail[..dim]);
            let moved = scope.meta[row].key;
            self.at.insert(moved, (scope_name.clone(), row));
        }
        scope.codes.truncate(last * dim);
        if scope.meta.is_empty() {
            self.scopes.remove(&scope_name);
        }
        true
    }

    /// Stores an indexed scope's rows in list order, so a search reads each
    /// probed list as one run of memory (at 1,000,000 rows, a list's rows
    /// scattered over the scope cost a cache and TLB miss each). Rows added
    /// later go to the end until the next ordering. Returns the rows put in order
    /// (0 when the scope has no index).
    fn order_rows(&mut self, name: &Arc<str>) -> usize {
        let dim = self.dim;
        let Some(s) = self.scopes.get_mut(name) else { return 0 };
        let Some(ivf) = &mut s.ivf else { return 0 };
        let order = ivf.rows_by_list();
        if order.len() != s.meta.len() {
            return 0;
        }
        ivf.renumber(&order);
        s.permute(&order, dim);
        // Where each key lives: walk the whole map when the scope is a big part
        // of it, else look its keys up.
        if s.meta.len() * 8 >= self.at.len() {
            let mut new_row = vec![0u32; order.len()];
            for (new, &old) in order.iter().enumerate() {
                new_row[old as usize] = new as u32;
            }
            for (scope, row) in self.at.values_mut() {
                if **scope == **name {
                    *row = new_row[*row] as usize;
                }
            }
        } else {
            for (row, m) in s.meta.iter().enumerate() {
                if let Some(at) = self.at.get_mut(&m.key) {
                    at.1 = row;
                }
            }
        }
        order.len()
    }

    fn append(&self, buf: &[u8]) -> Result<()> {
        let mut f = self.log.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(buf).map_err(|e| BackendError::unavailable("vectors", e))
    }
}

/// When a scope gets an IVF index, and how a search uses it.
#[derive(Clone, Copy, Debug)]
pub struct IvfParams {
    /// Scopes with fewer points are scanned exactly (about 1 ms at 16k points).
    pub min_rows: usize,
    /// Lists a search scans.
    pub nprobe: usize,
    /// A scope is retrained when it has grown this many times since.
    pub retrain_growth: usize,
}

impl Default for IvfParams {
    fn default() -> Self {
        Self {
            min_rows: 16_384,
            nprobe: 4,
            retrain_growth: 2,
        }
    }
}

type Shared = Arc<RwLock<BTreeMap<String, Collection>>>;

pub struct EmbeddedVectors {
    dir: PathBuf,
    collections: Shared,
    params: IvfParams,
    /// Held while open: one writing process at a time.
    _lock: File,
}

fn io(e: impl std::fmt::Display) -> BackendError {
    BackendError::unavailable("vectors", e)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

impl EmbeddedVectors {
    /// Opens (or creates) the vector store in `dir`, replaying every collection log.
    /// One process at a time: a second one gets an error naming the lock.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(dir, IvfParams::default())
    }

    /// [`EmbeddedVectors::open`] with other IVF settings (tests, benchmarks).
    pub fn open_with(dir: &Path, params: IvfParams) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("vectors.lock"))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "the embedded vector store in {} is in use by another recache process (a running gateway owns it; \
                 queue vector work with `recache warmer rebuild --scope vectors` and the gateway's workers run it)",
                dir.display()
            );
        }
        let mut collections = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("vlog") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            let (dim, records, valid) = read_log(&path)?;
            let file = OpenOptions::new().write(true).open(&path)?;
            if file.metadata()?.len() > valid {
                tracing::warn!(collection = %name, "vector log had a torn tail; cut it");
                file.set_len(valid)?;
            }
            let mut c = Collection {
                dim,
                scopes: HashMap::new(),
                at: BTreeMap::new(),
                log: Mutex::new(OpenOptions::new().append(true).open(&path)?),
                dead: 0,
            };
            let total = records.len() as u64;
            for r in records {
                match r {
                    Record::Upsert(p) => c.insert(p),
                    Record::Delete(k) => {
                        c.remove(k);
                    }
                }
            }
            // The IVF indexes saved at the last flush, if the log has not changed since.
            let dim = c.dim;
            if let Some(saved) = vectors_ivf_file::load(&vectors_ivf_file::path_for(&path), valid, dim) {
                let mut restored = 0usize;
                for sv in saved {
                    let Some(scope) = c.scopes.get_mut(sv.scope.as_str()) else {
                        continue;
                    };
                    let rows = scope.meta.len();
                    let mut ivf = Ivf::new(dim, sv.centroids, rows, sv.trained_rows as usize);
                    for (row, m) in scope.meta.iter().enumerate() {
                        if let Some(&list) = sv.lists.get(&m.key) {
                            ivf.assign(row as u32, list);
                        }
                    }
                    scope.ivf = Some(ivf);
                    let name: Arc<str> = Arc::from(sv.scope.as_str());
                    c.order_rows(&name);
                    restored += 1;
                }
                tracing::info!(collection = %name, scopes = restored, "vector IVF indexes restored from the last flush");
            }
            let live = c.at.len() as u64;
            if total > 1024 && total > 2 * live {
                Self::compact(&path, &mut c)?;
            }
            c.dead = 0;
            collections.insert(name, c);
        }
        let collections: Shared = Arc::new(RwLock::new(collections));
        let weak = Arc::downgrade(&collections);
        std::thread::Builder::new()
            .name("recache-vectors-ivf".into())
            .spawn(move || maintain(weak, params))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            collections,
            params,
            _lock: lock,
        })
    }

    /// Scopes with an IVF index, and rows still waiting for a list or a
    /// (re)training still due (tests, benchmarks).
    pub fn ivf_status(&self) -> (usize, usize) {
        let due = needs_training(&self.collections, self.params).is_some();
        let g = read(&self.collections);
        let mut out = (0, usize::from(due));
        for s in g.values().flat_map(|c| c.scopes.values()) {
            if let Some(ivf) = &s.ivf {
                out.0 += 1;
                out.1 += ivf.unassigned().len();
            }
        }
        out
    }

    /// Checks the bookkeeping (tests): every key's row holds that key, every
    /// row is some key's, and every IVF index covers its scope's rows.
    #[doc(hidden)]
    pub fn consistent(&self) -> bool {
        let g = read(&self.collections);
        g.values().all(|c| {
            let rows: usize = c.scopes.values().map(|s| s.meta.len()).sum();
            rows == c.at.len()
                && c.at.iter().all(|(k, (scope, row))| {
                    c.scopes
                        .get(scope)
                        .and_then(|s| s.meta.get(*row))
                        .is_some_and(|m| m.key == *k)
                })
                && c.scopes.values().all(|s| {
                    s.codes.len() == s.meta.len() * c.dim
                        && s.scales.len() == s.meta.len()
                        && s.expires.len() == s.meta.len()
                        && s.meta.iter().zip(&s.expires).all(|(m, e)| m.expires_at_ms == *e)
                        && s.ivf
                            .as_ref()
                            .is_none_or(|i| i.rows() == s.meta.len() && i.consistent())
                })
        })
    }

    /// Inspects a store without opening it (a running gateway owns it):
    /// each collection's name, dimension and log size.
    pub fn probe(dir: &Path) -> std::io::Result<Vec<(String, usize, u64)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("vlog") {
                continue;
            }
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let mut head = [0u8; 12];
            File::open(&path)?.read_exact(&mut head)?;
            if &head[..8] != MAGIC {
                return Err(std::io::Error::other(format!(
                    "{} is not a recache vector log",
                    path.display()
                )));
            }
            let dim = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) as usize;
            out.push((name, dim, std::fs::metadata(&path)?.len()));
        }
        out.sort();
        Ok(out)
    }

    /// Rewrites a collection log with only its live points.
    fn compact(path: &Path, c: &mut Collection) -> std::io::Result<()> {
        let tmp = path.with_extension("vlog.tmp");
        let mut w = BufWriter::new(new_log(&tmp, c.dim)?);
        let mut buf = Vec::new();
        for (scope_name, scope) in &c.scopes {
            for i in 0..scope.meta.len() {
                buf.clear();
                if let Some(p) = c.point(scope_name, scope, i) {
                    encode_upsert(&mut buf, &p);
                }
                w.write_all(&buf)?;
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        *c.log.lock().unwrap_or_else(|p| p.into_inner()) = OpenOptions::new().append(true).open(path)?;
        Ok(())
    }

    fn path(&self, collection: &str) -> PathBuf {
        self.dir.join(format!("{collection}.vlog"))
    }
}

fn missing(collection: &str) -> BackendError {
    BackendError::Rejected {
        backend: "vectors",
        detail: format!("collection '{collection}' does not exist"),
    }
}

impl Vectors for EmbeddedVectors {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            let cols = read(&self.collections);
            let points: u64 = cols.values().map(|c| c.at.len() as u64).sum();
            Ok(CheckInfo {
                version: None,
                entries: Some(points),
                warnings: Vec::new(),
            })
        })
    }

    fn ensure_collection<'a>(&'a self, collection: &'a str, dimension: usize) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if !valid_name(collection) {
                return Err(BackendError::Rejected {
                    backend: "vectors",
                    detail: format!("'{collection}' is not a valid collection name (letters, digits, - _ .)"),
                });
            }
            if dimension == 0 || dimension > 65_536 {
                return Err(BackendError::Rejected {
                    backend: "vectors",
                    detail: format!("dimension {dimension} is out of range"),
                });
            }
            let mut cols = write(&self.collections);
            if let Some(c) = cols.get(collection) {
                if c.dim != dimension {
                    return Err(BackendError::Rejected {
                        backend: "vectors",
                        detail: format!(
                            "collection '{collection}' holds {}-dimensional vectors, not {dimension}",
                            c.dim
                        ),
                    });
                }
                return Ok(());
            }
            let path = self.path(collection);
            new_log(&path, dimension).map_err(io)?;
            let log = OpenOptions::new().append(true).open(&path).map_err(io)?;
            cols.insert(
                collection.to_string(),
                Collection {
                    dim: dimension,
                    scopes: HashMap::new(),
                    at: BTreeMap::new(),
                    log: Mutex::new(log),
                    dead: 0,
                },
            );
            Ok(())
        })
    }

    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionInfo>>> {
        Box::pin(async move {
            let cols = read(&self.collections);
            Ok(cols
                .iter()
                .map(|(name, c)| CollectionInfo {
                    name: name.clone(),
                    dimension: c.dim,
                    points: c.at.len() as u64,
                })
                .collect())
        })
    }

    fn upsert<'a>(&'a self, collection: &'a str, points: Vec<VectorPoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut cols = write(&self.collections);
            let c = cols.get_mut(collection).ok_or_else(|| missing(collection))?;
            let mut buf = Vec::new();
            let mut ready = Vec::with_capacity(points.len());
            for p in points {
                if p.vector.len() != c.dim {
                    return Err(BackendError::Rejected {
                        backend: "vectors",
                        detail: format!(
                            "a {}-dimensional vector does not fit collection '{collection}' ({} dimensions)",
                            p.vector.len(),
                            c.dim
                        ),
                    });
                }
                let p = VectorPoint {
                    vector: normalised(p.vector),
                    ..p
                };
                encode_upsert(&mut buf, &p);
                ready.push(p);
            }
            // Log first: a point that is searchable is also durable.
            c.append(&buf)?;
            for p in ready {
                c.insert(p);
            }
            Ok(())
        })
    }

    fn search<'a>(
        &'a self,
        collection: &'a str,
        scope: &'a str,
        vector: Vec<f32>,
        k: usize,
    ) -> BoxFuture<'a, Result<Vec<VectorMatch>>> {
        Box::pin(async move {
            let cols = read(&self.collections);
            let c = cols.get(collection).ok_or_else(|| missing(collection))?;
            if vector.len() != c.dim {
                return Err(BackendError::Rejected {
                    backend: "vectors",
                    detail: format!("query has {} dimensions, collection {}", vector.len(), c.dim),
                });
            }
            let Some(s) = c.scopes.get(scope) else {
                return Ok(Vec::new());
            };
            let q = normalised(vector);
            let mut q8 = Vec::with_capacity(c.dim);
            let q_scale = quantise_into(&q, &mut q8);
            let now = now_ms();
            let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
            let mut consider = |i: usize| {
                if s.expires[i] <= now {
                    return;
                }
                let score = q_scale * s.scales[i] * dot_q8(&q8, &s.codes[i * c.dim..(i + 1) * c.dim]) as f32;
                if best.len() < k || score > best[best.len() - 1].0 {
                    let at = best.partition_point(|(x, _)| *x >= score);
                    best.insert(at, (score, i));
                    best.truncate(k);
                }
            };
            match &s.ivf {
                Some(ivf) => {
                    // A list's rows lie anywhere in the scope: fetch the next ones'
                    // memory while this one is scored, or each row costs a cache miss.
                    let rows: Vec<u32> = ivf.probe(&q, self.params.nprobe).collect();
                    for (j, &r) in rows.iter().enumerate() {
                        if let Some(&next) = rows.get(j + 6) {
                            let n = next as usize;
                            prefetch(&s.codes[n * c.dim..(n + 1) * c.dim]);
                            prefetch(std::slice::from_ref(&s.expires[n]));
                            prefetch(std::slice::from_ref(&s.scales[n]));
                        }
                        consider(r as usize);
                    }
                }
                None => (0..s.meta.len()).for_each(consider),
            }
            Ok(best
                .into_iter()
                .map(|(score, i)| VectorMatch {
                    key: s.meta[i].key,
                    text: s.meta[i].text.clone(),
                    expires_at_ms: s.meta[i].expires_at_ms,
                    score,
                })
                .collect())
        })
    }

    fn delete(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut cols = write(&self.collections);
            let mut n = 0;
            for c in cols.values_mut() {
                let mut buf = Vec::new();
                for k in &keys {
                    if c.at.contains_key(k) {
                        encode_delete(&mut buf, *k);
                    }
                }
                if buf.is_empty() {
                    continue;
                }
                c.append(&buf)?;
                for k in &keys {
                    if c.remove(*k) {
                        n += 1;
                    }
                }
            }
            Ok(n)
        })
    }

    fn count<'a>(&'a self, collection: Option<&'a str>) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let cols = read(&self.collections);
            match collection {
                Some(name) => Ok(cols.get(name).ok_or_else(|| missing(name))?.at.len() as u64),
                None => Ok(cols.values().map(|c| c.at.len() as u64).sum()),
            }
        })
    }

    fn list<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CacheKey>>> {
        Box::pin(async move {
            let cols = read(&self.collections);
            let c = cols.get(collection).ok_or_else(|| missing(collection))?;
            Ok(c.keys_after(after).take(limit).map(|(k, _)| *k).collect())
        })
    }

    fn points<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<VectorPoint>>> {
        Box::pin(async move {
            let cols = read(&self.collections);
            let c = cols.get(collection).ok_or_else(|| missing(collection))?;
            Ok(c.keys_after(after)
                .take(limit)
                .filter_map(|(_, (scope_name, row))| c.point(scope_name, c.scopes.get(scope_name)?, *row))
                .collect())
        })
    }

    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let expired: Vec<CacheKey> = {
                let cols = read(&self.collections);
                cols.values()
                    .flat_map(|c| c.scopes.values())
                    .flat_map(|s| s.meta.iter())
                    .filter(|m| m.expires_at_ms < before_ms)
                    .map(|m| m.key)
                    .collect()
            };
            if expired.is_empty() {
                return Ok(0);
            }
            self.delete(expired).await
        })
    }

    /// Syncs every log, and saves each collection's IVF indexes beside it
    /// (see `vectors_ivf_file.rs`) so a restart does not train them again.
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut to_save = Vec::new();
            {
                let cols = read(&self.collections);
                for (name, c) in cols.iter() {
                    let log = c.log.lock().unwrap_or_else(|p| p.into_inner());
                    log.sync_data().map_err(io)?;
                    let log_len = log.metadata().map_err(io)?.len();
                    let scopes: Vec<vectors_ivf_file::SavedIvf> = c
                        .scopes
                        .iter()
                        .filter_map(|(scope, s)| {
                            let ivf = s.ivf.as_ref()?;
                            let lists = s
                                .meta
                                .iter()
                                .enumerate()
                                .filter_map(|(row, m)| Some((m.key, ivf.list_of_row(row as u32)?)))
                                .collect();
                            Some(vectors_ivf_file::SavedIvf {
                                scope: scope.to_string(),
                                trained_rows: ivf.trained_rows as u64,
                                centroids: ivf.centroids.clone(),
                                lists,
                            })
                        })
                        .collect();
                    if !scopes.is_empty() {
                        to_save.push((self.path(name), log_len, c.dim, scopes));
                    }
                }
            }
            for (log, log_len, dim, scopes) in to_save {
                let path = vectors_ivf_file::path_for(&log);
                tokio::task::spawn_blocking(move || vectors_ivf_file::save(&path, log_len, dim, &scopes))
                    .await
                    .map_err(io)?
                    .map_err(io)?;
            }
            Ok(())
        })
    }
}
