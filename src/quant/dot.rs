//! Fused dot products: one quantized weight row against an activation vector,
//! either f32 or quantized to 8 bits (Q8_0 for 32-element formats, Q8_K for
//! 256-element ones). These are the primitive of the CPU matmul; this file is
//! the portable scalar version, the readable definition SIMD paths must match.

use super::float::f16_at;
use super::kquants::{self, Unpacked};
use super::legacy;
use super::nonlinear;
use super::types::{GgmlType, QK_K};
use super::{dequantize, Error, Result};

/// The 8-bit activation format a weight type's integer dot product expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    Q8_0,
    Q8K,
}

impl ActFormat {
    pub fn ggml_type(self) -> GgmlType {
        match self {
            ActFormat::Q8_0 => GgmlType::Q8_0,
            ActFormat::Q8K => GgmlType::Q8K,
        }
    }
}

/// Which 8-bit activation format pairs with weights of type `ty`
/// (`None`: use the f32 dot, e.g. for F32/F16/BF16).
pub fn act_format(ty: GgmlType) -> Option<ActFormat> {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Iq4Nl | Mxfp4 => Some(ActFormat::Q8_0),
        Q2K | Q3K | Q4K | Q5K | Q6K | Iq4Xs => Some(ActFormat::Q8K),
        _ => None,
    }
}

/// Quantize an activation vector (length a multiple of the block size).
pub fn quantize_acts(fmt: ActFormat, x: &[f32]) -> Result<Vec<u8>> {
    let ty = fmt.ggml_type();
    let bytes = ty
        .row_bytes(x.len() as u64)
        .ok_or_else(|| Error::InvalidArgument(format!("{} activations need a multiple of {} values, got {}", ty, ty.block_size(), x.len())))?;
    let mut out = vec![0u8; bytes as usize];
    match fmt {
        ActFormat::Q8_0 => legacy::quantize_q8_0(x, &mut out),
        ActFormat::Q8K => kquants::quantize_q8_k(x, &mut out),
    }
    Ok(out)
}

fn check_len(ty: GgmlType, row: &[u8], n: usize) -> Result<()> {
    match ty.row_bytes(n as u64) {
        Some(b) if b as usize == row.len() => Ok(()),
        _ => Err(Error::InvalidArgument(format!("{ty} row of {} bytes does not hold {n} values", row.len()))),
    }
}

/// Σ w[i] * x[i] with `w` a quantized row, dequantized one block at a time.
pub fn vec_dot_f32(ty: GgmlType, row: &[u8], x: &[f32]) -> Result<f32> {
    check_len(ty, row, x.len())?;
    let (bs, ts) = ty.block_geometry();
    let mut buf = [0f32; QK_K];
    let mut acc = 0f64;
    for (b, xb) in row.chunks_exact(ts).zip(x.chunks_exact(bs)) {
        dequantize(ty, b, &mut buf[..bs])?;
        acc += buf[..bs].iter().zip(xb).map(|(w, x)| w * x).sum::<f32>() as f64;
    }
    Ok(acc as f32)
}

#[inline]
fn idot<const N: usize>(a: &[i8; N], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&a, &b)| a as i32 * b as i32).sum()
}

#[inline]
fn q8_0_block(b: &[u8]) -> (f32, &[i8]) {
    // SAFETY: i8 and u8 have the same layout.
    let qs = unsafe { std::slice::from_raw_parts(b[2..34].as_ptr() as *const i8, 32) };
    (f16_at(b, 0), qs)
}

#[inline]
fn q8_k_block(b: &[u8]) -> (f32, &[i8], [i16; 16]) {
    let d = f32::from_le_bytes(b[0..4].try_into().unwrap());
    // SAFETY: i8 and u8 have the same layout.
    let qs = unsafe { std::slice::from_raw_parts(b[4..260].as_ptr() as *const i8, QK_K) };
    let mut bsums = [0i16; 16];
    for (j, s) in bsums.iter_mut().enumerate() {
        *s = i16::from_le_bytes([b[260 + 2 * j], b[261 + 2 * j]]);
    }
    (d, qs, bsums)
}

fn dot_kquant<const N: usize>(u: &Unpacked<N>, xb: &[u8], has_min: bool) -> f32 {
    let (dx, xq, bsums) = q8_k_block(xb);
    let sub = QK_K / N;
    let mut acc = 0f32;
    for s in 0..N {
        let qi: i32 = (s * sub..(s + 1) * sub).map(|i| u.q[i] as i32 * xq[i] as i32).sum();
        let mut t = u.scale[s] * qi as f32;
        if has_min {
            let per = sub / 16;
            let xs: i32 = bsums[s * per..(s + 1) * per].iter().map(|&v| v as i32).sum();
            t -= u.min[s] * xs as f32;
        }
        acc += t;
    }
    dx * acc
}

/// One block of a 32-element type with a single scale and no minimum
/// (Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4): the scale and the signed quants.
#[inline]
fn unpack_scaled32(ty: GgmlType, w: &[u8]) -> (f32, [i8; 32]) {
    match ty {
        GgmlType::Q4_0 => legacy::unpack_q4_0(w),
        GgmlType::Q5_0 => legacy::unpack_q5_0(w),
        GgmlType::Q8_0 => legacy::unpack_q8_0(w),
        GgmlType::Iq4Nl => nonlinear::unpack_iq4_nl(w),
        _ => nonlinear::unpack_mxfp4(w),
    }
}

/// Σ w[i] * x[i] with `w` a quantized row and `x` activations quantized with
/// [`quantize_acts`] in the format [`act_format`] gives for `ty`.
pub fn vec_dot_q8(ty: GgmlType, row: &[u8], xq: &[u8], n: usize) -> Result<f32> {
    use GgmlType::*;
    check_len(ty, row, n)?;
    let fmt = act_format(ty).ok_or_else(|| Error::UnsupportedType { what: format!("{ty} has no 8-bit activation dot product") })?;
    check_len(fmt.ggml_type(), xq, n)?;
    let ts = ty.type_size();
    let xs = fmt.ggml_type().type_size();
    let mut acc = 0f32;
    for (w, x) in row.chunks_exact(ts).zip(xq.chunks_exact(xs)) {
        acc += match ty {
            Q4_0 | Q5_0 | Q8_0 | Iq4Nl | Mxfp4 => {
                let (dw, qw) = unpack_scaled32(ty, w);
                let (dx, qx) = q8_0_block(x);
                dw * dx * idot(&qw, qx) as f32
            }
            Q4_1 | Q5_1 => {
                let (dw, mw, qw) = if ty == Q4_1 { legacy::unpack_q4_1(w) } else { legacy::unpack_q5_1(w) };
                let (dx, qx) = q8_0_block(x);
                let qi: i32 = qw.iter().zip(qx).map(|(&a, &b)| a as i32 * b as i32).sum();
                let sx: i32 = qx.iter().map(|&b| b as i32).sum();
                dw * dx * qi as f32 + mw * dx * sx as f32
            }
            Q2K => dot_kquant(&kquants::unpack_q2_k(w), x, true),
            Q3K => dot_kquant(&kquants::unpack_q3_k(w), x, false),
            Q4K => dot_kquant(&kquants::unpack_q4_k(w), x, true),
            Q5K => dot_kquant(&kquants::unpack_q5_k(w), x, true),
            Q6K => dot_kquant(&kquants::unpack_q6_k(w), x, false),
            Iq4Xs => {
                let (scale, q) = nonlinear::unpack_iq4_xs(w);
                dot_kquant(&Unpacked { q, scale, min: [0.0; 8] }, x, false)
            }
            _ => unreachable!("act_format covers exactly these types"),
        };
    }
    Ok(acc)
}

// ---- Integer activations in blocks of 32 ------------------------------------
//
// The CPU engine quantizes each matmul input once, per 32 values: an f32
// scale d = max|x| / QMAX, integer quants, and the block's sum (for the weight
// formats with a minimum). Two widths share this one definition:
//
// - 8 bits (`ActQ8`, the default): the fast engines' width, one byte per
//   value, so x86 multiplies 32 weights per instruction (`vpdpbusd` /
//   `vpmaddubsw`). Unlike llama.cpp it keeps a per-32 scale for the k-quants
//   too (llama.cpp's q8_K has one per 256) and an f32 scale (q8_0's is f16),
//   and blocks holding a row's outliers get a residual row
//   ([`quantize_a8_split_row`]): on this project's text, teacher-forced
//   top-1 against HF is 98.5% overall this way, where llama.cpp itself
//   scores 95.9% (docs/PERFORMANCE.md).
// - 16 bits (`ActQ16`, `FORGE_ACT16=1`): 1/258 of the 8-bit step, top-1 100%
//   on the same text, at a third to a sixth of the prefill speed and half
//   the decode speed (docs/PERFORMANCE.md).

/// An integer width for quantized activations.
pub trait ActInt: Copy + Default + Into<i32> + Send + Sync + 'static {
    /// The largest quant: a block's max|x| maps to it.
    const QMAX: f32;
    /// `v` already lies in ±QMAX.
    fn from_i32(v: i32) -> Self;
}

impl ActInt for i8 {
    const QMAX: f32 = 127.0;
    #[inline]
    fn from_i32(v: i32) -> i8 {
        v as i8
    }
}

impl ActInt for i16 {
    const QMAX: f32 = 32767.0;
    #[inline]
    fn from_i32(v: i32) -> i16 {
        v as i16
    }
}

/// Activations quantized in blocks of 32 (rows of `cols` values back to back).
#[derive(Debug, Clone, Default)]
pub struct ActQ<T> {
    /// One scale per block of 32.
    pub d: Vec<f32>,
    /// The quants, 32 per block.
    pub q: Vec<T>,
    /// Σ q per block.
    pub sum: Vec<i32>,
    /// Σ q per half block (16 values): two per block, for weights with
    /// 16-value sub-blocks and an offset (Q6_K in the packed CPU layout).
    pub sum16: Vec<i32>,
    /// d × Σ q per block (the block's sum in activation units), for the
    /// minimum terms of Q4_1/Q5_1/K-quants without an int→float per block.
    pub dsum: Vec<f32>,
}

/// 16-bit activations (the accurate option, `FORGE_ACT16=1`).
/// cbindgen:ignore
pub type ActQ16 = ActQ<i16>;
/// 8-bit activations (the default).
/// cbindgen:ignore
pub type ActQ8 = ActQ<i8>;

/// One row (one token's activations) of an [`ActQ`].
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a, T = i16> {
    pub d: &'a [f32],
    pub q: &'a [T],
    pub sum: &'a [i32],
    pub sum16: &'a [i32],
    pub dsum: &'a [f32],
}

impl<T: ActInt> ActQ<T> {
    /// Room for `n` values.
    pub fn with_capacity(n: usize) -> ActQ<T> {
        let nb = n / 32;
        ActQ { d: Vec::with_capacity(nb), q: Vec::with_capacity(n), sum: Vec::with_capacity(nb), sum16: Vec::with_capacity(2 * nb), dsum: Vec::with_capacity(nb) }
    }
    pub fn len(&self) -> usize {
        self.q.len()
    }
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    /// Row `t` of rows of `cols` values.
    pub fn row(&self, t: usize, cols: usize) -> ActRow<'_, T> {
        let b = cols / 32;
        ActRow {
            d: &self.d[t * b..(t + 1) * b],
            q: &self.q[t * cols..(t + 1) * cols],
            sum: &self.sum[t * b..(t + 1) * b],
            sum16: &self.sum16[2 * t * b..2 * (t + 1) * b],
            dsum: &self.dsum[t * b..(t + 1) * b],
        }
    }
    /// Resize to `n` rows of `cols` values (new values zero) and return
    /// every row, to fill.
    pub fn rows_mut(&mut self, n: usize, cols: usize) -> Vec<ActRowMut<'_, T>> {
        let b = cols / 32;
        self.d.resize(n * b, 0.0);
        self.q.resize(n * cols, T::default());
        self.sum.resize(n * b, 0);
        self.sum16.resize(2 * n * b, 0);
        self.dsum.resize(n * b, 0.0);
        let ActQ { d, q, sum, sum16, dsum } = self;
        d.chunks_mut(b.max(1))
            .zip(q.chunks_mut(cols.max(1)))
            .zip(sum.chunks_mut(b.max(1)))
            .zip(sum16.chunks_mut(2 * b.max(1)))
            .zip(dsum.chunks_mut(b.max(1)))
            .map(|((((d, q), sum), sum16), dsum)| ActRowMut { d, q, sum, sum16, dsum })
            .collect()
    }
    pub fn as_row(&self) -> ActRow<'_, T> {
        ActRow { d: &self.d, q: &self.q, sum: &self.sum, sum16: &self.sum16, dsum: &self.dsum }
    }
}

/// The rounding constant 1.5·2^23: (v + MAGIC) − MAGIC rounds an f32 below
/// 2^22 in magnitude to an integer, half to even, and vectorizes.
const MAGIC: f32 = 12_582_912.0;

/// One block's step and its inverse: d = max|x| / QMAX, or a zero block when
/// that step would be subnormal (max|x| below ~1e-35): 1/d would overflow
/// to inf and the quants to garbage. The maximum is taken 8 lanes at a time
/// so the compiler vectorizes it.
#[inline(always)]
fn block_step(xb: &[f32], qmax: f32) -> (f32, f32, f32) {
    let mut lanes = [0f32; 8];
    for c in xb.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |a, &v| a.max(v));
    let d = if amax / qmax >= f32::MIN_POSITIVE { amax / qmax } else { 0.0 };
    (amax, d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// Append one block of quants with step `d`, and its sums.
#[inline(always)]
fn push_block<T: ActInt>(out: &mut ActQ<T>, d: f32, q: &[i32; 32]) {
    let (s0, s1): (i32, i32) = (q[..16].iter().sum(), q[16..].iter().sum());
    let s = s0 + s1;
    out.sum16.extend([s0, s1]);
    out.q.extend(q.iter().map(|&v| T::from_i32(v)));
    out.d.push(d);
    out.sum.push(s);
    out.dsum.push(d * s as f32);
}

crate::avx2_multiversion! {
/// Quantize `x` (a multiple of 32 values) to [`ActQ`], appending to `out`.
/// Quants round half to even.
pub fn quantize_act_into<T: ActInt>(x: &[f32], out: &mut ActQ<T>) {
    for xb in x.chunks_exact(32) {
        let (_, d, id) = block_step(xb, T::QMAX);
        let mut q = [0i32; 32];
        for (o, &v) in q.iter_mut().zip(xb) {
            *o = ((v * id + MAGIC) - MAGIC) as i32;
        }
        push_block(out, d, &q);
    }
}
}

/// An 8-bit block gets a residual when its max|x| exceeds this many times
/// its row's root mean square ([`quantize_a8_split_row`]): about 10–20% of
/// blocks in the three real models; 4 to 6 trade accuracy for speed
/// (docs/PERFORMANCE.md, "Residuals in outlier blocks").
pub const OUTLIER: f32 = 5.0;

/// The residual's step is the block's step over this: residual quants lie
/// in ±RESIDUAL/2, so a block with a residual carries about 15 bits.
pub const RESIDUAL: f32 = 128.0;

/// One row of an [`ActQ`] to fill (see [`ActQ::rows_mut`]).
pub struct ActRowMut<'a, T> {
    pub d: &'a mut [f32],
    pub q: &'a mut [T],
    pub sum: &'a mut [i32],
    pub sum16: &'a mut [i32],
    pub dsum: &'a mut [f32],
}

/// Write block `b` of a row: quants with step `d`, and their sums.
#[inline(always)]
fn put_block<T: ActInt>(row: &mut ActRowMut<'_, T>, b: usize, d: f32, q: &[i32; 32]) {
    let (s0, s1): (i32, i32) = (q[..16].iter().sum(), q[16..].iter().sum());
    for (o, &v) in row.q[b * 32..(b + 1) * 32].iter_mut().zip(q) {
        *o = T::from_i32(v);
    }
    row.d[b] = d;
    row.sum[b] = s0 + s1;
    row.sum16[2 * b] = s0;
    row.sum16[2 * b + 1] = s1;
    row.dsum[b] = d * (s0 + s1) as f32;
}

/// 8-bit activations with residuals for outlier blocks: one row of x (a
/// multiple of 32 values) becomes two rows, which sum to it:
///
/// - `main`: its 8-bit quants, exactly as [`quantize_act_into`] makes them;
/// - `resid`: for each block whose max|x| exceeds [`OUTLIER`] × the row's
///   RMS, the rounding error of `main` quantized with step d / [`RESIDUAL`];
///   every other block is a zero block (step 0, quants 0).
///
/// A block's quantization error grows with its largest value, so the few
/// blocks that hold a row's outliers carry most of its error. Their
/// residual removes it for one more byte product per value in those blocks
/// only: kernels skip zero blocks.
pub fn quantize_a8_split_row(x: &[f32], main: ActRowMut<'_, i8>, resid: ActRowMut<'_, i8>) {
    let cols = x.len();
    assert!(
        cols.is_multiple_of(32) && [main.q.len(), resid.q.len()] == [cols; 2] && [main.d.len(), resid.d.len(), main.sum.len(), resid.sum.len(), main.dsum.len(), resid.dsum.len()] == [cols / 32; 6] && [main.sum16.len(), resid.sum16.len()] == [cols / 16; 2],
        "a row of {cols} values into rows of {} and {}",
        main.q.len(),
        resid.q.len()
    );
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::simd::avx2_available() {
        // SAFETY: the CPU has AVX2 and FMA; the row shapes were checked.
        return unsafe { split_row_avx2(x, main, resid) };
    }
    split_row_portable(x, main, resid)
}

/// The definition of [`quantize_a8_split_row`] (the AVX2 version gives the
/// same bits).
fn split_row_portable(x: &[f32], main: ActRowMut<'_, i8>, resid: ActRowMut<'_, i8>) {
    let (mut main, mut resid) = (main, resid);
    let cols = x.len();
    assert!(cols.is_multiple_of(32) && main.q.len() == cols && resid.q.len() == cols, "a row of {cols} values into rows of {} and {}", main.q.len(), resid.q.len());
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m += v * v;
        }
    }
    let limit = OUTLIER * OUTLIER * (lanes.iter().sum::<f32>() / cols as f32);
    for (b, xb) in x.chunks_exact(32).enumerate() {
        let (amax, d, id) = block_step(xb, 127.0);
        let mut q = [0i32; 32];
        for (o, &v) in q.iter_mut().zip(xb) {
            *o = ((v * id + MAGIC) - MAGIC) as i32;
        }
        put_block(&mut main, b, d, &q);
        let dr = d / RESIDUAL;
        let mut r = [0i32; 32];
        if amax * amax > limit && dr >= f32::MIN_POSITIVE {
            for ((o, &v), &q) in r.iter_mut().zip(xb).zip(&q) {
                *o = (((v * id - q as f32) * RESIDUAL + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i32;
            }
            put_block(&mut resid, b, dr, &r);
        } else {
            put_block(&mut resid, b, 0.0, &r);
        }
    }
}


/// [`split_row_portable`] with AVX2: the same operations in the same order
/// (no fused multiply-adds), so the same bits for finite input (NaN and
/// infinities, garbage either way, convert differently).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn split_row_avx2(x: &[f32], main: ActRowMut<'_, i8>, resid: ActRowMut<'_, i8>) {
    use std::arch::x86_64::*;
    let cols = x.len();
    let xp = x.as_ptr();
    let mut sq = _mm256_setzero_ps();
    for c in (0..cols).step_by(8) {
        let v = _mm256_loadu_ps(xp.add(c));
        sq = _mm256_add_ps(sq, _mm256_mul_ps(v, v));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sq);
    let limit = OUTLIER * OUTLIER * (lanes.iter().sum::<f32>() / cols as f32);
    let sign = _mm256_set1_ps(-0.0);
    // packs interleave 128-bit lanes; this restores element order
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    macro_rules! pack {
        ($q:expr) => {
            _mm256_permutevar8x32_epi32(_mm256_packs_epi16(_mm256_packs_epi32($q[0], $q[1]), _mm256_packs_epi32($q[2], $q[3])), order)
        };
    }
    macro_rules! hsum {
        ($a:expr) => {{
            let v = $a;
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
        }};
    }
    macro_rules! put {
        ($row:expr, $b:expr, $d:expr, $q:expr) => {{
            let q = $q;
            _mm256_storeu_si256($row.q.as_mut_ptr().add($b * 32) as *mut __m256i, pack!(q));
            let (s0, s1) = (hsum!(_mm256_add_epi32(q[0], q[1])), hsum!(_mm256_add_epi32(q[2], q[3])));
            $row.d[$b] = $d;
            $row.sum[$b] = s0 + s1;
            $row.sum16[2 * $b] = s0;
            $row.sum16[2 * $b + 1] = s1;
            $row.dsum[$b] = $d * (s0 + s1) as f32;
        }};
    }
    // loops and macros only, no closures: a closure would not get this
    // function's target features
    for b in 0..cols / 32 {
        let mut v = [_mm256_setzero_ps(); 4];
        for (k, vk) in v.iter_mut().enumerate() {
            *vk = _mm256_loadu_ps(xp.add(b * 32 + 8 * k));
        }
        let m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])), _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
        let d = if amax / 127.0 >= f32::MIN_POSITIVE { amax / 127.0 } else { 0.0 };
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let (mut scaled, mut q) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_si256(); 4]);
        for k in 0..4 {
            scaled[k] = _mm256_mul_ps(v[k], idv);
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(scaled[k]));
        }
        put!(main, b, d, q);
        let dr = d / RESIDUAL;
        if amax * amax > limit && dr >= f32::MIN_POSITIVE {
            let (lo, hi, k) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127), _mm256_set1_ps(RESIDUAL));
            let mut r = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                let e = _mm256_mul_ps(_mm256_sub_ps(scaled[i], _mm256_cvtepi32_ps(q[i])), k);
                r[i] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(e)), lo), hi);
            }
            put!(resid, b, dr, r);
        } else {
            put!(resid, b, 0.0, [_mm256_setzero_si256(); 4]);
        }
    }
}

/// [`quantize_a8_split_row`] for rows of `cols` values, appended to `main`
/// and `resid`.
pub fn quantize_a8_split_into(x: &[f32], cols: usize, main: &mut ActQ<i8>, resid: &mut ActQ<i8>) {
    assert!(cols > 0 && cols.is_multiple_of(32) && x.len().is_multiple_of(cols), "{} values are not rows of {cols}, a multiple of 32", x.len());
    let n = x.len() / cols;
    let (m0, r0) = (main.len() / cols, resid.len() / cols);
    let rows = main.rows_mut(m0 + n, cols).into_iter().skip(m0).zip(resid.rows_mut(r0 + n, cols).into_iter().skip(r0));
    for (xr, (m, r)) in x.chunks_exact(cols).zip(rows) {
        quantize_a8_split_row(xr, m, r);
    }
}

/// [`quantize_a8_split_into`] into new [`ActQ`]s: (quants, residuals).
pub fn quantize_a8_split(x: &[f32], cols: usize) -> Result<(ActQ8, ActQ8)> {
    if cols == 0 || !cols.is_multiple_of(32) || !x.len().is_multiple_of(cols) {
        return Err(Error::InvalidArgument(format!("{} values are not rows of {cols}, a multiple of 32", x.len())));
    }
    let (mut main, mut resid) = (ActQ::with_capacity(x.len()), ActQ::with_capacity(x.len()));
    quantize_a8_split_into(x, cols, &mut main, &mut resid);
    Ok((main, resid))
}

/// Quantize `x` (a multiple of 32 values) to [`ActQ`].
pub fn quantize_act<T: ActInt>(x: &[f32]) -> Result<ActQ<T>> {
    if !x.len().is_multiple_of(32) {
        return Err(Error::InvalidArgument(format!("quantized activations need a multiple of 32 values, got {}", x.len())));
    }
    let mut a = ActQ::with_capacity(x.len());
    quantize_act_into(x, &mut a);
    Ok(a)
}

/// 16-bit activations of `x`.
pub fn quantize_q16(x: &[f32]) -> Result<ActQ16> {
    quantize_act(x)
}

/// 8-bit activations of `x` (the quants alone, without the residual
/// [`quantize_a8_split`] adds).
pub fn quantize_a8(x: &[f32]) -> Result<ActQ8> {
    quantize_act(x)
}

#[inline]
fn idot_act<T: ActInt>(w: &[i8], x: &[T]) -> i32 {
    w.iter().zip(x).map(|(&a, &b)| a as i32 * b.into()).sum()
}

/// Σ over one k-quant super-block: sub-blocks of 16 or 32 against 32-blocks
/// of activations (`xd`, `xq`, `xs` start at this super-block).
fn dot_kquant_act<const N: usize, T: ActInt>(u: &Unpacked<N>, xd: &[f32], xq: &[T], xs: &[i32], has_min: bool) -> f32 {
    let sub = QK_K / N;
    let mut acc = 0f32;
    for s in 0..N {
        let b = s * sub / 32; // activation block
        let qi = idot_act(&u.q[s * sub..(s + 1) * sub], &xq[s * sub..(s + 1) * sub]);
        let mut t = u.scale[s] * (xd[b] * qi as f32);
        if has_min {
            // Σx over this sub-block: whole block when sub = 32; else sum the half
            let sx: i32 = if sub == 32 { xs[b] } else { xq[s * sub..(s + 1) * sub].iter().map(|&v| v.into()).sum() };
            t -= u.min[s] * (xd[b] * sx as f32);
        }
        acc += t;
    }
    acc
}

/// Σ w[i] * x[i] with `w` a quantized row and `x` quantized by
/// [`quantize_act`] (8 or 16 bits). Portable reference for the SIMD kernels;
/// handles every type [`act_format`] names.
pub fn vec_dot_act<T: ActInt>(ty: GgmlType, row: &[u8], x: ActRow<T>) -> Result<f32> {
    use GgmlType::*;
    let n = x.q.len();
    check_len(ty, row, n)?;
    if x.d.len() * 32 != n || x.sum.len() * 32 != n || x.dsum.len() * 32 != n {
        return Err(Error::InvalidArgument("activation row: scales/sums do not match the quants".into()));
    }
    if act_format(ty).is_none() {
        return Err(Error::UnsupportedType { what: format!("{ty} has no integer activation dot product") });
    }
    let (bs, ts) = ty.block_geometry();
    let mut acc = 0f32;
    for (bi, w) in row.chunks_exact(ts).enumerate() {
        let (x0, b0) = (bi * bs, bi * bs / 32);
        let (xq, xd, xs) = (&x.q[x0..x0 + bs], &x.d[b0..b0 + bs / 32], &x.sum[b0..b0 + bs / 32]);
        acc += match ty {
            Q4_0 | Q5_0 | Q8_0 | Iq4Nl | Mxfp4 => {
                let (dw, qw) = unpack_scaled32(ty, w);
                dw * (xd[0] * idot_act(&qw, xq) as f32)
            }
            Q4_1 | Q5_1 => {
                let (dw, mw, qw) = if ty == Q4_1 { legacy::unpack_q4_1(w) } else { legacy::unpack_q5_1(w) };
                let qi: i32 = qw.iter().zip(xq).map(|(&a, &b)| a as i32 * b.into()).sum();
                dw * (xd[0] * qi as f32) + mw * (xd[0] * xs[0] as f32)
            }
            Q2K => dot_kquant_act(&kquants::unpack_q2_k(w), xd, xq, xs, true),
            Q3K => dot_kquant_act(&kquants::unpack_q3_k(w), xd, xq, xs, false),
            Q4K => dot_kquant_act(&kquants::unpack_q4_k(w), xd, xq, xs, true),
            Q5K => dot_kquant_act(&kquants::unpack_q5_k(w), xd, xq, xs, true),
            Q6K => dot_kquant_act(&kquants::unpack_q6_k(w), xd, xq, xs, false),
            Iq4Xs => {
                let (scale, q) = nonlinear::unpack_iq4_xs(w);
                dot_kquant_act(&Unpacked { q, scale, min: [0.0; 8] }, xd, xq, xs, false)
            }
            _ => unreachable!("act_format covers exactly these types"),
        };
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched split (AVX2 where the CPU has it) gives the portable
    /// definition's bits: quants, steps and sums of both rows, on rows with
    /// outliers, tiny blocks (subnormal steps) and zero blocks.
    #[test]
    fn split_row_matches_its_portable_definition() {
        let cols = 512;
        let mut seed = 11u32;
        let mut x: Vec<f32> = (0..4 * cols)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect();
        for b in (0..x.len() / 32).step_by(3) {
            x[b * 32 + b % 32] *= 60.0;
        }
        x[32..64].iter_mut().for_each(|v| *v *= 1e-38);
        x[64..96].iter_mut().for_each(|v| *v = 0.0);
        let (mut a, mut ar, mut b, mut br) = (ActQ::<i8>::default(), ActQ::<i8>::default(), ActQ::<i8>::default(), ActQ::<i8>::default());
        for (xr, ((m, r), (pm, pr))) in x.chunks(cols).zip(a.rows_mut(4, cols).into_iter().zip(ar.rows_mut(4, cols)).zip(b.rows_mut(4, cols).into_iter().zip(br.rows_mut(4, cols)))) {
            quantize_a8_split_row(xr, m, r);
            split_row_portable(xr, pm, pr);
        }
        for (got, want) in [(&a, &b), (&ar, &br)] {
            assert_eq!(got.q, want.q);
            assert_eq!(got.d.iter().map(|d| d.to_bits()).collect::<Vec<_>>(), want.d.iter().map(|d| d.to_bits()).collect::<Vec<_>>());
            assert_eq!((&got.sum, &got.sum16), (&want.sum, &want.sum16));
            assert_eq!(got.dsum.iter().map(|d| d.to_bits()).collect::<Vec<_>>(), want.dsum.iter().map(|d| d.to_bits()).collect::<Vec<_>>());
        }
        assert!(ar.d.iter().filter(|&&d| d != 0.0).count() >= 10, "residual blocks exercised");
        assert_eq!((a.d[1], a.d[2]), (0.0, 0.0), "subnormal-step and zero blocks");
    }
}
