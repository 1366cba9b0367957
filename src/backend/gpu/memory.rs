//! The device memory manager: every allocation of a loaded model (weights,
//! KV caches, scratch) goes through one `MemPool` with an explicit byte
//! budget. Exceeding it, or the driver refusing, is `Error::OutOfMemory`
//! with the sizes involved, never an abort. Buffers free themselves on drop,
//! so the pool's `used()` returns to zero when a model and its sessions go.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::runtime::{DevPtr, GpuRuntime};
use crate::error::{Error, Result};

pub struct MemPool {
    pub rt: Arc<dyn GpuRuntime>,
    budget: usize,
    used: AtomicUsize,
}

const MIB: usize = 1 << 20;

impl MemPool {
    /// `budget` 0: the device's free memory now, less 5% (and at least
    /// 256 MiB) left for the driver, BLAS workspaces and other processes.
    pub fn new(rt: Arc<dyn GpuRuntime>, budget: usize) -> Result<Arc<MemPool>> {
        let budget = if budget == 0 {
            let (free, _) = rt.mem_info()?;
            free.saturating_sub((free / 20).max(256 * MIB))
        } else {
            budget
        };
        Ok(Arc::new(MemPool { rt, budget, used: AtomicUsize::new(0) }))
    }

    pub fn budget(&self) -> usize {
        self.budget
    }
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    pub fn alloc(self: &Arc<Self>, bytes: usize, what: &str) -> Result<Buffer> {
        let bytes = bytes.max(1).div_ceil(256) * 256;
        let prev = self.used.fetch_add(bytes, Ordering::SeqCst);
        if prev + bytes > self.budget {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::OutOfMemory(format!(
                "{what} needs {} MiB of GPU memory but only {} of the {} MiB budget are left (raise gpu_mem_budget, use a smaller n_ctx, or the CPU backend)",
                bytes.div_ceil(MIB),
                (self.budget - prev) / MIB,
                self.budget / MIB
            )));
        }
        match self.rt.alloc(bytes) {
            Ok(ptr) => Ok(Buffer { pool: self.clone(), ptr, bytes }),
            Err(e) => {
                self.used.fetch_sub(bytes, Ordering::SeqCst);
                Err(Error::OutOfMemory(format!("{what} ({} MiB): {e}", bytes.div_ceil(MIB))))
            }
        }
    }
}

/// One device allocation, freed on drop.
pub struct Buffer {
    pool: Arc<MemPool>,
    pub ptr: DevPtr,
    pub bytes: usize,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.rt.free(self.ptr);
        self.pool.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}
