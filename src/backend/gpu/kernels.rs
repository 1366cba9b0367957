//! The kernel source (`kernels/`, embedded at build time), compiled at run
//! time for the exact device by the adapter (NVRTC / hipRTC) and cached on
//! disk. Cache key: FNV-1a of the source and compile target, the device
//! architecture and the driver version, so a new driver or a changed kernel
//! recompiles and nothing stale is ever loaded.
//!
//! The source is compiled as several units in parallel threads, each
//! cached on its own, so the first load's compile takes about as long as
//! the largest unit, not the whole source. A unit is one op file of
//! `forge.cu` (`UNITS`) with the headers and op files it includes, or a
//! part of one, cut as text (`expand_from`): a kernel-defining macro
//! invocation is kept only in one part of its own file, and a kernel
//! written out is muted everywhere else (a `__global__` template never
//! instantiated). Each kernel is compiled once, in one unit. `forge.cu`
//! stays the whole source, for the kernel table and CI's hipcc build.
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
    ("mmf.cu", include_str!("../../../kernels/mmf.cu")),
    ("matmul.cu", include_str!("../../../kernels/matmul.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("rope.cu", include_str!("../../../kernels/rope.cu")),
    ("attention.cu", include_str!("../../../kernels/attention.cu")),
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("sample.cu", include_str!("../../../kernels/sample.cu")),
    ("forge.cu", include_str!("../../../kernels/forge.cu")),
];

/// The op files `forge.cu` includes, each with the number of parts it is
/// compiled in (by the cost of its kernels: the quantized products are
/// most of the compile time).
pub const UNITS: &[(&str, usize)] = &[
    ("matvec.cu", 8),
    ("mmvq.cu", 8),
    ("mmq.cu", 3),
    ("mmf.cu", 1),
    ("matmul.cu", 3),
    ("norm.cu", 1),
    ("rope.cu", 1),
    ("attention.cu", 2),
    ("elementwise.cu", 1),
    ("sample.cu", 1),
];

/// Every (file, part, parts) the runtime compiles.
pub fn unit_parts() -> Vec<(&'static str, usize, usize)> {
    UNITS.iter().flat_map(|&(f, n)| (0..n).map(move |p| (f, p, n))).collect()
}

/// `root` with every `#include "x"` of a project file inlined once
/// (`#pragma once` semantics), so the run-time compilers need no include
/// path and no header list. With `unit` = (part, parts) the text is cut
/// for one unit part, with nothing but plain preprocessor lines:
/// - a top-level invocation of a kernel-defining macro (one whose body
///   uses `KERNEL`; `FOR_EACH_TYPE(M)` counts as one invocation of `M` per
///   type) is kept only in `root`, and there only the invocations whose
///   ordinal is `part` modulo `parts`;
/// - a kernel written out (a line starting with `KERNEL`) is live only in
///   `root`'s part 0; elsewhere it is muted: `KERNEL` is redefined before
///   it as a `__global__` template, which is never instantiated, so the
///   compiler generates nothing for it.
fn expand_from(root: &str, unit: Option<(usize, usize)>) -> String {
    struct Cut<'a> {
        root: &'a str,
        unit: Option<(usize, usize)>,
        macros: Vec<String>,
        types: Vec<(String, String)>,
        seen: Vec<String>,
        /// invocations of `root`'s kernel macros so far
        ordinal: usize,
        /// whether KERNEL is live at this point of the text
        live: bool,
    }
    impl Cut<'_> {
        fn set(&mut self, live: bool, out: &mut String) {
            if self.live != live {
                out.push_str(if live { KERNEL_LIVE } else { KERNEL_MUTED });
                self.live = live;
            }
        }
        fn expand(&mut self, name: &str, out: &mut String) {
            if self.seen.iter().any(|s| s == name) {
                return;
            }
            self.seen.push(name.to_string());
            let text = FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).unwrap_or("");
            let own = name == self.root;
            let mut in_define = false;
            for line in text.lines() {
                let t = line.trim();
                let continued = in_define;
                in_define = (continued || t.starts_with("#define")) && t.ends_with('\\');
                if t == "#pragma once" {
                    continue;
                }
                if let Some(inc) = t.strip_prefix("#include \"").and_then(|r| r.strip_suffix('"')) {
                    if FILES.iter().any(|(n, _)| *n == inc) {
                        self.expand(inc, out);
                        continue;
                    }
                }
                if let (Some((part, parts)), false) = (self.unit, continued) {
                    if let Some(calls) = self.invocations(t) {
                        // each invocation kept in one part of its own file
                        for call in calls {
                            let keep = own && self.ordinal % parts == part;
                            if own {
                                self.ordinal += 1;
                            }
                            if keep {
                                self.set(true, out);
                                out.push_str(&call);
                                out.push('\n');
                            }
                        }
                        continue;
                    }
                    if t.starts_with("KERNEL ") {
                        self.set(own && part == 0, out);
                    }
                }
                out.push_str(line);
                out.push('\n');
            }
        }
        /// A top-level line that invokes kernel macros: the invocations.
        fn invocations(&self, t: &str) -> Option<Vec<String>> {
            let (name, rest) = t.split_once('(')?;
            let args = rest.strip_suffix(')')?;
            if name == "FOR_EACH_TYPE" && self.macros.iter().any(|m| m == args) {
                return Some(self.types.iter().map(|(ty, s)| format!("{args}({ty}, {s})")).collect());
            }
            self.macros.iter().any(|m| m == name).then(|| vec![t.to_string()])
        }
    }
    let mut out = String::new();
    let mut cut = Cut { root, unit, macros: kernel_macros(), types: each_type(), seen: Vec::new(), ordinal: 0, live: true };
    if unit.is_some() {
        // the headers first: vendor.h defines KERNEL (live)
        cut.expand("vendor.h", &mut out);
        cut.expand("quant.h", &mut out);
    }
    cut.expand(root, &mut out);
    out
}

/// Redefinitions of `KERNEL`: live, or muted (a template never instantiated).
const KERNEL_LIVE: &str = "#undef KERNEL\n#define KERNEL extern \"C\" __global__\n";
const KERNEL_MUTED: &str = "#undef KERNEL\n#define KERNEL template <int> __global__\n";

/// The macros of the kernel files that define kernels: whose definition
/// uses `KERNEL`, or invokes such a macro.
fn kernel_macros() -> Vec<String> {
    // every function-like macro with its body
    let mut defs: Vec<(String, String)> = Vec::new();
    for (_, text) in FILES {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("#define ") {
                current = rest.split_once('(').map(|(n, _)| n.trim()).filter(|n| !n.contains(' ')).map(|n| {
                    defs.push((n.to_string(), String::new()));
                    defs.len() - 1
                });
            }
            if let Some(i) = current {
                defs[i].1.push_str(t);
                defs[i].1.push(' ');
            }
            if !t.ends_with('\\') {
                current = None;
            }
        }
    }
    let mut names: Vec<String> = Vec::new();
    loop {
        let before = names.len();
        for (n, body) in &defs {
            let uses = n != "KERNEL" && (body.contains("KERNEL ") || names.iter().any(|k| body.contains(&format!("{k}("))));
            if uses && !names.contains(n) {
                names.push(n.clone());
            }
        }
        if names.len() == before {
            return names;
        }
    }
}

/// `FOR_EACH_TYPE`'s (type, suffix) pairs, from its definition in quant.h.
fn each_type() -> Vec<(String, String)> {
    let text = FILES.iter().find(|(n, _)| *n == "quant.h").map(|(_, t)| *t).unwrap_or("");
    let start = text.find("#define FOR_EACH_TYPE(M)").expect("quant.h defines FOR_EACH_TYPE(M)");
    let mut body = String::new();
    for line in text[start..].lines() {
        body.push_str(line.trim_end_matches('\\'));
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    let body = &body["#define FOR_EACH_TYPE(M)".len()..];
    body.split("M(").skip(1).map(|c| {
        let inner = &c[..c.find(')').expect("M(type, suffix)")];
        let (ty, s) = inner.split_once(',').expect("M(type, suffix)");
        (ty.trim().to_string(), s.trim().to_string())
    }).collect()
}

/// The source of part `part` of `parts` of the op file `file` (see [`UNITS`]).
pub fn unit_source(file: &str, part: usize, parts: usize) -> String {
    expand_from(file, Some((part, parts)))
}

/// The whole kernel source: `forge.cu`, every file inlined once.
pub fn source() -> String {
    expand_from("forge.cu", None)
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

/// Compile (or fetch from the cache) and load the kernel modules, one per
/// unit, into `rt`. The units missing from the cache compile in parallel.
/// `FORGE_COMPILE_TIMES=1` prints each unit's compile time to stderr.
pub fn load(rt: &dyn GpuRuntime) -> Result<ModuleOrigin> {
    let extra = std::env::var("FORGE_NVRTC_OPTS").unwrap_or_default();
    let key = format!("{}|{}|{}|{}|{extra}", rt.info().backend, rt.info().arch, rt.info().driver_version, env!("CARGO_PKG_VERSION"));
    let dir = cache_dir();
    let units: Vec<(String, String, Option<PathBuf>)> = unit_parts()
        .into_iter()
        .map(|(f, part, parts)| {
            let src = unit_source(f, part, parts);
            let h = fnv1a(key.as_bytes(), fnv1a(src.as_bytes(), 0xcbf2_9ce4_8422_2325));
            let name = format!("{}-{part}", f.trim_end_matches(".cu"));
            let file = dir.as_ref().map(|d| d.join(format!("forge-{}-{}-{name}-{h:016x}.bin", rt.info().backend, rt.info().arch)));
            (name, src, file)
        })
        .collect();
    // a cached image that does not load (truncated, or from another
    // toolchain) is dropped and compiled again
    let mut images: Vec<Option<Vec<u8>>> = units
        .iter()
        .map(|(_, _, f)| {
            let f = f.as_ref()?;
            let image = std::fs::read(f).ok()?;
            match rt.load_module(&image) {
                Ok(()) => Some(image),
                Err(_) => {
                    let _ = std::fs::remove_file(f);
                    None
                }
            }
        })
        .collect();
    let missing: Vec<usize> = (0..units.len()).filter(|&i| images[i].is_none()).collect();
    let times = crate::env_flag("FORGE_COMPILE_TIMES");
    // as many compiles at once as the host has threads
    let width = std::thread::available_parallelism().map_or(4, |n| n.get()).max(1);
    let mut compiled: Vec<(usize, Result<Vec<u8>>)> = Vec::with_capacity(missing.len());
    for wave in missing.chunks(width) {
        compiled.extend(std::thread::scope(|sc| {
            let jobs: Vec<_> = wave
                .iter()
                .map(|&i| {
                    let (u, src, _) = &units[i];
                    sc.spawn(move || {
                        let t0 = std::time::Instant::now();
                        let r = rt.compile(src, &format!("{u}.cu"));
                        if times {
                            eprintln!("kernel unit {u}: compiled in {:.2} s", t0.elapsed().as_secs_f64());
                        }
                        (i, r)
                    })
                })
                .collect();
            jobs.into_iter().map(|j| j.join().expect("a compile thread panicked")).collect::<Vec<_>>()
        }));
    }
    for (i, r) in compiled {
        let image = r?;
        rt.load_module(&image)?;
        if let Some(f) = &units[i].2 {
            // write-then-rename, under a name no other writer uses, so a
            // reader never sees half a file
            if let Some(d) = f.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = f.with_extension(format!("tmp{}-{n}-{:?}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()));
            if std::fs::write(&tmp, &image).is_ok() && std::fs::rename(&tmp, f).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        images[i] = Some(image);
    }
    Ok(if missing.is_empty() { ModuleOrigin::Cache } else { ModuleOrigin::Compiled })
}

#[cfg(test)]
mod tests {
    /// The live kernels of a source: what the C preprocessor makes of it
    /// (as the CUDA build sees it), the names after `extern "C" __global__`.
    fn live_kernels(src: &str, flags: &[&str]) -> Vec<String> {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let mut child = std::process::Command::new(cxx)
            .args(["-E", "-P", "-x", "c++", "-std=c++17"])
            .args(flags)
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("a C++ preprocessor (c++ or $CXX)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(src.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "the preprocessor failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut names = Vec::new();
        for chunk in text.split("extern \"C\" __global__").skip(1) {
            // `void [__launch_bounds__(...) | BOUNDS expansion] name(`
            let head = &chunk[..chunk.find('(').map(|i| {
                // skip a launch-bounds attribute's parentheses
                let mut depth = 0;
                let b = chunk.as_bytes();
                let mut j = i;
                let mut last = i;
                while j < b.len() {
                    match b[j] {
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 && chunk[..i].contains("__launch_bounds__") && last == i {
                                last = j;
                            }
                        }
                        b'{' => break,
                        _ => {}
                    }
                    j += 1;
                }
                chunk[last..].find('(').map_or(i, |k| last + k)
            }).unwrap_or(chunk.len())];
            names.push(head.split_whitespace().last().unwrap_or("").trim_start_matches(')').to_string());
        }
        names
    }

    #[test]
    fn kernel_macros_and_types_are_found() {
        let m = super::kernel_macros();
        for name in ["MATVEC_KERNEL", "MMVQ_KERNEL", "MMVQ_PAIR", "MMVF_KERNEL", "MATMUL_KERNELS", "ATTN_DECODE", "ATTN_PREFILL_MMA", "MMQ_TYPE"] {
            assert!(m.iter().any(|x| x == name), "{name} not found among {m:?}");
        }
        let t = super::each_type();
        assert_eq!(t.len(), 19);
        assert_eq!(t[3], ("TQ4_0".to_string(), "q4_0".to_string()));
    }

    /// The units partition the kernels, as CUDA on sm_90 and as hipRTC see
    /// them: every kernel of the whole source is live in exactly one unit
    /// part, and on sm_90 no part is empty.
    #[test]
    fn units_partition_the_kernels() {
        for (view, flags) in [("CUDA sm_90", &["-D__CUDA_ARCH__=900"][..]), ("HIP", &["-D__HIPCC_RTC__"][..])] {
            let mut all: Vec<String> = Vec::new();
            for (f, part, parts) in super::unit_parts() {
                let s = super::unit_source(f, part, parts);
                assert_eq!(s.matches("// vendor.h: the one place").count(), 1, "{f}: vendor.h inlined once");
                // plain preprocessor lines only (NVRTC's support of
                // __COUNTER__ and push_macro is not to be relied on)
                assert!(!s.contains("__COUNTER__") && !s.contains("push_macro"), "{f}");
                let own = live_kernels(&s, flags);
                assert!(view != "CUDA sm_90" || !own.is_empty(), "{view}: {f} part {part}/{parts} has no kernel");
                all.extend(own);
            }
            let mut whole = live_kernels(&super::source(), flags);
            assert!(whole.len() > 100 && whole.iter().all(|n| !n.is_empty()), "{view}: {whole:?}");
            whole.sort();
            all.sort();
            assert_eq!(all, whole, "{view}: the units' kernels are the whole source's, each once");
            println!("{view}: {} kernels in {} unit parts", whole.len(), super::unit_parts().len());
        }
    }

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
