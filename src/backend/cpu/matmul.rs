//! Y (n × rows) = X (n × cols) · Wᵀ, W quantized (rows × cols) in the file.
//!
//! Activations are quantized once per call to 16-bit integers (see
//! `quant::dot`, "16-bit activations", for why not 8); float weights take
//! f32 activations. The pool splits the weight rows into chunks, and each
//! chunk computes its rows for every token, so a weight row is read from
//! memory once per call whatever the batch size. Each output is produced by
//! exactly one thread with a fixed summation order, so results do not depend
//! on the thread count.

use rayon::prelude::*;
use rayon::ThreadPool;

use super::simd;
use crate::model::weights::Matrix;
use crate::quant::{self, act_format, ActQ16, ActRow};

/// A row-dot kernel for quantized weights: one weight row against up to
/// `simd::MAX_TOKENS` activation rows, one sum per row into `out`.
pub type DotKernel = fn(&[u8], &[ActRow], &mut [f32]);
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

enum Acts<'a> {
    Q16(ActQ16, DotKernel),
    F32(&'a [f32], FloatKernel),
}

pub fn matmul(pool: &ThreadPool, w: &Matrix, wbytes: &[u8], x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n * cols, "{}: activations are not n × cols", w.name);
    assert_eq!(out.len(), n * rows, "{}: output is not n × rows", w.name);
    assert_eq!(wbytes.len(), rows * w.row_bytes, "{}: weight bytes", w.name);
    let acts = match act_format(w.ty) {
        Some(_) => {
            let nb = n * cols / 32;
            let mut a = ActQ16 { d: Vec::with_capacity(nb), q: Vec::with_capacity(n * cols), sum: Vec::with_capacity(nb), dsum: Vec::with_capacity(nb) };
            quant::quantize_q16_into(x, &mut a);
            Acts::Q16(a, simd::q16_kernel(w.ty))
        }
        None => Acts::F32(x, simd::float_kernel(w.ty)),
    };
    let act_rows: Vec<ActRow> = match &acts {
        Acts::Q16(a, _) => (0..n).map(|t| a.row(t, cols)).collect(),
        Acts::F32(..) => Vec::new(),
    };
    let optr = SyncPtr(out.as_mut_ptr());
    let n_chunks = rows.div_ceil(CHUNK_ROWS);
    let body = |ci: usize| {
        let o = optr;
        let mut tmp = [0f32; simd::MAX_TOKENS];
        for r in ci * CHUNK_ROWS..((ci + 1) * CHUNK_ROWS).min(rows) {
            let wr = &wbytes[r * w.row_bytes..(r + 1) * w.row_bytes];
            for t0 in (0..n).step_by(simd::MAX_TOKENS) {
                let nt = (n - t0).min(simd::MAX_TOKENS);
                match &acts {
                    Acts::Q16(_, k) => k(wr, &act_rows[t0..t0 + nt], &mut tmp[..nt]),
                    Acts::F32(xf, k) => {
                        for (t, v) in tmp[..nt].iter_mut().enumerate() {
                            *v = k(wr, &xf[(t0 + t) * cols..(t0 + t + 1) * cols]);
                        }
                    }
                }
                for (t, &v) in tmp[..nt].iter().enumerate() {
                    // SAFETY: (t, r) pairs are disjoint across chunks; out has n × rows.
                    unsafe { *o.0.add((t0 + t) * rows + r) = v };
                }
            }
        }
    };
    if pool.current_num_threads() <= 1 || n_chunks == 1 {
        (0..n_chunks).for_each(body);
    } else {
        pool.install(|| (0..n_chunks).into_par_iter().for_each(body));
    }
}
