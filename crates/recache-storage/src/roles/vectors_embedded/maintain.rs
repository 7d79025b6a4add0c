//! The maintainer thread, off the request path: trains the IVF of scopes that
//! outgrew an exact scan, orders their rows by list, and assigns new rows in
//! small batches so a request never waits long for the lock.

use super::*;

/// The maintainer thread: trains the IVF of scopes that outgrew an exact scan
/// (or their last training), and assigns rows left unassigned, in small
/// batches so a request never waits long for the lock. Ends with the store.
pub(super) fn maintain(cols: std::sync::Weak<RwLock<BTreeMap<String, Collection>>>, params: IvfParams) {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let Some(cols) = cols.upgrade() else { return };
        if let Some((col, scope)) = needs_training(&cols, params) {
            train_scope(&cols, &col, &scope);
            continue;
        }
        assign_some(&cols);
        if let Some((col, scope)) = needs_ordering(&cols) {
            order_scope(&cols, &col, &scope);
        }
    }
}

pub(super) fn read(cols: &Shared) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Collection>> {
    cols.read().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn write(cols: &Shared) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Collection>> {
    cols.write().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn needs_training(cols: &Shared, params: IvfParams) -> Option<(String, Arc<str>)> {
    let g = read(cols);
    for (name, c) in g.iter() {
        for (scope_name, s) in &c.scopes {
            let rows = s.meta.len();
            let due = match &s.ivf {
                None => rows >= params.min_rows,
                Some(ivf) => rows >= ivf.trained_rows.saturating_mul(params.retrain_growth.max(2)),
            };
            if due {
                return Some((name.clone(), scope_name.clone()));
            }
        }
    }
    None
}

/// Trains off the lock on a sample, assigns every row off the lock in chunks,
/// then installs the index (rows that moved meanwhile stay unassigned until
/// [`assign_some`] gets them).
pub(super) fn train_scope(cols: &Shared, col: &str, scope: &Arc<str>) {
    let started = std::time::Instant::now();
    let (dim, rows, sample) = {
        let g = read(cols);
        let Some(c) = g.get(col) else { return };
        let Some(s) = c.scopes.get(scope) else { return };
        let rows = s.meta.len();
        if rows == 0 {
            return;
        }
        let nlist = vectors_ivf::nlist_for(rows);
        let m = rows.min(nlist * 32);
        let mut sample = Vec::with_capacity(m * c.dim);
        // A pseudo-random sample (rows may have been written in any periodic order).
        let mut x = 0x2545_f491_4f6c_dd1du64 ^ rows as u64;
        for _ in 0..m {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % rows as u64) as usize;
            sample.extend(
                s.codes[i * c.dim..(i + 1) * c.dim]
                    .iter()
                    .map(|x| *x as f32 * s.scales[i]),
            );
        }
        (c.dim, rows, sample)
    };
    let centroids = vectors_ivf::train(&sample, dim, vectors_ivf::nlist_for(rows), 8);
    drop(sample);
    let probe = Ivf::new(dim, centroids.clone(), 0, rows);
    let mut assigned: Vec<(u32, CacheKey, u32)> = Vec::with_capacity(rows);
    let mut start = 0usize;
    loop {
        let chunk: Vec<(u32, CacheKey, Vec<i8>)> = {
            let g = read(cols);
            let Some(s) = g.get(col).and_then(|c| c.scopes.get(scope)) else {
                return;
            };
            let end = (start + 8192).min(s.meta.len());
            (start..end)
                .map(|i| (i as u32, s.meta[i].key, s.codes[i * dim..(i + 1) * dim].to_vec()))
                .collect()
        };
        if chunk.is_empty() {
            break;
        }
        start += chunk.len();
        for (row, key, codes) in chunk {
            assigned.push((row, key, probe.nearest(|c| dot_i8(c, &codes))));
        }
    }
    let mut g = write(cols);
    let Some(c) = g.get_mut(col) else { return };
    let Some(s) = c.scopes.get_mut(scope) else { return };
    let mut ivf = Ivf::new(dim, centroids, s.meta.len(), rows);
    let mut placed = 0usize;
    for (row, key, list) in assigned {
        if (row as usize) < s.meta.len() && s.meta[row as usize].key == key {
            ivf.assign(row, list);
            placed += 1;
        }
    }
    let nlist = ivf.nlist();
    s.ivf = Some(ivf);
    let ordering = std::time::Instant::now();
    c.order_rows(scope);
    drop(g);
    tracing::info!(
        collection = col,
        rows,
        lists = nlist,
        placed,
        ms = started.elapsed().as_millis() as u64,
        ordered_ms = ordering.elapsed().as_millis() as u64,
        "vector scope indexed (IVF)"
    );
}

/// An indexed scope whose rows added since its last ordering are a quarter of
/// it, with none waiting for a list: time to store its rows in list order again.
pub(super) fn needs_ordering(cols: &Shared) -> Option<(String, Arc<str>)> {
    let g = read(cols);
    g.iter().find_map(|(name, c)| {
        c.scopes
            .iter()
            .find(|(_, s)| {
                s.ivf
                    .as_ref()
                    .is_some_and(|i| i.unassigned().is_empty() && s.meta.len() > i.ordered_rows + i.ordered_rows / 4)
            })
            .map(|(scope, _)| (name.clone(), scope.clone()))
    })
}

/// Stores one scope's rows in list order again. It holds the write lock:
/// 0.2 s at 1,000,000 rows (`RUST_LOG=info recache bench vectors --points
/// 1000000` logs `ordered_ms`), once per quarter of growth.
pub(super) fn order_scope(cols: &Shared, col: &str, scope: &Arc<str>) {
    let started = std::time::Instant::now();
    let mut g = write(cols);
    let Some(c) = g.get_mut(col) else { return };
    let rows = c.order_rows(scope);
    drop(g);
    tracing::debug!(
        collection = col,
        rows,
        ms = started.elapsed().as_millis() as u64,
        "vector scope stored in list order"
    );
}

/// Assigns up to 64 unassigned rows of one scope (a few ms under the lock).
/// The write lock is taken only when a scope has rows waiting, so an idle
/// store never stalls searches.
pub(super) fn assign_some(cols: &Shared) {
    let waiting = read(cols).iter().find_map(|(name, c)| {
        c.scopes
            .iter()
            .find(|(_, s)| s.ivf.as_ref().is_some_and(|i| !i.unassigned().is_empty()))
            .map(|(scope, _)| (name.clone(), scope.clone()))
    });
    let Some((col, scope)) = waiting else { return };
    let mut g = write(cols);
    let Some(c) = g.get_mut(&col) else { return };
    let dim = c.dim;
    let Some(s) = c.scopes.get_mut(&scope) else { return };
    let Some(ivf) = &mut s.ivf else { return };
    let rows: Vec<u32> = ivf.unassigned().iter().take(64).copied().collect();
    for r in rows {
        let codes = &s.codes[r as usize * dim..(r as usize + 1) * dim];
        let list = ivf.nearest(|c| dot_i8(c, codes));
        ivf.assign(r, list);
    }
}
