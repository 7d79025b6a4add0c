//! The one product a sentence encoder spends its time in: `y = x·Wᵀ + b` with few
//! rows in `x` (the tokens of one text) and a large `W` (a linear layer).
//!
//! A general matrix product (candle's, through `gemm`) repacks `W` on every call:
//! for a nine-token prompt that copy costs more than the arithmetic. Here `W` is
//! laid out once, at load, for the instruction set found at run time, and read
//! in place on every call while the next weights are prefetched. AVX-512: panels
//! of 32 outputs, each input's weights multiplied by up to 12 tokens with the
//! outputs in registers. AVX2: 4 rows × 2 tokens of dot products. Elsewhere,
//! plain loops.
//!
//! A short prompt's pass is bound by reading the weights from memory (each is used
//! for a handful of tokens only), so they are kept as IEEE half floats and widened
//! in registers (`vcvtph2ps`): half the bytes of f32, and the arithmetic stays f32.
//! The output rows are split between the rayon pool's threads when the product is
//! big enough to pay for the hand-off.

use std::ops::Range;

/// Products smaller than this many multiply-adds run on the calling thread.
/// Short prompts stay below it: on the 2-core test VM, splitting a 16-token
/// pass's products between two threads saved nothing (3.3–3.6 ms either way).
const PARALLEL_MIN: usize = 1 << 24;

/// Weights as IEEE binary16 bits, laid out for the instruction set chosen when
/// they were loaded. AVX-512: panels of 32 outputs, each panel `k × 32` and
/// contiguous, so a panel is one sequential read and each input's 32 weights are
/// one cache line. Otherwise `n × k`, row-major.
pub struct HalfMatrix {
    bits: Vec<u16>,
    isa: Isa,
}

impl HalfMatrix {
    /// `values` is `n × k`, row-major (a linear layer's weight).
    pub fn new(values: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(values.len(), n * k);
        Self::with_isa(values, n, k, Isa::detect(k, n))
    }

    fn with_isa(values: &[f32], n: usize, k: usize, isa: Isa) -> Self {
        let half = |v: f32| half::f16::from_f32(v).to_bits();
        let bits = if isa.transposed() {
            let mut bits = vec![0u16; n * k];
            for o in 0..n {
                for i in 0..k {
                    bits[(o / 32) * (k * 32) + i * 32 + o % 32] = half(values[o * k + i]);
                }
            }
            bits
        } else {
            values.iter().map(|v| half(*v)).collect()
        };
        Self { bits, isa }
    }

    #[cfg(test)]
    fn get(&self, i: usize) -> f32 {
        half::f16::from_bits(self.bits[i]).to_f32()
    }
}

/// `out[t][o] = bias[o] + Σ_i x[t][i] · w[o][i]` for `t < m`, `o < n`.
/// `x` is `m × k`, `w` is `n × k`, `out` is `m × n`, all row-major.
pub fn linear(x: &[f32], m: usize, k: usize, w: &HalfMatrix, n: usize, bias: &[f32], out: &mut [f32]) {
    let isa = w.isa;
    let w = &w.bits[..];
    assert!(x.len() >= m * k && w.len() >= n * k && bias.len() >= n && out.len() >= m * n);
    let block = isa.block();
    let threads = if m * n * k < PARALLEL_MIN {
        1
    } else {
        rayon::current_num_threads().clamp(1, n.div_ceil(block))
    };
    let p = Product {
        x,
        m,
        k,
        w,
        n,
        bias,
        out: out.as_mut_ptr(),
    };
    if threads == 1 {
        // SAFETY: `out` holds m × n values and this call writes each once.
        unsafe { isa.rows(&p, 0..n) };
        return;
    }
    // Chunks of whole blocks of outputs, one per thread.
    let per = n.div_ceil(threads).div_ceil(block) * block;
    rayon::scope(|s| {
        for c in 0..threads {
            let rows = (c * per).min(n)..((c + 1) * per).min(n);
            if rows.is_empty() {
                continue;
            }
            let p = &p;
            s.spawn(move |_| {
                // SAFETY: each chunk writes only its own columns `rows` of `out`,
                // which outlives the scope; the chunks are disjoint.
                unsafe { isa.rows(p, rows) };
            });
        }
    });
}

/// One product's operands, as every instruction set's loop takes them: `x` is
/// `m × k`, `w` the weights in the layout of the matrix's instruction set, `out`
/// `m × n`.
#[derive(Clone, Copy)]
struct Product<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [u16],
    n: usize,
    bias: &'a [f32],
    out: *mut f32,
}

// SAFETY: `out` is shared only to hand disjoint columns of one output buffer to
// scoped threads.
unsafe impl Send for Product<'_> {}
unsafe impl Sync for Product<'_> {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// `(first token, tokens)` of each block when `m` tokens are cut into blocks of
/// at most `most`, as even as they can be: 16 tokens in blocks of 12 are 8 + 8,
/// not 12 + 4, since each block reads the weights again.
pub(crate) fn token_blocks(m: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let blocks = m.div_ceil(most);
    (0..blocks).scan(0, move |t, b| {
        let size = (m - *t).div_ceil(blocks - b);
        let first = *t;
        *t += size;
        Some((first, size))
    })
}

/// Which kernel runs on this CPU, for a layer of typical shape (for benchmarks and logs).
pub(crate) fn kernel_name() -> &'static str {
    match Isa::detect(384, 384) {
        Isa::Scalar => "f16 portable",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "f16 avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "f16 avx512",
    }
}

impl Isa {
    fn detect(k: usize, n: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if n.is_multiple_of(32) && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if k.is_multiple_of(8)
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        let _ = (k, n);
        Isa::Scalar
    }

    /// Whether the weights are stored in panels of 32 outputs.
    fn transposed(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Isa::Avx512 {
            return true;
        }
        false
    }

    /// Outputs computed together (a thread's share is a multiple of it).
    fn block(self) -> usize {
        if self.transposed() {
            32
        } else {
            4
        }
    }

    /// Writes the columns `rows` of `p.out` (`m × n`).
    ///
    /// # Safety
    /// `p.out` must point to `m × n` writable values; the CPU must support the
    /// instruction set `detect` chose.
    unsafe fn rows(self, p: &Product<'_>, rows: Range<usize>) {
        match self {
            Isa::Scalar => scalar_rows(p, rows),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::avx2_rows(p, rows),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::avx512_cols(p, rows),
        }
    }
}

unsafe fn scalar_rows(p: &Product<'_>, rows: Range<usize>) {
    let Product {
        x,
        m,
        k,
        w,
        n,
        bias,
        out,
    } = *p;
    for o in rows {
        let wr: Vec<f32> = w[o * k..(o + 1) * k]
            .iter()
            .map(|b| half::f16::from_bits(*b).to_f32())
            .collect();
        for t in 0..m {
            let xr = &x[t * k..(t + 1) * k];
            // Eight partial sums, so the loop vectorises without reassociating.
            let mut acc = [0f32; 8];
            let mut wc = wr.chunks_exact(8);
            let mut xc = xr.chunks_exact(8);
            for (a, b) in (&mut wc).zip(&mut xc) {
                for l in 0..8 {
                    acc[l] += a[l] * b[l];
                }
            }
            let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * b).sum();
            *out.add(t * n + o) = bias[o] + acc.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Product;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Outputs `o..o + 32` of tokens `0..T` (from `x`, `T × k`), from the panel of
    /// those outputs: each input `i` widens one cache line of weights (32 half
    /// floats) and adds it, times `x[t][i]`, to every token's accumulators. No
    /// horizontal sums, and each output vector is stored whole. (One output
    /// vector per input and up to 24 tokens a block was tried too: no difference
    /// this VM's run-to-run noise could show.)
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn cols512<const T: usize>(
        x: *const f32,
        k: usize,
        wt: *const u16,
        n: usize,
        o: usize,
        bias: *const f32,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; T];
        let mut wp = wt.add(o * k);
        for i in 0..k {
            _mm_prefetch::<_MM_HINT_T0>(wp.add(32 * 16) as *const i8);
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(wp as *const __m256i));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(16) as *const __m256i));
            for (t, a) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*x.add(t * k + i));
                a[0] = _mm512_fmadd_ps(w0, xb, a[0]);
                a[1] = _mm512_fmadd_ps(w1, xb, a[1]);
            }
            wp = wp.add(32);
        }
        let (b0, b1) = (_mm512_loadu_ps(bias.add(o)), _mm512_loadu_ps(bias.add(o + 16)));
        for (t, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(t * n + o), _mm512_add_ps(a[0], b0));
            _mm512_storeu_ps(out.add(t * n + o + 16), _mm512_add_ps(a[1], b1));
        }
    }

    /// Sums of `R` weight rows × `T` tokens, `k` a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn tile256<const R: usize, const T: usize>(x: *const f32, k: usize, w: *const f32) -> [[f32; T]; R] {
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut i = 0;
        while i < k {
            let mut xv = [_mm256_setzero_ps(); T];
            for (t, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add(t * k + i));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(w.add(r * k + i));
                for (a, xt) in row.iter_mut().zip(xv.iter()) {
                    *a = _mm256_fmadd_ps(wv, *xt, *a);
                }
            }
            i += 8;
        }
        let mut sums = [[0f32; T]; R];
        for (s, a) in sums.iter_mut().zip(acc.iter()) {
            for (st, at) in s.iter_mut().zip(a.iter()) {
                let hi = _mm256_extractf128_ps(*at, 1);
                let q = _mm_add_ps(_mm256_castps256_ps128(*at), hi);
                let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
                *st = _mm_cvtss_f32(q);
            }
        }
        sums
    }

    /// Asks for the next block's four weight rows while this one is computed: a
    /// weight row is read once per call, so it comes from memory, not a cache.
    #[inline(always)]
    unsafe fn prefetch_rows(w: &[u16], k: usize, from: usize, end: usize) {
        let until = (from + 4).min(end);
        if from >= until {
            return;
        }
        let start = w.as_ptr().add(from * k) as *const i8;
        let bytes = (until - from) * k * 2;
        let mut off = 0;
        while off < bytes {
            _mm_prefetch::<_MM_HINT_T0>(start.add(off));
            off += 64;
        }
    }

    /// `len` half floats (a multiple of 8) to f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn widen256(src: *const u16, len: usize, dst: *mut f32) {
        let mut i = 0;
        while i < len {
            _mm256_storeu_ps(
                dst.add(i),
                _mm256_cvtph_ps(_mm_loadu_si128(src.add(i) as *const __m128i)),
            );
            i += 8;
        }
    }

    /// One block of `R` rows starting at `o`, over every token.
    macro_rules! block {
        ($tile:ident, $R:literal, $T:literal, $x:ident, $m:ident, $k:ident, $wp:expr, $n:ident, $bias:ident, $o:ident, $out:ident) => {{
            let wp: *const f32 = $wp;
            let mut t = 0;
            while t + $T <= $m {
                let s = $tile::<$R, $T>($x.as_ptr().add(t * $k), $k, wp);
                for (r, sr) in s.iter().enumerate() {
                    for (j, v) in sr.iter().enumerate() {
                        *$out.add((t + j) * $n + $o + r) = $bias[$o + r] + v;
                    }
                }
                t += $T;
            }
            while t < $m {
                let s = $tile::<$R, 1>($x.as_ptr().add(t * $k), $k, wp);
                for (r, sr) in s.iter().enumerate() {
                    *$out.add(t * $n + $o + r) = $bias[$o + r] + sr[0];
                }
                t += 1;
            }
        }};
    }

    /// Writes the outputs `cols` (32-aligned blocks) of every token; `w` is in panels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_cols(p: &Product<'_>, cols: Range<usize>) {
        let Product {
            x,
            m,
            k,
            w,
            n,
            bias,
            out,
        } = *p;
        macro_rules! tokens {
            ($T:literal, $t:expr, $o:expr) => {
                cols512::<$T>(
                    x.as_ptr().add($t * k),
                    k,
                    w.as_ptr(),
                    n,
                    $o,
                    bias.as_ptr(),
                    out.add($t * n),
                )
            };
        }
        for o in cols.step_by(32) {
            for (t, size) in super::token_blocks(m, 12) {
                match size {
                    1 => tokens!(1, t, o),
                    2 => tokens!(2, t, o),
                    3 => tokens!(3, t, o),
                    4 => tokens!(4, t, o),
                    5 => tokens!(5, t, o),
                    6 => tokens!(6, t, o),
                    7 => tokens!(7, t, o),
                    8 => tokens!(8, t, o),
                    9 => tokens!(9, t, o),
                    10 => tokens!(10, t, o),
                    11 => tokens!(11, t, o),
                    _ => tokens!(12, t, o),
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2_rows(p: &Product<'_>, rows: Range<usize>) {
        let Product {
            x,
            m,
            k,
            w,
            n,
            bias,
            out,
        } = *p;
        let mut buf = vec![0f32; 4 * k];
        let mut o = rows.start;
        while o + 4 <= rows.end {
            prefetch_rows(w, k, o + 4, rows.end);
            widen256(w.as_ptr().add(o * k), 4 * k, buf.as_mut_ptr());
            block!(tile256, 4, 2, x, m, k, buf.as_ptr(), n, bias, o, out);
            o += 4;
        }
        while o < rows.end {
            widen256(w.as_ptr().add(o * k), k, buf.as_mut_ptr());
            block!(tile256, 1, 2, x, m, k, buf.as_ptr(), n, bias, o, out);
            o += 1;
        }
    }
}

/// Timing probe for the benchmark example (not part of the API).
#[doc(hidden)]
pub fn probe(m: usize, k: usize, n: usize, mats: usize, reps: usize) -> f64 {
    let ws: Vec<HalfMatrix> = (0..mats)
        .map(|i| HalfMatrix::new(&vec![0.001 * i as f32; n * k], n, k))
        .collect();
    let x = vec![0.5f32; m * k];
    let b = vec![0f32; n];
    let mut out = vec![0f32; m * n];
    let t = std::time::Instant::now();
    for r in 0..reps {
        linear(&x, m, k, &ws[r % mats], n, &b, &mut out);
    }
    t.elapsed().as_secs_f64() * 1e6 / reps as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_blocks_are_even_and_cover_every_token() {
        for most in [6, 12] {
            for m in 1..=40 {
                let blocks: Vec<(usize, usize)> = token_blocks(m, most).collect();
                assert_eq!(blocks.len(), m.div_ceil(most));
                let mut next = 0;
                for &(first, size) in &blocks {
                    assert_eq!(first, next, "{m} tokens in blocks of {most}");
                    assert!((1..=most).contains(&size));
                    next += size;
                }
                assert_eq!(next, m);
                let sizes = blocks.iter().map(|b| b.1);
                assert!(sizes.clone().max().unwrap() - sizes.min().unwrap() <= 1);
            }
        }
    }

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for t in 0..m {
            for o in 0..n {
                let mut s = bias[o] as f64;
                for i in 0..k {
                    s += x[t * k + i] as f64 * w[o * k + i] as f64;
                }
                out[t * n + o] = s as f32;
            }
        }
        out
    }

    /// The values a half-float matrix holds, so the reference sees the same weights.
    fn round_half(v: &[f32]) -> Vec<f32> {
        let h = HalfMatrix::with_isa(v, v.len(), 1, Isa::Scalar);
        (0..v.len()).map(|i| h.get(i)).collect()
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_a_plain_product_on_every_shape() {
        // Token counts around the 4- and 2-token blocks, row counts around the
        // 4-row blocks and the parallel split, widths for each instruction set.
        for &(m, k, n) in &[
            (1, 16, 4),
            (3, 32, 5),
            (9, 384, 384),
            (7, 384, 1536),
            (300, 384, 7),
            (5, 24, 9),
            (2, 13, 3),
            (64, 1536, 384),
            (13, 64, 96),
            (25, 32, 32),
            (49, 48, 64),
            (12, 16, 32),
        ] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let b = data(n, 3);
            let w = round_half(&w);
            let want = reference(&x, m, k, &w, n, &b);
            let mut isas = vec![Isa::Scalar, Isa::detect(k, n)];
            #[cfg(target_arch = "x86_64")]
            if k % 8 == 0 && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
                isas.push(Isa::Avx2);
            }
            for isa in isas {
                let mut out = vec![f32::NAN; m * n];
                linear(&x, m, k, &HalfMatrix::with_isa(&w, n, k, isa), n, &b, &mut out);
                for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g - r).abs() <= 1e-3 * (1.0 + r.abs()),
                        "{isa:?} m={m} k={k} n={n} at {i}: {g} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn scalar_path_matches_too() {
        let (m, k, n) = (6, 40, 10);
        let (x, w, b) = (data(m * k, 4), round_half(&data(n * k, 5)), data(n, 6));
        let mut out = vec![f32::NAN; m * n];
        let half = HalfMatrix::with_isa(&w, n, k, Isa::Scalar);
        let p = Product {
            x: &x,
            m,
            k,
            w: &half.bits,
            n,
            bias: &b,
            out: out.as_mut_ptr(),
        };
        unsafe { Isa::Scalar.rows(&p, 0..n) };
        let want = reference(&x, m, k, &w, n, &b);
        for (g, r) in out.iter().zip(&want) {
            assert!((g - r).abs() <= 1e-3 * (1.0 + r.abs()));
        }
    }
}
