//! The model's tensors, located in the mapped file and shape-checked at load.
//! Matrices stay quantized in the mapping (on CPUs with AVX-512 VNNI the CPU
//! backend also regroups them into tiles, `backend::cpu::packed`); norm
//! weights and biases (small) are dequantized to f32 once.

use super::arch::names::{self, blk};
use super::config::Config;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::{self, GgmlType};

/// A weight matrix `[rows = out features][cols = in features]`, stored as
/// `rows` rows of `cols` values in the file (ggml dims: [cols, rows]).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    pub row_bytes: usize,
    /// The same weights in the CPU's tile layout, when the CPU backend
    /// packed them at load.
    pub packed: Option<std::sync::Arc<crate::backend::cpu::packed::Packed>>,
}

impl Matrix {
    pub fn bytes<'f>(&self, f: &'f GgufFile) -> &'f [u8] {
        &f.as_bytes()[self.offset..self.offset + self.rows * self.row_bytes]
    }
    pub fn row<'f>(&self, f: &'f GgufFile, r: usize) -> &'f [u8] {
        let s = self.offset + r * self.row_bytes;
        &f.as_bytes()[s..s + self.row_bytes]
    }
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,             // (n_embd)
    pub wq: Matrix,                      // (n_head * head_dim, n_embd)  (or rows of attn_qkv)
    pub wk: Matrix,                      // (n_head_kv * head_dim, n_embd)
    pub wv: Matrix,                      // (n_head_kv * head_dim_v, n_embd)
    pub wo: Matrix,                      // (n_embd, n_head * head_dim_v)
    pub bq: Option<Vec<f32>>,            // (n_head * head_dim)       qwen2
    pub bk: Option<Vec<f32>>,            // (n_head_kv * head_dim)    qwen2
    pub bv: Option<Vec<f32>>,            // (n_head_kv * head_dim_v)  qwen2
    pub q_norm: Option<Vec<f32>>,        // (head_dim)                gemma3
    pub k_norm: Option<Vec<f32>>,        // (head_dim)                gemma3
    pub post_attn_norm: Option<Vec<f32>>, // (n_embd)                 gemma3
    pub ffn_norm: Vec<f32>,              // (n_embd)
    pub w_gate: Matrix,                  // (n_ff, n_embd)  rows 0..n_ff of phi3's ffn_up
    pub w_up: Matrix,                    // (n_ff, n_embd)  rows n_ff..2 n_ff of phi3's ffn_up
    pub w_down: Matrix,                  // (n_embd, n_ff)
    pub post_ffn_norm: Option<Vec<f32>>, // (n_embd)                  gemma3
}

impl Weights {
    /// Every matrix the forward pass multiplies by (not the embedding
    /// lookup), for the CPU backend to pack.
    pub fn matrices_mut(&mut self) -> Vec<&mut Matrix> {
        if let Some(e) = &mut self.encoder {
            // an encoder has no LM head to multiply by
            return e.layers.iter_mut().flat_map(|l| [&mut l.wqkv, &mut l.wo, &mut l.w_up, &mut l.w_gate, &mut l.w_down]).collect();
        }
        let mut v: Vec<&mut Matrix> = vec![&mut self.output];
        for l in &mut self.layers {
            v.extend([&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w_gate, &mut l.w_up, &mut l.w_down]);
        }
        v
    }
}

pub struct Weights {
    pub token_embd: Matrix,   // (n_vocab, n_embd)
    pub output_norm: Vec<f32>, // (n_embd)
    pub output: Matrix,       // (n_vocab, n_embd); token_embd when tied
    /// The decoder layers; empty for an encoder.
    pub layers: Vec<LayerWeights>,
    /// An encoder's tensors ([`super::encoder`]): `Some` exactly when the
    /// architecture is an encoder.
    pub encoder: Option<super::encoder::EncoderWeights>,
}

fn find<'f>(f: &'f GgufFile, name: &str, arch: &str) -> Result<&'f TensorInfo> {
    f.tensor(name).ok_or_else(|| Error::Unsupported(format!("missing tensor '{name}', which {arch} requires")))
}

fn shape_err(t: &TensorInfo, want: &[usize]) -> Error {
    Error::Unsupported(format!("tensor '{}' has shape {:?}, expected {:?} (ggml order)", t.name, t.dims, want))
}

pub(super) fn matrix(f: &GgufFile, name: &str, arch: &str, rows: usize, cols: usize) -> Result<Matrix> {
    let t = find(f, name, arch)?;
    if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
        return Err(shape_err(t, &[cols, rows]));
    }
    if !quant::is_supported(t.ty) {
        return Err(Error::Unsupported(format!("tensor '{name}' has type {}, which this build cannot compute with", t.ty)));
    }
    Ok(Matrix {
        name: name.to_string(),
        ty: t.ty,
        rows,
        cols,
        offset: t.offset as usize,
        row_bytes: t.ty.row_bytes(cols as u64).unwrap() as usize,
        packed: None,
    })
}

/// A fused matrix (`rows` = the parts' rows added up) split into row
/// ranges: one [`Matrix`] per part, each a view of its rows in the mapping
/// (whole rows are whole quant blocks), named `tensor[part]`.
fn split_rows(f: &GgufFile, name: &str, arch: &str, parts: &[(&str, usize)], cols: usize) -> Result<Vec<Matrix>> {
    let all = matrix(f, name, arch, parts.iter().map(|p| p.1).sum(), cols)?;
    let mut r0 = 0;
    Ok(parts
        .iter()
        .map(|&(part, rows)| {
            let m = Matrix { name: format!("{name}[{part}]"), rows, offset: all.offset + r0 * all.row_bytes, ..all.clone() };
            r0 += rows;
            m
        })
        .collect())
}

pub(super) fn vector(f: &GgufFile, name: &str, arch: &str, n: usize) -> Result<Vec<f32>> {
    let t = find(f, name, arch)?;
    if t.n_elements() as usize != n || t.dims[0] as usize != n {
        return Err(shape_err(t, &[n]));
    }
    quant::dequantize_vec(t.ty, f.tensor_data(t))
}

fn optional<T>(present: bool, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    if present {
        f().map(Some)
    } else {
        Ok(None)
    }
}

impl Weights {
    pub fn load(f: &GgufFile, c: &Config) -> Result<Weights> {
        let a = c.arch.name;
        let token_embd = matrix(f, names::TOKEN_EMBD, a, c.n_vocab, c.n_embd)?;
        if c.arch.encoder {
            // no LM head and no final norm: `output` is the embedding (never
            // multiplied), the norm ones
            let encoder = super::encoder::EncoderWeights::load(f, c)?;
            return Ok(Weights { output: token_embd.clone(), token_embd, output_norm: vec![1.0; c.n_embd], layers: Vec::new(), encoder: Some(encoder) });
        }
        let output = if c.tied_embeddings { token_embd.clone() } else { matrix(f, names::OUTPUT, a, c.n_vocab, c.n_embd)? };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let m = |t: &str, rows, cols| matrix(f, &blk(i, t), a, rows, cols);
            let v = |t: &str, n| vector(f, &blk(i, t), a, n);
            let spec = c.arch;
            // Q, K, V: separate, or one fused attn_qkv (rows q | k | v) split
            // here, so no backend sees the fused form (llama.cpp takes the
            // fused tensor whenever a file has it)
            let qkv_rows = [("q", c.q_dim()), ("k", c.kv_dim()), ("v", c.v_dim())];
            let ([wq, wk, wv], [bq, bk, bv]) = if f.tensor(&blk(i, "attn_qkv.weight")).is_some() {
                let [q, k, v_]: [Matrix; 3] = split_rows(f, &blk(i, "attn_qkv.weight"), a, &qkv_rows, c.n_embd)?.try_into().unwrap();
                let b = optional(spec.qkv_bias, || {
                    let all = v("attn_qkv.bias", c.q_dim() + c.kv_dim() + c.v_dim())?;
                    let (q, rest) = all.split_at(c.q_dim());
                    let (k, v_) = rest.split_at(c.kv_dim());
                    Ok([q.to_vec(), k.to_vec(), v_.to_vec()])
                })?;
                let [bq, bk, bv] = b.map_or([None, None, None], |b| b.map(Some));
                ([q, k, v_], [bq, bk, bv])
            } else {
                (
                    [m("attn_q.weight", c.q_dim(), c.n_embd)?, m("attn_k.weight", c.kv_dim(), c.n_embd)?, m("attn_v.weight", c.v_dim(), c.n_embd)?],
                    [
                        optional(spec.qkv_bias, || v("attn_q.bias", c.q_dim()))?,
                        optional(spec.qkv_bias, || v("attn_k.bias", c.kv_dim()))?,
                        optional(spec.qkv_bias, || v("attn_v.bias", c.v_dim()))?,
                    ],
                )
            };
            // gate and up: separate, or Phi-3's ffn_up holding gate then up
            let (w_gate, w_up) = if spec.fused_gate_up {
                let [g, u]: [Matrix; 2] =
                    split_rows(f, &blk(i, "ffn_up.weight"), a, &[("gate", c.n_ff), ("up", c.n_ff)], c.n_embd)?.try_into().unwrap();
                (g, u)
            } else {
                (m("ffn_gate.weight", c.n_ff, c.n_embd)?, m("ffn_up.weight", c.n_ff, c.n_embd)?)
            };
            layers.push(LayerWeights {
                attn_norm: v("attn_norm.weight", c.n_embd)?,
                wq,
                wk,
                wv,
                wo: m("attn_output.weight", c.n_embd, c.n_head * c.head_dim_v)?,
                bq,
                bk,
                bv,
                q_norm: optional(spec.qk_norm, || v("attn_q_norm.weight", c.head_dim))?,
                k_norm: optional(spec.qk_norm, || v("attn_k_norm.weight", c.head_dim))?,
                post_attn_norm: optional(spec.post_norms, || v("post_attention_norm.weight", c.n_embd))?,
                ffn_norm: v("ffn_norm.weight", c.n_embd)?,
                w_gate,
                w_up,
                w_down: m("ffn_down.weight", c.n_embd, c.n_ff)?,
                post_ffn_norm: optional(spec.post_norms, || v("post_ffw_norm.weight", c.n_embd))?,
            });
        }
        // GGUF Gemma files already store 1 + w for their norms (llama.cpp's
        // converter adds the one), so no architecture shifts them here
        Ok(Weights { token_embd, output_norm: vector(f, names::OUTPUT_NORM, a, c.n_embd)?, output, layers, encoder: None })
    }
}
