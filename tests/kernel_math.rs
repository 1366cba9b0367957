//! The GPU kernels' arithmetic without a GPU: `kernels/quant.h` and
//! `kernels/iquant.h` compiled as host C++ (`-DFORGE_HOST_TEST`, the
//! compiler from `$CXX`, else `c++`) by `tests/c/kernel_math.cpp`, fed
//! random weights of every GPU type and checked against the CPU dequantizer
//! (bit-exact with gguf-py):
//!
//! - `deq` (the 32-value groups every GPU product and the f16 dequantization
//!   for cuBLAS start from): max |deq − ref| / max |ref| ≤ 1e-6 (f32
//!   rounding of d·q − m at most);
//! - the integer decode parts (`IP<T>` of mmvq) on activations prepared as
//!   `quant_act` prepares them: relative L2 of each row's dot product ≤ 1e-4,
//!   the bound the GPU op tests use (15-bit activations).
//!
//! So the byte tricks of the integer kernels (nibble unpacking, high-bit
//! spreading, borrow-free subtraction, the quarter-of-the-minimum split) are
//! checked in CI on every commit, not only on the GPU machine. A missing C++
//! compiler fails the test.

use std::io::Write;
use std::process::Command;

use rocmforge::quant::{self, GgmlType};
use rocmforge::twin::random_tensor;

/// Case ids of q4_0, q5_0 and q8_0 in the GPU's regrouped layouts
/// (`ops::pack_rows`; tests/c/kernel_math.cpp): 1000 + the ggml id.
const PACKED: [(u32, GgmlType); 3] = [(1002, GgmlType::Q4_0), (1006, GgmlType::Q5_0), (1008, GgmlType::Q8_0)];

#[test]
fn kernel_arithmetic_matches_the_cpu_dequantizer() {
    use GgmlType::*;
    let types = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Iq4Nl, Iq4Xs, Mxfp4];
    let int_types = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K];
    let (rows, cols) = (24usize, 768usize);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let cases = dir.join("kernel_math.cases");
    let mut f = std::fs::File::create(&cases).unwrap();
    // every type, then q4_0, q5_0 and q8_0 again in the GPU's regrouped
    // layouts (case ids 1002, 1006, 1008; ops::pack_rows, kernels' TQ4_0X8,
    // TQ5_0X4, TQ8_0X4) against the same reference
    let cases_list: Vec<(u32, GgmlType)> = types.iter().map(|&t| (t as u32, t)).chain(PACKED).collect();
    f.write_all(&(cases_list.len() as u32).to_le_bytes()).unwrap();
    let mut seed = 0x9E37_79B9u64;
    for (i, &(id, ty)) in cases_list.iter().enumerate() {
        let w = random_tensor(ty, rows * cols, 0.05, 100 + i as u64).unwrap();
        let deq = quant::dequantize_vec(ty, &w).unwrap();
        // activations with a spread of magnitudes, one outlier per 256 values
        let x: Vec<f32> = (0..cols)
            .map(|c| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if c % 256 == 17 { 40.0 * u } else { u }
            })
            .collect();
        let w = if id >= 1000 {
            assert!(rocmforge::backend::gpu::ops::packs(ty, cols));
            let mut p = vec![0u8; w.len()];
            rocmforge::backend::gpu::ops::pack_rows(ty, &w, &mut p);
            assert_ne!(p, w, "regrouping changes the bytes");
            p
        } else {
            w
        };
        for v in [id, rows as u32, cols as u32] {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        f.write_all(&(w.len() as u64).to_le_bytes()).unwrap();
        f.write_all(&w).unwrap();
        for v in x.iter().chain(&deq) {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    drop(f);

    let root = env!("CARGO_MANIFEST_DIR");
    let exe = dir.join("kernel_math");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-fno-strict-aliasing", "-DFORGE_HOST_TEST", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas"])
        .arg(format!("-I{root}/kernels"))
        .arg(format!("{root}/tests/c/kernel_math.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{cxx} (a C++17 compiler, needed to check the kernel headers on the host): {e}"));
    assert!(out.status.success(), "compiling tests/c/kernel_math.cpp:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).arg(&cases).output().unwrap();
    assert!(run.status.success(), "kernel_math failed: {}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8(run.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), cases_list.len(), "one line per case:\n{text}");
    for (line, &(id, ty)) in lines.iter().zip(&cases_list) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{ty}: {line}");
        assert_eq!(f[0].parse::<u32>().unwrap(), id, "{line}");
        let (deq, dot): (f64, f64) = (f[2].parse().unwrap(), f[4].parse().unwrap());
        eprintln!("{ty} (case {id}): deq {deq:.2e}, integer dot {}", if dot < 0.0 { "-".to_string() } else { format!("{dot:.2e}") });
        assert!(deq <= 1e-6, "{ty}: kernel dequantization differs from the CPU's by {deq:.3e}");
        if int_types.contains(&ty) {
            assert!((0.0..=1e-4).contains(&dot), "{ty}: integer decode dot rel L2 {dot:.3e} > 1e-4");
        } else {
            assert!(dot < 0.0, "{ty}: no integer form expected");
        }
    }
}
