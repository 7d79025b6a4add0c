//! The local embedding model against its reference: the plain-Rust f32
//! encoder computes what candle's BERT computes (candle runs only here, behind
//! recache-embed's `reference` feature).

mod common;

use serde_json::Value;

/// The f32 network (plain Rust over half-float weights) computes what
/// candle-transformers' BERT computes, on every text of the pair set and on a
/// text long enough to be truncated.
#[test]
fn f32_encoder_agrees_with_the_reference_network() {
    let Some(model) = common::engines::model_dir() else {
        return;
    };
    let plain = recache_embed::LocalModel::load_weights(&model, 256, recache_embed::Weights::F32).unwrap();
    let reference = recache_embed::LocalModel::load_weights(&model, 256, recache_embed::Weights::Reference).unwrap();
    assert_eq!(plain.name(), reference.name(), "the same vectors, the same fingerprint");
    let long = "Explain how the cache answers a repeated question, step by step. ".repeat(40);
    let mut texts = vec![long.as_str()];
    let pairs: Vec<Value> = include_str!("data/semantic_pairs.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for pair in &pairs {
        texts.push(pair["a"].as_str().unwrap());
        texts.push(pair["b"].as_str().unwrap());
    }
    let mut worst = 1.0f32;
    for &t in &texts {
        let (a, b) = (&plain.embed(&[t]).unwrap()[0], &reference.embed(&[t]).unwrap()[0]);
        assert_eq!(a.len(), b.len());
        worst = worst.min(recache_embed::cosine(a, b));
    }
    assert!(worst >= 0.99999, "plain vs reference cosine {worst}");
    // A batch embeds each text as it embeds alone.
    let batch = plain.embed(&texts[..3]).unwrap();
    for (&t, v) in texts[..3].iter().zip(&batch) {
        assert_eq!(&plain.embed(&[t]).unwrap()[0], v);
    }
}
