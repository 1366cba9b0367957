//! `llama_log_set`: the library's messages go to the caller's callback with
//! ggml's levels, or to stderr when none is set (as llama.cpp does).

use std::ffi::{c_void, CString};

use parking_lot::Mutex;

use crate::types::ggml_log_callback;

pub const LEVEL_INFO: i32 = 2;
pub const LEVEL_WARN: i32 = 3;
pub const LEVEL_ERROR: i32 = 4;

struct Sink {
    cb: ggml_log_callback,
    user: usize,
}

static SINK: Mutex<Sink> = Mutex::new(Sink { cb: None, user: 0 });

pub fn set(cb: ggml_log_callback, user: *mut c_void) {
    *SINK.lock() = Sink { cb, user: user as usize };
}

pub fn get() -> (ggml_log_callback, *mut c_void) {
    let s = SINK.lock();
    (s.cb, s.user as *mut c_void)
}

/// One message (a newline is added, as llama.cpp's messages end in one).
pub fn log(level: i32, msg: &str) {
    let (cb, user) = get();
    let text = format!("{msg}\n");
    match cb {
        Some(f) => {
            let c = CString::new(text.replace('\0', " ")).expect("no NUL left");
            // SAFETY: the caller registered this callback for exactly this use.
            unsafe { f(level, c.as_ptr(), user) }
        }
        None if level >= LEVEL_WARN => eprint!("{text}"),
        None => {}
    }
}

macro_rules! info { ($($t:tt)*) => { $crate::log::log($crate::log::LEVEL_INFO, &format!($($t)*)) } }
macro_rules! warning { ($($t:tt)*) => { $crate::log::log($crate::log::LEVEL_WARN, &format!($($t)*)) } }
macro_rules! error { ($($t:tt)*) => { $crate::log::log($crate::log::LEVEL_ERROR, &format!($($t)*)) } }
pub(crate) use {error, info, warning};
