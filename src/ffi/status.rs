//! Status codes, the thread-local last error, and the panic boundary every
//! export goes through.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::error::Error;

/// Result of every fallible call. Numbers are fixed forever: codes are never
/// renumbered or reused; a retired code stays listed as a comment.
/// Ranges: 1-9 caller errors, 10-19 model file, 20-29 resources,
/// 30-39 backends, 40-49 control flow, 99 internal.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum forge_status {
    /// Success.
    FORGE_OK = 0,
    /// An argument is invalid (bad token id, zero-length input, bad option).
    FORGE_ERR_INVALID_ARGUMENT = 1,
    /// A required pointer or handle is NULL.
    FORGE_ERR_NULL_POINTER = 2,
    /// An output buffer is too small; the size needed is written to the
    /// function's size out-parameter where it has one.
    FORGE_ERR_BUFFER_TOO_SMALL = 3,
    /// A string argument is not valid UTF-8.
    FORGE_ERR_INVALID_UTF8 = 4,
    /// The file could not be opened or read.
    FORGE_ERR_IO = 10,
    /// The file is not a valid GGUF model (corrupt, truncated, inconsistent).
    FORGE_ERR_INVALID_MODEL = 11,
    /// The model uses an architecture, tensor type or option this build lacks.
    FORGE_ERR_UNSUPPORTED = 12,
    /// The tokens do not fit the context (`n_ctx`); call forge_kv_reset.
    FORGE_ERR_CONTEXT_FULL = 20,
    /// An allocation failed (host or device).
    FORGE_ERR_OUT_OF_MEMORY = 21,
    /// An engine's KV block pool has no room for the batch: remove or
    /// truncate a sequence (`forge_engine_stats` has the numbers). Nothing
    /// was evaluated.
    FORGE_ERR_KV_EXHAUSTED = 22,
    /// The requested backend is not compiled in or has no usable device.
    FORGE_ERR_BACKEND_UNAVAILABLE = 30,
    /// A callback asked to stop (load progress returned false).
    FORGE_ERR_CANCELLED = 40,
    /// The handle is in use by another call: another thread, or a callback
    /// of a call on the same handle. Nothing was done; retry when that call
    /// has returned (see the thread-safety rule in the README).
    FORGE_ERR_BUSY = 41,
    /// A bug: a Rust panic was caught at the boundary. The handle involved
    /// should be freed and not used again.
    FORGE_ERR_INTERNAL = 99,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// An error on its way out of the boundary: status + message.
pub(crate) struct FfiError {
    pub status: forge_status,
    pub msg: String,
}

impl FfiError {
    pub fn new(status: forge_status, msg: impl Into<String>) -> Self {
        FfiError { status, msg: msg.into() }
    }
    pub fn null(what: &str) -> Self {
        FfiError::new(forge_status::FORGE_ERR_NULL_POINTER, format!("{what} is NULL"))
    }
    pub fn arg(msg: impl Into<String>) -> Self {
        FfiError::new(forge_status::FORGE_ERR_INVALID_ARGUMENT, msg)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        use forge_status::*;
        let status = match &e {
            Error::Io { .. } => FORGE_ERR_IO,
            Error::Gguf(_) | Error::Tokenizer(_) | Error::InvalidModel(_) => FORGE_ERR_INVALID_MODEL,
            Error::UnsupportedType { .. } | Error::Unsupported(_) => FORGE_ERR_UNSUPPORTED,
            Error::InvalidArgument(_) => FORGE_ERR_INVALID_ARGUMENT,
            Error::NotCompiled { .. } | Error::BackendUnavailable(_) => FORGE_ERR_BACKEND_UNAVAILABLE,
            Error::ContextFull(_) => FORGE_ERR_CONTEXT_FULL,
            Error::OutOfMemory(_) => FORGE_ERR_OUT_OF_MEMORY,
            Error::KvExhausted(_) => FORGE_ERR_KV_EXHAUSTED,
            Error::Cancelled => FORGE_ERR_CANCELLED,
        };
        FfiError::new(status, e.to_string())
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
    format!("internal error (Rust panic caught at the C boundary): {}", what.unwrap_or_else(|| "unknown".into()))
}

/// Run an export's body: a panic becomes FORGE_ERR_INTERNAL, an error becomes
/// its status; either way `forge_last_error()` says what happened.
pub(crate) fn boundary(name: &str, f: impl FnOnce() -> Result<(), FfiError>) -> forge_status {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => forge_status::FORGE_OK,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.msg));
            e.status
        }
        Err(p) => {
            set_last_error(&format!("{name}: {}", panic_message(&*p)));
            forge_status::FORGE_ERR_INTERNAL
        }
    }
}

/// The same boundary for exports that return a value instead of a status:
/// on error or panic they return `fallback` (and set the last error).
pub(crate) fn boundary_value<T>(name: &str, fallback: T, f: impl FnOnce() -> Result<T, FfiError>) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.msg));
            fallback
        }
        Err(p) => {
            set_last_error(&format!("{name}: {}", panic_message(&*p)));
            fallback
        }
    }
}
