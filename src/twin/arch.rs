//! Architecture twins: GGUF files written the way llama.cpp's converter
//! writes a real model (its `general.architecture`, metadata keys, tensor
//! names, fused tensors and RoPE tables), with the published config's
//! hyperparameters, the real vocabulary (tokens, merges or scores, types)
//! from llama.cpp's `ggml-vocab-*.gguf`, random F16 weights, and fewer
//! layers ([`ArchTwin::n_layer`]) so a test runs them on two cores.
//!
//! The bytes depend on nothing but the table below, the vocabulary file and
//! the seed: `tests/arch_twins.rs` regenerates each twin and checks its
//! sha256 against the one `scripts/gen_arch_twins.py` recorded when it ran
//! HF transformers on the same file (written by `make_twin --arch`).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf::writer::GgufWriter;
use crate::gguf::{GgufFile, Value};
use crate::quant::GgmlType;

/// RoPE scaling as the published config has it, written as llama.cpp's
/// converter writes it.
#[derive(Debug, Clone, Copy)]
pub enum TwinRope {
    None,
    /// `rope_scaling.rope_type = "llama3"`: `rope_freqs.weight`, computed
    /// as `convert_hf_to_gguf.py` (LlamaModel.generate_extra_tensors) does.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, orig_ctx: u32 },
    /// LongRoPE ("su"/"longrope"): `rope_factors_{short,long}.weight`,
    /// `rope.scaling.original_context_length` and `rope.scaling.attn_factor`
    /// √(1 + ln(ctx / orig) / ln orig), as Phi3MiniModel writes them.
    LongRope { orig_ctx: u32, short: &'static [f32], long: &'static [f32] },
}

/// One published config, and how its twin is cut down.
#[derive(Debug, Clone, Copy)]
pub struct ArchTwin {
    /// Fixture directory (tests/fixtures/arch/<key>).
    pub key: &'static str,
    /// Where the numbers come from.
    pub source: &'static str,
    pub arch: &'static str,
    /// `general.name`, as the converter writes it from the model's name.
    /// (HF's GGUF loader would build its Mistral classes for a `llama` file
    /// named exactly "mistral", but that path fails in transformers 5.24
    /// with gguf 0.19, which has no `mistral` architecture: Mistral GGUFs
    /// load as HF's Llama, whose math is the same.)
    pub name: &'static str,
    /// llama.cpp's `models/ggml-vocab-<vocab>.gguf`.
    pub vocab: &'static str,
    /// Layers of the real model, and of the twin.
    pub n_layer_real: u32,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    /// `attention.key_length` / `value_length` written (Qwen3: head_dim is
    /// not n_embd / n_head).
    pub write_head_dim: bool,
    /// `rope.dimension_count` written (llama's and phi3's converters do).
    pub write_rope_dim: bool,
    pub n_ctx: u32,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub tied: bool,
    /// RMSNorm weights on each Q and K head (qwen3).
    pub qk_norm: bool,
    /// `attn_qkv.weight` and `ffn_up.weight` holding gate and up (phi3).
    pub fused: bool,
    pub rope: TwinRope,
    /// `attention.sliding_window` as the converter writes it (metadata only:
    /// llama.cpp's phi3 ignores it).
    pub sliding_window: Option<u32>,
}

/// Phi-3 128k's LongRoPE tables ("su"), 48 pairs of head size 96: the
/// `rope_scaling` of the Phi-3 128k release (Phi-3-mini-128k-instruct's
/// first config, and Phi-3-vision-128k-instruct's).
const PHI3_SHORT: [f32; 48] = [
    1.05, 1.05, 1.05, 1.1, 1.1, 1.1, 1.25, 1.25, 1.4, 1.45, 1.55, 1.85, 1.9, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0,
    2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.1, 2.1, 2.2, 2.35, 2.35, 2.35, 2.35, 2.4, 2.4, 2.65, 2.7, 2.9, 2.95, 3.05, 3.05, 3.05,
];
const PHI3_LONG: [f32; 48] = [
    1.03, 1.05, 1.05, 1.08, 1.23, 1.23, 1.3, 1.45, 1.6, 1.65, 1.9, 2.86, 3.69, 5.42, 5.49, 5.49, 9.09, 11.58, 15.66, 15.77, 15.79,
    18.36, 21.99, 23.08, 30.01, 32.35, 32.59, 35.56, 39.95, 53.84, 56.2, 57.95, 59.29, 59.77, 59.92, 61.19, 61.96, 62.5, 63.37,
    63.48, 63.48, 63.66, 63.85, 64.08, 64.76, 64.8, 64.81, 64.81,
];

/// The four twins of issue 18: hidden sizes, heads, head size, FFN width,
/// vocabulary, context, norms and RoPE as published; 2 layers each.
pub const TWINS: [ArchTwin; 4] = [
    ArchTwin {
        key: "qwen3",
        source: "Qwen/Qwen3-0.6B config.json",
        arch: "qwen3",
        name: "Qwen3 0.6B (twin)",
        vocab: "qwen2",
        n_layer_real: 28,
        n_layer: 2,
        n_embd: 1024,
        n_ff: 3072,
        n_head: 16,
        n_head_kv: 8,
        head_dim: 128,
        write_head_dim: true,
        write_rope_dim: false,
        n_ctx: 40960,
        rms_eps: 1e-6,
        rope_base: 1_000_000.0,
        tied: true,
        qk_norm: true,
        fused: false,
        rope: TwinRope::None,
        sliding_window: None,
    },
    ArchTwin {
        key: "llama3",
        source: "meta-llama/Llama-3.2-1B config.json",
        arch: "llama",
        name: "Llama 3.2 1B (twin)",
        vocab: "llama-bpe",
        n_layer_real: 16,
        n_layer: 2,
        n_embd: 2048,
        n_ff: 8192,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 64,
        write_head_dim: false,
        write_rope_dim: true,
        n_ctx: 131072,
        rms_eps: 1e-5,
        rope_base: 500_000.0,
        tied: true,
        qk_norm: false,
        fused: false,
        rope: TwinRope::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, orig_ctx: 8192 },
        sliding_window: None,
    },
    ArchTwin {
        key: "phi3",
        source: "microsoft/Phi-3-mini-128k-instruct config.json (LongRoPE 'su' tables of the 128k release)",
        arch: "phi3",
        name: "Phi 3 Mini 128k (twin)",
        vocab: "phi-3",
        n_layer_real: 32,
        n_layer: 2,
        n_embd: 3072,
        n_ff: 8192,
        n_head: 32,
        n_head_kv: 32,
        head_dim: 96,
        write_head_dim: false,
        write_rope_dim: true,
        n_ctx: 131072,
        rms_eps: 1e-5,
        rope_base: 10_000.0,
        tied: false,
        qk_norm: false,
        fused: true,
        rope: TwinRope::LongRope { orig_ctx: 4096, short: &PHI3_SHORT, long: &PHI3_LONG },
        sliding_window: Some(262_144),
    },
    ArchTwin {
        key: "mistral",
        source: "mistralai/Mistral-7B-Instruct-v0.2 config.json",
        arch: "llama",
        name: "Mistral 7B Instruct v0.2 (twin)",
        vocab: "llama-spm",
        n_layer_real: 32,
        n_layer: 2,
        n_embd: 4096,
        n_ff: 14336,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
        write_head_dim: false,
        write_rope_dim: true,
        n_ctx: 32768,
        rms_eps: 1e-5,
        rope_base: 1_000_000.0,
        tied: false,
        qk_norm: false,
        fused: false,
        rope: TwinRope::None,
        sliding_window: None,
    },
];

pub fn find(key: &str) -> Option<&'static ArchTwin> {
    TWINS.iter().find(|t| t.key == key)
}

/// The seed every committed fixture was made with.
pub const SEED: u64 = 18;

/// llama.cpp's llama3 `rope_freqs` for `dim` rotated dimensions (the
/// converter's loop, in f32 as its torch tensors are).
pub fn llama3_rope_freqs(base: f32, dim: u32, factor: f32, low: f32, high: f32, orig_ctx: u32) -> Vec<f32> {
    let old = orig_ctx as f32;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// Values per random stream: xorshift64* (as `twin::random_tensor`), one
/// stream per 64 Ki values so both cores fill a tensor and the bytes do not
/// depend on the thread count.
const CHUNK: usize = 1 << 16;

fn stream(seed: u64, chunk: usize) -> u64 {
    // splitmix64 of (seed, chunk): independent, never zero
    let mut z = seed.wrapping_add((chunk as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

fn normal(s: &mut u64) -> f32 {
    let mut u = 0f32;
    for _ in 0..4 {
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        u += (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
    }
    (u - 2.0) * 3f32.sqrt()
}

/// `n` roughly normal values of standard deviation `std` around `mean`,
/// as little-endian f16 or f32.
fn random_values(ty: GgmlType, n: usize, mean: f32, std: f32, seed: u64) -> Vec<u8> {
    let width = if ty == GgmlType::F16 { 2 } else { 4 };
    let mut out = vec![0u8; n * width];
    out.par_chunks_mut(CHUNK * width).enumerate().for_each(|(c, bytes)| {
        let mut s = stream(seed, c);
        for b in bytes.chunks_exact_mut(width) {
            let v = mean + normal(&mut s) * std;
            match width {
                2 => b.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                _ => b.copy_from_slice(&v.to_le_bytes()),
            }
        }
    });
    out
}

/// Write the twin `t` with the vocabulary of `vocab` (its `tokenizer.*`
/// keys, copied as they are).
pub fn write_arch_twin(t: &ArchTwin, vocab: &GgufFile, seed: u64) -> Result<Vec<u8>> {
    let n_vocab = vocab.tokenizer_tokens()?.ok_or_else(|| Error::Tokenizer(format!("ggml-vocab-{} has no tokens", t.vocab)))?.len() as u64;
    let a = t.arch;
    let k = |s: &str| format!("{a}.{s}");
    let mut w = GgufWriter::default();
    w.kv("general.architecture", Value::String(a.into())).kv("general.name", Value::String(t.name.into()));
    w.kv(&k("block_count"), Value::U32(t.n_layer))
        .kv(&k("context_length"), Value::U32(t.n_ctx))
        .kv(&k("embedding_length"), Value::U32(t.n_embd))
        .kv(&k("feed_forward_length"), Value::U32(t.n_ff))
        .kv(&k("attention.head_count"), Value::U32(t.n_head))
        .kv(&k("attention.head_count_kv"), Value::U32(t.n_head_kv))
        .kv(&k("attention.layer_norm_rms_epsilon"), Value::F32(t.rms_eps))
        .kv(&k("rope.freq_base"), Value::F32(t.rope_base));
    if t.write_head_dim {
        w.kv(&k("attention.key_length"), Value::U32(t.head_dim)).kv(&k("attention.value_length"), Value::U32(t.head_dim));
    }
    if t.write_rope_dim {
        w.kv(&k("rope.dimension_count"), Value::U32(t.head_dim));
    }
    if a == "llama" {
        w.kv(&k("vocab_size"), Value::U32(n_vocab as u32));
    }
    if let TwinRope::LongRope { orig_ctx, .. } = t.rope {
        let scale = t.n_ctx as f64 / orig_ctx as f64;
        let attn_factor = if scale > 1.0 { (1.0 + scale.ln() / (orig_ctx as f64).ln()).sqrt() } else { 1.0 };
        w.kv(&k("rope.scaling.original_context_length"), Value::U32(orig_ctx)).kv(&k("rope.scaling.attn_factor"), Value::F32(attn_factor as f32));
    }
    if let Some(sw) = t.sliding_window {
        w.kv(&k("attention.sliding_window"), Value::U32(sw));
    }
    w.kv("general.file_type", Value::U32(1)); // mostly F16
    for (key, v) in vocab.metadata().filter(|(key, _)| key.starts_with("tokenizer.")) {
        w.kv(key, v.clone());
    }

    // tensors, in llama.cpp's converter order
    let (e, ff, hd) = (t.n_embd as u64, t.n_ff as u64, t.head_dim as u64);
    let (q_dim, kv_dim) = (t.n_head as u64 * hd, t.n_head_kv as u64 * hd);
    enum Fill {
        /// F16, std 1/√cols (std given for the embedding)
        Matrix(f32),
        /// F32 around 1 (norm weights)
        Norm,
        Values(Vec<f32>),
    }
    let mut tensors: Vec<(String, Vec<u64>, Fill)> = Vec::new();
    match t.rope {
        TwinRope::None => {}
        TwinRope::Llama3 { factor, low_freq_factor, high_freq_factor, orig_ctx } => {
            let f = llama3_rope_freqs(t.rope_base, t.head_dim, factor, low_freq_factor, high_freq_factor, orig_ctx);
            tensors.push(("rope_freqs.weight".into(), vec![f.len() as u64], Fill::Values(f)));
        }
        TwinRope::LongRope { short, long, .. } => {
            tensors.push(("rope_factors_long.weight".into(), vec![long.len() as u64], Fill::Values(long.to_vec())));
            tensors.push(("rope_factors_short.weight".into(), vec![short.len() as u64], Fill::Values(short.to_vec())));
        }
    }
    // embedding rows small (as trained models have them): with a tied
    // output, unit rows would make every token predict itself
    tensors.push(("token_embd.weight".into(), vec![e, n_vocab], Fill::Matrix(0.05)));
    tensors.push(("output_norm.weight".into(), vec![e], Fill::Norm));
    if !t.tied {
        tensors.push(("output.weight".into(), vec![e, n_vocab], Fill::Matrix(0.0)));
    }
    for l in 0..t.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensors.push((b("attn_norm.weight"), vec![e], Fill::Norm));
        if t.fused {
            tensors.push((b("attn_qkv.weight"), vec![e, q_dim + 2 * kv_dim], Fill::Matrix(0.0)));
        } else {
            tensors.push((b("attn_q.weight"), vec![e, q_dim], Fill::Matrix(0.0)));
            tensors.push((b("attn_k.weight"), vec![e, kv_dim], Fill::Matrix(0.0)));
            tensors.push((b("attn_v.weight"), vec![e, kv_dim], Fill::Matrix(0.0)));
        }
        tensors.push((b("attn_output.weight"), vec![q_dim, e], Fill::Matrix(0.0)));
        if t.qk_norm {
            tensors.push((b("attn_q_norm.weight"), vec![hd], Fill::Norm));
            tensors.push((b("attn_k_norm.weight"), vec![hd], Fill::Norm));
        }
        tensors.push((b("ffn_norm.weight"), vec![e], Fill::Norm));
        if t.fused {
            tensors.push((b("ffn_up.weight"), vec![e, 2 * ff], Fill::Matrix(0.0)));
        } else {
            tensors.push((b("ffn_gate.weight"), vec![e, ff], Fill::Matrix(0.0)));
            tensors.push((b("ffn_up.weight"), vec![e, ff], Fill::Matrix(0.0)));
        }
        tensors.push((b("ffn_down.weight"), vec![ff, e], Fill::Matrix(0.0)));
    }
    for (i, (name, dims, fill)) in tensors.into_iter().enumerate() {
        let n = dims.iter().product::<u64>() as usize;
        let s = seed.wrapping_mul(0x1000_0000_01B3).wrapping_add(i as u64);
        let (ty, data) = match fill {
            Fill::Matrix(std) => {
                let std = if std > 0.0 { std } else { 1.0 / (dims[0] as f32).sqrt() };
                (GgmlType::F16, random_values(GgmlType::F16, n, 0.0, std, s))
            }
            // norm weights 1 ± 0.2: a wrong or missing one shows
            Fill::Norm => (GgmlType::F32, random_values(GgmlType::F32, n, 1.0, 0.2, s)),
            Fill::Values(v) => (GgmlType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        w.tensor(&name, &dims, ty, data);
    }
    Ok(w.to_bytes())
}

/// Where llama.cpp's vocabulary files are under the repository `root`: the
/// llama-cpp-python sdist that `make` unpacks (scripts/fetch_llama_sdist.sh),
/// else a llama.cpp checkout at vendor/llama.cpp.
pub fn vocab_path(root: &std::path::Path, vocab: &str) -> Option<std::path::PathBuf> {
    let file = format!("ggml-vocab-{vocab}.gguf");
    ["vendor/llama-cpp-python-0.3.36/vendor/llama.cpp/models", "vendor/llama.cpp/models"]
        .iter()
        .map(|d| root.join(d).join(&file))
        .find(|p| p.is_file())
}

/// The twin `key` with its vocabulary found under `root`, and the seed
/// [`SEED`]: the bytes the fixtures were made from.
pub fn make(root: &std::path::Path, key: &str) -> Result<Vec<u8>> {
    let t = find(key).ok_or_else(|| {
        Error::InvalidArgument(format!("no architecture twin '{key}' (known: {})", TWINS.map(|t| t.key).join(", ")))
    })?;
    let path = vocab_path(root, t.vocab).ok_or_else(|| {
        Error::InvalidArgument(format!("ggml-vocab-{}.gguf not found under {}/vendor: run `make vendor/llama-cpp-python-0.3.36/.complete` (scripts/fetch_llama_sdist.sh)", t.vocab, root.display()))
    })?;
    let vocab = GgufFile::open(&path)?;
    write_arch_twin(t, &vocab, SEED)
}
