//! The committed C header equals what cbindgen generates from src/ffi now
//! (build.rs writes the fresh copy to OUT_DIR). Refresh with `make header`.

#[test]
fn committed_header_matches_cbindgen_output() {
    let fresh = std::fs::read_to_string(env!("FORGE_GENERATED_HEADER")).unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rocmforge.h")).unwrap();
    assert!(fresh == committed, "include/rocmforge.h is stale: run `make header` and commit it");
}

/// The ranges the header states by hand (cbindgen.toml's after_includes)
/// are the ones the library enforces.
#[test]
fn header_constants_match_the_library() {
    let h = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rocmforge.h")).unwrap();
    let define = |name: &str| -> u64 {
        let line = h.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("{name} not in the header"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    use rocmforge::ffi::{FORGE_ABI_VERSION, FORGE_MAX_CTX, FORGE_MAX_THREADS, FORGE_TOP_MAX};
    assert_eq!(define("FORGE_ABI_VERSION"), FORGE_ABI_VERSION as u64);
    assert_eq!(define("FORGE_MAX_THREADS"), FORGE_MAX_THREADS as u64);
    assert_eq!(define("FORGE_MAX_CTX"), FORGE_MAX_CTX as u64);
    assert_eq!(define("FORGE_TOP_MAX"), FORGE_TOP_MAX as u64);
}
