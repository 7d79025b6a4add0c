//! Recent embeddings, so a text asked again (or a stored text compared
//! again) is not embedded twice (`Semantic::embed`).

use std::sync::{Arc, Mutex};

/// Embeddings by digest, and the digests in insertion order.
type RecentMap = (
    std::collections::HashMap<u128, Arc<[f32]>>,
    std::collections::VecDeque<u128>,
);

/// A bounded map of recent embeddings (oldest out first).
pub(super) struct RecentVectors {
    inner: Mutex<RecentMap>,
    cap: usize,
}

impl RecentVectors {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Default::default()),
            cap,
        }
    }
    pub(super) fn get(&self, k: u128) -> Option<Vec<f32>> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(&k).map(|v| v.to_vec())
    }
    pub(super) fn put(&self, k: u128, v: Vec<f32>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.insert(k, v.into()).is_none() {
            g.1.push_back(k);
        }
        while g.1.len() > self.cap {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
    }
}
