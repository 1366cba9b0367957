//! The generator of `src/backend/gpu/kernel_table.rs`, and the test that the
//! committed table is what it generates from `kernels/` now. Regenerate
//! (then commit the result) with
//!
//!     FORGE_UPDATE_KERNEL_TABLE=1 cargo test --release --test kernel_table
//!
//! The table holds
//! - every `#define NAME <decimal integer>` at the start of a line of a
//!   kernel source (`.cu`, `.h`), as `pub const NAME: usize`, for the Rust
//!   side to use in place of a copy by hand; what depends on the vendor is
//!   left out (`WARP_SIZE`, `FORGE_*`, anything in `kernels/vendor.h`), and
//!   a name defined twice with different values is an error here;
//! - every kernel of the module (`extern "C" __global__ void
//!   [__launch_bounds__(..)] name(params) {` after the C preprocessor, so the
//!   kernels that macros such as `MMVQ_KERNEL` and `FOR_EACH_TYPE` stamp out
//!   are there too) with the kind of each parameter, sorted by name, which
//!   `Device::launch` checks every launch's arguments against.
//!
//! The preprocessor is the host C++ compiler (`$CXX`, else `c++`; the C tests
//! need it too), run as `c++ -E -P -x c++ -std=c++17 -I kernels
//! kernels/forge.cu` once per configuration in [`CONFIGS`]: the kernels of
//! the module differ by target (the tensor-core `attn_prefill_mma*` exist
//! only on NVIDIA sm_80+), so the table is their union, and a kernel whose
//! parameters differ between targets is an error. A missing compiler fails
//! the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const TABLE: &str = "src/backend/gpu/kernel_table.rs";
/// Its constants are per vendor and target by design (`WARP_SIZE`,
/// `FORGE_CUDA`/`FORGE_HIP`, `HAS_MMA_F16`): none goes into the table.
const VENDOR: &str = "kernels/vendor.h";
const UPDATE: &str = "FORGE_UPDATE_KERNEL_TABLE=1 cargo test --release --test kernel_table";
/// rustfmt's default line width: the generated file is rustfmt-clean.
const MAX_WIDTH: usize = 100;

/// Preprocessor configurations (name, extra flags) whose kernels the table
/// unites: kernels/vendor.h's default (CUDA, as the host sees it), NVIDIA
/// sm_90 (as NVRTC compiles for an H100: `HAS_MMA_F16` and its kernels),
/// and hipRTC.
const CONFIGS: &[(&str, &[&str])] =
    &[("CUDA", &[]), ("CUDA sm_90", &["-D__CUDA_ARCH__=900"]), ("HIP (hipRTC)", &["-D__HIPCC_RTC__"])];

/// A parameter's kind, as the generated `Param` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ptr,
    I32,
    F32,
    U64,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ptr => "Ptr",
            Kind::I32 => "I32",
            Kind::F32 => "F32",
            Kind::U64 => "U64",
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `forge.cu` preprocessed with `flags`.
fn preprocess(flags: &[&str]) -> String {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let kernels = root().join("kernels");
    let mut cmd = Command::new(&cxx);
    cmd.args(["-E", "-P", "-x", "c++", "-std=c++17"]).args(flags).arg("-I").arg(&kernels).arg(kernels.join("forge.cu"));
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cxx} (a C++ compiler, the preprocessor of the kernel table's generator; apt-get install g++, or set $CXX): {e}")
    });
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("preprocessed kernels are UTF-8")
}

/// The text from `open` (at `s[i]`) to its matching close bracket, both
/// excluded, and the index after the close.
fn balanced(s: &str, i: usize, open: u8, close: u8) -> Result<(&str, usize), String> {
    let b = s.as_bytes();
    if b.get(i) != Some(&open) {
        return Err(format!("expected `{}` at `{}`", open as char, excerpt(s, i)));
    }
    let mut depth = 0usize;
    for (j, &c) in b.iter().enumerate().skip(i) {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Ok((&s[i + 1..j], j + 1));
            }
        }
    }
    Err(format!("unbalanced `{}` at `{}`", open as char, excerpt(s, i)))
}

fn excerpt(s: &str, i: usize) -> String {
    s[i..].chars().take(80).collect()
}

fn skip_ws(s: &str, i: usize) -> usize {
    i + s[i..].len() - s[i..].trim_start().len()
}

fn ident_end(s: &str, i: usize) -> usize {
    i + s[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len() - i)
}

/// The kind of one parameter declaration (`const float* __restrict__ x`).
fn param_kind(decl: &str) -> Result<Kind, String> {
    if decl.contains('*') {
        return Ok(Kind::Ptr);
    }
    let words: Vec<&str> = decl.split_whitespace().filter(|w| !matches!(*w, "const" | "volatile" | "__restrict__")).collect();
    // the last word is the parameter's name (kernels name all of theirs)
    let base = match words.split_last() {
        Some((name, base)) if !base.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => base.join(" "),
        _ => return Err(format!("parameter `{decl}`: expected a type and a name")),
    };
    match base.as_str() {
        "int" | "i32" | "u32" | "unsigned" | "unsigned int" => Ok(Kind::I32),
        "float" => Ok(Kind::F32),
        "u64" | "unsigned long long" => Ok(Kind::U64),
        _ => Err(format!("parameter `{decl}`: type `{base}` has no `Arg` kind (pointer, int/i32/u32/unsigned, float, u64)")),
    }
}

/// Every `extern "C" __global__ void [__launch_bounds__(..)] name(params) {`
/// of preprocessed source, with its parameter kinds, in source order.
fn parse_kernels(src: &str) -> Result<Vec<(String, Vec<Kind>)>, String> {
    const MARK: &str = "extern \"C\" __global__";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = src[from..].find(MARK) {
        let start = from + k;
        let mut i = skip_ws(src, start + MARK.len());
        let word = |i: usize| &src[i..ident_end(src, i)];
        if word(i) != "void" {
            return Err(format!("expected `void` after {MARK}: `{}`", excerpt(src, start)));
        }
        i = skip_ws(src, i + 4);
        if word(i) == "__launch_bounds__" {
            i = skip_ws(src, i + "__launch_bounds__".len());
            i = skip_ws(src, balanced(src, i, b'(', b')')?.1);
        }
        let name = word(i);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected the kernel's name: `{}`", excerpt(src, start)));
        }
        i = skip_ws(src, i + name.len());
        let (params, after) = balanced(src, i, b'(', b')')?;
        if src.as_bytes().get(skip_ws(src, after)) != Some(&b'{') {
            return Err(format!("kernel {name}: expected its body `{{` after the parameters: `{}`", excerpt(src, start)));
        }
        let params = params.trim();
        let kinds = if params.is_empty() || params == "void" {
            Vec::new()
        } else {
            params.split(',').map(param_kind).collect::<Result<Vec<_>, _>>().map_err(|e| format!("kernel {name}: {e}"))?
        };
        out.push((name.to_string(), kinds));
        from = after;
    }
    Ok(out)
}

/// The union of the kernels of every configuration, by name.
fn kernels() -> BTreeMap<String, Vec<Kind>> {
    let mut all: BTreeMap<String, (Vec<Kind>, &str)> = BTreeMap::new();
    for &(config, flags) in CONFIGS {
        let src = preprocess(flags);
        let ks = parse_kernels(&src).unwrap_or_else(|e| panic!("kernels/forge.cu ({config}): {e}"));
        assert!(!ks.is_empty(), "kernels/forge.cu ({config}): no kernel found");
        let mut seen = std::collections::HashSet::new();
        for (name, kinds) in ks {
            assert!(seen.insert(name.clone()), "kernels/forge.cu ({config}): kernel {name} defined twice");
            if let Some((prev, prev_config)) = all.get(&name) {
                assert!(*prev == kinds, "kernel {name}: parameters {prev:?} ({prev_config}) but {kinds:?} ({config})");
            } else {
                all.insert(name, (kinds, config));
            }
        }
    }
    all.into_iter().map(|(n, (k, _))| (n, k)).collect()
}

/// A constant: value, the file that defines it, whether an `#ifndef`
/// guards it (a compile option may override the default).
struct Define {
    value: u64,
    file: String,
    guarded: bool,
}

/// The `#define NAME <decimal>` lines of one file's text, in order.
fn parse_defines(text: &str) -> Vec<(String, u64, bool)> {
    let mut out = Vec::new();
    let mut prev = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#define").filter(|r| r.starts_with([' ', '\t'])) {
            let rest = rest.trim_start();
            let end = ident_end(rest, 0);
            let (name, value) = (&rest[..end], rest[end..].trim());
            let value = value.split("//").next().unwrap().trim();
            let is_name = !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit());
            let skip = name == "WARP_SIZE" || name.starts_with("FORGE_");
            if is_name && !skip && !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) {
                let v: u64 = value.parse().unwrap_or_else(|_| panic!("#define {name} {value}: too large"));
                let guarded = prev.trim().strip_prefix("#ifndef").map(str::trim) == Some(name);
                out.push((name.to_string(), v, guarded));
            }
        }
        if !line.trim().is_empty() {
            prev = line;
        }
    }
    out
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            source_files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("cu" | "h" | "cuh")) {
            out.push(p);
        }
    }
}

/// Every integer constant of the kernel sources, by name.
fn defines() -> BTreeMap<String, Define> {
    let root = root();
    let mut files = Vec::new();
    source_files(&root.join("kernels"), &mut files);
    let mut files: Vec<String> =
        files.iter().map(|p| p.strip_prefix(&root).unwrap().to_str().unwrap().replace('\\', "/")).collect();
    files.sort();
    let mut all: BTreeMap<String, Define> = BTreeMap::new();
    for file in files {
        if file == VENDOR {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&file)).unwrap();
        for (name, value, guarded) in parse_defines(&text) {
            match all.get(&name) {
                Some(d) => assert!(
                    d.value == value,
                    "#define {name}: {} in {} but {value} in {file}; rename one (the table would have to pick)",
                    d.value,
                    d.file
                ),
                None => {
                    all.insert(name, Define { value, file: file.clone(), guarded });
                }
            }
        }
    }
    all
}

/// One `KERNELS` entry, laid out as rustfmt's defaults do (checked against
/// rustfmt 1.9 for names of 1 to 37 characters and 0 to 33 parameters): the
/// tuple on one line when its fields take at most 60 columns
/// (`fn_call_width`), else one field per line; the kinds likewise when the
/// bracketed list takes at most 60 (`array_width`), else filled into lines
/// of at most MAX_WIDTH (short items).
fn entry(name: &str, kinds: &[Kind]) -> String {
    let list = format!("[{}]", kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "));
    let fields = format!("\"{name}\", &{list}");
    // (at most 60 columns always fit in a line at these indents)
    if fields.len() <= 60 {
        return format!("    ({fields}),\n");
    }
    let mut s = format!("    (\n        \"{name}\",\n");
    if list.len() <= 60 {
        s += &format!("        &{list},\n");
    } else {
        s += "        &[\n";
        let indent = "            ";
        let mut cur = String::new();
        for k in kinds {
            let item = format!("{},", k.name());
            if !cur.is_empty() && indent.len() + cur.len() + 1 + item.len() > MAX_WIDTH {
                s += &format!("{indent}{cur}\n");
                cur.clear();
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur += &item;
        }
        s += &format!("{indent}{cur}\n        ],\n");
    }
    s += "    ),\n";
    s
}

/// The text of `src/backend/gpu/kernel_table.rs` for the current kernels.
fn generate() -> String {
    let defines = defines();
    let kernels = kernels();
    let mut s = String::new();
    s += "//! GENERATED from `kernels/` by `tests/kernel_table.rs`: do not edit by hand.\n";
    s += "//! Regenerate (and commit) with\n";
    s += &format!("//! `{UPDATE}`;\n");
    s += "//! that test fails while this file and the kernels disagree.\n";
    s += "//!\n";
    s += "//! The kernels' integer constants (`#define NAME <decimal>`; not the\n";
    s += "//! vendor-dependent ones: `WARP_SIZE`, `FORGE_*`, kernels/vendor.h's),\n";
    s += "//! and every kernel of the module with the kind of each parameter, which\n";
    s += "//! `Device::launch` checks every launch's arguments against.\n";
    for (name, d) in &defines {
        let note = if d.guarded { " (the default: `#ifndef`-guarded, a compile option may override it)" } else { "" };
        let doc = format!("/// `{name}` in {}{note}.", d.file);
        s += "\n";
        s += &wrap_doc(&doc);
        s += &format!("pub const {name}: usize = {};\n", d.value);
    }
    s += "\n";
    s += "/// The kind of a kernel parameter: which [`super::runtime::Arg`] passes it.\n";
    s += "#[derive(Debug, Clone, Copy, PartialEq, Eq)]\n";
    s += "pub enum Param {\n";
    s += "    /// A pointer (`T*`): `Arg::Ptr`.\n";
    s += "    Ptr,\n";
    s += "    /// `int`, `i32`, `u32`, `unsigned`: `Arg::I32`.\n";
    s += "    I32,\n";
    s += "    /// `float`: `Arg::F32`.\n";
    s += "    F32,\n";
    s += "    /// `u64`, `unsigned long long`: `Arg::U64`.\n";
    s += "    U64,\n";
    s += "}\n";
    s += "\n";
    s += "use Param::*;\n";
    s += "\n";
    s += &format!(
        "/// Every kernel of the module ({} in all; on every target: some exist only\n",
        kernels.len()
    );
    s += "/// on some, see `tests/kernel_table.rs`) with its parameters, sorted by name\n";
    s += "/// (binary search).\n";
    s += "pub const KERNELS: &[(&str, &[Param])] = &[\n";
    for (name, kinds) in &kernels {
        s += &entry(name, kinds);
    }
    s += "];\n";
    s
}

/// A `///` comment wrapped at MAX_WIDTH (at spaces).
fn wrap_doc(doc: &str) -> String {
    let text = doc.strip_prefix("/// ").unwrap();
    let mut out = String::new();
    let mut line = String::from("///");
    for w in text.split(' ') {
        if line.len() > 3 && line.len() + 1 + w.len() > MAX_WIDTH {
            out += &line;
            out.push('\n');
            line = String::from("///");
        }
        line.push(' ');
        line += w;
    }
    out += &line;
    out.push('\n');
    out
}

#[test]
fn committed_kernel_table_matches_the_kernels() {
    let fresh = generate();
    let path = root().join(TABLE);
    if std::env::var_os("FORGE_UPDATE_KERNEL_TABLE").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("wrote {TABLE}");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let (old, new): (Vec<&str>, Vec<&str>) = (committed.lines().collect(), fresh.lines().collect());
        let i = old.iter().zip(&new).position(|(a, b)| a != b).unwrap_or(old.len().min(new.len()));
        panic!(
            "{TABLE} is stale (the kernels' parameters or constants changed): regenerate it with `{UPDATE}` \
             and commit it\nfirst difference, line {}:\n  committed: {}\n  generated: {}",
            i + 1,
            old.get(i).unwrap_or(&"(end of file)"),
            new.get(i).unwrap_or(&"(end of file)")
        );
    }
}

#[test]
fn parser_reads_known_kernels() {
    use Kind::*;
    let ks = kernels();
    assert!(ks.len() > 100, "{} kernels: the macro-made ones (FOR_EACH_TYPE, MMVQ_KERNEL) are missing", ks.len());
    // kernels/norm.cu: rmsnorm(const float* x, const float* w, float* y, int dim, float eps, int add)
    assert_eq!(ks["rmsnorm"], [Ptr, Ptr, Ptr, I32, F32, I32]);
    // kernels/elementwise.cu: glu(float* g, const float* u, u64 n, int act)
    assert_eq!(ks["glu"], [Ptr, Ptr, U64, I32]);
    // macro-made (MATVEC_KERNEL through FOR_EACH_TYPE), with __launch_bounds__
    assert_eq!(ks["matvec_q4_0"], [Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32]);
    // only where HAS_MMA_F16 (NVIDIA sm_80+)
    assert!(ks.contains_key("attn_prefill_mma64") && ks.contains_key("attn_prefill_mma128"));

    let src = "extern \"C\" __global__ void __launch_bounds__((4 * 32), 5) k(const unsigned long long n, unsigned u,\n \
               const i8* __restrict__ p) { } extern \"C\" __global__ void z() {}";
    assert_eq!(parse_kernels(src).unwrap(), [("k".to_string(), vec![U64, I32, Ptr]), ("z".to_string(), vec![])]);
    assert!(parse_kernels("extern \"C\" __global__ void k(u16 h) {}").unwrap_err().contains("u16"));
    assert!(parse_kernels("extern \"C\" __global__ void k(int n);").is_err());

    let defs = parse_defines("#define A 8\n#define B (A * 2)\n #define C 3\n#ifndef D\n#define D 16\n#endif\n#define WARP_SIZE 32\n#define E(x) 1\n#define F 1.0f\n");
    assert_eq!(defs, [("A".to_string(), 8, false), ("D".to_string(), 16, true)]);
}
