//! A bounded in-memory tier over any artifact store (a wrapper implementing
//! the same trait). Artifacts are immutable and content-addressed, so a
//! cached copy can never be stale. It fills on read only, after checking the
//! SHA-256, so what it holds is always the verified content; eviction is
//! arbitrary (hash-map order) once the byte budget is exceeded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{ArtifactId, Artifacts, BoxFuture, CheckInfo, Result};

pub struct MemoryTier {
    inner: Arc<dyn Artifacts>,
    state: Mutex<(HashMap<ArtifactId, Bytes>, usize)>,
    budget: usize,
    max_item: usize,
}

impl MemoryTier {
    pub fn new(inner: Arc<dyn Artifacts>, budget_bytes: usize, max_item_bytes: usize) -> Self {
        Self {
            inner,
            state: Mutex::new((HashMap::new(), 0)),
            budget: budget_bytes,
            max_item: max_item_bytes,
        }
    }

    fn cached(&self, id: &ArtifactId) -> Option<Bytes> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.get(id).cloned()
    }

    fn remember(&self, id: ArtifactId, bytes: &Bytes) {
        if bytes.len() > self.max_item || bytes.len() > self.budget || ArtifactId::of(bytes) != id {
            return;
        }
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (map, used) = &mut *guard;
        if let Some(old) = map.insert(id, bytes.clone()) {
            *used -= old.len();
        }
        *used += bytes.len();
        while *used > self.budget {
            let Some(victim) = map.keys().find(|k| **k != id).copied() else {
                break;
            };
            if let Some(b) = map.remove(&victim) {
                *used -= b.len();
            }
        }
    }

    fn forget(&self, id: &ArtifactId) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = guard.0.remove(id) {
            guard.1 -= b.len();
        }
    }

    /// (items, bytes) held in memory.
    pub fn usage(&self) -> (usize, usize) {
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (g.0.len(), g.1)
    }
}

impl Artifacts for MemoryTier {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }

    fn put(&self, id: ArtifactId, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        self.inner.put(id, bytes)
    }

    fn put_many(&self, items: Vec<(ArtifactId, Bytes)>) -> BoxFuture<'_, Result<()>> {
        self.inner.put_many(items)
    }

    fn get(&self, id: ArtifactId) -> BoxFuture<'_, Result<Option<Bytes>>> {
        if let Some(b) = self.cached(&id) {
            return Box::pin(async move { Ok(Some(b)) });
        }
        Box::pin(async move {
            let got = self.inner.get(id).await?;
            if let Some(b) = &got {
                self.remember(id, b);
            }
            Ok(got)
        })
    }

    fn delete(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        self.forget(&id);
        self.inner.delete(id)
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<super::ArtifactInfo>>> {
        self.inner.list()
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        self.inner.check()
    }

    fn reclaim(&self) -> BoxFuture<'_, Result<u64>> {
        self.inner.reclaim()
    }

    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        self.inner.gauges()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::artifacts_object_store::ObjectStoreArtifacts;

    #[tokio::test]
    async fn budget_is_respected_and_only_verified_bytes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Artifacts> = Arc::new(ObjectStoreArtifacts::local(dir.path(), "").unwrap());
        let tier = MemoryTier::new(inner.clone(), 1000, 400);
        let mut ids = Vec::new();
        for i in 0..10 {
            let b = Bytes::from(vec![i as u8; 300]);
            let id = ArtifactId::of(&b);
            tier.put(id, b).await.unwrap();
            assert!(tier.cached(&id).is_none(), "put does not fill the tier");
            tier.get(id).await.unwrap().unwrap();
            ids.push(id);
        }
        let (items, bytes) = tier.usage();
        assert!(bytes <= 1000 && items == 3, "{items} items, {bytes} bytes");
        // A lying inner store (bytes that do not match the id) is never cached.
        let fake = ArtifactId([9; 32]);
        inner.put(fake, Bytes::from_static(b"not matching")).await.unwrap();
        tier.get(fake).await.unwrap();
        assert!(tier.cached(&fake).is_none());
        tier.delete(ids[9]).await.unwrap();
        assert!(tier.cached(&ids[9]).is_none());
        assert_eq!(tier.get(ids[9]).await.unwrap(), None);
    }
}
