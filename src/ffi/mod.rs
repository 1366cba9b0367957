//! The C ABI. Grows with the CPU engine issue; for now it exposes the
//! library version so that the header pipeline (cbindgen → include/) is in
//! place and checked from the start.

use std::ffi::c_char;

/// The library version as a NUL-terminated string, e.g. "0.1.0".
/// Thread-safe; the pointer is static and must not be freed.
#[no_mangle]
pub extern "C" fn forge_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}
