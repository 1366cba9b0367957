//! The CPU backend: quantized matmul over a persistent thread pool, with
//! 8-bit activation dot products (AVX2/FMA when the CPU has them, detected at
//! run time; portable scalar code otherwise).

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod forward;
pub mod matmul;
pub mod simd;

pub use matmul::{matmul, DotKernel, FloatKernel};
pub use simd::{avx2_available, kernel_name};
