//! Non-linear 4-bit codebooks: IQ4_NL, IQ4_XS and MXFP4.
//!
//! | type   | elems | bytes | layout                                                   |
//! |--------|-------|-------|----------------------------------------------------------|
//! | IQ4_NL | 32    | 18    | d f16, qs [u8;16]                                         |
//! | IQ4_XS | 256   | 136   | d f16, scales_h u16, scales_l [u8;4], qs [u8;128]         |
//! | MXFP4  | 32    | 17    | e u8 (E8M0 shared exponent), qs [u8;16] (FP4 E2M1 codes)  |
//!
//! Nibbles: byte j holds element j (low) and j + 16 (high) of a 32-run.
//! MXFP4 follows the OCP MX spec as GGUF stores it: the E2M1 values are kept
//! doubled as integers and the scale is halved (`2^(e-127) / 2`).

use super::float::f16_at;
use super::types::QK_K;

pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

#[inline]
fn codes(qs: &[u8], table: &[i8; 16]) -> [i8; 32] {
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = table[(qs[j] & 0x0F) as usize];
        q[j + 16] = table[(qs[j] >> 4) as usize];
    }
    q
}

/// E8M0 exponent to f32, halved (ggml's `ggml_e8m0_to_fp32_half`).
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { ((e as u32) - 1) << 23 };
    f32::from_bits(bits)
}

#[inline]
pub fn unpack_iq4_nl(b: &[u8]) -> (f32, [i8; 32]) {
    (f16_at(b, 0), codes(&b[2..18], &KVALUES_IQ4NL))
}

#[inline]
pub fn unpack_mxfp4(b: &[u8]) -> (f32, [i8; 32]) {
    (e8m0_to_f32_half(b[0]), codes(&b[1..17], &KVALUES_MXFP4))
}

/// IQ4_XS super-block: 8 runs of 32 with a 6-bit signed scale each.
pub fn unpack_iq4_xs(b: &[u8]) -> ([f32; 8], [i8; QK_K]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]);
    let (sl, qs) = (&b[4..8], &b[8..136]);
    let mut scale = [0f32; 8];
    let mut q = [0i8; QK_K];
    for j in 0..8 {
        let lo = (sl[j / 2] >> (4 * (j % 2))) & 0x0F;
        let hi = ((sh >> (2 * j)) & 3) as u8;
        scale[j] = d * ((lo | (hi << 4)) as i8 - 32) as f32;
        q[j * 32..j * 32 + 32].copy_from_slice(&codes(&qs[j * 16..j * 16 + 16], &KVALUES_IQ4NL));
    }
    (scale, q)
}

pub fn dequant_iq4_nl(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let (d, q) = unpack_iq4_nl(b);
        for (y, &q) in o.iter_mut().zip(&q) {
            *y = d * q as f32;
        }
    }
}

pub fn dequant_mxfp4(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(17).zip(out.chunks_exact_mut(32)) {
        let (d, q) = unpack_mxfp4(b);
        for (y, &q) in o.iter_mut().zip(&q) {
            *y = d * q as f32;
        }
    }
}

pub fn dequant_iq4_xs(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(136).zip(out.chunks_exact_mut(QK_K)) {
        let (scale, q) = unpack_iq4_xs(b);
        for (i, y) in o.iter_mut().enumerate() {
            *y = scale[i / 32] * q[i] as f32;
        }
    }
}
