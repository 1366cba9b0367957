//! `llama`: Llama 2/3, Mistral, SmolLM2. Pre-norm blocks, SwiGLU FFN, RoPE on
//! adjacent pairs (GGUF's permuted Q/K), optional tied embeddings.
//!
//! Llama 3.1+ RoPE scaling ("llama3") is no metadata key: llama.cpp's
//! converter writes the per-pair frequency divisors it computes from
//! factor / low_freq_factor / high_freq_factor / original context as
//! `rope_freqs.weight`, applied to every layer (model::config).
//!
//! Mistral: llama.cpp has no `mistral` architecture (only `mistral3` /
//! `mistral4`, other models): Mistral-7B GGUFs say `llama`. llama.cpp's
//! llama graph reads no sliding window, so none is applied here either
//! (an `attention.sliding_window` key on a llama file is ignored).

use super::{ArchSpec, FfnAct, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "llama",
    rope: RopeStyle::Normal,
    ffn_act: FfnAct::Silu,
    embed_scale_sqrt: false,
    qk_norm: false,
    post_norms: false,
    qkv_bias: false,
    global_every: None,
    local_rope_base: 10_000.0,
    fused_gate_up: false,
    encoder: false,
};
