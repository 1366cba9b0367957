//! `gemma3`: embedding × √n_embd; RMSNorm before and after attention and FFN;
//! RMSNorm on each Q and K head; GELU-tanh gated FFN; NeoX RoPE; 5 local
//! (sliding-window, RoPE base 10,000) layers to 1 global; head size
//! `key_length` (256) independent of n_embd / n_head; tied embeddings.
//!
//! Norm weights: GGUF stores 1 + w (checked: HF's GGUF loader subtracts one
//! from every Gemma norm weight), so they multiply directly.

use super::{ArchSpec, FfnAct, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "gemma3",
    rope: RopeStyle::Neox,
    ffn_act: FfnAct::GeluTanh,
    embed_scale_sqrt: true,
    qk_norm: true,
    post_norms: true,
    qkv_bias: false,
    global_every: Some(6),
    local_rope_base: 10_000.0,
    fused_gate_up: false,
    encoder: false,
};
