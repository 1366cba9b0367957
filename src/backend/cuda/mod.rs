//! CUDA runtime adapter: a thin [`GpuRuntime`] over cudarc's driver, NVRTC
//! and cuBLAS layers, all loaded dynamically at run time. Building needs no
//! CUDA toolkit; a machine without the driver gets `BackendUnavailable`.
//! Kernels are compiled by NVRTC to a cubin for the device's exact
//! `sm_XY` (cached on disk by `gpu::kernels`).

use std::ffi::{c_void, CString};
use std::sync::{Arc, OnceLock};

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{result as cu, sys};
use cudarc::nvrtc::{result as rtc, sys as rtc_sys};
use parking_lot::Mutex;

use crate::backend::gpu::runtime::{Arg, DevPtr, DeviceInfo, Func, GemmF16, GpuRuntime, Graph, LaunchDims, Stream};
use crate::error::{Error, Result};

pub const COMPILED: bool = true;

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::BackendUnavailable(format!("CUDA {what}: {e}"))
}

/// `cuInit` once per process; the error (no driver, no device) is kept.
fn init() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: only probes for the library file.
        if !unsafe { sys::is_culib_present() } {
            return Err("CUDA: the NVIDIA driver library (libcuda.so) was not found; install the driver or use the CPU backend".into());
        }
        cu::init().map_err(|e| format!("CUDA: cuInit failed: {e}"))
    })
    .clone()
    .map_err(Error::BackendUnavailable)
}

/// Number of CUDA devices visible to this process.
pub fn device_count() -> Result<usize> {
    init()?;
    cu::device::get_count().map(|n| n as usize).map_err(|e| unavailable("device count", e))
}

struct Cuda {
    info: DeviceInfo,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    /// Kernels whose dynamic shared-memory limit was raised, and to what.
    shared_set: Mutex<std::collections::HashMap<u64, u32>>,
    /// The kernel units' modules, with a hash of each image (a unit loaded
    /// again is not loaded twice).
    modules: Mutex<Vec<(u64, sys::CUmodule)>>,
    blas: Option<Mutex<blas_sys::cublasHandle_t>>,
    /// Launch with programmatic dependent launch (sm_90 and later; off with
    /// FORGE_NO_PDL=1): a kernel's blocks start while the kernel before it
    /// finishes, and wait in GRID_START() (kernels/vendor.h) for its results.
    pdl: bool,
}

// SAFETY: the raw handles are used only after binding the context on the
// calling thread; the cuBLAS handle is behind a mutex.
unsafe impl Send for Cuda {}
unsafe impl Sync for Cuda {}

/// Open device `index`: its primary context, facts, and cuBLAS if present.
pub fn open(index: usize) -> Result<Arc<dyn GpuRuntime>> {
    init()?;
    let dev = cu::device::get(index as i32).map_err(|e| unavailable("device", e))?;
    // SAFETY: dev is a valid device ordinal from cuDeviceGet.
    let ctx = unsafe { cu::primary_ctx::retain(dev) }.map_err(|e| unavailable("context", e))?;
    unsafe { cu::ctx::set_current(ctx) }.map_err(|e| unavailable("context", e))?;
    let attr = |a| unsafe { cu::device::get_attribute(dev, a) }.map_err(|e| unavailable("device attribute", e));
    use sys::CUdevice_attribute::*;
    let (major, minor) = (attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?, attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?);
    let mut driver = 0;
    unsafe { sys::cuDriverGetVersion(&mut driver) };
    // cuBLAS is optional: without it large products use the tiled kernel.
    let blas = if unsafe { blas_sys::is_culib_present() } { blas::create_handle().ok().map(Mutex::new) } else { None };
    Ok(Arc::new(Cuda {
        info: DeviceInfo {
            backend: "cuda",
            index,
            name: cu::device::get_name(dev).unwrap_or_else(|_| "CUDA device".into()),
            arch: format!("sm_{major}{minor}"),
            driver_version: driver,
            multiprocessors: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            warp_size: attr(CU_DEVICE_ATTRIBUTE_WARP_SIZE)? as u32,
            max_shared: attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize,
        },
        dev,
        ctx,
        shared_set: Mutex::new(std::collections::HashMap::new()),
        modules: Mutex::new(Vec::new()),
        blas,
        pdl: major >= 9 && !crate::env_flag("FORGE_NO_PDL"),
    }))
}

impl Cuda {
    fn bind(&self) -> Result<()> {
        // SAFETY: ctx is the retained primary context of this device.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(|e| unavailable("context", e))
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        if self.bind().is_err() {
            return;
        }
        // SAFETY: every handle here is owned by this runtime and no longer used.
        unsafe {
            if let Some(h) = self.blas.take() {
                let _ = blas::destroy_handle(h.into_inner());
            }
            for (_, m) in self.modules.lock().drain(..) {
                let _ = cu::module::unload(m);
            }
            let _ = cu::primary_ctx::release(self.dev);
        }
    }
}

fn stream(s: Stream) -> sys::CUstream {
    s.0 as sys::CUstream
}

impl GpuRuntime for Cuda {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        cu::mem_get_info().map_err(|e| unavailable("memory info", e))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        // SAFETY: plain device allocation; freed by `free`.
        unsafe { cu::malloc_sync(bytes) }.map_err(|e| Error::OutOfMemory(format!("cuMemAlloc({bytes} bytes): {e}")))
    }
    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: p came from `alloc` and is freed once (Buffer's drop).
            let _ = unsafe { cu::free_sync(p) };
        }
    }

    fn host_alloc(&self, bytes: usize) -> Result<*mut u8> {
        self.bind()?;
        // SAFETY: plain page-locked allocation; freed by `host_free`.
        unsafe { cu::malloc_host(bytes, 0) }
            .map(|p| p as *mut u8)
            .map_err(|e| Error::OutOfMemory(format!("cuMemHostAlloc({bytes} bytes of page-locked host memory): {e}")))
    }
    fn host_free(&self, p: *mut u8) {
        if self.bind().is_ok() {
            // SAFETY: p came from `host_alloc` and is freed once (HostBuf's drop).
            let _ = unsafe { cu::free_host(p as *mut std::ffi::c_void) };
        }
    }

    fn stream_create(&self) -> Result<Stream> {
        self.bind()?;
        let s = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| unavailable("stream", e))?;
        Ok(Stream(s as u64))
    }
    fn stream_destroy(&self, s: Stream) {
        if self.bind().is_ok() {
            let _ = unsafe { cu::stream::destroy(stream(s)) };
        }
    }
    fn stream_sync(&self, s: Stream) -> Result<()> {
        self.bind()?;
        unsafe { cu::stream::synchronize(stream(s)) }.map_err(|e| unavailable("stream synchronize (an earlier kernel failed)", e))
    }
    fn htod(&self, s: Stream, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        unsafe { cu::memcpy_htod_async(dst, src, stream(s)) }.map_err(|e| unavailable("copy to device", e))
    }
    fn dtoh(&self, s: Stream, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.bind()?;
        unsafe { cu::memcpy_dtoh_async(dst, src, stream(s)) }.map_err(|e| unavailable("copy to host", e))
    }
    fn memset(&self, s: Stream, dst: DevPtr, byte: u8, n: usize) -> Result<()> {
        self.bind()?;
        unsafe { cu::memset_d8_async(dst, byte, n, stream(s)) }.map_err(|e| unavailable("memset", e))
    }
    fn dtod(&self, s: Stream, dst: DevPtr, src: DevPtr, n: usize) -> Result<()> {
        self.bind()?;
        unsafe { cu::memcpy_dtod_async(dst, src, n, stream(s)) }.map_err(|e| unavailable("device copy", e))
    }

    fn compile(&self, source: &str, name: &str) -> Result<Vec<u8>> {
        if !unsafe { rtc_sys::is_culib_present() } {
            return Err(Error::BackendUnavailable("NVRTC (libnvrtc.so) was not found: install the CUDA runtime libraries or put them on LD_LIBRARY_PATH".into()));
        }
        let src = CString::new(source).map_err(|_| Error::InvalidArgument("kernel source contains NUL".into()))?;
        let cname = CString::new(name).unwrap_or_default();
        let prog = rtc::create_program(&src, Some(&cname)).map_err(|e| unavailable("NVRTC", e))?;
        let mut opts = vec![format!("--gpu-architecture={}", self.info.arch), "-std=c++17".to_string(), "-lineinfo".to_string()];
        // extra NVRTC options, for experiments (part of the cache key)
        opts.extend(std::env::var("FORGE_NVRTC_OPTS").unwrap_or_default().split_whitespace().map(String::from));
        // SAFETY: prog is a live program; destroyed below on every path.
        let r = unsafe { rtc::compile_program(prog, &opts) };
        let out = match r {
            Ok(()) => unsafe {
                let mut n = 0usize;
                rtc_sys::nvrtcGetCUBINSize(prog, &mut n).result().map_err(|e| unavailable("NVRTC cubin", e))?;
                let mut img = vec![0u8; n];
                rtc_sys::nvrtcGetCUBIN(prog, img.as_mut_ptr() as *mut _).result().map_err(|e| unavailable("NVRTC cubin", e))?;
                Ok(img)
            },
            Err(e) => {
                let log = unsafe { rtc::get_program_log(prog) }.map(|l| l.iter().map(|&c| c as u8 as char).collect::<String>()).unwrap_or_default();
                Err(Error::BackendUnavailable(format!("NVRTC could not compile the kernels for {} ({e}):\n{}", self.info.arch, log.trim_end_matches('\0'))))
            }
        };
        let _ = unsafe { rtc::destroy_program(prog) };
        out
    }
    fn load_module(&self, image: &[u8]) -> Result<()> {
        self.bind()?;
        let h = crate::backend::gpu::runtime::image_hash(image);
        let mut ms = self.modules.lock();
        if ms.iter().any(|(k, _)| *k == h) {
            return Ok(());
        }
        // SAFETY: image is a cubin for this device (NVRTC output or our cache).
        let m = unsafe { cu::module::load_data(image.as_ptr() as *const c_void) }.map_err(|e| unavailable("module load", e))?;
        ms.push((h, m));
        Ok(())
    }
    fn function(&self, name: &str) -> Result<Func> {
        self.bind()?;
        let ms = self.modules.lock();
        if ms.is_empty() {
            return Err(Error::BackendUnavailable("CUDA kernels are not loaded".into()));
        }
        let c = CString::new(name).unwrap_or_default();
        let mut last = None;
        for &(_, m) in ms.iter() {
            match unsafe { cu::module::get_function(m, c.clone()) } {
                Ok(f) => return Ok(Func(f as u64)),
                Err(e) => last = Some(e),
            }
        }
        Err(unavailable(&format!("kernel {name}"), last.expect("at least one module")))
    }
    fn launch(&self, s: Stream, f: Func, d: LaunchDims, args: &[Arg]) -> Result<()> {
        self.bind()?;
        if d.shared > 48 * 1024 {
            let mut set = self.shared_set.lock();
            if set.get(&f.0).map_or(true, |&v| v < d.shared) {
                // SAFETY: f is a live function of the loaded module.
                unsafe { cu::function::set_function_attribute(f.0 as sys::CUfunction, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, d.shared as i32) }
                    .map_err(|e| unavailable("shared memory limit", e))?;
                set.insert(f.0, d.shared);
            }
        }
        let mut store: Vec<[u8; 8]> = args.iter().map(Arg::bytes).collect();
        let mut params: Vec<*mut c_void> = store.iter_mut().map(|b| b.as_mut_ptr() as *mut c_void).collect();
        // SAFETY: params match the kernel's signature (the launchers in
        // gpu::ops are its only callers); the storage outlives the call,
        // which copies the values.
        if !self.pdl {
            return unsafe { cu::launch_kernel(f.0 as sys::CUfunction, d.grid, (d.block, 1, 1), d.shared, stream(s), &mut params) }.map_err(|e| unavailable("launch", e));
        }
        // Every kernel starts with GRID_START(), so each may be launched as a
        // programmatic dependent of the one before it.
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: d.grid.0,
            gridDimY: d.grid.1,
            gridDimZ: d.grid.2,
            blockDimX: d.block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: d.shared,
            hStream: stream(s),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as above; cfg and attr outlive the call.
        unsafe { sys::cuLaunchKernelEx(&cfg, f.0 as sys::CUfunction, params.as_mut_ptr(), std::ptr::null_mut()) }.result().map_err(|e| unavailable("launch", e))
    }

    fn graph_begin(&self, s: Stream) -> Result<()> {
        self.bind()?;
        unsafe { cu::stream::begin_capture(stream(s), sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }.map_err(|e| unavailable("graph capture", e))
    }
    fn graph_end(&self, s: Stream) -> Result<Graph> {
        self.bind()?;
        let g = unsafe { cu::stream::end_capture(stream(s)) }.map_err(|e| unavailable("graph capture", e))?;
        let exec = unsafe { cu::graph::instantiate(g, sys::CUgraphInstantiate_flags(0)) };
        let _ = unsafe { cu::graph::destroy(g) };
        Ok(Graph(exec.map_err(|e| unavailable("graph instantiate", e))? as u64))
    }
    fn graph_launch(&self, s: Stream, g: Graph) -> Result<()> {
        self.bind()?;
        unsafe { cu::graph::launch(g.0 as sys::CUgraphExec, stream(s)) }.map_err(|e| unavailable("graph launch", e))
    }
    fn graph_destroy(&self, g: Graph) {
        if self.bind().is_ok() {
            let _ = unsafe { cu::graph::exec_destroy(g.0 as sys::CUgraphExec) };
        }
    }

    fn has_blas(&self) -> bool {
        self.blas.is_some()
    }
    fn gemm_f16(&self, s: Stream, g: &GemmF16) -> Result<()> {
        self.bind()?;
        let h = self.blas.as_ref().ok_or_else(|| Error::BackendUnavailable("cuBLAS is not loaded".into()))?.lock();
        let (alpha, beta) = (g.alpha, g.beta);
        use blas_sys::{cublasComputeType_t::CUBLAS_COMPUTE_32F, cublasOperation_t::*, cudaDataType::*};
        // SAFETY: pointers are live device buffers sized by the caller (ops::matmul).
        unsafe {
            blas::set_stream(*h, stream(s) as _).map_err(|e| unavailable("cuBLAS", e))?;
            blas::gemm_ex(
                *h, CUBLAS_OP_T, CUBLAS_OP_N, g.m as i32, g.n as i32, g.k as i32,
                &alpha as *const f32 as *const c_void, g.a as *const c_void, CUDA_R_16F, g.k as i32,
                g.b as *const c_void, CUDA_R_16F, g.k as i32,
                &beta as *const f32 as *const c_void, g.c as *mut c_void, CUDA_R_32F, g.ldc as i32,
                CUBLAS_COMPUTE_32F, blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(|e| unavailable("cuBLAS GemmEx", e))
    }
}
