//! ROCmForge: LLM inference for GGUF models on AMD (HIP/ROCm), NVIDIA (CUDA)
//! and CPU, shipped as the C-ABI library `librocmforge.so`.
//!
//! Module map:
//! - [`gguf`]: memory-mapped, fully validated GGUF v2/v3 reader.
//! - [`quant`]: block layouts, dequantization and fused dot products for every
//!   common GGUF tensor type.
//! - [`tokenizer`]: byte-level BPE and SentencePiece tokenizers built from GGUF
//!   metadata.
//! - [`model`]: a model's description (config, architecture tables,
//!   weights in the mapping, the f32 reference pass) and the loaded
//!   [`Model`] with its backend.
//! - [`kv`]: the paged KV cache's block accounting (block tables, sharing,
//!   prefix cache).
//! - [`engine`]: many sequences over one model, a batch of rows per step;
//!   [`Session`] is an engine with one sequence.
//! - [`sampler`]: logits → next token.
//! - [`backend`]: the backend interface ([`backend::Backend`],
//!   [`backend::Exec`]) and the backends; CPU is always present, GPU
//!   backends are stub modules until their features are compiled in.
//! - [`ffi`]: the C ABI (`include/rocmforge.h`).

pub mod backend;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod generate;
pub mod grammar;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod quant;
pub mod sampler;
pub mod shard;
pub mod tokenizer;
/// Shape twins (real metadata, random weights): tooling, not part of the
/// shipped library (feature `tools`; tests and examples turn it on).
#[cfg(feature = "tools")]
pub mod twin;

pub use backend::{Logits, Output};
pub use engine::{Engine, EngineOptions, Session};
pub use error::{Error, Result};
pub use model::{BackendChoice, LoadOptions, Model, Pooling};

/// Define `pub fn $name` whose body is compiled twice: for baseline x86-64
/// (SSE2) and with AVX2 + FMA, the build run when the CPU has them (checked
/// once; the check is a cached atomic load). For the CPU backend's plain
/// loops (norms, activations, attention, activation quantization): the
/// compiler vectorizes them 8 lanes wide instead of 4.
macro_rules! avx2_multiversion {
    ($(#[$m:meta])* pub fn $name:ident $(<$($g:ident: $b:path),*>)? ($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name $(<$($g: $b),*>)? ($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body $(<$($g: $b),*>)? ($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2 $(<$($g: $b),*>)? ($($a: $t),*) $(-> $r)? {
                    body($($a),*)
                }
                if crate::backend::cpu::simd::avx2_available() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use avx2_multiversion;

/// A boolean switch from the environment (the `FORGE_*` table in
/// docs/ARCHITECTURE.md): on when set to anything but "", "0", "false" or
/// "off". One rule for every switch: `FORGE_NO_GRAPH=0` leaves graphs on.
pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !matches!(v.to_str(), Some("" | "0" | "false" | "off")))
}
