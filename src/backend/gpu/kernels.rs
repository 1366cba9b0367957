//! The kernel source (`kernels/`, embedded at build time), compiled at run
//! time for the exact device by the adapter (NVRTC / hipRTC) and cached on
//! disk. Cache key: FNV-1a of the source and compile target, the device
//! architecture and the driver version, so a new driver or a changed kernel
//! recompiles and nothing stale is ever loaded.
//!
//! `FORGE_NVRTC_OPTS` adds compiler options (experiments; part of the key).
//!
//! Cache directory: `$FORGE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/rocmforge`,
//! else `~/.cache/rocmforge`; `FORGE_KERNEL_CACHE=off` disables it. A cache
//! that cannot be written only costs the next start a compile.

use std::path::PathBuf;

use super::runtime::GpuRuntime;
use crate::error::Result;

/// Every file under `kernels/`, by the name `#include` uses.
const FILES: &[(&str, &str)] = &[
    ("vendor.h", include_str!("../../../kernels/vendor.h")),
    ("quant.h", include_str!("../../../kernels/quant.h")),
    ("iquant.h", include_str!("../../../kernels/iquant.h")),
    ("matvec.cu", include_str!("../../../kernels/matvec.cu")),
    ("mmvq.cu", include_str!("../../../kernels/mmvq.cu")),
    ("mmq.cu", include_str!("../../../kernels/mmq.cu")),
    ("matmul.cu", include_str!("../../../kernels/matmul.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("rope.cu", include_str!("../../../kernels/rope.cu")),
    ("attention.cu", include_str!("../../../kernels/attention.cu")),
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("sample.cu", include_str!("../../../kernels/sample.cu")),
    ("forge.cu", include_str!("../../../kernels/forge.cu")),
];

/// `forge.cu` with every `#include "x"` of a project file inlined once
/// (`#pragma once` semantics), so the run-time compilers need no include
/// path and no header list.
pub fn source() -> String {
    fn expand(name: &str, seen: &mut Vec<String>, out: &mut String) {
        if seen.iter().any(|s| s == name) {
            return;
        }
        seen.push(name.to_string());
        let text = FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).unwrap_or("");
        for line in text.lines() {
            let t = line.trim();
            if t == "#pragma once" {
                continue;
            }
            if let Some(inc) = t.strip_prefix("#include \"").and_then(|r| r.strip_suffix('"')) {
                if FILES.iter().any(|(n, _)| *n == inc) {
                    expand(inc, seen, out);
                    continue;
                }
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    let mut out = String::new();
    expand("forge.cu", &mut Vec::new(), &mut out);
    out
}

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("FORGE_KERNEL_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(|x| PathBuf::from(x).join("rocmforge"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rocmforge"))),
    }
}

/// How the module was obtained (reported by `Device::describe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleOrigin {
    Compiled,
    Cache,
}

/// Compile (or fetch from the cache) and load the kernel module into `rt`.
pub fn load(rt: &dyn GpuRuntime) -> Result<ModuleOrigin> {
    let src = source();
    let extra = std::env::var("FORGE_NVRTC_OPTS").unwrap_or_default();
    let key = format!("{}|{}|{}|{}|{extra}", rt.info().backend, rt.info().arch, rt.info().driver_version, env!("CARGO_PKG_VERSION"));
    let h = fnv1a(key.as_bytes(), fnv1a(src.as_bytes(), 0xcbf2_9ce4_8422_2325));
    let file = cache_dir().map(|d| d.join(format!("forge-{}-{}-{h:016x}.bin", rt.info().backend, rt.info().arch)));
    if let Some(f) = &file {
        if let Ok(image) = std::fs::read(f) {
            if rt.load_module(&image).is_ok() {
                return Ok(ModuleOrigin::Cache);
            }
        }
    }
    let image = rt.compile(&src, "forge.cu")?;
    rt.load_module(&image)?;
    if let Some(f) = &file {
        // Write-then-rename so a concurrent reader never sees half a file.
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &image).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(ModuleOrigin::Compiled)
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_inlines_each_file_once() {
        let s = super::source();
        assert_eq!(s.matches("// vendor.h: the one place").count(), 1, "vendor.h inlined once");
        assert!(s.contains("struct IP<TQ6_K>"), "iquant.h inlined");
        assert!(!s.contains("#include \"quant.h\""));
        assert!(s.contains(" attn_prefill(const float*"));
        assert!(s.contains("matvec_##s"));
        assert!(s.contains("struct MQ<TQ6_K>"), "mmq.cu inlined");
        // every include left is a system one: a kernel file missing from
        // FILES would reach the run-time compiler as an #include it cannot open
        for line in s.lines().filter(|l| l.trim_start().starts_with("#include")) {
            assert!(line.contains('<'), "{line}: not inlined (add the file to FILES)");
        }
        // and every file under kernels/ is listed
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".cu") || name.ends_with(".h") {
                assert!(super::FILES.iter().any(|(n, _)| *n == name), "kernels/{name} is not in FILES");
            }
        }
    }
}
