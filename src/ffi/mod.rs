//! The C ABI (`include/rocmforge.h`, generated from this module by cbindgen).
//!
//! Conventions (rustls-ffi style):
//! - Every export runs inside one panic boundary ([`status::boundary`]); a
//!   Rust panic never unwinds into C, it becomes `FORGE_ERR_INTERNAL`.
//! - Every fallible call returns a [`forge_status`]; `forge_last_error()`
//!   then describes the failure (thread-local, valid until the next failing
//!   call on the same thread).
//! - NULL handles and pointers are checked and reported, never dereferenced.
//! - Out-parameters are written only on success (except the "size needed"
//!   of `FORGE_ERR_BUFFER_TOO_SMALL`). `**out` hands ownership to the caller;
//!   every `_load`/`_new` has its `_free`. `tests/ffi_contract.rs` checks
//!   this for every export the header declares.
//! - A (pointer, length) pair with length 0 may have a NULL pointer: it is
//!   an empty input or buffer, everywhere. A non-zero length with NULL is
//!   NULL_POINTER.
//! - Enums that come in (`forge_backend`) are read as `int32_t` and
//!   validated; an out-of-range value is INVALID_ARGUMENT, never trusted.
//!
//! Thread safety: the calls that run or change a context's sequence
//! (`forge_eval`, `forge_generate`, `forge_kv_reset`) and every call on a
//! `forge_sampler` take the handle exclusively; a second thread that comes
//! while one is inside gets FORGE_ERR_BUSY (a try-lock, never a wait and
//! never a corrupted sequence). The calls that only read the model
//! (tokenize, detokenize, model info, n_past, ...) run on any thread at any
//! time. `forge_free` / `forge_sampler_free` must not race with any other
//! call on the same handle. Different contexts, including clones that share
//! one model's weights, run in parallel. Functions without a handle are
//! thread-safe.

#![allow(non_camel_case_types, clippy::missing_safety_doc)]

mod status;

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};

use crate::backend;
use crate::engine::{BatchRow, Engine, EngineOptions, SeqId};
use crate::backend::Output;
use crate::generate::{self, GenerateOptions, StopReason};
use crate::backend::gpu::GpuKind;
use crate::model::{BackendChoice, LoadOptions, Model};
use crate::backend::Logits;
use crate::engine::Session;
use crate::sampler::{Sampler, SamplerParams};
pub use status::forge_status;
use status::{boundary, boundary_value, FfiError};

/// ABI version: bumped on any incompatible change to this header.
/// 2: `forge_load_params` gained `gpu_mem_budget` (its size changed).
/// 3: `forge_backend` is passed as `int32_t`; FORGE_ERR_BUSY and
///    FORGE_ERR_KV_EXHAUSTED; the engine (`forge_engine_*`, `forge_seq_*`).
pub const FORGE_ABI_VERSION: u32 = 3;

/// The most CPU worker threads `forge_load_params.n_threads` accepts.
pub const FORGE_MAX_THREADS: u32 = crate::model::MAX_THREADS as u32;
/// The largest `forge_load_params.n_ctx`.
pub const FORGE_MAX_CTX: u32 = crate::model::MAX_CTX as u32;

/// The most candidates per row `forge_engine_set_top_k` takes.
pub const FORGE_TOP_MAX: u32 = crate::backend::TOP_MAX as u32;

/// A loaded model plus one sequence's KV cache. Opaque.
pub struct forge_ctx {
    /// The shared model: read-only, so the model-only calls need no lock.
    model: Arc<Model>,
    /// The sequence. Taken with a try-lock: a second thread gets BUSY.
    /// None for an encoder (embeddings only: `forge_embed`).
    session: Mutex<Option<Session>>,
    /// The sequence's position after the last call that changed it, for
    /// `forge_n_past` without the lock (also from inside a callback).
    n_past: AtomicUsize,
    n_ctx: usize,
    arch: CString,
    chat_template: Option<CString>,
}

/// A sampler: settings, RNG state and penalty history. Opaque.
pub struct forge_sampler {
    sampler: Mutex<Sampler>,
}

/// Which compute backend `forge_load` uses. Passed as `int32_t` (a field of
/// `forge_load_params`, an argument of `forge_backend_compiled` and
/// `forge_device_count`): any other value is INVALID_ARGUMENT.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum forge_backend {
    /// The best compiled-in backend with a usable device; CPU otherwise.
    FORGE_BACKEND_AUTO = 0,
    FORGE_BACKEND_CPU = 1,
    /// NVIDIA GPU (`cuda` feature).
    FORGE_BACKEND_CUDA = 2,
    /// AMD GPU (`rocm` feature).
    FORGE_BACKEND_HIP = 3,
}

/// Load progress: `progress` in [0, 1]; return false to cancel the load.
pub type forge_progress_cb = Option<unsafe extern "C" fn(progress: f32, user_data: *mut c_void) -> bool>;

/// Parameters for `forge_load`. Get defaults from
/// `forge_load_default_params()` and change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct forge_load_params {
    /// CPU worker threads, 0..=FORGE_MAX_THREADS. Default 0 = one per core.
    pub n_threads: u32,
    /// Context size (KV cache positions), 0..=FORGE_MAX_CTX. Default 0 =
    /// min(n_ctx_train, 4096). A KV cache the host cannot allocate is
    /// OUT_OF_MEMORY.
    pub n_ctx: u32,
    /// A `forge_backend` value. Default FORGE_BACKEND_AUTO.
    pub backend: i32,
    /// GPU index for the CUDA/HIP backends, >= 0. Default 0.
    pub gpu_index: i32,
    /// Called during loading; default NULL.
    pub progress: forge_progress_cb,
    /// Passed to `progress`. Default NULL.
    pub progress_user_data: *mut c_void,
    /// GPU backends: bytes of device memory this model may use for weights,
    /// KV cache and scratch. Default 0 = the free device memory less 5%.
    /// Exceeding it fails the load or context with OUT_OF_MEMORY.
    pub gpu_mem_budget: u64,
}

/// Sampler settings; defaults from `forge_sampler_default_params()`.
/// Ranges (anything else is INVALID_ARGUMENT from `forge_sampler_new`):
/// temperature, repeat_penalty (> 0), frequency_penalty and
/// presence_penalty finite; top_p and min_p in [0, 1]; top_k,
/// penalty_last_n and seed any value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct forge_sampler_params {
    /// <= 0 selects greedy (argmax). Default 0.8.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off. Default 40.
    pub top_k: u32,
    /// Nucleus sampling; 1.0 = off. Default 0.95.
    pub top_p: f32,
    /// Drop tokens below min_p × p(best); 0 = off. Default 0.05.
    pub min_p: f32,
    /// Repetition penalty over the window; 1.0 = off. Default 1.0.
    pub repeat_penalty: f32,
    /// Per-occurrence penalty; 0 = off. Default 0.
    pub frequency_penalty: f32,
    /// Once-per-token penalty; 0 = off. Default 0.
    pub presence_penalty: f32,
    /// Penalty window in tokens; 0 = no penalties. Default 64.
    pub penalty_last_n: u32,
    /// RNG seed: same seed and inputs give the same tokens. Default 0x5EED.
    pub seed: u64,
}

/// Model facts. Strings are owned by the context and valid until it is freed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct forge_model_info {
    /// `general.architecture`, e.g. "llama".
    pub arch: *const c_char,
    pub n_vocab: i32,
    pub n_ctx_train: i32,
    /// This context's size.
    pub n_ctx: i32,
    pub n_layer: i32,
    pub n_embd: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    /// Special token ids; -1 where the model has none.
    pub bos: i32,
    pub eos: i32,
    pub eot: i32,
    pub pad: i32,
    pub unk: i32,
    /// Whether `forge_tokenize(add_special = true)` adds BOS / EOS.
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.chat_template` (Jinja text), or NULL if the file has none.
    pub chat_template: *const c_char,
}

/// Streaming callback of `forge_generate`: the token id and the UTF-8 text
/// it completes (`piece_len` may be 0 while a multi-byte character or a
/// possible stop string is held back). A final call with token -1 delivers
/// held-back text. Return false to stop generating.
pub type forge_token_cb =
    Option<unsafe extern "C" fn(token: i32, piece: *const c_char, piece_len: usize, user_data: *mut c_void) -> bool>;

/// Why `forge_generate` stopped.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum forge_stop_reason {
    /// EOS or end-of-turn token (included in the output ids, not the text).
    FORGE_STOP_EOG = 0,
    FORGE_STOP_MAX_TOKENS = 1,
    FORGE_STOP_STRING = 2,
    FORGE_STOP_CALLBACK = 3,
    FORGE_STOP_CONTEXT_FULL = 4,
}

/// Parameters for `forge_generate`; defaults from
/// `forge_generate_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct forge_generate_params {
    /// Most tokens to generate. Default 128.
    pub max_tokens: u32,
    /// Stop strings (UTF-8, NUL-terminated); may be NULL when n_stop is 0.
    pub stop: *const *const c_char,
    pub n_stop: usize,
    /// Called for every token; default NULL.
    pub on_token: forge_token_cb,
    pub user_data: *mut c_void,
}

// ---- helpers -----------------------------------------------------------------

fn ctx_ref<'a>(p: *const forge_ctx) -> Result<&'a forge_ctx, FfiError> {
    // SAFETY: non-NULL handles come from forge_load/forge_ctx_clone_session
    // and are only ever shared (&): the sequence behind them is a Mutex.
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::null("ctx"))
}

fn busy(what: &str) -> FfiError {
    FfiError::new(
        forge_status::FORGE_ERR_BUSY,
        format!("the {what} is in use by another call (another thread, or a callback of a call on it): one call at a time per {what}"),
    )
}

/// The context's sequence, exclusively, or BUSY; UNSUPPORTED for an
/// encoder, which has none.
fn session(c: &forge_ctx) -> Result<MappedMutexGuard<'_, Session>, FfiError> {
    let g = c.session.try_lock().ok_or_else(|| busy("ctx"))?;
    MutexGuard::try_map(g, |s| s.as_mut()).map_err(|_| FfiError::from(crate::engine::encoder_error(&c.model)))
}

/// The sampler behind a handle, exclusively, or NULL_POINTER / BUSY.
fn sampler<'a>(p: *const forge_sampler) -> Result<MutexGuard<'a, Sampler>, FfiError> {
    // SAFETY: non-NULL handles come from forge_sampler_new.
    let s = unsafe { p.as_ref() }.ok_or_else(|| FfiError::null("sampler"))?;
    s.sampler.try_lock().ok_or_else(|| busy("sampler"))
}

/// Free a handle made by `Box::into_raw` (every `_load` / `_new`); NULL is
/// a no-op.
unsafe fn free_handle<T>(name: &str, p: *mut T) {
    let _ = boundary(name, || {
        if !p.is_null() {
            // SAFETY: non-NULL handles come from Box::into_raw of a T.
            drop(Box::from_raw(p));
        }
        Ok(())
    });
}

/// An output pointer that must not be NULL.
fn out_ptr<T>(p: *mut T, what: &str) -> Result<*mut T, FfiError> {
    if p.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(p)
    }
}

/// A caller's (ptr, len) slice; NULL is allowed only when len is 0.
fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: the caller promises `len` readable elements at `p`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

fn token_ids(ctx: &forge_ctx, tokens: &[i32]) -> Result<Vec<u32>, FfiError> {
    vocab_ids(ctx.model.cfg.n_vocab, tokens)
}

/// Token ids from C, each checked against the vocabulary.
fn vocab_ids(n_vocab: usize, tokens: &[i32]) -> Result<Vec<u32>, FfiError> {
    tokens
        .iter()
        .map(|&t| {
            if t >= 0 && (t as usize) < n_vocab {
                Ok(t as u32)
            } else {
                Err(FfiError::arg(format!("token id {t} is outside the vocab (0..{n_vocab})")))
            }
        })
        .collect()
}

/// Copy items to a caller's (buf, cap) with the size in `*n_out`: the data
/// and the size on success; only the size on BUFFER_TOO_SMALL (the size
/// query: `cap` 0, `buf` NULL); nothing at all on NULL_POINTER (`buf` NULL
/// with a non-zero `cap`, or `n_out` NULL).
fn write_out<T: Copy>(items: &[T], buf: *mut T, cap: usize, n_out: *mut usize, what: &str) -> Result<(), FfiError> {
    let n_out = out_ptr(n_out, "n_out")?;
    if cap > 0 {
        out_ptr(buf, what)?;
    }
    if items.len() > cap {
        // SAFETY: checked non-NULL above.
        unsafe { *n_out = items.len() };
        return Err(FfiError::new(
            forge_status::FORGE_ERR_BUFFER_TOO_SMALL,
            format!("{what} holds {cap}, {} needed (the size is in *n_out)", items.len()),
        ));
    }
    if !items.is_empty() {
        let buf = out_ptr(buf, what)?;
        // SAFETY: cap >= len items are writable at buf (the caller's promise).
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len()) };
    }
    // SAFETY: checked non-NULL above.
    unsafe { *n_out = items.len() };
    Ok(())
}

fn write_bytes(bytes: &[u8], buf: *mut c_char, cap: usize, n_out: *mut usize) -> Result<(), FfiError> {
    write_out(bytes, buf as *mut u8, cap, n_out, "buf")
}

/// A context on `model` with a sequence of `n_ctx` positions (0: the
/// default); an encoder's has none (its n_ctx is its context_length).
fn new_ctx(model: Arc<Model>, n_ctx: usize) -> Result<Box<forge_ctx>, FfiError> {
    let session = if model.is_encoder() { None } else { Some(Session::new(Arc::clone(&model), n_ctx)?) };
    let arch = CString::new(model.cfg.arch.name).unwrap_or_default();
    let chat_template = model.file.chat_template().ok().flatten().and_then(|t| CString::new(t).ok());
    let n_ctx = session.as_ref().map_or(model.cfg.n_ctx_train, |s| s.n_ctx());
    Ok(Box::new(forge_ctx { model, session: Mutex::new(session), n_past: AtomicUsize::new(0), n_ctx, arch, chat_template }))
}

/// A `forge_backend` from the integer a caller passed, validated.
fn backend_from(v: i32) -> Result<forge_backend, FfiError> {
    use forge_backend::*;
    Ok(match v {
        0 => FORGE_BACKEND_AUTO,
        1 => FORGE_BACKEND_CPU,
        2 => FORGE_BACKEND_CUDA,
        3 => FORGE_BACKEND_HIP,
        _ => return Err(FfiError::arg(format!("backend {v} is not a forge_backend (0 AUTO, 1 CPU, 2 CUDA, 3 HIP)"))),
    })
}

// ---- version and errors ------------------------------------------------------

/// The library version, e.g. "0.2.0". Static; thread-safe; do not free.
#[no_mangle]
pub extern "C" fn forge_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The ABI version (FORGE_ABI_VERSION of the build). Bindings compare it with
/// the version they were written for and refuse to run on a mismatch.
#[no_mangle]
pub extern "C" fn forge_abi_version() -> u32 {
    FORGE_ABI_VERSION
}

/// Message for the last failing call on this thread ("" if none yet).
/// Valid until the next failing call on this thread; do not free.
#[no_mangle]
pub extern "C" fn forge_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// Whether `backend` (a `forge_backend` value) is compiled into this library
/// (CPU always is; AUTO is always "available"). False, with a message in
/// `forge_last_error()`, for a value that is not a `forge_backend`.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn forge_backend_compiled(backend: i32) -> bool {
    boundary_value("forge_backend_compiled", false, || {
        Ok(match backend_from(backend)? {
            forge_backend::FORGE_BACKEND_AUTO | forge_backend::FORGE_BACKEND_CPU => true,
            forge_backend::FORGE_BACKEND_CUDA => backend::cuda::COMPILED,
            forge_backend::FORGE_BACKEND_HIP => backend::hip::COMPILED,
        })
    })
}

fn gpu_kind(backend: forge_backend) -> Option<GpuKind> {
    match backend {
        forge_backend::FORGE_BACKEND_CUDA => Some(GpuKind::Cuda),
        forge_backend::FORGE_BACKEND_HIP => Some(GpuKind::Hip),
        _ => None,
    }
}

fn backend_choice(backend: i32, gpu_index: i32) -> Result<BackendChoice, FfiError> {
    let backend = backend_from(backend)?;
    Ok(match (backend, gpu_kind(backend)) {
        (forge_backend::FORGE_BACKEND_CPU, _) => BackendChoice::Cpu,
        (_, Some(kind)) => {
            if gpu_index < 0 {
                return Err(FfiError::arg(format!("gpu_index {gpu_index} is negative")));
            }
            BackendChoice::Gpu(kind, gpu_index as usize)
        }
        _ => BackendChoice::Auto,
    })
}

/// Number of devices of a GPU backend (a `forge_backend` value) that this
/// process can use. CPU and AUTO answer 1. Errors: NULL_POINTER;
/// INVALID_ARGUMENT for a value that is not a `forge_backend`;
/// BACKEND_UNAVAILABLE when the backend is not compiled in or its
/// driver/runtime reports no usable device (`forge_last_error()` has the
/// driver's words). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn forge_device_count(backend: i32, out: *mut i32) -> forge_status {
    boundary("forge_device_count", || {
        let out = out_ptr(out, "out")?;
        let n = match gpu_kind(backend_from(backend)?) {
            Some(kind) => kind.device_count()?,
            None => 1,
        };
        *out = n as i32;
        Ok(())
    })
}

/// Where a context runs, as text: "cpu (N threads)" or e.g. "cuda:0 NVIDIA
/// H100 80GB HBM3 (sm_90)" (not NUL-terminated; `*n_out` receives the
/// length, also on BUFFER_TOO_SMALL). Errors: NULL_POINTER, BUFFER_TOO_SMALL.
#[no_mangle]
pub unsafe extern "C" fn forge_ctx_backend(ctx: *const forge_ctx, buf: *mut c_char, cap: usize, n_out: *mut usize) -> forge_status {
    boundary("forge_ctx_backend", || {
        let c = ctx_ref(ctx)?;
        write_bytes(c.model.backend_description().as_bytes(), buf, cap, n_out)
    })
}

// ---- loading -----------------------------------------------------------------

/// Default load parameters (see each field). Thread-safe.
#[no_mangle]
pub extern "C" fn forge_load_default_params() -> forge_load_params {
    forge_load_params {
        n_threads: 0,
        n_ctx: 0,
        backend: forge_backend::FORGE_BACKEND_AUTO as i32,
        gpu_index: 0,
        progress: None,
        progress_user_data: std::ptr::null_mut(),
        gpu_mem_budget: 0,
    }
}

/// Load a GGUF model and create a context for one sequence (an embedding
/// encoder's context has none: `forge_embed` only, see `forge_is_encoder`;
/// it runs on the CPU whatever `backend` says). `params` may be NULL for
/// defaults. On success `*out` owns the context: free it with
/// `forge_free`. Errors: NULL_POINTER, INVALID_ARGUMENT (a parameter out of
/// its range, see `forge_load_params`), INVALID_UTF8, IO (also a path that
/// is a directory or not a regular file), INVALID_MODEL, UNSUPPORTED,
/// BACKEND_UNAVAILABLE, OUT_OF_MEMORY, CANCELLED. A corrupt file fails
/// before anything is allocated from its counts. Thread-safe (each call
/// loads its own model).
#[no_mangle]
pub unsafe extern "C" fn forge_load(path: *const c_char, params: *const forge_load_params, out: *mut *mut forge_ctx) -> forge_status {
    boundary("forge_load", || {
        if path.is_null() {
            return Err(FfiError::null("path"));
        }
        let out = out_ptr(out, "out")?;
        let path = CStr::from_ptr(path)
            .to_str()
            .map_err(|_| FfiError::new(forge_status::FORGE_ERR_INVALID_UTF8, "path is not valid UTF-8"))?;
        let p = if params.is_null() { forge_load_default_params() } else { *params };
        let backend = backend_choice(p.backend, p.gpu_index)?;
        if p.n_threads > FORGE_MAX_THREADS {
            return Err(FfiError::arg(format!("n_threads {} is more than FORGE_MAX_THREADS ({FORGE_MAX_THREADS}); 0 = one per core", p.n_threads)));
        }
        if p.n_ctx > FORGE_MAX_CTX {
            return Err(FfiError::arg(format!("n_ctx {} is more than FORGE_MAX_CTX ({FORGE_MAX_CTX})", p.n_ctx)));
        }
        let mut cb = |f: f32| match p.progress {
            // SAFETY: the caller supplied this callback and its user data.
            Some(cb) => unsafe { cb(f, p.progress_user_data) },
            None => true,
        };
        let model = Model::load(path, LoadOptions {
                n_threads: p.n_threads as usize,
                progress: Some(&mut cb),
                backend,
                gpu_mem_budget: p.gpu_mem_budget as usize,
            })?;
        *out = Box::into_raw(new_ctx(model, p.n_ctx as usize)?);
        Ok(())
    })
}

/// A new context on the same loaded model (weights shared, not copied) with
/// its own empty KV cache of the same size. Free it with `forge_free`; the
/// model stays loaded until its last context is freed. Reads only the model,
/// so it may run while `ctx` is busy; the clone is independent of it.
#[no_mangle]
pub unsafe extern "C" fn forge_ctx_clone_session(ctx: *const forge_ctx, out: *mut *mut forge_ctx) -> forge_status {
    boundary("forge_ctx_clone_session", || {
        let c = ctx_ref(ctx)?;
        let out = out_ptr(out, "out")?;
        *out = Box::into_raw(new_ctx(Arc::clone(&c.model), c.n_ctx)?);
        Ok(())
    })
}

/// Free a context. NULL is a no-op. Do not use `ctx` afterwards, and do not
/// call this while another call on `ctx` runs (it cannot be detected).
#[no_mangle]
pub unsafe extern "C" fn forge_free(ctx: *mut forge_ctx) {
    free_handle("forge_free", ctx);
}

// ---- evaluation --------------------------------------------------------------

/// Append `n_tokens` tokens at the current position. When `logits_out` is not
/// NULL, write the last position's logits there (`logits_len` must be at
/// least n_vocab). Nothing is appended on error. Errors: NULL_POINTER,
/// INVALID_ARGUMENT (bad token id, n_tokens 0), BUFFER_TOO_SMALL,
/// CONTEXT_FULL, BUSY (another call on `ctx` is running).
#[no_mangle]
pub unsafe extern "C" fn forge_eval(
    ctx: *mut forge_ctx,
    tokens: *const i32,
    n_tokens: usize,
    logits_out: *mut f32,
    logits_len: usize,
) -> forge_status {
    boundary("forge_eval", || {
        let c = ctx_ref(ctx)?;
        if n_tokens == 0 {
            return Err(FfiError::arg("n_tokens is 0"));
        }
        let ids = token_ids(c, slice(tokens, n_tokens, "tokens")?)?;
        let n_vocab = c.model.cfg.n_vocab;
        if !logits_out.is_null() && logits_len < n_vocab {
            return Err(FfiError::new(
                forge_status::FORGE_ERR_BUFFER_TOO_SMALL,
                format!("logits_len {logits_len} < n_vocab {n_vocab}"),
            ));
        }
        let mut s = session(c)?;
        let r = if logits_out.is_null() {
            s.eval_into(&ids, Logits::None, &mut [])
        } else {
            // straight into the caller's buffer: no copy of n_vocab floats per call
            let out = std::slice::from_raw_parts_mut(logits_out, n_vocab);
            s.eval_into(&ids, Logits::Last, out)
        };
        c.n_past.store(s.pos(), Ordering::Release);
        Ok(r?)
    })
}

/// Keep the first `n_keep` positions of the KV cache (0 clears everything).
/// Errors: NULL_POINTER, INVALID_ARGUMENT (n_keep past the current
/// position), BUSY.
#[no_mangle]
pub unsafe extern "C" fn forge_kv_reset(ctx: *mut forge_ctx, n_keep: usize) -> forge_status {
    boundary("forge_kv_reset", || {
        let c = ctx_ref(ctx)?;
        let mut s = session(c)?;
        s.kv_keep(n_keep)?;
        c.n_past.store(s.pos(), Ordering::Release);
        Ok(())
    })
}

/// Positions currently in the KV cache; 0 for NULL. Never busy: while a
/// call on `ctx` runs, this is the position before that call.
#[no_mangle]
pub unsafe extern "C" fn forge_n_past(ctx: *const forge_ctx) -> usize {
    boundary_value("forge_n_past", 0, || Ok(ctx_ref(ctx)?.n_past.load(Ordering::Acquire)))
}

// ---- embeddings --------------------------------------------------------------

/// How `forge_embed` pools per-token hidden states (llama.cpp's numbers).
/// Passed as `int32_t`; any other value is INVALID_ARGUMENT.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum forge_pooling {
    /// The model's own (`{arch}.pooling_type`; mean when the file says none).
    FORGE_POOLING_DEFAULT = -1,
    /// No pooling: one `n_embd` row per token.
    FORGE_POOLING_NONE = 0,
    /// The mean over the input's tokens.
    FORGE_POOLING_MEAN = 1,
    /// The first token's ([CLS]).
    FORGE_POOLING_CLS = 2,
    /// The last token's.
    FORGE_POOLING_LAST = 3,
}

/// The pooling `forge_embed` applies for FORGE_POOLING_DEFAULT (a
/// `forge_pooling` value, never DEFAULT); -1 if ctx is NULL.
#[no_mangle]
pub unsafe extern "C" fn forge_pooling_type(ctx: *const forge_ctx) -> i32 {
    boundary_value("forge_pooling_type", -1, || Ok(ctx_ref(ctx)?.model.default_pooling().as_llama()))
}

/// Whether the model is an embedding-only encoder (`nomic-bert`): then
/// `forge_embed` is its one computation, and `forge_eval`,
/// `forge_generate`, `forge_kv_reset` and `forge_engine_new` are
/// UNSUPPORTED. false if ctx is NULL.
#[no_mangle]
pub unsafe extern "C" fn forge_is_encoder(ctx: *const forge_ctx) -> bool {
    boundary_value("forge_is_encoder", false, || Ok(ctx_ref(ctx)?.model.is_encoder()))
}

/// The embedding of one input of `n_tokens` token ids (from
/// `forge_tokenize` with `add_special` true: an encoder expects its [CLS]
/// and [SEP]): the final hidden states pooled by `pooling` (a
/// `forge_pooling` value) and, if `normalize`, scaled to unit L2 length.
/// `n_embd` floats, or `n_tokens * n_embd` with FORGE_POOLING_NONE (each
/// row normalized), written to `out` (`cap` floats) with the count in
/// `*n_out`; `cap` 0 with `out` NULL asks the size (BUFFER_TOO_SMALL with
/// `*n_out` set).
///
/// An encoder runs its bidirectional encoder pass on the CPU (whatever
/// backend it was loaded for); its input is at most n_ctx_train tokens. A
/// decoder runs the input through an engine of its own (the CPU backend
/// only) and does not touch the context's sequence. Reads only the model:
/// runs on any thread, also while another call on `ctx` is running.
/// Errors: NULL_POINTER, INVALID_ARGUMENT (n_tokens 0, a token outside
/// the vocab, an input longer than an encoder's context, a bad pooling),
/// BUFFER_TOO_SMALL, UNSUPPORTED (hidden states on a GPU backend),
/// OUT_OF_MEMORY.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn forge_embed(
    ctx: *const forge_ctx,
    tokens: *const i32,
    n_tokens: usize,
    pooling: i32,
    normalize: bool,
    out: *mut f32,
    cap: usize,
    n_out: *mut usize,
) -> forge_status {
    boundary("forge_embed", || {
        let c = ctx_ref(ctx)?;
        out_ptr(n_out, "n_out")?;
        if n_tokens == 0 {
            return Err(FfiError::arg("n_tokens is 0"));
        }
        let pooling = match pooling {
            -1 => None,
            p => Some(crate::model::Pooling::from_llama(p as i64).ok_or_else(|| {
                FfiError::arg(format!("pooling {p} is not a forge_pooling (-1 DEFAULT, 0 NONE, 1 MEAN, 2 CLS, 3 LAST)"))
            })?),
        };
        let ids = token_ids(c, slice(tokens, n_tokens, "tokens")?)?;
        let max = c.model.max_embed_tokens();
        if ids.len() > max {
            return Err(FfiError::arg(format!("n_tokens {} is more than the model's {max}", ids.len())));
        }
        // the size is known before the pass: a size query costs nothing
        let d = c.model.cfg.n_embd;
        let need = if pooling.unwrap_or_else(|| c.model.default_pooling()) == crate::model::Pooling::None { ids.len() * d } else { d };
        if cap < need {
            return write_out(&vec![0f32; need], out, cap, n_out, "out");
        }
        let v = c.model.embed(&ids, pooling, normalize)?;
        write_out(&v, out, cap, n_out, "out")
    })
}

// ---- tokens ------------------------------------------------------------------

/// Number of tokens in the vocabulary; -1 if ctx is NULL.
#[no_mangle]
pub unsafe extern "C" fn forge_n_vocab(ctx: *const forge_ctx) -> i32 {
    boundary_value("forge_n_vocab", -1, || Ok(ctx_ref(ctx)?.model.cfg.n_vocab as i32))
}

/// Tokenize `text_len` bytes of UTF-8 `text`. `add_special`: BOS/EOS as the
/// model's metadata asks; `parse_special`: control tokens written in the
/// text become single ids. `*n_out` receives the count; if `out_cap` is too
/// small the call fails with BUFFER_TOO_SMALL and `*n_out` is the size
/// needed (`out` NULL with `out_cap` 0 asks for the size). `text` may be
/// NULL when `text_len` is 0. Errors: NULL_POINTER, INVALID_UTF8,
/// BUFFER_TOO_SMALL.
#[no_mangle]
pub unsafe extern "C" fn forge_tokenize(
    ctx: *const forge_ctx,
    text: *const c_char,
    text_len: usize,
    add_special: bool,
    parse_special: bool,
    out: *mut i32,
    out_cap: usize,
    n_out: *mut usize,
) -> forge_status {
    boundary("forge_tokenize", || {
        let c = ctx_ref(ctx)?;
        out_ptr(n_out, "n_out")?;
        let bytes = slice(text as *const u8, text_len, "text")?;
        let text = std::str::from_utf8(bytes).map_err(|e| FfiError::new(forge_status::FORGE_ERR_INVALID_UTF8, format!("text: {e}")))?;
        let ids: Vec<i32> = c.model.tokenizer.encode(text, add_special, parse_special).into_iter().map(|t| t as i32).collect();
        write_out(&ids, out, out_cap, n_out, "out")
    })
}

/// The bytes of one token (not NUL-terminated; may be part of a multi-byte
/// UTF-8 character). Control tokens render as their text only when
/// `special`. `*n_out` receives the length (also on BUFFER_TOO_SMALL).
#[no_mangle]
pub unsafe extern "C" fn forge_token_to_piece(
    ctx: *const forge_ctx,
    token: i32,
    special: bool,
    buf: *mut c_char,
    cap: usize,
    n_out: *mut usize,
) -> forge_status {
    boundary("forge_token_to_piece", || {
        let c = ctx_ref(ctx)?;
        let id = token_ids(c, &[token])?[0];
        let piece = c.model.tokenizer.token_to_piece(id, special).unwrap_or_default();
        write_bytes(piece, buf, cap, n_out)
    })
}

/// Detokenize a whole sequence into `buf` (UTF-8, not NUL-terminated).
/// `*n_out` receives the length (also on BUFFER_TOO_SMALL).
#[no_mangle]
pub unsafe extern "C" fn forge_detokenize(
    ctx: *const forge_ctx,
    tokens: *const i32,
    n_tokens: usize,
    special: bool,
    buf: *mut c_char,
    cap: usize,
    n_out: *mut usize,
) -> forge_status {
    boundary("forge_detokenize", || {
        let c = ctx_ref(ctx)?;
        let ids = token_ids(c, slice(tokens, n_tokens, "tokens")?)?;
        let bytes = c.model.tokenizer.decode(&ids, special)?;
        write_bytes(&bytes, buf, cap, n_out)
    })
}

/// Model facts (see `forge_model_info`). Errors: NULL_POINTER.
#[no_mangle]
pub unsafe extern "C" fn forge_get_model_info(ctx: *const forge_ctx, out: *mut forge_model_info) -> forge_status {
    boundary("forge_get_model_info", || {
        let c = ctx_ref(ctx)?;
        let out = out_ptr(out, "out")?;
        let m = &c.model;
        let v = &m.tokenizer.vocab;
        let id = |x: Option<u32>| x.map_or(-1, |i| i as i32);
        *out = forge_model_info {
            arch: c.arch.as_ptr(),
            n_vocab: m.cfg.n_vocab as i32,
            n_ctx_train: m.cfg.n_ctx_train.min(i32::MAX as usize) as i32,
            n_ctx: c.n_ctx as i32,
            n_layer: m.cfg.n_layer as i32,
            n_embd: m.cfg.n_embd as i32,
            n_head: m.cfg.n_head as i32,
            n_head_kv: m.cfg.n_head_kv as i32,
            bos: id(v.special.bos),
            eos: id(v.special.eos),
            eot: id(v.special.eot),
            pad: id(v.special.pad),
            unk: id(v.special.unk),
            add_bos: v.add_bos,
            add_eos: v.add_eos,
            chat_template: c.chat_template.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
        };
        Ok(())
    })
}

/// Whether `token` ends generation (EOS or end-of-turn). False for NULL ctx.
#[no_mangle]
pub unsafe extern "C" fn forge_token_is_eog(ctx: *const forge_ctx, token: i32) -> bool {
    boundary_value("forge_token_is_eog", false, || {
        let c = ctx_ref(ctx)?;
        Ok(token >= 0 && c.model.tokenizer.vocab.is_eog(token as u32))
    })
}

// ---- sampling and generation -------------------------------------------------

/// Default sampler parameters (see each field). Thread-safe.
#[no_mangle]
pub extern "C" fn forge_sampler_default_params() -> forge_sampler_params {
    let d = SamplerParams::default();
    forge_sampler_params {
        temperature: d.temperature,
        top_k: d.top_k as u32,
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        frequency_penalty: d.frequency_penalty,
        presence_penalty: d.presence_penalty,
        penalty_last_n: d.penalty_last_n as u32,
        seed: d.seed,
    }
}

/// Create a sampler (`params` NULL = defaults). Free with `forge_sampler_free`.
/// Errors: NULL_POINTER, INVALID_ARGUMENT (NaN or out-of-range settings).
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_new(params: *const forge_sampler_params, out: *mut *mut forge_sampler) -> forge_status {
    boundary("forge_sampler_new", || {
        let out = out_ptr(out, "out")?;
        let p = if params.is_null() { forge_sampler_default_params() } else { *params };
        let ok = p.temperature.is_finite()
            && (0.0..=1.0).contains(&p.top_p)
            && (0.0..=1.0).contains(&p.min_p)
            && p.repeat_penalty.is_finite()
            && p.repeat_penalty > 0.0
            && p.frequency_penalty.is_finite()
            && p.presence_penalty.is_finite();
        if !ok {
            return Err(FfiError::arg(format!("invalid sampler parameters: {p:?}")));
        }
        let sp = SamplerParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
            penalty_last_n: p.penalty_last_n as usize,
            seed: p.seed,
        };
        *out = Box::into_raw(Box::new(forge_sampler { sampler: Mutex::new(Sampler::new(sp)) }));
        Ok(())
    })
}

/// Free a sampler. NULL is a no-op. Must not race with another call on it.
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_free(s: *mut forge_sampler) {
    free_handle("forge_sampler_free", s);
}

/// Restart the RNG from the seed and clear the penalty history.
/// Errors: NULL_POINTER, BUSY.
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_reset(s: *mut forge_sampler) -> forge_status {
    boundary("forge_sampler_reset", || {
        sampler(s)?.reset();
        Ok(())
    })
}

/// Record a token (e.g. from the prompt) in the penalty history.
/// Errors: NULL_POINTER, INVALID_ARGUMENT (negative token), BUSY.
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_accept(s: *mut forge_sampler, token: i32) -> forge_status {
    boundary("forge_sampler_accept", || {
        let mut s = sampler(s)?;
        if token < 0 {
            return Err(FfiError::arg(format!("token {token} is negative")));
        }
        s.accept(token as u32);
        Ok(())
    })
}

/// Pick a token from `n_logits` logits (modified in place by penalties) and
/// record it in the history. Errors: NULL_POINTER, BUSY, INVALID_ARGUMENT
/// (n_logits 0 or above INT32_MAX; a NaN or +inf logit; all -inf).
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_sample(s: *mut forge_sampler, logits: *mut f32, n_logits: usize, out_token: *mut i32) -> forge_status {
    boundary("forge_sampler_sample", || {
        let mut s = sampler(s)?;
        let out_token = out_ptr(out_token, "out_token")?;
        if n_logits == 0 || n_logits > i32::MAX as usize {
            return Err(FfiError::arg(format!("n_logits {n_logits} is outside 1..=INT32_MAX")));
        }
        if logits.is_null() {
            return Err(FfiError::null("logits"));
        }
        let l = std::slice::from_raw_parts_mut(logits, n_logits);
        let t = s.sample(l)?;
        s.accept(t);
        *out_token = t as i32;
        Ok(())
    })
}

/// Default generation parameters. Thread-safe.
#[no_mangle]
pub extern "C" fn forge_generate_default_params() -> forge_generate_params {
    forge_generate_params { max_tokens: 128, stop: std::ptr::null(), n_stop: 0, on_token: None, user_data: std::ptr::null_mut() }
}

/// Evaluate `prompt` at the current position, then sample and append up to
/// `max_tokens` tokens, streaming each to `on_token`. Generated ids go to
/// `out_tokens` (NULL allowed; at most `out_cap`, the rest are still
/// generated and streamed); `*n_out` (may be NULL) receives how many were
/// generated, `*reason` (may be NULL) why it stopped. A callback returning
/// false ends generation early with FORGE_OK and FORGE_STOP_CALLBACK.
/// Errors: NULL_POINTER, INVALID_ARGUMENT, INVALID_UTF8 (a stop string),
/// CONTEXT_FULL (prompt does not fit), INVALID_MODEL (the model produced
/// NaN or +inf logits), BUSY (`ctx` or `sampler` in use). Out-parameters
/// are written only on success; the callback may have seen tokens of a
/// call that then failed.
#[no_mangle]
pub unsafe extern "C" fn forge_generate(
    ctx: *mut forge_ctx,
    sampler: *mut forge_sampler,
    prompt: *const i32,
    n_prompt: usize,
    params: *const forge_generate_params,
    out_tokens: *mut i32,
    out_cap: usize,
    n_out: *mut usize,
    reason: *mut forge_stop_reason,
) -> forge_status {
    boundary("forge_generate", || {
        let c = ctx_ref(ctx)?;
        let mut smp = self::sampler(sampler)?;
        let ids = token_ids(c, slice(prompt, n_prompt, "prompt")?)?;
        let p = if params.is_null() { forge_generate_default_params() } else { *params };
        let mut stop = Vec::new();
        for (i, &sp) in slice(p.stop, p.n_stop, "stop")?.iter().enumerate() {
            if sp.is_null() {
                return Err(FfiError::null(&format!("stop[{i}]")));
            }
            let t = CStr::from_ptr(sp).to_str().map_err(|e| {
                FfiError::new(forge_status::FORGE_ERR_INVALID_UTF8, format!("stop[{i}] is not valid UTF-8 ({e})"))
            })?;
            stop.push(t.to_string());
        }
        let opts = GenerateOptions { max_tokens: p.max_tokens as usize, stop };
        let mut s = session(c)?;
        let g = generate::generate(&mut s, &mut smp, &ids, &opts, |id, text| match p.on_token {
            Some(cb) => {
                let tid = if id == u32::MAX { -1 } else { id as i32 };
                // SAFETY: the caller supplied this callback and its user data.
                unsafe { cb(tid, text.as_ptr() as *const c_char, text.len(), p.user_data) }
            }
            None => true,
        });
        c.n_past.store(s.pos(), Ordering::Release);
        let g = g?;
        if !out_tokens.is_null() {
            for (i, &t) in g.tokens.iter().take(out_cap).enumerate() {
                *out_tokens.add(i) = t as i32;
            }
        }
        if !n_out.is_null() {
            *n_out = g.tokens.len();
        }
        if !reason.is_null() {
            *reason = match g.reason {
                StopReason::EndOfGeneration => forge_stop_reason::FORGE_STOP_EOG,
                StopReason::MaxTokens => forge_stop_reason::FORGE_STOP_MAX_TOKENS,
                StopReason::StopString => forge_stop_reason::FORGE_STOP_STRING,
                StopReason::Callback => forge_stop_reason::FORGE_STOP_CALLBACK,
                StopReason::ContextFull => forge_stop_reason::FORGE_STOP_CONTEXT_FULL,
            };
        }
        Ok(())
    })
}

// ---- many sequences: the engine ------------------------------------------------

/// Many sequences over one loaded model: a KV block pool and a batch of
/// rows per step. Opaque. Every call takes it exclusively (a second call
/// meanwhile gets FORGE_ERR_BUSY).
pub struct forge_engine {
    engine: Mutex<Engine>,
}

/// Parameters for `forge_engine_new`; defaults from
/// `forge_engine_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct forge_engine_params {
    /// Most positions one sequence may hold, 0..=FORGE_MAX_CTX.
    /// Default 0 = the context's n_ctx.
    pub n_ctx: u32,
    /// Bytes of KV cache for all sequences together (rounded down to whole
    /// blocks of 16 positions; at least one full sequence plus one block,
    /// at most 2^20 blocks). Default 0 = four full sequences. A pool the
    /// host cannot allocate is OUT_OF_MEMORY.
    pub kv_budget: u64,
}

/// One row of a batch: `token` appended to sequence `seq` at position
/// `pos`, which must be the sequence's length (plus one for each earlier
/// row of the same sequence in the batch). `logits` non-zero asks for this
/// row's logits.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct forge_batch_row {
    pub seq: i32,
    pub token: i32,
    pub pos: i32,
    pub logits: i32,
}

/// KV pool statistics (`forge_engine_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct forge_kv_stats {
    /// Blocks in the pool, and positions per block.
    pub blocks_total: u64,
    pub block_size: u32,
    /// Blocks some sequence holds.
    pub blocks_used: u64,
    /// Blocks no sequence holds (free, or cached and evictable).
    pub blocks_free: u64,
    /// Of the free ones, blocks the prefix cache keeps for reuse.
    pub blocks_cached: u64,
    /// Prefix lookups that reused blocks, and the positions they reused.
    pub prefix_hits: u64,
    pub prefix_tokens_reused: u64,
    /// Blocks copied because a shared block was written (forks).
    pub cow_copies: u64,
    /// Sequences alive.
    pub n_seqs: u32,
}

fn engine<'a>(p: *const forge_engine) -> Result<MutexGuard<'a, Engine>, FfiError> {
    // SAFETY: non-NULL handles come from forge_engine_new.
    let e = unsafe { p.as_ref() }.ok_or_else(|| FfiError::null("engine"))?;
    e.engine.try_lock().ok_or_else(|| busy("engine"))
}

fn seq_id(seq: i32) -> Result<SeqId, FfiError> {
    u32::try_from(seq).map_err(|_| FfiError::arg(format!("sequence id {seq} is negative")))
}

/// Default engine parameters. Thread-safe.
#[no_mangle]
pub extern "C" fn forge_engine_default_params() -> forge_engine_params {
    forge_engine_params { n_ctx: 0, kv_budget: 0 }
}

/// An engine over `ctx`'s loaded model (weights shared, not copied; the
/// model stays loaded while the engine lives, even after `forge_free(ctx)`).
/// `params` may be NULL. Free with `forge_engine_free`. Reads only the
/// model, so `ctx` may be busy. Errors: NULL_POINTER, INVALID_ARGUMENT
/// (n_ctx above FORGE_MAX_CTX), OUT_OF_MEMORY.
#[no_mangle]
pub unsafe extern "C" fn forge_engine_new(ctx: *const forge_ctx, params: *const forge_engine_params, out: *mut *mut forge_engine) -> forge_status {
    boundary("forge_engine_new", || {
        let c = ctx_ref(ctx)?;
        let out = out_ptr(out, "out")?;
        let p = if params.is_null() { forge_engine_default_params() } else { *params };
        if p.n_ctx > FORGE_MAX_CTX {
            return Err(FfiError::arg(format!("n_ctx {} is more than FORGE_MAX_CTX ({FORGE_MAX_CTX})", p.n_ctx)));
        }
        let n_ctx = if p.n_ctx == 0 { c.n_ctx } else { p.n_ctx as usize };
        let kv_budget = usize::try_from(p.kv_budget).unwrap_or(usize::MAX);
        let e = Engine::new(Arc::clone(&c.model), EngineOptions { n_ctx, kv_budget, preempt: false })?;
        *out = Box::into_raw(Box::new(forge_engine { engine: Mutex::new(e) }));
        Ok(())
    })
}

/// Free an engine and all its sequences. NULL is a no-op. Must not race
/// with another call on it.
#[no_mangle]
pub unsafe extern "C" fn forge_engine_free(e: *mut forge_engine) {
    free_handle("forge_engine_free", e);
}

/// A new, empty sequence; its id goes to `*seq_out`. Ids are not reused
/// while the engine lives. Errors: NULL_POINTER, BUSY, OUT_OF_MEMORY (a
/// GPU sequence's device cache).
#[no_mangle]
pub unsafe extern "C" fn forge_seq_new(e: *mut forge_engine, seq_out: *mut i32) -> forge_status {
    boundary("forge_seq_new", || {
        let mut g = engine(e)?;
        let seq_out = out_ptr(seq_out, "seq_out")?;
        let id = g.add_seq()?;
        *seq_out = id as i32;
        Ok(())
    })
}

/// Remove a sequence and give its KV blocks back (full blocks stay in the
/// prefix cache until the pool needs them). Errors: NULL_POINTER, BUSY,
/// INVALID_ARGUMENT (no such sequence).
#[no_mangle]
pub unsafe extern "C" fn forge_seq_free(e: *mut forge_engine, seq: i32) -> forge_status {
    boundary("forge_seq_free", || {
        let mut g = engine(e)?;
        g.remove_seq(seq_id(seq)?)?;
        Ok(())
    })
}

/// A new sequence with the same positions as `src`, sharing its full KV
/// blocks (copy-on-write): for n > 1 completions of one prompt. Errors:
/// NULL_POINTER, BUSY, INVALID_ARGUMENT, OUT_OF_MEMORY.
#[no_mangle]
pub unsafe extern "C" fn forge_seq_fork(e: *mut forge_engine, src: i32, seq_out: *mut i32) -> forge_status {
    boundary("forge_seq_fork", || {
        let mut g = engine(e)?;
        let seq_out = out_ptr(seq_out, "seq_out")?;
        let id = g.fork(seq_id(src)?)?;
        *seq_out = id as i32;
        Ok(())
    })
}

/// Keep the first `n_keep` positions of a sequence (0 clears it).
/// Errors: NULL_POINTER, BUSY, INVALID_ARGUMENT (no such sequence, n_keep
/// past its length).
#[no_mangle]
pub unsafe extern "C" fn forge_seq_keep(e: *mut forge_engine, seq: i32, n_keep: usize) -> forge_status {
    boundary("forge_seq_keep", || {
        let mut g = engine(e)?;
        g.keep(seq_id(seq)?, n_keep)?;
        Ok(())
    })
}

/// Positions a sequence holds, into `*n_out`. Errors: NULL_POINTER, BUSY,
/// INVALID_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn forge_seq_len(e: *const forge_engine, seq: i32, n_out: *mut usize) -> forge_status {
    boundary("forge_seq_len", || {
        let g = engine(e)?;
        let n_out = out_ptr(n_out, "n_out")?;
        *n_out = g.seq_len(seq_id(seq)?)?;
        Ok(())
    })
}

/// The prefix cache: give an empty sequence the cached KV blocks that
/// `tokens` (its prompt) starts with. `*n_reused` receives the positions
/// reused (whole blocks, never the last token): evaluate
/// `tokens[*n_reused..]` from that position. Errors: NULL_POINTER, BUSY,
/// INVALID_ARGUMENT (no such sequence, not empty, a bad token id).
#[no_mangle]
pub unsafe extern "C" fn forge_seq_reuse_prefix(e: *mut forge_engine, seq: i32, tokens: *const i32, n_tokens: usize, n_reused: *mut usize) -> forge_status {
    boundary("forge_seq_reuse_prefix", || {
        let mut g = engine(e)?;
        let n_reused = out_ptr(n_reused, "n_reused")?;
        let ids = vocab_ids(g.model.cfg.n_vocab, slice(tokens, n_tokens, "tokens")?)?;
        *n_reused = g.reuse_prefix(seq_id(seq)?, &ids)?;
        Ok(())
    })
}

/// Run one batch: every row of every sequence in one forward pass (decode
/// rows and prefill chunks together). All or nothing: on error no sequence
/// has moved, and the last batch's logits stay readable (with preemption
/// on, a sequence preempted for a step that then fails in the backend
/// stays preempted; `forge_engine_preempted` names it). Errors: NULL_POINTER, BUSY, INVALID_ARGUMENT (no rows, a bad
/// sequence id, token or position), CONTEXT_FULL (a sequence past n_ctx),
/// KV_EXHAUSTED (the pool cannot hold the batch: free or truncate a
/// sequence), INVALID_MODEL.
#[no_mangle]
pub unsafe extern "C" fn forge_engine_decode(e: *mut forge_engine, rows: *const forge_batch_row, n_rows: usize) -> forge_status {
    boundary("forge_engine_decode", || {
        let mut g = engine(e)?;
        let rows = slice(rows, n_rows, "rows")?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let bad = |what: &str, v: i32| FfiError::arg(format!("row {i}: {what} {v} is negative"));
            out.push(BatchRow {
                seq: seq_id(r.seq).map_err(|_| bad("sequence id", r.seq))?,
                token: u32::try_from(r.token).map_err(|_| bad("token", r.token))?,
                pos: usize::try_from(r.pos).map_err(|_| bad("position", r.pos))?,
                logits: r.logits != 0,
            });
        }
        g.decode(&out)?;
        Ok(())
    })
}

/// Copy the logits of row `row` of the last successful
/// `forge_engine_decode` into `out` (`cap` >= n_vocab floats). Errors:
/// NULL_POINTER, BUSY, BUFFER_TOO_SMALL, INVALID_ARGUMENT (no such row, or
/// the row did not ask for logits).
#[no_mangle]
pub unsafe extern "C" fn forge_engine_logits(e: *const forge_engine, row: usize, out: *mut f32, cap: usize) -> forge_status {
    boundary("forge_engine_logits", || {
        let g = engine(e)?;
        let n_rows = g.n_rows();
        let l = g.logits(row).ok_or_else(|| {
            if matches!(g.output(), Output::Top(_)) {
                FfiError::arg("the engine returns top-k candidates (forge_engine_set_top_k): read them with forge_engine_top".to_string())
            } else {
                no_row_output(&g, row, n_rows)
            }
        })?;
        if cap > 0 {
            out_ptr(out, "out")?;
        }
        if cap < l.len() {
            return Err(FfiError::new(forge_status::FORGE_ERR_BUFFER_TOO_SMALL, format!("cap {cap} < n_vocab {}", l.len())));
        }
        let out = out_ptr(out, "out")?;
        std::ptr::copy_nonoverlapping(l.as_ptr(), out, l.len());
        Ok(())
    })
}

/// Why row `row` of the last batch (of `n_rows`) has no output to read.
fn no_row_output(g: &Engine, row: usize, n_rows: usize) -> FfiError {
    FfiError::arg(if row >= n_rows {
        format!("row {row}: the last batch had {n_rows} rows")
    } else if g.row_preempted(row) {
        format!("row {row}: its sequence was preempted (forge_engine_preempted)")
    } else {
        format!("row {row} did not ask for logits")
    })
}

/// What `forge_engine_decode` keeps for the rows that ask for logits:
/// `k` = 0 (the default) every logit (`forge_engine_logits`); 1 ≤ `k` ≤
/// min(FORGE_TOP_MAX, n_vocab) the k largest logits with their token ids
/// and the row's log-sum-exp (`forge_engine_top`). A GPU selects them on
/// the device, so k × 8 + 4 bytes a row come back instead of n_vocab × 4
/// (at 256 rows of a 152k vocabulary, 155 MB a step). The last step's
/// results are dropped. Errors: NULL_POINTER, BUSY, INVALID_ARGUMENT (k
/// too large).
#[no_mangle]
pub unsafe extern "C" fn forge_engine_set_top_k(e: *mut forge_engine, k: u32) -> forge_status {
    boundary("forge_engine_set_top_k", || {
        let mut g = engine(e)?;
        g.set_output(if k == 0 { Output::Logits } else { Output::Top(k as usize) })?;
        Ok(())
    })
}

/// The candidates of row `row` of the last successful `forge_engine_decode`
/// under `forge_engine_set_top_k(e, k)`, k ≥ 1: the k token ids into `ids`
/// and their logits into `logits` (`cap` ≥ k of each), largest first (ties:
/// the lower id first); `*n_out` = k (also on BUFFER_TOO_SMALL: the size
/// needed); the row's log-sum-exp into `*lse`
/// when `lse` is not NULL (a candidate's log-probability is its logit
/// minus it). Errors: NULL_POINTER, BUSY, BUFFER_TOO_SMALL,
/// INVALID_ARGUMENT (no top-k set, no such row, or the row did not ask
/// for logits).
#[no_mangle]
pub unsafe extern "C" fn forge_engine_top(e: *const forge_engine, row: usize, ids: *mut i32, logits: *mut f32, cap: usize, n_out: *mut usize, lse: *mut f32) -> forge_status {
    boundary("forge_engine_top", || {
        let g = engine(e)?;
        let n_out = out_ptr(n_out, "n_out")?;
        if !matches!(g.output(), Output::Top(_)) {
            return Err(FfiError::arg("the engine returns every logit: set top-k candidates with forge_engine_set_top_k first".to_string()));
        }
        let n_rows = g.n_rows();
        let (top_ids, top_logits, row_lse) = g.top(row).ok_or_else(|| no_row_output(&g, row, n_rows))?;
        let k = top_ids.len();
        if cap > 0 {
            out_ptr(ids, "ids")?;
            out_ptr(logits, "logits")?;
        }
        if cap < k {
            *n_out = k;
            return Err(FfiError::new(forge_status::FORGE_ERR_BUFFER_TOO_SMALL, format!("ids and logits hold {cap}, {k} needed (the size is in *n_out)")));
        }
        let (ids, logits) = (out_ptr(ids, "ids")?, out_ptr(logits, "logits")?);
        for (i, (&id, &l)) in top_ids.iter().zip(top_logits).enumerate() {
            // SAFETY: cap >= k values are writable at ids and logits (the caller's promise).
            *ids.add(i) = id as i32;
            *logits.add(i) = l;
        }
        if !lse.is_null() {
            *lse = row_lse;
        }
        *n_out = k;
        Ok(())
    })
}

/// What `forge_engine_decode` does with a batch the KV pool cannot hold:
/// `on` 0 (the default) refuses it with KV_EXHAUSTED and the caller
/// chooses what to free; non-zero preempts the newest sequences (by
/// creation; forks are new) that hold positions or have rows in the batch,
/// one by one until the rest fits. A preempted
/// sequence keeps its id but holds no positions afterwards (length 0), and
/// its rows in that batch get no logits: evaluate its tokens again later.
/// The oldest sequence with rows in the batch is never preempted, so a
/// valid batch always runs. `forge_engine_preempted` names them. Errors:
/// NULL_POINTER, BUSY.
#[no_mangle]
pub unsafe extern "C" fn forge_engine_set_preempt(e: *mut forge_engine, on: i32) -> forge_status {
    boundary("forge_engine_set_preempt", || {
        let mut g = engine(e)?;
        g.set_preempt(on != 0);
        Ok(())
    })
}

/// The sequences the last `forge_engine_decode` preempted, in order, into
/// `ids` (`cap` entries; `*n_out` receives the count, also on
/// BUFFER_TOO_SMALL; `ids` may be NULL with `cap` 0 to ask the count).
/// Errors: NULL_POINTER, BUSY, BUFFER_TOO_SMALL.
#[no_mangle]
pub unsafe extern "C" fn forge_engine_preempted(e: *const forge_engine, ids: *mut i32, cap: usize, n_out: *mut usize) -> forge_status {
    boundary("forge_engine_preempted", || {
        let g = engine(e)?;
        let v: Vec<i32> = g.preempted().iter().map(|&id| id as i32).collect();
        write_out(&v, ids, cap, n_out, "ids")
    })
}

/// KV pool statistics. Errors: NULL_POINTER, BUSY.
#[no_mangle]
pub unsafe extern "C" fn forge_engine_stats(e: *const forge_engine, out: *mut forge_kv_stats) -> forge_status {
    boundary("forge_engine_stats", || {
        let g = engine(e)?;
        let out = out_ptr(out, "out")?;
        let s = g.stats();
        *out = forge_kv_stats {
            blocks_total: s.blocks_total as u64,
            block_size: crate::kv::BLOCK as u32,
            blocks_used: s.blocks_used as u64,
            blocks_free: s.blocks_free as u64,
            blocks_cached: s.blocks_cached as u64,
            prefix_hits: s.prefix_hits,
            prefix_tokens_reused: s.prefix_tokens_reused,
            cow_copies: s.cow_copies,
            n_seqs: g.seq_ids().len() as u32,
        };
        Ok(())
    })
}
