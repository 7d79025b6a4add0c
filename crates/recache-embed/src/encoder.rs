//! A BERT encoder in plain Rust for one text at a time: the f32 weights of a
//! sentence-transformers checkpoint, no padding, no tensor library on the hot path.
//!
//! It computes what candle-transformers' `BertModel` computes (word, position and
//! type embeddings; self-attention; a GELU feed-forward; post-layer norms), then
//! the mean over the tokens and an L2 norm. The time goes to the linear layers
//! ([`crate::kernel::linear`]), whose weights are read in place; candle's general
//! product repacked them on every call, which cost most of a short prompt's pass.

use safetensors::{Dtype, SafeTensors};

use crate::kernel::HalfMatrix;
use crate::kernel_i8::{Int8Matrix, BLOCK};

pub struct Encoder {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    gelu_exact: bool,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    max_positions: usize,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

enum Weight {
    Half(HalfMatrix),
    Int8(Int8Matrix),
}

struct Dense {
    weight: Weight,
    bias: Vec<f32>,
    out: usize,
    inp: usize,
}

struct Layer {
    /// Query, key and value in one `3·hidden × hidden` product.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

#[derive(serde::Deserialize)]
pub struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

type Result<T> = std::result::Result<T, String>;

/// The checkpoint's tensors, read out as f32.
struct Checkpoint {
    /// `model.safetensors`, memory-mapped read-only.
    file: memmap2::Mmap,
    prefix: &'static str,
    int8: bool,
}

/// A tensor's little-endian bytes as f32 values.
fn floats(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        other => return Err(format!("tensors of {other:?} are not floats")),
    })
}

impl Checkpoint {
    /// int8 where asked for, half floats otherwise.
    fn matrix(&self, values: &[f32], n: usize, k: usize) -> Result<Weight> {
        if !self.int8 {
            return Ok(Weight::Half(HalfMatrix::new(values, n, k)));
        }
        Int8Matrix::new(values, n, k)
            .map(Weight::Int8)
            .ok_or_else(|| format!("int8 weights need layers whose inputs are a multiple of {BLOCK}, not {k}"))
    }

    /// Every value of the tensor `name`, flattened.
    fn values(&self, name: &str) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let st = SafeTensors::deserialize(&self.file).map_err(|e| format!("model.safetensors: {e}"))?;
        let t = st.tensor(&full).map_err(|e| format!("{full}: {e}"))?;
        floats(t.dtype(), t.data()).map_err(|e| format!("{full}: {e}"))
    }

    /// The tensor `name`, which must hold `len` values.
    fn get(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.values(name)?;
        if t.len() != len {
            return Err(format!("{}{name}: {} values, expected {len}", self.prefix, t.len()));
        }
        Ok(t)
    }

    fn norm(&self, name: &str, size: usize) -> Result<Norm> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), size)?,
            bias: self.get(&format!("{name}.bias"), size)?,
        })
    }

    fn dense(&self, name: &str, out: usize, inp: usize) -> Result<Dense> {
        Ok(Dense {
            weight: self.matrix(&self.get(&format!("{name}.weight"), out * inp)?, out, inp)?,
            bias: self.get(&format!("{name}.bias"), out)?,
            out,
            inp,
        })
    }
}

impl Encoder {
    /// Reads the weights of `model.safetensors` (top-level or under `bert.`). With
    /// `int8`, the linear layers run in 8-bit integers ([`crate::kernel_i8`], the
    /// same numbers on every CPU), in half floats otherwise.
    pub fn load(weights: &std::path::Path, config: &Config, int8: bool) -> Result<Self> {
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err("hidden_size is not a multiple of num_attention_heads".into());
        }
        let gelu_exact = match config.hidden_act.as_str() {
            "gelu" => true,
            "gelu_new" | "gelu_approximate" | "gelu_pytorch_tanh" => false,
            other => return Err(format!("hidden_act {other} is not supported")),
        };
        let f = std::fs::File::open(weights).map_err(|e| format!("{}: {e}", weights.display()))?;
        // SAFETY: the weights file is memory-mapped read-only and copied out at once.
        let file = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("{}: {e}", weights.display()))?;
        let top = SafeTensors::deserialize(&file)
            .map_err(|e| format!("model.safetensors: {e}"))?
            .tensor("embeddings.word_embeddings.weight")
            .is_ok();
        let prefix = if top { "" } else { "bert." };
        let w = Checkpoint { file, prefix, int8 };
        let (d, i) = (config.hidden_size, config.intermediate_size);
        let word = w.values("embeddings.word_embeddings.weight")?;
        if word.is_empty() || !word.len().is_multiple_of(d) {
            return Err(format!("word embeddings: {} values, not rows of {d}", word.len()));
        }
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let part = |name: &str| w.get(&format!("{p}.attention.self.{name}.weight"), d * d);
            let bias = |name: &str| w.get(&format!("{p}.attention.self.{name}.bias"), d);
            let qkv = Dense {
                weight: w.matrix(&[part("query")?, part("key")?, part("value")?].concat(), 3 * d, d)?,
                bias: [bias("query")?, bias("key")?, bias("value")?].concat(),
                out: 3 * d,
                inp: d,
            };
            layers.push(Layer {
                qkv,
                attn_out: w.dense(&format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), d)?,
                up: w.dense(&format!("{p}.intermediate.dense"), i, d)?,
                down: w.dense(&format!("{p}.output.dense"), d, i)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), d)?,
            });
        }
        // Only token type 0 is ever used: its row is the first.
        let mut token_type = w.values("embeddings.token_type_embeddings.weight")?;
        if token_type.len() < d {
            return Err("token types too short".into());
        }
        token_type.truncate(d);
        Ok(Self {
            hidden: d,
            heads: config.num_attention_heads,
            intermediate: i,
            eps: config.layer_norm_eps as f32,
            gelu_exact,
            word,
            position: w.get(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings * d,
            )?,
            token_type,
            max_positions: config.max_position_embeddings,
            embed_norm: w.norm("embeddings.LayerNorm", d)?,
            layers,
        })
    }

    /// The L2-normalised mean of the last hidden states of `ids` (no padding).
    /// Compiled for AVX2 as well, chosen at run time, so that the layer norms,
    /// the GELU and the residual sums run eight lanes wide; the numbers are the
    /// same either way (the compiler fuses no multiply-add on its own).
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.embed_avx2(ids) };
        }
        self.embed_body(ids)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn embed_avx2(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.embed_body(ids)
    }

    #[inline(always)]
    fn embed_body(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let d = self.hidden;
        let m = ids.len();
        if m == 0 {
            return Err("no tokens".into());
        }
        if m > self.max_positions {
            return Err(format!("{m} tokens, the model takes {}", self.max_positions));
        }
        let vocab = self.word.len() / d;
        let mut h = vec![0f32; m * d];
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(format!("token id {id} is outside the vocabulary"));
            }
            let row = &mut h[t * d..(t + 1) * d];
            let (wr, pr) = (&self.word[id * d..(id + 1) * d], &self.position[t * d..(t + 1) * d]);
            for j in 0..d {
                row[j] = wr[j] + pr[j] + self.token_type[j];
            }
        }
        layer_norm(&mut h, d, &self.embed_norm, self.eps);
        let mut qkv = vec![0f32; m * 3 * d];
        let mut ctx = vec![0f32; m * d];
        let mut tmp = vec![0f32; m * d];
        let mut inter = vec![0f32; m * self.intermediate];
        for layer in &self.layers {
            dense(&h, m, &layer.qkv, &mut qkv);
            attention(&qkv, m, d, self.heads, &mut ctx);
            dense(&ctx, m, &layer.attn_out, &mut tmp);
            add(&mut h, &tmp);
            layer_norm(&mut h, d, &layer.attn_norm, self.eps);
            dense(&h, m, &layer.up, &mut inter);
            if self.gelu_exact {
                inter.iter_mut().for_each(|v| *v = gelu_erf(*v));
            } else {
                inter.iter_mut().for_each(|v| *v = gelu_tanh(*v));
            }
            dense(&inter, m, &layer.down, &mut tmp);
            add(&mut h, &tmp);
            layer_norm(&mut h, d, &layer.out_norm, self.eps);
        }
        let mut mean = vec![0f32; d];
        for row in h.chunks_exact(d) {
            add(&mut mean, row);
        }
        // The mean's direction is the sum's: normalise the sum.
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        mean.iter_mut().for_each(|v| *v /= norm);
        Ok(mean)
    }
}

/// Multi-head self-attention over all `m` tokens (no mask: there is no padding).
/// Compiled for AVX2 as well, chosen at run time: a long prompt's pass spends
/// most of its time here (its cost grows with the square of the tokens).
fn attention(qkv: &[f32], m: usize, d: usize, heads: usize, ctx: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { attention_avx2(qkv, m, d, heads, ctx) };
        return;
    }
    attention_body(qkv, m, d, heads, ctx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(qkv: &[f32], m: usize, d: usize, heads: usize, ctx: &mut [f32]) {
    attention_body(qkv, m, d, heads, ctx)
}

#[inline(always)]
fn attention_body(qkv: &[f32], m: usize, d: usize, heads: usize, ctx: &mut [f32]) {
    let dh = d / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut scores = vec![0f32; m];
    // One head's keys and values, contiguous.
    let mut keys = vec![0f32; m * dh];
    let mut values = vec![0f32; m * dh];
    for head in 0..heads {
        let off = head * dh;
        for s in 0..m {
            keys[s * dh..(s + 1) * dh].copy_from_slice(&qkv[s * 3 * d + d + off..s * 3 * d + d + off + dh]);
            values[s * dh..(s + 1) * dh].copy_from_slice(&qkv[s * 3 * d + 2 * d + off..s * 3 * d + 2 * d + off + dh]);
        }
        for t in 0..m {
            let q = &qkv[t * 3 * d + off..t * 3 * d + off + dh];
            let mut max = f32::NEG_INFINITY;
            for (score, k) in scores.iter_mut().zip(keys.chunks_exact(dh)) {
                *score = dot(q, k) * scale;
                max = max.max(*score);
            }
            let mut sum = 0f32;
            for score in scores.iter_mut() {
                *score = (*score - max).exp();
                sum += *score;
            }
            let out = &mut ctx[t * d + off..t * d + off + dh];
            out.fill(0.0);
            let inv = 1.0 / sum;
            for (p, v) in scores.iter().zip(values.chunks_exact(dh)) {
                let p = p * inv;
                for (o, vv) in out.iter_mut().zip(v) {
                    *o += p * vv;
                }
            }
        }
    }
}

fn dense(x: &[f32], m: usize, layer: &Dense, out: &mut [f32]) {
    match &layer.weight {
        Weight::Half(w) => crate::kernel::linear(x, m, layer.inp, w, layer.out, &layer.bias, out),
        Weight::Int8(w) => crate::kernel_i8::linear(x, m, w, &layer.bias, out),
    }
}

#[inline(always)]
fn add(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ f(v)` over `row`, in eight partial sums (so that it vectorises).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn layer_norm(h: &mut [f32], d: usize, norm: &Norm, eps: f32) {
    for row in h.chunks_exact_mut(d) {
        let mean = lane_sum(row, |v| v) / d as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The error function (Abramowitz & Stegun 7.1.28: 3·10⁻⁷ in exact arithmetic,
/// within 2·10⁻⁶ evaluated in f32): a polynomial and four squarings, with no
/// branch and no call, so a layer's GELU vectorises.
/// `libm::erff` took 1.5 ms of a nine-token pass (83,000 calls), a third of it.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const A: [f32; 6] = [
        0.070_523_08,
        0.042_282_01,
        0.009_270_527,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    let a = x.abs();
    let p = 1.0 + a * (A[0] + a * (A[1] + a * (A[2] + a * (A[3] + a * (A[4] + a * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    (1.0 - 1.0 / (p8 * p8)).copysign(x)
}

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_is_within_its_bound_everywhere() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((super::erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst < 2e-6, "worst error {worst}");
        assert_eq!(super::erf(40.0), 1.0);
        assert_eq!(super::erf(-40.0), -1.0);
        assert_eq!(super::erf(0.0), 0.0);
    }
}
