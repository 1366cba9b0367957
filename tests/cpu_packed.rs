//! The CPU's packed weight tiles (`backend::cpu::packed`): for every type
//! with a packed form, a matrix built from the gguf-py fixture blocks is
//! packed, then
//! - the portable reader of the tile layout (`Packed::dot_scalar`), on any
//!   CPU, and
//! - the AVX-512 VNNI matmul, where this CPU has it (the test says which),
//!
//! must equal the scalar definition on the original rows
//! (`quant::vec_dot_act`): the same integer sums, f32 order aside (1e-5 of
//! Σ|w·x|). Rows come in groups of 8; 1 to 11 tokens use every token group
//! size of the kernel and a partial one.

mod common;

use common::activations;

use rocmforge::backend::cpu::matmul::Residual;
use rocmforge::backend::cpu::packed::{self, Format};
use rocmforge::backend::cpu::simd::Family;
use rocmforge::quant::{self, GgmlType};

/// 40 rows (5 groups of 8: three tasks of the pool, so the parallel
/// path and its shared output run): row r is the fixture row with its
/// blocks rotated by r, so rows differ and each tile mixes 8 blocks.
fn matrix(ty: GgmlType, fixture: &[u8]) -> (usize, usize, Vec<u8>) {
    let (bs, ts) = ty.block_geometry();
    let nblk = fixture.len() / ts;
    let rows = 40;
    let mut m = Vec::with_capacity(rows * fixture.len());
    for r in 0..rows {
        for b in 0..nblk {
            let src = (b + r) % nblk;
            m.extend_from_slice(&fixture[src * ts..(src + 1) * ts]);
        }
    }
    (rows, nblk * bs, m)
}

#[test]
fn packed_tiles_match_the_row_definition() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let simd = Family::Avx512Vnni.available();
    println!("AVX-512 VNNI kernel: {}", if simd { "tested" } else { "not on this CPU; layout tested through the portable reader" });
    let mut tested = Vec::new();
    for (name, ty) in common::FIXTURE_TYPES {
        if Format::of(ty).is_none() {
            continue;
        }
        let fixture = std::fs::read(common::fixture(&format!("quant/{name}.q"))).unwrap();
        let (rows, cols, bytes) = matrix(ty, &fixture);
        let row_bytes = bytes.len() / rows;
        let p = packed::pack(&pool, ty, rows, cols, &bytes).expect("packable");
        assert_eq!(p.bytes(), rows / 8 * cols / 32 * p.format().tile_bytes());
        let w: Vec<Vec<f32>> = (0..rows).map(|r| quant::dequantize_vec(ty, &bytes[r * row_bytes..(r + 1) * row_bytes]).unwrap()).collect();
        let xs: Vec<Vec<f32>> = (1..12u32).map(|s| activations(cols, s).iter().map(|v| v * (s as f32 * 0.37 - 2.0)).collect()).collect();
        let q8: Vec<_> = xs.iter().map(|x| quant::quantize_a8(x).unwrap()).collect();
        let acts: Vec<_> = q8.iter().map(|a| a.as_row()).collect();
        let mag = |r: usize, t: usize| w[r].iter().zip(&xs[t]).map(|(a, b)| (a * b).abs() as f64).sum::<f64>();
        let want: Vec<Vec<f32>> = (0..acts.len()).map(|t| (0..rows).map(|r| quant::vec_dot_act(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], acts[t]).unwrap()).collect()).collect();
        for t in 0..acts.len() {
            for r in 0..rows {
                let got = p.dot_scalar(r, acts[t]);
                assert!(((got - want[t][r]) as f64).abs() <= 1e-5 * mag(r, t), "{name} row {r} token {t}: tiles read back {got} vs {}", want[t][r]);
            }
        }
        if simd {
            for n in 1..=acts.len() {
                let mut out = vec![f32::NAN; n * rows];
                packed::matmul(&pool, &p, &acts[..n], None, &mut out);
                for t in 0..n {
                    for r in 0..rows {
                        let got = out[t * rows + r];
                        assert!(((got - want[t][r]) as f64).abs() <= 1e-5 * mag(r, t), "{name} x{n} row {r} token {t}: avx512 {got} vs {}", want[t][r]);
                    }
                }
            }
        }
        if simd {
            // with residual rows (quant::quantize_a8_split): main + residual;
            // 70 tokens, two chunks of the block-major residual pass (64 + 6);
            // token 5 has no outliers, so no residual blocks at all
            let xo: Vec<f32> = (1..71u32).flat_map(|s| if s == 6 { activations(cols, s) } else { common::activations_with_outliers(cols, s) }).collect();
            let (m, res) = quant::quantize_a8_split(&xo, cols).unwrap();
            let n = xo.len() / cols;
            let main: Vec<_> = (0..n).map(|t| m.row(t, cols)).collect();
            let rrows: Vec<_> = (0..n).map(|t| res.row(t, cols)).collect();
            let lists: Vec<Vec<u32>> = rrows.iter().map(|r| (0..r.d.len() as u32).filter(|&b| r.d[b as usize] != 0.0).collect()).collect();
            assert!(lists.iter().enumerate().all(|(t, l)| l.is_empty() == (t == 5)), "{name}: every token but the fifth has outlier blocks");
            let mut out = vec![f32::NAN; n * rows];
            packed::matmul(&pool, &p, &main, Some(&Residual::new(&rrows, &lists)), &mut out);
            for t in 0..n {
                for r in 0..rows {
                    let wr = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    let want = quant::vec_dot_act(ty, wr, main[t]).unwrap() + quant::vec_dot_act(ty, wr, rrows[t]).unwrap();
                    let mag = w[r].iter().zip(&xo[t * cols..(t + 1) * cols]).map(|(a, b)| (a * b).abs() as f64).sum::<f64>();
                    let got = out[t * rows + r];
                    assert!(((got - want) as f64).abs() <= 1e-5 * mag, "{name} residual row {r} token {t}: avx512 {got} vs {want}");
                }
            }
        }
        tested.push(name);
    }
    println!("packed types tested: {tested:?}");
    assert!(tested.len() >= 8, "every packed type has a fixture: {tested:?}");
}

#[test]
fn shapes_without_a_packed_form_are_left_alone() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    // 12 rows (not a multiple of 8), a type without a packed form, a short buffer, F16
    assert!(packed::pack(&pool, GgmlType::Q8_0, 12, 32, &vec![0u8; 12 * 34]).is_none());
    assert!(packed::pack(&pool, GgmlType::Q3K, 8, 256, &vec![0u8; 8 * 110]).is_none());
    assert!(packed::pack(&pool, GgmlType::Q8_0, 8, 32, &vec![0u8; 8 * 34 - 1]).is_none());
    assert!(packed::pack(&pool, GgmlType::F16, 8, 32, &vec![0u8; 8 * 64]).is_none());
    // no columns, no rows, a k-quant row that is not whole super-blocks
    assert!(packed::pack(&pool, GgmlType::Q8_0, 8, 0, &[]).is_none());
    assert!(packed::pack(&pool, GgmlType::Q8_0, 0, 32, &[]).is_none());
    assert!(!packed::packable(GgmlType::Q4K, 8, 32));
    assert!(packed::packable(GgmlType::Q4K, 8, 256) && packed::packable(GgmlType::Q5_0, 16, 32));
}
