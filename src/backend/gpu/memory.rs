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

/// Page-locked host memory for the copies a step makes (its token ids in,
/// its logits out), freed on drop. Host memory: not counted in the pool's
/// device budget.
pub struct HostBuf {
    rt: Arc<dyn GpuRuntime>,
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: the buffer is owned by one HostBuf; reads and writes go through
// &self / &mut self like a Vec's.
unsafe impl Send for HostBuf {}
unsafe impl Sync for HostBuf {}

impl HostBuf {
    pub fn new(rt: &Arc<dyn GpuRuntime>, bytes: usize) -> Result<HostBuf> {
        let bytes = bytes.max(1);
        let ptr = rt.host_alloc(bytes)?;
        Ok(HostBuf { rt: rt.clone(), ptr, bytes })
    }
    pub fn len(&self) -> usize {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of `bytes` bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }
    /// The first `n` f32s (page-aligned memory, so f32-aligned).
    pub fn f32s(&self, n: usize) -> &[f32] {
        assert!(n * 4 <= self.bytes && self.ptr as usize % 4 == 0);
        // SAFETY: in bounds and aligned (checked); every bit pattern is an f32.
        unsafe { std::slice::from_raw_parts(self.ptr as *const f32, n) }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        self.rt.host_free(self.ptr);
    }
}
