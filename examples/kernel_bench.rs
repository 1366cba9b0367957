//! Single-thread throughput of the 16-bit-activation dot kernels, in weights
//! per second, for one token (decode) and four tokens per call (prefill).
//! Weight rows are random bytes with finite f16 scales: fine for timing.
//!
//! usage: cargo run --release --example kernel_bench

use std::time::Instant;

use rocmforge::backend::cpu::simd;
use rocmforge::quant::{quantize_q16, GgmlType};

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
        let xs: Vec<Vec<f32>> = (0..4).map(|t| (0..cols).map(|i| ((i * 7 + t) % 13) as f32 - 6.0).collect()).collect();
        let xq: Vec<_> = xs.iter().map(|x| quantize_q16(x).unwrap()).collect();
        let rows_act: Vec<_> = xq.iter().map(|a| a.as_row()).collect();
        let k = simd::q16_kernel(ty);
        let mut out = [0f32; 4];
        let mut sink = 0f32;
        let mut rate = |nt: usize| {
            let reps = 20;
            let t = Instant::now();
            for _ in 0..reps {
                for r in 0..rows {
                    k(&w[r * row_bytes..(r + 1) * row_bytes], &rows_act[..nt], &mut out[..nt]);
                    sink += out[0];
                }
            }
            (reps * rows * cols * nt) as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let one = rate(1);
        let four = rate(4);
        println!("{:6} 1 token: {one:6.2} G weight·tokens/s   4 tokens: {four:6.2}   (checksum {:.1})", ty.name(), sink);
    }
}
