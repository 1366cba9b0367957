//! Compute backends. CPU is always compiled in. Each GPU backend is a module
//! with one API; when its feature is off, a stub module with the same API
//! answers `Error::NotCompiled`, so calling code needs no `#[cfg]` of its own
//! (the candle pattern).

pub mod cpu;
pub mod gpu;

#[cfg(feature = "cuda")]
#[path = "cuda/mod.rs"]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;

#[cfg(feature = "rocm")]
#[path = "hip/mod.rs"]
pub mod hip;
#[cfg(not(feature = "rocm"))]
#[path = "hip_stub.rs"]
pub mod hip;

