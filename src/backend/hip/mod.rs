//! HIP runtime adapter (AMD): a thin [`GpuRuntime`] over hip-sys, which
//! links `libamdhip64`. hipRTC (a separate `libhiprtc.so` from ROCm 5.3 on,
//! inside `libamdhip64` before) and hipBLAS (not packaged in Debian 12) are
//! loaded at run time with `dlopen`; without hipBLAS, large products use
//! the project's tiled kernel. Kernels are compiled by hipRTC for the
//! device's own `gcnArchName` (gfx90a, gfx1100, gfx942...).
//!
//! Status: compiled and linked in CI against Debian's ROCm 5.2 packages,
//! where `hipGetDeviceCount` reports no device. Nothing here has run on AMD
//! hardware yet (see README, "AMD status").

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Arc;

use hip_sys::hiprt as hip;
use parking_lot::Mutex;

use crate::backend::gpu::runtime::{Arg, DevPtr, DeviceInfo, Func, GemmF16, GpuRuntime, Graph, LaunchDims, Stream};
use crate::error::{Error, Result};

pub const COMPILED: bool = true;

fn check(what: &str, e: hip::hipError_t) -> Result<()> {
    if e == hip::hipError_t::hipSuccess {
        return Ok(());
    }
    // SAFETY: hipGetErrorString returns a static string.
    let msg = unsafe { CStr::from_ptr(hip::hipGetErrorString(e)) }.to_string_lossy().into_owned();
    let hint = if e == hip::hipError_t::hipErrorNoDevice { ": no AMD GPU is visible to this process; use the CPU backend" } else { "" };
    let text = format!("HIP {what}: {msg} ({e:?}){hint}");
    Err(if e == hip::hipError_t::hipErrorOutOfMemory { Error::OutOfMemory(text) } else { Error::BackendUnavailable(text) })
}

/// Number of HIP devices visible to this process (`hipErrorNoDevice` and
/// friends become `BackendUnavailable` with HIP's message).
pub fn device_count() -> Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: plain out-parameter call.
    check("device count", unsafe { hip::hipGetDeviceCount(&mut n) })?;
    Ok(n as usize)
}

/// A library opened with dlopen, for optional run-time pieces.
struct Lib(*mut c_void);

impl Lib {
    fn open(names: &[&str]) -> Option<Lib> {
        names.iter().find_map(|n| {
            let c = CString::new(*n).ok()?;
            // SAFETY: dlopen with a valid C string; the handle is never closed.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            (!h.is_null()).then_some(Lib(h))
        })
    }
    /// # Safety
    /// `T` must be the symbol's true function-pointer type.
    unsafe fn sym<T: Copy>(&self, name: &str) -> Option<T> {
        let c = CString::new(name).ok()?;
        let p = libc::dlsym(self.0, c.as_ptr());
        (!p.is_null()).then(|| std::mem::transmute_copy(&p))
    }
}

type Prog = *mut c_void;
struct Rtc {
    create: unsafe extern "C" fn(*mut Prog, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    code_size: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    code: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut Prog) -> c_int,
}

fn load_rtc() -> Option<Rtc> {
    let lib = Lib::open(&["libhiprtc.so", "libhiprtc.so.7", "libhiprtc.so.6", "libhiprtc.so.5", "libamdhip64.so", "libamdhip64.so.5"])?;
    // SAFETY: signatures as in hiprtc.h.
    unsafe {
        Some(Rtc {
            create: lib.sym("hiprtcCreateProgram")?,
            compile: lib.sym("hiprtcCompileProgram")?,
            log_size: lib.sym("hiprtcGetProgramLogSize")?,
            log: lib.sym("hiprtcGetProgramLog")?,
            code_size: lib.sym("hiprtcGetCodeSize")?,
            code: lib.sym("hiprtcGetCode")?,
            destroy: lib.sym("hiprtcDestroyProgram")?,
        })
    }
}

type BlasHandle = *mut c_void;
type GemmExV1 = unsafe extern "C" fn(BlasHandle, c_int, c_int, c_int, c_int, c_int, *const c_void, *const c_void, c_int, c_int, *const c_void, c_int, c_int, *const c_void, *mut c_void, c_int, c_int, c_int, c_int) -> c_int;
struct Blas {
    handle: BlasHandle,
    destroy: unsafe extern "C" fn(BlasHandle) -> c_int,
    set_stream: unsafe extern "C" fn(BlasHandle, *mut c_void) -> c_int,
    gemm: GemmExV1,
    /// `hipblasGemmEx_v2` (hipDataType / hipblasComputeType_t enums) rather
    /// than the ROCm 5 signature (hipblasDatatype_t everywhere).
    v2: bool,
}

fn load_blas() -> Option<Blas> {
    let lib = Lib::open(&["libhipblas.so", "libhipblas.so.3", "libhipblas.so.2", "libhipblas.so.1", "libhipblas.so.0"])?;
    // SAFETY: signatures as in hipblas.h (v1 and v2 take the same C types).
    unsafe {
        let create: unsafe extern "C" fn(*mut BlasHandle) -> c_int = lib.sym("hipblasCreate")?;
        let (gemm, v2) = match lib.sym::<GemmExV1>("hipblasGemmEx_v2") {
            Some(g) => (g, true),
            None => (lib.sym::<GemmExV1>("hipblasGemmEx")?, false),
        };
        let mut handle = std::ptr::null_mut();
        if create(&mut handle) != 0 {
            return None;
        }
        Some(Blas { handle, destroy: lib.sym("hipblasDestroy")?, set_stream: lib.sym("hipblasSetStream")?, gemm, v2 })
    }
}

struct Hip {
    info: DeviceInfo,
    /// The kernel units' modules, with a hash of each image (a unit loaded
    /// again is not loaded twice).
    modules: Mutex<Vec<(u64, hip::hipModule_t)>>,
    rtc: Option<Rtc>,
    blas: Option<Mutex<Blas>>,
}

// SAFETY: handles are used after hipSetDevice on the calling thread; hipBLAS is behind a mutex.
unsafe impl Send for Hip {}
unsafe impl Sync for Hip {}

/// Open device `index`.
pub fn open(index: usize) -> Result<Arc<dyn GpuRuntime>> {
    check("set device", unsafe { hip::hipSetDevice(index as c_int) })?;
    let mut prop: hip::hipDeviceProp_t = unsafe { std::mem::zeroed() };
    check("device properties", unsafe { hip::hipGetDeviceProperties(&mut prop, index as c_int) })?;
    let cstr = |b: &[c_char]| unsafe { CStr::from_ptr(b.as_ptr()) }.to_string_lossy().into_owned();
    let mut driver = 0;
    unsafe { hip::hipDriverGetVersion(&mut driver) };
    Ok(Arc::new(Hip {
        info: DeviceInfo {
            backend: "hip",
            index,
            name: cstr(&prop.name),
            // "gfx90a:sramecc+:xnack-" -> "gfx90a"
            arch: cstr(&prop.gcnArchName).split(':').next().unwrap_or("").to_string(),
            driver_version: driver,
            multiprocessors: prop.multiProcessorCount as u32,
            warp_size: prop.warpSize as u32,
            max_shared: prop.sharedMemPerBlock,
        },
        modules: Mutex::new(Vec::new()),
        rtc: load_rtc(),
        blas: load_blas().map(Mutex::new),
    }))
}

impl Hip {
    fn bind(&self) -> Result<()> {
        check("set device", unsafe { hip::hipSetDevice(self.info.index as c_int) })
    }
}

impl Drop for Hip {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            if let Some(b) = self.blas.take() {
                let b = b.into_inner();
                // SAFETY: the handle is owned here and no longer used.
                unsafe { (b.destroy)(b.handle) };
            }
            for (_, m) in self.modules.lock().drain(..) {
                // SAFETY: the module is owned here and no kernel of it is in flight.
                unsafe { hip::hipModuleUnload(m) };
            }
        }
    }
}

fn stream(s: Stream) -> hip::hipStream_t {
    s.0 as hip::hipStream_t
}

impl GpuRuntime for Hip {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        let (mut f, mut t) = (0usize, 0usize);
        check("memory info", unsafe { hip::hipMemGetInfo(&mut f, &mut t) })?;
        Ok((f, t))
    }
    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        let mut p = std::ptr::null_mut();
        check(&format!("hipMalloc({bytes} bytes)"), unsafe { hip::hipMalloc(&mut p, bytes) })?;
        Ok(p as DevPtr)
    }
    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            unsafe { hip::hipFree(p as *mut c_void) };
        }
    }
    fn host_alloc(&self, bytes: usize) -> Result<*mut u8> {
        self.bind()?;
        let mut p = std::ptr::null_mut();
        check(&format!("hipHostMalloc({bytes} bytes of page-locked host memory)"), unsafe { hip::hipHostMalloc(&mut p, bytes, 0) })?;
        Ok(p as *mut u8)
    }
    fn host_free(&self, p: *mut u8) {
        if self.bind().is_ok() {
            unsafe { hip::hipHostFree(p as *mut c_void) };
        }
    }

    fn stream_create(&self) -> Result<Stream> {
        self.bind()?;
        let mut s = std::ptr::null_mut();
        check("stream", unsafe { hip::hipStreamCreateWithFlags(&mut s, hip::hipStreamNonBlocking) })?;
        Ok(Stream(s as u64))
    }
    fn stream_destroy(&self, s: Stream) {
        if self.bind().is_ok() {
            unsafe { hip::hipStreamDestroy(stream(s)) };
        }
    }
    fn stream_sync(&self, s: Stream) -> Result<()> {
        self.bind()?;
        check("stream synchronize", unsafe { hip::hipStreamSynchronize(stream(s)) })
    }
    fn htod(&self, s: Stream, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        check("copy to device", unsafe { hip::hipMemcpyHtoDAsync(dst as _, src.as_ptr() as *mut c_void, src.len(), stream(s)) })
    }
    fn dtoh(&self, s: Stream, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.bind()?;
        check("copy to host", unsafe { hip::hipMemcpyDtoHAsync(dst.as_mut_ptr() as *mut c_void, src as _, dst.len(), stream(s)) })
    }
    fn memset(&self, s: Stream, dst: DevPtr, byte: u8, n: usize) -> Result<()> {
        self.bind()?;
        check("memset", unsafe { hip::hipMemsetD8Async(dst as _, byte, n, stream(s)) })
    }
    fn dtod(&self, s: Stream, dst: DevPtr, src: DevPtr, n: usize) -> Result<()> {
        self.bind()?;
        check("device copy", unsafe { hip::hipMemcpyDtoDAsync(dst as _, src as _, n, stream(s)) })
    }

    fn compile(&self, source: &str, name: &str) -> Result<Vec<u8>> {
        let rtc = self.rtc.as_ref().ok_or_else(|| Error::BackendUnavailable("hipRTC (libhiprtc.so) was not found: install ROCm's hiprtc".into()))?;
        let src = CString::new(source).map_err(|_| Error::InvalidArgument("kernel source contains NUL".into()))?;
        let cname = CString::new(name).unwrap_or_default();
        let opts = [format!("--offload-arch={}", self.info.arch), "-O3".into(), "-std=c++17".into()];
        let copts: Vec<CString> = opts.iter().map(|o| CString::new(o.as_str()).unwrap_or_default()).collect();
        let ptrs: Vec<*const c_char> = copts.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: hiprtc calls with live C strings; the program is destroyed on every path.
        unsafe {
            let mut prog: Prog = std::ptr::null_mut();
            if (rtc.create)(&mut prog, src.as_ptr(), cname.as_ptr(), 0, std::ptr::null(), std::ptr::null()) != 0 {
                return Err(Error::BackendUnavailable("hiprtcCreateProgram failed".into()));
            }
            let rc = (rtc.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr());
            let out = if rc == 0 {
                let mut n = 0usize;
                (rtc.code_size)(prog, &mut n);
                let mut img = vec![0u8; n];
                (rtc.code)(prog, img.as_mut_ptr() as *mut c_char);
                Ok(img)
            } else {
                let mut n = 0usize;
                (rtc.log_size)(prog, &mut n);
                let mut log = vec![0u8; n];
                (rtc.log)(prog, log.as_mut_ptr() as *mut c_char);
                Err(Error::BackendUnavailable(format!("hipRTC could not compile the kernels for {}:\n{}", self.info.arch, String::from_utf8_lossy(&log))))
            };
            (rtc.destroy)(&mut prog);
            out
        }
    }
    fn load_module(&self, image: &[u8]) -> Result<()> {
        self.bind()?;
        let h = crate::backend::gpu::runtime::image_hash(image);
        let mut ms = self.modules.lock();
        if !ms.iter().any(|(k, _)| *k == h) {
            let mut module = std::ptr::null_mut();
            check("module load", unsafe { hip::hipModuleLoadData(&mut module, image.as_ptr() as *const c_void) })?;
            ms.push((h, module));
        }
        Ok(())
    }
    fn function(&self, name: &str) -> Result<Func> {
        self.bind()?;
        let ms = self.modules.lock();
        if ms.is_empty() {
            return Err(Error::BackendUnavailable("HIP kernels are not loaded".into()));
        }
        let c = CString::new(name).unwrap_or_default();
        let mut last = Ok(());
        for &(_, m) in ms.iter() {
            let mut f = std::ptr::null_mut();
            last = check(&format!("kernel {name}"), unsafe { hip::hipModuleGetFunction(&mut f, m, c.as_ptr()) });
            if last.is_ok() {
                return Ok(Func(f as u64));
            }
        }
        last.map(|_| Func(0))
    }
    fn launch(&self, s: Stream, f: Func, d: LaunchDims, args: &[Arg]) -> Result<()> {
        self.bind()?;
        let mut store: Vec<[u8; 8]> = args.iter().map(Arg::bytes).collect();
        let mut params: Vec<*mut c_void> = store.iter_mut().map(|b| b.as_mut_ptr() as *mut c_void).collect();
        // SAFETY: params match the kernel signature (gpu::ops); copied by the call.
        check("launch", unsafe {
            hip::hipModuleLaunchKernel(f.0 as _, d.grid.0, d.grid.1, d.grid.2, d.block, 1, 1, d.shared, stream(s), params.as_mut_ptr(), std::ptr::null_mut())
        })
    }
    fn graph_begin(&self, s: Stream) -> Result<()> {
        self.bind()?;
        check("graph capture", unsafe { hip::hipStreamBeginCapture(stream(s), hip::hipStreamCaptureMode::hipStreamCaptureModeThreadLocal) })
    }
    fn graph_end(&self, s: Stream) -> Result<Graph> {
        self.bind()?;
        let mut g = std::ptr::null_mut();
        check("graph capture", unsafe { hip::hipStreamEndCapture(stream(s), &mut g) })?;
        let mut exec = std::ptr::null_mut();
        let r = check("graph instantiate", unsafe { hip::hipGraphInstantiate(&mut exec, g, std::ptr::null_mut(), std::ptr::null_mut(), 0) });
        unsafe { hip::hipGraphDestroy(g) };
        r?;
        Ok(Graph(exec as u64))
    }
    fn graph_launch(&self, s: Stream, g: Graph) -> Result<()> {
        self.bind()?;
        check("graph launch", unsafe { hip::hipGraphLaunch(g.0 as _, stream(s)) })
    }
    fn graph_destroy(&self, g: Graph) {
        if self.bind().is_ok() {
            unsafe { hip::hipGraphExecDestroy(g.0 as _) };
        }
    }
    fn has_blas(&self) -> bool {
        self.blas.is_some()
    }
    fn gemm_f16(&self, s: Stream, g: &GemmF16) -> Result<()> {
        self.bind()?;
        let b = self.blas.as_ref().ok_or_else(|| Error::BackendUnavailable("hipBLAS is not loaded".into()))?.lock();
        // hipblasOperation_t: N = 111, T = 112. v1: hipblasDatatype_t R_16F = 150,
        // R_32F = 151 (also the compute type). v2: hipDataType R_16F = 2,
        // R_32F = 0; hipblasComputeType_t COMPUTE_32F = 2. GEMM_DEFAULT = 100.
        let (f16, f32, compute) = if b.v2 { (2, 0, 2) } else { (150, 151, 151) };
        let (alpha, beta) = (g.alpha, g.beta);
        // SAFETY: device pointers sized by ops::matmul; handle used under the lock.
        let rc = unsafe {
            (b.set_stream)(b.handle, stream(s) as *mut c_void);
            (b.gemm)(
                b.handle, 112, 111, g.m as c_int, g.n as c_int, g.k as c_int,
                &alpha as *const f32 as *const c_void, g.a as *const c_void, f16, g.k as c_int,
                g.b as *const c_void, f16, g.k as c_int,
                &beta as *const f32 as *const c_void, g.c as *mut c_void, f32, g.ldc as c_int, compute, 100,
            )
        };
        if rc != 0 {
            return Err(Error::BackendUnavailable(format!("hipblasGemmEx failed with status {rc}")));
        }
        Ok(())
    }
}
