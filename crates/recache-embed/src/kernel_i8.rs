//! `y = x·Wᵀ + b` in 8-bit integers, on AVX-512 VNNI (`vpdpbusd`: 64 byte products
//! summed into 16 lanes per instruction, four times the f32 multiply-adds).
//!
//! Weights: int8, one scale per output row, in panels of 16 outputs where each
//! 64-byte vector holds four consecutive inputs of each output. Activations: int8
//! with one scale per token and block of 32 inputs (outliers in one block do not
//! flatten the rest), offset by 128 to the unsigned bytes `vpdpbusd` takes; the
//! offset's contribution (128 · Σ weights of the block) is subtracted per block.

/// A linear layer's weights for the VNNI kernel.
pub struct Int8Matrix {
    /// Panels of 16 outputs: `k / 4` vectors of 64 bytes each.
    panels: Vec<i8>,
    /// Per panel and block of 32 inputs: 128 · Σ weights, one lane per output.
    offsets: Vec<i32>,
    /// Per output: the weight scale.
    scale: Vec<f32>,
    n: usize,
    k: usize,
}

/// Whether this CPU runs the kernel, for a layer of `n` outputs and `k` inputs.
pub fn available(n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        n.is_multiple_of(16)
            && k.is_multiple_of(32)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (n, k);
        false
    }
}

impl Int8Matrix {
    /// `values` is `n × k`, row-major. `None` when [`available`] says no.
    pub fn new(values: &[f32], n: usize, k: usize) -> Option<Self> {
        if !available(n, k) || values.len() != n * k {
            return None;
        }
        let mut panels = vec![0i8; n * k];
        let mut offsets = vec![0i32; (n / 16) * (k / 32) * 16];
        let mut scale = vec![0f32; n];
        for o in 0..n {
            let row = &values[o * k..(o + 1) * k];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale[o] = s;
            let (p, j) = (o / 16, o % 16);
            for (i, v) in row.iter().enumerate() {
                let q = (v / s).round().clamp(-127.0, 127.0) as i8;
                panels[p * (k * 16) + (i / 4) * 64 + j * 4 + i % 4] = q;
                offsets[(p * (k / 32) + i / 32) * 16 + j] += 128 * q as i32;
            }
        }
        Some(Self {
            panels,
            offsets,
            scale,
            n,
            k,
        })
    }
}

/// Activations of `m` tokens quantised for the kernel.
struct Quantized {
    /// `m × k` unsigned bytes (int8 + 128).
    bytes: Vec<u8>,
    /// `m × k/32` scales.
    scale: Vec<f32>,
}

/// `out[t][o] = bias[o] + Σ_i x[t][i] · w[o][i]`, `x` being `m × k` and `out` `m × n`.
pub fn linear(x: &[f32], m: usize, w: &Int8Matrix, bias: &[f32], out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k && bias.len() >= n && out.len() >= m * n);
    let mut q = Quantized {
        bytes: vec![0u8; m * k],
        scale: vec![0f32; m * (k / 32)],
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: an `Int8Matrix` exists only where `available` found the features
    // (so there is no other path to fall back to); `x` holds `m × k` values and
    // `out` `m × n`.
    unsafe {
        x86::quantize(&x[..m * k], &mut q);
        x86::run(&q, m, w, bias, out.as_mut_ptr())
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("Int8Matrix::new returns None off x86_64");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Int8Matrix, Quantized};
    use std::arch::x86_64::*;

    /// Outputs `o..o + 16` of tokens `0..T` (their bytes and scales from `t0`).
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn tile<const T: usize>(q: &Quantized, t0: usize, w: &Int8Matrix, o: usize, bias: &[f32], out: *mut f32) {
        let (n, k) = (w.n, w.k);
        let blocks = k / 32;
        let panel = w.panels.as_ptr().add((o / 16) * (k * 16));
        let offsets = w.offsets.as_ptr().add((o / 16) * blocks * 16);
        let xq = q.bytes.as_ptr().add(t0 * k);
        let xs = q.scale.as_ptr().add(t0 * blocks);
        let mut accf = [_mm512_setzero_ps(); T];
        for b in 0..blocks {
            let mut acci = [_mm512_setzero_si512(); T];
            for quad in 0..8 {
                let wv = _mm512_loadu_si512(panel.add((b * 8 + quad) * 64) as *const __m512i);
                for (t, a) in acci.iter_mut().enumerate() {
                    let bytes = (xq.add(t * k + b * 32 + quad * 4) as *const i32).read_unaligned();
                    *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(bytes), wv);
                }
            }
            let corr = _mm512_loadu_si512(offsets.add(b * 16) as *const __m512i);
            for (t, (f, a)) in accf.iter_mut().zip(acci.iter()).enumerate() {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(*a, corr));
                *f = _mm512_fmadd_ps(v, _mm512_set1_ps(*xs.add(t * blocks + b)), *f);
            }
        }
        let s = _mm512_loadu_ps(w.scale.as_ptr().add(o));
        let bv = _mm512_loadu_ps(bias.as_ptr().add(o));
        for (t, f) in accf.iter().enumerate() {
            _mm512_storeu_ps(out.add((t0 + t) * n + o), _mm512_fmadd_ps(*f, s, bv));
        }
    }

    /// Blocks of 32 values to bytes (int8 + 128) and one scale each: two vectors
    /// in, a horizontal max, a multiply, a truncating conversion and two narrowing
    /// stores per block.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize(x: &[f32], q: &mut Quantized) {
        let half = _mm512_set1_ps(128.5);
        let (lo, hi) = (_mm512_set1_ps(1.0), _mm512_set1_ps(255.0));
        for (b, (chunk, out)) in x.chunks_exact(32).zip(q.bytes.chunks_exact_mut(32)).enumerate() {
            let a = _mm512_loadu_ps(chunk.as_ptr());
            let c = _mm512_loadu_ps(chunk.as_ptr().add(16));
            let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
            let s = if max > 0.0 { max / 127.0 } else { 0.0 };
            q.scale[b] = s;
            let inv = _mm512_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
            for (i, v) in [a, c].into_iter().enumerate() {
                let f = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(v, inv, half), lo), hi);
                let bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(f));
                _mm_storeu_si128(out.as_mut_ptr().add(i * 16) as *mut __m128i, bytes);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn run(q: &Quantized, m: usize, w: &Int8Matrix, bias: &[f32], out: *mut f32) {
        let blocks = m.div_ceil(12);
        let mut o = 0;
        while o < w.n {
            let mut t = 0;
            for b in 0..blocks {
                let size = (m - t).div_ceil(blocks - b);
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
                t += size;
            }
            o += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_the_f32_product() {
        let (m, k, n) = (9, 384, 64);
        if !available(n, k) {
            eprintln!("no AVX-512 VNNI here: skipped");
            return;
        }
        let mut s = 7u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        };
        let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| next() * 0.05).collect();
        let b: Vec<f32> = (0..n).map(|_| next()).collect();
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
        assert!(worst < 0.02, "worst error {worst}");
    }
}
