//! One conformance suite per role: plain async scenarios over `&dyn Role`.
//! Every implementation's tests call the same list (see
//! `tests/conformance.rs`), so an engine either behaves like the others or
//! fails here. Scenarios panic with a message naming what broke.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::{
    now_ms, ArtifactId, ArtifactSwap, Artifacts, AuditEvent, EntryRecord, HitUpdate, Index, IndexEntry, Metadata,
    VectorPoint, Vectors,
};
use crate::key::{cache_key, CacheKey};

/// A key unique to this run and label.
pub fn test_key(label: &str) -> CacheKey {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| format!("{}-{}", std::process::id(), now_ms()));
    cache_key("conformance", run, "chat", label)
}

fn entry(artifact: u8, ttl_ms: i64) -> IndexEntry {
    let now = now_ms();
    IndexEntry {
        artifact: ArtifactId([artifact; 32]),
        size: 100 + artifact as u64,
        created_at_ms: now,
        expires_at_ms: now + ttl_ms,
    }
}

mod artifacts;
mod index;
mod metadata;
mod vectors;

pub use artifacts::*;
pub use index::*;
pub use metadata::*;
pub use vectors::*;
