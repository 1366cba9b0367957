//! `libllama.so`: llama.cpp's C API (`llama.h` of the llama.cpp that the
//! llama-cpp-python 0.3.36 sdist vendors, build 0c1e570) over ROCmForge,
//! so frontends written against llama.cpp (llama-cpp-python first) run
//! unchanged: `LLAMA_CPP_LIB_PATH=$PREFIX/lib/rocmforge`.
//!
//! Every function llama-cpp-python binds is exported (tests/abi.rs checks
//! the list), plus the `ggml_*` helpers llama.cpp's small examples call.
//! What ROCmForge does not have is a documented stub with llama.cpp's
//! "nothing" answer (NULL, 0, -1 or false) and a log line: LoRA adapters,
//! control vectors, the `ggml` backend scheduler, threadpools, training,
//! `llama_batch_ext`, quantization (README, "libllama").
//!
//! Bad input never crashes: NULL handles and out-of-range indices get
//! llama.cpp's error returns, and a panic inside becomes one.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

pub mod chat;
pub mod context;
pub use rocmforge::grammar;
mod log;
pub mod model;
pub mod sampler;
pub mod sampling;
pub mod types;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use context::{Context, Memory};
use log::{error, warning};
use model::{LlamaModel, Vocab};
use types::*;

// ---- helpers ---------------------------------------------------------------

/// Run `f`; a panic becomes `fallback` and an error line (never an unwind
/// across the C boundary).
fn guard<T>(name: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            error!("{name}: internal error");
            fallback
        }
    }
}

unsafe fn cstr_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_bytes())
}

/// snprintf semantics: write what fits of `s` and a NUL (when `size` > 0);
/// return the whole length.
unsafe fn put_str(buf: *mut c_char, size: usize, s: &[u8]) -> i32 {
    if !buf.is_null() && size > 0 {
        let n = s.len().min(size - 1);
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
    s.len() as i32
}

/// llama.cpp's "clear and fail": an empty string and -1.
unsafe fn fail_str(buf: *mut c_char, size: usize) -> i32 {
    if !buf.is_null() && size > 0 {
        *buf = 0;
    }
    -1
}

unsafe fn model_ref<'a>(m: *const LlamaModel) -> Option<&'a LlamaModel> {
    m.as_ref()
}

unsafe fn vocab_ref<'a>(v: *const Vocab) -> Option<&'a Vocab> {
    v.as_ref()
}

unsafe fn ctx_mut<'a>(c: *mut Context) -> Option<&'a mut Context> {
    c.as_mut()
}

unsafe fn mem_ctx<'a>(m: *mut Memory) -> Option<&'a mut Context> {
    m.as_ref().and_then(|m| m.ctx.as_mut())
}

static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn time_us() -> i64 {
    T0.get_or_init(std::time::Instant::now).elapsed().as_micros() as i64
}

macro_rules! stub {
    ($what:expr) => {
        warning!("{}: not supported by ROCmForge", $what)
    };
}

// ---- version, parameters, process -----------------------------------------

#[no_mangle]
pub extern "C" fn llama_version() -> *const c_char {
    c"0c1e570 (rocmforge 0.3.0)".as_ptr()
}

#[no_mangle]
pub extern "C" fn llama_model_default_params() -> llama_model_params {
    llama_model_params {
        devices: std::ptr::null_mut(),
        tensor_buft_overrides: std::ptr::null(),
        n_gpu_layers: -1,
        split_mode: 1,
        load_mode: -1,
        lazy_mode: 1,
        main_gpu: 0,
        tensor_split: std::ptr::null(),
        progress_callback: None,
        progress_callback_user_data: std::ptr::null_mut(),
        kv_overrides: std::ptr::null(),
        vocab_only: false,
        check_tensors: false,
        use_extra_bufts: true,
        no_host: false,
        no_alloc: false,
        load_mtp: false,
    }
}

#[no_mangle]
pub extern "C" fn llama_context_default_params() -> llama_context_params {
    llama_context_params {
        n_ctx: 512,
        n_batch: 2048,
        n_ubatch: 512,
        n_seq_max: 1,
        n_rs_seq: 0,
        n_outputs_max: 0,
        n_outputs_max_per_seq: 1,
        n_threads: 4,
        n_threads_batch: 4,
        ctx_type: 0,
        rope_scaling_type: -1,
        pooling_type: -1,
        attention_type: -1,
        flash_attn_type: -1,
        rope_freq_base: 0.0,
        rope_freq_scale: 0.0,
        yarn_ext_factor: -1.0,
        yarn_attn_factor: -1.0,
        yarn_beta_fast: -1.0,
        yarn_beta_slow: -1.0,
        yarn_orig_ctx: 0,
        defrag_thold: -1.0,
        cb_eval: std::ptr::null_mut(),
        cb_eval_user_data: std::ptr::null_mut(),
        type_k: 1,
        type_v: 1,
        abort_callback: None,
        abort_callback_data: std::ptr::null_mut(),
        embeddings: false,
        offload_kqv: true,
        no_perf: true,
        op_offload: true,
        swa_full: true,
        kv_unified: false,
        samplers: std::ptr::null_mut(),
        n_samplers: 0,
        ctx_other: std::ptr::null_mut(),
    }
}

#[no_mangle]
pub extern "C" fn llama_sampler_chain_default_params() -> llama_sampler_chain_params {
    llama_sampler_chain_params { no_perf: true }
}

#[no_mangle]
pub extern "C" fn llama_model_quantize_default_params() -> llama_model_quantize_params {
    llama_model_quantize_params {
        nthread: 0,
        ftype: 7, // LLAMA_FTYPE_MOSTLY_Q8_0
        output_tensor_type: 43, // GGML_TYPE_COUNT: "not set"
        token_embedding_type: 43,
        allow_requantize: false,
        quantize_output_tensor: true,
        only_copy: false,
        pure_: false,
        keep_split: false,
        dry_run: false,
        imatrix: std::ptr::null(),
        kv_overrides: std::ptr::null(),
        tt_overrides: std::ptr::null(),
        prune_layers: std::ptr::null(),
        max_buf_size: 0,
    }
}

#[no_mangle]
pub extern "C" fn llama_flash_attn_type_name(t: i32) -> *const c_char {
    match t {
        -1 => c"auto",
        0 => c"disabled",
        1 => c"enabled",
        _ => c"unknown",
    }
    .as_ptr()
}

const LOAD_MODES: [(i32, &CStr); 6] = [(-1, c"auto"), (0, c"none"), (1, c"mmap"), (2, c"mlock"), (3, c"mmap+mlock"), (4, c"direct_io")];

#[no_mangle]
pub extern "C" fn llama_load_mode_name(m: i32) -> *const c_char {
    LOAD_MODES.iter().find(|(v, _)| *v == m).map_or(c"unknown", |(_, n)| n).as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn llama_load_mode_from_str(s: *const c_char) -> i32 {
    let Some(s) = cstr_bytes(s) else { return -1 };
    LOAD_MODES.iter().find(|(_, n)| n.to_bytes() == s).map_or(-1, |(v, _)| *v)
}

#[no_mangle]
pub extern "C" fn llama_ftype_name(ftype: i32) -> *const c_char {
    // static C strings for the names model::ftype_name gives
    static NAMES: std::sync::OnceLock<Vec<(i32, std::ffi::CString)>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| (0..64).map(|i| (i, std::ffi::CString::new(model::ftype_name(i)).expect("no NUL"))).collect());
    names.iter().find(|(i, _)| *i == ftype).map_or(c"unknown, may not work".as_ptr(), |(_, n)| n.as_ptr())
}

#[no_mangle]
pub extern "C" fn llama_backend_init() {
    T0.get_or_init(std::time::Instant::now);
}

#[no_mangle]
pub extern "C" fn llama_backend_free() {}

#[no_mangle]
pub extern "C" fn llama_numa_init(_numa: i32) {}

#[no_mangle]
pub extern "C" fn llama_time_us() -> i64 {
    time_us()
}

#[no_mangle]
pub extern "C" fn ggml_time_us() -> i64 {
    time_us()
}

#[no_mangle]
pub extern "C" fn ggml_time_ms() -> i64 {
    time_us() / 1000
}

#[no_mangle]
pub extern "C" fn ggml_time_init() {
    T0.get_or_init(std::time::Instant::now);
}

/// `GGML_ASSERT` failing in a caller (llama.cpp's examples use it): print
/// where, and abort, as ggml does. (C declares it variadic; the format's
/// arguments are not read.)
#[no_mangle]
pub unsafe extern "C" fn ggml_abort(file: *const c_char, line: c_int, fmt: *const c_char) -> ! {
    let f = cstr_bytes(file).map(String::from_utf8_lossy).unwrap_or_default();
    let m = cstr_bytes(fmt).map(String::from_utf8_lossy).unwrap_or_default();
    eprintln!("{f}:{line}: {m}");
    std::process::abort()
}

/// llama.cpp's examples load backends first; ROCmForge's are built in.
#[no_mangle]
pub extern "C" fn ggml_backend_load_all() {}

#[no_mangle]
pub extern "C" fn llama_max_devices() -> usize {
    16
}

#[no_mangle]
pub extern "C" fn llama_max_parallel_sequences() -> usize {
    256
}

#[no_mangle]
pub extern "C" fn llama_max_tensor_buft_overrides() -> usize {
    4096
}

#[no_mangle]
pub extern "C" fn llama_supports_mmap() -> bool {
    true
}

#[no_mangle]
pub extern "C" fn llama_supports_mlock() -> bool {
    false
}

#[no_mangle]
pub extern "C" fn llama_supports_gpu_offload() -> bool {
    rocmforge::backend::cuda::COMPILED || rocmforge::backend::hip::COMPILED
}

#[no_mangle]
pub extern "C" fn llama_supports_rpc() -> bool {
    false
}

#[no_mangle]
pub extern "C" fn llama_print_system_info() -> *const c_char {
    static INFO: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    INFO.get_or_init(|| {
        let s = format!("ROCmForge 0.3.0 | CPU : {} | GPU backends compiled: {}", rocmforge::backend::cpu::kernel_name(), if llama_supports_gpu_offload() { "yes" } else { "no" });
        std::ffi::CString::new(s).expect("no NUL")
    })
    .as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn llama_log_set(cb: ggml_log_callback, user: *mut c_void) {
    log::set(cb, user);
}

#[no_mangle]
pub unsafe extern "C" fn llama_log_get(cb: *mut ggml_log_callback, user: *mut *mut c_void) {
    let (c, u) = log::get();
    if !cb.is_null() {
        *cb = c;
    }
    if !user.is_null() {
        *user = u;
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_split_path(out: *mut c_char, maxlen: usize, prefix: *const c_char, split_no: i32, split_count: i32) -> i32 {
    let Some(p) = cstr_bytes(prefix) else { return 0 };
    let s = [p, format!("-{:05}-of-{:05}.gguf", split_no + 1, split_count).as_bytes()].concat();
    if s.len() >= maxlen {
        return 0;
    }
    put_str(out, maxlen, &s)
}

#[no_mangle]
pub unsafe extern "C" fn llama_split_prefix(out: *mut c_char, maxlen: usize, path: *const c_char, split_no: i32, split_count: i32) -> i32 {
    let Some(p) = cstr_bytes(path) else { return 0 };
    let post = format!("-{:05}-of-{:05}.gguf", split_no + 1, split_count);
    if p.len() <= post.len() || !p.ends_with(post.as_bytes()) {
        return 0;
    }
    let n = p.len() - post.len();
    put_str(out, maxlen.min(n + 1), &p[..n]);
    n as i32
}

// ---- model ------------------------------------------------------------------

unsafe fn load_model(path: *const c_char, params: llama_model_params) -> *mut LlamaModel {
    let Some(p) = cstr_bytes(path) else {
        error!("llama_model_load_from_file: path is NULL");
        return std::ptr::null_mut();
    };
    let path = PathBuf::from(std::ffi::OsStr::from_encoded_bytes_unchecked(p));
    guard("llama_model_load_from_file", std::ptr::null_mut(), || match LlamaModel::load(&path, &params) {
        Ok(m) => Box::into_raw(Box::new(m)),
        Err(e) => {
            error!("llama_model_load: error loading model {}: {e}", path.display());
            std::ptr::null_mut()
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_load_from_file(path: *const c_char, params: llama_model_params) -> *mut LlamaModel {
    load_model(path, params)
}

#[no_mangle]
pub unsafe extern "C" fn llama_load_model_from_file(path: *const c_char, params: llama_model_params) -> *mut LlamaModel {
    load_model(path, params)
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_load_from_splits(paths: *const *const c_char, n_paths: usize, params: llama_model_params) -> *mut LlamaModel {
    if paths.is_null() || n_paths != 1 {
        error!("llama_model_load_from_splits: ROCmForge loads one GGUF file (got {n_paths})");
        return std::ptr::null_mut();
    }
    load_model(*paths, params)
}

#[no_mangle]
pub extern "C" fn llama_model_load_from_file_ptr(_file: *mut c_void, _params: llama_model_params) -> *mut LlamaModel {
    stub!("llama_model_load_from_file_ptr (load from a path)");
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_model_init_from_user(_meta: *mut c_void, _set: *mut c_void, _ud: *mut c_void, _params: llama_model_params) -> *mut LlamaModel {
    stub!("llama_model_init_from_user");
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_model_save_to_file(_m: *const LlamaModel, _path: *const c_char) {
    stub!("llama_model_save_to_file");
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_free(m: *mut LlamaModel) {
    if !m.is_null() {
        drop(Box::from_raw(m));
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_free_model(m: *mut LlamaModel) {
    llama_model_free(m)
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_get_vocab(m: *const LlamaModel) -> *const Vocab {
    model_ref(m).map_or(std::ptr::null(), |m| &m.vocab as *const Vocab)
}

macro_rules! model_int {
    ($($name:ident => $field:ident),* $(,)?) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(m: *const LlamaModel) -> i32 {
            model_ref(m).map_or(0, |m| m.$field)
        }
    )*};
}
model_int! {
    llama_model_n_ctx_train => n_ctx_train, llama_n_ctx_train => n_ctx_train,
    llama_model_n_embd => n_embd, llama_n_embd => n_embd, llama_model_n_embd_inp => n_embd, llama_model_n_embd_out => n_embd,
    llama_model_n_layer => n_layer, llama_n_layer => n_layer,
    llama_model_n_head => n_head, llama_n_head => n_head,
    llama_model_n_head_kv => n_head_kv, llama_model_n_swa => n_swa,
}

#[no_mangle]
pub extern "C" fn llama_model_n_layer_nextn(_m: *const LlamaModel) -> i32 {
    0
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_rope_type(m: *const LlamaModel) -> i32 {
    match model_ref(m).and_then(|m| m.model.as_ref()) {
        Some(m) if m.cfg.arch.rope == rocmforge::model::arch::RopeStyle::Neox => 2,
        Some(_) => 0,
        None => -1,
    }
}

#[no_mangle]
pub extern "C" fn llama_model_rope_freq_scale_train(_m: *const LlamaModel) -> f32 {
    1.0
}

#[no_mangle]
pub extern "C" fn llama_model_n_cls_out(_m: *const LlamaModel) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn llama_model_cls_label(_m: *const LlamaModel, _i: u32) -> *const c_char {
    std::ptr::null()
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_meta_val_str(m: *const LlamaModel, key: *const c_char, buf: *mut c_char, size: usize) -> i32 {
    match (model_ref(m), cstr_bytes(key)) {
        (Some(m), Some(k)) => match m.meta_value(k) {
            Some(v) => put_str(buf, size, v.to_bytes()),
            None => fail_str(buf, size),
        },
        _ => fail_str(buf, size),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_meta_count(m: *const LlamaModel) -> i32 {
    model_ref(m).map_or(-1, |m| m.meta.len() as i32)
}

#[no_mangle]
pub extern "C" fn llama_model_meta_key_str(key: i32) -> *const c_char {
    const KEYS: [&CStr; 12] = [
        c"general.sampling.sequence", c"general.sampling.top_k", c"general.sampling.top_p", c"general.sampling.min_p",
        c"general.sampling.xtc_probability", c"general.sampling.xtc_threshold", c"general.sampling.temp",
        c"general.sampling.penalty_last_n", c"general.sampling.penalty_repeat", c"general.sampling.mirostat",
        c"general.sampling.mirostat_tau", c"general.sampling.mirostat_eta",
    ];
    usize::try_from(key).ok().and_then(|k| KEYS.get(k)).map_or(std::ptr::null(), |k| k.as_ptr())
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_meta_key_by_index(m: *const LlamaModel, i: i32, buf: *mut c_char, size: usize) -> i32 {
    match model_ref(m).and_then(|m| usize::try_from(i).ok().and_then(|i| m.meta.get(i))) {
        Some((k, _)) => put_str(buf, size, k.to_bytes()),
        None => fail_str(buf, size),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_meta_val_str_by_index(m: *const LlamaModel, i: i32, buf: *mut c_char, size: usize) -> i32 {
    match model_ref(m).and_then(|m| usize::try_from(i).ok().and_then(|i| m.meta.get(i))) {
        Some((_, v)) => put_str(buf, size, v.to_bytes()),
        None => fail_str(buf, size),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_desc(m: *const LlamaModel, buf: *mut c_char, size: usize) -> i32 {
    match model_ref(m) {
        Some(m) => put_str(buf, size, m.desc.as_bytes()),
        None => fail_str(buf, size),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_ftype(m: *const LlamaModel) -> i32 {
    model_ref(m).map_or(0, |m| m.ftype)
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_size(m: *const LlamaModel) -> u64 {
    model_ref(m).map_or(0, |m| m.size)
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_n_params(m: *const LlamaModel) -> u64 {
    model_ref(m).map_or(0, |m| m.n_params)
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_chat_template(m: *const LlamaModel, name: *const c_char) -> *const c_char {
    let Some(m) = model_ref(m) else { return std::ptr::null() };
    let name = cstr_bytes(name).map(|n| String::from_utf8_lossy(n).into_owned());
    m.chat_template(name.as_deref()).map_or(std::ptr::null(), |t| t.as_ptr())
}

#[no_mangle]
pub extern "C" fn llama_model_has_encoder(_m: *const LlamaModel) -> bool {
    false
}

#[no_mangle]
pub unsafe extern "C" fn llama_model_has_decoder(m: *const LlamaModel) -> bool {
    model_ref(m).is_some()
}

#[no_mangle]
pub extern "C" fn llama_model_decoder_start_token(_m: *const LlamaModel) -> llama_token {
    LLAMA_TOKEN_NULL
}

#[no_mangle]
pub extern "C" fn llama_model_is_recurrent(_m: *const LlamaModel) -> bool {
    false
}

#[no_mangle]
pub extern "C" fn llama_model_is_hybrid(_m: *const LlamaModel) -> bool {
    false
}

#[no_mangle]
pub extern "C" fn llama_model_is_diffusion(_m: *const LlamaModel) -> bool {
    false
}

#[no_mangle]
pub extern "C" fn llama_model_quantize(_inp: *const c_char, _out: *const c_char, _p: *const llama_model_quantize_params) -> u32 {
    stub!("llama_model_quantize");
    1
}

// ---- LoRA and control vectors (stubs) ---------------------------------------

#[no_mangle]
pub extern "C" fn llama_adapter_lora_init(_m: *mut LlamaModel, _path: *const c_char) -> *mut c_void {
    stub!("llama_adapter_lora_init (LoRA adapters)");
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_adapter_lora_init_from_file_ptr(_m: *mut LlamaModel, _f: *mut c_void) -> *mut c_void {
    stub!("llama_adapter_lora_init_from_file_ptr (LoRA adapters)");
    std::ptr::null_mut()
}

#[no_mangle]
pub unsafe extern "C" fn llama_adapter_meta_val_str(_a: *const c_void, _k: *const c_char, buf: *mut c_char, size: usize) -> i32 {
    fail_str(buf, size)
}

#[no_mangle]
pub extern "C" fn llama_adapter_meta_count(_a: *const c_void) -> i32 {
    -1
}

#[no_mangle]
pub unsafe extern "C" fn llama_adapter_meta_key_by_index(_a: *const c_void, _i: i32, buf: *mut c_char, size: usize) -> i32 {
    fail_str(buf, size)
}

#[no_mangle]
pub unsafe extern "C" fn llama_adapter_meta_val_str_by_index(_a: *const c_void, _i: i32, buf: *mut c_char, size: usize) -> i32 {
    fail_str(buf, size)
}

#[no_mangle]
pub extern "C" fn llama_adapter_lora_free(_a: *mut c_void) {}

#[no_mangle]
pub extern "C" fn llama_adapter_get_alora_n_invocation_tokens(_a: *const c_void) -> u64 {
    0
}

#[no_mangle]
pub extern "C" fn llama_adapter_get_alora_invocation_tokens(_a: *const c_void) -> *const llama_token {
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn llama_set_adapters_lora(_c: *mut Context, _a: *mut *mut c_void, n: usize, _s: *mut f32) -> i32 {
    if n == 0 {
        0
    } else {
        stub!("llama_set_adapters_lora (LoRA adapters)");
        -1
    }
}

#[no_mangle]
pub extern "C" fn llama_set_adapter_cvec(_c: *mut Context, data: *const f32, _len: usize, _n_embd: i32, _s: i32, _e: i32) -> i32 {
    if data.is_null() {
        0
    } else {
        stub!("llama_set_adapter_cvec (control vectors)");
        -1
    }
}

// ---- context -----------------------------------------------------------------

unsafe fn new_context(m: *mut LlamaModel, p: llama_context_params) -> *mut Context {
    let Some(m) = model_ref(m) else {
        error!("llama_init_from_model: model cannot be NULL");
        return std::ptr::null_mut();
    };
    guard("llama_init_from_model", std::ptr::null_mut(), || match Context::new(m, &p) {
        Ok(c) => {
            let raw = Box::into_raw(c);
            // the memory handle points at the context's final address
            (*raw).memory.ctx = raw;
            raw
        }
        Err(e) => {
            error!("llama_init_from_model: {e}");
            std::ptr::null_mut()
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn llama_init_from_model(m: *mut LlamaModel, p: llama_context_params) -> *mut Context {
    new_context(m, p)
}

#[no_mangle]
pub unsafe extern "C" fn llama_new_context_with_model(m: *mut LlamaModel, p: llama_context_params) -> *mut Context {
    new_context(m, p)
}

#[no_mangle]
pub unsafe extern "C" fn llama_free(c: *mut Context) {
    if !c.is_null() {
        drop(Box::from_raw(c));
    }
}

macro_rules! ctx_u32 {
    ($($name:ident => $e:expr),* $(,)?) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(c: *const Context) -> u32 {
            c.as_ref().map_or(0, $e)
        }
    )*};
}
ctx_u32! {
    llama_n_ctx => |c: &Context| c.n_ctx,
    llama_n_ctx_seq => |c: &Context| c.n_ctx,
    llama_n_batch => |c: &Context| c.n_batch,
    llama_n_ubatch => |c: &Context| c.n_ubatch,
    llama_n_seq_max => |c: &Context| c.n_seq_max,
    llama_n_rs_seq => |_c: &Context| 0,
}

#[no_mangle]
pub unsafe extern "C" fn llama_get_model(c: *const Context) -> *const LlamaModel {
    c.as_ref().map_or(std::ptr::null(), |c| c.model)
}

#[no_mangle]
pub unsafe extern "C" fn llama_get_memory(c: *const Context) -> *mut Memory {
    c.as_ref().map_or(std::ptr::null_mut(), |c| &c.memory as *const Memory as *mut Memory)
}

#[no_mangle]
pub unsafe extern "C" fn llama_pooling_type(c: *const Context) -> i32 {
    c.as_ref().map_or(-1, |c| c.pooling())
}

#[no_mangle]
pub unsafe extern "C" fn llama_set_n_threads(c: *mut Context, n: i32, nb: i32) {
    if let Some(c) = ctx_mut(c) {
        c.n_threads = n;
        c.n_threads_batch = nb;
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_n_threads(c: *mut Context) -> i32 {
    ctx_mut(c).map_or(0, |c| c.n_threads)
}

#[no_mangle]
pub unsafe extern "C" fn llama_n_threads_batch(c: *mut Context) -> i32 {
    ctx_mut(c).map_or(0, |c| c.n_threads_batch)
}

#[no_mangle]
pub unsafe extern "C" fn llama_set_embeddings(c: *mut Context, on: bool) {
    if let Some(c) = ctx_mut(c) {
        c.embeddings = on;
    }
}

#[no_mangle]
pub extern "C" fn llama_set_causal_attn(_c: *mut Context, causal: bool) {
    if !causal {
        stub!("llama_set_causal_attn(false) (decoder models attend causally)");
    }
}

#[no_mangle]
pub extern "C" fn llama_get_causal_attn(_c: *const Context) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn llama_set_warmup(_c: *mut Context, _w: bool) {}

/// Threadpools (stubs): ROCmForge's CPU backend keeps its own pool per model.
#[no_mangle]
pub extern "C" fn llama_attach_threadpool(_c: *mut Context, _tp: *mut c_void, _tpb: *mut c_void) {}

#[no_mangle]
pub extern "C" fn llama_detach_threadpool(_c: *mut Context) {}

#[no_mangle]
pub extern "C" fn llama_set_abort_callback(_c: *mut Context, _cb: ggml_abort_callback, _d: *mut c_void) {}

#[no_mangle]
pub extern "C" fn llama_synchronize(_c: *mut Context) {}

// ---- batches and decoding ----------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn llama_batch_get_one(tokens: *mut llama_token, n: i32) -> llama_batch {
    llama_batch {
        n_tokens: n,
        token: tokens,
        embd: std::ptr::null_mut(),
        pos: std::ptr::null_mut(),
        n_seq_id: std::ptr::null_mut(),
        seq_id: std::ptr::null_mut(),
        logits: std::ptr::null_mut(),
    }
}

/// The arrays llama.cpp's `llama_batch_init` allocates (with malloc, freed
/// by `llama_batch_free`): token or embd, pos, n_seq_id, seq_id (one more
/// entry, NULL, ends the list), logits.
#[no_mangle]
pub unsafe extern "C" fn llama_batch_init(n_tokens: i32, embd: i32, n_seq_max: i32) -> llama_batch {
    let n = n_tokens.max(0) as usize;
    let mut b = llama_batch_get_one(std::ptr::null_mut(), 0);
    let alloc = |bytes: usize| libc::calloc(1, bytes.max(1));
    if embd > 0 {
        b.embd = alloc(n * embd as usize * 4) as *mut f32;
    } else {
        b.token = alloc(n * 4) as *mut llama_token;
    }
    b.pos = alloc(n * 4) as *mut llama_pos;
    b.n_seq_id = alloc(n * 4) as *mut i32;
    b.seq_id = alloc((n + 1) * std::mem::size_of::<*mut llama_seq_id>()) as *mut *mut llama_seq_id;
    if !b.seq_id.is_null() {
        for i in 0..n {
            *b.seq_id.add(i) = alloc(n_seq_max.max(1) as usize * 4) as *mut llama_seq_id;
        }
        *b.seq_id.add(n) = std::ptr::null_mut();
    }
    b.logits = alloc(n) as *mut i8;
    b
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_free(b: llama_batch) {
    libc::free(b.token as *mut c_void);
    libc::free(b.embd as *mut c_void);
    libc::free(b.pos as *mut c_void);
    libc::free(b.n_seq_id as *mut c_void);
    if !b.seq_id.is_null() {
        let mut i = 0;
        while !(*b.seq_id.add(i)).is_null() {
            libc::free(*b.seq_id.add(i) as *mut c_void);
            i += 1;
        }
        libc::free(b.seq_id as *mut c_void);
    }
    libc::free(b.logits as *mut c_void);
}

#[no_mangle]
pub unsafe extern "C" fn llama_decode(c: *mut Context, b: llama_batch) -> i32 {
    let Some(c) = ctx_mut(c) else {
        error!("llama_decode: ctx is NULL");
        return context::DECODE_INVALID;
    };
    guard("llama_decode", context::DECODE_FAILED, || c.decode(&b))
}

/// An encoder model's (`nomic-bert`) batch, as `llama_decode` runs it
/// (llama.cpp accepts either for BERT-like models); a decoder model has no
/// encoder: -1.
#[no_mangle]
pub unsafe extern "C" fn llama_encode(c: *mut Context, b: llama_batch) -> i32 {
    let Some(c) = ctx_mut(c) else {
        error!("llama_encode: ctx is NULL");
        return context::DECODE_INVALID;
    };
    if !c.encoder {
        error!("llama_encode: the model has no encoder (a decoder-only model); use llama_decode");
        return -1;
    }
    guard("llama_encode", context::DECODE_FAILED, || c.decode(&b))
}

#[no_mangle]
pub unsafe extern "C" fn llama_get_logits(c: *mut Context) -> *mut f32 {
    match ctx_mut(c) {
        Some(c) if !c.logits.is_empty() => c.logits.as_mut_ptr(),
        _ => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_get_logits_ith(c: *mut Context, i: i32) -> *mut f32 {
    let Some(c) = ctx_mut(c) else { return std::ptr::null_mut() };
    match c.logits_ith(i) {
        Some(row) => row.as_mut_ptr(),
        None => {
            error!("llama_get_logits_ith: invalid logits id {i}");
            std::ptr::null_mut()
        }
    }
}

/// The last decode's embeddings (final hidden states after the output
/// norm), one n_embd row per token of the batch (every token is an output
/// when embeddings are on; pooled results: `llama_get_embeddings_seq`);
/// NULL without `embeddings`.
#[no_mangle]
pub unsafe extern "C" fn llama_get_embeddings(c: *mut Context) -> *mut f32 {
    match ctx_mut(c) {
        Some(c) if c.embeddings && !c.emb.is_empty() => c.emb.as_mut_ptr(),
        _ => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_get_embeddings_ith(c: *mut Context, i: i32) -> *mut f32 {
    let Some(c) = ctx_mut(c) else { return std::ptr::null_mut() };
    match c.embd_ith(i) {
        Some(row) => row.as_mut_ptr(),
        None => {
            error!("llama_get_embeddings_ith: invalid embeddings id {i}");
            std::ptr::null_mut()
        }
    }
}

/// A sequence's pooled embedding (mean, CLS or last, as
/// `llama_pooling_type` says) from the last decode; NULL when pooling is
/// none or the sequence had no tokens in it.
#[no_mangle]
pub unsafe extern "C" fn llama_get_embeddings_seq(c: *mut Context, s: llama_seq_id) -> *mut f32 {
    ctx_mut(c).and_then(|c| c.emb_seq.get_mut(&s)).map_or(std::ptr::null_mut(), |v| v.as_mut_ptr())
}

#[no_mangle]
pub extern "C" fn llama_get_sampled_token_ith(_c: *mut Context, _i: i32) -> llama_token {
    LLAMA_TOKEN_NULL
}

#[no_mangle]
pub extern "C" fn llama_get_sampled_probs_ith(_c: *mut Context, _i: i32) -> *mut f32 {
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_get_sampled_probs_count_ith(_c: *mut Context, _i: i32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn llama_get_sampled_logits_ith(_c: *mut Context, _i: i32) -> *mut f32 {
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_get_sampled_logits_count_ith(_c: *mut Context, _i: i32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn llama_get_sampled_candidates_ith(_c: *mut Context, _i: i32) -> *mut llama_token {
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_get_sampled_candidates_count_ith(_c: *mut Context, _i: i32) -> u32 {
    0
}

// ---- llama_batch_ext, llama_process ---------------------------------------------

/// `llama_batch_ext`: tokens added one by one, each with its sequences, an
/// optional position (unset: the sequence's next) and an output flag.
#[derive(Default)]
pub struct BatchExt {
    tokens: Vec<llama_token>,
    pos: Vec<llama_pos>,
    seqs: Vec<Vec<llama_seq_id>>,
    out: Vec<i8>,
}

unsafe fn bext<'a>(b: *mut BatchExt) -> Option<&'a mut BatchExt> {
    b.as_mut()
}

#[no_mangle]
pub extern "C" fn llama_batch_ext_init(_c: *mut Context) -> *mut BatchExt {
    Box::into_raw(Box::default())
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_free(b: *mut BatchExt) {
    if !b.is_null() {
        drop(Box::from_raw(b));
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_clear(b: *mut BatchExt) {
    if let Some(b) = bext(b) {
        *b = BatchExt::default();
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_add(b: *mut BatchExt, s: llama_seq_id) -> i32 {
    llama_batch_ext_add_token(b, s, LLAMA_TOKEN_NULL)
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_add_token(b: *mut BatchExt, s: llama_seq_id, t: llama_token) -> i32 {
    let Some(b) = bext(b) else { return -1 };
    if s < 0 {
        return -1;
    }
    b.tokens.push(t);
    b.pos.push(-1);
    b.seqs.push(vec![s]);
    b.out.push(0);
    b.tokens.len() as i32 - 1
}

#[no_mangle]
pub extern "C" fn llama_batch_ext_add_embd(_b: *mut BatchExt, _s: llama_seq_id, _e: llama_embd) -> i32 {
    error!("llama_batch_ext_add_embd: embedding inputs are not supported; add token ids");
    -2
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_add_seq(b: *mut BatchExt, i: i32, s: llama_seq_id) -> bool {
    match bext(b).and_then(|b| usize::try_from(i).ok().and_then(|i| b.seqs.get_mut(i))) {
        Some(v) if s >= 0 => {
            if !v.contains(&s) {
                v.push(s);
            }
            true
        }
        _ => false,
    }
}

#[no_mangle]
pub extern "C" fn llama_batch_ext_set_embd_token(_b: *mut BatchExt, _i: i32, _e: llama_embd) -> bool {
    false
}

#[no_mangle]
pub extern "C" fn llama_batch_ext_set_embd_state(_b: *mut BatchExt, _i: i32, _e: llama_embd) -> bool {
    false
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_set_output_embd(b: *mut BatchExt, i: i32, v: bool) -> bool {
    llama_batch_ext_set_output_logits(b, i, v)
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_set_output_logits(b: *mut BatchExt, i: i32, v: bool) -> bool {
    match bext(b).and_then(|b| usize::try_from(i).ok().and_then(|i| b.out.get_mut(i))) {
        Some(o) => {
            *o = v as i8;
            true
        }
        None => false,
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_batch_ext_set_pos(b: *mut BatchExt, i: i32, p: *const llama_pos) -> bool {
    match (bext(b).and_then(|b| usize::try_from(i).ok().and_then(|i| b.pos.get_mut(i))), p.as_ref()) {
        (Some(slot), Some(&p)) if p >= 0 => {
            *slot = p;
            true
        }
        (Some(slot), None) => {
            *slot = -1;
            true
        }
        _ => false,
    }
}

/// Run a `llama_batch_ext`: decode (encode is an error: decoder-only models).
#[no_mangle]
pub unsafe extern "C" fn llama_process(c: *mut Context, kind: i32, b: *mut BatchExt) -> i32 {
    if kind != 1 {
        error!("llama_process: encoding needs an encoder model (ROCmForge runs decoder-only models)");
        return -1;
    }
    let (Some(_), Some(b)) = (ctx_mut(c), bext(b)) else {
        error!("llama_process: NULL context or batch");
        return context::DECODE_INVALID;
    };
    if b.tokens.contains(&LLAMA_TOKEN_NULL) {
        error!("llama_process: a token without an id (embedding inputs are not supported)");
        return context::DECODE_INVALID;
    }
    let mut n_seq: Vec<i32> = b.seqs.iter().map(|v| v.len() as i32).collect();
    let mut seq_ptrs: Vec<*mut llama_seq_id> = b.seqs.iter_mut().map(|v| v.as_mut_ptr()).collect();
    let batch = llama_batch {
        n_tokens: b.tokens.len() as i32,
        token: b.tokens.as_mut_ptr(),
        embd: std::ptr::null_mut(),
        pos: b.pos.as_mut_ptr(),
        n_seq_id: n_seq.as_mut_ptr(),
        seq_id: seq_ptrs.as_mut_ptr(),
        logits: b.out.as_mut_ptr(),
    };
    llama_decode(c, batch)
}

// ---- memory --------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn llama_memory_clear(m: *mut Memory, _data: bool) {
    if let Some(c) = mem_ctx(m) {
        guard("llama_memory_clear", (), || c.clear());
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_memory_seq_rm(m: *mut Memory, s: llama_seq_id, p0: llama_pos, p1: llama_pos) -> bool {
    mem_ctx(m).is_some_and(|c| guard("llama_memory_seq_rm", false, || c.seq_rm(s, p0, p1)))
}

#[no_mangle]
pub unsafe extern "C" fn llama_memory_seq_cp(m: *mut Memory, src: llama_seq_id, dst: llama_seq_id, p0: llama_pos, p1: llama_pos) {
    if let Some(c) = mem_ctx(m) {
        guard("llama_memory_seq_cp", (), || c.seq_cp(src, dst, p0, p1));
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_memory_seq_keep(m: *mut Memory, s: llama_seq_id) {
    if let Some(c) = mem_ctx(m) {
        guard("llama_memory_seq_keep", (), || c.seq_keep(s));
    }
}

/// A position shift, done by turning the cached keys: the whole sequence,
/// or the positions after a gap `seq_rm` left, moved left into it (the
/// context shift of llama.cpp's examples). Other shifts are refused with
/// a warning (`Context::seq_add`).
#[no_mangle]
pub unsafe extern "C" fn llama_memory_seq_add(m: *mut Memory, s: llama_seq_id, p0: llama_pos, p1: llama_pos, delta: llama_pos) {
    if let Some(c) = mem_ctx(m) {
        guard("llama_memory_seq_add", (), || c.seq_add(s, p0, p1, delta));
    }
}

#[no_mangle]
pub extern "C" fn llama_memory_seq_div(_m: *mut Memory, _s: llama_seq_id, _p0: llama_pos, _p1: llama_pos, d: c_int) {
    if d != 1 {
        stub!("llama_memory_seq_div");
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_memory_seq_pos_min(m: *mut Memory, s: llama_seq_id) -> llama_pos {
    mem_ctx(m).map_or(-1, |c| c.pos_min(s))
}

#[no_mangle]
pub unsafe extern "C" fn llama_memory_seq_pos_max(m: *mut Memory, s: llama_seq_id) -> llama_pos {
    mem_ctx(m).map_or(-1, |c| c.pos_max(s))
}

#[no_mangle]
pub unsafe extern "C" fn llama_memory_can_shift(m: *mut Memory) -> bool {
    mem_ctx(m).is_some_and(|c| c.engine.is_some())
}

// ---- state -----------------------------------------------------------------------

unsafe fn state_copy(c: *mut Context, dst: *mut u8, size: usize, only: Option<llama_seq_id>) -> usize {
    let Some(c) = ctx_mut(c) else { return 0 };
    let Some(s) = c.state_bytes(only) else { return 0 };
    if dst.is_null() || size < s.len() {
        error!("llama_state_get_data: buffer of {size} bytes, the state needs {}", s.len());
        return 0;
    }
    std::ptr::copy_nonoverlapping(s.as_ptr(), dst, s.len());
    s.len()
}

unsafe fn state_set(c: *mut Context, src: *const u8, size: usize, dest: Option<llama_seq_id>) -> usize {
    let (Some(c), false) = (ctx_mut(c), src.is_null()) else { return 0 };
    if size > isize::MAX as usize {
        return 0;
    }
    let bytes = std::slice::from_raw_parts(src, size);
    guard("llama_state_set_data", 0, || c.set_state(bytes, dest))
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_get_size(c: *mut Context) -> usize {
    ctx_mut(c).and_then(|c| c.state_bytes(None)).map_or(0, |s| s.len())
}

#[no_mangle]
pub unsafe extern "C" fn llama_get_state_size(c: *mut Context) -> usize {
    llama_state_get_size(c)
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_get_data(c: *mut Context, dst: *mut u8, size: usize) -> usize {
    state_copy(c, dst, size, None)
}

#[no_mangle]
pub unsafe extern "C" fn llama_copy_state_data(c: *mut Context, dst: *mut u8) -> usize {
    state_copy(c, dst, usize::MAX, None)
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_set_data(c: *mut Context, src: *const u8, size: usize) -> usize {
    state_set(c, src, size, None)
}

#[no_mangle]
pub unsafe extern "C" fn llama_set_state_data(c: *mut Context, src: *const u8) -> usize {
    // no size given: the state's own lengths say how far to read
    match context::state_len(src) {
        Some(n) => state_set(c, src, n, None),
        None => {
            error!("llama_set_state_data: not a state of this library");
            0
        }
    }
}

/// A session file: the token count and tokens, then the state.
unsafe fn save_file(c: *mut Context, path: *const c_char, toks: *const llama_token, n: usize, only: Option<llama_seq_id>) -> usize {
    let (Some(c), Some(p)) = (ctx_mut(c), cstr_bytes(path)) else { return 0 };
    let mut o = Vec::new();
    o.extend_from_slice(b"RFLLSES1");
    let n = if toks.is_null() { 0 } else { n };
    o.extend_from_slice(&(n as u64).to_le_bytes());
    for i in 0..n {
        o.extend_from_slice(&(*toks.add(i)).to_le_bytes());
    }
    let Some(state) = c.state_bytes(only) else { return 0 };
    o.extend_from_slice(&state);
    match std::fs::write(std::ffi::OsStr::from_encoded_bytes_unchecked(p), &o) {
        Ok(()) => o.len(),
        Err(e) => {
            error!("llama_state_save_file: {e}");
            0
        }
    }
}

unsafe fn load_file(c: *mut Context, path: *const c_char, out: *mut llama_token, cap: usize, n_out: *mut usize, dest: Option<llama_seq_id>) -> usize {
    let (Some(cx), Some(p)) = (ctx_mut(c), cstr_bytes(path)) else { return 0 };
    let bytes = match std::fs::read(std::ffi::OsStr::from_encoded_bytes_unchecked(p)) {
        Ok(b) => b,
        Err(e) => {
            error!("llama_state_load_file: {e}");
            return 0;
        }
    };
    if bytes.len() < 16 || &bytes[..8] != b"RFLLSES1" {
        error!("llama_state_load_file: not a ROCmForge session file");
        return 0;
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let Some(end) = n.checked_mul(4).and_then(|b| b.checked_add(16)).filter(|&e| e <= bytes.len()) else { return 0 };
    if n > cap {
        error!("llama_state_load_file: {n} tokens, room for {cap}");
        return 0;
    }
    for i in 0..n {
        if !out.is_null() {
            *out.add(i) = i32::from_le_bytes(bytes[16 + 4 * i..20 + 4 * i].try_into().expect("4 bytes"));
        }
    }
    if !n_out.is_null() {
        *n_out = n;
    }
    let read = guard("llama_state_load_file", 0, || cx.set_state(&bytes[end..], dest));
    if read == 0 {
        0
    } else {
        end + read
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_load_file(c: *mut Context, path: *const c_char, out: *mut llama_token, cap: usize, n_out: *mut usize) -> bool {
    load_file(c, path, out, cap, n_out, None) > 0
}

#[no_mangle]
pub unsafe extern "C" fn llama_load_session_file(c: *mut Context, path: *const c_char, out: *mut llama_token, cap: usize, n_out: *mut usize) -> bool {
    llama_state_load_file(c, path, out, cap, n_out)
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_save_file(c: *mut Context, path: *const c_char, toks: *const llama_token, n: usize) -> bool {
    save_file(c, path, toks, n, None) > 0
}

#[no_mangle]
pub unsafe extern "C" fn llama_save_session_file(c: *mut Context, path: *const c_char, toks: *const llama_token, n: usize) -> bool {
    llama_state_save_file(c, path, toks, n)
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_get_size(c: *mut Context, s: llama_seq_id) -> usize {
    ctx_mut(c).and_then(|c| c.state_bytes(Some(s))).map_or(0, |s| s.len())
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_get_data(c: *mut Context, dst: *mut u8, size: usize, s: llama_seq_id) -> usize {
    state_copy(c, dst, size, Some(s))
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_set_data(c: *mut Context, src: *const u8, size: usize, dest: llama_seq_id) -> usize {
    state_set(c, src, size, Some(dest))
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_save_file(c: *mut Context, path: *const c_char, s: llama_seq_id, toks: *const llama_token, n: usize) -> usize {
    save_file(c, path, toks, n, Some(s))
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_load_file(c: *mut Context, path: *const c_char, dest: llama_seq_id, out: *mut llama_token, cap: usize, n_out: *mut usize) -> usize {
    load_file(c, path, out, cap, n_out, Some(dest))
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_get_size_ext(c: *mut Context, s: llama_seq_id, _flags: u32) -> usize {
    llama_state_seq_get_size(c, s)
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_get_data_ext(c: *mut Context, dst: *mut u8, size: usize, s: llama_seq_id, _flags: u32) -> usize {
    llama_state_seq_get_data(c, dst, size, s)
}

#[no_mangle]
pub unsafe extern "C" fn llama_state_seq_set_data_ext(c: *mut Context, src: *const u8, size: usize, dest: llama_seq_id, _flags: u32) -> usize {
    llama_state_seq_set_data(c, src, size, dest)
}

// ---- vocabulary ----------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_type(v: *const Vocab) -> i32 {
    vocab_ref(v).map_or(0, |v| v.kind())
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_n_tokens(v: *const Vocab) -> i32 {
    vocab_ref(v).map_or(0, |v| v.n_tokens())
}

#[no_mangle]
pub unsafe extern "C" fn llama_n_vocab(v: *const Vocab) -> i32 {
    llama_vocab_n_tokens(v)
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_get_text(v: *const Vocab, t: llama_token) -> *const c_char {
    vocab_ref(v).and_then(|v| v.text(t)).map_or(std::ptr::null(), |s| s.as_ptr())
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_get_score(v: *const Vocab, t: llama_token) -> f32 {
    vocab_ref(v).map_or(0.0, |v| v.score(t))
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_get_attr(v: *const Vocab, t: llama_token) -> i32 {
    vocab_ref(v).map_or(0, |v| v.attr(t))
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_is_eog(v: *const Vocab, t: llama_token) -> bool {
    vocab_ref(v).is_some_and(|v| v.is_eog(t))
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_is_control(v: *const Vocab, t: llama_token) -> bool {
    vocab_ref(v).is_some_and(|v| v.is_control(t))
}

macro_rules! vocab_token {
    ($($name:ident => $e:expr),* $(,)?) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(v: *const Vocab) -> llama_token {
            vocab_ref(v).map_or(LLAMA_TOKEN_NULL, $e)
        }
    )*};
}
vocab_token! {
    llama_vocab_bos => |v: &Vocab| v.bos(), llama_token_bos => |v: &Vocab| v.bos(),
    llama_vocab_eos => |v: &Vocab| v.eos(), llama_token_eos => |v: &Vocab| v.eos(),
    llama_vocab_eot => |v: &Vocab| v.eot(), llama_token_eot => |v: &Vocab| v.eot(),
    llama_vocab_sep => |v: &Vocab| v.sep(), llama_token_sep => |v: &Vocab| v.sep(),
    llama_vocab_nl => |v: &Vocab| v.nl(), llama_token_nl => |v: &Vocab| v.nl(),
    llama_vocab_pad => |v: &Vocab| v.pad(), llama_token_pad => |v: &Vocab| v.pad(),
    llama_vocab_cls => |v: &Vocab| v.bos(), llama_token_cls => |v: &Vocab| v.bos(),
    llama_vocab_mask => |_v: &Vocab| LLAMA_TOKEN_NULL,
    llama_vocab_fim_pre => |v: &Vocab| v.fim(0), llama_token_fim_pre => |v: &Vocab| v.fim(0),
    llama_vocab_fim_suf => |v: &Vocab| v.fim(1), llama_token_fim_suf => |v: &Vocab| v.fim(1),
    llama_vocab_fim_mid => |v: &Vocab| v.fim(2), llama_token_fim_mid => |v: &Vocab| v.fim(2),
    llama_vocab_fim_pad => |v: &Vocab| v.fim(3), llama_token_fim_pad => |v: &Vocab| v.fim(3),
    llama_vocab_fim_rep => |v: &Vocab| v.fim(4), llama_token_fim_rep => |v: &Vocab| v.fim(4),
    llama_vocab_fim_sep => |v: &Vocab| v.fim(5), llama_token_fim_sep => |v: &Vocab| v.fim(5),
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_get_add_bos(v: *const Vocab) -> bool {
    vocab_ref(v).is_some_and(|v| v.add_bos())
}

#[no_mangle]
pub unsafe extern "C" fn llama_add_bos_token(v: *const Vocab) -> bool {
    llama_vocab_get_add_bos(v)
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_get_add_eos(v: *const Vocab) -> bool {
    vocab_ref(v).is_some_and(|v| v.add_eos())
}

#[no_mangle]
pub unsafe extern "C" fn llama_add_eos_token(v: *const Vocab) -> bool {
    llama_vocab_get_add_eos(v)
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_get_add_sep(v: *const Vocab) -> bool {
    vocab_ref(v).is_some_and(|v| v.tok().vocab.add_sep)
}

#[no_mangle]
pub unsafe extern "C" fn llama_vocab_get_suppress_tokens(_v: *const Vocab, n: *mut i32) -> *const llama_token {
    if !n.is_null() {
        *n = 0;
    }
    std::ptr::null()
}

#[no_mangle]
pub unsafe extern "C" fn llama_token_get_text(v: *const Vocab, t: llama_token) -> *const c_char {
    llama_vocab_get_text(v, t)
}

#[no_mangle]
pub unsafe extern "C" fn llama_token_get_score(v: *const Vocab, t: llama_token) -> f32 {
    llama_vocab_get_score(v, t)
}

#[no_mangle]
pub unsafe extern "C" fn llama_token_get_attr(v: *const Vocab, t: llama_token) -> i32 {
    llama_vocab_get_attr(v, t)
}

#[no_mangle]
pub unsafe extern "C" fn llama_token_is_eog(v: *const Vocab, t: llama_token) -> bool {
    llama_vocab_is_eog(v, t)
}

#[no_mangle]
pub unsafe extern "C" fn llama_token_is_control(v: *const Vocab, t: llama_token) -> bool {
    llama_vocab_is_control(v, t)
}

/// Copy `s` into (buf, len) or return its negated length (llama.cpp's
/// tokenize / token_to_piece / detokenize convention).
unsafe fn put_or_need<T: Copy>(s: &[T], buf: *mut T, len: i32) -> i32 {
    if s.len() > len.max(0) as usize || (buf.is_null() && !s.is_empty()) {
        return -(s.len().min(i32::MAX as usize) as i32);
    }
    if !s.is_empty() {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf, s.len());
    }
    s.len() as i32
}

#[no_mangle]
pub unsafe extern "C" fn llama_tokenize(v: *const Vocab, text: *const c_char, text_len: i32, out: *mut llama_token, n_max: i32, add_special: bool, parse_special: bool) -> i32 {
    let Some(v) = vocab_ref(v) else { return i32::MIN };
    if text.is_null() && text_len > 0 {
        return i32::MIN;
    }
    let bytes = if text_len <= 0 { &[][..] } else { std::slice::from_raw_parts(text as *const u8, text_len as usize) };
    guard("llama_tokenize", i32::MIN, || {
        let text = String::from_utf8_lossy(bytes);
        let ids: Vec<llama_token> = v.tok().encode(&text, add_special, parse_special).into_iter().map(|i| i as llama_token).collect();
        put_or_need(&ids, out, n_max)
    })
}

#[no_mangle]
pub unsafe extern "C" fn llama_token_to_piece(v: *const Vocab, t: llama_token, buf: *mut c_char, len: i32, lstrip: i32, special: bool) -> i32 {
    let Some(v) = vocab_ref(v) else { return 0 };
    let Some(id) = v.id(t) else { return 0 };
    guard("llama_token_to_piece", 0, || {
        let piece = v.tok().token_to_piece(id, special).unwrap_or(&[]);
        let mut s = piece;
        let mut k = lstrip.max(0);
        while k > 0 && s.first() == Some(&b' ') {
            s = &s[1..];
            k -= 1;
        }
        put_or_need(s, buf as *mut u8, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn llama_detokenize(v: *const Vocab, toks: *const llama_token, n: i32, text: *mut c_char, max: i32, remove_special: bool, unparse_special: bool) -> i32 {
    let Some(v) = vocab_ref(v) else { return i32::MIN };
    if toks.is_null() && n > 0 {
        return i32::MIN;
    }
    let ids = if n <= 0 { &[][..] } else { std::slice::from_raw_parts(toks, n as usize) };
    guard("llama_detokenize", i32::MIN, || {
        let mut ids: Vec<u32> = ids.iter().filter_map(|&t| v.id(t)).collect();
        let tok = v.tok();
        // SentencePiece's space prefix comes off the first token, unless
        // that token follows a BOS removed here (llama.cpp's rule)
        let mut strip = tok.vocab.add_space_prefix;
        if remove_special {
            if v.add_bos() && ids.first().is_some_and(|&f| f as llama_token == v.bos()) {
                ids.remove(0);
                strip = false;
            }
            if v.add_eos() && ids.last().is_some_and(|&l| l as llama_token == v.eos()) {
                ids.pop();
            }
        }
        let mut bytes = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let p = tok.token_to_piece(id, unparse_special).unwrap_or(&[]);
            bytes.extend_from_slice(if k == 0 && strip { p.strip_prefix(b" ").unwrap_or(p) } else { p });
        }
        // the length needed is the one before the clean-up, as llama.cpp's
        if bytes.len() <= max.max(0) as usize && cleans_spaces(&tok.vocab) {
            rocmforge::tokenizer::wpm::clean_spaces(&mut bytes);
        }
        put_or_need(&bytes, text as *mut u8, max)
    })
}

/// Whether llama.cpp's detokenizer tidies spaces for this vocabulary
/// (`clean_spaces`, Hugging Face's `clean_up_tokenization_spaces`):
/// WordPiece and byte-level BPE vocabularies, except the pre-tokenizers
/// llama.cpp exempts.
fn cleans_spaces(v: &rocmforge::tokenizer::vocab::Vocab) -> bool {
    const EXEMPT: &[&str] = &[
        "deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5", "youtu", "sarvam-moe", "command-r", "qwen2",
        "deepseek-r1-qwen", "kormo", "f2llmv2", "qwen35", "poro-chat", "viking", "tekken", "smollm", "chameleon",
        "gpt-4o", "llama4", "kanana2", "talkie", "granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe",
        "trillion", "granite-docling", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan",
        "hunyuan-dense", "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "grok-2", "afmoe", "laguna", "minimax-m2",
        "solar-open",
    ];
    use rocmforge::tokenizer::vocab::ModelKind;
    v.kind == ModelKind::Wpm || (v.kind == ModelKind::Bpe && !EXEMPT.contains(&v.pre.as_str()))
}

// ---- chat templates ------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn llama_chat_apply_template(tmpl: *const c_char, chat: *const llama_chat_message, n: usize, add_ass: bool, buf: *mut c_char, len: i32) -> i32 {
    let tmpl = cstr_bytes(tmpl).map(|t| String::from_utf8_lossy(t).into_owned());
    let n = if chat.is_null() { 0 } else { n };
    let mut msgs = Vec::new();
    for i in 0..n {
        let m = &*chat.add(i);
        let (Some(r), Some(c)) = (cstr_bytes(m.role), cstr_bytes(m.content)) else { return -1 };
        msgs.push((String::from_utf8_lossy(r).into_owned(), String::from_utf8_lossy(c).into_owned()));
    }
    match chat::apply(tmpl.as_deref().unwrap_or("chatml"), &msgs, add_ass) {
        Some(s) => {
            // llama.cpp's strncpy: what fits, NUL-padded when it all fits;
            // the whole length
            let b = s.as_bytes();
            if !buf.is_null() && len > 0 {
                let n = b.len().min(len as usize);
                std::ptr::copy_nonoverlapping(b.as_ptr(), buf as *mut u8, n);
                std::ptr::write_bytes(buf.add(n), 0, len as usize - n);
            }
            b.len() as i32
        }
        None => -1,
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_chat_builtin_templates(out: *mut *const c_char, len: usize) -> i32 {
    let names = chat::builtin_names();
    if !out.is_null() {
        for (i, n) in names.iter().take(len).enumerate() {
            *out.add(i) = n.as_ptr();
        }
    }
    names.len() as i32
}

// ---- performance ------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn llama_perf_context(c: *const Context) -> llama_perf_context_data {
    c.as_ref().map_or_else(llama_perf_context_data::default, |c| {
        let mut p = c.perf;
        p.t_start_ms = c.t_start.elapsed().as_secs_f64() * 1e3;
        p
    })
}

#[no_mangle]
pub unsafe extern "C" fn llama_perf_context_print(c: *const Context) {
    if let Some(c) = c.as_ref() {
        let p = c.perf;
        log::log(log::LEVEL_INFO, &format!(
            "llama_perf_context_print: load time = {:.2} ms\nllama_perf_context_print: prompt eval time = {:.2} ms / {} tokens\nllama_perf_context_print: eval time = {:.2} ms / {} runs",
            p.t_load_ms, p.t_p_eval_ms, p.n_p_eval, p.t_eval_ms, p.n_eval
        ));
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_perf_context_reset(c: *mut Context) {
    if let Some(c) = ctx_mut(c) {
        let load = c.perf.t_load_ms;
        c.perf = llama_perf_context_data { t_load_ms: load, ..Default::default() };
    }
}

// ---- training (stubs) ----------------------------------------------------------------

#[no_mangle]
pub extern "C" fn llama_opt_param_filter_all(_t: *const c_void, _u: *mut c_void) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn llama_opt_init(_c: *mut Context, _m: *mut LlamaModel) {
    stub!("llama_opt_init (training)");
}

#[no_mangle]
pub extern "C" fn llama_opt_epoch(_c: *mut Context) {
    stub!("llama_opt_epoch (training)");
}
