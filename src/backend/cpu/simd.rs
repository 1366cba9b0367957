//! Dot-product kernels, chosen per weight type at run time. The scalar
//! kernels are `quant::dot::vec_dot_q16` (the readable definition); AVX2
//! versions are used when the CPU reports AVX2 and FMA.

use super::matmul::{DotKernel, FloatKernel};
use crate::quant::{self, ActRow, GgmlType};

pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Most activation rows one kernel call takes.
pub const MAX_TOKENS: usize = 4;

/// Which kernel family this process uses, for logs and benchmarks.
pub fn kernel_name() -> &'static str {
    if avx2_available() {
        "avx2+fma+f16c"
    } else {
        "scalar"
    }
}

/// The scalar kernel for a quantized type (every type `act_format` names).
pub fn scalar_q16(ty: GgmlType) -> DotKernel {
    macro_rules! k {
        ($t:expr) => {
            |w: &[u8], xs: &[ActRow], out: &mut [f32]| {
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = quant::vec_dot_q16($t, w, *x).unwrap_or(f32::NAN);
                }
            }
        };
    }
    use GgmlType::*;
    match ty {
        Q4_0 => k!(Q4_0),
        Q4_1 => k!(Q4_1),
        Q5_0 => k!(Q5_0),
        Q5_1 => k!(Q5_1),
        Q8_0 => k!(Q8_0),
        Q2K => k!(Q2K),
        Q3K => k!(Q3K),
        Q4K => k!(Q4K),
        Q5K => k!(Q5K),
        Q6K => k!(Q6K),
        Iq4Nl => k!(Iq4Nl),
        Iq4Xs => k!(Iq4Xs),
        _ => k!(Mxfp4),
    }
}

/// The fastest kernel this CPU has for a quantized type.
pub fn q16_kernel(ty: GgmlType) -> DotKernel {
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        use super::avx2;
        // SAFETY (each closure): AVX2 and FMA were detected above.
        let k: Option<DotKernel> = match ty {
            GgmlType::Q4_0 => Some(|w, xs, out| unsafe { avx2::q4_0(w, xs, out) }),
            GgmlType::Q4_1 => Some(|w, xs, out| unsafe { avx2::q4_1(w, xs, out) }),
            GgmlType::Q5_0 => Some(|w, xs, out| unsafe { avx2::q5_0(w, xs, out) }),
            GgmlType::Q5_1 => Some(|w, xs, out| unsafe { avx2::q5_1(w, xs, out) }),
            GgmlType::Q8_0 => Some(|w, xs, out| unsafe { avx2::q8_0(w, xs, out) }),
            GgmlType::Q4K => Some(|w, xs, out| unsafe { avx2::q4_k(w, xs, out) }),
            GgmlType::Q6K => Some(|w, xs, out| unsafe { avx2::q6_k(w, xs, out) }),
            _ => None,
        };
        if let Some(k) = k {
            return k;
        }
    }
    scalar_q16(ty)
}

/// Kernel for float weights (F32/F16/BF16) against f32 activations. Weight
/// bytes may sit at any offset the file's alignment allows.
pub fn float_kernel(ty: GgmlType) -> FloatKernel {
    match ty {
        GgmlType::F32 => |w, x| w.chunks_exact(4).zip(x).map(|(c, b)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * b).sum(),
        GgmlType::F16 => |w, x| w.chunks_exact(2).zip(x).map(|(c, b)| half::f16::from_le_bytes([c[0], c[1]]).to_f32() * b).sum(),
        _ => |w, x| w.chunks_exact(2).zip(x).map(|(c, b)| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) * b).sum(),
    }
}
