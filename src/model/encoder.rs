//! The encoder pass, for bidirectional embedding models (`nomic-bert`):
//! every token of one input at once, attention over all of them (no causal
//! mask, no KV cache), returning each token's final hidden state; and the
//! pooling ([`Pooling`]) and L2 normalisation that turn hidden states into
//! one embedding, for encoders and decoders alike ([`super::Model::embed`]).
//!
//! The graph is llama.cpp's for `LLM_ARCH_NOMIC_BERT` (its BERT graph):
//!
//! ```text
//! x = LayerNorm(tok_embd[t] + token_types[0])              token_embd_norm
//! per layer:
//!   q, k, v = split(x · W_qkvᵀ)          (+ bias when the file has one)
//!   q, k    = RoPE_neox(q, k, position)
//!   a       = softmax(q·kᵀ / √head_dim) · v    every position, both ways
//!   x       = LayerNorm(a · W_oᵀ + x)                      attn_output_norm
//!   x       = LayerNorm(W_down · (silu(W_gate·x) * W_up·x) + x)  layer_output_norm
//! ```
//!
//! It runs on the CPU whatever backend the model was loaded for (an
//! encoder's model always loads for the CPU). Quantized matrices go through
//! the CPU matmul kernels ([`crate::backend::cpu::matmul`], 8-bit
//! activations as in the decoder path); float ones (F16/BF16/F32, the
//! usual embedding GGUFs) through [`matmul_float`], which widens each
//! weight row once per call and dots it with every token in f32.

use rayon::prelude::*;

use super::arch::names::blk;
use super::config::Config;
use super::weights::{matrix, vector, Matrix};
use super::{ops, Model};
use crate::backend::cpu::matmul::{matmul_input, Input};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::quant;

/// How per-token hidden states become an embedding (llama.cpp's numbering:
/// [`Pooling::from_llama`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// No pooling: one embedding per token.
    None,
    /// The mean over the input's tokens.
    Mean,
    /// The first token's ([CLS]).
    Cls,
    /// The last token's.
    Last,
}

impl Pooling {
    /// llama.cpp's `llama_pooling_type`: 0 none, 1 mean, 2 CLS, 3 last.
    pub fn from_llama(p: i64) -> Option<Pooling> {
        Some(match p {
            0 => Pooling::None,
            1 => Pooling::Mean,
            2 => Pooling::Cls,
            3 => Pooling::Last,
            _ => return None,
        })
    }

    pub fn as_llama(self) -> i32 {
        match self {
            Pooling::None => 0,
            Pooling::Mean => 1,
            Pooling::Cls => 2,
            Pooling::Last => 3,
        }
    }

    /// "none", "mean", "cls", "last".
    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Pooling> {
        Ok(match s {
            "none" => Pooling::None,
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "last" => Pooling::Last,
            _ => return Err(Error::InvalidArgument(format!("unknown pooling '{s}' (none, mean, cls, last)"))),
        })
    }
}

/// Pool `n` rows of `dim` hidden values (row-major) into one row, or keep
/// them all ([`Pooling::None`]); then scale each resulting row to unit L2
/// length when `normalize` (a zero row stays zero).
pub fn pool(hidden: &[f32], dim: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    let n = hidden.len() / dim;
    let mut out = match pooling {
        Pooling::None => hidden.to_vec(),
        Pooling::Cls => hidden[..dim].to_vec(),
        Pooling::Last => hidden[(n - 1) * dim..].to_vec(),
        Pooling::Mean => {
            // summed in f64: a 2048-token mean loses nothing to the order
            let mut acc = vec![0f64; dim];
            for row in hidden.chunks_exact(dim) {
                acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
            }
            acc.iter().map(|&a| (a / n as f64) as f32).collect()
        }
    };
    if normalize {
        for row in out.chunks_mut(dim) {
            let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
            }
        }
    }
    out
}

/// One encoder layer's tensors.
pub struct EncoderLayer {
    pub wqkv: Matrix,            // (q_dim + 2 kv_dim, n_embd)
    pub bqkv: Option<Vec<f32>>,  // (q_dim + 2 kv_dim)
    pub wo: Matrix,              // (n_embd, q_dim)
    pub bo: Option<Vec<f32>>,    // (n_embd)
    pub attn_out_norm: (Vec<f32>, Vec<f32>), // weight, bias (n_embd)
    pub w_up: Matrix,            // (n_ff, n_embd)
    pub b_up: Option<Vec<f32>>,  // (n_ff)
    pub w_gate: Matrix,          // (n_ff, n_embd)
    pub w_down: Matrix,          // (n_embd, n_ff)
    pub b_down: Option<Vec<f32>>, // (n_embd)
    pub layer_out_norm: (Vec<f32>, Vec<f32>), // weight, bias (n_embd)
}

/// An encoder's tensors beyond the token embedding.
pub struct EncoderWeights {
    /// Row 0 of `token_types.weight` (every token is "sentence A"), or
    /// zeros when the file has none.
    pub token_type0: Vec<f32>,
    /// `token_embd_norm`: weight, bias.
    pub embd_norm: (Vec<f32>, Vec<f32>),
    pub layers: Vec<EncoderLayer>,
}

impl EncoderWeights {
    pub fn load(f: &GgufFile, c: &Config) -> Result<EncoderWeights> {
        let a = c.arch.name;
        let d = c.n_embd;
        let qkv_rows = c.q_dim() + 2 * c.kv_dim();
        if c.head_dim != c.head_dim_v {
            return Err(Error::Unsupported(format!("{a}: key and value head sizes differ ({} / {})", c.head_dim, c.head_dim_v)));
        }
        let token_type0 = match f.tensor("token_types.weight") {
            Some(t) => {
                let n_types = t.dims.get(1).copied().unwrap_or(0) as usize;
                let m = matrix(f, "token_types.weight", a, n_types.max(1), d)?;
                let mut row = vec![0f32; d];
                quant::dequantize(m.ty, m.row(f, 0), &mut row)?;
                row
            }
            None => vec![0f32; d],
        };
        let norm = |name: &str| -> Result<(Vec<f32>, Vec<f32>)> { Ok((vector(f, &format!("{name}.weight"), a, d)?, vector(f, &format!("{name}.bias"), a, d)?)) };
        let opt_vec = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
            match f.tensor(name) {
                Some(_) => vector(f, name, a, n).map(Some),
                None => Ok(None),
            }
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let m = |t: &str, rows, cols| matrix(f, &blk(i, t), a, rows, cols);
            if f.tensor(&blk(i, "attn_qkv.weight")).is_none() && f.tensor(&blk(i, "attn_q.weight")).is_some() {
                return Err(Error::Unsupported(format!("{a}: layer {i} has separate Q/K/V matrices; this build reads the fused attn_qkv only")));
            }
            layers.push(EncoderLayer {
                wqkv: m("attn_qkv.weight", qkv_rows, d)?,
                bqkv: opt_vec(&blk(i, "attn_qkv.bias"), qkv_rows)?,
                wo: m("attn_output.weight", d, c.q_dim())?,
                bo: opt_vec(&blk(i, "attn_output.bias"), d)?,
                attn_out_norm: norm(&blk(i, "attn_output_norm"))?,
                w_up: m("ffn_up.weight", c.n_ff, d)?,
                b_up: opt_vec(&blk(i, "ffn_up.bias"), c.n_ff)?,
                w_gate: m("ffn_gate.weight", c.n_ff, d)?,
                w_down: m("ffn_down.weight", d, c.n_ff)?,
                b_down: opt_vec(&blk(i, "ffn_down.bias"), d)?,
                layer_out_norm: norm(&blk(i, "layer_output_norm"))?,
            });
        }
        Ok(EncoderWeights { token_type0, embd_norm: norm("token_embd_norm")?, layers })
    }
}

/// Check an encoder's input: 1..=n_ctx_train tokens, each in the vocab.
pub fn check_input(c: &Config, tokens: &[u32]) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::InvalidArgument("no tokens to embed".into()));
    }
    if tokens.len() > c.n_ctx_train {
        return Err(Error::InvalidArgument(format!(
            "an input of {} tokens is longer than {}'s context of {} ({}.context_length)",
            tokens.len(),
            c.arch.name,
            c.n_ctx_train,
            c.arch.name
        )));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
        return Err(Error::InvalidArgument(format!("token {t} is outside the vocab ({})", c.n_vocab)));
    }
    Ok(())
}

/// The encoder pass over one input: `tokens.len()` rows of `n_embd`
/// final hidden states (row-major), token type 0 for every token,
/// positions 0, 1, ... .
pub fn encode(model: &Model, tokens: &[u32]) -> Result<Vec<f32>> {
    let (c, f, pool) = (&model.cfg, &model.file, &model.pool);
    let ew = model.weights.encoder.as_ref().ok_or_else(|| Error::Unsupported(format!("{} is not an encoder", c.arch.name)))?;
    check_input(c, tokens)?;
    let (n, d, hd) = (tokens.len(), c.n_embd, c.head_dim);
    let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
    let qkv_w = q_dim + 2 * kv_dim;
    let group = c.n_head / c.n_head_kv;
    let oom = |what: &str, k: usize| Error::OutOfMemory(format!("{what} of {n} tokens: {} MiB", (k * 4) >> 20));
    let alloc = |what: &str, k: usize| -> Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(k).map_err(|_| oom(what, k))?;
        v.resize(k, 0.0);
        Ok(v)
    };

    // embeddings: token row + type row 0, LayerNorm
    let mut x = alloc("hidden states", n * d)?;
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &mut x[t * d..(t + 1) * d];
        quant::dequantize(model.weights.token_embd.ty, model.weights.token_embd.row(f, tok as usize), row)?;
        ops::add(row, &ew.token_type0);
    }
    ops::layernorm_rows(&mut x, &ew.embd_norm.0, &ew.embd_norm.1, c.rms_eps);

    let freqs = c.rope_freqs(c.rope_base, c.n_ctx_train);
    let tables: Vec<Vec<(f32, f32)>> = (0..n).map(|p| ops::rope_table(p, &freqs)).collect();
    let mut qkv = alloc("Q/K/V", n * qkv_w)?;
    let mut att = alloc("attention output", n * q_dim)?;
    let mut branch = alloc("branch output", n * d)?;
    let mut gate = alloc("FFN gate", n * c.n_ff)?;
    let mut up = alloc("FFN up", n * c.n_ff)?;
    let scale = c.attn_scale;
    for l in &ew.layers {
        // ---- attention ----
        mm(model, &l.wqkv, &Input::new(&x, n), &mut qkv);
        if let Some(b) = &l.bqkv {
            ops::add_rows(&mut qkv, b);
        }
        for (t, row) in qkv.chunks_mut(qkv_w).enumerate() {
            ops::rope_row(&mut row[..q_dim], hd, &tables[t], c.arch.rope);
            ops::rope_row(&mut row[q_dim..q_dim + kv_dim], hd, &tables[t], c.arch.rope);
        }
        let qkv_ref = &qkv;
        pool.install(|| {
            att.par_chunks_mut(q_dim).enumerate().for_each(|(i, out)| {
                let mut scores = vec![0f32; n];
                let q = &qkv_ref[i * qkv_w..i * qkv_w + q_dim];
                for h in 0..c.n_head {
                    let kvh = h / group;
                    let qh = &q[h * hd..(h + 1) * hd];
                    for (j, s) in scores.iter_mut().enumerate() {
                        let k = &qkv_ref[j * qkv_w + q_dim + kvh * hd..][..hd];
                        *s = ops::dot(qh, k) * scale;
                    }
                    ops::softmax(&mut scores);
                    let o = &mut out[h * hd..(h + 1) * hd];
                    o.fill(0.0);
                    for (j, &s) in scores.iter().enumerate() {
                        let v = &qkv_ref[j * qkv_w + q_dim + kv_dim + kvh * hd..][..hd];
                        ops::axpy(o, s, v);
                    }
                }
            })
        });
        mm(model, &l.wo, &Input::new(&att, n), &mut branch);
        if let Some(b) = &l.bo {
            ops::add_rows(&mut branch, b);
        }
        ops::add(&mut x, &branch);
        ops::layernorm_rows(&mut x, &l.attn_out_norm.0, &l.attn_out_norm.1, c.rms_eps);

        // ---- FFN: down(silu(gate·x) * (up·x)) ----
        let input = Input::new(&x, n);
        mm(model, &l.w_gate, &input, &mut gate);
        mm(model, &l.w_up, &input, &mut up);
        if let Some(b) = &l.b_up {
            ops::add_rows(&mut up, b);
        }
        ops::gated_act(&mut gate, &up, c.arch.ffn_act);
        mm(model, &l.w_down, &Input::new(&gate, n), &mut branch);
        if let Some(b) = &l.b_down {
            ops::add_rows(&mut branch, b);
        }
        ops::add(&mut x, &branch);
        ops::layernorm_rows(&mut x, &l.layer_out_norm.0, &l.layer_out_norm.1, c.rms_eps);
    }
    Ok(x)
}

/// Y (n × rows) = X (n × cols) · Wᵀ: float weights by [`matmul_float`],
/// quantized ones by the CPU matmul.
fn mm(model: &Model, w: &Matrix, x: &Input, out: &mut [f32]) {
    let bytes = w.bytes(&model.file);
    if quant::act_format(w.ty).is_none() && w.packed.is_none() {
        matmul_float(&model.pool, w, bytes, x.x(), x.n(), out)
    } else {
        matmul_input(&model.pool, w, bytes, x, out)
    }
}

/// Rows per task of [`matmul_float`].
const FLOAT_CHUNK: usize = 32;

/// Y (n × rows) = X (n × cols) · Wᵀ for float weights (F32, F16, BF16):
/// each weight row widened to f32 once (F16C for F16), then dotted with
/// every token's row. The CPU matmul's float path widens a row once per
/// token (fine for a decode step of one token, slow for an encoder's whole
/// input). Each output is one thread's fixed-order sum.
pub fn matmul_float(pool: &rayon::ThreadPool, w: &Matrix, wbytes: &[u8], x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(x.len() == n * cols && out.len() == n * rows && wbytes.len() == rows * w.row_bytes, "{}: matmul shapes", w.name);
    // the transposed result, rows × n, in chunks of FLOAT_CHUNK rows
    let mut yt = vec![0f32; rows * n];
    pool.install(|| {
        yt.par_chunks_mut(FLOAT_CHUNK * n).enumerate().for_each(|(ci, yc)| {
            let mut wf = vec![0f32; cols];
            let mut bits = vec![0u16; cols];
            for (i, yr) in yc.chunks_mut(n).enumerate() {
                let r = ci * FLOAT_CHUNK + i;
                let wr = &wbytes[r * w.row_bytes..(r + 1) * w.row_bytes];
                if w.ty == crate::quant::GgmlType::F16 {
                    bits.iter_mut().zip(wr.chunks_exact(2)).for_each(|(b, c)| *b = u16::from_le_bytes([c[0], c[1]]));
                    ops::f16_to_f32(&mut wf, &bits);
                } else {
                    quant::dequantize(w.ty, wr, &mut wf).expect("a float weight row");
                }
                dot_rows(&wf, x, yr);
            }
        })
    });
    for (r, col) in yt.chunks_exact(n).enumerate() {
        for (t, &v) in col.iter().enumerate() {
            out[t * rows + r] = v;
        }
    }
}

crate::avx2_multiversion! {
/// y[t] = w · x[t] for each `w.len()`-row of x.
pub fn dot_rows(w: &[f32], x: &[f32], y: &mut [f32]) {
    for (yt, xt) in y.iter_mut().zip(x.chunks_exact(w.len())) {
        *yt = ops::dot(w, xt);
    }
}
}
