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
use std::borrow::Cow;
use std::sync::OnceLock;

use super::simd;
use crate::model::weights::Matrix;
use crate::quant::{self, act_format, ActInt, ActQ, ActRow};

/// A row-dot kernel for quantized weights: one weight row against up to
/// `simd::MAX_TOKENS` activation rows, one sum per row into `out`.
/// cbindgen:ignore
pub type DotKernel<T = i8> = fn(&[u8], &[ActRow<T>], &mut [f32]);
/// A row-dot kernel for float weights against f32 activations.
/// Converts one row of float weights (F32, F16, BF16 bytes) to f32.
pub type FloatKernel = fn(&[u8], &mut [f32]);

thread_local! {
    /// One float weight row in f32, per worker thread.
    static FLOAT_ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An output pointer shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: users guarantee the tasks write disjoint elements of a live buffer.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Rows per task: enough work to amortise scheduling, small enough to balance.
const CHUNK_ROWS: usize = 16;

/// 8-bit activations: each row's quants, their residual in outlier blocks
/// (`quant::quantize_a8_split_row`), and per row the residual's nonzero
/// blocks, the only ones multiplied.
struct A8 {
    main: ActQ<i8>,
    resid: ActQ<i8>,
    lists: Vec<Vec<u32>>,
    /// The lists by block ([`BlockChunk`]), made once for every matrix.
    chunks: Vec<BlockChunk>,
}

/// One matmul input, X (n × cols), quantized at most once per activation
/// width however many matrices read it (q, k and v; gate and up).
pub struct Input<'a> {
    x: &'a [f32],
    n: usize,
    cols: usize,
    a8: OnceLock<A8>,
    a16: OnceLock<ActQ<i16>>,
}

impl<'a> Input<'a> {
    pub fn new(x: &'a [f32], n: usize) -> Input<'a> {
        assert!(if n == 0 { x.is_empty() } else { x.len().is_multiple_of(n) }, "{} activations are not {n} rows", x.len());
        Input { x, n, cols: x.len().checked_div(n).unwrap_or(0), a8: OnceLock::new(), a16: OnceLock::new() }
    }

    /// The activations, n × cols.
    pub fn x(&self) -> &'a [f32] {
        self.x
    }

    /// Rows (tokens).
    pub fn n(&self) -> usize {
        self.n
    }

    fn a8(&self, pool: &ThreadPool) -> &A8 {
        self.a8.get_or_init(|| {
            let (n, cols) = (self.n, self.cols);
            let (mut a, mut ar) = (ActQ::<i8>::default(), ActQ::<i8>::default());
            if n >= 32 && pool.current_num_threads() > 1 {
                // prefill: the rows split among the pool, not left to one
                // thread (a few rows cost less than the pool's dispatch)
                let rows: Vec<_> = a.rows_mut(n, cols).into_iter().zip(ar.rows_mut(n, cols)).collect();
                pool.install(|| self.x.par_chunks_exact(cols).zip(rows).for_each(|(xr, (m, r))| quant::quantize_a8_split_row(xr, m, r)));
            } else {
                quant::quantize_a8_split_into(self.x, cols, &mut a, &mut ar);
            }
            let lists: Vec<Vec<u32>> = (0..n).map(|t| ar.row(t, cols).d.iter().enumerate().filter(|(_, &d)| d != 0.0).map(|(b, _)| b as u32).collect()).collect();
            let chunks = block_chunks(&lists, cols / 32);
            A8 { main: a, resid: ar, lists, chunks }
        })
    }

    fn a16(&self) -> &ActQ<i16> {
        self.a16.get_or_init(|| {
            let mut a = ActQ::<i16>::with_capacity(self.x.len());
            quant::quantize_act_into(self.x, &mut a);
            a
        })
    }
}

/// Y (n × rows) = X (n × cols) · Wᵀ.
pub fn matmul(pool: &ThreadPool, w: &Matrix, wbytes: &[u8], x: &[f32], n: usize, out: &mut [f32]) {
    matmul_input(pool, w, wbytes, &Input::new(x, n), out)
}

/// [`matmul`] of an [`Input`] that other matrices may share.
pub fn matmul_input(pool: &ThreadPool, w: &Matrix, wbytes: &[u8], input: &Input, out: &mut [f32]) {
    let (rows, cols, n, x) = (w.rows, w.cols, input.n, input.x);
    if n == 0 {
        assert!(out.is_empty(), "{}: output for no rows", w.name);
        return;
    }
    assert_eq!(input.cols, cols, "{}: activations are not n × cols", w.name);
    assert_eq!(out.len(), n * rows, "{}: output is not n × rows", w.name);
    assert_eq!(wbytes.len(), rows * w.row_bytes, "{}: weight bytes", w.name);
    if act_format(w.ty).is_some() && !simd::act16() {
        let a = input.a8(pool);
        let main: Vec<ActRow<i8>> = (0..n).map(|t| a.main.row(t, cols)).collect();
        let resid: Vec<ActRow<i8>> = (0..n).map(|t| a.resid.row(t, cols)).collect();
        let resid = Residual::with_chunks(&resid, &a.lists, &a.chunks);
        return match &w.packed {
            Some(p) => super::packed::matmul(pool, p, &main, Some(&resid), out),
            None => quantized(pool, w, wbytes, &main, Some((&resid, simd::a8_listed_kernel(w.ty))), out, simd::a8_kernel(w.ty), simd::MAX_TOKENS),
        };
    }
    match act_format(w.ty) {
        Some(_) => {
            let a = input.a16();
            let main: Vec<ActRow<i16>> = (0..n).map(|t| a.row(t, cols)).collect();
            quantized(pool, w, wbytes, &main, None, out, simd::q16_kernel(w.ty), 4)
        }
        None => {
            // float weights (F32, F16, BF16): each row to f32 once per call,
            // then a vectorised dot with every token row (one order of
            // summation for any n: batched rows equal single ones)
            let k = simd::float_kernel(w.ty);
            for_chunks(pool, rows, out, |r, o| {
                let wr = &wbytes[r * w.row_bytes..(r + 1) * w.row_bytes];
                FLOAT_ROW.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    buf.resize(cols, 0.0);
                    k(wr, &mut buf);
                    for t in 0..n {
                        // SAFETY: (t, r) pairs are disjoint across chunks; out has n × rows.
                        unsafe { *o.0.add(t * rows + r) = crate::model::ops::dot_simd(&buf, &x[t * cols..(t + 1) * cols]) };
                    }
                });
            });
        }
    }
}

/// Residual rows of 8-bit activations, one per token, and the blocks where
/// each is nonzero, checked once by [`Residual::new`] so the kernels that
/// read only the listed blocks need not check them again.
pub struct Residual<'a> {
    rows: &'a [ActRow<'a, i8>],
    lists: &'a [Vec<u32>],
    chunks: Cow<'a, [BlockChunk]>,
}

/// The block lists of the rows turned around, per chunk of up to
/// [`CHUNK_TOKENS`] rows (see [`BlockChunk`]); `nb` blocks per row.
fn block_chunks(lists: &[Vec<u32>], nb: usize) -> Vec<BlockChunk> {
    (0..lists.len())
        .step_by(CHUNK_TOKENS)
        .map(|t0| {
            let n = (lists.len() - t0).min(CHUNK_TOKENS);
            let mut count = vec![0u32; nb + 1];
            for l in &lists[t0..t0 + n] {
                l.iter().for_each(|&b| count[b as usize + 1] += 1);
            }
            for b in 0..nb {
                count[b + 1] += count[b];
            }
            let mut fill = count.clone();
            let mut tok = vec![0u8; count[nb] as usize];
            for (i, l) in lists[t0..t0 + n].iter().enumerate() {
                for &b in l {
                    tok[fill[b as usize] as usize] = i as u8;
                    fill[b as usize] += 1;
                }
            }
            let busy = (0..n).filter(|&i| !lists[t0 + i].is_empty()).map(|i| i as u8).collect();
            let blocks = (0..nb as u32).filter(|&b| count[b as usize] != count[b as usize + 1]).collect();
            BlockChunk { t0, n, start: count, tok, busy, blocks }
        })
        .collect()
}

/// Tokens per [`BlockChunk`].
pub const CHUNK_TOKENS: usize = 64;

/// The same lists turned around for up to [`CHUNK_TOKENS`] rows from `t0`:
/// for each block b, the rows (offsets from `t0`, rising) that list it, at
/// `tok[start[b]..start[b + 1]]`. A kernel unpacks a weight block once for
/// all of them; each row still sums its blocks in rising order, so its
/// result does not depend on the rows it shares a chunk with.
#[derive(Clone)]
pub struct BlockChunk {
    pub t0: usize,
    pub n: usize,
    pub start: Vec<u32>,
    pub tok: Vec<u8>,
    /// The blocks some row lists, rising: the kernels visit only these
    /// (a decode step lists a few of a row's blocks).
    pub blocks: Vec<u32>,
    /// The rows (offsets from `t0`) with any block listed.
    pub busy: Vec<u8>,
}

impl<'a> Residual<'a> {
    /// Panics unless there is one list per row and each names blocks of its
    /// row in rising order; every block not listed must be zero.
    pub fn new(rows: &'a [ActRow<'a, i8>], lists: &'a [Vec<u32>]) -> Residual<'a> {
        let nb = Self::check(rows, lists);
        Residual { rows, lists, chunks: Cow::Owned(block_chunks(lists, nb)) }
    }

    /// [`Residual::new`] with the chunks already made from the same lists
    /// (an [`Input`]'s, made once for every matrix that reads it).
    fn with_chunks(rows: &'a [ActRow<'a, i8>], lists: &'a [Vec<u32>], chunks: &'a [BlockChunk]) -> Residual<'a> {
        Self::check(rows, lists);
        assert_eq!(chunks.iter().map(|c| c.n).sum::<usize>(), rows.len(), "chunks made for other lists");
        Residual { rows, lists, chunks: Cow::Borrowed(chunks) }
    }

    /// [`Residual::new`]'s checks; returns the blocks per row.
    fn check(rows: &[ActRow<'_, i8>], lists: &[Vec<u32>]) -> usize {
        assert_eq!(rows.len(), lists.len(), "one block list per residual row");
        let nb = rows.first().map_or(0, |x| x.q.len() / 32);
        for (x, l) in rows.iter().zip(lists) {
            assert!(x.d.len() == nb && x.sum.len() == nb && x.dsum.len() == nb && x.sum16.len() == 2 * nb && x.q.len() == nb * 32, "residual rows' scales and sums do not match their quants, or their lengths differ");
            assert!(l.windows(2).all(|p| p[0] < p[1]) && l.last().is_none_or(|&b| (b as usize) < nb), "a block list is not rising indices below {nb}");
            // what the kernels skip must be zero: true by construction
            // (quantize_a8_split_row), so checked in debug builds only
            debug_assert!(x.d.iter().enumerate().all(|(b, &d)| l.contains(&(b as u32)) || (d == 0.0 && x.q[b * 32..(b + 1) * 32].iter().all(|&q| q == 0))));
        }
        nb
    }

    pub fn rows(&self) -> &'a [ActRow<'a, i8>] {
        self.rows
    }
    pub fn lists(&self) -> &'a [Vec<u32>] {
        self.lists
    }
    /// The lists by block, per chunk of rows (see [`BlockChunk`]).
    pub fn chunks(&self) -> &[BlockChunk] {
        &self.chunks
    }
    /// Values per row.
    pub fn cols(&self) -> usize {
        self.rows.first().map_or(0, |x| x.q.len())
    }
}

/// Each weight row against groups of `group` activation rows of `main`;
/// then, where given, each token's residual row over its listed blocks is
/// added: a token's output is main + residual, in that order.
#[allow(clippy::too_many_arguments)]
fn quantized<T: ActInt>(
    pool: &ThreadPool,
    w: &Matrix,
    wbytes: &[u8],
    main: &[ActRow<T>],
    resid: Option<(&Residual, simd::ListedKernel)>,
    out: &mut [f32],
    k: DotKernel<T>,
    group: usize,
) {
    let (rows, n) = (w.rows, main.len());
    if let Some((r, _)) = &resid {
        assert!(r.rows().len() == n && r.cols() == w.cols, "{}: residual rows are not one per token of {} values", w.name, w.cols);
    }
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
            k(wr, &main[t0..t0 + nt], &mut tmp[..nt]);
            for (t, &v) in tmp[..nt].iter().enumerate() {
                // SAFETY: (t, r) pairs are disjoint across chunks; out has n × rows.
                unsafe { *o.0.add((t0 + t) * rows + r) = v };
            }
        }
        if let Some((res, listed)) = &resid {
            // SAFETY: as above, for every token of this weight row.
            listed(wr, res, &mut |t, v| unsafe { *o.0.add(t * rows + r) += v });
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
