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
                let (dw, qw) = match ty {
                    Q4_0 => legacy::unpack_q4_0(w),
                    Q5_0 => legacy::unpack_q5_0(w),
                    Q8_0 => legacy::unpack_q8_0(w),
                    Iq4Nl => nonlinear::unpack_iq4_nl(w),
                    _ => nonlinear::unpack_mxfp4(w),
                };
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
