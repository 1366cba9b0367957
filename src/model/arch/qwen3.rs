//! `qwen3`: Qwen3 (dense). Qwen2's block without Q/K/V biases, with an
//! RMSNorm over each Q and K head before RoPE (`attn_q_norm` /
//! `attn_k_norm`, as gemma3); NeoX RoPE; head size `key_length` (128 on
//! every size, independent of n_embd / n_head); output tied or separate.

use super::{ArchSpec, FfnAct, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen3",
    rope: RopeStyle::Neox,
    ffn_act: FfnAct::Silu,
    embed_scale_sqrt: false,
    qk_norm: true,
    post_norms: false,
    qkv_bias: false,
    global_every: None,
    local_rope_base: 10_000.0,
    fused_gate_up: false,
    encoder: false,
};
