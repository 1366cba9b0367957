//! `nomic-bert`: nomic-embed-text (v1, v1.5). A bidirectional encoder for
//! embeddings, with no next-token head: token embedding plus token-type
//! row 0, LayerNorm (with bias); per layer a fused QKV projection
//! (`attn_qkv`), NeoX RoPE, attention over every token of the input, the
//! input added back and LayerNorm (`attn_output_norm`: post-norm), a
//! SwiGLU FFN, the FFN input added back and LayerNorm
//! (`layer_output_norm`). No final norm: the last layer's output is the
//! per-token hidden state, pooled (mean by `pooling_type`) into one
//! vector. It runs through the encoder pass ([`crate::model::encoder`]),
//! not the decoder engine.

use super::{ArchSpec, FfnAct, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "nomic-bert",
    rope: RopeStyle::Neox,
    ffn_act: FfnAct::Silu,
    embed_scale_sqrt: false,
    qk_norm: false,
    post_norms: false,
    qkv_bias: false,
    global_every: None,
    local_rope_base: 10_000.0,
    fused_gate_up: false,
    encoder: true,
};
