//! Hyperparameters read from GGUF metadata (arch-prefixed keys), checked
//! against the tensors actually present.

use super::arch::{self, ArchSpec, LayerKind};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// RoPE frequency scaling (`rope.scaling.type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// YaRN: interpolation blended with extrapolation per dimension, as ggml.
    Yarn { factor: f32, orig_ctx: u32, attn_factor: f32, beta_fast: f32, beta_slow: f32 },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: &'static ArchSpec,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head size of Q and K (`attention.key_length`, default n_embd / n_head).
    pub head_dim: usize,
    /// Per-head size of V (`attention.value_length`, default head_dim).
    pub head_dim_v: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    /// The norms' epsilon: RMSNorm's (`attention.layer_norm_rms_epsilon`)
    /// in decoders, LayerNorm's (`attention.layer_norm_epsilon`) in
    /// encoders.
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_base_local: f32,
    /// Dimensions of each head that RoPE rotates (`rope.dimension_count`).
    pub rope_dim: usize,
    pub rope_scaling: RopeScaling,
    pub sliding_window: Option<usize>,
    pub layer_kinds: Vec<LayerKind>,
    /// Attention logit scale.
    pub attn_scale: f32,
    /// No `output.weight`: the embedding matrix is the output projection.
    pub tied_embeddings: bool,
    /// `pooling_type` as llama.cpp numbers it (0 none, 1 mean, 2 CLS,
    /// 3 last), when the file says: how the model's embeddings pool.
    pub pooling_type: Option<u32>,
}

/// Tensors every layer of every supported architecture has (attn_norm, q, k,
/// v, output, ffn_norm, gate, up, down): bounds `block_count` by the file.
const MIN_TENSORS_PER_LAYER: usize = 9;
/// The largest head count or head size accepted (real models: <= 256 / 512).
const MAX_DIM: usize = 1 << 16;

fn missing(what: &str) -> Error {
    Error::Unsupported(format!("model metadata lacks {what}"))
}

impl Config {
    pub fn from_gguf(f: &GgufFile) -> Result<Config> {
        let arch_name = f.architecture()?;
        let arch = arch::lookup(arch_name).ok_or_else(|| {
            let known: Vec<&str> = arch::ARCHS.iter().map(|a| a.name).collect();
            Error::Unsupported(format!("architecture '{arch_name}' is not supported (supported: {})", known.join(", ")))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            f.get_u64(&key(k))?.map(|v| v as usize).ok_or_else(|| missing(&key(k)))
        };
        let opt = |k: &str| -> Result<Option<usize>> { Ok(f.get_u64(&key(k))?.map(|v| v as usize)) };
        let optf = |k: &str| -> Result<Option<f32>> { f.get_f32(&key(k)) };

        // Every count that sizes an allocation is checked against what the
        // file holds before anything is allocated from it: the embedding's
        // width against token_embd.weight, the layer count against the
        // tensor table, the head sizes against each other (and, in
        // Weights::load, against the matrices' real shapes).
        let emb = f.tensor(arch::names::TOKEN_EMBD).ok_or_else(|| missing("tensor token_embd.weight"))?;
        let n_embd = req("embedding_length")?;
        if emb.dims.len() != 2 || emb.dims[0] != n_embd as u64 {
            return Err(Error::Unsupported(format!("token_embd.weight has shape {:?}, expected [{n_embd}, n_vocab]", emb.dims)));
        }
        let n_layer = req("block_count")?;
        let max_layers = f.tensors().len() / MIN_TENSORS_PER_LAYER;
        if n_layer > max_layers {
            return Err(Error::InvalidModel(format!(
                "{} = {n_layer}, but the file's {} tensors hold at most {max_layers} layers",
                key("block_count"),
                f.tensors().len()
            )));
        }
        let n_head = req("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv")?.unwrap_or(n_head);
        if n_embd == 0 || n_layer == 0 || n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_head > MAX_DIM {
            return Err(Error::Unsupported(format!(
                "bad attention shape: n_embd {n_embd}, n_layer {n_layer}, n_head {n_head}, n_head_kv {n_head_kv} (n_head must be a multiple of n_head_kv)"
            )));
        }
        let head_dim = opt("attention.key_length")?.unwrap_or(n_embd / n_head);
        let head_dim_v = opt("attention.value_length")?.unwrap_or(head_dim);
        if head_dim == 0 || head_dim_v == 0 || head_dim > MAX_DIM || head_dim_v > MAX_DIM {
            return Err(Error::InvalidModel(format!("head sizes {head_dim} (key) / {head_dim_v} (value) are outside 1..={MAX_DIM}")));
        }
        let n_ff = req("feed_forward_length")?;
        let n_ctx_train = opt("context_length")?.unwrap_or(2048);
        let eps_key = if arch.encoder { "attention.layer_norm_epsilon" } else { "attention.layer_norm_rms_epsilon" };
        let rms_eps = optf(eps_key)?.unwrap_or(if arch.encoder { 1e-12 } else { 1e-5 });
        let rope_base = optf("rope.freq_base")?.unwrap_or(10_000.0);
        let rope_dim = opt("rope.dimension_count")?.unwrap_or(head_dim);
        // Floats that would turn every logit into NaN without a word.
        let finite = |name: &str, x: f32, ok: bool| -> Result<()> {
            if x.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::InvalidModel(format!("{} = {x} is out of range", key(name))))
            }
        };
        finite(eps_key, rms_eps, rms_eps >= 0.0)?;
        finite("rope.freq_base", rope_base, rope_base > 0.0)?;
        if rope_dim > head_dim || rope_dim % 2 != 0 || head_dim % 2 != 0 {
            return Err(Error::Unsupported(format!("rope.dimension_count {rope_dim} does not fit head size {head_dim}")));
        }
        let factor = optf("rope.scaling.factor")?.filter(|&x| x > 0.0 && x != 1.0);
        let rope_scaling = match (f.get_str(&key("rope.scaling.type"))?, factor) {
            (_, None) | (Some("none"), _) => RopeScaling::None,
            (Some("linear") | None, Some(factor)) => RopeScaling::Linear { factor },
            (Some("yarn"), Some(factor)) => RopeScaling::Yarn {
                factor,
                orig_ctx: opt("rope.scaling.original_context_length")?.unwrap_or(n_ctx_train) as u32,
                attn_factor: optf("rope.scaling.attn_factor")?.unwrap_or(1.0),
                beta_fast: optf("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: optf("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
            },
            (Some(other), _) => return Err(Error::Unsupported(format!("rope.scaling.type '{other}' is not supported (none, linear, yarn)"))),
        };
        if let RopeScaling::Linear { factor } | RopeScaling::Yarn { factor, .. } = rope_scaling {
            finite("rope.scaling.factor", factor, factor > 0.0)?;
        }
        if let RopeScaling::Yarn { attn_factor, beta_fast, beta_slow, .. } = rope_scaling {
            finite("rope.scaling.attn_factor", attn_factor, true)?;
            finite("rope.scaling.yarn_beta_fast", beta_fast, true)?;
            finite("rope.scaling.yarn_beta_slow", beta_slow, true)?;
        }
        let sliding_window = opt("attention.sliding_window")?;
        if sliding_window == Some(0) {
            return Err(Error::InvalidModel(format!("{} is 0 (a window holds at least its own token)", key("attention.sliding_window"))));
        }
        let layer_kinds = (0..n_layer)
            .map(|il| match (arch.global_every, sliding_window) {
                (Some(n), Some(_)) if (il + 1) % n != 0 => LayerKind::Local,
                _ => LayerKind::Global,
            })
            .collect();
        let attn_scale = optf("attention.scale")?.unwrap_or(1.0 / (head_dim as f32).sqrt());
        let rope_base_local = optf("rope.freq_base_swa")?.unwrap_or(arch.local_rope_base);
        finite("attention.scale", attn_scale, true)?;
        finite("rope.freq_base_swa", rope_base_local, rope_base_local > 0.0)?;

        // The embedding's row count is the vocab; metadata may omit it.
        let n_vocab = emb.dims[1] as usize;
        if let Some(v) = opt("vocab_size")? {
            if v != n_vocab {
                return Err(Error::Unsupported(format!("{} = {v} but token_embd.weight has {n_vocab} rows", key("vocab_size"))));
            }
        }
        let tied_embeddings = f.tensor(arch::names::OUTPUT).is_none();
        // llama.cpp's numbers; -1 (unspecified) is absent. Another kind
        // (4: rank) fails an encoder, whose embeddings are its one use;
        // a decoder ignores it.
        let pooling_type = match f.get(&key("pooling_type")).and_then(|v| v.as_int()) {
            Some(p @ 0..=3) => Some(p as u32),
            Some(p) if p >= 0 && arch.encoder => {
                return Err(Error::Unsupported(format!("{} = {p} is not supported (0 none, 1 mean, 2 CLS, 3 last)", key("pooling_type"))))
            }
            _ => None,
        };
        Ok(Config {
            arch,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            n_ff,
            n_ctx_train,
            rms_eps,
            rope_base,
            rope_base_local,
            rope_dim,
            rope_scaling,
            sliding_window,
            layer_kinds,
            attn_scale,
            tied_embeddings,
            pooling_type,
        })
    }

    /// Width of the concatenated Q heads and of the K (V) heads.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Bytes of KV cache one position takes in f16 (all layers, K and V),
    /// as both backends store it.
    pub fn kv_bytes_per_position(&self) -> usize {
        (self.kv_dim() + self.v_dim()) * 2 * self.n_layer
    }
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    pub fn v_dim(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }
}
