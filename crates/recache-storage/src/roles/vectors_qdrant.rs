//! The vectors role on Qdrant, through `qdrant-client` (gRPC).
//!
//! One collection per embedder fingerprint (cosine distance). A point's id is
//! a UUID made of the first 16 bytes of its cache key (the full key is in the
//! payload); its payload holds `key`, `scope`, `tenant`, `text` and
//! `expires_at_ms`, with keyword indexes on `scope` and `tenant` and an integer
//! index on `expires_at_ms`, so a search filters by scope and expiry inside
//! Qdrant. Deletes and expiry sweeps cover the collections this process has
//! opened and every collection named with its prefix (`recache-` by default; never another
//! application's collections on a shared server).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use qdrant_client::qdrant::{
    value::Kind, vectors_config, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, PointId,
    PointStruct, PointsIdsList, QueryPointsBuilder, Range, ScrollPointsBuilder, UpsertPointsBuilder,
    VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};

use super::{BackendError, BoxFuture, CheckInfo, CollectionInfo, Result, VectorMatch, VectorPoint, Vectors};
use crate::key::CacheKey;
use crate::roles::{normalised, now_ms};

pub struct QdrantVectors {
    client: Qdrant,
    /// Collections recache owns on a shared server start with this (`vectors.collection_prefix`).
    prefix: String,
    /// Collections opened by this process (conformance tests use other names).
    known: Mutex<BTreeSet<String>>,
}

fn err(e: QdrantError) -> BackendError {
    // gRPC codes that say the server is unhealthy or unreachable (the breaker counts
    // them): CANCELLED 1, UNKNOWN 2, DEADLINE_EXCEEDED 4, INTERNAL 13, UNAVAILABLE 14.
    let transport = match &e {
        QdrantError::ResponseError { status } => matches!(status.code() as i32, 1 | 2 | 4 | 13 | 14),
        QdrantError::ResourceExhaustedError { .. } => false,
        _ => true,
    };
    let detail = e.to_string();
    if transport {
        BackendError::Unavailable {
            backend: "vectors",
            detail,
        }
    } else {
        BackendError::Rejected {
            backend: "vectors",
            detail,
        }
    }
}

/// The point id of a cache key: a UUID of its first 16 bytes (order-preserving).
fn point_id(key: &CacheKey) -> PointId {
    let h = key.hex();
    PointId::from(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn payload_str(p: &std::collections::HashMap<String, qdrant_client::qdrant::Value>, k: &str) -> Option<String> {
    match p.get(k)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn payload_int(p: &std::collections::HashMap<String, qdrant_client::qdrant::Value>, k: &str) -> Option<i64> {
    match p.get(k)?.kind.as_ref()? {
        Kind::IntegerValue(i) => Some(*i),
        Kind::DoubleValue(d) => Some(*d as i64),
        _ => None,
    }
}

impl QdrantVectors {
    /// Up to `limit` points of `collection` with keys after `after`, in key
    /// order (points come in id order, and the id is the key's first 16
    /// bytes), with their payload and, if asked, their vectors.
    async fn scroll_after(
        &self,
        collection: &str,
        after: Option<CacheKey>,
        limit: usize,
        with_vectors: bool,
    ) -> Result<Vec<(CacheKey, qdrant_client::qdrant::RetrievedPoint)>> {
        let mut req = ScrollPointsBuilder::new(collection)
            .limit(limit as u32 + 1)
            .with_payload(true)
            .with_vectors(with_vectors);
        if let Some(a) = &after {
            req = req.offset(point_id(a));
        }
        let resp = self.client.scroll(req).await.map_err(err)?;
        Ok(resp
            .result
            .into_iter()
            .filter_map(|p| Some((CacheKey::from_hex(&payload_str(&p.payload, "key")?)?, p)))
            .filter(|(k, _)| after.is_none_or(|a| *k > a))
            .take(limit)
            .collect())
    }

    /// Connects lazily (the first call opens the gRPC channel).
    pub fn new(url: &str, timeout: Duration, prefix: &str) -> anyhow::Result<Self> {
        let client = Qdrant::from_url(url)
            .timeout(timeout)
            .connect_timeout(timeout)
            .skip_compatibility_check()
            .build()?;
        Ok(Self {
            client,
            prefix: prefix.to_string(),
            known: Mutex::new(BTreeSet::new()),
        })
    }

    /// The collections deletes and sweeps cover.
    async fn ours(&self) -> Result<Vec<String>> {
        let listed = self.client.list_collections().await.map_err(err)?;
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(listed
            .collections
            .into_iter()
            .map(|c| c.name)
            .filter(|n| n.starts_with(&self.prefix) || known.contains(n))
            .collect())
    }

    async fn dimension_of(&self, collection: &str) -> Result<Option<(usize, u64)>> {
        if !self.client.collection_exists(collection).await.map_err(err)? {
            return Ok(None);
        }
        let info = self.client.collection_info(collection).await.map_err(err)?;
        let result = info.result.unwrap_or_default();
        let dim = result
            .config
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .and_then(|c| match c {
                vectors_config::Config::Params(p) => Some(p.size as usize),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Some((dim, result.points_count.unwrap_or(0))))
    }

    /// recache's collections with their replication factor and shard count (doctor).
    pub async fn replication(&self) -> Result<Vec<(String, u32, u32)>> {
        let mut out = Vec::new();
        for name in self.ours().await? {
            let info = self.client.collection_info(&name).await.map_err(err)?;
            let params = info.result.unwrap_or_default().config.and_then(|c| c.params);
            out.push((
                name,
                params.as_ref().and_then(|p| p.replication_factor).unwrap_or(1),
                params.as_ref().map(|p| p.shard_number).unwrap_or(1),
            ));
        }
        Ok(out)
    }

    fn remember(&self, collection: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(collection.to_string());
    }
}

impl Vectors for QdrantVectors {
    fn engine(&self) -> &'static str {
        "qdrant"
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            let h = self.client.health_check().await.map_err(err)?;
            let mut points = 0;
            let mut warnings = Vec::new();
            for c in self.ours().await? {
                if let Some((_, n)) = self.dimension_of(&c).await? {
                    points += n;
                }
            }
            if self.ours().await?.is_empty() {
                warnings.push(
                    "no recache collection yet (created with the first vector, or `recache vectors init`)".into(),
                );
            }
            Ok(CheckInfo {
                version: Some(format!("qdrant {}", h.version)),
                entries: Some(points),
                warnings,
            })
        })
    }

    fn ensure_collection<'a>(&'a self, collection: &'a str, dimension: usize) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if dimension == 0 || dimension > 65_536 {
                return Err(BackendError::Rejected {
                    backend: "vectors",
                    detail: format!("dimension {dimension} is out of range"),
                });
            }
            match self.dimension_of(collection).await? {
                Some((d, _)) if d == dimension => {}
                Some((d, _)) => {
                    return Err(BackendError::Rejected {
                        backend: "vectors",
                        detail: format!("collection '{collection}' has dimension {d}, not {dimension}"),
                    })
                }
                None => {
                    let created = self
                        .client
                        .create_collection(
                            CreateCollectionBuilder::new(collection)
                                .vectors_config(VectorParamsBuilder::new(dimension as u64, Distance::Cosine)),
                        )
                        .await;
                    if let Err(e) = created {
                        // Another process may have created it meanwhile: fine if the dimension agrees.
                        match self.dimension_of(collection).await? {
                            Some((d, _)) if d == dimension => {}
                            _ => return Err(err(e)),
                        }
                    }
                    for (field, kind) in [
                        ("scope", FieldType::Keyword),
                        ("tenant", FieldType::Keyword),
                        ("expires_at_ms", FieldType::Integer),
                    ] {
                        self.client
                            .create_field_index(
                                CreateFieldIndexCollectionBuilder::new(collection, field, kind).wait(true),
                            )
                            .await
                            .map_err(err)?;
                    }
                }
            }
            self.remember(collection);
            Ok(())
        })
    }

    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionInfo>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for name in self.ours().await? {
                if let Some((dimension, points)) = self.dimension_of(&name).await? {
                    out.push(CollectionInfo {
                        name,
                        dimension,
                        points,
                    });
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn upsert<'a>(&'a self, collection: &'a str, points: Vec<VectorPoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if points.is_empty() {
                return Ok(());
            }
            let structs: Vec<PointStruct> = points
                .into_iter()
                .map(|p| {
                    let mut payload = Payload::new();
                    payload.insert("key", p.key.hex());
                    payload.insert("scope", p.scope);
                    payload.insert("tenant", p.tenant);
                    payload.insert("text", p.text);
                    payload.insert("expires_at_ms", p.expires_at_ms);
                    PointStruct::new(point_id(&p.key), normalised(p.vector), payload)
                })
                .collect();
            self.client
                .upsert_points(UpsertPointsBuilder::new(collection, structs).wait(true))
                .await
                .map_err(err)?;
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
            let filter = Filter::must([
                Condition::matches("scope", scope.to_string()),
                Condition::range(
                    "expires_at_ms",
                    Range {
                        gt: Some(now_ms() as f64),
                        ..Default::default()
                    },
                ),
            ]);
            let resp = self
                .client
                .query(
                    QueryPointsBuilder::new(collection)
                        .query(normalised(vector))
                        .filter(filter)
                        .limit(k as u64)
                        .with_payload(true),
                )
                .await
                .map_err(err)?;
            Ok(resp
                .result
                .into_iter()
                .filter_map(|p| {
                    Some(VectorMatch {
                        key: CacheKey::from_hex(&payload_str(&p.payload, "key")?)?,
                        text: payload_str(&p.payload, "text").unwrap_or_default(),
                        expires_at_ms: payload_int(&p.payload, "expires_at_ms").unwrap_or(0),
                        score: p.score,
                    })
                })
                .collect())
        })
    }

    fn delete(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let ids: Vec<PointId> = keys.iter().map(point_id).collect();
            let mut gone = 0;
            for c in self.ours().await? {
                let found = self
                    .client
                    .get_points(GetPointsBuilder::new(&c, ids.clone()).with_payload(false))
                    .await
                    .map_err(err)?
                    .result
                    .len() as u64;
                if found == 0 {
                    continue;
                }
                self.client
                    .delete_points(
                        DeletePointsBuilder::new(&c)
                            .points(PointsIdsList { ids: ids.clone() })
                            .wait(true),
                    )
                    .await
                    .map_err(err)?;
                gone += found;
            }
            Ok(gone)
        })
    }

    fn count<'a>(&'a self, collection: Option<&'a str>) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let names = match collection {
                Some(c) => vec![c.to_string()],
                None => self.ours().await?,
            };
            let mut n = 0;
            for c in names {
                let r = self
                    .client
                    .count(CountPointsBuilder::new(&c).exact(true))
                    .await
                    .map_err(err)?;
                n += r.result.map(|r| r.count).unwrap_or(0);
            }
            Ok(n)
        })
    }

    fn list<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CacheKey>>> {
        Box::pin(async move {
            Ok(self
                .scroll_after(collection, after, limit, false)
                .await?
                .into_iter()
                .map(|(k, _)| k)
                .collect())
        })
    }

    fn points<'a>(
        &'a self,
        collection: &'a str,
        after: Option<CacheKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<VectorPoint>>> {
        Box::pin(async move {
            use qdrant_client::qdrant::vector_output::Vector;
            use qdrant_client::qdrant::vectors_output::VectorsOptions;
            Ok(self
                .scroll_after(collection, after, limit, true)
                .await?
                .into_iter()
                .filter_map(|(key, p)| {
                    let vector = match p.vectors?.vectors_options? {
                        VectorsOptions::Vector(v) => match v.into_vector() {
                            Vector::Dense(d) => d.data,
                            _ => return None,
                        },
                        VectorsOptions::Vectors(_) => return None,
                    };
                    Some(VectorPoint {
                        key,
                        scope: payload_str(&p.payload, "scope").unwrap_or_default(),
                        tenant: payload_str(&p.payload, "tenant").unwrap_or_default(),
                        text: payload_str(&p.payload, "text").unwrap_or_default(),
                        expires_at_ms: payload_int(&p.payload, "expires_at_ms").unwrap_or(0),
                        vector,
                    })
                })
                .collect())
        })
    }

    fn purge_expired(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let filter = || {
                Filter::must([Condition::range(
                    "expires_at_ms",
                    Range {
                        lt: Some(before_ms as f64),
                        ..Default::default()
                    },
                )])
            };
            let mut n = 0;
            for c in self.ours().await? {
                let found = self
                    .client
                    .count(CountPointsBuilder::new(&c).filter(filter()).exact(true))
                    .await
                    .map_err(err)?
                    .result
                    .map(|r| r.count)
                    .unwrap_or(0);
                if found > 0 {
                    self.client
                        .delete_points(DeletePointsBuilder::new(&c).points(filter()).wait(true))
                        .await
                        .map_err(err)?;
                    n += found;
                }
            }
            Ok(n)
        })
    }
}
