//! Stub for the CUDA backend, compiled when the `cuda` feature is off.
//! Same API as the real module; every call answers `Error::NotCompiled`.

use crate::error::{Error, Result};

pub const COMPILED: bool = false;

/// Number of CUDA devices visible to this process.
pub fn device_count() -> Result<usize> {
    Err(Error::NotCompiled { feature: "cuda" })
}
