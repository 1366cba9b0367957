//! AVX2/FMA dot kernels: weight blocks unpacked to 32 i8 lanes, widened to
//! i16 and multiplied with the 16-bit activations by `vpmaddwd` (i32 pair
//! sums), then scaled and accumulated in f32. Same math as
//! `quant::dot::vec_dot_q16`; only the f32 summation order differs.
//! These are the 16-bit activation kernels (`FORGE_ACT16=1`); the default
//! 8-bit ones are in `x86_a8`. Only called after `avx2_available()` returned true.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::quant::kquants::scale_min_k4;
use crate::quant::ActRow;

type Row16<'a> = ActRow<'a, i16>;

/// Most tokens one call handles: each weight block is unpacked once and
/// multiplied with up to this many activation rows.
pub const MAX_TOKENS: usize = 4;

/// f16 at `p` → f32 with the F16C instruction.
#[inline(always)]
pub(super) unsafe fn f16p(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32)))
}

/// f16 → f32 with the F16C instruction.
#[inline(always)]
unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    let h = u16::from_le_bytes([*b.get_unchecked(i), *b.get_unchecked(i + 1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Σ over 32 lanes of w (i8) × x (i16), as 8 i32 partial sums.
#[inline(always)]
unsafe fn madd32(w: __m256i, x: *const i16) -> __m256i {
    let wl = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w));
    let wh = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1));
    let xl = _mm256_loadu_si256(x as *const __m256i);
    let xh = _mm256_loadu_si256(x.add(16) as *const __m256i);
    _mm256_add_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh))
}

/// Σ over 16 lanes (the low or high half of w) × x, as 8 i32 partial sums.
#[inline(always)]
unsafe fn madd16(w: __m128i, x: *const i16) -> __m256i {
    _mm256_madd_epi16(_mm256_cvtepi8_epi16(w), _mm256_loadu_si256(x as *const __m256i))
}

/// 16 bytes of nibbles → 32 lanes: low nibbles (elements 0..16), then high.
#[inline(always)]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let b = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(b, m);
    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// Bit j of `bits` → 0xFF in byte j (32 bytes).
#[inline(always)]
pub(super) unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(v, shuf);
    let mask = _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFEu64 as i64);
    let set = _mm256_or_si256(bytes, mask);
    _mm256_cmpeq_epi8(set, _mm256_set1_epi64x(-1))
}

/// One 128-value half of a Q6_K super-block at `p` as its four runs of 32
/// values in element order: (low 4 bits, high 2 bits) per byte lane.
#[inline(always)]
pub(super) unsafe fn q6k_runs(p: *const u8, half: usize) -> [(__m256i, __m256i); 4] {
    let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let ql = p.add(half * 64);
    let qh = _mm256_loadu_si256(p.add(128 + half * 32) as *const __m256i);
    let l0 = _mm256_loadu_si256(ql as *const __m256i);
    let l1 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
    [
        (_mm256_and_si256(l0, m4), _mm256_and_si256(qh, m3)),
        (_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m3)),
        (_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 4), m3)),
        (_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 6), m3)),
    ]
}

/// 32 i8 lanes → two vectors of 16 i16 (elements 0..16, 16..32).
#[inline(always)]
unsafe fn widen(w: __m256i) -> (__m256i, __m256i) {
    (_mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)), _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1)))
}

/// 16 bytes of nibbles straight to i16: low nibbles (elements 0..16), high (16..32).
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> (__m256i, __m256i) {
    let b = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    (_mm256_cvtepu8_epi16(_mm_and_si128(b, m)), _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(b, 4), m)))
}

/// Weights with one scale per 32 and an optional minimum, against up to
/// MAX_TOKENS activation rows: each block is unpacked once (to i16 halves).
#[inline(always)]
unsafe fn dot_blocks<const TS: usize>(
    row: &[u8],
    xs: &[Row16],
    out: &mut [f32],
    unpack: impl Fn(*const u8) -> (f32, f32, (__m256i, __m256i)),
) {
    let nb = row.len() / TS;
    let nt = xs.len().min(MAX_TOKENS);
    let mut acc = [_mm256_setzero_ps(); MAX_TOKENS];
    let mut acc_min = [0f32; MAX_TOKENS];
    for b in 0..nb {
        let (d, m, (wl, wh)) = unpack(row.as_ptr().add(b * TS));
        for t in 0..nt {
            let x = xs.get_unchecked(t);
            let dx = *x.d.get_unchecked(b);
            let xp = x.q.as_ptr().add(b * 32);
            let xl = _mm256_loadu_si256(xp as *const __m256i);
            let xh = _mm256_loadu_si256(xp.add(16) as *const __m256i);
            let p = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh)));
            acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * dx), acc[t]);
            acc_min[t] += m * *x.dsum.get_unchecked(b);
        }
    }
    for t in 0..nt {
        out[t] = hsum(acc[t]) + acc_min[t];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0(row: &[u8], xs: &[Row16], out: &mut [f32]) {
    dot_blocks::<18>(row, xs, out, |p| {
        let (lo, hi) = nibbles16(p.add(2));
        let eight = _mm256_set1_epi16(8);
        (f16_at(std::slice::from_raw_parts(p, 2), 0), 0.0, (_mm256_sub_epi16(lo, eight), _mm256_sub_epi16(hi, eight)))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1(row: &[u8], xs: &[Row16], out: &mut [f32]) {
    dot_blocks::<20>(row, xs, out, |p| {
        let h = std::slice::from_raw_parts(p, 4);
        (f16_at(h, 0), f16_at(h, 2), nibbles16(p.add(4)))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0(row: &[u8], xs: &[Row16], out: &mut [f32]) {
    dot_blocks::<22>(row, xs, out, |p| {
        let h = std::slice::from_raw_parts(p, 6);
        let qh = u32::from_le_bytes([h[2], h[3], h[4], h[5]]);
        let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
        let w = _mm256_or_si256(nibbles(p.add(6)), hi);
        (f16_at(h, 0), 0.0, widen(_mm256_sub_epi8(w, _mm256_set1_epi8(16))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_1(row: &[u8], xs: &[Row16], out: &mut [f32]) {
    dot_blocks::<24>(row, xs, out, |p| {
        let h = std::slice::from_raw_parts(p, 8);
        let qh = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
        (f16_at(h, 0), f16_at(h, 2), widen(_mm256_or_si256(nibbles(p.add(8)), hi)))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0(row: &[u8], xs: &[Row16], out: &mut [f32]) {
    dot_blocks::<34>(row, xs, out, |p| (f16_at(std::slice::from_raw_parts(p, 2), 0), 0.0, widen(_mm256_loadu_si256(p.add(2) as *const __m256i))))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k(row: &[u8], xs: &[Row16], out: &mut [f32]) {
    let nt = xs.len().min(MAX_TOKENS);
    let mut acc = [_mm256_setzero_ps(); MAX_TOKENS];
    let mut acc_min = [0f32; MAX_TOKENS];
    let m4 = _mm256_set1_epi8(0x0F);
    for (bi, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin, sc) = (f16_at(blk, 0), f16_at(blk, 2), &blk[4..16]);
        let qs = blk.as_ptr().add(16);
        for c in 0..4 {
            let bytes = _mm256_loadu_si256(qs.add(c * 32) as *const __m256i);
            for (half, w) in [(0, _mm256_and_si256(bytes, m4)), (1, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4))] {
                let j = 2 * c + half; // sub-block of 32 = activation block
                let b = bi * 8 + j;
                let (s, m) = scale_min_k4(j, sc);
                let (ds, dm) = (d * s as f32, dmin * m as f32);
                for t in 0..nt {
                    let x = xs.get_unchecked(t);
                    let dx = *x.d.get_unchecked(b);
                    let p = _mm256_cvtepi32_ps(madd32(w, x.q.as_ptr().add(b * 32)));
                    acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(ds * dx), acc[t]);
                    acc_min[t] += dm * *x.dsum.get_unchecked(b);
                }
            }
        }
    }
    for t in 0..nt {
        out[t] = hsum(acc[t]) - acc_min[t];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k(row: &[u8], xs: &[Row16], out: &mut [f32]) {
    let nt = xs.len().min(MAX_TOKENS);
    let mut acc = [_mm256_setzero_ps(); MAX_TOKENS];
    let off = _mm256_set1_epi8(32);
    for (bi, blk) in row.chunks_exact(210).enumerate() {
        let d = f16_at(blk, 208);
        let sc = &blk[192..208];
        for half in 0..2 {
            for (run, (lo, hi)) in q6k_runs(blk.as_ptr(), half).into_iter().enumerate() {
                let w = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), off);
                let e0 = half * 128 + run * 32; // element index in the super-block
                let b = bi * 8 + e0 / 32;
                let ds0 = d * sc[e0 / 16] as i8 as f32;
                let ds1 = d * sc[e0 / 16 + 1] as i8 as f32;
                let (wl, wh) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
                for t in 0..nt {
                    let x = xs.get_unchecked(t);
                    let dx = *x.d.get_unchecked(b);
                    let xq = x.q.as_ptr().add(b * 32);
                    let p0 = _mm256_cvtepi32_ps(madd16(wl, xq));
                    let p1 = _mm256_cvtepi32_ps(madd16(wh, xq.add(16)));
                    acc[t] = _mm256_fmadd_ps(p0, _mm256_set1_ps(ds0 * dx), acc[t]);
                    acc[t] = _mm256_fmadd_ps(p1, _mm256_set1_ps(ds1 * dx), acc[t]);
                }
            }
        }
    }
    for t in 0..nt {
        out[t] = hsum(acc[t]);
    }
}
