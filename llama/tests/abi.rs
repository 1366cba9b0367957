//! libllama's ABI against the pinned llama.h (the llama-cpp-python 0.3.36
//! sdist, fetched by scripts/fetch_llama_sdist.sh into
//! vendor/llama-cpp-python-0.3.36; `make test-llama` does both):
//!
//! - every struct of llama.h that crosses the boundary has the size and
//!   field offsets the C compiler gives it (a C file compiled against the
//!   sdist's own llama.h prints them);
//! - the built `libllama.so` exports every `llama_*` function that
//!   llama-cpp-python's `llama_cpp/llama_cpp.py` binds (all 253: its import
//!   fails at the first one missing), and the `ggml_*` helpers llama.cpp's
//!   examples call.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sdist() -> PathBuf {
    let d = root().join("vendor/llama-cpp-python-0.3.36");
    assert!(d.join(".complete").is_file(), "{} missing: run scripts/fetch_llama_sdist.sh (make test-llama does)", d.display());
    d
}

/// The built library: $LLAMA_LIB, else target/release/libllama.so.
fn lib() -> PathBuf {
    let p = std::env::var_os("LLAMA_LIB").map(PathBuf::from).unwrap_or_else(|| root().join("target/release/libllama.so"));
    assert!(p.is_file(), "{} missing: build it with `cargo build --release -p rocmforge-llama` (make test-llama does)", p.display());
    p
}

#[test]
fn struct_layouts_match_llama_h() {
    let ours = llama::types::layouts();
    let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"llama.h\"\nint main(void) {\n");
    for (name, _, fields) in &ours {
        c += &format!("    printf(\"{name} %zu\\n\", sizeof(struct {name}));\n");
        for (f, _) in fields {
            c += &format!("    printf(\"{name}.{f} %zu\\n\", offsetof(struct {name}, {f}));\n");
        }
    }
    c += "    return 0;\n}\n";
    let dir = std::env::temp_dir().join(format!("rocmforge-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("layout.c"), c).unwrap();
    let inc = sdist().join("vendor/llama.cpp");
    let st = Command::new("cc")
        .arg("-std=c11")
        .arg(format!("-I{}", inc.join("include").display()))
        .arg(format!("-I{}", inc.join("ggml/include").display()))
        .arg(dir.join("layout.c"))
        .arg("-o")
        .arg(dir.join("layout"))
        .status()
        .expect("a C compiler (cc)");
    assert!(st.success(), "layout.c did not compile against llama.h");
    let out = Command::new(dir.join("layout")).output().unwrap();
    let c_says: BTreeMap<String, usize> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let mut checked = 0;
    for (name, size, fields) in &ours {
        assert_eq!(c_says[*name], *size, "sizeof(struct {name})");
        for (f, off) in fields {
            assert_eq!(c_says[&format!("{name}.{f}")], *off, "offsetof({name}, {f})");
            checked += 1;
        }
    }
    println!("{} structs, {checked} fields: equal to llama.h", ours.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The names llama_cpp.py binds with `@ctypes_function("...")`.
fn bound_names() -> Vec<String> {
    let src = std::fs::read_to_string(sdist().join("llama_cpp/llama_cpp.py")).unwrap();
    let mut names = Vec::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find("@ctypes_function(") {
        rest = &rest[i + "@ctypes_function(".len()..];
        let q = rest.find('"').unwrap();
        let tail = &rest[q + 1..];
        let e = tail.find('"').unwrap();
        names.push(tail[..e].to_string());
    }
    names
}

#[test]
fn every_function_llama_cpp_python_binds_is_exported() {
    let names = bound_names();
    assert_eq!(names.len(), 253, "llama_cpp.py of 0.3.36 binds 253 functions");
    let lib = lib();
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("nm (binutils)");
    let syms: std::collections::BTreeSet<String> = String::from_utf8(out.stdout).unwrap().lines().filter_map(|l| l.split_whitespace().nth(2).map(str::to_string)).collect();
    let missing: Vec<&String> = names.iter().filter(|n| !syms.contains(*n)).collect();
    assert!(missing.is_empty(), "{} does not export {missing:?}", lib.display());
    for g in ["ggml_time_us", "ggml_time_ms", "ggml_time_init", "ggml_backend_load_all"] {
        assert!(syms.contains(g), "{g} not exported");
    }
    println!("{} exports all {} functions llama_cpp.py binds", lib.display(), names.len());
}
