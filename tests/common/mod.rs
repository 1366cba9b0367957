//! Shared test helpers. Model-backed tests never skip: a missing model is a
//! failure that says how to fetch it.
#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN2: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// `make models-extra` only.
pub const QWEN2_1_5B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
pub const ALL_MODELS: [&str; 3] = [SMOLLM2, QWEN2, GEMMA3];

/// The repository: where the test was built, or `FORGE_ROOT` (a test
/// binary carried to another machine, e.g. the GPU one, with the tree).
pub fn root() -> PathBuf {
    std::env::var_os("FORGE_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// Path of a real model; panics (fails the test) when it is missing.
pub fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("FORGE_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let p = dir.join(name);
    assert!(p.is_file(), "model {} not found: run `make models` first (tests never skip a missing model)", p.display());
    p
}

pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Every type with gguf-py dequantization fixtures (tests/fixtures/quant/),
/// by fixture file name.
pub const FIXTURE_TYPES: [(&str, rocmforge::quant::GgmlType); 15] = {
    use rocmforge::quant::GgmlType::*;
    [
        ("F16", F16),
        ("BF16", BF16),
        ("Q4_0", Q4_0),
        ("Q4_1", Q4_1),
        ("Q5_0", Q5_0),
        ("Q5_1", Q5_1),
        ("Q8_0", Q8_0),
        ("MXFP4", Mxfp4),
        ("Q2_K", Q2K),
        ("Q3_K", Q3K),
        ("Q4_K", Q4K),
        ("Q5_K", Q5K),
        ("Q6_K", Q6K),
        ("IQ4_NL", Iq4Nl),
        ("IQ4_XS", Iq4Xs),
    ]
};

/// `n` pseudo-random activations in [-2, 2) from a seed (xorshift32).
pub fn activations(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * 4.0
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖, in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// `forge_last_error()` as a String (the C API's thread-local message).
pub fn last_error() -> String {
    unsafe { std::ffi::CStr::from_ptr(rocmforge::ffi::forge_last_error()) }.to_string_lossy().into_owned()
}

/// xorshift64*: a fixed-seed generator, so every run tests the same cases.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub mod api_fuzz;
pub mod load_fuzz;
pub mod tiny;

/// `activations` with an outlier (×40) in every third block of 32, as norm
/// weights and massive activations put them in real models: those blocks
/// get 8-bit residuals (`quant::quantize_a8_split_row`), the others not.
pub fn activations_with_outliers(n: usize, seed: u32) -> Vec<f32> {
    let mut x = activations(n, seed);
    for b in (0..n / 32).step_by(3) {
        x[b * 32 + (b * 7 + seed as usize) % 32] *= 40.0;
    }
    x
}
