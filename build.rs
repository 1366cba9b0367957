//! Generates the C header from the `#[no_mangle]` exports with cbindgen into
//! OUT_DIR. The committed `include/rocmforge.h` is compared with it by
//! `tests/header.rs`; `make header` refreshes the committed copy.

fn main() {
    // A versioned SONAME, so installed programs bind to an ABI, not to
    // whatever librocmforge.so points at. Cargo's semver rule: below 1.0 the
    // minor number is the breaking one, so 0.2.x is librocmforge.so.0.2.
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let major = if major == "0" { format!("0.{minor}") } else { major };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librocmforge.so.{major}");
    }
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("rocmforge.h");
    // cbindgen parses the whole crate: any public item can reach the header
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml");
    match cbindgen::Builder::new().with_crate(&crate_dir).with_config(config).generate() {
        Ok(b) => {
            b.write_to_file(&out);
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
    println!("cargo:rustc-env=FORGE_GENERATED_HEADER={}", out.display());
}
