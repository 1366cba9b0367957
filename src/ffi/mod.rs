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
//!   every `_load`/`_new` has its `_free`.
//!
//! Thread safety: a `forge_ctx` (one sequence) or `forge_sampler` must be
//! used by one thread at a time, by every function. Different contexts,
//! including clones that share one model's weights, may run on different
//! threads at once. Functions without a handle are thread-safe.

#![allow(non_camel_case_types, clippy::missing_safety_doc)]

mod status;

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Arc;

use crate::backend;
use crate::generate::{self, GenerateOptions, StopReason};
use crate::backend::gpu::GpuKind;
use crate::model::{BackendChoice, LoadOptions, Logits, Model, Session};
use crate::sampler::{Sampler, SamplerParams};
pub use status::forge_status;
use status::{boundary, boundary_value, FfiError};

/// ABI version: bumped on any incompatible change to this header.
/// 2: `forge_load_params` gained `gpu_mem_budget` (its size changed).
pub const FORGE_ABI_VERSION: u32 = 2;

/// A loaded model plus one sequence's KV cache. Opaque.
pub struct forge_ctx {
    session: Session,
    arch: CString,
    chat_template: Option<CString>,
}

/// A sampler: settings, RNG state and penalty history. Opaque.
pub struct forge_sampler {
    sampler: Sampler,
}

/// Which compute backend `forge_load` uses.
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
    /// CPU worker threads. Default 0 = all cores.
    pub n_threads: u32,
    /// Context size (KV cache positions). Default 0 = min(n_ctx_train, 4096).
    pub n_ctx: u32,
    /// Default FORGE_BACKEND_AUTO.
    pub backend: forge_backend,
    /// GPU index for the CUDA/HIP backends. Default 0.
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
    // SAFETY: non-NULL handles come from forge_load/forge_ctx_clone_session.
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::null("ctx"))
}

fn ctx_mut<'a>(p: *mut forge_ctx) -> Result<&'a mut forge_ctx, FfiError> {
    // SAFETY: as above; the caller guarantees exclusive use (one thread).
    unsafe { p.as_mut() }.ok_or_else(|| FfiError::null("ctx"))
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
    let n_vocab = ctx.session.model.cfg.n_vocab;
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

/// Copy bytes to a caller buffer: size needed in *n_out always; data only if it fits.
fn write_bytes(bytes: &[u8], buf: *mut c_char, cap: usize, n_out: *mut usize) -> Result<(), FfiError> {
    if n_out.is_null() {
        return Err(FfiError::null("n_out"));
    }
    // SAFETY: checked non-NULL above.
    unsafe { *n_out = bytes.len() };
    if bytes.len() > cap {
        return Err(FfiError::new(
            forge_status::FORGE_ERR_BUFFER_TOO_SMALL,
            format!("buffer holds {cap} bytes, {} needed (written to *n_out)", bytes.len()),
        ));
    }
    if !bytes.is_empty() {
        if buf.is_null() {
            return Err(FfiError::null("buf"));
        }
        // SAFETY: cap >= len bytes are writable at buf.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len()) };
    }
    Ok(())
}

fn new_ctx(session: Session) -> Box<forge_ctx> {
    let m = &session.model;
    let arch = CString::new(m.cfg.arch.name).unwrap_or_default();
    let chat_template = m.file.chat_template().ok().flatten().and_then(|t| CString::new(t).ok());
    Box::new(forge_ctx { session, arch, chat_template })
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

/// Whether `backend` is compiled into this library (CPU always is; AUTO is
/// always "available"). Thread-safe.
#[no_mangle]
pub extern "C" fn forge_backend_compiled(backend: forge_backend) -> bool {
    match backend {
        forge_backend::FORGE_BACKEND_AUTO | forge_backend::FORGE_BACKEND_CPU => true,
        forge_backend::FORGE_BACKEND_CUDA => backend::cuda::COMPILED,
        forge_backend::FORGE_BACKEND_HIP => backend::hip::COMPILED,
    }
}

fn gpu_kind(backend: forge_backend) -> Option<GpuKind> {
    match backend {
        forge_backend::FORGE_BACKEND_CUDA => Some(GpuKind::Cuda),
        forge_backend::FORGE_BACKEND_HIP => Some(GpuKind::Hip),
        _ => None,
    }
}

fn backend_choice(backend: forge_backend, gpu_index: i32) -> Result<BackendChoice, FfiError> {
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

/// Number of devices of a GPU backend that this process can use. CPU and
/// AUTO answer 1. Errors: NULL_POINTER; BACKEND_UNAVAILABLE when the
/// backend is not compiled in or its driver/runtime reports no usable
/// device (`forge_last_error()` has the driver's words). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn forge_device_count(backend: forge_backend, out: *mut i32) -> forge_status {
    boundary("forge_device_count", || {
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let n = match gpu_kind(backend) {
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
        write_bytes(c.session.model.backend_description().as_bytes(), buf, cap, n_out)
    })
}

// ---- loading -----------------------------------------------------------------

/// Default load parameters (see each field). Thread-safe.
#[no_mangle]
pub extern "C" fn forge_load_default_params() -> forge_load_params {
    forge_load_params {
        n_threads: 0,
        n_ctx: 0,
        backend: forge_backend::FORGE_BACKEND_AUTO,
        gpu_index: 0,
        progress: None,
        progress_user_data: std::ptr::null_mut(),
        gpu_mem_budget: 0,
    }
}

/// Load a GGUF model and create a context for one sequence. `params` may be
/// NULL for defaults. On success `*out` owns the context: free it with
/// `forge_free`. Errors: NULL_POINTER, INVALID_UTF8, IO, INVALID_MODEL,
/// UNSUPPORTED, BACKEND_UNAVAILABLE, OUT_OF_MEMORY, CANCELLED.
/// Thread-safe (each call loads its own model).
#[no_mangle]
pub unsafe extern "C" fn forge_load(path: *const c_char, params: *const forge_load_params, out: *mut *mut forge_ctx) -> forge_status {
    boundary("forge_load", || {
        if path.is_null() {
            return Err(FfiError::null("path"));
        }
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let path = CStr::from_ptr(path)
            .to_str()
            .map_err(|_| FfiError::new(forge_status::FORGE_ERR_INVALID_UTF8, "path is not valid UTF-8"))?;
        let p = if params.is_null() { forge_load_default_params() } else { *params };
        let backend = backend_choice(p.backend, p.gpu_index)?;
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
        let session = Session::new(model, p.n_ctx as usize)?;
        *out = Box::into_raw(new_ctx(session));
        Ok(())
    })
}

/// A new context on the same loaded model (weights shared, not copied) with
/// its own empty KV cache of the same size. Free it with `forge_free`; the
/// model stays loaded until its last context is freed. `ctx` must not be in
/// use by another thread during this call; the clone is independent of it.
#[no_mangle]
pub unsafe extern "C" fn forge_ctx_clone_session(ctx: *const forge_ctx, out: *mut *mut forge_ctx) -> forge_status {
    boundary("forge_ctx_clone_session", || {
        let c = ctx_ref(ctx)?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let s = Session::new(Arc::clone(&c.session.model), c.session.n_ctx())?;
        *out = Box::into_raw(new_ctx(s));
        Ok(())
    })
}

/// Free a context. NULL is a no-op. Do not use `ctx` afterwards.
#[no_mangle]
pub unsafe extern "C" fn forge_free(ctx: *mut forge_ctx) {
    let _ = boundary("forge_free", || {
        if !ctx.is_null() {
            drop(Box::from_raw(ctx));
        }
        Ok(())
    });
}

// ---- evaluation --------------------------------------------------------------

/// Append `n_tokens` tokens at the current position. When `logits_out` is not
/// NULL, write the last position's logits there (`logits_len` must be at
/// least n_vocab). Nothing is appended on error. Errors: NULL_POINTER,
/// INVALID_ARGUMENT (bad token id, n_tokens 0), BUFFER_TOO_SMALL,
/// CONTEXT_FULL. One thread at a time per ctx.
#[no_mangle]
pub unsafe extern "C" fn forge_eval(
    ctx: *mut forge_ctx,
    tokens: *const i32,
    n_tokens: usize,
    logits_out: *mut f32,
    logits_len: usize,
) -> forge_status {
    boundary("forge_eval", || {
        let c = ctx_mut(ctx)?;
        if n_tokens == 0 {
            return Err(FfiError::arg("n_tokens is 0"));
        }
        let ids = token_ids(c, slice(tokens, n_tokens, "tokens")?)?;
        let n_vocab = c.session.model.cfg.n_vocab;
        if !logits_out.is_null() && logits_len < n_vocab {
            return Err(FfiError::new(
                forge_status::FORGE_ERR_BUFFER_TOO_SMALL,
                format!("logits_len {logits_len} < n_vocab {n_vocab}"),
            ));
        }
        if logits_out.is_null() {
            c.session.eval_into(&ids, Logits::None, &mut [])?;
        } else {
            // straight into the caller's buffer: no copy of n_vocab floats per call
            let out = std::slice::from_raw_parts_mut(logits_out, n_vocab);
            c.session.eval_into(&ids, Logits::Last, out)?;
        }
        Ok(())
    })
}

/// Keep the first `n_keep` positions of the KV cache (0 clears everything).
/// Errors: NULL_POINTER, INVALID_ARGUMENT (n_keep past the current position).
#[no_mangle]
pub unsafe extern "C" fn forge_kv_reset(ctx: *mut forge_ctx, n_keep: usize) -> forge_status {
    boundary("forge_kv_reset", || {
        ctx_mut(ctx)?.session.kv_keep(n_keep)?;
        Ok(())
    })
}

/// Positions currently in the KV cache; 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn forge_n_past(ctx: *const forge_ctx) -> usize {
    boundary_value("forge_n_past", 0, || Ok(ctx_ref(ctx)?.session.pos()))
}

// ---- tokens ------------------------------------------------------------------

/// Number of tokens in the vocabulary; -1 if ctx is NULL.
#[no_mangle]
pub unsafe extern "C" fn forge_n_vocab(ctx: *const forge_ctx) -> i32 {
    boundary_value("forge_n_vocab", -1, || Ok(ctx_ref(ctx)?.session.model.cfg.n_vocab as i32))
}

/// Tokenize `text_len` bytes of UTF-8 `text`. `add_special`: BOS/EOS as the
/// model's metadata asks; `parse_special`: control tokens written in the
/// text become single ids. `*n_out` receives the count; if `out_cap` is too
/// small the call fails with BUFFER_TOO_SMALL and `*n_out` is the size
/// needed. Errors: NULL_POINTER, INVALID_UTF8, BUFFER_TOO_SMALL.
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
        if n_out.is_null() {
            return Err(FfiError::null("n_out"));
        }
        let bytes = slice(text as *const u8, text_len, "text")?;
        let text = std::str::from_utf8(bytes).map_err(|e| FfiError::new(forge_status::FORGE_ERR_INVALID_UTF8, format!("text: {e}")))?;
        let ids = c.session.model.tokenizer.encode(text, add_special, parse_special);
        *n_out = ids.len();
        if ids.len() > out_cap {
            return Err(FfiError::new(
                forge_status::FORGE_ERR_BUFFER_TOO_SMALL,
                format!("out_cap {out_cap} < {} tokens (size written to *n_out)", ids.len()),
            ));
        }
        if !ids.is_empty() {
            if out.is_null() {
                return Err(FfiError::null("out"));
            }
            for (i, &id) in ids.iter().enumerate() {
                *out.add(i) = id as i32;
            }
        }
        Ok(())
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
        let piece = c.session.model.tokenizer.token_to_piece(id, special).unwrap_or_default();
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
        let bytes = c.session.model.tokenizer.decode(&ids, special)?;
        write_bytes(&bytes, buf, cap, n_out)
    })
}

/// Model facts (see `forge_model_info`). Errors: NULL_POINTER.
#[no_mangle]
pub unsafe extern "C" fn forge_get_model_info(ctx: *const forge_ctx, out: *mut forge_model_info) -> forge_status {
    boundary("forge_get_model_info", || {
        let c = ctx_ref(ctx)?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let m = &c.session.model;
        let v = &m.tokenizer.vocab;
        let id = |x: Option<u32>| x.map_or(-1, |i| i as i32);
        *out = forge_model_info {
            arch: c.arch.as_ptr(),
            n_vocab: m.cfg.n_vocab as i32,
            n_ctx_train: m.cfg.n_ctx_train.min(i32::MAX as usize) as i32,
            n_ctx: c.session.n_ctx() as i32,
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
    boundary_value("forge_token_is_eog", false, || Ok(token >= 0 && ctx_ref(ctx)?.session.model.tokenizer.vocab.is_eog(token as u32)))
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
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
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
        *out = Box::into_raw(Box::new(forge_sampler { sampler: Sampler::new(sp) }));
        Ok(())
    })
}

/// Free a sampler. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_free(s: *mut forge_sampler) {
    let _ = boundary("forge_sampler_free", || {
        if !s.is_null() {
            drop(Box::from_raw(s));
        }
        Ok(())
    });
}

/// Restart the RNG from the seed and clear the penalty history.
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_reset(s: *mut forge_sampler) -> forge_status {
    boundary("forge_sampler_reset", || {
        s.as_mut().ok_or_else(|| FfiError::null("sampler"))?.sampler.reset();
        Ok(())
    })
}

/// Record a token (e.g. from the prompt) in the penalty history.
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_accept(s: *mut forge_sampler, token: i32) -> forge_status {
    boundary("forge_sampler_accept", || {
        if token < 0 {
            return Err(FfiError::arg(format!("token {token} is negative")));
        }
        s.as_mut().ok_or_else(|| FfiError::null("sampler"))?.sampler.accept(token as u32);
        Ok(())
    })
}

/// Pick a token from `n_logits` logits (modified in place by penalties) and
/// record it in the history. Errors: NULL_POINTER, INVALID_ARGUMENT (n 0).
#[no_mangle]
pub unsafe extern "C" fn forge_sampler_sample(s: *mut forge_sampler, logits: *mut f32, n_logits: usize, out_token: *mut i32) -> forge_status {
    boundary("forge_sampler_sample", || {
        let s = s.as_mut().ok_or_else(|| FfiError::null("sampler"))?;
        if logits.is_null() {
            return Err(FfiError::null("logits"));
        }
        if out_token.is_null() {
            return Err(FfiError::null("out_token"));
        }
        if n_logits == 0 || n_logits > i32::MAX as usize {
            return Err(FfiError::arg(format!("n_logits {n_logits}")));
        }
        let l = std::slice::from_raw_parts_mut(logits, n_logits);
        let t = s.sampler.sample(l);
        s.sampler.accept(t);
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
/// Errors: NULL_POINTER, INVALID_ARGUMENT, CONTEXT_FULL (prompt does not fit).
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
        let c = ctx_mut(ctx)?;
        let s = sampler.as_mut().ok_or_else(|| FfiError::null("sampler"))?;
        let ids = token_ids(c, slice(prompt, n_prompt, "prompt")?)?;
        let p = if params.is_null() { forge_generate_default_params() } else { *params };
        let mut stop = Vec::new();
        for (i, &sp) in slice(p.stop, p.n_stop, "stop")?.iter().enumerate() {
            if sp.is_null() {
                return Err(FfiError::null(&format!("stop[{i}]")));
            }
            let t = CStr::from_ptr(sp).to_str().map_err(|_| FfiError::new(forge_status::FORGE_ERR_INVALID_UTF8, format!("stop[{i}]")))?;
            stop.push(t.to_string());
        }
        let opts = GenerateOptions { max_tokens: p.max_tokens as usize, stop };
        let g = generate::generate(&mut c.session, &mut s.sampler, &ids, &opts, |id, text| match p.on_token {
            Some(cb) => {
                let tid = if id == u32::MAX { -1 } else { id as i32 };
                // SAFETY: the caller supplied this callback and its user data.
                unsafe { cb(tid, text.as_ptr() as *const c_char, text.len(), p.user_data) }
            }
            None => true,
        })?;
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
