//! Embedders: text → an L2-normalised vector, each with a fingerprint.
//!
//! The fingerprint (kind, model, dimension, normalisation) names the
//! collection its vectors live in, so vectors of two embedders never mix.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::config::EmbedderConfig;
use crate::endpoint::Endpoint;
use crate::roles::BoxFuture;
use crate::upstream::{Upstream, Upstreams};

pub trait Embedder: Send + Sync {
    /// `kind:model:dimension:normalisation[:max tokens]`, e.g. `local:all-MiniLM-L6-v2-i8:384:l2:256`
    /// (anything that changes the vectors changes the fingerprint).
    fn fingerprint(&self) -> String;
    fn dimension(&self) -> usize;
    fn embed(&self, text: String) -> BoxFuture<'_, Result<Vec<f32>, String>>;
}

/// The collection name for a fingerprint: readable, and safe for every engine.
pub fn collection_for(prefix: &str, fingerprint: &str) -> String {
    let mut out = String::from(prefix);
    for c in fingerprint.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
            c.to_ascii_lowercase()
        } else {
            '_'
        });
    }
    out
}

/// A sentence-transformers folder run in-process (candle), one inference per CPU at a time.
pub struct LocalEmbedder {
    model: Arc<recache_embed::LocalModel>,
    permits: Arc<Semaphore>,
}

impl LocalEmbedder {
    pub fn load(cfg: &EmbedderConfig) -> anyhow::Result<Self> {
        let path = cfg
            .path
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("a local embedder needs a path"))?;
        let weights: recache_embed::Weights = cfg.weights.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let model = recache_embed::LocalModel::load_weights(path, cfg.max_tokens, weights)?;
        tracing::info!(
            model = model.name(),
            weights = %cfg.weights,
            kernel = model.kernel(),
            "local embedding model loaded"
        );
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(Self {
            model: Arc::new(model),
            permits: Arc::new(Semaphore::new(cpus)),
        })
    }
}

impl Embedder for LocalEmbedder {
    fn fingerprint(&self) -> String {
        format!(
            "local:{}:{}:l2:{}",
            self.model.name(),
            self.model.dimension(),
            self.model.max_tokens()
        )
    }
    fn dimension(&self) -> usize {
        self.model.dimension()
    }
    fn embed(&self, text: String) -> BoxFuture<'_, Result<Vec<f32>, String>> {
        Box::pin(async move {
            let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
            let model = self.model.clone();
            tokio::task::spawn_blocking(move || model.embed(&[&text]))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
                .pop()
                .ok_or_else(|| "the model returned no vector".to_string())
        })
    }
}

/// An upstream's `/v1/embeddings` (its calls cost money like any other).
pub struct ProviderEmbedder {
    upstream: Arc<Upstream>,
    model: String,
    dimension: usize,
}

impl ProviderEmbedder {
    pub fn new(cfg: &EmbedderConfig, upstreams: &Upstreams) -> anyhow::Result<Self> {
        let name = cfg.upstream.as_deref().unwrap_or_default();
        let upstream = upstreams
            .by_name(name)
            .ok_or_else(|| anyhow::anyhow!("no upstream named '{name}'"))?;
        Ok(Self {
            upstream,
            model: cfg.model.clone().unwrap_or_default(),
            dimension: cfg.dimension.unwrap_or(0),
        })
    }
}

impl Embedder for ProviderEmbedder {
    fn fingerprint(&self) -> String {
        format!("provider:{}:{}:{}:l2", self.upstream.name, self.model, self.dimension)
    }
    fn dimension(&self) -> usize {
        self.dimension
    }
    fn embed(&self, text: String) -> BoxFuture<'_, Result<Vec<f32>, String>> {
        Box::pin(async move {
            let body = Bytes::from(json!({"model": self.model, "input": text}).to_string());
            let resp = self
                .upstream
                .send(Endpoint::Embeddings, body)
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("embeddings endpoint answered {}", resp.status()));
            }
            let v: Value = resp.json().await.map_err(|e| e.to_string())?;
            let raw = v
                .pointer("/data/0/embedding")
                .and_then(Value::as_array)
                .ok_or("no data[0].embedding in the answer")?;
            let out: Vec<f32> = raw.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect();
            if self.dimension != 0 && out.len() != self.dimension {
                return Err(format!("expected {} dimensions, got {}", self.dimension, out.len()));
            }
            Ok(crate::roles::normalised(out))
        })
    }
}

/// The embedding cache's key: tenant, embedder fingerprint and text, each
/// length-prefixed so no two triples share a key.
pub(super) fn embed_cache_key(tenant: &str, fingerprint: &str, text: &str) -> u128 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [tenant, fingerprint, text] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    u128::from_le_bytes(d[..16].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedding_cache_is_per_tenant() {
        let a = super::embed_cache_key("team-a", "fp", "hello");
        assert_ne!(a, super::embed_cache_key("team-b", "fp", "hello"));
        assert_ne!(a, super::embed_cache_key("team-a", "fp2", "hello"));
        assert_eq!(a, super::embed_cache_key("team-a", "fp", "hello"));
        // Boundaries cannot be moved between parts.
        assert_ne!(
            super::embed_cache_key("ab", "c", "d"),
            super::embed_cache_key("a", "bc", "d")
        );
    }
}
