//! Y (n × rows) = X (n × cols) · Wᵀ, W quantized (rows × cols) in the file.
//!
//! Activations are quantized once per call, to 8-bit integers by default
//! (16 with `FORGE_ACT16`; see `quant::dot`, "Integer activations"); float
//! weights take f32 activations. The pool splits the weight rows into
//! chunks, and each chunk computes its rows for every token, a group of up
//! to 8 tokens per weight row unpack, so a weight row is read from memory
//! once per call whatever the batch size. Each output is produced by exactly
//! one thread with a fixed summation order, so results do not depend on the
//! thread count.

use rayon::prelude::*;
use rayon::ThreadPool;

use super::simd;
use crate::model::weights::Matrix;
use crate::quant::{self, act_format, ActInt, ActQ, ActRow};

/// A row-dot kernel for quantized weights: one weight row against up to
/// `simd::MAX_TOKENS` activation rows, one sum per row into `out`.
/// cbindgen:ignore
pub type DotKernel<T = i8> = fn(&[u8], &[ActRow<T>], &mut [f32]);
/// A row-dot kernel for float weights against f32 activations.
pub type FloatKernel = fn(&[u8], &[f32]) -> f32;

/// An output pointer shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: users guarantee the tasks write disjoint elements of a live buffer.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Rows per task: enough work to amortise scheduling, small enough to balance.
const CHUNK_ROWS: usize = 16;

pub fn matmul(pool: &ThreadPool, w: &Matrix, wbytes: &[u8], x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n * cols, "{}: activations are not n × cols", w.name);
    assert_eq!(out.len(), n * rows, "{}: output is not n × rows", w.name);
    assert_eq!(wbytes.len(), rows * w.row_bytes, "{}: weight bytes", w.name);
    if let Some(p) = &w.packed {
        let mut a = ActQ::<i8>::with_capacity(n * cols);
        quant::quantize_act_into(x, &mut a);
        let act_rows: Vec<ActRow<i8>> = (0..n).map(|t| a.row(t, cols)).collect();
        return super::packed::matmul(pool, p, &act_rows, out);
    }
    match act_format(w.ty) {
        Some(_) if simd::act16() => quantized(pool, w, wbytes, x, n, out, simd::q16_kernel(w.ty), 4),
        Some(_) => quantized(pool, w, wbytes, x, n, out, simd::a8_kernel(w.ty), simd::MAX_TOKENS),
        None => {
            let k = simd::float_kernel(w.ty);
            for_chunks(pool, rows, out, |r, o| {
                let wr = &wbytes[r * w.row_bytes..(r + 1) * w.row_bytes];
                for t in 0..n {
                    // SAFETY: (t, r) pairs are disjoint across chunks; out has n × rows.
                    unsafe { *o.0.add(t * rows + r) = k(wr, &x[t * cols..(t + 1) * cols]) };
                }
            });
        }
    }
}

/// Quantize x once, then each weight row against groups of `group` tokens.
#[allow(clippy::too_many_arguments)]
fn quantized<T: ActInt>(pool: &ThreadPool, w: &Matrix, wbytes: &[u8], x: &[f32], n: usize, out: &mut [f32], k: DotKernel<T>, group: usize) {
    let (rows, cols) = (w.rows, w.cols);
    let mut a = ActQ::<T>::with_capacity(n * cols);
    quant::quantize_act_into(x, &mut a);
    let act_rows: Vec<ActRow<T>> = (0..n).map(|t| a.row(t, cols)).collect();
    let ahead = PREFETCH_BYTES.div_ceil(w.row_bytes);
    for_chunks(pool, rows, out, |r, o| {
        if r % CHUNK_ROWS == 0 {
            (r..(r + ahead).min(rows)).for_each(|p| prefetch(wbytes, p * w.row_bytes, w.row_bytes));
        }
        if r + ahead < rows {
            prefetch(wbytes, (r + ahead) * w.row_bytes, w.row_bytes);
        }
        let wr = &wbytes[r * w.row_bytes..(r + 1) * w.row_bytes];
        let mut tmp = [0f32; simd::MAX_TOKENS];
        for t0 in (0..n).step_by(group) {
            let nt = (n - t0).min(group);
            k(wr, &act_rows[t0..t0 + nt], &mut tmp[..nt]);
            for (t, &v) in tmp[..nt].iter().enumerate() {
                // SAFETY: (t, r) pairs are disjoint across chunks; out has n × rows.
                unsafe { *o.0.add((t0 + t) * rows + r) = v };
            }
        }
    });
}

/// How far ahead of the row being multiplied its weights are prefetched.
/// A row's dot keeps one core busy while the hardware prefetcher alone
/// fetches too little: requesting the rows ~6 KB ahead took a one-token
/// Q5_0 product out of cache from 5.3 to 9.1 G weights/s (PERFORMANCE.md).
const PREFETCH_BYTES: usize = 6144;

/// Ask for `len` bytes at `off` of `bytes` to be brought into the cache.
#[inline]
fn prefetch(bytes: &[u8], off: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for o in (off..(off + len).min(bytes.len())).step_by(64) {
        // SAFETY: o < bytes.len(); a prefetch never faults and changes no state.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(o) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, off, len);
}

/// Run `row(r, out)` for every weight row, CHUNK_ROWS rows per task.
fn for_chunks(pool: &ThreadPool, rows: usize, out: &mut [f32], row: impl Fn(usize, SyncPtr) + Sync) {
    let optr = SyncPtr(out.as_mut_ptr());
    let n_chunks = rows.div_ceil(CHUNK_ROWS);
    let body = |ci: usize| {
        for r in ci * CHUNK_ROWS..((ci + 1) * CHUNK_ROWS).min(rows) {
            row(r, optr);
        }
    };
    if pool.current_num_threads() <= 1 || n_chunks == 1 {
        (0..n_chunks).for_each(body);
    } else {
        pool.install(|| (0..n_chunks).into_par_iter().for_each(body));
    }
}
