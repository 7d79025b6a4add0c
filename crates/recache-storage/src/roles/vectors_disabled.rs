//! The vectors role when semantic matching is off: reports itself as disabled
//! and refuses every call.

use super::{BackendError, BoxFuture, CheckInfo, CollectionInfo, Result, VectorMatch, VectorPoint, Vectors};
use crate::key::CacheKey;

pub struct DisabledVectors;

fn off<T>() -> Result<T> {
    Err(BackendError::NotSupported {
        backend: "vectors",
        what: "semantic matching is disabled",
    })
}

impl Vectors for DisabledVectors {
    fn engine(&self) -> &'static str {
        "disabled"
    }
    fn enabled(&self) -> bool {
        false
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async { off() })
    }
    fn ensure_collection<'a>(&'a self, _: &'a str, _: usize) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { off() })
    }
    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionInfo>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn upsert<'a>(&'a self, _: &'a str, _: Vec<VectorPoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { off() })
    }
    fn search<'a>(&'a self, _: &'a str, _: &'a str, _: Vec<f32>, _: usize) -> BoxFuture<'a, Result<Vec<VectorMatch>>> {
        Box::pin(async { off() })
    }
    fn delete(&self, _: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
    fn count<'a>(&'a self, _: Option<&'a str>) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
    fn list<'a>(&'a self, _: &'a str, _: Option<CacheKey>, _: usize) -> BoxFuture<'a, Result<Vec<CacheKey>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn points<'a>(
        &'a self,
        _: &'a str,
        _: Option<CacheKey>,
        _: usize,
    ) -> BoxFuture<'a, Result<Vec<super::VectorPoint>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn purge_expired(&self, _: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
}
