//! Tiny but complete models (a few KiB): every tensor a real file of the
//! architecture has, small legacy-quant and float weights, and a working
//! tokenizer. They load and evaluate in well under a millisecond, so the
//! fuzzers and the CI-sized hardening tests can build thousands of them.
//!
//! Shared by `tests/` (through `common`) and `fuzz/` (through `#[path]`),
//! so it uses nothing but the library's public API.
#![allow(dead_code)]

use rocmforge::gguf::writer::{GgufWriter, TensorSpec};
use rocmforge::gguf::{Array, Value};
use rocmforge::quant::GgmlType;
use rocmforge::tokenizer::bpe::byte_to_char;
use rocmforge::twin::random_tensor;

/// The architectures the tiny models come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyArch {
    /// byte-level BPE ("gpt2") tokenizer, no biases
    Llama,
    /// llama plus Q/K/V biases
    Qwen2,
    /// SentencePiece ("llama") tokenizer, QK-norm, post-norms, sliding window
    Gemma3,
}

pub const TINY_ARCHS: [TinyArch; 3] = [TinyArch::Llama, TinyArch::Qwen2, TinyArch::Gemma3];

pub const N_EMBD: u64 = 32;
pub const N_FF: u64 = 64;
pub const N_LAYER: usize = 2;
pub const N_HEAD: u64 = 4;
pub const N_HEAD_KV: u64 = 2;
pub const HEAD_DIM: u64 = 8;

/// A model as metadata and tensors, before serialisation: what the
/// structure-aware mutators edit.
pub struct TinyModel {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

impl Clone for TinyModel {
    fn clone(&self) -> Self {
        TinyModel { metadata: self.metadata.clone(), tensors: self.tensors.iter().map(clone_spec).collect() }
    }
}

impl TinyModel {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.writer().to_bytes()
    }

    pub fn writer(&self) -> GgufWriter {
        GgufWriter { metadata: self.metadata.clone(), tensors: self.tensors.iter().map(clone_spec).collect(), ..Default::default() }
    }
}

pub fn clone_spec(t: &TensorSpec) -> TensorSpec {
    TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty, data: t.data.clone() }
}

/// The vocabulary: byte tokens, one merged token, then control tokens.
fn vocab(arch: TinyArch) -> (Vec<(String, Value)>, u64) {
    let mut kv: Vec<(String, Value)> = Vec::new();
    let (tokens, types, extra): (Vec<String>, Vec<i32>, Vec<(String, Value)>) = match arch {
        TinyArch::Llama | TinyArch::Qwen2 => {
            let mut t: Vec<String> = byte_to_char().iter().map(|c| c.to_string()).collect();
            t.extend(["ab".to_string(), "<|bos|>".to_string(), "<|eos|>".to_string()]);
            let mut ty = vec![1i32; t.len()];
            let n = ty.len();
            ty[n - 2] = 3;
            ty[n - 1] = 3;
            let extra = vec![
                ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
                ("tokenizer.ggml.merges".to_string(), Value::Array(Array::String(vec!["a b".into()]))),
                ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(257)),
                ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(258)),
            ];
            (t, ty, extra)
        }
        TinyArch::Gemma3 => {
            let mut t = vec!["<unk>".to_string(), "<bos>".to_string(), "<eos>".to_string()];
            let mut ty = vec![2i32, 3, 3];
            for b in 0..256 {
                t.push(format!("<0x{b:02X}>"));
                ty.push(6);
            }
            for p in ["\u{2581}", "a", "b", "\u{2581}a", "ab", "\u{2581}ab"] {
                t.push(p.to_string());
                ty.push(1);
            }
            let scores: Vec<f32> = (0..t.len()).map(|i| if i < 259 { 0.0 } else { -(i as f32) / 100.0 }).collect();
            let extra = vec![
                ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
                ("tokenizer.ggml.scores".to_string(), Value::Array(Array::F32(scores))),
                ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
                ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
                ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
            ];
            (t, ty, extra)
        }
    };
    let n = tokens.len() as u64;
    kv.push(("tokenizer.ggml.tokens".into(), Value::Array(Array::String(tokens))));
    kv.push(("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types))));
    kv.extend(extra);
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
    (kv, n)
}

/// A tiny model of `arch` with weights from `seed`.
pub fn tiny_model(arch: TinyArch, seed: u64) -> TinyModel {
    let name = match arch {
        TinyArch::Llama => "llama",
        TinyArch::Qwen2 => "qwen2",
        TinyArch::Gemma3 => "gemma3",
    };
    let k = |s: &str| format!("{name}.{s}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(name.into())),
        (k("context_length"), Value::U32(64)),
        (k("embedding_length"), Value::U32(N_EMBD as u32)),
        (k("block_count"), Value::U32(N_LAYER as u32)),
        (k("feed_forward_length"), Value::U32(N_FF as u32)),
        (k("attention.head_count"), Value::U32(N_HEAD as u32)),
        (k("attention.head_count_kv"), Value::U32(N_HEAD_KV as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (k("rope.freq_base"), Value::F32(10_000.0)),
    ];
    if arch == TinyArch::Gemma3 {
        metadata.push((k("attention.key_length"), Value::U32(HEAD_DIM as u32)));
        metadata.push((k("attention.value_length"), Value::U32(HEAD_DIM as u32)));
        metadata.push((k("attention.sliding_window"), Value::U32(4)));
    }
    let (voc, n_vocab) = vocab(arch);
    metadata.extend(voc);

    let mut seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut tensors = Vec::new();
    let mut add = |name: String, dims: &[u64], ty: GgmlType, std: f32| {
        seed = seed.wrapping_add(0x2545_F491_4F6C_DD1D);
        let n: u64 = dims.iter().product();
        let data = random_tensor(ty, n as usize, std, seed).expect("tiny tensor");
        tensors.push(TensorSpec { name, dims: dims.to_vec(), ty, data });
    };
    let (e, f, q, kv) = (N_EMBD, N_FF, N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM);
    add("token_embd.weight".into(), &[e, n_vocab], GgmlType::Q8_0, 1.0);
    for il in 0..N_LAYER {
        let b = |t: &str| format!("blk.{il}.{t}");
        add(b("attn_norm.weight"), &[e], GgmlType::F32, 1.0);
        add(b("attn_q.weight"), &[e, q], GgmlType::Q4_0, 0.2);
        add(b("attn_k.weight"), &[e, kv], GgmlType::Q8_0, 0.2);
        add(b("attn_v.weight"), &[e, kv], GgmlType::Q4_1, 0.2);
        add(b("attn_output.weight"), &[q, e], GgmlType::F16, 0.2);
        add(b("ffn_norm.weight"), &[e], GgmlType::F32, 1.0);
        add(b("ffn_gate.weight"), &[e, f], GgmlType::Q5_0, 0.2);
        add(b("ffn_up.weight"), &[e, f], GgmlType::Q8_0, 0.2);
        add(b("ffn_down.weight"), &[f, e], GgmlType::Q5_1, 0.2);
        if arch == TinyArch::Qwen2 {
            add(b("attn_q.bias"), &[q], GgmlType::F32, 0.1);
            add(b("attn_k.bias"), &[kv], GgmlType::F32, 0.1);
            add(b("attn_v.bias"), &[kv], GgmlType::F32, 0.1);
        }
        if arch == TinyArch::Gemma3 {
            add(b("attn_q_norm.weight"), &[HEAD_DIM], GgmlType::F32, 1.0);
            add(b("attn_k_norm.weight"), &[HEAD_DIM], GgmlType::F32, 1.0);
            add(b("post_attention_norm.weight"), &[e], GgmlType::F32, 1.0);
            add(b("post_ffw_norm.weight"), &[e], GgmlType::F32, 1.0);
        }
    }
    add("output_norm.weight".into(), &[e], GgmlType::F32, 1.0);
    if arch != TinyArch::Gemma3 {
        add("output.weight".into(), &[e, n_vocab], GgmlType::F16, 0.5);
    }
    TinyModel { metadata, tensors }
}
