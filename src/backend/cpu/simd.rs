//! Dot-product kernels, chosen per weight type and CPU at run time. The
//! scalar kernels are `quant::dot::vec_dot_act` (the readable definition);
//! the x86 families ([`Family`]) must match them.

use super::matmul::{DotKernel, FloatKernel, Residual};
use crate::quant::{self, ActInt, ActRow, GgmlType};

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
pub const MAX_TOKENS: usize = 8;

/// A family of dot kernels, by the instruction that multiplies bytes.
/// Never AMX: these VMs list it but trap on it.
/// cbindgen:ignore
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Portable Rust (`quant::dot::vec_dot_act`).
    Scalar,
    /// AVX2 + FMA + F16C: `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-VNNI (VEX-encoded `vpdpbusd`).
    AvxVnni,
    /// AVX-512 F/BW/VL + VNNI (`vpdpbusd`, two blocks per 512-bit vector;
    /// weights packed into 8-row tiles at load, `packed`).
    Avx512Vnni,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Scalar, Family::Avx2, Family::AvxVnni, Family::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Family::Scalar => "scalar",
            Family::Avx2 => "avx2",
            Family::AvxVnni => "avxvnni",
            Family::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU runs the family.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Family::Scalar => true,
                Family::Avx2 => avx2_available(),
                Family::AvxVnni => avx2_available() && is_x86_feature_detected!("avxvnni"),
                Family::Avx512Vnni => {
                    avx2_available() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Family::Scalar
        }
    }

    /// The family this process uses: the best this CPU has, or the one
    /// `FORGE_CPU_KERNELS` names (scalar, avx2, avxvnni, avx512vnni) when
    /// the CPU has it.
    pub fn current() -> Family {
        static F: std::sync::OnceLock<Family> = std::sync::OnceLock::new();
        *F.get_or_init(|| {
            let best = *Family::ALL.iter().rev().find(|f| f.available()).unwrap_or(&Family::Scalar);
            match std::env::var("FORGE_CPU_KERNELS") {
                Ok(v) => match Family::ALL.iter().find(|f| f.name() == v.trim()) {
                    Some(&f) if f.available() => f,
                    _ => best,
                },
                Err(_) => best,
            }
        })
    }
}

/// Whether matmuls quantize activations to 16 bits instead of 8
/// (`FORGE_ACT16`: slower, closer to f32; see `quant::dot`).
pub fn act16() -> bool {
    static A: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *A.get_or_init(|| crate::env_flag("FORGE_ACT16"))
}

/// Which kernels this process uses, for logs and benchmarks.
pub fn kernel_name() -> String {
    let f = Family::current();
    if act16() {
        format!("{} (16-bit activations)", if f == Family::Scalar { "scalar" } else { "avx2" })
    } else {
        format!("{} (8-bit activations)", f.name())
    }
}

/// The scalar kernel for a quantized type and an activation width (every
/// type `act_format` names).
pub fn scalar_kernel<T: ActInt>(ty: GgmlType) -> DotKernel<T> {
    macro_rules! k {
        ($t:expr) => {
            |w: &[u8], xs: &[ActRow<T>], out: &mut [f32]| {
                // the SIMD kernels' contract: wrong shapes panic
                check_shapes($t, w, xs, out);
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = quant::vec_dot_act($t, w, *x).unwrap_or(f32::NAN);
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

/// The shapes a SIMD kernel relies on, checked before any unsafe code runs
/// (the kernels read and write through unchecked pointers): at most
/// MAX_TOKENS rows, room for their sums, and every activation row as long
/// as the weight row with its scales and sums.
fn check_rows<T>(ty: GgmlType, w: &[u8], xs: &[ActRow<T>], out: &[f32]) {
    assert!(xs.len() <= MAX_TOKENS, "{} activation rows, at most {MAX_TOKENS} per call", xs.len());
    check_shapes(ty, w, xs, out);
}

/// [`check_rows`] without the row limit (the scalar kernels take any number).
fn check_shapes<T>(ty: GgmlType, w: &[u8], xs: &[ActRow<T>], out: &[f32]) {
    let (bs, ts) = ty.block_geometry();
    let n = w.len() / ts * bs;
    assert!(w.len().is_multiple_of(ts), "{ty} weight row of {} bytes is not whole blocks", w.len());
    assert!(out.len() >= xs.len(), "{} activation rows, {} outputs", xs.len(), out.len());
    for x in xs {
        assert!(
            x.q.len() == n && x.d.len() * 32 == n && x.dsum.len() * 32 == n && x.sum.len() * 32 == n && x.sum16.len() * 16 == n,
            "activation row does not match a {ty} row of {n} values"
        );
    }
}

/// The 8-bit activation kernel of `family` for a quantized type (the scalar
/// one where the family has none for the type).
pub fn a8_kernel_of(family: Family, ty: GgmlType) -> DotKernel<i8> {
    #[cfg(target_arch = "x86_64")]
    if family != Family::Scalar && family.available() {
        use super::x86_a8 as k;
        use GgmlType::*;
        macro_rules! pick {
            ($($t:ident => $a:ident, $v:ident, $z:ident);*) => {
                match ty {
                    // SAFETY (each closure): `family.available()` checked the ISA's
                    // features, check_rows the shapes.
                    $($t => Some(match family {
                        Family::Avx2 => {
                            let f: DotKernel<i8> = |w, xs, out| {
                                check_rows($t, w, xs, out);
                                unsafe { k::$a(w, xs, out) }
                            };
                            f
                        }
                        Family::AvxVnni => {
                            let f: DotKernel<i8> = |w, xs, out| {
                                check_rows($t, w, xs, out);
                                unsafe { k::$v(w, xs, out) }
                            };
                            f
                        }
                        _ => {
                            let f: DotKernel<i8> = |w, xs, out| {
                                check_rows($t, w, xs, out);
                                unsafe { k::$z(w, xs, out) }
                            };
                            f
                        }
                    }),)*
                    _ => None,
                }
            };
        }
        let found = pick!(
            Q4_0 => q4_0_avx2, q4_0_avxvnni, q4_0_avx512vnni;
            Q4_1 => q4_1_avx2, q4_1_avxvnni, q4_1_avx512vnni;
            Q5_0 => q5_0_avx2, q5_0_avxvnni, q5_0_avx512vnni;
            Q5_1 => q5_1_avx2, q5_1_avxvnni, q5_1_avx512vnni;
            Q8_0 => q8_0_avx2, q8_0_avxvnni, q8_0_avx512vnni;
            Q4K => q4_k_avx2, q4_k_avxvnni, q4_k_avx512vnni;
            Q6K => q6_k_avx2, q6_k_avxvnni, q6_k_avx512vnni
        );
        if let Some(k) = found {
            return k;
        }
    }
    scalar_kernel(ty)
}

/// A kernel for residual rows (`quant::quantize_a8_split_row`): one weight
/// row against each token's residual row, over its listed blocks only (the
/// others are zero); `add(t, v)` receives token t's product.
/// cbindgen:ignore
pub type ListedKernel = fn(&[u8], &Residual, &mut dyn FnMut(usize, f32));

/// The listed-block kernel of `family` for a quantized type; where the
/// family has none, the scalar definition over the weight blocks that hold
/// a listed block (the unlisted blocks are zero).
pub fn a8_listed_kernel_of(family: Family, ty: GgmlType) -> ListedKernel {
    #[cfg(target_arch = "x86_64")]
    if family != Family::Scalar && family.available() {
        use super::x86_a8 as k;
        use GgmlType::*;
        macro_rules! pick {
            ($($t:ident => $a:ident, $v:ident, $z:ident);*) => {
                match ty {
                    // SAFETY (each closure): `family.available()` checked the ISA's
                    // features, Residual::new the lists, check_listed the length.
                    $($t => Some(match family {
                        Family::Avx2 => {
                            let f: ListedKernel = |w, x, add| {
                                check_listed($t, w, x);
                                unsafe { k::$a(w, x.rows(), x.chunks(), add) }
                            };
                            f
                        }
                        Family::AvxVnni => {
                            let f: ListedKernel = |w, x, add| {
                                check_listed($t, w, x);
                                unsafe { k::$v(w, x.rows(), x.chunks(), add) }
                            };
                            f
                        }
                        _ => {
                            let f: ListedKernel = |w, x, add| {
                                check_listed($t, w, x);
                                unsafe { k::$z(w, x.rows(), x.chunks(), add) }
                            };
                            f
                        }
                    }),)*
                    _ => None,
                }
            };
        }
        let found = pick!(
            Q4_0 => q4_0_avx2_listed, q4_0_avxvnni_listed, q4_0_avx512vnni_listed;
            Q4_1 => q4_1_avx2_listed, q4_1_avxvnni_listed, q4_1_avx512vnni_listed;
            Q5_0 => q5_0_avx2_listed, q5_0_avxvnni_listed, q5_0_avx512vnni_listed;
            Q5_1 => q5_1_avx2_listed, q5_1_avxvnni_listed, q5_1_avx512vnni_listed;
            Q8_0 => q8_0_avx2_listed, q8_0_avxvnni_listed, q8_0_avx512vnni_listed;
            Q4K => q4_k_avx2_listed, q4_k_avxvnni_listed, q4_k_avx512vnni_listed;
            Q6K => q6_k_avx2_listed, q6_k_avxvnni_listed, q6_k_avx512vnni_listed
        );
        if let Some(k) = found {
            return k;
        }
    }
    let _ = family;
    scalar_listed(ty)
}

/// The fastest listed-block kernel this process uses for a type.
pub fn a8_listed_kernel(ty: GgmlType) -> ListedKernel {
    a8_listed_kernel_of(Family::current(), ty)
}

fn scalar_listed(ty: GgmlType) -> ListedKernel {
    macro_rules! by_type {
        ($($t:ident),*) => {
            match ty {
                $(GgmlType::$t => |w, x, add| {
                    check_listed(GgmlType::$t, w, x);
                    let (bs, ts) = GgmlType::$t.block_geometry();
                    let per = bs / 32; // activation blocks per weight block
                    for (t, (row, list)) in x.rows().iter().zip(x.lists()).enumerate() {
                        if list.is_empty() {
                            continue;
                        }
                        // only the weight blocks that hold a listed block
                        let mut acc = 0f32;
                        let mut last = usize::MAX;
                        for &b in list {
                            let wb = b as usize / per;
                            if wb == last {
                                continue;
                            }
                            last = wb;
                            let (a0, a1) = (wb * per, (wb + 1) * per);
                            let sub = ActRow { d: &row.d[a0..a1], q: &row.q[wb * bs..(wb + 1) * bs], sum: &row.sum[a0..a1], sum16: &row.sum16[2 * a0..2 * a1], dsum: &row.dsum[a0..a1] };
                            acc += quant::vec_dot_act(GgmlType::$t, &w[wb * ts..(wb + 1) * ts], sub).unwrap_or(f32::NAN);
                        }
                        add(t, acc);
                    }
                },)*
                _ => panic!("{ty} has no integer activation dot product"),
            }
        };
    }
    by_type!(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Iq4Nl, Mxfp4, Q2K, Q3K, Q4K, Q5K, Q6K, Iq4Xs)
}

/// Panics unless the residual rows (checked by `Residual::new`) have the
/// length of a weight row `w`.
fn check_listed(ty: GgmlType, w: &[u8], x: &Residual) {
    let (bs, ts) = ty.block_geometry();
    assert!(w.len().is_multiple_of(ts) && (x.rows().is_empty() || x.cols() == w.len() / ts * bs), "{ty}: residual rows of {} values against a weight row of {} bytes", x.cols(), w.len());
}

/// The types with x86 kernels (8-bit in every SIMD family, 16-bit in AVX2);
/// the others run the scalar definition.
/// cbindgen:ignore
pub const SIMD_TYPES: [GgmlType; 7] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];

/// The fastest 8-bit activation kernel this process uses for a type.
pub fn a8_kernel(ty: GgmlType) -> DotKernel<i8> {
    a8_kernel_of(Family::current(), ty)
}

/// The fastest 16-bit activation kernel this process uses for a type.
pub fn q16_kernel(ty: GgmlType) -> DotKernel<i16> {
    #[cfg(target_arch = "x86_64")]
    if Family::current() != Family::Scalar {
        use super::avx2;
        macro_rules! k16 {
            ($t:expr, $f:ident) => {{
                let f: DotKernel<i16> = |w, xs, out| {
                    check_rows($t, w, xs, out);
                    assert!(xs.len() <= avx2::MAX_TOKENS, "16-bit kernels take at most {} rows", avx2::MAX_TOKENS);
                    // SAFETY: AVX2, FMA and F16C were detected (Family is
                    // not Scalar); the shapes were checked above.
                    unsafe { avx2::$f(w, xs, out) }
                };
                Some(f)
            }};
        }
        let k: Option<DotKernel<i16>> = match ty {
            GgmlType::Q4_0 => k16!(GgmlType::Q4_0, q4_0),
            GgmlType::Q4_1 => k16!(GgmlType::Q4_1, q4_1),
            GgmlType::Q5_0 => k16!(GgmlType::Q5_0, q5_0),
            GgmlType::Q5_1 => k16!(GgmlType::Q5_1, q5_1),
            GgmlType::Q8_0 => k16!(GgmlType::Q8_0, q8_0),
            GgmlType::Q4K => k16!(GgmlType::Q4K, q4_k),
            GgmlType::Q6K => k16!(GgmlType::Q6K, q6_k),
            _ => None,
        };
        if let Some(k) = k {
            return k;
        }
    }
    scalar_kernel(ty)
}

/// Row converter for float weights (F32/F16/BF16) to f32, which the float
/// products then dot with f32 activations. Weight bytes may sit at any
/// offset the file's alignment allows.
pub fn float_kernel(ty: GgmlType) -> FloatKernel {
    match ty {
        GgmlType::F32 => |w, out| w.chunks_exact(4).zip(out).for_each(|(c, o)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        GgmlType::F16 => f16_row,
        _ => |w, out| w.chunks_exact(2).zip(out).for_each(|(c, o)| *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
    }
}

crate::avx2_multiversion! {
/// F16 bytes to f32 (half converts with F16C where the CPU has it).
pub fn f16_row(w: &[u8], out: &mut [f32]) {
    for (c, o) in w.chunks_exact(2).zip(out) {
        *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}
}
