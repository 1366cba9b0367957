//! The narrow interface every GPU runtime adapter implements (CUDA through
//! cudarc, HIP through hip-sys), in the spirit of ggml's backend split:
//! device facts, memory, streams, run-time compiled modules, kernel launch,
//! graphs, and an optional vendor GEMM. Everything above this trait (kernel
//! cache, memory budget, ops, the forward pass) is written once.

use crate::error::Result;

/// A device address.
pub type DevPtr = u64;

/// Opaque stream handle (the adapter's `CUstream` / `hipStream_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream(pub u64);

/// Opaque kernel handle from the loaded module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Func(pub u64);

/// Opaque instantiated graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graph(pub u64);

/// One kernel argument, passed by value.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(DevPtr),
    I32(i32),
    F32(f32),
    U64(u64),
}

impl Arg {
    /// The argument's bytes, as the kernel's parameter expects them.
    pub fn bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        match *self {
            Arg::Ptr(p) | Arg::U64(p) => b.copy_from_slice(&p.to_ne_bytes()),
            Arg::I32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            Arg::F32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
        }
        b
    }
}

/// Launch geometry.
#[derive(Debug, Clone, Copy)]
pub struct LaunchDims {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared: u32,
}

/// `C (m × n, column-major, ldc) = alpha A·B (+ C when beta = 1)` with A given as
/// `Aᵀ` (k × m column-major, i.e. m rows of k f16), B (k × n column-major,
/// i.e. n rows of k f16), f32 accumulation and output.
#[derive(Debug, Clone, Copy)]
pub struct GemmF16 {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: DevPtr,
    pub b: DevPtr,
    pub c: DevPtr,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// What a runtime reports about its device, fixed when it is opened.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// "cuda" or "hip".
    pub backend: &'static str,
    pub index: usize,
    pub name: String,
    /// The compile target: "sm_90", "gfx90a", ...
    pub arch: String,
    pub driver_version: i32,
    pub multiprocessors: u32,
    /// Threads per warp (wavefront): 32, or 64 on CDNA.
    pub warp_size: u32,
    /// Most dynamic shared memory one block may use (the adapter raises a
    /// kernel's limit past the default 48 KiB when a launch asks for more).
    pub max_shared: usize,
}

/// A hash of a compiled kernel image, so a runtime loads each image once.
pub fn image_hash(image: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut h);
    h.finish()
}

pub trait GpuRuntime: Send + Sync {
    fn info(&self) -> &DeviceInfo;
    /// (free, total) device memory in bytes.
    fn mem_info(&self) -> Result<(usize, usize)>;

    /// Device memory; failure is `Error::OutOfMemory` with the driver's word.
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    fn free(&self, p: DevPtr);
    /// Page-locked host memory (copies to and from it are DMA transfers at
    /// the link's speed; pageable memory goes through the driver's staging
    /// copy); failure is `Error::OutOfMemory`. Freed with `host_free`.
    fn host_alloc(&self, bytes: usize) -> Result<*mut u8>;
    fn host_free(&self, p: *mut u8);

    fn stream_create(&self) -> Result<Stream>;
    fn stream_destroy(&self, s: Stream);
    /// Wait for this stream only (never the whole device).
    fn stream_sync(&self, s: Stream) -> Result<()>;
    /// Copies ordered on `s`; the host slice must outlive the copy (callers
    /// synchronize `s` before releasing it).
    fn htod(&self, s: Stream, dst: DevPtr, src: &[u8]) -> Result<()>;
    fn dtoh(&self, s: Stream, dst: &mut [u8], src: DevPtr) -> Result<()>;
    fn memset(&self, s: Stream, dst: DevPtr, byte: u8, n: usize) -> Result<()>;
    /// Device-to-device copy on `s`.
    fn dtod(&self, s: Stream, dst: DevPtr, src: DevPtr, n: usize) -> Result<()>;

    /// Compile one self-contained translation unit for this device; returns
    /// a loadable image (cubin / code object). `Err` carries the compiler log.
    fn compile(&self, source: &str, name: &str) -> Result<Vec<u8>>;
    /// Load a compiled image as this runtime's kernel module (once).
    fn load_module(&self, image: &[u8]) -> Result<()>;
    fn function(&self, name: &str) -> Result<Func>;
    fn launch(&self, s: Stream, f: Func, dims: LaunchDims, args: &[Arg]) -> Result<()>;

    fn graph_begin(&self, s: Stream) -> Result<()>;
    fn graph_end(&self, s: Stream) -> Result<Graph>;
    fn graph_launch(&self, s: Stream, g: Graph) -> Result<()>;
    fn graph_destroy(&self, g: Graph);

    /// Whether a vendor BLAS (cuBLAS / hipBLAS) is loaded.
    fn has_blas(&self) -> bool;
    /// Run [`GemmF16`] on `s` through the vendor BLAS.
    fn gemm_f16(&self, s: Stream, g: &GemmF16) -> Result<()>;
}
