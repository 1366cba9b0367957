//! ROCmForge: LLM inference for GGUF models on AMD (HIP/ROCm), NVIDIA (CUDA)
//! and CPU, shipped as the C-ABI library `librocmforge.so`.
//!
//! Module map:
//! - [`gguf`]: memory-mapped, fully validated GGUF v2/v3 reader.
//! - [`quant`]: block layouts, dequantization and fused dot products for every
//!   common GGUF tensor type.
//! - [`tokenizer`]: byte-level BPE and SentencePiece tokenizers built from GGUF
//!   metadata.
//! - [`model`]: architecture tables, the reference and fast forward passes,
//!   sessions with their KV caches.
//! - [`kv`]: the paged KV cache's block accounting (block tables, sharing,
//!   prefix cache).
//! - [`engine`]: many sequences over one model, a batch of rows per step.
//! - [`sampler`]: logits → next token.
//! - [`backend`]: compute backends; CPU is always present, GPU backends are
//!   stub modules until their features are compiled in.
//! - [`ffi`]: the C ABI (`include/rocmforge.h`).

pub mod backend;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod generate;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod quant;
pub mod sampler;
pub mod tokenizer;
pub mod twin;

pub use error::{Error, Result};
