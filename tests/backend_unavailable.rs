//! On a machine without GPUs (CI), a build with the GPU features must say so
//! through status codes: `forge_device_count` and `forge_load` with the
//! CUDA or HIP backend return FORGE_ERR_BACKEND_UNAVAILABLE with the
//! runtime's reason in `forge_last_error()`, and AUTO falls back to the CPU.
//! (CI builds with `--features cuda,rocm` against Debian's libamdhip64 and no
//! NVIDIA driver; `make check-features` runs this. On a GPU machine the
//! GPU tests in device_ops.rs / gpu_model.rs apply instead.)
#![cfg(any(feature = "cuda", feature = "rocm"))]

mod common;

use common::last_error;

use std::ffi::CString;

use rocmforge::ffi::*;


fn check_unavailable(backend: forge_backend, name: &str) {
    let backend = backend as i32;
    let mut n = -1;
    let st = unsafe { forge_device_count(backend, &mut n) };
    assert_eq!(st, forge_status::FORGE_ERR_BACKEND_UNAVAILABLE, "{name}: device count {n}");
    assert_eq!(n, -1, "{name}: output written on error");
    let msg = last_error();
    println!("{name} device count: {msg}");
    assert!(msg.contains(name), "{name}: message does not name the runtime: {msg}");

    let path = CString::new(common::model(common::SMOLLM2).to_str().unwrap()).unwrap();
    let mut p = forge_load_default_params();
    p.backend = backend;
    let mut ctx = std::ptr::null_mut();
    assert_eq!(unsafe { forge_load(path.as_ptr(), &p, &mut ctx) }, forge_status::FORGE_ERR_BACKEND_UNAVAILABLE);
    assert!(ctx.is_null());
    let msg = last_error();
    println!("{name} load: {msg}");
    assert!(msg.contains(name), "{msg}");
}

#[cfg(feature = "rocm")]
#[test]
fn hip_without_device_is_a_status() {
    assert!(forge_backend_compiled(forge_backend::FORGE_BACKEND_HIP as i32));
    check_unavailable(forge_backend::FORGE_BACKEND_HIP, "HIP");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_without_driver_is_a_status() {
    assert!(forge_backend_compiled(forge_backend::FORGE_BACKEND_CUDA as i32));
    check_unavailable(forge_backend::FORGE_BACKEND_CUDA, "CUDA");
}

/// AUTO finds no device and runs on the CPU.
#[test]
fn auto_falls_back_to_cpu() {
    let path = CString::new(common::model(common::SMOLLM2).to_str().unwrap()).unwrap();
    let mut ctx = std::ptr::null_mut();
    assert_eq!(unsafe { forge_load(path.as_ptr(), std::ptr::null(), &mut ctx) }, forge_status::FORGE_OK, "{}", last_error());
    let mut buf = [0u8; 64];
    let mut len = 0usize;
    assert_eq!(unsafe { forge_ctx_backend(ctx, buf.as_mut_ptr() as *mut _, buf.len(), &mut len) }, forge_status::FORGE_OK);
    let desc = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert!(desc.starts_with("cpu"), "{desc}");
    unsafe { forge_free(ctx) };
}
