//! `recache bench vectors` and `recache bench embed`: the semantic layer's
//! figures, in-process (the gateway end to end is `bench load --mode semantic`).
//!
//! Vectors are synthetic but shaped like the real workload: `--clusters`
//! topic centres, each point a noisy copy of one (cosine ~0.8 to its centre),
//! and every query a near-duplicate of a stored point (cosine ~0.95), which is
//! what a semantic cache is asked to find. Recall is the share of queries whose
//! top hit is the one an exact f32 scan over the same points finds.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::{OutputFormat, EXIT_PROBLEM};
use recache_core::key::CacheKey;
use recache_storage::roles::vectors_embedded::{EmbeddedVectors, IvfParams};
use recache_storage::roles::{normalised, now_ms, VectorPoint, Vectors};

#[derive(Args, Debug)]
pub struct VectorsBenchArgs {
    /// Vectors stored.
    #[arg(long, default_value_t = 10_000)]
    pub points: usize,
    /// Scopes they are spread over (1: every vector in one scope, the worst case).
    #[arg(long, default_value_t = 1)]
    pub scopes: usize,
    #[arg(long, default_value_t = 384)]
    pub dimension: usize,
    /// Topic centres the points are drawn around.
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    /// Lookups timed.
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// No IVF index: every lookup scans its scope exactly (for comparison).
    #[arg(long)]
    pub exact: bool,
    /// Cosine of each query to the stored point it was made from (0.90 is the default
    /// semantic threshold: the hardest match a search must still find).
    #[arg(long, default_value_t = 0.95)]
    pub query_similarity: f32,
    /// Lists an IVF search scans.
    #[arg(long, default_value_t = IvfParams::default().nprobe)]
    pub nprobe: usize,
    /// Also time each lookup with a local embedding before it (a model folder).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct EmbedBenchArgs {
    /// The model folder (safetensors + tokenizer.json).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model: std::path::PathBuf,
    /// `int8` (the default: 8-bit linear layers, the same vectors on every CPU),
    /// `f32` (half-float weights, the checkpoint's network to float rounding), or
    /// `reference` (f32 on candle-transformers' BERT, the network both are checked against).
    #[arg(long, default_value = "int8", value_parser = ["int8", "f32", "reference"])]
    pub weights: String,
    /// Embeddings timed per prompt length.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Roughly normal (sum of uniforms).
    fn gauss(&mut self) -> f32 {
        let mut s = 0.0;
        for _ in 0..4 {
            s += (self.next() >> 11) as f32 / (1u64 << 53) as f32;
        }
        (s - 2.0) * 1.732
    }
    fn unit(&mut self, dim: usize) -> Vec<f32> {
        normalised((0..dim).map(|_| self.gauss()).collect())
    }
}

/// `base` moved towards a random direction so that cos(result, base) is about `cos`.
fn near(rng: &mut Rng, base: &[f32], cos: f32) -> Vec<f32> {
    let noise = rng.unit(base.len());
    let t = (1.0 / (cos * cos) - 1.0).sqrt();
    normalised(base.iter().zip(&noise).map(|(b, n)| b + t * n).collect())
}

fn key_of(i: usize) -> CacheKey {
    CacheKey::from_hex(&format!("{i:064x}")).unwrap_or_else(|| CacheKey::from_hex(&"0".repeat(64)).unwrap())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_mb() -> f64 {
    recache_engine::metrics::rss_bytes() as f64 / 1048576.0
}

pub async fn vectors(a: VectorsBenchArgs) -> i32 {
    // The store's own log lines (IVF training and ordering) with RUST_LOG=info.
    super::init_logging(super::LogFormat::Text, "warn");
    match run_vectors(a).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("recache bench vectors: {e:#}");
            EXIT_PROBLEM
        }
    }
}

/// The text form of the vector store benchmark's report.
fn vectors_text(v: &serde_json::Value, a: &VectorsBenchArgs, big: usize, kept_mb: f64, store_mb: f64) -> String {
    let (insert_secs, index_secs) = (
        v["insert_seconds"].as_f64().unwrap_or(0.0),
        v["ivf_index_seconds"].as_f64().unwrap_or(0.0),
    );
    let mut s = format!(
        "{} vectors ({}-d) in {} scope(s): inserted in {:.1} s ({:.0}/s); {big} scope(s) IVF-indexed in the background, settled {:.1} s after the last insert\n",
        a.points,
        a.dimension,
        a.scopes,
        insert_secs,
        v["inserts_per_second"].as_f64().unwrap_or(0.0),
        index_secs
    );
    s += &format!(
        "lookup (top-4 in one scope, no embedding): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n",
        v["lookup_ms"]["p50"].as_f64().unwrap_or(0.0),
        v["lookup_ms"]["p99"].as_f64().unwrap_or(0.0),
        v["lookup_ms"]["max"].as_f64().unwrap_or(0.0)
    );
    if !v["lookup_while_indexing_ms"].is_null() {
        s += &format!(
            "lookups while the index settled (one every 20 ms): {}, p50 {:.3} ms  max {:.3} ms\n",
            v["lookup_while_indexing_ms"]["count"],
            v["lookup_while_indexing_ms"]["p50"].as_f64().unwrap_or(0.0),
            v["lookup_while_indexing_ms"]["max"].as_f64().unwrap_or(0.0)
        );
    }
    if !v["lookup_with_embedding_ms"].is_null() {
        s += &format!(
            "lookup including a local embedding: p50 {:.3} ms  p99 {:.3} ms\n",
            v["lookup_with_embedding_ms"]["p50"].as_f64().unwrap_or(0.0),
            v["lookup_with_embedding_ms"]["p99"].as_f64().unwrap_or(0.0)
        );
    }
    s += &format!(
        "recall@1 against an exact f32 scan: {:.3}; largest score error against f32: {:.4}\nstore memory ~{:.0} MB (process RSS {:.0} MB, of which {:.0} MB are the benchmark's own copy)\n",
        v["recall_at_1"].as_f64().unwrap_or(0.0),
        v["score_error_max"].as_f64().unwrap_or(0.0),
        store_mb,
        v["process_rss_mb"].as_f64().unwrap_or(0.0),
        kept_mb
    );
    s
}

async fn run_vectors(a: VectorsBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let params = IvfParams {
        min_rows: if a.exact {
            usize::MAX
        } else {
            IvfParams::default().min_rows
        },
        nprobe: a.nprobe,
        ..IvfParams::default()
    };
    let store = Arc::new(EmbeddedVectors::open_with(&dir, params)?);
    let col = "bench";
    store.ensure_collection(col, a.dimension).await?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let centres: Vec<Vec<f32>> = (0..a.clusters.max(1)).map(|_| rng.unit(a.dimension)).collect();
    let rss_before = rss_mb();
    let started = Instant::now();
    let expires = now_ms() + 86_400_000;
    // Kept for the exact reference scan and for the queries (outside the store's memory figure).
    let mut kept: Vec<Vec<f32>> = Vec::with_capacity(a.points);
    let bar = indicatif::ProgressBar::new(a.points as u64);
    let mut batch = Vec::with_capacity(1000);
    for i in 0..a.points {
        let v = near(&mut rng, &centres[i % centres.len()], 0.8);
        batch.push(VectorPoint {
            key: key_of(i),
            scope: format!("scope-{}", i % a.scopes.max(1)),
            tenant: "bench".into(),
            text: format!("benchmark question number {i}"),
            expires_at_ms: expires,
            vector: v.clone(),
        });
        kept.push(v);
        if batch.len() == 1000 {
            store.upsert(col, std::mem::take(&mut batch)).await?;
            bar.inc(1000);
        }
    }
    store.upsert(col, batch).await?;
    bar.finish_and_clear();
    let insert_secs = started.elapsed().as_secs_f64();
    // Scopes past the exact-scan size get an IVF index in the background: wait for it.
    let big = (0..a.scopes.max(1))
        .filter(|s| a.points / a.scopes.max(1) + usize::from(*s < a.points % a.scopes.max(1)) >= params.min_rows)
        .count();
    let indexing = Instant::now();
    // Searches go on meanwhile: the longest one shows how long the index's
    // installation (and the rows' reordering by list) held them up.
    let mut during = Vec::new();
    if big > 0 {
        eprintln!("waiting for the IVF index of {big} scope(s) ...");
        loop {
            let (indexed, waiting) = store.ivf_status();
            if indexed >= big && waiting == 0 {
                break;
            }
            let target = (rng.next() as usize) % a.points.max(1);
            let query = near(&mut rng, &kept[target], a.query_similarity);
            let t = Instant::now();
            store
                .search(col, &format!("scope-{}", target % a.scopes.max(1)), query, 4)
                .await?;
            during.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let index_secs = indexing.elapsed().as_secs_f64();
    during.sort_by(f64::total_cmp);
    let kept_mb = (a.points * a.dimension * 4) as f64 / 1048576.0;
    let store_mb = rss_mb() - rss_before - kept_mb;

    let model = match &a.model {
        Some(m) => Some(recache_embed::LocalModel::load(m, 256)?),
        None => None,
    };
    let mut lookup = Vec::with_capacity(a.queries);
    let mut with_embed = Vec::new();
    let mut agree = 0usize;
    let mut score_err = 0f32;
    for q in 0..a.queries {
        let target = (rng.next() as usize) % a.points.max(1);
        let query = near(&mut rng, &kept[target], a.query_similarity);
        let scope = format!("scope-{}", target % a.scopes.max(1));
        let t = Instant::now();
        let hits = store.search(col, &scope, query.clone(), 4).await?;
        lookup.push(t.elapsed().as_secs_f64() * 1000.0);
        // The exact f32 reference over the same scope.
        let best = (0..a.points)
            .filter(|i| i % a.scopes.max(1) == target % a.scopes.max(1))
            .map(|i| (i, kept[i].iter().zip(&query).map(|(x, y)| x * y).sum::<f32>()))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(i, _)| i);
        if hits.first().map(|h| h.key) == best.map(key_of) {
            agree += 1;
        }
        // The stored codes' rounding: the engine's score against the f32 cosine of the same point.
        if let Some(h) = hits.first() {
            if let Some(i) = (0..a.points).find(|i| key_of(*i) == h.key) {
                let exact: f32 = kept[i].iter().zip(&query).map(|(x, y)| x * y).sum();
                score_err = score_err.max((exact - h.score).abs());
            }
        }
        if let Some(m) = &model {
            let text = format!("How do I reset my password, question {q}?");
            let t = Instant::now();
            let v = m.embed(&[&text])?.pop().unwrap_or_default();
            // Same dimension as the store only for 384-d runs; otherwise time the embedding plus a lookup of the query.
            let probe = if v.len() == a.dimension { v } else { query.clone() };
            let _ = store.search(col, &scope, probe, 4).await?;
            with_embed.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lookup.sort_by(f64::total_cmp);
    with_embed.sort_by(f64::total_cmp);
    let report = json!({
        "points": a.points, "scopes": a.scopes, "dimension": a.dimension, "clusters": a.clusters,
        "insert_seconds": insert_secs, "inserts_per_second": a.points as f64 / insert_secs.max(1e-9),
        "ivf_scopes": big, "ivf_index_seconds": index_secs,
        "lookup_while_indexing_ms": if during.is_empty() { serde_json::Value::Null } else {
            json!({"count": during.len(), "p50": pct(&during, 0.5), "max": pct(&during, 1.0)}) },
        "lookup_ms": {"p50": pct(&lookup, 0.5), "p99": pct(&lookup, 0.99), "max": pct(&lookup, 1.0)},
        "lookup_with_embedding_ms": if with_embed.is_empty() { serde_json::Value::Null } else {
            json!({"p50": pct(&with_embed, 0.5), "p99": pct(&with_embed, 0.99)}) },
        "recall_at_1": agree as f64 / a.queries.max(1) as f64,
        "score_error_max": score_err,
        "store_rss_mb": store_mb,
        "process_rss_mb": rss_mb(),
    });
    let _ = std::fs::remove_dir_all(&dir);
    super::ops::print(a.format, &report, |v| vectors_text(v, &a, big, kept_mb, store_mb));
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("recache-bench-vectors-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub async fn embed(a: EmbedBenchArgs) -> i32 {
    let weights = a.weights.parse().unwrap_or_default();
    let model = match recache_embed::LocalModel::load_weights(&a.model, 256, weights) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "recache bench embed: cannot load {} ({e}); `bash scripts/fetch-model.sh` fetches it",
                a.model.display()
            );
            return EXIT_PROBLEM;
        }
    };
    let short = "How do I reset my password?".to_string();
    let long =
        "I am migrating a service from a single PostgreSQL primary to a managed cluster with two read replicas, \
                and I need to keep writes consistent while the application still reads from the old primary. "
            .repeat(5);
    let mut out = serde_json::Map::new();
    let mut text = String::new();
    for (label, prompt) in [("short", short), ("long", long)] {
        let tokens = model.token_count(&prompt);
        let _ = model.embed(&[&prompt]); // warm-up
        let mut ms = Vec::with_capacity(a.runs);
        for i in 0..a.runs {
            let p = format!("{prompt} {i}");
            let t = Instant::now();
            if let Err(e) = model.embed(&[&p]) {
                eprintln!("recache bench embed: {e}");
                return EXIT_PROBLEM;
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        let (p50, p99) = (pct(&ms, 0.5), pct(&ms, 0.99));
        text += &format!("{label} prompt ({tokens} tokens): p50 {p50:.2} ms  p99 {p99:.2} ms\n");
        out.insert(label.into(), json!({"tokens": tokens, "p50_ms": p50, "p99_ms": p99}));
    }
    out.insert("model".into(), json!(model.name()));
    out.insert("weights".into(), json!(a.weights));
    out.insert("kernel".into(), json!(model.kernel()));
    text += &format!(
        "model {} ({} weights, {} kernel)\n",
        model.name(),
        a.weights,
        model.kernel()
    );
    out.insert(
        "threads".into(),
        json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
    );
    super::ops::print(a.format, &serde_json::Value::Object(out), |_| text.clone());
    0
}
