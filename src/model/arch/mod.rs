//! Architecture knowledge as data. Each architecture is one small file with
//! an [`ArchSpec`]: which GGUF keys and tensors it uses and which variant of
//! each generic transformer step it takes. The forward passes
//! (`model::reference`, `model::cpu`) read these flags and stay generic.

mod gemma3;
mod llama;
mod nomic_bert;
mod phi3;
mod qwen2;
mod qwen3;

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (x[2i], x[2i+1]): llama.cpp's "normal" (GGUF llama
    /// files have Q/K permuted for it).
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX style.
    Neox,
}

/// The gated FFN's activation: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnAct {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// Per-layer attention kind, for interleaved sliding-window models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Global,
    /// Attends to the last `window` positions only, with its own RoPE base.
    Local,
}

/// One architecture, as data.
#[derive(Debug)]
pub struct ArchSpec {
    /// `general.architecture`.
    pub name: &'static str,
    pub rope: RopeStyle,
    pub ffn_act: FfnAct,
    /// Multiply the token embedding by √n_embd (Gemma).
    pub embed_scale_sqrt: bool,
    /// `attn_q_norm` / `attn_k_norm`: RMSNorm over each head of Q and K.
    pub qk_norm: bool,
    /// `post_attention_norm` / `post_ffw_norm` on each block's branch output.
    pub post_norms: bool,
    /// Q/K/V biases `attn_{q,k,v}.bias` (required when true).
    pub qkv_bias: bool,
    /// Interleaved local/global layers: every `n`-th layer (1-based) is
    /// global, the rest slide over `attention.sliding_window` positions.
    pub global_every: Option<usize>,
    /// RoPE base for local layers when the file does not give one.
    pub local_rope_base: f32,
    /// `ffn_up.weight` holds gate and up stacked (`2 n_ff` rows, gate
    /// first) and there is no `ffn_gate.weight` (Phi-3); the loader splits
    /// it into two row ranges, so every backend sees separate matrices.
    /// (A fused `attn_qkv.weight` needs no flag: any architecture may have
    /// one instead of `attn_{q,k,v}`, as in llama.cpp.)
    pub fused_gate_up: bool,
    /// A bidirectional encoder for embeddings (`nomic-bert`): no LM head
    /// and no KV cache; it runs through [`crate::model::encoder`], and
    /// the decoder engine refuses it.
    pub encoder: bool,
}

/// Every architecture this build knows, looked up by `general.architecture`.
pub const ARCHS: [&ArchSpec; 6] = [&llama::SPEC, &qwen2::SPEC, &qwen3::SPEC, &phi3::SPEC, &gemma3::SPEC, &nomic_bert::SPEC];

pub fn lookup(name: &str) -> Option<&'static ArchSpec> {
    ARCHS.iter().copied().find(|a| a.name == name)
}

/// Tensor names, shared by every architecture (GGUF's standard names).
pub mod names {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    pub const OUTPUT: &str = "output.weight";
    /// Per-pair RoPE frequency divisors (llama3 scaling), one for all layers.
    pub const ROPE_FREQS: &str = "rope_freqs.weight";
    /// LongRoPE's divisors for short and long contexts (Phi-3 128k).
    pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";
    pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
    pub fn blk(i: usize, t: &str) -> String {
        format!("blk.{i}.{t}")
    }
}
