//! Single-thread throughput of the dot kernels, in weights per second, for
//! one token (decode) and eight tokens per call (prefill): the 8-bit kernels
//! of every family this CPU has, the packed 8-row tiles (AVX-512 VNNI), and
//! the 16-bit ones (`FORGE_ACT16`).
//! Weight rows are random bytes with finite f16 scales: fine for timing.
//!
//! usage: cargo run --release --example kernel_bench

use std::time::Instant;

use rocmforge::backend::cpu::simd;
use rocmforge::backend::cpu::packed;
use rocmforge::backend::cpu::simd::Family;
use rocmforge::quant::{quantize_a8, quantize_q16, GgmlType};

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn main() {
    let (rows, cols) = match std::env::var("ROWS") { Ok(r) => (r.parse().unwrap(), 4096usize), Err(_) => (2048usize, 2048usize) };
    println!("kernels: {}; {rows} x {cols} matrix, single thread", simd::kernel_name());
    for (ty, scale_offsets) in [
        (GgmlType::Q4_0, &[0usize][..]),
        (GgmlType::Q4_1, &[0, 2][..]),
        (GgmlType::Q5_0, &[0][..]),
        (GgmlType::Q8_0, &[0][..]),
        (GgmlType::Q4K, &[0, 2][..]),
        (GgmlType::Q6K, &[208][..]),
    ] {
        let (bs, ts) = ty.block_geometry();
        let mut seed = 0x1234_5678u64;
        let mut w: Vec<u8> = (0..rows * cols / bs * ts).map(|_| rng(&mut seed) as u8).collect();
        for blk in w.chunks_mut(ts) {
            for &o in scale_offsets {
                blk[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        let row_bytes = cols / bs * ts;
        let xs: Vec<Vec<f32>> = (0..8).map(|t| (0..cols).map(|i| ((i * 7 + t) % 13) as f32 - 6.0).collect()).collect();
        let time = |f: &mut dyn FnMut(usize), nt: usize| {
            let reps = 20;
            let t = Instant::now();
            for _ in 0..reps {
                for r in 0..rows {
                    f(r);
                }
            }
            (reps * rows * cols * nt) as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let mut out = [0f32; 8];
        let mut sink = 0f32;
        let q8: Vec<_> = xs.iter().map(|x| quantize_a8(x).unwrap()).collect();
        let r8: Vec<_> = q8.iter().map(|a| a.as_row()).collect();
        for f in Family::ALL.into_iter().filter(|f| f.available()) {
            let k = simd::a8_kernel_of(f, ty);
            let mut line = format!("{:6} 8-bit  {:11}", ty.name(), f.name());
            for nt in [1, 8] {
                let g = time(&mut |r| { k(&w[r * row_bytes..(r + 1) * row_bytes], &r8[..nt], &mut out[..nt]); sink += out[0]; }, nt);
                line += &format!(" {nt} token(s): {g:6.2}");
            }
            println!("{line}   G weight·tokens/s");
        }
        if packed::wanted() {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            if let Some(p) = packed::pack(&pool, ty, rows, cols, &w) {
                let mut y = vec![0f32; 8 * rows];
                let mut line = format!("{:6} 8-bit  {:11}", ty.name(), "packed");
                for nt in [1, 8] {
                    let reps = 20;
                    let t = Instant::now();
                    for _ in 0..reps {
                        packed::matmul(&pool, &p, &r8[..nt], None, &mut y[..nt * rows]);
                        sink += y[0];
                    }
                    let g = (reps * rows * cols * nt) as f64 / t.elapsed().as_secs_f64() / 1e9;
                    line += &format!(" {nt} token(s): {g:6.2}");
                }
                println!("{line}   G weight·tokens/s (8-row tiles, AVX-512 VNNI)");
            }
        }
        let q16: Vec<_> = xs.iter().map(|x| quantize_q16(x).unwrap()).collect();
        let r16: Vec<_> = q16.iter().map(|a| a.as_row()).collect();
        let k = simd::q16_kernel(ty);
        let mut line = format!("{:6} 16-bit {:11}", ty.name(), "avx2");
        for nt in [1, 4] {
            let g = time(&mut |r| { k(&w[r * row_bytes..(r + 1) * row_bytes], &r16[..nt], &mut out[..nt]); sink += out[0]; }, nt);
            line += &format!(" {nt} token(s): {g:6.2}");
        }
        println!("{line}   G weight·tokens/s (checksum {sink:.1})");
    }
}
