//! Stub for the HIP backend, compiled when the `rocm` feature is off.
//! Same API as the real module; every call answers `Error::NotCompiled`.

use crate::error::{Error, Result};

pub const COMPILED: bool = false;

/// Number of HIP devices visible to this process.
pub fn device_count() -> Result<usize> {
    Err(Error::NotCompiled { feature: "rocm" })
}

/// Open a device: never, in this build.
pub fn open(_index: usize) -> Result<std::sync::Arc<dyn crate::backend::gpu::runtime::GpuRuntime>> {
    Err(Error::NotCompiled { feature: "rocm" })
}
