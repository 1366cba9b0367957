//! What the GPU backends share: the runtime interface ([`runtime`]), the
//! kernel source and its on-disk cache ([`kernels`]), the kernels' constants
//! and parameter kinds ([`kernel_table`], generated from `kernels/`), the
//! device memory manager ([`memory`]), op launchers ([`ops`]) and the
//! forward pass ([`forward`]). The CUDA and HIP modules only implement
//! [`runtime::GpuRuntime`].

pub mod collective;
pub mod decode;
pub mod forward;
pub mod kernel_table;
pub mod kernels;
pub mod memory;
pub mod ops;
pub mod profile;
pub mod runtime;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use kernel_table::Param;
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
    /// Each kernel launched so far: its handle and its parameters (from
    /// [`kernel_table::KERNELS`]), looked up once per name.
    funcs: Mutex<HashMap<String, (Func, &'static [Param])>>,
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
        self.entry(name).map(|(f, _)| f)
    }

    /// Kernel `name`'s handle and parameters, cached. A name the kernel
    /// table lacks is an error before the module is asked.
    fn entry(&self, name: &str) -> Result<(Func, &'static [Param])> {
        let mut m = self.funcs.lock();
        if let Some(e) = m.get(name) {
            return Ok(*e);
        }
        let sig = signature(name)?;
        let f = self.rt.function(name)?;
        m.insert(name.to_string(), (f, sig));
        Ok((f, sig))
    }

    /// Launch kernel `name` with `args`, which must match its parameters
    /// in number and kind ([`check_args`]; an `InvalidArgument` otherwise,
    /// before anything reaches the device).
    pub fn launch(&self, s: Stream, name: &str, dims: LaunchDims, args: &[Arg]) -> Result<()> {
        let (f, sig) = self.entry(name)?;
        check_args(name, sig, args)?;
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

/// Kernel `name`'s parameter kinds, from the generated table (sorted by
/// name).
pub(crate) fn signature(name: &str) -> Result<&'static [Param]> {
    let table = kernel_table::KERNELS;
    match table.binary_search_by(|&(n, _)| n.cmp(name)) {
        Ok(i) => Ok(table[i].1),
        Err(_) => Err(Error::InvalidArgument(format!(
            "kernel {name} is not in src/backend/gpu/kernel_table.rs (no such kernel in kernels/, or the table is stale: \
             `FORGE_UPDATE_KERNEL_TABLE=1 cargo test --release --test kernel_table`)"
        ))),
    }
}

fn kind(a: &Arg) -> Param {
    match a {
        Arg::Ptr(_) => Param::Ptr,
        Arg::I32(_) => Param::I32,
        Arg::F32(_) => Param::F32,
        Arg::U64(_) => Param::U64,
    }
}

/// Whether `args` fit kernel `name`'s parameters `sig`: as many, each of
/// the declared kind (`Ptr` and `U64` stay distinct, though both pass 8
/// bytes). An `InvalidArgument` naming the kernel, the first position that
/// differs and both kinds otherwise.
pub(crate) fn check_args(name: &str, sig: &[Param], args: &[Arg]) -> Result<()> {
    if sig.len() == args.len() && sig.iter().zip(args).all(|(&p, a)| p == kind(a)) {
        return Ok(());
    }
    let i = sig.iter().zip(args).position(|(&p, a)| p != kind(a)).unwrap_or(sig.len().min(args.len()));
    let expected = sig.get(i).map_or_else(|| "none".to_string(), |p| format!("{p:?}"));
    let given = args.get(i).map_or_else(|| "none".to_string(), |a| format!("{:?}", kind(a)));
    Err(Error::InvalidArgument(format!(
        "kernel {name}: argument {i} is {given}, the kernel's parameter {i} is {expected} ({} arguments given, it takes {})",
        args.len(),
        sig.len()
    )))
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

#[cfg(test)]
mod tests {
    use super::kernel_table::{Param::*, KERNELS};
    use super::*;

    #[test]
    fn kernel_table_is_sorted_and_unique() {
        assert!(KERNELS.len() > 100);
        assert!(KERNELS.windows(2).all(|w| w[0].0 < w[1].0), "KERNELS must be sorted by name (binary search)");
        assert_eq!(signature("rmsnorm").unwrap(), [Ptr, Ptr, Ptr, I32, F32, I32]);
        assert_eq!(signature("glu").unwrap(), [Ptr, Ptr, U64, I32]);
        for &(name, sig) in KERNELS {
            assert_eq!(signature(name).unwrap(), sig, "{name}");
        }
    }

    #[test]
    fn launch_arguments_are_checked_against_the_table() {
        let msg = |r: Result<()>| match r {
            Err(Error::InvalidArgument(m)) => m,
            r => panic!("expected InvalidArgument, got {r:?}"),
        };
        let sig = signature("rmsnorm").unwrap();
        let ok = [Arg::Ptr(1), Arg::Ptr(2), Arg::Ptr(3), Arg::I32(64), Arg::F32(1e-5), Arg::I32(0)];
        check_args("rmsnorm", sig, &ok).unwrap();
        check_args("none", &[], &[]).unwrap();

        // a wrong kind: the kernel, the position and both kinds
        let mut bad = ok;
        bad[4] = Arg::I32(0);
        let m = msg(check_args("rmsnorm", sig, &bad));
        assert!(m.contains("rmsnorm") && m.contains("argument 4 is I32") && m.contains("parameter 4 is F32"), "{m}");
        // Ptr and U64 pass the same bytes but are distinct kinds
        bad = ok;
        bad[0] = Arg::U64(1);
        let m = msg(check_args("rmsnorm", sig, &bad));
        assert!(m.contains("argument 0 is U64") && m.contains("parameter 0 is Ptr"), "{m}");

        // too few, too many
        let m = msg(check_args("rmsnorm", sig, &ok[..5]));
        assert!(m.contains("argument 5 is none") && m.contains("parameter 5 is I32") && m.contains("5 arguments given, it takes 6"), "{m}");
        let mut more = ok.to_vec();
        more.push(Arg::F32(0.0));
        let m = msg(check_args("rmsnorm", sig, &more));
        assert!(m.contains("argument 6 is F32") && m.contains("parameter 6 is none") && m.contains("7 arguments given, it takes 6"), "{m}");

        // a name the table lacks
        let m = match signature("rmsnorm_v2") {
            Err(Error::InvalidArgument(m)) => m,
            r => panic!("expected InvalidArgument, got {r:?}"),
        };
        assert!(m.contains("kernel rmsnorm_v2 is not in"), "{m}");
    }
}
