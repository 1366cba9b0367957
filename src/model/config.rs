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
    /// LongRoPE (Phi-3 128k, "su"): the per-pair divisors
    /// [`RopeFactors::ShortLong`] (short for contexts up to `orig_ctx`
    /// positions per sequence, long beyond, as llama.cpp picks per
    /// context) and cos/sin multiplied by `attn_factor`
    /// (`rope.scaling.attn_factor`, √(1 + ln(ctx / orig_ctx) / ln orig_ctx)
    /// in the converter).
    LongRope { orig_ctx: u32, attn_factor: f32 },
}

/// Per-pair divisors of the RoPE frequencies (ggml_rope_ext's
/// `freq_factors`): pair `i` turns at `base^(-2i/n) / factor[i]`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeFactors {
    None,
    /// `rope_freqs.weight`, one table for every context: Llama 3.1+'s
    /// "llama3" scaling, which llama.cpp's converter turns into these
    /// divisors (1 for short wavelengths, `factor` for long ones, smoothed
    /// between) instead of metadata.
    Fixed(Vec<f32>),
    /// LongRoPE's `rope_factors_short.weight` / `rope_factors_long.weight`.
    ShortLong { short: Vec<f32>, long: Vec<f32> },
}

/// RoPE for one kind of layer in one context: the angle of pair `i` at
/// position `pos` is `pos · freq[i]`, and cos/sin are multiplied by
/// `mscale`. The CPU paths rotate with these numbers and the GPU backends
/// upload `freq` as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    pub freq: Vec<f32>,
    pub mscale: f32,
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
    pub rope_factors: RopeFactors,
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

/// Tensors every layer of every supported architecture has at least
/// (attn_norm, fused qkv, output, ffn_norm, fused gate+up, down: Phi-3's
/// six): bounds `block_count` by the file.
const MIN_TENSORS_PER_LAYER: usize = 6;
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
        // per-pair frequency divisors: rope_freqs (llama3), or LongRoPE's
        // two tables (Phi-3 128k files say so by these tensors alone: its
        // converter writes no rope.scaling.type)
        let pair_table = |name: &str| -> Result<Option<Vec<f32>>> {
            let Some(t) = f.tensor(name) else { return Ok(None) };
            if t.dims.len() != 1 || t.dims[0] as usize != rope_dim / 2 {
                return Err(Error::InvalidModel(format!("{name} has shape {:?}, expected [{}] (rope.dimension_count / 2)", t.dims, rope_dim / 2)));
            }
            let v = crate::quant::dequantize_vec(t.ty, f.tensor_data(t))?;
            if v.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                return Err(Error::InvalidModel(format!("{name} holds a value that is not a positive number")));
            }
            Ok(Some(v))
        };
        let freqs = pair_table(arch::names::ROPE_FREQS)?;
        let (short, long) = (pair_table(arch::names::ROPE_FACTORS_SHORT)?, pair_table(arch::names::ROPE_FACTORS_LONG)?);
        let longrope = short.is_some() || long.is_some() || f.get_str(&key("rope.scaling.type"))? == Some("longrope");
        let rope_factors = match (freqs, short, long) {
            (None, None, None) => RopeFactors::None,
            (Some(v), None, None) => RopeFactors::Fixed(v),
            (None, Some(short), Some(long)) => RopeFactors::ShortLong { short, long },
            _ => {
                return Err(Error::Unsupported(format!(
                    "RoPE factor tensors: {} needs either {} alone or both of {} and {}",
                    arch_name,
                    arch::names::ROPE_FREQS,
                    arch::names::ROPE_FACTORS_SHORT,
                    arch::names::ROPE_FACTORS_LONG
                )))
            }
        };
        let rope_scaling = match (f.get_str(&key("rope.scaling.type"))?, factor) {
            _ if longrope => {
                if !matches!(rope_factors, RopeFactors::ShortLong { .. }) || factor.is_some() {
                    return Err(Error::Unsupported(
                        "LongRoPE needs rope_factors_short.weight and rope_factors_long.weight and no rope.scaling.factor".into(),
                    ));
                }
                RopeScaling::LongRope {
                    orig_ctx: opt("rope.scaling.original_context_length")?.unwrap_or(n_ctx_train) as u32,
                    attn_factor: optf("rope.scaling.attn_factor")?.unwrap_or(1.0),
                }
            }
            (_, None) | (Some("none"), _) => RopeScaling::None,
            (Some("linear") | None, Some(factor)) => RopeScaling::Linear { factor },
            (Some("yarn"), Some(factor)) => RopeScaling::Yarn {
                factor,
                orig_ctx: opt("rope.scaling.original_context_length")?.unwrap_or(n_ctx_train) as u32,
                attn_factor: optf("rope.scaling.attn_factor")?.unwrap_or(1.0),
                beta_fast: optf("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: optf("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
            },
            (Some(other), _) => {
                return Err(Error::Unsupported(format!("rope.scaling.type '{other}' is not supported (none, linear, yarn, longrope)")))
            }
        };
        if let RopeScaling::Linear { factor } | RopeScaling::Yarn { factor, .. } = rope_scaling {
            finite("rope.scaling.factor", factor, factor > 0.0)?;
        }
        if let RopeScaling::LongRope { attn_factor, orig_ctx } = rope_scaling {
            finite("rope.scaling.attn_factor", attn_factor, attn_factor > 0.0)?;
            if orig_ctx == 0 {
                return Err(Error::InvalidModel(format!("{} is 0", key("rope.scaling.original_context_length"))));
            }
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
            rope_factors,
            sliding_window,
            layer_kinds,
            attn_scale,
            tied_embeddings,
            pooling_type,
        })
    }

    /// Whether sequences of up to `n_ctx` positions take LongRoPE's long
    /// factors: when `n_ctx` is past the original context, as llama.cpp
    /// decides per context (`n_ctx_seq > n_ctx_orig_yarn`).
    pub fn rope_long(&self, n_ctx: usize) -> bool {
        matches!(self.rope_scaling, RopeScaling::LongRope { orig_ctx, .. } if n_ctx > orig_ctx as usize)
    }

    /// RoPE frequencies for layers with base `base` in an engine whose
    /// sequences hold at most `n_ctx` positions: [`rope_pair`]'s scaling,
    /// then the per-pair divisors. Every backend rotates with these.
    ///
    /// [`rope_pair`]: super::reference::rope_pair
    pub fn rope_freqs(&self, base: f32, n_ctx: usize) -> RopeFreqs {
        let div: Option<&[f32]> = match &self.rope_factors {
            RopeFactors::None => None,
            RopeFactors::Fixed(v) => Some(v),
            RopeFactors::ShortLong { short, long } => Some(if self.rope_long(n_ctx) { long } else { short }),
        };
        let mut mscale = 1.0;
        let freq = (0..self.rope_dim / 2)
            .map(|i| {
                let (p, mult, m) = super::reference::rope_pair(i, self.rope_dim, base, self.rope_scaling);
                mscale = m;
                p * mult / div.map_or(1.0, |d| d[i])
            })
            .collect();
        RopeFreqs { freq, mscale }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn phi3_like(scaling: RopeScaling, factors: RopeFactors) -> Config {
        Config {
            arch: arch::lookup("phi3").unwrap(),
            n_vocab: 8,
            n_embd: 16,
            n_layer: 1,
            n_head: 2,
            n_head_kv: 2,
            head_dim: 8,
            head_dim_v: 8,
            n_ff: 32,
            n_ctx_train: 131072,
            rms_eps: 1e-5,
            rope_base: 10_000.0,
            rope_base_local: 10_000.0,
            rope_dim: 8,
            rope_scaling: scaling,
            rope_factors: factors,
            sliding_window: None,
            pooling_type: None,
            layer_kinds: vec![LayerKind::Global],
            attn_scale: 1.0,
            tied_embeddings: false,
        }
    }

    #[test]
    fn longrope_picks_its_table_by_context_and_scales() {
        let (short, long) = (vec![1.0, 2.0, 4.0, 8.0], vec![3.0, 5.0, 7.0, 9.0]);
        let c = phi3_like(RopeScaling::LongRope { orig_ctx: 4096, attn_factor: 1.19 }, RopeFactors::ShortLong { short: short.clone(), long: long.clone() });
        for (n_ctx, table) in [(64, &short), (4096, &short), (4097, &long), (131072, &long)] {
            assert_eq!(c.rope_long(n_ctx), n_ctx > 4096);
            let r = c.rope_freqs(10_000.0, n_ctx);
            assert_eq!(r.mscale, 1.19);
            for (i, (&f, &d)) in r.freq.iter().zip(table.iter()).enumerate() {
                let p = 10_000f32.powf(-2.0 * i as f32 / 8.0);
                assert!((f - p / d).abs() <= 1e-7 * p, "pair {i} at n_ctx {n_ctx}: {f} vs {}", p / d);
            }
        }
    }

    #[test]
    fn fixed_factors_divide_every_context() {
        let c = phi3_like(RopeScaling::None, RopeFactors::Fixed(vec![1.0, 1.0, 4.0, 32.0]));
        let (a, b) = (c.rope_freqs(10_000.0, 16), c.rope_freqs(10_000.0, 1 << 20));
        assert_eq!(a, b);
        assert_eq!(a.mscale, 1.0);
        assert_eq!(a.freq[0], 1.0);
        assert!((a.freq[3] - 10_000f32.powf(-0.75) / 32.0).abs() < 1e-9);
        // no factors: the plain frequencies
        let plain = phi3_like(RopeScaling::None, RopeFactors::None).rope_freqs(10_000.0, 16);
        assert_eq!(plain.freq[2], 10_000f32.powf(-0.5));
    }
}
