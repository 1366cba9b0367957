//! What the GPU backends share: the runtime interface ([`runtime`]), the
//! kernel source and its on-disk cache ([`kernels`]), the device memory
//! manager ([`memory`]), op launchers ([`ops`]) and the forward pass
//! ([`forward`]). The CUDA and HIP modules only implement
//! [`runtime::GpuRuntime`].

pub mod forward;
pub mod kernels;
pub mod memory;
pub mod ops;
pub mod profile;
pub mod runtime;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use runtime::{Arg, Func, GpuRuntime, LaunchDims, Stream};

/// The GPU vendors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuKind {
    Cuda,
    Hip,
}

impl GpuKind {
    pub fn name(self) -> &'static str {
        match self {
            GpuKind::Cuda => "cuda",
            GpuKind::Hip => "hip",
        }
    }
    /// Devices of this kind (an error says why there are none to ask).
    pub fn device_count(self) -> Result<usize> {
        match self {
            GpuKind::Cuda => super::cuda::device_count(),
            GpuKind::Hip => super::hip::device_count(),
        }
    }
    fn open_runtime(self, index: usize) -> Result<Arc<dyn GpuRuntime>> {
        match self {
            GpuKind::Cuda => super::cuda::open(index),
            GpuKind::Hip => super::hip::open(index),
        }
    }
}

/// An opened device with its kernel module loaded. One per (kind, index)
/// at a time; models and sessions share it, and it closes (context, module,
/// BLAS handle) when the last of them goes.
pub struct Device {
    pub kind: GpuKind,
    pub rt: Arc<dyn GpuRuntime>,
    pub origin: kernels::ModuleOrigin,
    funcs: Mutex<HashMap<String, Func>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({} {} {})", self.kind.name(), self.rt.info().index, self.rt.info().name)
    }
}

static DEVICES: Mutex<Vec<std::sync::Weak<Device>>> = Mutex::new(Vec::new());

/// Open device `index` of `kind` (compiling or loading the kernels the first
/// time). Errors: `NotCompiled`, `BackendUnavailable` (no driver, no such
/// device), or the compiler's log.
pub fn device(kind: GpuKind, index: usize) -> Result<Arc<Device>> {
    let mut devs = DEVICES.lock();
    devs.retain(|w| w.strong_count() > 0);
    if let Some(d) = devs.iter().filter_map(|w| w.upgrade()).find(|d| d.kind == kind && d.rt.info().index == index) {
        return Ok(d);
    }
    let n = kind.device_count()?;
    if index >= n {
        return Err(Error::BackendUnavailable(format!("{} device {index} does not exist ({n} present)", kind.name())));
    }
    let rt = kind.open_runtime(index)?;
    let origin = kernels::load(rt.as_ref())?;
    let d = Arc::new(Device { kind, rt, origin, funcs: Mutex::new(HashMap::new()) });
    devs.push(Arc::downgrade(&d));
    Ok(d)
}

impl Device {
    pub fn func(&self, name: &str) -> Result<Func> {
        let mut m = self.funcs.lock();
        if let Some(f) = m.get(name) {
            return Ok(*f);
        }
        let f = self.rt.function(name)?;
        m.insert(name.to_string(), f);
        Ok(f)
    }

    pub fn launch(&self, s: Stream, name: &str, dims: LaunchDims, args: &[Arg]) -> Result<()> {
        let f = self.func(name)?;
        let timer = profile::start(self.rt.as_ref(), s)?;
        self.rt.launch(s, f, dims, args).map_err(|e| match e {
            Error::BackendUnavailable(m) => Error::BackendUnavailable(format!("kernel {name}: {m}")),
            e => e,
        })?;
        profile::stop(timer, self.rt.as_ref(), s, name)
    }

    /// "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn describe(&self) -> String {
        format!("{}:{} {} ({})", self.kind.name(), self.rt.info().index, self.rt.info().name, self.rt.info().arch)
    }
}

/// Device-to-device copy bandwidth in bytes/s (bytes read plus written),
/// the median of 10 copies of 256 MiB after a warm-up: the decode ceiling's
/// denominator in `examples/bench`.
pub fn copy_bandwidth(dev: &Device) -> Result<f64> {
    let pool = memory::MemPool::new(dev.rt.clone(), 0)?;
    let n = 256usize << 20;
    let (a, b) = (pool.alloc(n, "bandwidth probe")?, pool.alloc(n, "bandwidth probe")?);
    let s = dev.rt.stream_create()?;
    let run = || -> Result<Vec<f64>> {
        dev.rt.memset(s, a.ptr, 1, n)?;
        dev.rt.dtod(s, b.ptr, a.ptr, n)?;
        dev.rt.stream_sync(s)?;
        let mut v = Vec::new();
        for _ in 0..10 {
            let t = std::time::Instant::now();
            dev.rt.dtod(s, b.ptr, a.ptr, n)?;
            dev.rt.stream_sync(s)?;
            v.push(2.0 * n as f64 / t.elapsed().as_secs_f64());
        }
        Ok(v)
    };
    let r = run();
    dev.rt.stream_destroy(s);
    let mut v = r?;
    v.sort_by(|x, y| x.total_cmp(y));
    Ok(v[v.len() / 2])
}
