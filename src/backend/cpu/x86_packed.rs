//! The AVX-512 VNNI kernel over packed tiles (`packed`): one group of 8
//! weight rows against 1, 2, 4 or 8 activation rows. Lane 2r + h of a
//! 512-bit vector belongs to weight row r and column group h of a vector
//! pair, so a 64-bit broadcast of 8 activation bytes feeds all 16 lanes, and
//! each lane pair is added once at the end. Same math as
//! `quant::dot::vec_dot_act`; only the f32 summation order differs.
//! Only called after `simd` detected AVX-512 F/BW/VL and VNNI.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::matmul::{BlockChunk, CHUNK_TOKENS};
use crate::quant::{ActRow, GgmlType};

type Row8<'a> = ActRow<'a, i8>;

/// Weights this far ahead of the tile being multiplied are prefetched (see
/// `matmul::PREFETCH_BYTES`).
const PREFETCH: usize = 6144;

/// 8 floats → lanes 2r and 2r + 1 get float r.
#[inline(always)]
unsafe fn dup(v: __m256) -> __m512 {
    _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0), _mm512_castps256_ps512(v))
}

/// 8 floats → lane 2r gets float r, lane 2r + 1 zero (terms added once per row).
#[inline(always)]
unsafe fn dup_even(v: __m256) -> __m512 {
    _mm512_maskz_permutexvar_ps(0x5555, _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0), _mm512_castps256_ps512(v))
}

#[inline(always)]
unsafe fn scales<const HALF: bool>(p: *const u8) -> __m256 {
    if HALF {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    } else {
        _mm256_loadu_ps(p as *const f32)
    }
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

/// One tile of a row group, unpacked: its scales as lane pairs (lo, hi
/// halves; the minimum's on even lanes) and its 4 vectors of weight bytes.
struct Tile {
    s_lo: __m512,
    s_hi: __m512,
    mn: __m512,
    w: [__m512i; 4],
}

/// Bytes of one tile of the format, and the offset of its quants.
#[inline(always)]
fn tile_geometry<const BITS: u8, const HALF: bool, const SPLIT: bool, const MIN: bool>() -> (usize, usize) {
    let sb = if HALF { 16 } else { 32 };
    let qoff = (1 + SPLIT as usize + MIN as usize) * sb;
    let tb = qoff
        + match BITS {
            4 => 128,
            5 => 160,
            6 => 192,
            _ => 256,
        };
    (tb, qoff)
}

#[inline(always)]
unsafe fn unpack<const BITS: u8, const HALF: bool, const SPLIT: bool, const MIN: bool>(t: *const u8) -> Tile {
    let sb = if HALF { 16 } else { 32 };
    let (_, qoff) = tile_geometry::<BITS, HALF, SPLIT, MIN>();
    let m4 = _mm512_set1_epi8(0x0F);
    let s_lo = dup(scales::<HALF>(t));
    let s_hi = if SPLIT { dup(scales::<HALF>(t.add(sb))) } else { s_lo };
    let mn = if MIN { dup_even(scales::<HALF>(t.add(sb * (1 + SPLIT as usize)))) } else { _mm512_setzero_ps() };
    let q = t.add(qoff);
    let w: [__m512i; 4] = if BITS == 8 {
        [load(q), load(q.add(64)), load(q.add(128)), load(q.add(192))]
    } else {
        let (c0, c1) = (load(q), load(q.add(64)));
        let mut w = [
            _mm512_and_si512(c0, m4),
            _mm512_and_si512(c1, m4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(c0), m4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(c1), m4),
        ];
        if BITS == 5 {
            let sixteen = _mm512_set1_epi8(16);
            for (v, wv) in w.iter_mut().enumerate() {
                let m = (q.add(128 + 8 * v) as *const u64).read_unaligned();
                *wv = _mm512_mask_add_epi8(*wv, m, *wv, sixteen);
            }
        }
        if BITS == 6 {
            let h = load(q.add(128));
            let m3 = _mm512_set1_epi8(3);
            w[0] = _mm512_or_si512(w[0], _mm512_slli_epi16::<4>(_mm512_and_si512(h, m3)));
            w[1] = _mm512_or_si512(w[1], _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<2>(h), m3)));
            w[2] = _mm512_or_si512(w[2], _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(h), m3)));
            w[3] = _mm512_or_si512(w[3], _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<6>(h), m3)));
        }
        w
    };
    Tile { s_lo, s_hi, mn, w }
}

/// One activation row's block `b` against an unpacked tile, into its
/// accumulators (`accm`: the minimum's term).
#[inline(always)]
unsafe fn step<const OFF: i32, const SPLIT: bool, const MIN: bool>(tl: &Tile, x: &Row8, b: usize, acc: &mut __m512, accm: &mut __m512) {
    let zero = _mm512_setzero_si512();
    let w = &tl.w;
    let xp = x.q.as_ptr().add(b * 32) as *const u8;
    let bc = |v: usize| _mm512_set1_epi64((xp.add(8 * v) as *const i64).read_unaligned());
    let f = if SPLIT {
        let (s0, s1) = (*x.sum16.get_unchecked(2 * b), *x.sum16.get_unchecked(2 * b + 1));
        let lo0 = if OFF != 0 { _mm512_maskz_set1_epi32(0x5555, -OFF * s0) } else { zero };
        let hi0 = if OFF != 0 { _mm512_maskz_set1_epi32(0x5555, -OFF * s1) } else { zero };
        let lo = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(lo0, w[0], bc(0)), w[1], bc(1));
        let hi = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(hi0, w[2], bc(2)), w[3], bc(3));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), tl.s_lo, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), tl.s_hi))
    } else {
        let i0 = if OFF != 0 { _mm512_maskz_set1_epi32(0x5555, -OFF * *x.sum.get_unchecked(b)) } else { zero };
        let i = _mm512_dpbusd_epi32(i0, w[0], bc(0));
        let i = _mm512_dpbusd_epi32(i, w[1], bc(1));
        let i = _mm512_dpbusd_epi32(i, w[2], bc(2));
        let i = _mm512_dpbusd_epi32(i, w[3], bc(3));
        _mm512_mul_ps(_mm512_cvtepi32_ps(i), tl.s_lo)
    };
    *acc = _mm512_fmadd_ps(f, _mm512_set1_ps(*x.d.get_unchecked(b)), *acc);
    if MIN {
        *accm = _mm512_fmadd_ps(tl.mn, _mm512_set1_ps(*x.dsum.get_unchecked(b)), *accm);
    }
}

/// A row's 8 sums from its lane pairs.
#[inline(always)]
unsafe fn row_sums(acc: __m512, accm: __m512) -> __m256 {
    let s = _mm512_add_ps(acc, accm);
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
    _mm512_castps512_ps256(_mm512_maskz_compress_ps(0x5555, s))
}

/// One row group (8 weight rows) against NT activation rows, over its `nb`
/// tiles from `tiles`; row sums go to `out[t * stride + r]`.
#[inline(always)]
unsafe fn group<const NT: usize, const BITS: u8, const OFF: i32, const HALF: bool, const SPLIT: bool, const MIN: bool>(
    tiles: *const u8,
    nb: usize,
    xs: &[Row8],
    out: *mut f32,
    stride: usize,
) {
    let (tb, _) = tile_geometry::<BITS, HALF, SPLIT, MIN>();
    let mut acc = [_mm512_setzero_ps(); NT];
    let mut accm = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        let t = tiles.add(b * tb);
        let mut pf = 0;
        while pf < tb {
            _mm_prefetch::<_MM_HINT_T0>(t.wrapping_add(PREFETCH + pf) as *const i8);
            pf += 64;
        }
        let tl = unpack::<BITS, HALF, SPLIT, MIN>(t);
        for ti in 0..NT {
            step::<OFF, SPLIT, MIN>(&tl, xs.get_unchecked(ti), b, &mut acc[ti], &mut accm[ti]);
        }
    }
    for ti in 0..NT {
        _mm256_storeu_ps(out.add(ti * stride), row_sums(acc[ti], accm[ti]));
    }
}

/// One row group against the residual rows of one chunk, block-major: each
/// listed tile is unpacked once for every row that lists it, and each row
/// sums its blocks in rising order (as alone). Adds each busy row's 8 sums
/// to `out[(c.t0 + i) * stride + r]`. A block list follows a full pass over
/// the same tiles, which are then in the cache: no prefetch.
#[inline(always)]
unsafe fn group_chunk<const BITS: u8, const OFF: i32, const HALF: bool, const SPLIT: bool, const MIN: bool>(
    tiles: *const u8,
    c: &BlockChunk,
    xs: &[Row8],
    out: *mut f32,
    stride: usize,
) {
    let (tb, _) = tile_geometry::<BITS, HALF, SPLIT, MIN>();
    // only the chunk's rows are zeroed (8 KB for all 64 would cost more
    // than a decode step's residual work)
    let mut acc = [MaybeUninit::<__m512>::uninit(); CHUNK_TOKENS];
    let mut accm = [MaybeUninit::<__m512>::uninit(); CHUNK_TOKENS];
    for i in 0..c.n.min(CHUNK_TOKENS) {
        acc[i].write(_mm512_setzero_ps());
        accm[i].write(_mm512_setzero_ps());
    }
    // SAFETY: rows 0..c.n are initialized; the chunk's tok and busy name
    // only rows below c.n (Residual::new)
    let (acc, accm) = (acc.as_mut_ptr() as *mut __m512, accm.as_mut_ptr() as *mut __m512);
    for &b in &c.blocks {
        let b = b as usize;
        let (s, e) = (*c.start.get_unchecked(b) as usize, *c.start.get_unchecked(b + 1) as usize);
        let tl = unpack::<BITS, HALF, SPLIT, MIN>(tiles.add(b * tb));
        for &i in c.tok.get_unchecked(s..e) {
            let i = i as usize;
            step::<OFF, SPLIT, MIN>(&tl, xs.get_unchecked(c.t0 + i), b, &mut *acc.add(i), &mut *accm.add(i));
        }
    }
    for &i in &c.busy {
        let i = i as usize;
        let o = out.add((c.t0 + i) * stride);
        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), row_sums(*acc.add(i), *accm.add(i))));
    }
}

macro_rules! by_type {
    ($ty:expr, $f:ident::<$($pre:literal),*>($($args:expr),*)) => {
        match $ty {
            GgmlType::Q4_0 => $f::<$($pre,)* 4, 8, true, false, false>($($args),*),
            GgmlType::Q4_1 => $f::<$($pre,)* 4, 0, true, false, true>($($args),*),
            GgmlType::Q5_0 => $f::<$($pre,)* 5, 16, true, false, false>($($args),*),
            GgmlType::Q5_1 => $f::<$($pre,)* 5, 0, true, false, true>($($args),*),
            GgmlType::Q8_0 => $f::<$($pre,)* 8, 128, true, false, false>($($args),*),
            GgmlType::Q4K => $f::<$($pre,)* 4, 0, false, false, true>($($args),*),
            GgmlType::Q5K => $f::<$($pre,)* 5, 0, false, false, true>($($args),*),
            GgmlType::Q6K => $f::<$($pre,)* 6, 32, false, true, false>($($args),*),
            _ => unreachable!("packed::Format::of covers exactly these types"),
        }
    };
}

/// One row group of a packed matrix of `ty` (tiles from `tiles`, `nb` of
/// them) against up to 8 activation rows, in groups of 8, 4, 2 and 1.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; `tiles` holds `nb` tiles of `ty`'s
/// format; every row of `xs` has `nb * 32` values; `out` has room for
/// `(xs.len() - 1) * stride + 8` floats.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn group_rows(ty: GgmlType, tiles: *const u8, nb: usize, xs: &[Row8], out: *mut f32, stride: usize) {
    let mut t = 0;
    while t < xs.len() {
        let (x, o) = (&xs[t..], out.add(t * stride));
        t += match xs.len() - t {
            8.. => {
                by_type!(ty, group::<8>(tiles, nb, x, o, stride));
                8
            }
            4..=7 => {
                by_type!(ty, group::<4>(tiles, nb, x, o, stride));
                4
            }
            2..=3 => {
                by_type!(ty, group::<2>(tiles, nb, x, o, stride));
                2
            }
            _ => {
                by_type!(ty, group::<1>(tiles, nb, x, o, stride));
                1
            }
        };
    }
}

/// One row group against residual rows (`quant::quantize_a8_split`),
/// chunk by chunk ([`BlockChunk`]): only the listed tiles are read, each
/// once per chunk; every busy row's 8 sums are added to
/// `out[t * stride + r]` (t counted from the first residual row).
///
/// # Safety
/// As [`group_rows`], with `chunks` made by `Residual::new` for `xs`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn group_residual(ty: GgmlType, tiles: *const u8, chunks: &[BlockChunk], xs: &[Row8], out: *mut f32, stride: usize) {
    for c in chunks {
        by_type!(ty, group_chunk::<>(tiles, c, xs, out, stride));
    }
}
