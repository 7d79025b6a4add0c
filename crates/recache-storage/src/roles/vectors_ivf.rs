//! An inverted-file (IVF) index over one scope of the embedded vector store,
//! for scopes too big to scan (see `vectors_embedded.rs`).
//!
//! Spherical k-means centroids split the scope into `nlist` lists; a search
//! scores the centroids, scans the rows of the `nprobe` best lists, plus the
//! rows not yet assigned to any list (new rows wait there until the store's
//! maintainer thread assigns them in small batches). Rows are the scope's row
//! numbers, which move when a row is removed (the last row takes its place):
//! [`Ivf::remove_row`] follows that move in O(1).

/// "Not in a list yet": the extra list at index `nlist`.
pub struct Ivf {
    pub dim: usize,
    /// `nlist` unit vectors, row-major.
    pub centroids: Vec<f32>,
    /// `nlist + 1` lists of rows; the last one holds the unassigned rows.
    lists: Vec<Vec<u32>>,
    /// For each row: its list and its position there.
    list_of: Vec<u32>,
    pos: Vec<u32>,
    /// Rows in the scope when the centroids were trained.
    pub trained_rows: usize,
    /// Rows in the scope when its rows were last put in list order
    /// ([`Ivf::rows_by_list`], [`Ivf::renumber`]); 0 before that.
    pub ordered_rows: usize,
}

impl Ivf {
    pub(crate) fn nlist(&self) -> usize {
        self.lists.len() - 1
    }

    fn unassigned_list(&self) -> u32 {
        self.nlist() as u32
    }

    /// An index with these centroids and `rows` rows, none assigned yet.
    pub fn new(dim: usize, centroids: Vec<f32>, rows: usize, trained_rows: usize) -> Self {
        let nlist = centroids.len() / dim;
        let mut lists = vec![Vec::new(); nlist + 1];
        lists[nlist] = (0..rows as u32).collect();
        Ivf {
            dim,
            centroids,
            lists,
            list_of: vec![nlist as u32; rows],
            pos: (0..rows as u32).collect(),
            trained_rows,
            ordered_rows: 0,
        }
    }

    pub(crate) fn unassigned(&self) -> &[u32] {
        &self.lists[self.nlist()]
    }

    pub fn rows(&self) -> usize {
        self.list_of.len()
    }

    /// The list of `row`, or `None` while it waits for one.
    pub(crate) fn list_of_row(&self, row: u32) -> Option<u32> {
        self.list_of
            .get(row as usize)
            .copied()
            .filter(|&l| l != self.unassigned_list())
    }

    /// The nearest centroid of a vector (f32, or i8 codes via `dot`).
    pub(crate) fn nearest(&self, score: impl Fn(&[f32]) -> f32) -> u32 {
        let mut best = (f32::MIN, 0u32);
        for (i, c) in self.centroids.chunks_exact(self.dim).enumerate() {
            let s = score(c);
            if s > best.0 {
                best = (s, i as u32);
            }
        }
        best.1
    }

    /// A new last row, in `list` (or unassigned).
    pub(crate) fn push_row(&mut self, list: Option<u32>) {
        let row = self.list_of.len() as u32;
        let l = list.unwrap_or(self.unassigned_list());
        self.list_of.push(l);
        self.pos.push(self.lists[l as usize].len() as u32);
        self.lists[l as usize].push(row);
    }

    fn take_out(&mut self, row: u32) {
        let l = self.list_of[row as usize] as usize;
        let p = self.pos[row as usize] as usize;
        let list = &mut self.lists[l];
        list.swap_remove(p);
        if p < list.len() {
            let moved = list[p];
            self.pos[moved as usize] = p as u32;
        }
    }

    /// Moves a row into `list`.
    pub fn assign(&mut self, row: u32, list: u32) {
        if self.list_of[row as usize] == list {
            return;
        }
        self.take_out(row);
        self.list_of[row as usize] = list;
        self.pos[row as usize] = self.lists[list as usize].len() as u32;
        self.lists[list as usize].push(row);
    }

    /// Row `row` is removed and the last row moves into its place.
    pub(crate) fn remove_row(&mut self, row: u32) {
        let last = self.list_of.len() as u32 - 1;
        self.take_out(row);
        if row != last {
            let (l, p) = (self.list_of[last as usize], self.pos[last as usize]);
            self.lists[l as usize][p as usize] = row;
            self.list_of[row as usize] = l;
            self.pos[row as usize] = p;
        }
        self.list_of.pop();
        self.pos.pop();
    }

    /// Every row in list order: the rows of list 0, of list 1, … then the
    /// unassigned ones. A scope whose rows are stored in this order reads each
    /// probed list as one run of memory instead of rows scattered over it.
    pub(crate) fn rows_by_list(&self) -> Vec<u32> {
        self.lists.iter().flatten().copied().collect()
    }

    /// Follows the scope's rows being put in `order` (new row `i` was row
    /// `order[i]`, a permutation of all rows): every row keeps its list, and
    /// when `order` is [`Ivf::rows_by_list`] each list becomes one run of
    /// consecutive rows.
    pub(crate) fn renumber(&mut self, order: &[u32]) {
        debug_assert_eq!(order.len(), self.list_of.len());
        let mut lists = vec![Vec::new(); self.lists.len()];
        let mut list_of = Vec::with_capacity(order.len());
        let mut pos = Vec::with_capacity(order.len());
        for (new, &old) in order.iter().enumerate() {
            let l = self.list_of[old as usize];
            list_of.push(l);
            pos.push(lists[l as usize].len() as u32);
            lists[l as usize].push(new as u32);
        }
        self.lists = lists;
        self.list_of = list_of;
        self.pos = pos;
        self.ordered_rows = order.len();
    }

    /// The rows a search scans: the `nprobe` lists whose centroids score best
    /// against the (unit) query, and every unassigned row.
    pub fn probe(&self, query: &[f32], nprobe: usize) -> impl Iterator<Item = u32> + '_ {
        let mut scored: Vec<(f32, usize)> = self
            .centroids
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(i, c)| (c.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        let n = nprobe.min(scored.len());
        if n > 0 && n < scored.len() {
            scored.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0));
        }
        let mut chosen: Vec<usize> = scored[..n].iter().map(|(_, i)| *i).collect();
        chosen.push(self.nlist());
        chosen.into_iter().flat_map(move |l| self.lists[l].iter().copied())
    }

    /// Checks the bookkeeping (tests).
    pub fn consistent(&self) -> bool {
        let mut seen = vec![false; self.list_of.len()];
        for (l, list) in self.lists.iter().enumerate() {
            for (p, &r) in list.iter().enumerate() {
                if self.list_of[r as usize] as usize != l || self.pos[r as usize] as usize != p || seen[r as usize] {
                    return false;
                }
                seen[r as usize] = true;
            }
        }
        seen.into_iter().all(|s| s)
    }
}

/// How many lists for a scope of `rows` rows.
pub(crate) fn nlist_for(rows: usize) -> usize {
    ((rows as f64).sqrt() as usize).clamp(16, 1024)
}

/// Spherical k-means on `sample` (row-major unit vectors): `k` unit centroids.
pub fn train(sample: &[f32], dim: usize, k: usize, iters: usize) -> Vec<f32> {
    let m = sample.len() / dim;
    let k = k.min(m).max(1);
    // Initial centroids: k distinct sample rows picked pseudo-randomly (deterministic),
    // so a sample with any periodic structure still seeds every region.
    let mut picked = std::collections::HashSet::with_capacity(k);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while picked.len() < k {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        picked.insert((x % m as u64) as usize);
    }
    let mut order: Vec<usize> = picked.into_iter().collect();
    order.sort_unstable();
    let mut centroids: Vec<f32> = order
        .iter()
        .flat_map(|&i| sample[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let mut sums = vec![0f32; k * dim];
    let mut counts = vec![0u32; k];
    let mut owner = vec![0usize; m];
    for _ in 0..iters {
        sums.iter_mut().for_each(|x| *x = 0.0);
        counts.iter_mut().for_each(|x| *x = 0);
        for (j, row) in sample.chunks_exact(dim).enumerate() {
            let mut best = (f32::MIN, 0usize);
            for (i, c) in centroids.chunks_exact(dim).enumerate() {
                let s: f32 = dot(row, c);
                if s > best.0 {
                    best = (s, i);
                }
            }
            owner[j] = best.1;
            counts[best.1] += 1;
            for (a, b) in sums[best.1 * dim..(best.1 + 1) * dim].iter_mut().zip(row) {
                *a += b;
            }
        }
        for i in 0..k {
            if counts[i] == 0 {
                continue;
            }
            let s = &sums[i * dim..(i + 1) * dim];
            let n = s.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            for (c, v) in centroids[i * dim..(i + 1) * dim].iter_mut().zip(s) {
                *c = v / n;
            }
        }
        // Balance: the smallest lists take over a point of the biggest ones, so one
        // centroid never ends up holding many distant groups (and a search scanning
        // a few lists never meets a giant one).
        let avg = (m / k).max(1) as u32;
        let mut by_size: Vec<usize> = (0..k).collect();
        by_size.sort_by_key(|&c| counts[c]);
        for step in 0..k / 8 {
            let (small, big) = (by_size[step], by_size[k - 1 - step]);
            if counts[big] < 4 * avg || counts[small] * 4 > avg || small == big {
                break;
            }
            if let Some(j) = (0..m).filter(|&j| owner[j] == big).nth(counts[big] as usize / 2) {
                centroids[small * dim..(small + 1) * dim].copy_from_slice(&sample[j * dim..(j + 1) * dim]);
            }
        }
    }
    centroids
}

/// f32 dot product in eight lanes (vectorised by the compiler).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_follows_moves_and_removals() {
        let dim = 2;
        let mut ivf = Ivf::new(dim, vec![1.0, 0.0, 0.0, 1.0], 5, 5);
        assert_eq!(ivf.unassigned().len(), 5);
        ivf.assign(0, 0);
        ivf.assign(3, 1);
        ivf.assign(4, 0);
        assert!(ivf.consistent());
        ivf.remove_row(0); // row 4 moves to 0
        assert!(ivf.consistent());
        assert_eq!(ivf.rows(), 4);
        ivf.push_row(Some(1));
        ivf.remove_row(4); // the last row itself
        ivf.remove_row(1);
        assert!(ivf.consistent());
        let all: Vec<u32> = ivf.probe(&[1.0, 0.0], 2).collect();
        assert_eq!(all.len(), ivf.rows());
    }

    #[test]
    fn renumbering_in_list_order_makes_each_list_one_run() {
        let mut ivf = Ivf::new(2, vec![1.0, 0.0, 0.0, 1.0], 7, 7);
        for (row, list) in [(0, 1), (1, 0), (2, 1), (4, 0), (5, 1), (6, 0)] {
            ivf.assign(row, list);
        }
        let before: Vec<Option<u32>> = (0..7).map(|r| ivf.list_of_row(r)).collect();
        let order = ivf.rows_by_list();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..7).collect::<Vec<u32>>(), "a permutation of every row");
        ivf.renumber(&order);
        assert!(ivf.consistent());
        assert_eq!(ivf.ordered_rows, 7);
        for (new, &old) in order.iter().enumerate() {
            assert_eq!(
                ivf.list_of_row(new as u32),
                before[old as usize],
                "row {old} kept its list"
            );
        }
        // Lists 0 and 1 are the runs 0..3 and 3..6; the unassigned row is last.
        let first: Vec<u32> = ivf.probe(&[1.0, 0.0], 1).collect();
        assert_eq!(first, vec![0, 1, 2, 6]);
        let second: Vec<u32> = ivf.probe(&[0.0, 1.0], 1).collect();
        assert_eq!(second, vec![3, 4, 5, 6]);
    }

    #[test]
    fn kmeans_finds_separated_clusters() {
        let dim = 4;
        let mut sample = Vec::new();
        for i in 0..200 {
            let axis = i % 4;
            let mut v = vec![0.05f32; dim];
            v[axis] = 1.0;
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            sample.extend(v.iter().map(|x| x / n));
        }
        let c = train(&sample, dim, 4, 5);
        let ivf = Ivf::new(dim, c, 0, 0);
        let lists: std::collections::HashSet<u32> = (0..4)
            .map(|axis| {
                let mut q = vec![0.0f32; dim];
                q[axis] = 1.0;
                ivf.nearest(|c| dot(c, &q))
            })
            .collect();
        assert_eq!(lists.len(), 4, "each cluster has its own list");
    }
}
