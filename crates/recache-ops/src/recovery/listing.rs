//! The two walks every recovery pass makes: over the artifact store's
//! listing (which artifacts exist, which ones an entry uses) and over the
//! entry registry in key order, a page at a time.

use super::Recovery;
use recache_core::key::CacheKey;
use recache_storage::roles::{ArtifactId, ArtifactInfo, EntryRecord, Result};

/// The artifact store's listing as a sorted vector with a parallel "used"
/// bitmap: compact at a million artifacts (about 50 bytes each).
pub struct ArtifactListing {
    items: Vec<ArtifactInfo>,
    used: Vec<bool>,
}

impl ArtifactListing {
    pub fn new(mut items: Vec<ArtifactInfo>) -> Self {
        items.sort_unstable_by_key(|a| a.id);
        let used = vec![false; items.len()];
        Self { items, used }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn contains(&self, id: &ArtifactId) -> bool {
        self.find(id).is_some()
    }

    /// Records that an entry uses `id`; false when the store has no such artifact.
    pub(crate) fn mark_used(&mut self, id: &ArtifactId) -> bool {
        match self.find(id) {
            Some(at) => {
                self.used[at] = true;
                true
            }
            None => false,
        }
    }

    /// The artifacts no entry was marked as using.
    pub(crate) fn unused(&self) -> impl Iterator<Item = &ArtifactInfo> {
        self.items.iter().zip(&self.used).filter(|(_, u)| !**u).map(|(a, _)| a)
    }

    fn find(&self, id: &ArtifactId) -> Option<usize> {
        self.items.binary_search_by_key(id, |a| a.id).ok()
    }
}

/// The entry registry in key order, one page per `next` (no request text).
pub struct EntryPages<'a> {
    r: &'a Recovery,
    /// The last key seen; the next page starts after it.
    pub after: Option<CacheKey>,
}

impl<'a> EntryPages<'a> {
    pub fn new(r: &'a Recovery, after: Option<CacheKey>) -> Self {
        Self { r, after }
    }

    /// The next page of at most `limit` entries (the configured page size
    /// when `None`); `None` at the end.
    pub async fn next(&mut self, limit: Option<u32>) -> Result<Option<Vec<EntryRecord>>> {
        let limit = limit.unwrap_or_else(|| self.r.page_size());
        let page = self.r.cache.roles.metadata.entries_page(self.after, limit).await?;
        match page.last() {
            Some(last) => {
                self.after = Some(last.key);
                Ok(Some(page))
            }
            None => Ok(None),
        }
    }
}
