//! Local sentence embeddings, fully offline.
//!
//! Loads a sentence-transformers model folder (BERT family: `config.json`,
//! `tokenizer.json`, `model.safetensors`) and runs it on the CPU. The f32 and
//! int8 networks are [`encoder::Encoder`], plain Rust over the checkpoint's
//! weights, one text at a time with no padding, read with the `safetensors`
//! crate. The reference network (the `reference` feature, for tests and
//! benchmarks; never in the gateway's release build) runs on `candle`, in
//! padded batches; its pooling is the mean over the real tokens
//! only (padding is masked out), so a text embeds the same alone or in a padded
//! batch. Vectors are L2-normalised, so the dot product is the cosine similarity.
//!
//! Nothing is ever downloaded: the folder is read from disk and that is all.

use std::path::{Path, PathBuf};

#[cfg(feature = "reference")]
use candle_core::{DType, Device, Tensor};
#[cfg(feature = "reference")]
use candle_nn::VarBuilder;
#[cfg(feature = "reference")]
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model folder {path}: {detail}")]
    Model { path: PathBuf, detail: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference: {0}")]
    Inference(String),
}

#[cfg(feature = "reference")]
impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        EmbedError::Inference(e.to_string())
    }
}

mod encoder;
#[doc(hidden)]
pub mod kernel;
mod kernel_i8;

/// Which network runs the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// Half-float weights in [`encoder::Encoder`]: the checkpoint's network to
    /// float rounding (the model's own fingerprint).
    F32,
    /// int8 weights and activations in every linear layer of
    /// [`encoder::Encoder`] (name suffix `-i8`): the same vectors on every CPU,
    /// four times the f32 products per instruction on AVX-512 VNNI. The default.
    #[default]
    Int8,
    /// f32 weights in candle-transformers' `BertModel`: the reference the
    /// default is checked against, and slower.
    Reference,
}

enum Bert {
    Plain(encoder::Encoder),
    #[cfg(feature = "reference")]
    Candle(BertModel),
}

impl std::str::FromStr for Weights {
    type Err = String;

    /// `int8`, `f32` or `reference`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "int8" => Ok(Weights::Int8),
            "f32" => Ok(Weights::F32),
            "reference" => Ok(Weights::Reference),
            other => Err(format!("weights '{other}' (expected int8, f32 or reference)")),
        }
    }
}

/// A loaded local embedding model.
pub struct LocalModel {
    model: Bert,
    tokenizer: Tokenizer,
    dimension: usize,
    name: String,
    max_tokens: usize,
    kernel: &'static str,
}

impl LocalModel {
    /// Loads the model folder to run on the default network ([`Weights::Int8`]).
    /// `max_tokens` bounds the input (longer texts are truncated).
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Self, EmbedError> {
        Self::load_weights(dir, max_tokens, Weights::default())
    }

    /// Loads the model folder to run on the network `weights` names.
    pub fn load_weights(dir: &Path, max_tokens: usize, weights: Weights) -> Result<Self, EmbedError> {
        let int8 = weights == Weights::Int8;
        let err = |detail: String| EmbedError::Model {
            path: dir.to_path_buf(),
            detail,
        };
        let config_text =
            std::fs::read_to_string(dir.join("config.json")).map_err(|e| err(format!("config.json: {e}")))?;
        let raw: serde_json::Value =
            serde_json::from_str(&config_text).map_err(|e| err(format!("config.json: {e}")))?;
        let dimension = raw["hidden_size"]
            .as_u64()
            .ok_or_else(|| err("config.json has no hidden_size".into()))? as usize;
        let limit = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        let max_tokens = max_tokens.clamp(8, limit);
        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| err(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(err("model.safetensors is missing".into()));
        }
        let model = if weights == Weights::Reference {
            Self::reference(&config_text, &weights_path).map_err(err)?
        } else {
            let econfig: encoder::Config =
                serde_json::from_str(&config_text).map_err(|e| err(format!("config.json: {e}")))?;
            Bert::Plain(encoder::Encoder::load(&weights_path, &econfig, int8).map_err(err)?)
        };
        let mut name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into());
        if int8 {
            name.push_str("-i8");
        }
        let kernel = match weights {
            Weights::Reference => "candle",
            Weights::Int8 => kernel_i8::kernel_name(),
            Weights::F32 => kernel::kernel_name(),
        };
        Ok(Self {
            model,
            tokenizer,
            dimension,
            name,
            max_tokens,
            kernel,
        })
    }

    /// candle-transformers' `BertModel` over the checkpoint (the `reference` feature).
    #[cfg(feature = "reference")]
    fn reference(config_text: &str, weights_path: &Path) -> Result<Bert, String> {
        let config: Config = serde_json::from_str(config_text).map_err(|e| format!("config.json: {e}"))?;
        // SAFETY: the weights file is memory-mapped read-only; recache never writes it.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights_path], DType::F32, &Device::Cpu) }
            .map_err(|e| format!("model.safetensors: {e}"))?;
        Ok(Bert::Candle(
            BertModel::load(vb.clone(), &config)
                .or_else(|_| BertModel::load(vb.pp("bert"), &config))
                .map_err(|e| format!("weights do not fit a BERT model: {e}"))?,
        ))
    }

    #[cfg(not(feature = "reference"))]
    fn reference(_config_text: &str, _weights_path: &Path) -> Result<Bert, String> {
        Err("the reference network is not in this build (recache-embed's `reference` feature)".into())
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The kernel that runs the linear layers on this CPU (for example
    /// `int8 avx512-vnni`), for benchmarks and logs.
    pub fn kernel(&self) -> &'static str {
        self.kernel
    }

    /// The folder's name (for example `all-MiniLM-L6-v2`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Embeds a batch of texts: one L2-normalised vector per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        match &self.model {
            Bert::Plain(encoder) => texts.iter().map(|text| self.embed_one(encoder, text)).collect(),
            #[cfg(feature = "reference")]
            Bert::Candle(m) => self.embed_padded(texts, |ids, types, mask| m.forward(ids, types, Some(mask))),
        }
    }

    /// One text through the plain encoder: its real tokens, no padding.
    fn embed_one(&self, encoder: &encoder::Encoder, text: &str) -> Result<Vec<f32>, EmbedError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let ids: Vec<u32> = enc
            .get_ids()
            .iter()
            .zip(enc.get_attention_mask())
            .filter(|(_, m)| **m == 1)
            .map(|(id, _)| *id)
            .collect();
        encoder.embed(&ids).map_err(EmbedError::Inference)
    }

    #[cfg(feature = "reference")]
    /// A padded batch through candle's network (`forward` takes the ids,
    /// the token types and the mask, and gives `(batch, tokens, dim)`).
    fn embed_padded(
        &self,
        texts: &[&str],
        forward: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let ids: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &Device::Cpu))
            .collect::<Result<_, _>>()?;
        let masks: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &Device::Cpu))
            .collect::<Result<_, _>>()?;
        let ids = Tensor::stack(&ids, 0)?;
        let mask = Tensor::stack(&masks, 0)?;
        let types = ids.zeros_like()?;
        let hidden = forward(&ids, &types, &mask)?; // (batch, tokens, dim)
                                                    // Mean over real tokens only.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, tokens, 1)
        let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (batch, dim)
        let counts = m.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (batch, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        let out = mean.broadcast_div(&norm)?;
        Ok(out.to_vec2::<f32>()?)
    }

    /// Tokens a text becomes (after truncation), for metrics and benchmarks.
    pub fn token_count(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().len())
            .unwrap_or(0)
    }
}

/// Cosine similarity of two L2-normalised vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
