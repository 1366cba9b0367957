//! x86 dot kernels for 8-bit activations ([`crate::quant::ActQ8`]): one
//! weight row against 1, 2, 4 or 8 activation rows at once, so each weight
//! block is unpacked once per group of tokens. Same math as
//! `quant::dot::vec_dot_act`; only the f32 summation order differs.
//!
//! Every weight block becomes 32 bytes and a per-lane f32 scale vector:
//! - unsigned types (Q4_1, Q5_1, Q4_K) keep their quants as u8 and add
//!   their minimum through the activation block's sum (`dsum`);
//! - signed types (Q4_0, Q5_0, Q8_0, Q6_K) multiply |w| by x carrying w's
//!   sign (`vpsignb`), since the byte product takes one unsigned operand.
//!
//! The byte product is the only instruction that differs between the ISAs
//! ([`Isa`]): `vpdpbusd` (AVX-512 VNNI on 256-bit vectors, or AVX-VNNI) or
//! `vpmaddubsw` + `vpmaddwd` (AVX2). Each i32 lane sums 4 adjacent products,
//! so lanes 0–3 hold elements 0–15 and lanes 4–7 elements 16–31: that is
//! how Q6_K's two 16-element scales per block fit in one scale vector.
//! Only called after `simd` detected the ISA's features.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::avx2::{bits_to_bytes, f16p as f16_at, hsum, nibbles, q6k_runs};
use crate::quant::kquants::scale_min_k4;
use super::matmul::{BlockChunk, CHUNK_TOKENS};
use crate::quant::ActRow;

/// Most activation rows one call takes.
pub const MAX_TOKENS: usize = 8;

type Row8<'a> = ActRow<'a, i8>;

/// The byte product: `acc` + Σ of 4 adjacent u8 × i8 products per i32 lane.
pub trait Isa {
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
}

pub struct Avx2;
pub struct AvxVnni;
pub struct Avx512Vnni;

impl Isa for Avx2 {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // |w| ≤ 127 and |x| ≤ 127, so a pair sum (≤ 32258) cannot saturate.
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
    }
}

impl Isa for AvxVnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, w, x)
    }
}

impl Isa for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, x)
    }
}

/// One unpacked weight block of 32: bytes (u8 magnitudes for signed types),
/// the signed bytes whose signs x takes (signed types only), the per-lane
/// scale, and the minimum's coefficient on the activation block's sum.
struct Block {
    w: __m256i,
    sign: __m256i,
    scale: __m256,
    min: f32,
}

/// Accumulate one weight block against activation block `b` of NT rows.
#[inline(always)]
unsafe fn step<I: Isa, const NT: usize, const SIGNED: bool, const MIN: bool>(
    blk: &Block,
    b: usize,
    xs: &[Row8],
    acc: &mut [__m256; NT],
    accm: &mut [f32; NT],
) {
    for t in 0..NT {
        let x = xs.get_unchecked(t);
        let mut xv = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        if SIGNED {
            xv = _mm256_sign_epi8(xv, blk.sign);
        }
        let p = _mm256_cvtepi32_ps(I::dot(_mm256_setzero_si256(), blk.w, xv));
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(p, blk.scale), _mm256_set1_ps(*x.d.get_unchecked(b)), acc[t]);
        if MIN {
            accm[t] += blk.min * *x.dsum.get_unchecked(b);
        }
    }
}

/// Two weight blocks in one 512-bit vector (AVX-512, any number of
/// tokens, so a row's sum never depends on how many rows share a call): the
/// 256-bit step's 7 instructions per token and block become 8 per token and
/// block pair. AVX-512 has no `vpsignb`: x is negated under w's sign mask.
struct Pair {
    w: __m512i,
    neg: __mmask64,
    scale: __m512,
    min: [f32; 2],
}

#[inline(always)]
unsafe fn pair(a: &Block, b: &Block) -> Pair {
    let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a.w), b.w);
    let sign = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a.sign), b.sign);
    let scale = _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(a.scale)), _mm256_castps_pd(b.scale)));
    Pair { w, neg: _mm512_movepi8_mask(sign), scale, min: [a.min, b.min] }
}

/// Accumulate a block pair against activation blocks `b`, `b + 1` of NT rows.
#[inline(always)]
unsafe fn step_pair<const NT: usize, const SIGNED: bool, const MIN: bool>(
    p: &Pair,
    b: usize,
    xs: &[Row8],
    acc: &mut [__m512; NT],
    accm: &mut [f32; NT],
) {
    // lanes 0-7 take block b's activation scale, lanes 8-15 block b + 1's
    let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    for t in 0..NT {
        let x = xs.get_unchecked(t);
        let mut xv = _mm512_loadu_si512(x.q.as_ptr().add(b * 32) as *const _);
        if SIGNED {
            xv = _mm512_mask_sub_epi8(xv, p.neg, _mm512_setzero_si512(), xv);
        }
        let prod = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), p.w, xv));
        // 8 unaligned bytes: the two f32 scales of blocks b, b + 1
        let d2 = _mm512_castsi512_ps(_mm512_castsi128_si512(_mm_loadl_epi64(x.d.as_ptr().add(b) as *const __m128i)));
        let dx = _mm512_permutexvar_ps(halves, d2);
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(prod, p.scale), dx, acc[t]);
        if MIN {
            accm[t] += p.min[0] * *x.dsum.get_unchecked(b) + p.min[1] * *x.dsum.get_unchecked(b + 1);
        }
    }
}

/// Zeroed 512-bit accumulators. Without WIDE (the AVX2 and AVX-VNNI
/// entries, on CPUs that may lack AVX-512) no AVX-512 instruction may run:
/// the array is zeroed as plain memory and never read.
#[inline(always)]
unsafe fn wide_zero<const WIDE: bool, const NT: usize>() -> [__m512; NT] {
    if WIDE {
        [_mm512_setzero_ps(); NT]
    } else {
        // SAFETY: an all-zero bit pattern is a valid __m512.
        std::mem::zeroed()
    }
}

/// The row sums: 256-bit (and, with WIDE, 512-bit) accumulators plus the
/// minimum terms.
#[inline(always)]
unsafe fn finish<const WIDE: bool, const NT: usize>(out: &mut [f32], acc: &[__m256; NT], wide: &[__m512; NT], accm: &[f32; NT]) {
    for t in 0..NT {
        let w = if WIDE { _mm512_reduce_add_ps(wide[t]) } else { 0.0 };
        *out.get_unchecked_mut(t) = hsum(acc[t]) + w + accm[t];
    }
}

/// Signed bytes → the block's |w| and signs.
#[inline(always)]
unsafe fn signed(w: __m256i, scale: f32) -> Block {
    Block { w: _mm256_abs_epi8(w), sign: w, scale: _mm256_set1_ps(scale), min: 0.0 }
}

#[inline(always)]
unsafe fn unsigned(w: __m256i, scale: f32, min: f32) -> Block {
    Block { w, sign: w, scale: _mm256_set1_ps(scale), min }
}

/// A 32-element type of `TS` bytes per block. WIDE (AVX-512 only) takes
/// the blocks two at a time.
#[inline(always)]
unsafe fn blocks32<I: Isa, const WIDE: bool, const NT: usize, const TS: usize, const SIGNED: bool, const MIN: bool>(
    row: &[u8],
    xs: &[Row8],
    out: &mut [f32],
    unpack: impl Fn(*const u8) -> Block,
) {
    let mut acc = [_mm256_setzero_ps(); NT];
    let mut wide = wide_zero::<WIDE, NT>();
    let mut accm = [0f32; NT];
    let nb = row.len() / TS;
    let mut b = 0;
    if WIDE {
        while b + 2 <= nb {
            let p = pair(&unpack(row.as_ptr().add(b * TS)), &unpack(row.as_ptr().add((b + 1) * TS)));
            step_pair::<NT, SIGNED, MIN>(&p, b, xs, &mut wide, &mut accm);
            b += 2;
        }
    }
    while b < nb {
        let blk = unpack(row.as_ptr().add(b * TS));
        step::<I, NT, SIGNED, MIN>(&blk, b, xs, &mut acc, &mut accm);
        b += 1;
    }
    finish::<WIDE, NT>(out, &acc, &wide, &accm);
}

/// Unpack one weight block of each 32-element type at `p`.
#[inline(always)]
unsafe fn q4_0_block(p: *const u8) -> Block {
    signed(_mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8)), f16_at(p))
}

#[inline(always)]
unsafe fn q4_1_block(p: *const u8) -> Block {
    unsigned(nibbles(p.add(4)), f16_at(p), f16_at(p.add(2)))
}

#[inline(always)]
unsafe fn q5_0_block(p: *const u8) -> Block {
    let qh = (p.add(2) as *const u32).read_unaligned();
    let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
    signed(_mm256_sub_epi8(_mm256_or_si256(nibbles(p.add(6)), hi), _mm256_set1_epi8(16)), f16_at(p))
}

#[inline(always)]
unsafe fn q5_1_block(p: *const u8) -> Block {
    let qh = (p.add(4) as *const u32).read_unaligned();
    let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
    unsigned(_mm256_or_si256(nibbles(p.add(8)), hi), f16_at(p), f16_at(p.add(2)))
}

#[inline(always)]
unsafe fn q8_0_block(p: *const u8) -> Block {
    signed(_mm256_loadu_si256(p.add(2) as *const __m256i), f16_at(p))
}

#[inline(always)]
unsafe fn q4_0<I: Isa, const WIDE: bool, const NT: usize>(row: &[u8], xs: &[Row8], out: &mut [f32]) {
    blocks32::<I, WIDE, NT, 18, true, false>(row, xs, out, |p| q4_0_block(p))
}

#[inline(always)]
unsafe fn q4_1<I: Isa, const WIDE: bool, const NT: usize>(row: &[u8], xs: &[Row8], out: &mut [f32]) {
    blocks32::<I, WIDE, NT, 20, false, true>(row, xs, out, |p| q4_1_block(p))
}

#[inline(always)]
unsafe fn q5_0<I: Isa, const WIDE: bool, const NT: usize>(row: &[u8], xs: &[Row8], out: &mut [f32]) {
    blocks32::<I, WIDE, NT, 22, true, false>(row, xs, out, |p| q5_0_block(p))
}

#[inline(always)]
unsafe fn q5_1<I: Isa, const WIDE: bool, const NT: usize>(row: &[u8], xs: &[Row8], out: &mut [f32]) {
    blocks32::<I, WIDE, NT, 24, false, true>(row, xs, out, |p| q5_1_block(p))
}

#[inline(always)]
unsafe fn q8_0<I: Isa, const WIDE: bool, const NT: usize>(row: &[u8], xs: &[Row8], out: &mut [f32]) {
    blocks32::<I, WIDE, NT, 34, true, false>(row, xs, out, |p| q8_0_block(p))
}

#[inline(always)]
unsafe fn q4_k<I: Isa, const WIDE: bool, const NT: usize>(row: &[u8], xs: &[Row8], out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); NT];
    let mut wide = wide_zero::<WIDE, NT>();
    let mut accm = [0f32; NT];
    let m4 = _mm256_set1_epi8(0x0F);
    for (bi, blk) in row.chunks_exact(144).enumerate() {
        let p = blk.as_ptr();
        let (d, dmin, sc) = (f16_at(p), f16_at(p.add(2)), &blk[4..16]);
        for c in 0..4 {
            let bytes = _mm256_loadu_si256(p.add(16 + c * 32) as *const __m256i);
            // sub-blocks 2c and 2c + 1 (of 32 = activation blocks): low and high nibbles
            let blk = |j: usize, w| {
                let (s, m) = scale_min_k4(j, sc);
                unsigned(w, d * s as f32, -dmin * m as f32)
            };
            let lo = blk(2 * c, _mm256_and_si256(bytes, m4));
            let hi = blk(2 * c + 1, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4));
            if WIDE {
                step_pair::<NT, false, true>(&pair(&lo, &hi), bi * 8 + 2 * c, xs, &mut wide, &mut accm);
            } else {
                step::<I, NT, false, true>(&lo, bi * 8 + 2 * c, xs, &mut acc, &mut accm);
                step::<I, NT, false, true>(&hi, bi * 8 + 2 * c + 1, xs, &mut acc, &mut accm);
            }
        }
    }
    finish::<WIDE, NT>(out, &acc, &wide, &accm);
}

#[inline(always)]
unsafe fn q6_k<I: Isa, const WIDE: bool, const NT: usize>(row: &[u8], xs: &[Row8], out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); NT];
    let mut wide = wide_zero::<WIDE, NT>();
    let mut accm = [0f32; NT];
    let off = _mm256_set1_epi8(32);
    for (bi, blk) in row.chunks_exact(210).enumerate() {
        let p = blk.as_ptr();
        let d = f16_at(p.add(208));
        let sc = &blk[192..208];
        for half in 0..2 {
            let runs = q6k_runs(p, half);
            let blk = |run: usize, (lo, hi): (__m256i, __m256i)| {
                let w = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), off);
                let e0 = half * 128 + run * 32; // element index in the super-block
                let s0 = d * *sc.get_unchecked(e0 / 16) as i8 as f32;
                let s1 = d * *sc.get_unchecked(e0 / 16 + 1) as i8 as f32;
                Block { w: _mm256_abs_epi8(w), sign: w, scale: _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0)), min: 0.0 }
            };
            let b0 = bi * 8 + half * 4; // activation block of run 0
            for r in [0, 2] {
                let (x, y) = (blk(r, runs[r]), blk(r + 1, runs[r + 1]));
                if WIDE {
                    step_pair::<NT, true, false>(&pair(&x, &y), b0 + r, xs, &mut wide, &mut accm);
                } else {
                    step::<I, NT, true, false>(&x, b0 + r, xs, &mut acc, &mut accm);
                    step::<I, NT, true, false>(&y, b0 + r + 1, xs, &mut acc, &mut accm);
                }
            }
        }
    }
    finish::<WIDE, NT>(out, &acc, &wide, &accm);
}

/// Q4_K's activation block `b` (sub-block b % 8 of super-block b / 8).
#[inline(always)]
unsafe fn q4_k_block(row: *const u8, b: usize) -> Block {
    let (p, j) = (row.add(b / 8 * 144), b % 8);
    let sc = std::slice::from_raw_parts(p.add(4), 12);
    let bytes = _mm256_loadu_si256(p.add(16 + j / 2 * 32) as *const __m256i);
    let w = if j % 2 == 0 { bytes } else { _mm256_srli_epi16(bytes, 4) };
    let (s, m) = scale_min_k4(j, sc);
    unsigned(_mm256_and_si256(w, _mm256_set1_epi8(0x0F)), f16_at(p) * s as f32, -f16_at(p.add(2)) * m as f32)
}

/// Q6_K's activation block `b` (run b % 4 of half (b % 8) / 4 of
/// super-block b / 8).
#[inline(always)]
unsafe fn q6_k_block(row: *const u8, b: usize) -> Block {
    let (p, half, run) = (row.add(b / 8 * 210), b % 8 / 4, b % 4);
    let (lo, hi) = q6k_runs(p, half)[run];
    let w = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
    let (d, e0) = (f16_at(p.add(208)), half * 128 + run * 32);
    let s0 = d * *p.add(192 + e0 / 16) as i8 as f32;
    let s1 = d * *p.add(192 + e0 / 16 + 1) as i8 as f32;
    Block { w: _mm256_abs_epi8(w), sign: w, scale: _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0)), min: 0.0 }
}

/// Activation rows whose blocks other than their listed ones are zero
/// (residual rows, `quant::quantize_a8_split_row`) against one weight row,
/// block-major: each listed block is unpacked once (`block(b)`) for all the
/// rows of a chunk that list it, each row accumulating its own blocks in
/// rising order. `add(t, v)` takes row t's sum, for rows with any block.
#[inline(always)]
unsafe fn listed<I: Isa, const SIGNED: bool, const MIN: bool>(xs: &[Row8], chunks: &[BlockChunk], add: &mut dyn FnMut(usize, f32), block: impl Fn(usize) -> Block) {
    let mut acc = [_mm256_setzero_ps(); CHUNK_TOKENS];
    let mut accm = [0f32; CHUNK_TOKENS];
    for c in chunks {
        acc[..c.n].fill(_mm256_setzero_ps());
        accm[..c.n].fill(0.0);
        for &b in &c.blocks {
            let b = b as usize;
            let (s, e) = (*c.start.get_unchecked(b) as usize, *c.start.get_unchecked(b + 1) as usize);
            let blk = block(b);
            for &i in c.tok.get_unchecked(s..e) {
                let i = i as usize;
                let mut a = [*acc.get_unchecked(i)];
                let mut m = [*accm.get_unchecked(i)];
                step::<I, 1, SIGNED, MIN>(&blk, b, std::slice::from_ref(xs.get_unchecked(c.t0 + i)), &mut a, &mut m);
                *acc.get_unchecked_mut(i) = a[0];
                *accm.get_unchecked_mut(i) = m[0];
            }
        }
        for &i in &c.busy {
            add(c.t0 + i as usize, hsum(acc[i as usize]) + accm[i as usize]);
        }
    }
}

macro_rules! listed_entries {
    ($isa:ty, $feat:literal, $($name:ident: $signed:literal, $min:literal, |$w:ident, $b:ident| $block:expr);*) => {$(
        /// Residual rows over their listed blocks against a weight row.
        ///
        /// # Safety
        /// The CPU has the ISA's features; every row has the weight row's
        /// length; the chunks are `Residual::new`'s for these rows.
        #[target_feature(enable = $feat)]
        pub unsafe fn $name($w: &[u8], xs: &[Row8], chunks: &[BlockChunk], add: &mut dyn FnMut(usize, f32)) {
            listed::<$isa, $signed, $min>(xs, chunks, add, |$b| $block)
        }
    )*};
}

macro_rules! listed_family {
    ($isa:ty, $feat:literal, $q4_0:ident, $q4_1:ident, $q5_0:ident, $q5_1:ident, $q8_0:ident, $q4_k:ident, $q6_k:ident) => {
        listed_entries!($isa, $feat,
            $q4_0: true, false, |w, b| q4_0_block(w.as_ptr().add(b * 18));
            $q4_1: false, true, |w, b| q4_1_block(w.as_ptr().add(b * 20));
            $q5_0: true, false, |w, b| q5_0_block(w.as_ptr().add(b * 22));
            $q5_1: false, true, |w, b| q5_1_block(w.as_ptr().add(b * 24));
            $q8_0: true, false, |w, b| q8_0_block(w.as_ptr().add(b * 34));
            $q4_k: false, true, |w, b| q4_k_block(w.as_ptr(), b);
            $q6_k: true, false, |w, b| q6_k_block(w.as_ptr(), b)
        );
    };
}

listed_family!(Avx2, "avx2,fma,f16c", q4_0_avx2_listed, q4_1_avx2_listed, q5_0_avx2_listed, q5_1_avx2_listed, q8_0_avx2_listed, q4_k_avx2_listed, q6_k_avx2_listed);
listed_family!(AvxVnni, "avx2,fma,f16c,avxvnni", q4_0_avxvnni_listed, q4_1_avxvnni_listed, q5_0_avxvnni_listed, q5_1_avxvnni_listed, q8_0_avxvnni_listed, q4_k_avxvnni_listed, q6_k_avxvnni_listed);
listed_family!(
    Avx512Vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    q4_0_avx512vnni_listed,
    q4_1_avx512vnni_listed,
    q5_0_avx512vnni_listed,
    q5_1_avx512vnni_listed,
    q8_0_avx512vnni_listed,
    q4_k_avx512vnni_listed,
    q6_k_avx512vnni_listed
);

/// A kernel over any number of rows up to MAX_TOKENS: groups of 8, 4, 2, 1.
macro_rules! by_groups {
    ($k:ident, $isa:ty, $wide:literal, $w:expr, $xs:expr, $out:expr) => {{
        let (w, xs, out): (&[u8], &[Row8], &mut [f32]) = ($w, $xs, $out);
        let mut t = 0;
        while t < xs.len() {
            let left = xs.len() - t;
            let (x, o) = (&xs[t..], &mut out[t..]);
            t += match left {
                8.. => { $k::<$isa, $wide, 8>(w, x, o); 8 }
                4..=7 => { $k::<$isa, $wide, 4>(w, x, o); 4 }
                2..=3 => { $k::<$isa, $wide, 2>(w, x, o); 2 }
                // the same block order for any group size, so a row's sum
                // does not depend on how many rows share the call
                _ => { $k::<$isa, $wide, 1>(w, x, o); 1 }
            };
        }
    }};
}

/// Public entry points: `<type>_<isa>(row, xs, out)`, one per ISA with the
/// ISA's target features, each over up to MAX_TOKENS rows.
macro_rules! entries {
    ($isa:ty, $wide:literal, $feat:literal, $($name:ident = $k:ident),*) => {$(
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], xs: &[Row8], out: &mut [f32]) {
            debug_assert!(xs.len() <= MAX_TOKENS && out.len() >= xs.len());
            by_groups!($k, $isa, $wide, w, xs, out)
        }
    )*};
}

entries!(Avx2, false, "avx2,fma,f16c", q4_0_avx2 = q4_0, q4_1_avx2 = q4_1, q5_0_avx2 = q5_0, q5_1_avx2 = q5_1, q8_0_avx2 = q8_0, q4_k_avx2 = q4_k, q6_k_avx2 = q6_k);
entries!(AvxVnni, false, "avx2,fma,f16c,avxvnni", q4_0_avxvnni = q4_0, q4_1_avxvnni = q4_1, q5_0_avxvnni = q5_0, q5_1_avxvnni = q5_1, q8_0_avxvnni = q8_0, q4_k_avxvnni = q4_k, q6_k_avxvnni = q6_k);
entries!(
    Avx512Vnni,
    true,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    q4_0_avx512vnni = q4_0,
    q4_1_avx512vnni = q4_1,
    q5_0_avx512vnni = q5_0,
    q5_1_avx512vnni = q5_1,
    q8_0_avx512vnni = q8_0,
    q4_k_avx512vnni = q4_k,
    q6_k_avx512vnni = q6_k
);
