//! Collectives across the GPUs of one host, for tensor parallelism (issue
//! 19; the plan is `crate::shard`): NCCL on NVIDIA, RCCL on AMD. RCCL is
//! NCCL's port with the same C API, so one binding serves both, loaded at
//! run time with dlopen like the rest of each vendor's libraries: a build
//! never links them, and a machine without them gets a clear
//! `BackendUnavailable`, never a panic.
//!
//! One process drives every GPU: [`Comms::init_all`] makes one communicator
//! per device (`ncclCommInitAll`), and a collective over several ranks is
//! issued for all of them between `ncclGroupStart` and `ncclGroupEnd`
//! ([`Comms::all_reduce_sum`], [`Comms::all_gather`]), each rank on its own
//! stream. NVLink multicast (NVLS) is turned off (`NCCL_NVLS_ENABLE=0`)
//! unless the caller set it.
//!
//! Not cudarc's `nccl` module: its loader never tries `libnccl.so.2` (the
//! name NCCL installs, and the only one NVIDIA's wheels ship), panics when
//! it finds nothing, and would leave RCCL a second binding.
//!
//! Status: a one-rank communicator runs on an H200 (tests/gpu_collective.rs);
//! nothing has run on several GPUs, and RCCL only compiles.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use super::runtime::{DevPtr, Stream};
use super::GpuKind;
use crate::error::{Error, Result};

type Comm = *mut c_void;
/// ncclDataType_t / ncclRedOp_t values (nccl.h, the same in rccl.h).
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// The library's entry points (nccl.h's signatures).
struct Lib {
    name: String,
    version: unsafe extern "C" fn(*mut c_int) -> c_int,
    init_all: unsafe extern "C" fn(*mut Comm, c_int, *const c_int) -> c_int,
    destroy: unsafe extern "C" fn(Comm) -> c_int,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        *mut c_void,
    ) -> c_int,
    all_gather:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, *mut c_void) -> c_int,
    group_start: unsafe extern "C" fn() -> c_int,
    group_end: unsafe extern "C" fn() -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
}

/// The names tried for each vendor's library (`FORGE_NCCL_LIB` first, a
/// path or a name, when set).
fn lib_names(kind: GpuKind) -> Vec<String> {
    let own: &[&str] = match kind {
        GpuKind::Cuda => &["libnccl.so.2", "libnccl.so"],
        GpuKind::Hip => &["librccl.so.1", "librccl.so"],
    };
    std::env::var("FORGE_NCCL_LIB")
        .ok()
        .into_iter()
        .chain(own.iter().map(|s| s.to_string()))
        .collect()
}

fn open(names: &[String]) -> Result<Lib> {
    let mut tried = Vec::new();
    for n in names {
        let Ok(c) = CString::new(n.as_str()) else {
            continue;
        };
        // SAFETY: dlopen with a valid C string; a library that is kept is
        // never closed (communicators may outlive any one owner).
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            tried.push(format!("{n} (not found)"));
            continue;
        }
        match unsafe { bind(n, h) } {
            Ok(lib) => return Ok(lib),
            Err(why) => {
                // not NCCL's API: close it and try the next name
                // SAFETY: nothing from this handle is kept.
                unsafe { libc::dlclose(h) };
                tried.push(why);
            }
        }
    }
    Err(Error::BackendUnavailable(format!(
        "no collective library for tensor parallelism: tried {} (install NCCL / RCCL, or name it with FORGE_NCCL_LIB)",
        tried.join(", ")
    )))
}

/// NCCL's entry points in the library `h` (named `n`), or which one it lacks.
///
/// # Safety
/// `h` is a live dlopen handle.
unsafe fn bind(n: &str, h: *mut c_void) -> std::result::Result<Lib, String> {
    Ok(Lib {
        name: n.to_string(),
        version: sym(h, n, "ncclGetVersion")?,
        init_all: sym(h, n, "ncclCommInitAll")?,
        destroy: sym(h, n, "ncclCommDestroy")?,
        all_reduce: sym(h, n, "ncclAllReduce")?,
        all_gather: sym(h, n, "ncclAllGather")?,
        group_start: sym(h, n, "ncclGroupStart")?,
        group_end: sym(h, n, "ncclGroupEnd")?,
        error_string: sym(h, n, "ncclGetErrorString")?,
    })
}

/// Symbol `s` of the library `h` (named `n`) as a `T`.
///
/// # Safety
/// `h` is a live dlopen handle; `T` is the symbol's true function-pointer
/// type (nccl.h's signature, which `Lib`'s fields declare).
unsafe fn sym<T: Copy>(h: *mut c_void, n: &str, s: &str) -> std::result::Result<T, String> {
    let c = CString::new(s).expect("symbol names have no NUL");
    let p = libc::dlsym(h, c.as_ptr());
    if p.is_null() {
        Err(format!("{n} (has no {s})"))
    } else {
        Ok(std::mem::transmute_copy(&p))
    }
}

impl Lib {
    fn check(&self, what: &str, r: c_int) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static string for any code.
        let msg = unsafe { CStr::from_ptr((self.error_string)(r)) }
            .to_string_lossy()
            .into_owned();
        Err(Error::BackendUnavailable(format!(
            "{} {what}: {msg} (error {r})",
            self.name
        )))
    }
}

/// One communicator per device of one host, driven from one thread.
pub struct Comms {
    lib: Lib,
    comms: Vec<Comm>,
}

// SAFETY: the communicators are only used through &self methods that
// issue whole groups; NCCL communicators may be used from any thread.
unsafe impl Send for Comms {}

impl Comms {
    /// Communicators over `devices` (device indices of `kind`'s runtime),
    /// rank i on devices[i]. Errors: BackendUnavailable (no library, or
    /// its own error, e.g. a device index it cannot open).
    pub fn init_all(kind: GpuKind, devices: &[usize]) -> Result<Comms> {
        Self::init_with(&lib_names(kind), devices)
    }

    fn init_with(names: &[String], devices: &[usize]) -> Result<Comms> {
        if devices.is_empty() {
            return Err(Error::InvalidArgument(
                "tensor parallelism over no devices".into(),
            ));
        }
        let lib = open(names)?;
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            // NVLink multicast stays off unless the caller chose otherwise.
            // The environment is process-wide: a program with threads that
            // read it concurrently should set NCCL_NVLS_ENABLE itself
            // before starting them.
            std::env::set_var("NCCL_NVLS_ENABLE", "0");
        }
        let devs: Vec<c_int> = devices
            .iter()
            .map(|&d| c_int::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::InvalidArgument(format!("devices {devices:?}")))?;
        let mut comms = vec![std::ptr::null_mut(); devs.len()];
        // SAFETY: comms has room for one communicator per device.
        lib.check("ncclCommInitAll", unsafe {
            (lib.init_all)(comms.as_mut_ptr(), devs.len() as c_int, devs.as_ptr())
        })?;
        Ok(Comms { lib, comms })
    }

    pub fn ranks(&self) -> usize {
        self.comms.len()
    }

    /// The library's name and version (e.g. `libnccl.so.2 2.27.3`).
    pub fn describe(&self) -> String {
        let mut v: c_int = 0;
        // SAFETY: plain out-parameter call.
        let ok = unsafe { (self.lib.version)(&mut v) } == 0;
        let v = v as i64;
        if ok && v >= 10_000 {
            format!(
                "{} {}.{}.{}",
                self.lib.name,
                v / 10_000,
                v / 100 % 100,
                v % 100
            )
        } else {
            format!("{} {v}", self.lib.name)
        }
    }

    /// Every rank r's `count` f32 at bufs[r].0 summed over the ranks into
    /// each rank's bufs[r].1 (in place when the two are equal), on
    /// streams[r]. Enqueued only: the streams order it.
    pub fn all_reduce_sum(
        &self,
        bufs: &[(DevPtr, DevPtr)],
        count: usize,
        streams: &[Stream],
    ) -> Result<()> {
        self.grouped(
            bufs.len(),
            streams.len(),
            "ncclAllReduce",
            |l, i, c| unsafe {
                (l.all_reduce)(
                    bufs[i].0 as *const c_void,
                    bufs[i].1 as *mut c_void,
                    count,
                    NCCL_FLOAT32,
                    NCCL_SUM,
                    c,
                    streams[i].0 as *mut c_void,
                )
            },
        )
    }

    /// Every rank r's `count` f32 at bufs[r].0 gathered, rank after rank,
    /// into each rank's bufs[r].1 (`count` × ranks floats), on streams[r].
    pub fn all_gather(
        &self,
        bufs: &[(DevPtr, DevPtr)],
        count: usize,
        streams: &[Stream],
    ) -> Result<()> {
        self.grouped(
            bufs.len(),
            streams.len(),
            "ncclAllGather",
            |l, i, c| unsafe {
                (l.all_gather)(
                    bufs[i].0 as *const c_void,
                    bufs[i].1 as *mut c_void,
                    count,
                    NCCL_FLOAT32,
                    c,
                    streams[i].0 as *mut c_void,
                )
            },
        )
    }

    /// One call per rank between ncclGroupStart and ncclGroupEnd (one
    /// thread issuing for several devices must group them).
    fn grouped(
        &self,
        n_bufs: usize,
        n_streams: usize,
        what: &str,
        call: impl Fn(&Lib, usize, Comm) -> c_int,
    ) -> Result<()> {
        if n_bufs != self.comms.len() || n_streams != self.comms.len() {
            return Err(Error::InvalidArgument(format!(
                "{what}: {n_bufs} buffers and {n_streams} streams for {} ranks",
                self.comms.len()
            )));
        }
        let l = &self.lib;
        // SAFETY: group calls take no arguments.
        l.check("ncclGroupStart", unsafe { (l.group_start)() })?;
        let mut first = Ok(());
        for (i, &c) in self.comms.iter().enumerate() {
            if first.is_ok() {
                first = l.check(what, call(l, i, c));
            }
        }
        // the group is closed whatever happened inside it
        // SAFETY: as above.
        let end = l.check("ncclGroupEnd", unsafe { (l.group_end)() });
        first.and(end)
    }
}

impl Drop for Comms {
    fn drop(&mut self) {
        for &c in &self.comms {
            if !c.is_null() {
                // SAFETY: a communicator ncclCommInitAll made, destroyed once.
                unsafe { (self.lib.destroy)(c) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine without the library gets a clear error naming what was tried.
    #[test]
    fn a_missing_library_is_a_clear_error() {
        let names = vec!["libnccl-that-is-not-here.so.2".to_string()];
        let e = Comms::init_with(&names, &[0])
            .err()
            .expect("no such library");
        let msg = e.to_string();
        assert!(
            matches!(e, Error::BackendUnavailable(_))
                && msg.contains("libnccl-that-is-not-here.so.2")
                && msg.contains("FORGE_NCCL_LIB"),
            "{msg}"
        );
        assert!(matches!(
            Comms::init_with(&names, &[]),
            Err(Error::InvalidArgument(_))
        ));
    }

    /// A library without NCCL's symbols is refused, naming the symbol.
    #[test]
    fn a_library_without_the_api_is_refused() {
        let e = Comms::init_with(&["libc.so.6".to_string()], &[0])
            .err()
            .expect("libc is not NCCL")
            .to_string();
        assert!(e.contains("libc.so.6 (has no ncclGetVersion)"), "{e}");
    }
}
