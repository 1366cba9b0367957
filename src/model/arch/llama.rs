//! `llama`: Llama 2/3, Mistral, SmolLM2. Pre-norm blocks, SwiGLU FFN, RoPE on
//! adjacent pairs (GGUF's permuted Q/K), optional tied embeddings.

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
    encoder: false,
};
