//! `qwen2`: Qwen2/2.5. Llama's block with Q/K/V biases and NeoX RoPE; output
//! projection tied or separate (`output.weight` when present).

use super::{ArchSpec, FfnAct, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen2",
    rope: RopeStyle::Neox,
    ffn_act: FfnAct::Silu,
    embed_scale_sqrt: false,
    qk_norm: false,
    post_norms: false,
    qkv_bias: true,
    global_every: None,
    local_rope_base: 10_000.0,
    fused_gate_up: false,
    encoder: false,
};
