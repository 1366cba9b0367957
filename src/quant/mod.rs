//! Tensor formats: block layouts, dequantization to f32, 8-bit activation
//! quantization and fused dot products.
//!
//! Supported for dequantization (bit-exact with ggml's reference and gguf-py):
//! F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
//! Q8_K, IQ4_NL, IQ4_XS, MXFP4. Other ids parse (the loader knows their sizes)
//! but are refused here with `Error::UnsupportedType`.

pub mod dot;
mod float;
pub mod kquants;
pub mod legacy;
pub mod nonlinear;
mod types;

pub use dot::{act_format, quantize_a8, quantize_a8_split, quantize_a8_split_into, quantize_a8_split_row, quantize_act, quantize_act_into, quantize_acts, quantize_q16, vec_dot_act, vec_dot_f32, vec_dot_q8, ActFormat, ActInt, ActQ, ActQ16, ActQ8, ActRow, ActRowMut};
pub use float::f16_at;
pub use types::{GgmlType, QK_K};

use crate::error::{Error, Result};

/// True if [`dequantize`] handles `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K | Q8K | Iq4Nl | Iq4Xs | Mxfp4)
}

/// Dequantize `src` (whole blocks of `ty`) into `out` (one f32 per element).
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    use GgmlType::*;
    let (bs, ts) = ty.block_geometry();
    if src.len() % ts != 0 || src.len() / ts * bs != out.len() {
        return Err(Error::InvalidArgument(format!(
            "dequantize {ty}: {} bytes is not {} values ({} bytes per {} values)",
            src.len(),
            out.len(),
            ts,
            bs
        )));
    }
    match ty {
        F32 => float::dequant_f32(src, out),
        F16 => float::dequant_f16(src, out),
        BF16 => float::dequant_bf16(src, out),
        Q4_0 => legacy::dequant_q4_0(src, out),
        Q4_1 => legacy::dequant_q4_1(src, out),
        Q5_0 => legacy::dequant_q5_0(src, out),
        Q5_1 => legacy::dequant_q5_1(src, out),
        Q8_0 => legacy::dequant_q8_0(src, out),
        Q2K => kquants::dequant_q2_k(src, out),
        Q3K => kquants::dequant_q3_k(src, out),
        Q4K => kquants::dequant_q4_k(src, out),
        Q5K => kquants::dequant_q5_k(src, out),
        Q6K => kquants::dequant_q6_k(src, out),
        Q8K => kquants::dequant_q8_k(src, out),
        Iq4Nl => nonlinear::dequant_iq4_nl(src, out),
        Iq4Xs => nonlinear::dequant_iq4_xs(src, out),
        Mxfp4 => nonlinear::dequant_mxfp4(src, out),
        other => return Err(Error::UnsupportedType { what: format!("{other} (dequantization not implemented)") }),
    }
    Ok(())
}

/// Dequantize into a new vector.
pub fn dequantize_vec(ty: GgmlType, src: &[u8]) -> Result<Vec<f32>> {
    let (bs, ts) = ty.block_geometry();
    let mut out = vec![0f32; src.len() / ts * bs];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}
