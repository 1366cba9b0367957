//! The CPU backend: quantized matmul over a persistent thread pool, with
//! 8-bit activation dot products chosen at run time for the CPU in hand
//! (`simd::Family`: AVX-512 VNNI over weights packed into tiles at load,
//! AVX-VNNI, AVX2, or portable scalar code).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod x86_a8;
#[cfg(target_arch = "x86_64")]
mod x86_packed;
pub mod forward;
pub mod matmul;
pub mod packed;
pub mod simd;

pub use matmul::{matmul, DotKernel, FloatKernel};
pub use simd::{avx2_available, kernel_name};

/// The CPU backend: the weights stay in the mapping (packed copies of some
/// for AVX-512 VNNI); the model's thread pool runs the matmuls.
pub struct CpuBackend {
    pub n_threads: usize,
}

impl crate::backend::Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.n_threads)
    }
    fn new_exec(&self, model: &std::sync::Arc<crate::model::Model>, n_ctx: usize, n_blocks: usize) -> crate::Result<Box<dyn crate::backend::Exec>> {
        Ok(Box::new(forward::CpuExec::new(model.clone(), n_ctx, n_blocks)?))
    }
    fn is_gpu(&self) -> bool {
        false
    }
}
