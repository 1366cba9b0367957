//! GGUF v2/v3 reader: memory-mapped, validated with checked arithmetic.
//!
//! Layout (all little-endian): magic `GGUF`, version u32, tensor_count u64,
//! kv_count u64, kv pairs (string key, u32 value type, value), tensor infos
//! (string name, u32 n_dims, u64 dims[n_dims], u32 type, u64 offset), padding to
//! `general.alignment` (default 32), then tensor data.

mod error;
mod file;
mod reader;
mod value;
/// Writing GGUF files: test and twin tooling, not part of the shipped
/// library (feature `tools`; tests and examples turn it on).
#[cfg(feature = "tools")]
pub mod writer;

pub use error::{GgufError, GgufErrorKind};
pub use file::GgufFile;
pub use reader::{parse_header, GgufHeader, TensorInfo, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH};
pub use value::{Array, Value, ValueType};
