//! The committed C header equals what cbindgen generates from src/ffi now
//! (build.rs writes the fresh copy to OUT_DIR). Refresh with `make header`.

#[test]
fn committed_header_matches_cbindgen_output() {
    let fresh = std::fs::read_to_string(env!("FORGE_GENERATED_HEADER")).unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rocmforge.h")).unwrap();
    assert!(fresh == committed, "include/rocmforge.h is stale: run `make header` and commit it");
}
