//! The k-quants: 256-element super-blocks with per-sub-block scales, plus
//! Q8_K activation quantization.
//!
//! | type | bytes | layout (in order)                                              |
//! |------|-------|----------------------------------------------------------------|
//! | Q2_K | 84    | scales [u8;16] (lo: scale, hi: min), qs [u8;64], d f16, dmin f16 |
//! | Q3_K | 110   | hmask [u8;32], qs [u8;64], scales [u8;12] (6-bit), d f16       |
//! | Q4_K | 144   | d f16, dmin f16, scales [u8;12] (6-bit sc+min), qs [u8;128]    |
//! | Q5_K | 176   | d f16, dmin f16, scales [u8;12], qh [u8;32], qs [u8;128]       |
//! | Q6_K | 210   | ql [u8;128], qh [u8;64], scales [i8;16], d f16                 |
//! | Q8_K | 292   | d f32, qs [i8;256], bsums [i16;16]                             |
//!
//! Each `unpack_*` returns integer weights plus one (scale, min) per
//! sub-block; `dequant_*` applies them in ggml's order of operations so the
//! result is bit-exact with the reference.

use super::float::f16_at;
use super::types::QK_K;

/// Integer weights of one super-block, with per-sub-block scale and minimum
/// (`y = scale[s] * q - min[s]`). Sub-blocks are `QK_K / N` elements long.
pub struct Unpacked<const N: usize> {
    pub q: [i8; QK_K],
    pub scale: [f32; N],
    pub min: [f32; N],
}

/// Q4_K/Q5_K 6-bit scale and min for sub-block `j` (ggml's get_scale_min_k4).
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

pub fn unpack_q2_k(b: &[u8]) -> Unpacked<16> {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut u = Unpacked { q: [0; QK_K], scale: [0.0; 16], min: [0.0; 16] };
    for s in 0..16 {
        u.scale[s] = d * (scales[s] & 0x0F) as f32;
        u.min[s] = dmin * (scales[s] >> 4) as f32;
    }
    // Each 128-element half uses 32 bytes of qs; 4 shifts of 2 bits make 4 runs of 32.
    for i in 0..QK_K {
        let (half, r) = (i / 128, i % 128);
        let (shift, l) = (r / 32 * 2, r % 32);
        u.q[i] = ((qs[half * 32 + l] >> shift) & 3) as i8;
    }
    u
}

pub fn unpack_q3_k(b: &[u8]) -> Unpacked<16> {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut u = Unpacked { q: [0; QK_K], scale: [0.0; 16], min: [0.0; 16] };
    for k in 0..16 {
        let lo = if k < 8 { sc[k] & 0x0F } else { sc[k - 8] >> 4 };
        let hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
        u.scale[k] = d * ((lo | (hi << 4)) as i8 - 32) as f32;
    }
    for i in 0..QK_K {
        let (half, r) = (i / 128, i % 128);
        let (shift, l) = (r / 32 * 2, r % 32);
        let low = ((qs[half * 32 + l] >> shift) & 3) as i8;
        // The high bit is set when the value is NOT offset by 4.
        let hbit = (hmask[l] >> (i / 32)) & 1;
        u.q[i] = low - if hbit == 0 { 4 } else { 0 };
    }
    u
}

fn unpack_q45_k(b: &[u8], qh: Option<&[u8]>, qs: &[u8]) -> Unpacked<8> {
    let (d, dmin, sc) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
    let mut u = Unpacked { q: [0; QK_K], scale: [0.0; 8], min: [0.0; 8] };
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, sc);
        u.scale[j] = d * s as f32;
        u.min[j] = dmin * m as f32;
    }
    // Runs of 64: 32 low nibbles then 32 high nibbles of the same 32 bytes.
    for i in 0..QK_K {
        let (chunk, l) = (i / 32, i % 32);
        let byte = qs[chunk / 2 * 32 + l];
        let mut q = if chunk % 2 == 0 { byte & 0x0F } else { byte >> 4 };
        if let Some(qh) = qh {
            q |= ((qh[l] >> chunk) & 1) << 4;
        }
        u.q[i] = q as i8;
    }
    u
}

pub fn unpack_q4_k(b: &[u8]) -> Unpacked<8> {
    unpack_q45_k(b, None, &b[16..144])
}

pub fn unpack_q5_k(b: &[u8]) -> Unpacked<8> {
    unpack_q45_k(b, Some(&b[16..48]), &b[48..176])
}

pub fn unpack_q6_k(b: &[u8]) -> Unpacked<16> {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    let mut u = Unpacked { q: [0; QK_K], scale: [0.0; 16], min: [0.0; 16] };
    for s in 0..16 {
        u.scale[s] = d * (sc[s] as i8) as f32;
    }
    // Per 128-element half: runs of 32 take (ql[l], ql[l+32]) low nibbles,
    // then their high nibbles; qh supplies 2 bits per run.
    for i in 0..QK_K {
        let (half, r) = (i / 128, i % 128);
        let (run, l) = (r / 32, r % 32);
        let lo_byte = ql[half * 64 + l + if run % 2 == 1 { 32 } else { 0 }];
        let lo = if run < 2 { lo_byte & 0x0F } else { lo_byte >> 4 };
        let hi = (qh[half * 32 + l] >> (2 * run)) & 3;
        u.q[i] = (lo | (hi << 4)) as i8 - 32;
    }
    u
}

fn apply<const N: usize>(u: &Unpacked<N>, o: &mut [f32], with_min: bool) {
    let sub = QK_K / N;
    for (i, y) in o.iter_mut().enumerate() {
        let s = i / sub;
        *y = if with_min { u.scale[s] * u.q[i] as f32 - u.min[s] } else { u.scale[s] * u.q[i] as f32 };
    }
}

macro_rules! dequant_fn {
    ($name:ident, $unpack:ident, $bytes:expr, $with_min:expr) => {
        pub fn $name(src: &[u8], out: &mut [f32]) {
            for (b, o) in src.chunks_exact($bytes).zip(out.chunks_exact_mut(QK_K)) {
                apply(&$unpack(b), o, $with_min);
            }
        }
    };
}

dequant_fn!(dequant_q2_k, unpack_q2_k, 84, true);
dequant_fn!(dequant_q3_k, unpack_q3_k, 110, false);
dequant_fn!(dequant_q4_k, unpack_q4_k, 144, true);
dequant_fn!(dequant_q5_k, unpack_q5_k, 176, true);
dequant_fn!(dequant_q6_k, unpack_q6_k, 210, false);

pub fn dequant_q8_k(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(292).zip(out.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes(b[0..4].try_into().unwrap());
        for (y, &q) in o.iter_mut().zip(&b[4..260]) {
            *y = d * (q as i8) as f32;
        }
    }
}

/// ggml's nearest_int: round half to even via the 1.5 * 2^23 trick.
#[inline]
fn nearest_int(f: f32) -> i32 {
    let val = f + 12582912.0;
    (val.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// Quantize f32 values (a multiple of 256) to Q8_K blocks, as ggml's
/// `quantize_row_q8_K_ref`: the element of largest magnitude maps to -127,
/// with per-16 sums of the quants in `bsums`.
pub fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(292)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            b.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let mut qs = [0i8; QK_K];
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for (o, &q) in b[4..260].iter_mut().zip(&qs) {
            *o = q as u8;
        }
        for j in 0..16 {
            let s: i16 = qs[j * 16..j * 16 + 16].iter().map(|&q| q as i16).sum();
            b[260 + 2 * j..262 + 2 * j].copy_from_slice(&s.to_le_bytes());
        }
    }
}
