//! The structs of `llama.h` (llama.cpp build 0c1e570, as vendored by the
//! llama-cpp-python 0.3.36 sdist), field for field, written here rather
//! than copied. Every C enum field is an `i32`. `tests/abi.rs` compiles a C
//! file against the sdist's own `llama.h` and checks each struct's size and
//! field offsets against [`layouts`].

use std::ffi::{c_char, c_void};

pub type llama_token = i32;
pub type llama_pos = i32;
pub type llama_seq_id = i32;

pub const LLAMA_DEFAULT_SEED: u32 = 0xFFFF_FFFF;
pub const LLAMA_TOKEN_NULL: llama_token = -1;

/// `bool (*)(float progress, void * user_data)`
pub type llama_progress_callback = Option<unsafe extern "C" fn(f32, *mut c_void) -> bool>;
/// `bool (*)(void * data)`
pub type ggml_abort_callback = Option<unsafe extern "C" fn(*mut c_void) -> bool>;
/// `void (*)(enum ggml_log_level, const char *, void *)`
pub type ggml_log_callback = Option<unsafe extern "C" fn(i32, *const c_char, *mut c_void)>;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_token_data {
    pub id: llama_token,
    pub logit: f32,
    pub p: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_token_data_array {
    pub data: *mut llama_token_data,
    pub size: usize,
    pub selected: i64,
    pub sorted: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_batch {
    pub n_tokens: i32,
    pub token: *mut llama_token,
    pub embd: *mut f32,
    pub pos: *mut llama_pos,
    pub n_seq_id: *mut i32,
    pub seq_id: *mut *mut llama_seq_id,
    pub logits: *mut i8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_model_params {
    pub devices: *mut c_void,
    pub tensor_buft_overrides: *const c_void,
    pub n_gpu_layers: i32,
    pub split_mode: i32,
    pub load_mode: i32,
    pub lazy_mode: i32,
    pub main_gpu: i32,
    pub tensor_split: *const f32,
    pub progress_callback: llama_progress_callback,
    pub progress_callback_user_data: *mut c_void,
    pub kv_overrides: *const c_void,
    pub vocab_only: bool,
    pub check_tensors: bool,
    pub use_extra_bufts: bool,
    pub no_host: bool,
    pub no_alloc: bool,
    pub load_mtp: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_sampler_seq_config {
    pub seq_id: llama_seq_id,
    pub sampler: *mut llama_sampler,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_context_params {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_seq_max: u32,
    pub n_rs_seq: u32,
    pub n_outputs_max: u32,
    pub n_outputs_max_per_seq: u32,
    pub n_threads: i32,
    pub n_threads_batch: i32,
    pub ctx_type: i32,
    pub rope_scaling_type: i32,
    pub pooling_type: i32,
    pub attention_type: i32,
    pub flash_attn_type: i32,
    pub rope_freq_base: f32,
    pub rope_freq_scale: f32,
    pub yarn_ext_factor: f32,
    pub yarn_attn_factor: f32,
    pub yarn_beta_fast: f32,
    pub yarn_beta_slow: f32,
    pub yarn_orig_ctx: u32,
    pub defrag_thold: f32,
    pub cb_eval: *mut c_void,
    pub cb_eval_user_data: *mut c_void,
    pub type_k: i32,
    pub type_v: i32,
    pub abort_callback: ggml_abort_callback,
    pub abort_callback_data: *mut c_void,
    pub embeddings: bool,
    pub offload_kqv: bool,
    pub no_perf: bool,
    pub op_offload: bool,
    pub swa_full: bool,
    pub kv_unified: bool,
    pub samplers: *mut llama_sampler_seq_config,
    pub n_samplers: usize,
    pub ctx_other: *mut c_void,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_model_quantize_params {
    pub nthread: i32,
    pub ftype: i32,
    pub output_tensor_type: i32,
    pub token_embedding_type: i32,
    pub allow_requantize: bool,
    pub quantize_output_tensor: bool,
    pub only_copy: bool,
    pub pure_: bool,
    pub keep_split: bool,
    pub dry_run: bool,
    pub imatrix: *const c_void,
    pub kv_overrides: *const c_void,
    pub tt_overrides: *const c_void,
    pub prune_layers: *const i32,
    pub max_buf_size: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_logit_bias {
    pub token: llama_token,
    pub bias: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_sampler_chain_params {
    pub no_perf: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_chat_message {
    pub role: *const c_char,
    pub content: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_embd {
    pub data: *const f32,
    pub n_rows: usize,
    pub n_embd: usize,
}

/// The sampler interface: callers (llama-cpp-python among them) build
/// their own samplers with it, leaving members NULL where llama.h allows.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct llama_sampler_i {
    pub name: Option<unsafe extern "C" fn(*const llama_sampler) -> *const c_char>,
    pub accept: Option<unsafe extern "C" fn(*mut llama_sampler, llama_token)>,
    pub apply: Option<unsafe extern "C" fn(*mut llama_sampler, *mut llama_token_data_array)>,
    pub reset: Option<unsafe extern "C" fn(*mut llama_sampler)>,
    pub clone: Option<unsafe extern "C" fn(*const llama_sampler) -> *mut llama_sampler>,
    pub free: Option<unsafe extern "C" fn(*mut llama_sampler)>,
    pub backend_init: *mut c_void,
    pub backend_accept: *mut c_void,
    pub backend_apply: *mut c_void,
    pub backend_set_input: *mut c_void,
    pub backend_reset: *mut c_void,
    pub copy_state: Option<unsafe extern "C" fn(*const llama_sampler, *mut llama_sampler)>,
}

#[repr(C)]
#[derive(Debug)]
pub struct llama_sampler {
    pub iface: *mut llama_sampler_i,
    pub ctx: *mut c_void,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct llama_perf_context_data {
    pub t_start_ms: f64,
    pub t_load_ms: f64,
    pub t_p_eval_ms: f64,
    pub t_eval_ms: f64,
    pub n_p_eval: i32,
    pub n_eval: i32,
    pub n_reused: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct llama_perf_sampler_data {
    pub t_sample_ms: f64,
    pub n_sample: i32,
}

/// A struct's name, size and (field, offset) list.
pub type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// (struct, size, [(field, offset)]) of every struct above, as the C
/// compiler must lay them out (tests/abi.rs compares with llama.h).
pub fn layouts() -> Vec<Layout> {
    use std::mem::{offset_of, size_of};
    macro_rules! s {
        ($t:ident { $($f:ident $(as $cf:literal)?),* $(,)? }) => {
            (stringify!($t), size_of::<$t>(), vec![$((s!(@name $f $($cf)?), offset_of!($t, $f))),*])
        };
        (@name $f:ident $cf:literal) => { $cf };
        (@name $f:ident) => { stringify!($f) };
    }
    vec![
        s!(llama_token_data { id, logit, p }),
        s!(llama_token_data_array { data, size, selected, sorted }),
        s!(llama_batch { n_tokens, token, embd, pos, n_seq_id, seq_id, logits }),
        s!(llama_model_params {
            devices, tensor_buft_overrides, n_gpu_layers, split_mode, load_mode, lazy_mode, main_gpu, tensor_split,
            progress_callback, progress_callback_user_data, kv_overrides, vocab_only, check_tensors, use_extra_bufts,
            no_host, no_alloc, load_mtp
        }),
        s!(llama_sampler_seq_config { seq_id, sampler }),
        s!(llama_context_params {
            n_ctx, n_batch, n_ubatch, n_seq_max, n_rs_seq, n_outputs_max, n_outputs_max_per_seq, n_threads, n_threads_batch,
            ctx_type, rope_scaling_type, pooling_type, attention_type, flash_attn_type, rope_freq_base, rope_freq_scale,
            yarn_ext_factor, yarn_attn_factor, yarn_beta_fast, yarn_beta_slow, yarn_orig_ctx, defrag_thold, cb_eval,
            cb_eval_user_data, type_k, type_v, abort_callback, abort_callback_data, embeddings, offload_kqv, no_perf,
            op_offload, swa_full, kv_unified, samplers, n_samplers, ctx_other
        }),
        s!(llama_model_quantize_params {
            nthread, ftype, output_tensor_type, token_embedding_type, allow_requantize, quantize_output_tensor, only_copy,
            pure_ as "pure", keep_split, dry_run, imatrix, kv_overrides, tt_overrides, prune_layers, max_buf_size
        }),
        s!(llama_logit_bias { token, bias }),
        s!(llama_sampler_chain_params { no_perf }),
        s!(llama_chat_message { role, content }),
        s!(llama_embd { data, n_rows, n_embd }),
        s!(llama_sampler_i { name, accept, apply, reset, clone, free, backend_init, backend_accept, backend_apply, backend_set_input, backend_reset, copy_state }),
        s!(llama_sampler { iface, ctx }),
        s!(llama_perf_context_data { t_start_ms, t_load_ms, t_p_eval_ms, t_eval_ms, n_p_eval, n_eval, n_reused }),
        s!(llama_perf_sampler_data { t_sample_ms, n_sample }),
    ]
}
