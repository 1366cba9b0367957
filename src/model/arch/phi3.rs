//! `phi3`: Phi-3 (mini/medium, 4k and 128k). Llama's pre-norm SwiGLU block
//! with fused projections: `attn_qkv.weight` (Q, K, V rows stacked) and
//! `ffn_up.weight` holding gate then up (`2 n_ff` rows, no `ffn_gate`),
//! both split into row ranges at load; NeoX RoPE; separate output matrix.
//!
//! 128k models carry LongRoPE: per-pair frequency divisors
//! `rope_factors_short.weight` / `rope_factors_long.weight` (long when the
//! context is longer than `rope.scaling.original_context_length`, as
//! llama.cpp chooses per context) and a cos/sin scale
//! `rope.scaling.attn_factor` (model::config). The sliding window Phi-3
//! GGUFs record is ignored, as llama.cpp ignores it ("Phi SWA is currently
//! disabled").

use super::{ArchSpec, FfnAct, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "phi3",
    rope: RopeStyle::Neox,
    ffn_act: FfnAct::Silu,
    embed_scale_sqrt: false,
    qk_norm: false,
    post_norms: false,
    qkv_bias: false,
    global_every: None,
    local_rope_base: 10_000.0,
    fused_gate_up: true,
    encoder: false,
};
