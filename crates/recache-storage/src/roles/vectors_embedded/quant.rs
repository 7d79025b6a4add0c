//! Quantisation and the scan's arithmetic: i8 codes with one f32 scale per
//! vector, integer dot products, prefetching, and the huge-page growth of the
//! code arrays.

#[allow(unused_imports)]
use super::*;

/// Makes room for `extra` more values. Past 4 MB, a full vector moves to a new
/// allocation twice its size whose 2 MB-aligned interior is backed by huge pages
/// where the kernel allows it (`MADV_HUGEPAGE`, asked before the first touch):
/// an IVF probe reads thousands of rows scattered over the scope, and on 4 KB
/// pages nearly each is a TLB miss as well as a cache miss.
pub(super) fn grow_huge<T: Copy>(v: &mut Vec<T>, extra: usize) {
    const FROM_BYTES: usize = 4 << 20;
    if v.capacity() - v.len() >= extra {
        return;
    }
    let size = std::mem::size_of::<T>();
    let want = (v.len() + extra).max(v.capacity() * 2);
    if want * size < FROM_BYTES {
        v.reserve(extra);
        return;
    }
    let mut grown: Vec<T> = Vec::with_capacity(want);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let base = grown.as_ptr() as usize;
        let (start, end) = (base.next_multiple_of(HUGE), (base + want * size) / HUGE * HUGE);
        if end > start {
            // SAFETY: the range lies inside `grown`'s allocation, which nothing has
            // touched yet; the advice changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    grown.extend_from_slice(v);
    *v = grown;
}

/// Appends the i8 codes of `v` to `out`; returns the scale (`v ≈ codes * scale`).
pub(super) fn quantise_into(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        out.extend(std::iter::repeat_n(0i8, v.len()));
        return 0.0;
    }
    let scale = max / 127.0;
    out.extend(v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
    scale
}

/// f32 query · i8 codes, in eight lanes so the compiler vectorises it.
pub(super) fn dot_i8(a: &[f32], b: &[i8]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i] as f32;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * *y as f32;
    }
    s
}

/// Asks the CPU to start loading `data` into cache (a hint: no effect on results).
#[inline]
pub(super) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr() as *const i8;
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch is a hint that never faults and changes no memory; the
            // address lies inside `data`.
            unsafe { std::arch::x86_64::_mm_prefetch(base.add(off), std::arch::x86_64::_MM_HINT_T0) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// i8 · i8 with i32 sums, in sixteen lanes (the compiler turns the i16
/// products into packed multiply-adds). A search quantises its query once.
pub(super) fn dot_q8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += (x[i] as i16 * y[i] as i16) as i32;
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += *x as i32 * *y as i32;
    }
    s
}
