//! The 32-element "legacy" block formats, and Q8_0 activation quantization.
//!
//! | type | bytes | layout                                  | value            |
//! |------|-------|-----------------------------------------|------------------|
//! | Q4_0 | 18    | d: f16, qs: [u8; 16]                    | d * (q - 8)      |
//! | Q4_1 | 20    | d: f16, m: f16, qs: [u8; 16]            | d * q + m        |
//! | Q5_0 | 22    | d: f16, qh: u32, qs: [u8; 16]           | d * (q - 16)     |
//! | Q5_1 | 24    | d: f16, m: f16, qh: u32, qs: [u8; 16]   | d * q + m        |
//! | Q8_0 | 34    | d: f16, qs: [i8; 32]                    | d * q            |
//!
//! Nibbles: byte j holds element j (low nibble) and element j + 16 (high).
//! Q5 high bits: bit j of qh is the fifth bit of element j.
//! Arithmetic order matches ggml's reference (and gguf-py), so results are
//! bit-exact: one f32 multiply, then one f32 add where there is a minimum.

use super::float::f16_at;
use half::f16;

#[inline]
fn nibbles(qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

#[inline]
fn with_high_bits(mut q: [u8; 32], qh: u32) -> [u8; 32] {
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
    q
}

/// Unpack one block's integer weights (after the zero-point offset) and its
/// scale and minimum. Shared by dequantization and the integer dot products.
#[inline]
pub fn unpack_q4_0(b: &[u8]) -> (f32, [i8; 32]) {
    (f16_at(b, 0), nibbles(&b[2..18]).map(|q| q as i8 - 8))
}

#[inline]
pub fn unpack_q4_1(b: &[u8]) -> (f32, f32, [u8; 32]) {
    (f16_at(b, 0), f16_at(b, 2), nibbles(&b[4..20]))
}

#[inline]
pub fn unpack_q5_0(b: &[u8]) -> (f32, [i8; 32]) {
    let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
    (f16_at(b, 0), with_high_bits(nibbles(&b[6..22]), qh).map(|q| q as i8 - 16))
}

#[inline]
pub fn unpack_q5_1(b: &[u8]) -> (f32, f32, [u8; 32]) {
    let qh = u32::from_le_bytes(b[4..8].try_into().unwrap());
    (f16_at(b, 0), f16_at(b, 2), with_high_bits(nibbles(&b[8..24]), qh))
}

#[inline]
pub fn unpack_q8_0(b: &[u8]) -> (f32, [i8; 32]) {
    let mut q = [0i8; 32];
    for (v, &x) in q.iter_mut().zip(&b[2..34]) {
        *v = x as i8;
    }
    (f16_at(b, 0), q)
}

pub fn dequant_q4_0(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let (d, q) = unpack_q4_0(b);
        for (y, &q) in o.iter_mut().zip(&q) {
            *y = d * q as f32;
        }
    }
}

pub fn dequant_q4_1(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let (d, m, q) = unpack_q4_1(b);
        for (y, &q) in o.iter_mut().zip(&q) {
            *y = d * q as f32 + m;
        }
    }
}

pub fn dequant_q5_0(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
        let (d, q) = unpack_q5_0(b);
        for (y, &q) in o.iter_mut().zip(&q) {
            *y = d * q as f32;
        }
    }
}

pub fn dequant_q5_1(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
        let (d, m, q) = unpack_q5_1(b);
        for (y, &q) in o.iter_mut().zip(&q) {
            *y = d * q as f32 + m;
        }
    }
}

pub fn dequant_q8_0(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let (d, q) = unpack_q8_0(b);
        for (y, &q) in o.iter_mut().zip(&q) {
            *y = d * q as f32;
        }
    }
}

/// Quantize f32 values (a multiple of 32) to Q8_0 blocks, exactly as ggml's
/// `quantize_row_q8_0_ref`: d = max|x| / 127, q = round(x / d) (half away
/// from zero), d stored as f16.
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for (q, &v) in b[2..].iter_mut().zip(xb) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}
