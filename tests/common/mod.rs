//! Shared test helpers. Model-backed tests never skip: a missing model is a
//! failure that says how to fetch it.
#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN2: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
pub const ALL_MODELS: [&str; 3] = [SMOLLM2, QWEN2, GEMMA3];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
