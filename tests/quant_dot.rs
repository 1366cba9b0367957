//! Fused dot products against dequantize-then-dot, on the gguf-py fixture
//! blocks of every type.
//!
//! Tolerances: the f32 path sums the same products in a different order, so
//! it must agree to 1e-5 of Σ|w·x|. The 8-bit path is compared with
//! dequant(w) · dequant(quantize(x)): integer sums are exact, so the only
//! difference is f32 rounding of the scales, 1e-5 of Σ|w·x| again. Against the
//! unquantized x the 8-bit path carries activation quantization error; it must
//! stay within 1% of Σ|w·x| (Q8 rounding error is at most d/2 per element).

mod common;

use common::activations;

use rocmforge::quant::{self, act_format, quantize_acts, vec_dot_f32, vec_dot_q8, GgmlType};

fn dot64(a: &[f32], b: &[f32]) -> (f64, f64) {
    let d = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let m = a.iter().zip(b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
    (d, m)
}

#[test]
fn fused_dots_match_dequantize_then_dot() {
    for (name, ty) in common::FIXTURE_TYPES {
        let row = std::fs::read(common::fixture(&format!("quant/{name}.q"))).unwrap();
        let w = quant::dequantize_vec(ty, &row).unwrap();
        for seed in 1..4 {
            let x = activations(w.len(), seed);
            let (want, mag) = dot64(&w, &x);
            let got = vec_dot_f32(ty, &row, &x).unwrap() as f64;
            assert!((got - want).abs() <= 1e-5 * mag, "{name} f32 dot: {got} vs {want} (Σ|wx| {mag})");

            if let Some(fmt) = act_format(ty) {
                let xq = quantize_acts(fmt, &x).unwrap();
                let xd = quant::dequantize_vec(fmt.ggml_type(), &xq).unwrap();
                let (want_q, mag_q) = dot64(&w, &xd);
                let got_q = vec_dot_q8(ty, &row, &xq, x.len()).unwrap() as f64;
                assert!(
                    (got_q - want_q).abs() <= 1e-5 * mag_q,
                    "{name} x {:?} dot: {got_q} vs dequantized {want_q}",
                    fmt
                );
                let rel = (got_q - want).abs() / mag;
                assert!(rel < 1e-2, "{name} 8-bit dot strays {rel:e} of Σ|wx| from the f32 dot");
                if seed == 1 {
                    println!("{name:7} x {:?}: |q8 dot - f32 dot| / Σ|wx| = {rel:.2e}", fmt);
                }
            }
        }
    }
}

#[test]
fn q8_k_quantization_round_trips_within_half_a_step() {
    let x = activations(256 * 8, 7);
    let q = quantize_acts(quant::ActFormat::Q8K, &x).unwrap();
    let y = quant::dequantize_vec(GgmlType::Q8K, &q).unwrap();
    for (b, (xb, yb)) in x.chunks(256).zip(y.chunks(256)).enumerate() {
        let d = f32::from_le_bytes(q[b * 292..b * 292 + 4].try_into().unwrap()).abs();
        for (a, c) in xb.iter().zip(yb) {
            assert!((a - c).abs() <= d * 0.5 + 1e-6, "block {b}: {a} -> {c} (d {d})");
        }
        // bsums are the per-16 sums of the quants
        let qs = &q[b * 292 + 4..b * 292 + 260];
        for j in 0..16 {
            let s: i32 = qs[j * 16..j * 16 + 16].iter().map(|&v| v as i8 as i32).sum();
            let got = i16::from_le_bytes([q[b * 292 + 260 + 2 * j], q[b * 292 + 261 + 2 * j]]);
            assert_eq!(s, got as i32);
        }
    }
    // an all-zero block quantizes to zeros
    let z = quantize_acts(quant::ActFormat::Q8K, &[0.0; 256]).unwrap();
    assert!(z.iter().all(|&b| b == 0));
}

#[test]
fn dot_rejects_mismatched_lengths() {
    assert!(vec_dot_f32(GgmlType::Q4_0, &[0u8; 18], &[0.0; 64]).is_err());
    assert!(vec_dot_q8(GgmlType::Q4_0, &[0u8; 18], &[0u8; 34], 64).is_err());
    assert!(vec_dot_q8(GgmlType::F32, &[0u8; 128], &[0u8; 34], 32).is_err());
    assert!(quantize_acts(quant::ActFormat::Q8_0, &[0.0; 33]).is_err());
}

/// The activation dot of one width against dequant(w) · dequant(xq): only f32
/// rounding differs (1e-5 of Σ|w·x|); against the unquantized x, the
/// quantization error stays below `bound` of Σ|w·x|.
fn act_dots_match<T: quant::ActInt>(bound: f64) {
    for (name, ty) in common::FIXTURE_TYPES {
        if act_format(ty).is_none() {
            continue;
        }
        let row = std::fs::read(common::fixture(&format!("quant/{name}.q"))).unwrap();
        let w = quant::dequantize_vec(ty, &row).unwrap();
        let x = activations(w.len(), 11);
        let xq = quant::quantize_act::<T>(&x).unwrap();
        let xd: Vec<f32> = xq.q.iter().enumerate().map(|(i, &q)| q.into() as f32 * xq.d[i / 32]).collect();
        let (want_q, mag_q) = dot64(&w, &xd);
        let got = quant::vec_dot_act(ty, &row, xq.as_row()).unwrap() as f64;
        assert!((got - want_q).abs() <= 1e-5 * mag_q, "{name} activation dot: {got} vs {want_q}");
        let (want, mag) = dot64(&w, &x);
        let rel = (got - want).abs() / mag;
        assert!(rel < bound, "{name}: activation dot strays {rel:e} from the f32 dot");
        for (b, s) in xq.sum.iter().enumerate() {
            assert_eq!(*s, xq.q[b * 32..b * 32 + 32].iter().map(|&v| v.into()).sum::<i32>());
            assert!((xq.dsum[b] - xq.d[b] * *s as f32).abs() <= 1e-6 * xq.dsum[b].abs());
        }
        // every quant within half a step of x / d, and the largest at ±QMAX
        for (b, xb) in x.chunks_exact(32).enumerate() {
            let d = xq.d[b];
            let mut top = 0i32;
            for (i, &v) in xb.iter().enumerate() {
                let q: i32 = xq.q[b * 32 + i].into();
                assert!((q as f32 - v / d).abs() <= 0.5 + 1e-3 + 1e-6 * (v / d).abs(), "{name}: quant {q} for {v} / {d}");
                top = top.max(q.abs());
            }
            assert_eq!(top as f32, T::QMAX);
        }
    }
    assert!(quant::quantize_act::<T>(&[0.0; 33]).is_err());
    let zero = quant::quantize_act::<T>(&[0.0; 32]).unwrap();
    assert_eq!((zero.d[0], zero.sum[0]), (0.0, 0));
}

/// 16-bit activations (`FORGE_ACT16`): quantization error below 1e-4.
#[test]
fn q16_dots_match_dequantize_then_dot() {
    act_dots_match::<i16>(1e-4);
}

/// 8-bit activations (the default): below 1% (Q8 rounding is at most d/2).
#[test]
fn a8_dots_match_dequantize_then_dot() {
    act_dots_match::<i8>(1e-2);
}

/// Every kernel family this CPU has, for each type with x86 kernels and
/// both widths, against the portable scalar definition with 1 to 11 tokens
/// per call (so every token group size is used, and a partial one): the
/// same integer sums, only f32 accumulation order differs (1e-5 of Σ|w·x|).
/// The activation rows are slices of one quantized matrix, as the matmul
/// makes them (with an odd number of blocks per row, every other row's
/// scales start off 8-byte alignment). Types without x86 kernels run the
/// scalar definition itself, checked above against dequantize-then-dot.
#[test]
fn simd_kernels_match_scalar() {
    use rocmforge::backend::cpu::simd::{self, Family};
    println!("kernels in use: {}", simd::kernel_name());
    let families: Vec<Family> = Family::ALL.into_iter().filter(|f| *f != Family::Scalar && f.available()).collect();
    println!("SIMD families on this CPU: {families:?}");
    let mut tested = Vec::new();
    for (name, ty) in common::FIXTURE_TYPES {
        if !simd::SIMD_TYPES.contains(&ty) {
            continue;
        }
        let row = std::fs::read(common::fixture(&format!("quant/{name}.q"))).unwrap();
        let w = quant::dequantize_vec(ty, &row).unwrap();
        let cols = w.len();
        let xs: Vec<Vec<f32>> = (1..12u32).map(|seed| activations(cols, seed).iter().map(|v| v * (seed as f32 * 0.37 - 2.0)).collect()).collect();
        let all: Vec<f32> = xs.concat();
        let mags: Vec<f64> = xs.iter().map(|x| dot64(&w, x).1).collect();
        let check = |got: &[f32], want: &[f32], what: &str| {
            for k in 0..got.len() {
                assert!(((got[k] - want[k]) as f64).abs() <= 1e-5 * mags[k], "{name} {what} token {k}: {} vs scalar {}", got[k], want[k]);
            }
        };
        let q8 = quant::quantize_a8(&all).unwrap();
        let r8: Vec<_> = (0..xs.len()).map(|t| q8.row(t, cols)).collect();
        let q16 = quant::quantize_q16(&all).unwrap();
        let r16: Vec<_> = (0..xs.len()).map(|t| q16.row(t, cols)).collect();
        for nt in 1..=r8.len() {
            let mut slow = vec![0f32; nt];
            simd::scalar_kernel::<i8>(ty)(&row, &r8[..nt], &mut slow);
            for &f in &families {
                let mut fast = vec![0f32; nt];
                for t0 in (0..nt).step_by(simd::MAX_TOKENS) {
                    let t1 = (t0 + simd::MAX_TOKENS).min(nt);
                    simd::a8_kernel_of(f, ty)(&row, &r8[t0..t1], &mut fast[t0..t1]);
                }
                check(&fast, &slow, &format!("8-bit {} x{nt}", f.name()));
            }
            let mut slow = vec![0f32; nt];
            simd::scalar_kernel::<i16>(ty)(&row, &r16[..nt], &mut slow);
            let mut fast = vec![0f32; nt];
            for t0 in (0..nt).step_by(4) {
                let t1 = (t0 + 4).min(nt);
                simd::q16_kernel(ty)(&row, &r16[t0..t1], &mut fast[t0..t1]);
            }
            check(&fast, &slow, &format!("16-bit x{nt}"));
        }
        tested.push(name);
    }
    println!("types with x86 kernels tested: {tested:?}");
    assert_eq!(tested.len(), simd::SIMD_TYPES.len(), "every type with x86 kernels has a fixture");
}

/// A kernel called with shapes it cannot serve panics before any unsafe
/// code runs, instead of reading or writing past a buffer.
#[test]
fn kernels_refuse_mismatched_shapes() {
    use rocmforge::backend::cpu::simd;
    let row = std::fs::read(common::fixture("quant/Q8_0.q")).unwrap();
    let n = quant::dequantize_vec(GgmlType::Q8_0, &row).unwrap().len();
    let short = quant::quantize_a8(&vec![1.0; n - 32]).unwrap();
    let ok = quant::quantize_a8(&vec![1.0; n]).unwrap();
    let k = simd::a8_kernel(GgmlType::Q8_0);
    let r = std::panic::catch_unwind(|| k(&row, &[short.as_row()], &mut [0.0]));
    assert!(r.is_err(), "a short activation row must be refused");
    let r = std::panic::catch_unwind(|| k(&row, &[ok.as_row(), ok.as_row()], &mut [0.0]));
    assert!(r.is_err(), "two rows with room for one sum must be refused");
    let mut one = [0f32];
    k(&row, &[ok.as_row()], &mut one);
    assert!(one[0].is_finite());
}

/// Blocks too small for a normal step are zero blocks (1/d would be inf,
/// and the quants garbage with the wrong sign); small normal blocks keep
/// their signs.
#[test]
fn tiny_blocks_quantize_to_zero_or_keep_their_sign() {
    let mut x = vec![0f32; 64];
    x[..32].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 1e-38 } else { -7e-39 });
    x[32..].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 1e-30 } else { -1e-30 });
    let a = quant::quantize_a8(&x).unwrap();
    assert_eq!((a.d[0], a.sum[0]), (0.0, 0));
    assert!(a.q[..32].iter().all(|&q| q == 0));
    assert!(a.d[1] > 0.0);
    for (i, &q) in a.q[32..].iter().enumerate() {
        assert_eq!(q, if i % 2 == 0 { 127 } else { -127 }, "value {i} of the second block");
    }
    let b = quant::quantize_q16(&x).unwrap();
    assert_eq!(b.d[0], 0.0);
    assert!(b.q[32..].iter().enumerate().all(|(i, &q)| q == if i % 2 == 0 { 32767 } else { -32767 }));
}

/// The 8-bit split: the first row is exactly the plain 8-bit quants; the
/// second holds, in the blocks with an outlier (max|x| > OUTLIER × the
/// row's RMS), the rounding error at 1/RESIDUAL of the step, so the two
/// rows restore x to within d / (2 × RESIDUAL); every other block of it is
/// zero.
#[test]
fn residual_rows_restore_outlier_blocks() {
    let cols = 1024;
    let x: Vec<f32> = (1..4u32).flat_map(|s| common::activations_with_outliers(cols, s)).collect();
    let (main, resid) = quant::quantize_a8_split(&x, cols).unwrap();
    let plain = quant::quantize_a8(&x).unwrap();
    assert_eq!((&main.q, &main.d, &main.sum, &main.sum16), (&plain.q, &plain.d, &plain.sum, &plain.sum16));
    let (mut with, mut without) = (0, 0);
    for (t, row) in x.chunks(cols).enumerate() {
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / cols as f32).sqrt();
        for (b, xb) in row.chunks(32).enumerate() {
            let g = t * cols / 32 + b;
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (d, dr) = (main.d[g], resid.d[g]);
            let rq = &resid.q[g * 32..(g + 1) * 32];
            if amax > quant::dot::OUTLIER * rms {
                with += 1;
                assert_eq!(dr, d / quant::dot::RESIDUAL, "block {g}: residual step");
                assert_eq!(resid.sum[g], rq.iter().map(|&q| q as i32).sum::<i32>());
                for (i, &v) in xb.iter().enumerate() {
                    // the definition, bit for bit: the rounding error at
                    // 1/RESIDUAL of the step, rounded half to even
                    let e = (v * (1.0 / d) - main.q[g * 32 + i] as f32) * quant::dot::RESIDUAL;
                    assert_eq!(rq[i], e.round_ties_even().clamp(-127.0, 127.0) as i8, "block {g} value {i}");
                    let back = main.q[g * 32 + i] as f32 * d + rq[i] as f32 * dr;
                    assert!((back - v).abs() <= dr * 0.5001, "block {g} value {i}: {back} for {v}, step {d}");
                }
            } else {
                without += 1;
                assert_eq!((dr, resid.sum[g], resid.dsum[g]), (0.0, 0, 0.0), "block {g} has no outlier");
                assert!(rq.iter().all(|&q| q == 0));
            }
        }
    }
    assert!(with >= 20 && without >= 40, "both kinds of block are exercised: {with} with, {without} without");
    assert!(quant::quantize_a8_split(&x, 48).is_err());
}

/// Residual rows through every SIMD family's listed-block kernel equal the
/// scalar definition over the whole row; malformed block lists are refused.
#[test]
fn listed_kernels_match_scalar_on_residual_rows() {
    use rocmforge::backend::cpu::matmul::Residual;
    use rocmforge::backend::cpu::simd::{self, Family};
    let families: Vec<Family> = [Family::Avx2, Family::AvxVnni, Family::Avx512Vnni].into_iter().filter(|f| f.available()).collect();
    let mut tested = 0;
    for (name, ty) in common::FIXTURE_TYPES {
        if act_format(ty).is_none() {
            continue;
        }
        let row = std::fs::read(common::fixture(&format!("quant/{name}.q"))).unwrap();
        let w = quant::dequantize_vec(ty, &row).unwrap();
        let cols = w.len();
        // 70 rows: two chunks of the block-major kernels, and one row whose
        // residual is all zero (listed nowhere)
        let mut x: Vec<f32> = (1..71u32).flat_map(|s| common::activations_with_outliers(cols, s)).collect();
        x[cols * 66..cols * 67].copy_from_slice(&common::activations(cols, 66));
        let (_, resid) = quant::quantize_a8_split(&x, cols).unwrap();
        let rows: Vec<_> = (0..70).map(|t| resid.row(t, cols)).collect();
        let lists: Vec<Vec<u32>> = rows.iter().map(|r| (0..r.d.len() as u32).filter(|&b| r.d[b as usize] != 0.0).collect()).collect();
        assert!(lists.iter().enumerate().all(|(t, l)| (t == 66) == l.is_empty() && l.len() < cols / 32), "{name}: residual rows are partly listed, row 66 not at all");
        let res = Residual::new(&rows, &lists);
        let want: Vec<f32> = rows.iter().map(|r| quant::vec_dot_act(ty, &row, *r).unwrap()).collect();
        // Σ |w| |x| of the residual row: the scale of a rounding difference
        let mag: Vec<f32> = rows.iter().map(|r| r.q.iter().enumerate().map(|(i, &q)| (w[i] * q as f32 * r.d[i / 32]).abs()).sum()).collect();
        for f in families.iter().copied().chain([Family::Scalar]) {
            let mut got = vec![0f32; rows.len()];
            simd::a8_listed_kernel_of(f, ty)(&row, &res, &mut |t, v| got[t] += v);
            for t in 0..rows.len() {
                assert!((got[t] - want[t]).abs() <= 1e-5 * mag[t].max(1e-30), "{name} {} token {t}: listed {} vs scalar {}", f.name(), got[t], want[t]);
            }
        }
        tested += 1;
    }
    assert!(tested >= 7, "{tested} types");
    let x = common::activations_with_outliers(256, 9);
    let (_, resid) = quant::quantize_a8_split(&x, 256).unwrap();
    let rows = [resid.as_row()];
    for bad in [vec![vec![3u32, 1]], vec![vec![8u32]], vec![]] {
        let r = std::panic::catch_unwind(|| {
            Residual::new(&rows, &bad);
        });
        assert!(r.is_err(), "block lists {bad:?} must be refused");
    }
}
