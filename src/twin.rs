//! Shape twins: GGUF files with a real model's metadata (architecture,
//! hyperparameters, tokenizer) and random weights of the same shapes and
//! tensor types, for testing and benchmarking at realistic size without
//! shipping the real weights.
//!
//! Weights are random quants with scales chosen so each matrix's values have
//! standard deviation ≈ 1/√(input width), which keeps activations in a sane
//! range through the network; norm weights are 1 and biases 0.

pub mod arch;

use crate::error::{Error, Result};
use crate::gguf::writer::GgufWriter;
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::{self, GgmlType};

/// Byte offsets of each f16 scale field in a block, and of the f16 "min"
/// fields (set to 0 so values stay centred).
fn scale_fields(ty: GgmlType) -> Option<(&'static [usize], &'static [usize])> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 | Q5_0 | Q8_0 | Iq4Nl | Iq4Xs => (&[0], &[]),
        Q4_1 | Q5_1 => (&[0], &[2]),
        Q2K => (&[80], &[82]),
        Q3K => (&[108], &[]),
        Q4K | Q5K => (&[0], &[2]),
        Q6K => (&[208], &[]),
        _ => return None,
    })
}

/// xorshift64*: deterministic weights for a given seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Roughly normal (sum of 4 uniforms, centred, unit variance).
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32).sum();
        (s - 2.0) * 3f32.sqrt()
    }
}

/// Random data for a tensor of `ty` with `n` elements whose values have
/// standard deviation ≈ `std`.
pub fn random_tensor(ty: GgmlType, n: usize, std: f32, rng_seed: u64) -> Result<Vec<u8>> {
    let mut rng = Rng(rng_seed | 1);
    let f32s = |rng: &mut Rng| -> Vec<f32> { (0..n).map(|_| rng.normal() * std).collect() };
    let bytes = ty.row_bytes(n as u64).ok_or_else(|| Error::InvalidArgument(format!("{n} values are not whole {ty} blocks")))? as usize;
    Ok(match ty {
        GgmlType::F32 => f32s(&mut rng).iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => f32s(&mut rng).iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::BF16 => f32s(&mut rng).iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::Mxfp4 => {
            // Random E2M1 codes (stored doubled: 0..±12) have std ≈ 5.85;
            // the block scale is 2^(e − 128), the power of two nearest std / 5.85.
            let e = (128.0 + (std / 5.85).log2().round()).clamp(2.0, 254.0) as u8;
            let mut out: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
            out.chunks_mut(17).for_each(|b| b[0] = e);
            out
        }
        _ => {
            let (scales, mins) = scale_fields(ty).ok_or_else(|| Error::UnsupportedType { what: format!("{ty} (shape twins)") })?;
            let (_, ts) = ty.block_geometry();
            let mut out: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
            let set = |out: &mut Vec<u8>, offs: &[usize], v: f32| {
                let h = half::f16::from_f32(v).to_le_bytes();
                for b in out.chunks_mut(ts) {
                    for &o in offs {
                        b[o..o + 2].copy_from_slice(&h);
                    }
                }
            };
            // measure the spread with unit scales, then rescale
            set(&mut out, scales, 1.0);
            set(&mut out, mins, 0.0);
            let sample = &out[..ts.min(bytes) * (bytes / ts).min(64)];
            let v = quant::dequantize_vec(ty, sample)?;
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let sd = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32).sqrt().max(1e-6);
            set(&mut out, scales, std / sd);
            out
        }
    })
}

/// Write a twin of `src`: same metadata, same tensor names, shapes and types
/// (or `force_type` for every 2-D weight matrix, e.g. F16 for an F16 twin).
pub fn write_twin(src: &GgufFile, force_type: Option<GgmlType>, seed: u64) -> Result<Vec<u8>> {
    let mut w = GgufWriter { alignment: src.header.alignment, ..Default::default() };
    for (k, v) in src.metadata() {
        if k != "general.alignment" || src.header.alignment != 32 {
            w.kv(k, v.clone());
        }
    }
    for (i, t) in src.tensors().iter().enumerate() {
        let (ty, data) = twin_tensor(t, force_type, seed.wrapping_add(i as u64 * 0x9E37_79B9))?;
        w.tensor(&t.name, &t.dims, ty, data);
    }
    Ok(w.to_bytes())
}

fn twin_tensor(t: &TensorInfo, force_type: Option<GgmlType>, seed: u64) -> Result<(GgmlType, Vec<u8>)> {
    let n = t.n_elements() as usize;
    if t.dims.len() == 1 {
        // norm weights 1, biases 0
        let v = if t.name.contains("norm") { 1.0f32 } else { 0.0 };
        let data = match t.ty {
            GgmlType::F32 => std::iter::repeat(v.to_le_bytes()).take(n).flatten().collect(),
            _ => return Err(Error::Unsupported(format!("1-D tensor '{}' of type {}", t.name, t.ty))),
        };
        return Ok((GgmlType::F32, data));
    }
    let ty = force_type.unwrap_or(t.ty);
    let cols = t.dims[0] as f32;
    // embeddings: unit-ish rows; matrices: 1/√(input width)
    let std = if t.name.starts_with("token_embd") { 1.0 } else { 1.0 / cols.sqrt() };
    Ok((ty, random_tensor(ty, n, std, seed)?))
}

/// A `llama`-architecture model of the given shape with `src`'s tokenizer
/// (its vocab size fixes n_vocab) and random `ty` matrices: e.g. the
/// Llama-2-7B-shaped Q4_0 benchmark twin (4096 hidden, 32 layers, 32 heads,
/// FFN 11008) on SmolLM2's 49,152-token vocab.
pub struct LlamaShape {
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_ff: u64,
    pub n_ctx: u64,
}

pub fn write_llama_shaped(src: &GgufFile, shape: &LlamaShape, ty: GgmlType, seed: u64) -> Result<Vec<u8>> {
    use crate::gguf::Value;
    let n_vocab = src.tokenizer_tokens()?.ok_or_else(|| Error::Tokenizer("source has no tokenizer".into()))?.len() as u64;
    let mut w = GgufWriter::default();
    let s = shape;
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("general.name", Value::String(format!("llama-shaped twin {}x{} {}", s.n_layer, s.n_embd, ty)))
        .kv("llama.block_count", Value::U32(s.n_layer as u32))
        .kv("llama.context_length", Value::U32(s.n_ctx as u32))
        .kv("llama.embedding_length", Value::U32(s.n_embd as u32))
        .kv("llama.feed_forward_length", Value::U32(s.n_ff as u32))
        .kv("llama.attention.head_count", Value::U32(s.n_head as u32))
        .kv("llama.attention.head_count_kv", Value::U32(s.n_head_kv as u32))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.freq_base", Value::F32(10000.0));
    for (k, v) in src.metadata().filter(|(k, _)| k.starts_with("tokenizer.")) {
        w.kv(k, v.clone());
    }
    let hd = s.n_embd / s.n_head;
    let mut tensors: Vec<(String, Vec<u64>, GgmlType)> = vec![
        ("token_embd.weight".into(), vec![s.n_embd, n_vocab], ty),
        ("output_norm.weight".into(), vec![s.n_embd], GgmlType::F32),
        ("output.weight".into(), vec![s.n_embd, n_vocab], ty),
    ];
    for l in 0..s.n_layer {
        let b = |t: &str| format!("blk.{l}.{t}");
        tensors.push((b("attn_norm.weight"), vec![s.n_embd], GgmlType::F32));
        tensors.push((b("attn_q.weight"), vec![s.n_embd, s.n_head * hd], ty));
        tensors.push((b("attn_k.weight"), vec![s.n_embd, s.n_head_kv * hd], ty));
        tensors.push((b("attn_v.weight"), vec![s.n_embd, s.n_head_kv * hd], ty));
        tensors.push((b("attn_output.weight"), vec![s.n_head * hd, s.n_embd], ty));
        tensors.push((b("ffn_norm.weight"), vec![s.n_embd], GgmlType::F32));
        tensors.push((b("ffn_gate.weight"), vec![s.n_embd, s.n_ff], ty));
        tensors.push((b("ffn_up.weight"), vec![s.n_embd, s.n_ff], ty));
        tensors.push((b("ffn_down.weight"), vec![s.n_ff, s.n_embd], ty));
    }
    for (i, (name, dims, tty)) in tensors.into_iter().enumerate() {
        let info = TensorInfo { name: name.clone(), dims: dims.clone(), ty: tty, offset: 0, n_bytes: 0 };
        let (t, data) = twin_tensor(&info, None, seed.wrapping_add(i as u64 * 0x9E37_79B9))?;
        w.tensor(&name, &dims, t, data);
    }
    Ok(w.to_bytes())
}
