//! `y = x·Wᵀ + b` in 8-bit integers, with the same numbers on every CPU.
//!
//! Weights: int8, one scale per output row. Activations: int8 with one scale per
//! token and block of 32 inputs (outliers in one block do not flatten the rest).
//! Each block's product is an exact integer sum; the blocks are then summed in
//! f32, in order, each with one fused multiply-add (`sum · scale + acc`), and the
//! row scale and the bias are applied with one more. Every path below does these
//! same operations in the same order, so the results are bit-identical whatever
//! the CPU, and the vectors of an `-i8` model carry one fingerprint everywhere:
//!
//! - AVX-512 VNNI (`vpdpbusd`: 64 byte products summed into 16 lanes per
//!   instruction, four times the f32 multiply-adds): weights in panels of 16
//!   outputs where each 64-byte vector holds four consecutive inputs of each
//!   output; activations offset by 128 to the unsigned bytes `vpdpbusd` takes,
//!   the offset's contribution (128 · Σ weights of the block) subtracted per block.
//! - AVX2: weights widened to i16 in panels of 8 outputs where each 32-byte
//!   vector holds two consecutive inputs of each output; `vpmaddwd` multiplies
//!   them by a token's pair of inputs and sums each pair (16 products per
//!   instruction, twice the f32 multiply-adds), `vpaddd` sums over the block.
//! - elsewhere: row-major weights and a plain loop.

/// A linear layer's weights, quantised.
pub struct Int8Matrix {
    layout: Layout,
    /// Per output: the weight scale.
    scale: Vec<f32>,
    n: usize,
    k: usize,
}

enum Layout {
    /// Panels of 16 outputs (`k / 4` vectors of 64 bytes each), and per panel and
    /// block of [`BLOCK`] inputs 128 · Σ weights, one lane per output.
    Vnni { panels: Vec<i8>, offsets: Vec<i32> },
    /// Panels of 8 outputs (`k / 2` vectors of 16 i16 each).
    Wide(Vec<i16>),
    /// `n × k`, row-major.
    Rows(Vec<i8>),
}

/// Which kernel a matrix is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Vnni,
    Wide,
    Rows,
}

impl Kind {
    /// The widest kernel this CPU runs for `n` outputs, or a narrower one named by
    /// `RECACHE_INT8_KERNEL` (`avx2` or `portable`: for benchmarks, and to check
    /// that every kernel gives the same vectors).
    fn detect(n: usize) -> Self {
        let cap = std::env::var("RECACHE_INT8_KERNEL").unwrap_or_default();
        if cap == "portable" {
            return Kind::Rows;
        }
        if n.is_multiple_of(16) && avx512() && cap != "avx2" {
            Kind::Vnni
        } else if n.is_multiple_of(8) && avx2() {
            Kind::Wide
        } else {
            Kind::Rows
        }
    }
}

/// Inputs per activation scale.
pub const BLOCK: usize = 32;

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The quantiser needs AVX-512F only (no VNNI): Skylake-X runs it too.
fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Which kernel runs on this CPU (for benchmarks and logs).
pub(crate) fn kernel_name() -> &'static str {
    match Kind::detect(16) {
        Kind::Vnni => "int8 avx512-vnni",
        Kind::Wide => "int8 avx2",
        Kind::Rows => "int8 portable",
    }
}

impl Int8Matrix {
    /// `values` is `n × k`, row-major. `None` unless `k` is a multiple of
    /// [`BLOCK`] and `values` holds `n × k` values.
    pub fn new(values: &[f32], n: usize, k: usize) -> Option<Self> {
        Self::build(values, n, k, Kind::detect(n))
    }

    fn build(values: &[f32], n: usize, k: usize, kind: Kind) -> Option<Self> {
        if n == 0 || k == 0 || !k.is_multiple_of(BLOCK) || values.len() != n * k {
            return None;
        }
        let mut q = vec![0i8; n * k];
        let mut scale = vec![0f32; n];
        for (o, (row, out)) in values.chunks_exact(k).zip(q.chunks_exact_mut(k)).enumerate() {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale[o] = s;
            for (v, q) in row.iter().zip(out.iter_mut()) {
                *q = (v / s).round().clamp(-127.0, 127.0) as i8;
            }
        }
        let layout = match kind {
            Kind::Vnni => {
                let mut panels = vec![0i8; n * k];
                let mut offsets = vec![0i32; (n / 16) * (k / BLOCK) * 16];
                for (o, row) in q.chunks_exact(k).enumerate() {
                    let (p, j) = (o / 16, o % 16);
                    for (i, &w) in row.iter().enumerate() {
                        panels[p * (k * 16) + (i / 4) * 64 + j * 4 + i % 4] = w;
                        offsets[(p * (k / BLOCK) + i / BLOCK) * 16 + j] += 128 * w as i32;
                    }
                }
                Layout::Vnni { panels, offsets }
            }
            Kind::Wide => {
                let mut panels = vec![0i16; n * k];
                for (o, row) in q.chunks_exact(k).enumerate() {
                    let (p, j) = (o / 8, o % 8);
                    for (i, &w) in row.iter().enumerate() {
                        panels[p * (k * 8) + (i / 2) * 16 + j * 2 + i % 2] = i16::from(w);
                    }
                }
                Layout::Wide(panels)
            }
            Kind::Rows => Layout::Rows(q),
        };
        Some(Self { layout, scale, n, k })
    }
}

/// Activations of `m` tokens quantised for the kernels.
struct Quantized {
    /// `m × k` unsigned bytes (int8 + 128).
    bytes: Vec<u8>,
    /// `m × k / BLOCK` scales.
    scale: Vec<f32>,
}

/// `out[t][o] = bias[o] + Σ_i x[t][i] · w[o][i]`, `x` being `m × k` and `out` `m × n`.
pub fn linear(x: &[f32], m: usize, w: &Int8Matrix, bias: &[f32], out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k && bias.len() >= n && out.len() >= m * n);
    let mut q = Quantized {
        bytes: vec![0u8; m * k],
        scale: vec![0f32; m * (k / BLOCK)],
    };
    quantize(&x[..m * k], &mut q);
    match &w.layout {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: panels are built only where `vnni` found the features; `out`
        // holds `m × n` values.
        Layout::Vnni { panels, offsets } => unsafe { x86::run(&q, m, w, panels, offsets, bias, out.as_mut_ptr()) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: wide panels are built only where `avx2` found the features.
        Layout::Wide(panels) => unsafe { x86::run_wide(&q, m, w, panels, bias, out.as_mut_ptr()) },
        #[cfg(not(target_arch = "x86_64"))]
        Layout::Vnni { .. } | Layout::Wide(_) => unreachable!("panels are built on x86_64 only"),
        Layout::Rows(rows) => rows_body(&q, m, w, rows, bias, out),
    }
}

fn quantize(x: &[f32], q: &mut Quantized) {
    #[cfg(target_arch = "x86_64")]
    if avx512f() {
        // SAFETY: the CPU has the feature the function is compiled for.
        unsafe { x86::quantize(x, q) };
        return;
    }
    quantize_portable(x, q)
}

/// Blocks of 32 values to bytes (int8 + 128) and one scale each: the scale is the
/// block's largest magnitude / 127, and a value `v` becomes
/// `trunc(clamp(v · (1/scale) + 128.5, 1, 255))` (one fused multiply-add), which
/// is what the AVX-512 version computes lane by lane.
fn quantize_portable(x: &[f32], q: &mut Quantized) {
    for ((chunk, out), scale) in x
        .chunks_exact(BLOCK)
        .zip(q.bytes.chunks_exact_mut(BLOCK))
        .zip(q.scale.iter_mut())
    {
        let max = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 0.0 };
        *scale = s;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        for (v, b) in chunk.iter().zip(out.iter_mut()) {
            *b = v.mul_add(inv, 128.5).clamp(1.0, 255.0) as u8;
        }
    }
}

/// The row-major kernel: for each output and token, the exact integer sum of
/// each block, then the same fused multiply-adds as the VNNI kernel.
fn rows_body(q: &Quantized, m: usize, w: &Int8Matrix, rows: &[i8], bias: &[f32], out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    let blocks = k / BLOCK;
    // The activations as signed bytes (the kernel's unsigned bytes less 128).
    let signed: Vec<i8> = q.bytes.iter().map(|b| (b ^ 0x80) as i8).collect();
    for (o, row) in rows.chunks_exact(k).enumerate() {
        for t in 0..m {
            let x = &signed[t * k..(t + 1) * k];
            let xs = &q.scale[t * blocks..(t + 1) * blocks];
            let mut acc = 0f32;
            for ((wb, xb), s) in row.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(xs) {
                let mut sum = 0i32;
                for (a, b) in wb.iter().zip(xb) {
                    sum += i32::from(*a) * i32::from(*b);
                }
                acc = (sum as f32).mul_add(*s, acc);
            }
            out[t * n + o] = acc.mul_add(w.scale[o], bias[o]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Int8Matrix, Quantized, BLOCK};
    use crate::kernel::token_blocks;
    use std::arch::x86_64::*;

    /// A matrix and its VNNI layout's parts.
    #[derive(Clone, Copy)]
    struct Weights<'a> {
        matrix: &'a Int8Matrix,
        panels: &'a [i8],
        offsets: &'a [i32],
    }

    /// Outputs `o..o + 16` of tokens `0..T` (their bytes and scales from `t0`).
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn tile<const T: usize>(q: &Quantized, t0: usize, w: Weights, o: usize, bias: &[f32], out: *mut f32) {
        let (n, k) = (w.matrix.n, w.matrix.k);
        let blocks = k / BLOCK;
        let panel = w.panels.as_ptr().add((o / 16) * (k * 16));
        let offsets = w.offsets.as_ptr().add((o / 16) * blocks * 16);
        let xq = q.bytes.as_ptr().add(t0 * k);
        let xs = q.scale.as_ptr().add(t0 * blocks);
        let mut accf = [_mm512_setzero_ps(); T];
        for b in 0..blocks {
            let mut acci = [_mm512_setzero_si512(); T];
            for quad in 0..BLOCK / 4 {
                let wv = _mm512_loadu_si512(panel.add((b * (BLOCK / 4) + quad) * 64) as *const __m512i);
                for (t, a) in acci.iter_mut().enumerate() {
                    let bytes = (xq.add(t * k + b * BLOCK + quad * 4) as *const i32).read_unaligned();
                    *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(bytes), wv);
                }
            }
            let corr = _mm512_loadu_si512(offsets.add(b * 16) as *const __m512i);
            for (t, (f, a)) in accf.iter_mut().zip(acci.iter()).enumerate() {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(*a, corr));
                *f = _mm512_fmadd_ps(v, _mm512_set1_ps(*xs.add(t * blocks + b)), *f);
            }
        }
        let s = _mm512_loadu_ps(w.matrix.scale.as_ptr().add(o));
        let bv = _mm512_loadu_ps(bias.as_ptr().add(o));
        for (t, f) in accf.iter().enumerate() {
            _mm512_storeu_ps(out.add((t0 + t) * n + o), _mm512_fmadd_ps(*f, s, bv));
        }
    }

    /// A product's operands for the AVX2 kernel.
    #[derive(Clone, Copy)]
    struct Wide<'a> {
        /// Each token's inputs as signed i16 pairs, one 32-bit word per pair.
        pairs: &'a [i32],
        /// Per token and block of [`BLOCK`] inputs.
        scales: &'a [f32],
        matrix: &'a Int8Matrix,
        panels: &'a [i16],
        bias: &'a [f32],
        out: *mut f32,
    }

    /// Outputs `o..o + 8` of tokens `t0..t0 + T` on AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_wide<const T: usize>(w: Wide, t0: usize, o: usize) {
        let (n, k) = (w.matrix.n, w.matrix.k);
        let blocks = k / BLOCK;
        let panel = w.panels.as_ptr().add((o / 8) * (k * 8));
        let xp = w.pairs.as_ptr().add(t0 * (k / 2));
        let xs = w.scales.as_ptr().add(t0 * blocks);
        let mut accf = [_mm256_setzero_ps(); T];
        for b in 0..blocks {
            let mut acci = [_mm256_setzero_si256(); T];
            for p in 0..BLOCK / 2 {
                let wv = _mm256_loadu_si256(panel.add((b * (BLOCK / 2) + p) * 16) as *const __m256i);
                for (t, a) in acci.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32(*xp.add(t * (k / 2) + b * (BLOCK / 2) + p));
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(wv, x));
                }
            }
            for (t, (f, a)) in accf.iter_mut().zip(acci.iter()).enumerate() {
                let v = _mm256_cvtepi32_ps(*a);
                *f = _mm256_fmadd_ps(v, _mm256_set1_ps(*xs.add(t * blocks + b)), *f);
            }
        }
        let s = _mm256_loadu_ps(w.matrix.scale.as_ptr().add(o));
        let bv = _mm256_loadu_ps(w.bias.as_ptr().add(o));
        for (t, f) in accf.iter().enumerate() {
            _mm256_storeu_ps(w.out.add((t0 + t) * n + o), _mm256_fmadd_ps(*f, s, bv));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_wide(
        q: &Quantized,
        m: usize,
        matrix: &Int8Matrix,
        panels: &[i16],
        bias: &[f32],
        out: *mut f32,
    ) {
        let pairs: Vec<i32> = q
            .bytes
            .chunks_exact(2)
            .map(|p| {
                let lo = i16::from((p[0] ^ 0x80) as i8) as u16 as u32;
                let hi = i16::from((p[1] ^ 0x80) as i8) as u16 as u32;
                (lo | hi << 16) as i32
            })
            .collect();
        let w = Wide {
            pairs: &pairs,
            scales: &q.scale,
            matrix,
            panels,
            bias,
            out,
        };
        // Two registers per token (its block sum and its running total): six
        // tokens at a time fit the sixteen.
        for o in (0..matrix.n).step_by(8) {
            for (t, size) in token_blocks(m, 6) {
                match size {
                    1 => tile_wide::<1>(w, t, o),
                    2 => tile_wide::<2>(w, t, o),
                    3 => tile_wide::<3>(w, t, o),
                    4 => tile_wide::<4>(w, t, o),
                    5 => tile_wide::<5>(w, t, o),
                    _ => tile_wide::<6>(w, t, o),
                }
            }
        }
    }

    /// Blocks of [`BLOCK`] values to bytes (int8 + 128) and one scale each: the
    /// block's vectors in, a horizontal max, then per vector a multiply, a
    /// truncating conversion and a narrowing store.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize(x: &[f32], q: &mut Quantized) {
        let half = _mm512_set1_ps(128.5);
        let (lo, hi) = (_mm512_set1_ps(1.0), _mm512_set1_ps(255.0));
        for (b, (chunk, out)) in x.chunks_exact(BLOCK).zip(q.bytes.chunks_exact_mut(BLOCK)).enumerate() {
            let mut max = _mm512_setzero_ps();
            for i in 0..BLOCK / 16 {
                max = _mm512_max_ps(max, _mm512_abs_ps(_mm512_loadu_ps(chunk.as_ptr().add(i * 16))));
            }
            let max = _mm512_reduce_max_ps(max);
            let s = if max > 0.0 { max / 127.0 } else { 0.0 };
            q.scale[b] = s;
            let inv = _mm512_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
            for i in 0..BLOCK / 16 {
                let v = _mm512_loadu_ps(chunk.as_ptr().add(i * 16));
                let f = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(v, inv, half), lo), hi);
                let bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(f));
                _mm_storeu_si128(out.as_mut_ptr().add(i * 16) as *mut __m128i, bytes);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn run(
        q: &Quantized,
        m: usize,
        matrix: &Int8Matrix,
        panels: &[i8],
        offsets: &[i32],
        bias: &[f32],
        out: *mut f32,
    ) {
        let w = Weights {
            matrix,
            panels,
            offsets,
        };
        for o in (0..matrix.n).step_by(16) {
            for (t, size) in token_blocks(m, 12) {
                match size {
                    1 => tile::<1>(q, t, w, o, bias, out),
                    2 => tile::<2>(q, t, w, o, bias, out),
                    3 => tile::<3>(q, t, w, o, bias, out),
                    4 => tile::<4>(q, t, w, o, bias, out),
                    5 => tile::<5>(q, t, w, o, bias, out),
                    6 => tile::<6>(q, t, w, o, bias, out),
                    7 => tile::<7>(q, t, w, o, bias, out),
                    8 => tile::<8>(q, t, w, o, bias, out),
                    9 => tile::<9>(q, t, w, o, bias, out),
                    10 => tile::<10>(q, t, w, o, bias, out),
                    11 => tile::<11>(q, t, w, o, bias, out),
                    _ => tile::<12>(q, t, w, o, bias, out),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s % 2001) as f32 / 1000.0 - 1.0) * scale
            })
            .collect()
    }

    fn quantized(m: usize, k: usize) -> Quantized {
        Quantized {
            bytes: vec![0u8; m * k],
            scale: vec![0f32; m * (k / BLOCK)],
        }
    }

    #[test]
    fn close_to_the_f32_product() {
        let (m, k, n) = (9, 384, 64);
        let x = values(m * k, 7, 1.0);
        let w = values(n * k, 11, 0.05);
        let b = values(n, 13, 1.0);
        let q = Int8Matrix::new(&w, n, k).unwrap();
        let mut out = vec![f32::NAN; m * n];
        linear(&x, m, &q, &b, &mut out);
        let mut worst = 0f32;
        for t in 0..m {
            for o in 0..n {
                let want: f32 = b[o] + (0..k).map(|i| x[t * k + i] * w[o * k + i]).sum::<f32>();
                worst = worst.max((out[t * n + o] - want).abs());
            }
        }
        // Each product carries about 1 % of error; the sums' scale is about 0.6.
        assert!(worst < 0.02, "worst error {worst} ({})", kernel_name());
    }

    /// The fingerprint of an `-i8` model holds on every CPU only if every path
    /// computes the same bits: quantising, and the products.
    #[test]
    fn every_path_gives_the_same_bits() {
        // Ties (x.5 after scaling), a zero block, and ordinary values.
        let mut x = values(27 * 96, 3, 2.0);
        x[..BLOCK].fill(0.0);
        for (i, v) in x[BLOCK..2 * BLOCK].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        let k = 96;
        for m in [1, 2, 5, 8, 12, 13, 16, 27] {
            let x = &x[..m * k];
            let mut portable = quantized(m, k);
            quantize_portable(x, &mut portable);
            let mut q = quantized(m, k);
            quantize(x, &mut q);
            assert_eq!(portable.bytes, q.bytes, "{m} tokens");
            assert_eq!(portable.scale, q.scale, "{m} tokens");
            for n in [16, 48, 40] {
                let w = values(n * k, 5 + n as u32, 0.1);
                let bias = values(n, 9, 1.0);
                let rows = Int8Matrix::build(&w, n, k, Kind::Rows).unwrap();
                let mut plain = vec![f32::NAN; m * n];
                linear(x, m, &rows, &bias, &mut plain);
                let mut kinds = vec![];
                if avx2() && n.is_multiple_of(8) {
                    kinds.push(Kind::Wide);
                }
                if avx512() && n.is_multiple_of(16) {
                    kinds.push(Kind::Vnni);
                }
                for kind in kinds {
                    let matrix = Int8Matrix::build(&w, n, k, kind).unwrap();
                    let mut out = vec![f32::NAN; m * n];
                    linear(x, m, &matrix, &bias, &mut out);
                    assert_eq!(bits(&plain), bits(&out), "{kind:?}, {m}×{n}");
                }
            }
        }
        if Kind::detect(16) != Kind::Vnni {
            eprintln!(
                "this CPU runs {}: the kernels it lacks were not compared",
                kernel_name()
            );
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }
}
