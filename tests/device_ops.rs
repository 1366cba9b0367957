//! Every op, on every backend compiled into this build: `test_device!(f)`
//! turns one test function into `f::cpu`, `f::cuda` (feature `cuda`) and
//! `f::hip` (feature `rocm`), the candle pattern. Each variant computes the
//! op on random data and compares it with a plain f64 reference computed
//! here from the dequantized inputs (`quant::dequantize`, bit-exact with
//! gguf-py), by relative L2 error ‖out − ref‖ / ‖ref‖ against a bound stated
//! per op and backend:
//!
//! - products: GPU f32 paths (matvec, tiled) 1e-4 (f32 accumulation over at
//!   most 4096 terms); the GPU decode kernels (mmvq/mmvf) 1e-4 too (15-bit
//!   activations: each value within 1/65024 of its group's largest, ~1e-5
//!   on a product); the vendor-BLAS path 4e-3 (weights and activations
//!   rounded to f16, 11-bit mantissas); CPU 3e-3 (16-bit activations);
//! - RMSNorm, RoPE, embedding rows, gated activations: 1e-5 (f32 math);
//! - attention: CPU 1e-5 (f32 cache); GPU 3e-3 (K/V stored as f16; the
//!   tensor-core prefill kernel also rounds Q and the softmax weights to
//!   f16, and is held to the same bound).
//!
//! GPU variants hold one lock (tests sharing a device run one at a time),
//! fail when no device is present (a GPU build is for a GPU machine), and
//! check that the memory pool returns to zero bytes and the device's free
//! memory to its level before the test (leak detection).

mod common;

use rocmforge::model::arch::{FfnAct, RopeStyle};
use rocmforge::quant::{self, GgmlType};
use rocmforge::backend::gpu::ops as gops;
use rocmforge::twin::random_tensor;

/// The backend a test variant runs on.
#[allow(dead_code)]
enum Backend {
    Cpu,
    Gpu(gpu::Gpu),
}

macro_rules! test_device {
    ($f:ident) => {
        mod $f {
            #[test]
            fn cpu() {
                super::$f(&super::Backend::Cpu);
            }
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                let g = super::gpu::Gpu::open(rocmforge::backend::gpu::GpuKind::Cuda);
                super::$f(&super::Backend::Gpu(g));
            }
            #[cfg(feature = "rocm")]
            #[test]
            fn hip() {
                let g = super::gpu::Gpu::open(rocmforge::backend::gpu::GpuKind::Hip);
                super::$f(&super::Backend::Gpu(g));
            }
        }
    };
}

/// As test_device!, for a check that only exists on the GPU backends (a
/// fusion the CPU does not have): no CPU variant, rather than one that
/// passes without checking anything.
macro_rules! test_gpu {
    ($f:ident) => {
        mod $f {
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                super::$f(&super::gpu::Gpu::open(rocmforge::backend::gpu::GpuKind::Cuda));
            }
            #[cfg(feature = "rocm")]
            #[test]
            fn hip() {
                super::$f(&super::gpu::Gpu::open(rocmforge::backend::gpu::GpuKind::Hip));
            }
        }
    };
}

fn rel_l2(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "output length");
    assert!(out.iter().all(|v| v.is_finite()), "non-finite output");
    let num: f64 = out.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

fn check(what: &str, out: &[f32], reference: &[f64], bound: f64) {
    let e = rel_l2(out, reference);
    eprintln!("{what}: rel L2 {e:.2e} (bound {bound:.0e})");
    assert!(e <= bound, "{what}: rel L2 {e:.3e} > {bound:.0e}");
}

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// Rows of x (n, dim) RMS-normalized in f64 and scaled by `w`, or x
/// itself with `w = None`.
fn ref_rmsnorm(x: &[f32], w: Option<&[f32]>, dim: usize, eps: f32) -> Vec<f64> {
    x.chunks(dim)
        .flat_map(|row| {
            let ss: f64 = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
            let s = 1.0 / (ss + eps as f64).sqrt();
            row.iter().enumerate().map(move |(i, &v)| w.map_or(v as f64, |w| v as f64 * s * w[i] as f64))
        })
        .collect()
}

/// Reference y (n, rows) = x (n, cols) · Wᵀ in f64 from the dequantized W.
fn ref_matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f64> {
    let mut y = vec![0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            y[t * rows + r] = (0..cols).map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64).sum();
        }
    }
    y
}

const GPU_TYPES: [GgmlType; 16] = {
    use GgmlType::*;
    [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Iq4Nl, Iq4Xs, Mxfp4]
};

/// Which product path a GPU check forces.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    Auto,
    Tiled,
}

fn matmul_case(b: &Backend, ty: GgmlType, rows: usize, cols: usize, n: usize, path: Path) {
    let wbytes = random_tensor(ty, rows * cols, 0.05, 7 + rows as u64 + n as u64).unwrap();
    let w = quant::dequantize_vec(ty, &wbytes).unwrap();
    let x = Rng(99 + n as u64).vec(n * cols);
    let reference = ref_matmul(&w, rows, cols, &x, n);
    let what = format!("matmul {ty} {rows}x{cols} n={n} {path:?}");
    match b {
        Backend::Cpu => {
            use rocmforge::backend::cpu::{packed, simd};
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            // 8-bit activations carry their rounding (a step of 1/127 of a
            // block's largest value: ~4e-3 relative on these uniform
            // inputs); 16-bit ones (FORGE_ACT16) only the f32 order.
            let bound = if simd::act16() { 3e-3 } else { 1e-2 };
            let mut m = rocmforge::model::weights::Matrix { name: "w".into(), ty, rows, cols, offset: 0, row_bytes: wbytes.len() / rows, packed: None };
            let mut y = vec![0f32; n * rows];
            rocmforge::backend::cpu::matmul::matmul(&pool, &m, &wbytes, &x, n, &mut y);
            check(&format!("cpu {what} ({})", simd::kernel_name()), &y, &reference, bound);
            if packed::wanted() {
                if let Some(p) = packed::pack(&pool, ty, rows, cols, &wbytes) {
                    m.packed = Some(std::sync::Arc::new(p));
                    let mut yp = vec![0f32; n * rows];
                    rocmforge::backend::cpu::matmul::matmul(&pool, &m, &wbytes, &x, n, &mut yp);
                    check(&format!("cpu {what} (packed tiles)"), &yp, &reference, bound);
                }
            }
        }
        Backend::Gpu(g) => {
            g.each_layout(ty, cols, |layout| {
                let what = format!("{what}{layout}");
                let (y, p) = g.matmul(ty, &wbytes, rows, cols, &x, n, path == Path::Tiled);
                let bound = if p == rocmforge::backend::gpu::ops::MatmulPath::Blas { 4e-3 } else { 1e-4 };
                check(&format!("{} {what} via {p:?}", g.name()), &y, &reference, bound);
                if path == Path::Auto && n <= gops::MMV_MAXT && gops::decode_kernel(ty).is_some() {
                    let y = g.matvec_int(ty, &wbytes, rows, cols, &x, n);
                    check(&format!("{} {what} via the decode kernels (mmvq/mmvf)", g.name()), &y, &reference, 1e-4);
                }
            });
        }
    }
}

/// Every type through the decode kernel (1 and 5 tokens) and the prefill
/// paths (40 tokens: vendor BLAS where loaded, and the tiled kernel).
fn matmul_all_types(b: &Backend) {
    for ty in GPU_TYPES {
        for n in [1, 5, 40] {
            matmul_case(b, ty, 96, 512, n, Path::Auto);
        }
        // one token, rows of >= 2048 values: the decode kernels' several-rows form
        matmul_case(b, ty, 33, 2560, 1, Path::Auto);
        if matches!(b, Backend::Gpu(_)) {
            matmul_case(b, ty, 70, 256, 67, Path::Tiled);
        }
    }
}
test_device!(matmul_all_types);

/// Large shapes of the benchmark models (Qwen2.5-0.5B FFN, 7B attention).
/// (Rows of k-quants must be whole 256-value blocks, so 896-wide Qwen
/// matrices are Q5_0/Q8_0 in the real file.)
fn matmul_large(b: &Backend) {
    matmul_case(b, GgmlType::Q5_0, 4864, 896, 1, Path::Auto);
    matmul_case(b, GgmlType::Q6K, 896, 4864, 1, Path::Auto);
    matmul_case(b, GgmlType::Q4_0, 4096, 4096, 1, Path::Auto);
    matmul_case(b, GgmlType::Q4_0, 512, 11008, 1, Path::Auto); // x needs > 48 KiB of shared memory
    matmul_case(b, GgmlType::Q6K, 300, 11008, 2, Path::Auto);
    matmul_case(b, GgmlType::F16, 896, 896, 128, Path::Auto);
    matmul_case(b, GgmlType::Q4K, 1024, 1024, 200, Path::Auto);
    // row counts that leave the last block of the decode kernels partly empty
    matmul_case(b, GgmlType::Q8_0, 97, 256, 1, Path::Auto);
    matmul_case(b, GgmlType::F16, 97, 256, 1, Path::Auto);
}
test_device!(matmul_large);

/// The tensor-core products of 2 ..= MMQ_MAX tokens (`mmq_*`, NVIDIA
/// sm_80+): every layout they take, token counts around each block size
/// and a partial last block of rows, against the f64 product of the
/// dequantized matrix (the bound of the 15-bit activations), and for up to
/// 8 tokens against the decode kernels on the same prepared x; the
/// residual form adds the same product.
#[allow(dead_code)]
fn mmq_products(g: &gpu::Gpu) {
    use GgmlType::*;
    if !rocmforge::backend::gpu::decode::has_mmq(g.dev.rt.info()) {
        panic!("{}: no tensor-core products on this device; run this test on sm_80 or later", g.dev.rt.info().arch);
    }
    // the last two: rows of several shared-memory stages (buffer reuse)
    for (ty, rows, cols) in [(Q4_0, 70, 1024), (Q4_1, 40, 512), (Q5_0, 70, 896), (Q5_1, 24, 256), (Q8_0, 70, 896), (Q4K, 40, 1024), (Q5K, 24, 512), (Q6K, 70, 1024), (Q6K, 70, 4864), (Q5_0, 70, 4992)] {
        let w = random_tensor(ty, rows * cols, 1.0, 17).unwrap();
        let deq = quant::dequantize_vec(ty, &w).unwrap();
        g.each_layout(ty, cols, |layout| {
            for n in [2, 7, 8, 9, 16, 17, 33, 64, 100, 256] {
                let x = Rng(23 + n as u64).vec(n * cols);
                let reference = ref_matmul(&deq, rows, cols, &x, n);
                let (y, dec) = g.mmq(ty, &w, rows, cols, &x, n);
                check(&format!("mmq {ty}{layout} {rows}x{cols} n={n}"), &y, &reference, 1e-3);
                if let Some(dec) = dec {
                    let d64: Vec<f64> = dec.iter().map(|&v| v as f64).collect();
                    check(&format!("mmq {ty}{layout} n={n} against the decode kernels"), &y, &d64, 1e-5);
                }
            }
        });
    }
}
test_gpu!(mmq_products);

/// The f16 tensor-core products over quantized weights (`mmf_*`, q4_0 in
/// its regrouped layout) against the f64 reference (x and the weights
/// rounded to f16 as the kernel sees them) and against the vendor BLAS
/// over the f16 copy (the path they replace; only the order of the f32
/// sums differs), with and without the column split, both output forms.
/// Rows that end mid-tile, token counts that end mid-block, and matrices
/// whose stage count the split does not divide.
fn mmf_products(g: &gpu::Gpu) {
    use GgmlType::*;
    if !rocmforge::backend::gpu::decode::has_mmq(g.dev.rt.info()) {
        panic!("{}: no tensor-core products on this device; run this test on sm_80 or later", g.dev.rt.info().arch);
    }
    for (rows, cols) in [(200usize, 2048usize), (4096, 256), (70, 11008), (1000, 4096)] {
        let w = random_tensor(Q4_0, rows * cols, 1.0, 29).unwrap();
        let deq: Vec<f32> = quant::dequantize_vec(Q4_0, &w).unwrap().iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        for n in [1, 17, 32, 33, 64, 100, 128, 256] {
            let x = Rng(41 + n as u64).vec(n * cols);
            let x16: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            let reference = ref_matmul(&deq, rows, cols, &x16, n);
            let (y, blas, split) = g.mmf(Q4_0, &w, rows, cols, &x, n);
            check(&format!("mmf q4_0 {rows}x{cols} n={n} ({split} column parts)"), &y, &reference, 1e-5);
            check(&format!("mmf q4_0 {rows}x{cols} n={n} against the BLAS"), &y, &blas.iter().map(|&v| v as f64).collect::<Vec<f64>>(), 1e-5);
        }
    }
}
test_gpu!(mmf_products);

/// Top-k candidates selected on the device (`topk_rows`, and for top-1
/// `topk1_part` + `topk1_merge`) equal the host
/// selection (`TopRows::push_row`, the CPU backend's path) exactly: ids,
/// logits and order, ties (many equal values) broken by the lower id,
/// k from 1 to TOP_MAX, rows as long as Qwen's vocabulary; log-sum-exp
/// within f32 rounding.
#[allow(dead_code)]
fn topk_candidates(g: &gpu::Gpu) {
    use rocmforge::backend::{TopRows, TOP_MAX};
    // top-1 of long rows runs in two passes over many blocks per row
    let cases = [(3usize, 1000usize, 1usize), (8, 151_936, 1), (5, 49_152, 1), (2, 4097, 1), (4, 1000, 5), (2, 151_936, 40), (5, 49_152, TOP_MAX), (1, 300, 256), (7, 32_000, 2)];
    for &(rows, n, k) in &cases {
        let mut r = Rng(91 + n as u64 + k as u64);
        let mut x = r.vec(rows * n);
        // ties: a run of equal values at the top of row 0, and row 1 all equal
        for v in x[..n].iter_mut().step_by(97) {
            *v = 9.0;
        }
        if rows > 1 {
            x[n..2 * n].fill(0.5);
        }
        let mut host = TopRows::new(k);
        for row in x.chunks_exact(n) {
            host.push_row(row);
        }
        let dev = g.topk(&x, rows, n, k);
        assert_eq!(dev.ids, host.ids, "top-{k} of {rows} rows of {n}: ids");
        assert_eq!(dev.logits, host.logits, "top-{k} of {rows} rows of {n}: logits");
        for (a, b) in dev.lse.iter().zip(&host.lse) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "log-sum-exp {a} vs {b}");
        }
        eprintln!("top-{k} of {rows} rows of {n}: equal to the host selection");
    }
}
test_gpu!(topk_candidates);

/// act(Wg x) * (Wu x), fused in one kernel on the GPU.
fn gated_ffn(b: &Backend) {
    // 256 and 2560 columns: both one-token forms of the decode kernel;
    // q5_0 4864 x 896: Qwen2.5-0.5B Q4_K_M's gate/up (regrouped on upload;
    // two rows per warp in the one-token kernel that prepares x itself)
    for (ty, rows, cols) in [(GgmlType::Q4K, 200, 256), (GgmlType::Q8_0, 200, 256), (GgmlType::F16, 200, 256), (GgmlType::Q5_0, 4864, 896), (GgmlType::Q4_0, 66, 2560), (GgmlType::Q6K, 66, 2560)] {
        for act in [FfnAct::Silu, FfnAct::GeluTanh] {
            for n in [1, 3] {
                let wg = random_tensor(ty, rows * cols, 0.1, 1).unwrap();
                let wu = random_tensor(ty, rows * cols, 0.1, 2).unwrap();
                let x = Rng(5).vec(n * cols);
                let g = ref_matmul(&quant::dequantize_vec(ty, &wg).unwrap(), rows, cols, &x, n);
                let u = ref_matmul(&quant::dequantize_vec(ty, &wu).unwrap(), rows, cols, &x, n);
                let reference: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(&g, &u)| match act {
                        FfnAct::Silu => g / (1.0 + (-g).exp()) * u,
                        FfnAct::GeluTanh => 0.5 * g * (1.0 + (0.7978845608028654 * (g + 0.044715 * g * g * g)).tanh()) * u,
                    })
                    .collect();
                let what = format!("gated {ty} {act:?} n={n}");
                match b {
                    Backend::Cpu => {
                        let mut gv: Vec<f32> = g.iter().map(|&v| v as f32).collect();
                        let uv: Vec<f32> = u.iter().map(|&v| v as f32).collect();
                        rocmforge::model::ops::gated_act(&mut gv, &uv, act);
                        check(&format!("cpu {what}"), &gv, &reference, 1e-5);
                    }
                    Backend::Gpu(gp) => {
                        gp.each_layout(ty, cols, |layout| {
                            let y = gp.gated(ty, &wg, &wu, rows, cols, &x, n, act);
                            check(&format!("{} {what}{layout}", gp.name()), &y, &reference, 1e-4);
                        });
                    }
                }
            }
        }
    }
}
test_device!(gated_ffn);

fn embedding_rows(b: &Backend) {
    let (rows, cols) = (50, 512);
    for ty in GPU_TYPES {
        let w = random_tensor(ty, rows * cols, 1.0, 3).unwrap();
        let deq = quant::dequantize_vec(ty, &w).unwrap();
        let ids = [3u32, 0, 49, 3, 17];
        let scale = 1.5f32;
        let reference: Vec<f64> = ids.iter().flat_map(|&i| deq[i as usize * cols..(i as usize + 1) * cols].iter().map(|&v| (v * scale) as f64)).collect();
        let out = match b {
            Backend::Cpu => {
                let rb = w.len() / rows;
                let mut o = vec![0f32; ids.len() * cols];
                for (t, &i) in ids.iter().enumerate() {
                    quant::dequantize(ty, &w[i as usize * rb..(i as usize + 1) * rb], &mut o[t * cols..(t + 1) * cols]).unwrap();
                }
                o.iter_mut().for_each(|v| *v *= scale);
                o
            }
            Backend::Gpu(g) => {
                g.each_layout(ty, cols, |layout| check(&format!("embedding {ty}{layout}"), &g.get_rows(ty, &w, rows, cols, &ids, scale), &reference, 1e-6));
                continue;
            }
        };
        check(&format!("embedding {ty}"), &out, &reference, 1e-6);
    }
}
test_device!(embedding_rows);

fn rmsnorm(b: &Backend) {
    let (n, dim, eps) = (3, 896, 1e-6f32);
    let mut r = Rng(11);
    let (x, w, y0) = (r.vec(n * dim), r.vec(dim), r.vec(n * dim));
    for add in [false, true] {
        let reference: Vec<f64> = ref_rmsnorm(&x, Some(&w), dim, eps).iter().zip(&y0).map(|(&v, &y)| if add { y as f64 + v } else { v }).collect();
        let out = match b {
            Backend::Cpu => {
                let mut v = x.clone();
                rocmforge::model::ops::rmsnorm_rows(&mut v, &w, eps);
                if add {
                    v.iter_mut().zip(&y0).for_each(|(a, b)| *a += b);
                }
                v
            }
            Backend::Gpu(g) => g.rmsnorm(&x, &w, &y0, dim, eps, add),
        };
        check(&format!("rmsnorm add={add}"), &out, &reference, 1e-5);
    }
}
test_device!(rmsnorm);

/// x prepared in f16 for the products (`ops::x_to_f16`): RMS-normalized
/// (`rmsnorm_f16`: rows held in registers up to 8,192 values a multiple of
/// 4, the two-pass loop otherwise) or converted alone (`f32_to_f16`: four
/// values a thread where aligned), against the f64 reference rounded once
/// to f16.
fn x_to_f16_rows(g: &gpu::Gpu) {
    let eps = 1e-6f32;
    for (n, dim) in [(3usize, 896usize), (64, 4096), (5, 8192), (2, 11008), (3, 4098), (1, 30)] {
        let mut r = Rng(13 + dim as u64);
        let (x, w) = (r.vec(n * dim), r.vec(dim));
        for norm in [true, false] {
            let exact = ref_rmsnorm(&x, norm.then_some(&w[..]), dim, eps);
            let reference: Vec<f64> = exact.iter().map(|&v| half::f16::from_f64(v).to_f64()).collect();
            let (out, _) = g.x_to_f16(&x, &w, n, dim, norm.then_some(eps), false);
            // f16 rounding of a value computed in f32: an ulp apart at most, rarely
            check(&format!("x_to_f16 {n} x {dim} norm={norm}"), &out, &reference, 1e-4);
            if !norm {
                assert!(out.iter().zip(&reference).all(|(&a, &b)| a as f64 == b), "f32_to_f16 {n} x {dim}: not the f16 rounding of x");
            }
            // in two halves (FORGE_F16_SPLIT): hi is that rounding again,
            // and hi + lo is the value to about 22 bits, not 11
            let (hi, lo) = g.x_to_f16(&x, &w, n, dim, norm.then_some(eps), true);
            let lo = lo.unwrap();
            check(&format!("x_to_f16 split {n} x {dim} norm={norm}: hi"), &hi, &reference, 1e-4);
            if !norm {
                assert!(hi.iter().zip(&reference).all(|(&a, &b)| a as f64 == b), "f32_to_f16_split {n} x {dim}: hi is not the f16 rounding of x");
            }
            let sum: Vec<f32> = hi.iter().zip(&lo).map(|(&h, &l)| (h as f64 + l) as f32).collect();
            let (e16, e32) = (rel_l2(&hi, &exact), rel_l2(&sum, &exact));
            println!("x_to_f16 {n} x {dim} norm={norm}: rel L2 against the exact values: f16 {e16:.2e}, hi + lo {e32:.2e}");
            assert!(e32 <= 2e-6 && e32 * 50.0 <= e16, "x_to_f16 split {n} x {dim} norm={norm}: hi + lo {e32:.2e}, f16 alone {e16:.2e}");
        }
    }
}
test_gpu!(x_to_f16_rows);

/// The BLAS products with activations in two f16 halves (`ops::X16`,
/// FORGE_F16_SPLIT=1): over F16 weights, which f16 holds exactly, the
/// product is then about as precise as f32 activations make it, where f16
/// activations alone carry their 11-bit rounding (~3e-4 relative).
fn matmul_split_activations(g: &gpu::Gpu) {
    assert!(g.dev.rt.has_blas(), "the vendor BLAS is loaded on a GPU test machine");
    for (rows, cols, n) in [(896usize, 896usize, 40usize), (300, 4096, 17), (64, 11008, 9)] {
        let ty = GgmlType::F16;
        let wbytes = random_tensor(ty, rows * cols, 0.05, 31 + cols as u64).unwrap();
        let w = quant::dequantize_vec(ty, &wbytes).unwrap();
        let x = Rng(5 + n as u64).vec(n * cols);
        let reference = ref_matmul(&w, rows, cols, &x, n);
        let (y16, p16) = g.matmul_x16(ty, &wbytes, rows, cols, &x, n, false, false);
        let (y22, p22) = g.matmul_x16(ty, &wbytes, rows, cols, &x, n, false, true);
        assert_eq!((p16, p22), (gops::MatmulPath::Blas, gops::MatmulPath::Blas), "{rows}x{cols} n={n}: the vendor BLAS path");
        let (e16, e22) = (rel_l2(&y16, &reference), rel_l2(&y22, &reference));
        println!("F16 {rows}x{cols} n={n}: rel L2 against f64, f16 activations {e16:.2e}, in two halves {e22:.2e}");
        assert!(e22 <= 1e-5 && e22 * 20.0 <= e16, "F16 {rows}x{cols} n={n}: two halves {e22:.2e}, f16 alone {e16:.2e}");
    }
    // the batched forward's form: RMS-normalized in the conversion
    // (rmsnorm_f16_split), then the resident copy (gemm_resident)
    let (rows, cols, n) = (512usize, 4096usize, 24usize);
    let ty = GgmlType::F16;
    let wbytes = random_tensor(ty, rows * cols, 0.05, 77).unwrap();
    let w = quant::dequantize_vec(ty, &wbytes).unwrap();
    let mut r = Rng(78);
    let (x, nw) = (r.vec(n * cols), r.vec(cols));
    let xn: Vec<f32> = ref_rmsnorm(&x, Some(&nw), cols, 1e-6).iter().map(|&v| v as f32).collect();
    let reference = ref_matmul(&w, rows, cols, &xn, n);
    let y16 = g.resident_norm_x16(ty, &wbytes, rows, cols, &x, &nw, n, false);
    let y22 = g.resident_norm_x16(ty, &wbytes, rows, cols, &x, &nw, n, true);
    let (e16, e22) = (rel_l2(&y16, &reference), rel_l2(&y22, &reference));
    println!("F16 {rows}x{cols} n={n}, normalized, resident copy: rel L2 against f64, f16 activations {e16:.2e}, in two halves {e22:.2e}");
    assert!(e22 <= 1e-5 && e22 * 20.0 <= e16, "resident F16 {rows}x{cols} n={n}: two halves {e22:.2e}, f16 alone {e16:.2e}");
}
test_gpu!(matmul_split_activations);

/// Bias + per-head RMSNorm + RoPE (both pair styles) + f16 K/V store.
fn rope_qkv(b: &Backend) {
    let (n, n_head, n_head_kv, hd, rope_dim, pos0, eps) = (3usize, 4usize, 2usize, 64usize, 48usize, 5usize, 1e-6f32);
    let mut r = Rng(21);
    let (q, k, v) = (r.vec(n * n_head * hd), r.vec(n * n_head_kv * hd), r.vec(n * n_head_kv * hd));
    let (bq, bk, nq, nk) = (r.vec(n_head * hd), r.vec(n_head_kv * hd), r.vec(hd), r.vec(hd));
    let base = 10000f32;
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for with_extras in [false, true] {
            // f64 reference
            let head = |src: &[f32], bias: &[f32], nw: &[f32], h: usize, t: usize, heads: usize| -> Vec<f64> {
                let mut x: Vec<f64> = (0..hd).map(|i| src[(t * heads + h) * hd + i] as f64 + if with_extras { bias[h * hd + i] as f64 } else { 0.0 }).collect();
                if with_extras {
                    let ss = x.iter().map(|v| v * v).sum::<f64>() / hd as f64;
                    let s = 1.0 / (ss + eps as f64).sqrt();
                    x.iter_mut().zip(nw).for_each(|(v, &w)| *v *= s * w as f64);
                }
                let p = (pos0 + t) as f64;
                for i in 0..rope_dim / 2 {
                    let th = p * (base as f64).powf(-2.0 * i as f64 / rope_dim as f64);
                    let (a, b2) = match style {
                        RopeStyle::Normal => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + rope_dim / 2),
                    };
                    let (x0, x1) = (x[a], x[b2]);
                    x[a] = x0 * th.cos() - x1 * th.sin();
                    x[b2] = x0 * th.sin() + x1 * th.cos();
                }
                x
            };
            let mut rq = Vec::new();
            let mut rk = Vec::new();
            for t in 0..n {
                (0..n_head).for_each(|h| rq.extend(head(&q, &bq, &nq, h, t, n_head)));
                (0..n_head_kv).for_each(|h| rk.extend(head(&k, &bk, &nk, h, t, n_head_kv)));
            }
            let (oq, ok, ov) = match b {
                Backend::Cpu => {
                    let (mut q2, mut k2) = (q.clone(), k.clone());
                    if with_extras {
                        rocmforge::model::ops::add_rows(&mut q2, &bq);
                        rocmforge::model::ops::add_rows(&mut k2, &bk);
                        rocmforge::model::ops::rmsnorm_rows(&mut q2, &nq, eps);
                        rocmforge::model::ops::rmsnorm_rows(&mut k2, &nk, eps);
                    }
                    for t in 0..n {
                        let table: Vec<(f32, f32)> = (0..rope_dim / 2)
                            .map(|i| rocmforge::model::reference::rope_angle(pos0 + t, i, rope_dim, base, rocmforge::model::RopeScaling::None))
                            .collect();
                        rocmforge::model::ops::rope_row(&mut q2[t * n_head * hd..(t + 1) * n_head * hd], hd, &table, style);
                        rocmforge::model::ops::rope_row(&mut k2[t * n_head_kv * hd..(t + 1) * n_head_kv * hd], hd, &table, style);
                    }
                    (q2, k2, v.clone())
                }
                Backend::Gpu(g) => g.qkv_post(&q, &k, &v, with_extras.then_some((&bq[..], &bk[..], &nq[..], &nk[..])), n, n_head, n_head_kv, hd, rope_dim, style, pos0, base, eps),
            };
            let what = format!("rope {style:?} extras={with_extras}");
            let f16_bound = if matches!(b, Backend::Gpu(_)) { 1e-3 } else { 1e-5 };
            check(&format!("{what} q"), &oq, &rq, 1e-5);
            check(&format!("{what} k (cache)"), &ok, &rk, f16_bound);
            let rv: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            check(&format!("{what} v (cache)"), &ov, &rv, f16_bound);
        }
    }
}
test_device!(rope_qkv);

/// Causal attention: prefill (many queries), decode split over the keys,
/// GQA, sliding window, head sizes 64, 128 and 256 (gemma3); several query
/// and key tiles in prefill. On the GPU every prefill case runs through both
/// prefill kernels (tensor cores where the device has them, and the CUDA-core
/// one).
fn attention(b: &Backend) {
    for &(n, pos0, n_head, n_head_kv, hd, window, splits) in &[
        (7usize, 0usize, 4usize, 2usize, 64usize, 0usize, 1usize),
        (1, 300, 4, 1, 64, 0, 8),
        (1, 1000, 4, 2, 64, 0, 16),
        (1, 900, 8, 2, 128, 400, 4),
        (1, 300, 8, 2, 128, 100, 4),
        (5, 40, 2, 2, 256, 16, 1),
        (1, 33, 4, 4, 256, 0, 16),
        (1, 50, 4, 2, 64, 0, 1),
        (40, 100, 8, 2, 64, 0, 1),
        (70, 0, 14, 2, 64, 0, 1),
        (33, 20, 4, 1, 256, 24, 1),
        (100, 30, 8, 2, 128, 0, 1),
        (150, 70, 4, 1, 128, 60, 1),
        (130, 200, 6, 3, 64, 90, 1),
        (64, 0, 2, 1, 64, 0, 1),
        // prefill key splits (tensor-core kernel, merged by a second launch):
        // even, uneven, with a window, more splits than tiles (empty splits)
        (64, 900, 14, 2, 64, 0, 4),
        (100, 600, 8, 2, 128, 0, 3),
        (130, 700, 6, 3, 64, 200, 5),
        (70, 2000, 4, 1, 128, 0, 32),
        (40, 0, 4, 2, 64, 0, 7),
        // splits, unpacked, several query tiles: 7 heads a KV head; head size 128
        (192, 1000, 14, 2, 64, 0, 3),
        (128, 700, 8, 2, 128, 0, 3),
        // the last split is the last key tile alone, and the query tile's
        // first rows (positions 1000 .. 1023) see none of its keys
        (64, 1000, 4, 4, 64, 0, 5),
        (64, 1000, 4, 4, 128, 0, 5),
    ] {
        let len = pos0 + n;
        let mut r = Rng(31 + len as u64);
        let q = r.vec(n * n_head * hd);
        // cache values rounded to f16 so every backend sees the same keys
        let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect() };
        let (kc, vc) = (round(r.vec(len * n_head_kv * hd)), round(r.vec(len * n_head_kv * hd)));
        let scale = 1.0 / (hd as f32).sqrt();
        let kv_dim = n_head_kv * hd;
        let group = n_head / n_head_kv;
        let mut reference = Vec::new();
        for t in 0..n {
            let p = pos0 + t;
            let first = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
            for h in 0..n_head {
                let kvh = h / group;
                let qh = &q[(t * n_head + h) * hd..(t * n_head + h + 1) * hd];
                let s: Vec<f64> = (first..=p).map(|j| (0..hd).map(|i| qh[i] as f64 * kc[j * kv_dim + kvh * hd + i] as f64).sum::<f64>() * scale as f64).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    reference.push((first..=p).zip(&e).map(|(j, w)| w / z * vc[j * kv_dim + kvh * hd + i] as f64).sum());
                }
            }
        }
        let out = match b {
            Backend::Cpu => {
                let mut o = vec![0f32; n * n_head * hd];
                // the CPU cache holds f16 bits (exact: the values are f16)
                let bits = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect() };
                // the CPU's layout: blocks of BLOCK slots, heads one after
                // the other inside a block (ops::kv_row); a contiguous
                // cache is the identity block table
                let n_blk = (kc.len() / kv_dim).div_ceil(rocmforge::kv::BLOCK);
                let cpu_layout = |c: &[f32]| -> Vec<u16> {
                    let mut o = vec![0u16; n_blk * rocmforge::kv::BLOCK * kv_dim];
                    let b = bits(c);
                    for s in 0..c.len() / kv_dim {
                        for h in 0..kv_dim / hd {
                            let r = rocmforge::model::ops::kv_row(s, h, kv_dim / hd, hd);
                            o[r..r + hd].copy_from_slice(&b[s * kv_dim + h * hd..][..hd]);
                        }
                    }
                    o
                };
                let (kc, vc) = (cpu_layout(&kc), cpu_layout(&vc));
                let ident: Vec<u32> = (0..n_blk as u32).collect();
                for t in 0..n {
                    let p = pos0 + t;
                    let first = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
                    for h in 0..n_head {
                        let qh = &q[(t * n_head + h) * hd..(t * n_head + h + 1) * hd];
                        let out = &mut o[(t * n_head + h) * hd..(t * n_head + h + 1) * hd];
                        rocmforge::model::ops::attend(qh, 1, &kc, &vc, &ident, h / group, (hd, hd, kv_dim, kv_dim), first..=p, scale, out);
                    }
                }
                o
            }
            Backend::Gpu(g) => {
                if n > 1 {
                    gops::set_prefill_mma(false);
                    let o = g.attention(&q, &kc, &vc, n, pos0, n_head, n_head_kv, hd, window, scale, splits, false);
                    gops::set_prefill_mma(true);
                    check(&format!("attention n={n} pos0={pos0} heads {n_head}/{n_head_kv} hd={hd} window={window} (CUDA-core prefill kernel)"), &o, &reference, 3e-3);
                }
                if n == 1 && gops::mma_attention(&g.dev, hd, hd) {
                    // one row on the tensor-core kernel (long-context decode):
                    // one split, a few, and more splits than key tiles
                    for s in [1, 3, 40] {
                        let o = g.attention(&q, &kc, &vc, n, pos0, n_head, n_head_kv, hd, window, scale, s, true);
                        check(&format!("attention n=1 pos0={pos0} heads {n_head}/{n_head_kv} hd={hd} window={window} (tensor-core kernel, {s} splits)"), &o, &reference, 3e-3);
                    }
                }
                g.attention(&q, &kc, &vc, n, pos0, n_head, n_head_kv, hd, window, scale, splits, false)
            }
        };
        let bound = if matches!(b, Backend::Gpu(_)) { 3e-3 } else { 1e-5 };
        check(&format!("attention n={n} pos0={pos0} heads {n_head}/{n_head_kv} hd={hd} window={window} splits={splits}"), &out, &reference, bound);
    }
}
test_device!(attention);

/// The batched decode step's attention: the last positions of sequences of
/// different lengths in one launch, each reading its own block table in a
/// shared pool (blocks interleaved, unused slots NaN), against the f64
/// reference of each sequence alone. GPU only (the CPU engine runs rows
/// one by one).
#[allow(dead_code)]
fn attention_mixed(g: &gpu::Gpu) {
    for &(lens, n_head, n_head_kv, hd, window, splits) in &[
        (&[1usize, 17, 300, 64, 1000][..], 4usize, 2usize, 64usize, 0usize, 4usize),
        (&[5, 129, 40][..], 8, 2, 128, 100, 1),
        (&[33, 2, 600, 16, 48, 7, 250][..], 4, 1, 256, 0, 8),
        (&[16, 32, 48][..], 14, 2, 64, 0, 2),
        // one KV head a Q head (the 7B's shape); a range of more blocks than
        // a warp holds entries of (attn_dr reloads them); more splits than
        // a warp has lanes (its merge takes two a lane)
        (&[700, 1, 129, 2000][..], 8, 8, 128, 0, 1),
        (&[3000, 70, 65][..], 2, 1, 128, 0, 40),
        // one sequence (FORGE_ATTN_ROWS=2 sends a single decode row here)
        (&[777][..], 14, 2, 64, 0, 32),
    ] {
        let kv_dim = n_head_kv * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect() };
        let mut r = Rng(5 + lens.len() as u64 + hd as u64);
        let seqs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = lens.iter().map(|&l| (r.vec(n_head * hd), round(r.vec(l * kv_dim)), round(r.vec(l * kv_dim)))).collect();
        let mut reference = Vec::new();
        for (q, kc, vc) in &seqs {
            let p = kc.len() / kv_dim - 1;
            let first = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
            for h in 0..n_head {
                let kvh = h / (n_head / n_head_kv);
                let qh = &q[h * hd..(h + 1) * hd];
                let sc: Vec<f64> = (first..=p).map(|j| (0..hd).map(|i| qh[i] as f64 * kc[j * kv_dim + kvh * hd + i] as f64).sum::<f64>() * scale as f64).collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    reference.push((first..=p).zip(&e).map(|(j, w)| w / z * vc[j * kv_dim + kvh * hd + i] as f64).sum());
                }
            }
        }
        // a warp per row, head and split (attn_dr*), then a block each (attn_d*)
        for rows in [true, false] {
            let was = gops::set_attn_rows(rows);
            let out = g.mixed_attention(&seqs, n_head, n_head_kv, hd, window, scale, splits);
            let kernel = if rows && gops::attn_rows(&g.dev, hd, hd) { "attn_dr" } else { "attn_d" };
            gops::restore_attn_rows(was);
            check(&format!("mixed decode attention ({kernel}) lens {lens:?} heads {n_head}/{n_head_kv} hd={hd} window={window} splits={splits}"), &out, &reference, 3e-3);
        }
    }
}
test_gpu!(attention_mixed);

/// One decode token: attention doing qkv_post's work itself (bias, QK-norm,
/// RoPE, the f16 K/V store) against qkv_post followed by attention. The
/// caches must match bit for bit; the outputs up to the order of one key's
/// score sum. GPU only (the CPU has no such fusion).
#[allow(dead_code)]
fn attention_fused_qkv(g: &gpu::Gpu) {
    // (n_head, n_head_kv, hd, pos0, window, neox, bias, norm)
    for &(n_head, n_head_kv, hd, pos0, window, neox, bias, norm) in &[
        (14usize, 2usize, 64usize, 300usize, 0usize, true, true, false),
        (4, 1, 256, 40, 16, true, false, true),
        (8, 8, 128, 0, 0, false, false, false),
        (4, 2, 64, 127, 0, false, true, true),
        (4, 2, 64, 128, 0, true, true, false),
        // the 8-warp decode block's boundary: one split, then two
        (8, 2, 128, 255, 0, true, false, false),
        (4, 1, 256, 256, 0, false, true, true),
        (2, 1, 128, 1000, 300, false, false, true),
    ] {
        let (a, b2, ka, kb) = g.fused_qkv_attention(n_head, n_head_kv, hd, pos0, window, neox, bias, norm);
        let what = format!("fused qkv_post + attention heads {n_head}/{n_head_kv} hd={hd} pos0={pos0} window={window} neox={neox} bias={bias} norm={norm}");
        assert_eq!(ka, kb, "{what}: K/V caches differ");
        let reference: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        check(&what, &b2, &reference, 1e-5);
    }
}
test_gpu!(attention_fused_qkv);

/// One token, a layer's Q|K and V of different types in one launch (the
/// pair kernels): the same numbers as two launches, bit for bit, with and
/// without the input norm; every pair kernel (q5_0 in both device
/// layouts), row counts that leave a partial block of each.
fn pair_products(g: &gpu::Gpu) {
    use GgmlType::*;
    for (ta, tb, cols) in [(Q5_0, Q8_0, 896), (Q4K, Q6K, 1536), (Q5K, Q6K, 1024), (Q4K, Q5K, 512)] {
        let (ra, rb) = (70, 13);
        let wa = random_tensor(ta, ra * cols, 1.0, 5).unwrap();
        let wb = random_tensor(tb, rb * cols, 1.0, 6).unwrap();
        let x = Rng(9).vec(cols);
        g.each_layout(ta, cols, |layout| {
            for norm in [false, true] {
                let [pa, pb, sa, sb] = g.pair(ta, &wa, ra, tb, &wb, rb, cols, &x, norm);
                assert!(pa.iter().chain(&pb).all(|v| v.is_finite()) && pa.iter().any(|&v| v != 0.0));
                assert_eq!(pa, sa, "{ta}{layout} + {tb} norm={norm}: first matrix differs from its own launch");
                assert_eq!(pb, sb, "{ta}{layout} + {tb} norm={norm}: second matrix differs from its own launch");
                eprintln!("pair {ta}{layout} + {tb} ({ra} + {rb} rows of {cols}) norm={norm}: equal to two launches");
            }
        });
    }
}
test_gpu!(pair_products);

#[allow(dead_code)]
mod gpu {
    //! Upload, run one op, download; and the per-test leak check.
    use std::sync::Arc;

    use parking_lot::{Mutex, MutexGuard};
    use rocmforge::backend::gpu::memory::{Buffer, MemPool};
    use rocmforge::backend::gpu::ops::{self, ActBuf, AttnShape, DevMatrix, GemmScratch, KvRows, MatmulPath, Out, QkvBufs, QkvPost};
    use rocmforge::kv::BLOCK;
    use rocmforge::backend::gpu::runtime::Stream;
    use rocmforge::backend::gpu::{self, Device, GpuKind};
    use rocmforge::model::arch::{FfnAct, RopeStyle};
    use rocmforge::quant::GgmlType;

    static LOCK: Mutex<()> = Mutex::new(());
    /// Driver-side allocations made lazily on first use (cuBLAS workspace,
    /// module data) that never come back; anything above this is a leak.
    const SLACK: usize = 64 << 20;

    pub struct Gpu {
        _lock: MutexGuard<'static, ()>,
        pub dev: Arc<Device>,
        pub pool: Arc<MemPool>,
        pub s: Stream,
        free0: usize,
        /// Upload matrices in the device layout the model loader uses
        /// (`ops::put_matrix`; q4_0 and q5_0 regrouped) or as GGUF bytes; see
        /// [`Gpu::each_layout`].
        pack: std::cell::Cell<bool>,
    }

    impl Gpu {
        pub fn open(kind: GpuKind) -> Gpu {
            let lock = LOCK.lock();
            let dev = gpu::device(kind, 0).unwrap_or_else(|e| panic!("{} build on a machine without a usable device: {e}", kind.name()));
            let (free0, _) = dev.rt.mem_info().unwrap();
            let pool = MemPool::new(dev.rt.clone(), 0).unwrap();
            let s = dev.rt.stream_create().unwrap();
            Gpu { _lock: lock, dev, pool, s, free0, pack: std::cell::Cell::new(true) }
        }
        pub fn name(&self) -> String {
            self.dev.describe()
        }
        fn up(&self, bytes: &[u8]) -> Buffer {
            let b = self.pool.alloc(bytes.len(), "test input").unwrap();
            self.dev.rt.htod(self.s, b.ptr, bytes).unwrap();
            self.dev.rt.stream_sync(self.s).unwrap();
            b
        }
        /// Run `f` once per device layout a check covers, with uploads in
        /// it: the model loader's (`ops::put_matrix`) and, for the types it
        /// regroups (q4_0, q5_0), the GGUF one too; `f` gets the layout's label.
        pub fn each_layout(&self, ty: GgmlType, cols: usize, mut f: impl FnMut(&str)) {
            let both = ops::packs(ty, cols);
            for pack in [true, false].into_iter().take(if both { 2 } else { 1 }) {
                self.pack.set(pack);
                f(if !both { "" } else if pack { " regrouped" } else { " gguf layout" });
            }
            self.pack.set(true);
        }

        /// A weight matrix uploaded as the model loader does it.
        fn matrix(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize) -> (Buffer, DevMatrix) {
            let b = self.pool.alloc(w.len(), "test matrix").unwrap();
            let packed = ops::put_matrix(self.dev.rt.as_ref(), self.s, b.ptr, ty, cols, w, self.pack.get()).unwrap();
            self.dev.rt.stream_sync(self.s).unwrap();
            let m = DevMatrix { ty, rows, cols, ptr: b.ptr, packed, f16: 0 };
            (b, m)
        }
        /// Positions pos0 .. pos0 + n as the kernels read them (i32 per row).
        fn positions(&self, pos0: usize, n: usize) -> Buffer {
            self.up(&(pos0..pos0 + n).flat_map(|p| (p as i32).to_ne_bytes()).collect::<Vec<u8>>())
        }

        /// One decode launch over the last positions of several sequences
        /// (`seqs`: each one's q (n_head * hd), K and V cache (len *
        /// n_head_kv * hd)), their blocks interleaved in one pool, each row
        /// reading its own block table: the batched engine's decode step.
        #[allow(clippy::too_many_arguments, clippy::type_complexity)]
        pub fn mixed_attention(&self, seqs: &[(Vec<f32>, Vec<f32>, Vec<f32>)], n_head: usize, n_head_kv: usize, hd: usize, window: usize, scale: f32, splits: usize) -> Vec<f32> {
            let kv_dim = n_head_kv * hd;
            let n = seqs.len();
            let lens: Vec<usize> = seqs.iter().map(|s| s.1.len() / kv_dim).collect();
            let blocks: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK)).collect();
            let total: usize = blocks.iter().sum();
            // block b of sequence i: round robin over the sequences, so
            // neighbouring physical blocks belong to different sequences
            let mut tables: Vec<Vec<i32>> = vec![Vec::new(); n];
            let mut next = 0i32;
            for b in 0..*blocks.iter().max().unwrap_or(&0) {
                for (i, t) in tables.iter_mut().enumerate() {
                    if b < blocks[i] {
                        t.push(next);
                        next += 1;
                    }
                }
            }
            let mut kp = vec![half::f16::NAN; total * BLOCK * kv_dim];
            let mut vp = kp.clone();
            for (i, (_, kc, vc)) in seqs.iter().enumerate() {
                for j in 0..lens[i] {
                    let slot = tables[i][j / BLOCK] as usize * BLOCK + j % BLOCK;
                    for e in 0..kv_dim {
                        kp[slot * kv_dim + e] = half::f16::from_f32(kc[j * kv_dim + e]);
                        vp[slot * kv_dim + e] = half::f16::from_f32(vc[j * kv_dim + e]);
                    }
                }
            }
            let bytes = |v: &[half::f16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_ne_bytes()).collect() };
            let ints = |v: &[i32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_ne_bytes()).collect() };
            let (kb, vb) = (self.up(&bytes(&kp)), self.up(&bytes(&vp)));
            let q: Vec<f32> = seqs.iter().flat_map(|s| s.0.iter().copied()).collect();
            let qb = self.up_f32(&q);
            let mut bt = Vec::new();
            let mut tab = Vec::new();
            for t in &tables {
                tab.push(bt.len() as i32);
                bt.extend(t);
            }
            let pos: Vec<i32> = lens.iter().map(|&l| l as i32 - 1).collect();
            let (pb, tb, btb) = (self.up(&ints(&pos)), self.up(&ints(&tab)), self.up(&ints(&bt)));
            let ob = self.out_f32(n * n_head * hd);
            let part = self.pool.alloc(n * n_head * splits * (2 + hd) * 4, "partials").unwrap();
            let counters = self.up(&vec![0u8; n * n_head * 4]);
            let a = AttnShape { n, n_head, n_head_kv, hd, hdv: hd, window, scale, splits, mixed: true, flash: false };
            let at = KvRows { pos: pb.ptr, tab: tb.ptr, bt: btb.ptr };
            ops::attention(&self.dev, self.s, &a, qb.ptr, kb.ptr, vb.ptr, ob.ptr, part.ptr, counters.ptr, at, None, None).unwrap();
            self.down_f32(&ob, n * n_head * hd)
        }

        fn up_f32(&self, v: &[f32]) -> Buffer {
            self.up(&v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>())
        }
        /// An output buffer poisoned with NaN, so unwritten elements fail.
        fn out_f32(&self, n: usize) -> Buffer {
            self.up_f32(&vec![f32::NAN; n])
        }
        fn down_f32(&self, b: &Buffer, n: usize) -> Vec<f32> {
            self.dev.rt.stream_sync(self.s).unwrap();
            let mut bytes = vec![0u8; n * 4];
            self.dev.rt.dtoh(self.s, &mut bytes, b.ptr).unwrap();
            self.dev.rt.stream_sync(self.s).unwrap();
            bytes.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect()
        }
        fn down_f16(&self, b: &Buffer, n: usize) -> Vec<f32> {
            self.dev.rt.stream_sync(self.s).unwrap();
            let mut bytes = vec![0u8; n * 2];
            self.dev.rt.dtoh(self.s, &mut bytes, b.ptr).unwrap();
            self.dev.rt.stream_sync(self.s).unwrap();
            bytes.chunks_exact(2).map(|c| half::f16::from_ne_bytes(c.try_into().unwrap()).to_f32()).collect()
        }

        pub fn matmul(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, tiled: bool) -> (Vec<f32>, MatmulPath) {
            self.matmul_x16(ty, w, rows, cols, x, n, tiled, false)
        }

        /// Scratch for `elems` activations in f16 (and their low halves when
        /// `split`), with no weight slab: for `x_to_f16` and the products
        /// over a resident copy or regrouped weights.
        fn x16_scratch(&self, elems: usize, split: bool) -> GemmScratch {
            GemmScratch {
                w16: self.pool.alloc(2, "w16").unwrap(),
                w16_elems: 1,
                x16: self.pool.alloc(elems * 2, "x16").unwrap(),
                x16_elems: elems,
                x16lo: split.then(|| self.pool.alloc(elems * 2, "x16lo").unwrap()),
            }
        }

        /// x (n, cols) RMS-normalized by `nw` (eps 1e-6) and multiplied by
        /// W's resident f16 copy (`x_to_f16` + `gemm_resident`, the
        /// batched forward's path), with the activations in two f16 halves
        /// when `split`.
        #[allow(clippy::too_many_arguments)]
        pub fn resident_norm_x16(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], nw: &[f32], n: usize, split: bool) -> Vec<f32> {
            let (_wb, mut m) = self.matrix(ty, w, rows, cols);
            let copy = self.pool.alloc(rows * cols * 2, "resident f16 copy").unwrap();
            ops::dequant_to_f16(&self.dev, self.s, &m, copy.ptr).unwrap();
            m.f16 = copy.ptr;
            let (xb, nb, yb) = (self.up_f32(x), self.up_f32(nw), self.out_f32(n * rows));
            let sc = self.x16_scratch(n * cols, split);
            let x16 = ops::x_to_f16(&self.dev, self.s, xb.ptr, n, cols, Some((nb.ptr, 1e-6)), &sc).unwrap();
            ops::gemm_resident(&self.dev, self.s, &m, x16, yb.ptr, n, Out::Store).unwrap();
            self.down_f32(&yb, n * rows)
        }

        /// [`Self::matmul`], with the BLAS path's activations in two f16
        /// halves (`ops::X16`) when `split`.
        #[allow(clippy::too_many_arguments)]
        pub fn matmul_x16(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, tiled: bool, split: bool) -> (Vec<f32>, MatmulPath) {
            let (_wb, m) = self.matrix(ty, w, rows, cols);
            let (xb, yb) = (self.up_f32(x), self.out_f32(n * rows));
            let scratch = (!tiled && self.dev.rt.has_blas()).then(|| GemmScratch {
                w16: self.pool.alloc(rows * cols * 2, "w16").unwrap(),
                w16_elems: rows * cols,
                x16: self.pool.alloc(n * cols * 2, "x16").unwrap(),
                x16_elems: n * cols,
                x16lo: split.then(|| self.pool.alloc(n * cols * 2, "x16lo").unwrap()),
            });
            let path = if tiled {
                // force the portable kernel: no scratch, and too many tokens for matvec
                assert!(!ops::matvec_fits(&self.dev, ty, cols, n));
                ops::matmul(&self.dev, self.s, &m, xb.ptr, yb.ptr, n, Out::Store, None).unwrap()
            } else {
                ops::matmul(&self.dev, self.s, &m, xb.ptr, yb.ptr, n, Out::Store, scratch.as_ref()).unwrap()
            };
            // the residual form must add exactly the same product
            let y = self.down_f32(&yb, n * rows);
            let acc = self.up_f32(&vec![1.0; n * rows]);
            ops::matmul(&self.dev, self.s, &m, xb.ptr, acc.ptr, n, Out::Add, if tiled { None } else { scratch.as_ref() }).unwrap();
            let y2 = self.down_f32(&acc, n * rows);
            for (a, b) in y.iter().zip(&y2) {
                assert!((a + 1.0 - b).abs() <= 1e-3 * (1.0 + a.abs()), "Out::Add differs from Out::Store + 1: {a} vs {b}");
            }
            (y, path)
        }

        /// W x through x_to_f16 + matmul_mmf, on W regrouped (Store, and
        /// Add onto ones, which must add the same product), and the vendor
        /// BLAS's product over W's f16 copy; with the number of column
        /// parts the launch split the product into.
        pub fn mmf(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> (Vec<f32>, Vec<f32>, usize) {
            let (_wb, m) = self.matrix(ty, w, rows, cols);
            assert!(m.packed, "{ty} {cols} columns: regrouped on upload");
            assert!(ops::mmf_fits(self.dev.rt.info(), &m, n));
            let w16 = self.pool.alloc(rows * cols * 2, "w16").unwrap();
            ops::dequant_to_f16(&self.dev, self.s, &m, w16.ptr).unwrap();
            let sc = self.x16_scratch(n * cols, false);
            let (xb, yb) = (self.up_f32(x), self.up_f32(&vec![f32::NAN; n * rows]));
            let x16 = ops::x_to_f16(&self.dev, self.s, xb.ptr, n, cols, None, &sc).unwrap();
            assert_eq!(x16.lo, 0, "no low halves without room for them");
            let x16 = x16.hi;
            ops::matmul_mmf(&self.dev, self.s, &m, x16, yb.ptr, n, Out::Store).unwrap();
            let y = self.down_f32(&yb, n * rows);
            let acc = self.up_f32(&vec![1.0; n * rows]);
            ops::matmul_mmf(&self.dev, self.s, &m, x16, acc.ptr, n, Out::Add).unwrap();
            // split products add their parts in any order: the difference
            // scales with the parts' sizes, not the sum's (a sum near 0 of
            // parts of about the row's rms)
            let rms = (y.iter().map(|v| (v * v) as f64).sum::<f64>() / y.len() as f64).sqrt() as f32;
            for (p, q) in y.iter().zip(&self.down_f32(&acc, n * rows)) {
                assert!((p + 1.0 - q).abs() <= 1e-5 * (1.0 + p.abs() + rms), "mmf Out::Add differs from Out::Store + 1: {p} vs {q}");
            }
            // the vendor BLAS over the f16 copy
            let bb = self.out_f32(n * rows);
            let gemm = rocmforge::backend::gpu::runtime::GemmF16 { m: rows, n, k: cols, a: w16.ptr, b: x16, c: bb.ptr, ldc: rows, alpha: 1.0, beta: 0.0 };
            self.dev.rt.gemm_f16(self.s, &gemm).unwrap();
            let blas = self.down_f32(&bb, n * rows);
            (y, blas, ops::mmf_parts(self.dev.rt.info(), &m, n))
        }

        /// `topk_rows` over x (rows, n), back as host rows.
        pub fn topk(&self, x: &[f32], rows: usize, n: usize, k: usize) -> rocmforge::backend::TopRows {
            let xb = self.up_f32(x);
            let (ib, vb, lb) = (self.out_f32(rows * k), self.out_f32(rows * k), self.out_f32(rows));
            let scratch = self.out_f32(ops::topk_scratch_bytes(rows) / 4);
            ops::topk(&self.dev, self.s, xb.ptr, rows, n, k, ib.ptr, vb.ptr, lb.ptr, scratch.ptr).unwrap();
            let ids: Vec<u32> = self.down_f32(&ib, rows * k).iter().map(|v| v.to_bits()).collect();
            rocmforge::backend::TopRows { k, ids, logits: self.down_f32(&vb, rows * k), lse: self.down_f32(&lb, rows) }
        }

        /// W x through quantize_act + matmul_q (the tensor-core products),
        /// checking that the residual form adds the same product; with it,
        /// for up to MMV_MAXT tokens, matvec_q on the same prepared x.
        pub fn mmq(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> (Vec<f32>, Option<Vec<f32>>) {
            let (_wb, m) = self.matrix(ty, w, rows, cols);
            let (xb, yb) = (self.up_f32(x), self.out_f32(n * rows));
            let act = ActBuf::with_tokens(&self.pool, cols, n).unwrap();
            let a = ops::quantize_act_mmq(&self.dev, self.s, &act, xb.ptr, cols, n, None).unwrap();
            // the decode kernels read the token-major layout, and refuse this one
            assert!(ops::matvec_q(&self.dev, self.s, &m, None, &a, yb.ptr, Out::Store).is_err());
            ops::matmul_q(&self.dev, self.s, &m, &a, yb.ptr, Out::Store).unwrap();
            let y = self.down_f32(&yb, n * rows);
            let acc = self.up_f32(&vec![1.0; n * rows]);
            ops::matmul_q(&self.dev, self.s, &m, &a, acc.ptr, Out::Add).unwrap();
            for (p, q) in y.iter().zip(&self.down_f32(&acc, n * rows)) {
                assert!((p + 1.0 - q).abs() <= 1e-5 * (1.0 + p.abs()), "mmq Out::Add differs from Out::Store + 1: {p} vs {q}");
            }
            let dec = (n <= ops::MMV_MAXT && ops::decode_kernel(ty).is_some()).then(|| {
                let a = ops::quantize_act(&self.dev, self.s, &act, xb.ptr, cols, n, None).unwrap();
                assert!(ops::matmul_q(&self.dev, self.s, &m, &a, yb.ptr, Out::Store).is_err());
                ops::matvec_q(&self.dev, self.s, &m, None, &a, yb.ptr, Out::Store).unwrap();
                self.down_f32(&yb, n * rows)
            });
            (y, dec)
        }

        /// W x through quantize_act + matvec_q (the decode kernels), checking
        /// on the way that the residual form adds the same product and that
        /// the fused RMSNorm equals rmsnorm followed by quantize_act.
        pub fn matvec_int(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
            let (_wb, m) = self.matrix(ty, w, rows, cols);
            let (xb, yb) = (self.up_f32(x), self.out_f32(n * rows));
            let act = ActBuf::new(&self.pool, cols).unwrap();
            let a = ops::quantize_act(&self.dev, self.s, &act, xb.ptr, cols, n, None).unwrap();
            ops::matvec_q(&self.dev, self.s, &m, None, &a, yb.ptr, Out::Store).unwrap();
            let y = self.down_f32(&yb, n * rows);
            let acc = self.up_f32(&vec![1.0; n * rows]);
            ops::matvec_q(&self.dev, self.s, &m, None, &a, acc.ptr, Out::Add).unwrap();
            let y2 = self.down_f32(&acc, n * rows);
            for (a, b) in y.iter().zip(&y2) {
                assert!((a + 1.0 - b).abs() <= 1e-3 * (1.0 + a.abs()), "Out::Add differs from Out::Store + 1: {a} vs {b}");
            }
            let nw = self.up_f32(&(0..cols).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect::<Vec<f32>>());
            let xn = self.out_f32(n * cols);
            ops::rmsnorm(&self.dev, self.s, xb.ptr, nw.ptr, xn.ptr, n, cols, 1e-6, false).unwrap();
            let a = ops::quantize_act(&self.dev, self.s, &act, xn.ptr, cols, n, None).unwrap();
            ops::matvec_q(&self.dev, self.s, &m, None, &a, yb.ptr, Out::Store).unwrap();
            let sep = self.down_f32(&yb, n * rows);
            let a = ops::quantize_act(&self.dev, self.s, &act, xb.ptr, cols, n, Some((nw.ptr, 1e-6))).unwrap();
            ops::matvec_q(&self.dev, self.s, &m, None, &a, yb.ptr, Out::Store).unwrap();
            let fused = self.down_f32(&yb, n * rows);
            let scale = sep.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (p, q) in sep.iter().zip(&fused) {
                assert!((p - q).abs() <= 1e-4 * scale, "fused norm {q} vs separate {p}");
            }
            if n == 1 && ops::matvec_x_fits(&m, false, false, self.dev.rt.info()) {
                // the kernels that prepare x themselves: the same numbers as
                // quantize_act + the decode kernel; bit for bit for short
                // rows (one row per warp, as matvec_q), up to the order of
                // the block's sum for long ones (4 rows per block of 256
                // threads where matvec_q's has 128)
                ops::matvec_x(&self.dev, self.s, &m, None, xb.ptr, None, yb.ptr, Out::Store).unwrap();
                let yx = self.down_f32(&yb, rows);
                if cols < 2048 {
                    assert_eq!(yx, y, "matvec_x differs from quantize_act + matvec_q");
                } else {
                    let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (p, q) in y.iter().zip(&yx) {
                        assert!((p - q).abs() <= 1e-6 * scale, "long-row matvec_x {q} vs quantize_act + matvec_q {p}");
                    }
                }
                let acc = self.up_f32(&vec![1.0; rows]);
                ops::matvec_x(&self.dev, self.s, &m, None, xb.ptr, None, acc.ptr, Out::Add).unwrap();
                for (a, b) in y.iter().zip(&self.down_f32(&acc, rows)) {
                    assert!((a + 1.0 - b).abs() <= 1e-3 * (1.0 + a.abs()), "matvec_x Out::Add: {a} + 1 vs {b}");
                }
                // with the norm (short rows only): up to the order of the sum of squares
                if ops::matvec_x_fits(&m, false, true, self.dev.rt.info()) {
                    ops::matvec_x(&self.dev, self.s, &m, None, xb.ptr, Some((nw.ptr, 1e-6)), yb.ptr, Out::Store).unwrap();
                    for (p, q) in fused.iter().zip(&self.down_f32(&yb, rows)) {
                        assert!((p - q).abs() <= 1e-4 * scale, "matvec_x with norm {q} vs quantize_act with norm {p}");
                    }
                }
            }
            y
        }

        /// One token, A x and B x through one pair launch, then through two
        /// matvec_x launches: [pair A, pair B, alone A, alone B].
        #[allow(clippy::too_many_arguments)]
        pub fn pair(&self, ta: GgmlType, wa: &[u8], ra: usize, tb: GgmlType, wb: &[u8], rb: usize, cols: usize, x: &[f32], norm: bool) -> [Vec<f32>; 4] {
            let ((_ab, a), (_bb, b)) = (self.matrix(ta, wa, ra, cols), self.matrix(tb, wb, rb, cols));
            let xb = self.up_f32(x);
            let nw = self.up_f32(&(0..cols).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect::<Vec<f32>>());
            let norm = norm.then_some((nw.ptr, 1e-6f32));
            let (ya, yb) = (self.out_f32(ra), self.out_f32(rb));
            assert!(ops::matvec_x_pair_fits(&a, &b, self.dev.rt.info()), "{ta} + {tb}: no pair kernel");
            ops::matvec_x_pair(&self.dev, self.s, &a, &b, xb.ptr, norm, ya.ptr, yb.ptr).unwrap();
            let (pa, pb) = (self.down_f32(&ya, ra), self.down_f32(&yb, rb));
            ops::matvec_x(&self.dev, self.s, &a, None, xb.ptr, norm, ya.ptr, Out::Store).unwrap();
            ops::matvec_x(&self.dev, self.s, &b, None, xb.ptr, norm, yb.ptr, Out::Store).unwrap();
            [pa, pb, self.down_f32(&ya, ra), self.down_f32(&yb, rb)]
        }

        pub fn gated(&self, ty: GgmlType, wg: &[u8], wu: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, act: FfnAct) -> Vec<f32> {
            let ((_gb, g), (_ub, u)) = (self.matrix(ty, wg, rows, cols), self.matrix(ty, wu, rows, cols));
            let (xb, yb) = (self.up_f32(x), self.out_f32(n * rows));
            ops::matvec(&self.dev, self.s, &g, Some((&u, act)), xb.ptr, yb.ptr, n, Out::Store, None).unwrap();
            let fused = self.down_f32(&yb, n * rows);
            if n == 1 {
                // with the input RMSNorm fused in, against rmsnorm + matvec
                let nw = self.up_f32(&(0..cols).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect::<Vec<f32>>());
                let xn = self.out_f32(cols);
                ops::rmsnorm(&self.dev, self.s, xb.ptr, nw.ptr, xn.ptr, 1, cols, 1e-6, false).unwrap();
                let (a, b) = (self.out_f32(rows), self.out_f32(rows));
                ops::matvec(&self.dev, self.s, &g, Some((&u, act)), xn.ptr, a.ptr, 1, Out::Store, None).unwrap();
                ops::matvec(&self.dev, self.s, &g, Some((&u, act)), xb.ptr, b.ptr, 1, Out::Store, Some((nw.ptr, 1e-6))).unwrap();
                let (a, b) = (self.down_f32(&a, rows), self.down_f32(&b, rows));
                for (p, q) in a.iter().zip(&b) {
                    assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "fused norm {q} vs separate {p}");
                }
            }
            if ops::decode_kernel(ty).is_some() {
                let act_buf = ActBuf::new(&self.pool, cols).unwrap();
                let a = ops::quantize_act(&self.dev, self.s, &act_buf, xb.ptr, cols, n, None).unwrap();
                let ib = self.out_f32(n * rows);
                ops::matvec_q(&self.dev, self.s, &g, Some((&u, act)), &a, ib.ptr, Out::Store).unwrap();
                // the decode kernels' 15-bit activations against matvec's f32
                // ones: the file's 1e-4 bound for them, as a relative L2 error
                // (single outputs near zero can differ more, relatively)
                let f64s: Vec<f64> = fused.iter().map(|&v| v as f64).collect();
                let dec = self.down_f32(&ib, n * rows);
                let e = super::rel_l2(&dec, &f64s);
                assert!(e <= 1e-4, "mmvq/mmvf gated vs matvec: rel L2 {e:.3e}");
                if n == 1 && ops::matvec_x_fits(&g, true, false, self.dev.rt.info()) {
                    ops::matvec_x(&self.dev, self.s, &g, Some((&u, act)), xb.ptr, None, ib.ptr, Out::Store).unwrap();
                    let rw = ops::wx_rows_per_warp(&self.dev, &g, true);
                    assert_eq!(self.down_f32(&ib, rows), dec, "gated matvec_x ({rw} rows per warp) differs from quantize_act + matvec_q");
                    eprintln!("gated matvec_x {ty} {rows}x{cols} ({rw} rows per warp) = quantize_act + matvec_q");
                }
            }
            // the unfused path (prefill): two products and the glu kernel
            let ob = self.out_f32(n * rows);
            ops::matmul(&self.dev, self.s, &g, xb.ptr, yb.ptr, n, Out::Store, None).unwrap();
            ops::matmul(&self.dev, self.s, &u, xb.ptr, ob.ptr, n, Out::Store, None).unwrap();
            ops::glu(&self.dev, self.s, yb.ptr, ob.ptr, n * rows, act).unwrap();
            let unfused = self.down_f32(&yb, n * rows);
            for (a, b) in fused.iter().zip(&unfused) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "fused {a} vs unfused {b}");
            }
            fused
        }

        pub fn get_rows(&self, ty: GgmlType, w: &[u8], rows: usize, cols: usize, ids: &[u32], scale: f32) -> Vec<f32> {
            let (_wb, m) = self.matrix(ty, w, rows, cols);
            let idb = self.up(&ids.iter().flat_map(|&i| (i as i32).to_ne_bytes()).collect::<Vec<u8>>());
            let ob = self.out_f32(ids.len() * cols);
            ops::get_rows(&self.dev, self.s, &m, idb.ptr, ob.ptr, ids.len(), scale).unwrap();
            self.down_f32(&ob, ids.len() * cols)
        }

        pub fn rmsnorm(&self, x: &[f32], w: &[f32], y0: &[f32], dim: usize, eps: f32, add: bool) -> Vec<f32> {
            let (xb, wb, yb) = (self.up_f32(x), self.up_f32(w), self.up_f32(y0));
            ops::rmsnorm(&self.dev, self.s, xb.ptr, wb.ptr, yb.ptr, x.len() / dim, dim, eps, add).unwrap();
            self.down_f32(&yb, x.len())
        }

        /// x (n, dim) through ops::x_to_f16 (RMS-normalized by w with
        /// `eps`, or converted alone), back as f32: the f16 values, and
        /// with `split` the low halves' values too (unscaled: x ≈ hi + lo).
        pub fn x_to_f16(&self, x: &[f32], w: &[f32], n: usize, dim: usize, eps: Option<f32>, split: bool) -> (Vec<f32>, Option<Vec<f64>>) {
            let (xb, wb) = (self.up_f32(x), self.up_f32(w));
            let sc = self.x16_scratch(n * dim, split);
            let y = ops::x_to_f16(&self.dev, self.s, xb.ptr, n, dim, eps.map(|e| (wb.ptr, e)), &sc).unwrap();
            assert_eq!(y.lo != 0, split, "low halves exactly when the scratch has room for them");
            let down = |p| {
                self.dev.rt.stream_sync(self.s).unwrap();
                let mut h = vec![0u8; n * dim * 2];
                self.dev.rt.dtoh(self.s, &mut h, p).unwrap();
                self.dev.rt.stream_sync(self.s).unwrap();
                h.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect::<Vec<f32>>()
            };
            let hi = down(y.hi);
            let lo = split.then(|| down(y.lo).iter().map(|&v| v as f64 / ops::F16_SPLIT_SCALE as f64).collect());
            (hi, lo)
        }

        #[allow(clippy::too_many_arguments)]
        pub fn qkv_post(
            &self, q: &[f32], k: &[f32], v: &[f32], extras: Option<(&[f32], &[f32], &[f32], &[f32])>, n: usize, n_head: usize, n_head_kv: usize,
            hd: usize, rope_dim: usize, rope: RopeStyle, pos0: usize, base: f32, eps: f32,
        ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let n_ctx = pos0 + n + 3;
            let (qb, kb, vb) = (self.up_f32(q), self.up_f32(k), self.up_f32(v));
            let kv = n_ctx * n_head_kv * hd;
            let (kc, vc) = (self.up(&vec![0xffu8; kv * 2]), self.up(&vec![0xffu8; kv * 2]));
            let pos = self.positions(pos0, n);
            let freq: Vec<f32> = (0..rope_dim / 2).map(|i| rocmforge::model::reference::rope_pair(i, rope_dim, base, rocmforge::model::RopeScaling::None)).map(|(p, m, _)| p * m).collect();
            let fb = self.up_f32(&freq);
            let ex = extras.map(|(a, b, c, d)| (self.up_f32(a), self.up_f32(b), self.up_f32(c), self.up_f32(d)));
            let p = |i: usize| ex.as_ref().map_or(0, |e| [e.0.ptr, e.1.ptr, e.2.ptr, e.3.ptr][i]);
            let post = QkvPost { n, n_head, n_head_kv, hd, hdv: hd, rope_dim, rope, mscale: 1.0, eps };
            let bufs = QkvBufs { q: qb.ptr, k: kb.ptr, v: vb.ptr, bq: p(0), bk: p(1), bv: 0, q_norm: p(2), k_norm: p(3), k_cache: kc.ptr, v_cache: vc.ptr, at: KvRows { pos: pos.ptr, tab: 0, bt: 0 }, freq: fb.ptr };
            ops::qkv_post(&self.dev, self.s, &post, &bufs).unwrap();
            let row = n_head_kv * hd;
            let kall = self.down_f16(&kc, kv);
            let vall = self.down_f16(&vc, kv);
            (self.down_f32(&qb, q.len()), kall[pos0 * row..(pos0 + n) * row].to_vec(), vall[pos0 * row..(pos0 + n) * row].to_vec())
        }

        /// (separate output, fused output, separate K|V cache bytes, fused K|V cache bytes)
        #[allow(clippy::too_many_arguments, clippy::type_complexity)]
        pub fn fused_qkv_attention(&self, n_head: usize, n_head_kv: usize, hd: usize, pos0: usize, window: usize, neox: bool, bias: bool, norm: bool) -> (Vec<f32>, Vec<f32>, Vec<u8>, Vec<u8>) {
            let mut r = super::Rng(77 + pos0 as u64 + hd as u64);
            let n_ctx = pos0 + 4;
            let (q, k, v) = (r.vec(n_head * hd), r.vec(n_head_kv * hd), r.vec(n_head_kv * hd));
            let (bq, bk, bv) = (r.vec(n_head * hd), r.vec(n_head_kv * hd), r.vec(n_head_kv * hd));
            let (qn, kn) = (r.vec(hd), r.vec(hd));
            let kv = n_ctx * n_head_kv * hd;
            let f16 = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|&x| half::f16::from_f32(x).to_ne_bytes()).collect() };
            let (k0, v0) = (f16(&r.vec(kv)), f16(&r.vec(kv)));
            let rope_dim = hd;
            let freq: Vec<f32> = (0..rope_dim / 2).map(|i| rocmforge::model::reference::rope_pair(i, rope_dim, 10000.0, rocmforge::model::RopeScaling::None)).map(|(p, m, _)| p * m).collect();
            let (fb, pos) = (self.up_f32(&freq), self.positions(pos0, 1));
            let at = KvRows { pos: pos.ptr, tab: 0, bt: 0 };
            let (bqb, bkb, bvb, qnb, knb) = (self.up_f32(&bq), self.up_f32(&bk), self.up_f32(&bv), self.up_f32(&qn), self.up_f32(&kn));
            let post = QkvPost { n: 1, n_head, n_head_kv, hd, hdv: hd, rope_dim, rope: if neox { RopeStyle::Neox } else { RopeStyle::Normal }, mscale: 1.0, eps: 1e-6 };
            let splits = ops::decode_splits(n_ctx);
            let a = AttnShape { n: 1, n_head, n_head_kv, hd, hdv: hd, window, scale: 1.0 / (hd as f32).sqrt(), splits, mixed: false, flash: false };
            let part = self.pool.alloc(n_head * splits * (2 + hd) * 4, "partials").unwrap();
            let counters = self.up(&vec![0u8; n_head * 4]);
            let run = |fused: bool| -> (Vec<f32>, Vec<u8>) {
                let (qb, kb, vb) = (self.up_f32(&q), self.up_f32(&k), self.up_f32(&v));
                let (kc, vc) = (self.up(&k0), self.up(&v0));
                let ob = self.out_f32(n_head * hd);
                let bufs = QkvBufs {
                    q: qb.ptr, k: kb.ptr, v: vb.ptr,
                    bq: if bias { bqb.ptr } else { 0 }, bk: if bias { bkb.ptr } else { 0 }, bv: if bias { bvb.ptr } else { 0 },
                    q_norm: if norm { qnb.ptr } else { 0 }, k_norm: if norm { knb.ptr } else { 0 },
                    k_cache: kc.ptr, v_cache: vc.ptr, at, freq: fb.ptr,
                };
                if fused {
                    ops::attention(&self.dev, self.s, &a, qb.ptr, kc.ptr, vc.ptr, ob.ptr, part.ptr, counters.ptr, at, None, Some((&post, &bufs))).unwrap();
                } else {
                    ops::qkv_post(&self.dev, self.s, &post, &bufs).unwrap();
                    ops::attention(&self.dev, self.s, &a, qb.ptr, kc.ptr, vc.ptr, ob.ptr, part.ptr, counters.ptr, at, None, None).unwrap();
                }
                let mut caches = vec![0u8; kv * 4];
                self.dev.rt.dtoh(self.s, &mut caches[..kv * 2], kc.ptr).unwrap();
                self.dev.rt.dtoh(self.s, &mut caches[kv * 2..], vc.ptr).unwrap();
                (self.down_f32(&ob, n_head * hd), caches)
            };
            let (oa, ca) = run(false);
            let (ob, cb) = run(true);
            (oa, ob, ca, cb)
        }

        #[allow(clippy::too_many_arguments)]
        pub fn attention(&self, q: &[f32], kc: &[f32], vc: &[f32], n: usize, pos0: usize, n_head: usize, n_head_kv: usize, hd: usize, window: usize, scale: f32, splits: usize, flash: bool) -> Vec<f32> {
            let f16 = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|&x| half::f16::from_f32(x).to_ne_bytes()).collect() };
            let (qb, kb, vb) = (self.up_f32(q), self.up(&f16(kc)), self.up(&f16(vc)));
            let ob = self.out_f32(n * n_head * hd);
            let part = self.pool.alloc(n * n_head * splits * (2 + hd) * 4, "partials").unwrap();
            let counters = self.up(&vec![0u8; n * n_head * 4]);
            let pos = self.positions(pos0, n);
            let at = KvRows { pos: pos.ptr, tab: 0, bt: 0 };
            let a = AttnShape { n, n_head, n_head_kv, hd, hdv: hd, window, scale, splits, mixed: false, flash };
            ops::attention(&self.dev, self.s, &a, qb.ptr, kb.ptr, vb.ptr, ob.ptr, part.ptr, counters.ptr, at, None, None).unwrap();
            let first = self.down_f32(&ob, n * n_head * hd);
            {
                // paged: the same keys in the blocks of a reversed block
                // table (blocks n_blk .. 1; blocks 0 and n_blk + 1 spare,
                // filled with NaN that must never be read): the same
                // output, bit for bit
                let kv_dim = n_head_kv * hd;
                let n_blk = (pos0 + n).div_ceil(BLOCK);
                let phys: Vec<i32> = (0..n_blk as i32).map(|b| n_blk as i32 - b).collect();
                let page = |c: &[f32]| -> Vec<u8> {
                    let mut o = vec![half::f16::NAN; (n_blk + 2) * BLOCK * kv_dim];
                    for j in 0..c.len() / kv_dim {
                        let slot = phys[j / BLOCK] as usize * BLOCK + j % BLOCK;
                        for i in 0..kv_dim {
                            o[slot * kv_dim + i] = half::f16::from_f32(c[j * kv_dim + i]);
                        }
                    }
                    o.iter().flat_map(|x| x.to_ne_bytes()).collect()
                };
                let (pk, pv) = (self.up(&page(kc)), self.up(&page(vc)));
                let bt = self.up(&phys.iter().flat_map(|b| b.to_ne_bytes()).collect::<Vec<u8>>());
                let op = self.out_f32(n * n_head * hd);
                let paged = KvRows { pos: pos.ptr, tab: 0, bt: bt.ptr };
                ops::attention(&self.dev, self.s, &a, qb.ptr, pk.ptr, pv.ptr, op.ptr, part.ptr, counters.ptr, paged, None, None).unwrap();
                assert_eq!(first, self.down_f32(&op, n * n_head * hd), "paged cache differs from the contiguous one");
            }
            // again, as a replayed graph would: the counters must be back at zero
            let ob2 = self.out_f32(n * n_head * hd);
            ops::attention(&self.dev, self.s, &a, qb.ptr, kb.ptr, vb.ptr, ob2.ptr, part.ptr, counters.ptr, at, None, None).unwrap();
            assert_eq!(first, self.down_f32(&ob2, n * n_head * hd), "second launch differs");
            if n <= ops::MMV_MAXT && hd % 32 == 0 {
                // the output prepared for the decode products as it is
                // written: the same bytes quantize_act makes of it
                let cols = n_head * hd;
                let (b1, b2) = (ActBuf::new(&self.pool, cols).unwrap(), ActBuf::new(&self.pool, cols).unwrap());
                let prep = b1.layout(cols, n, ob2.ptr).unwrap();
                ops::attention(&self.dev, self.s, &a, qb.ptr, kb.ptr, vb.ptr, ob2.ptr, part.ptr, counters.ptr, at, Some(&prep), None).unwrap();
                let again = ops::quantize_act(&self.dev, self.s, &b2, ob2.ptr, cols, n, None).unwrap();
                let raw = |p: u64, len: usize| {
                    let mut v = vec![0u8; len];
                    self.dev.rt.dtoh(self.s, &mut v, p).unwrap();
                    v
                };
                let (p, q) = (prep.ptrs(), again.ptrs());
                assert_eq!(raw(p[0], n * cols * 2), raw(q[0], n * cols * 2), "prepared planes");
                assert_eq!(raw(p[1], n * cols / 8), raw(q[1], n * cols / 8), "prepared group scales");
                assert_eq!(raw(p[2], n * cols / 8), raw(q[2], n * cols / 8), "prepared group sums");
                assert_eq!(first, self.down_f32(&ob2, n * n_head * hd), "output with preparation");
            }
            first
        }
    }

    impl Drop for Gpu {
        fn drop(&mut self) {
            self.dev.rt.stream_sync(self.s).unwrap();
            self.dev.rt.stream_destroy(self.s);
            if std::thread::panicking() {
                return;
            }
            assert_eq!(self.pool.used(), 0, "device buffers still allocated at the end of the test");
            let (free, _) = self.dev.rt.mem_info().unwrap();
            assert!(free + SLACK >= self.free0, "device memory leak: {} MiB free before, {} MiB after", self.free0 >> 20, free >> 20);
        }
    }
}
