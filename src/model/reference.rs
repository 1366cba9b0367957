//! The reference forward pass: f32 everywhere, weights dequantized once, one
//! token at a time, written to be read top to bottom (after llama2.c's
//! `run.c`). It is the oracle the fast CPU path and every GPU backend are
//! tested against, so it stays plain: no SIMD, no threads, no batching.
//!
//! The CPU engine rounds each matmul input to 8-bit (or 16-bit) integers
//! per 32 values; [`Reference::with_activation_rounding`] applies the same
//! rounding (quantize, then back to f32) before each of its matmuls, and
//! stores K/V through f16 as the engine's cache does, so the fast path can
//! be held to f32 summation-order differences at either width.

use super::arch::{FfnAct, LayerKind, RopeStyle};
use super::config::{Config, RopeFreqs, RopeScaling};
use super::weights::Matrix;
use super::Model;
use crate::error::{Error, Result};
use crate::quant;
use crate::shard::{self, RankShard, ShardPlan};

// ----------------------------------------------------------------------------
// Weights, dequantized. Shapes are (rows, cols) of row-major f32 matrices.

struct DenseLayer {
    attn_norm: Vec<f32>,              // (n_embd)
    wq: Dense,                     // (n_head * head_dim, n_embd)
    wk: Dense,                     // (n_head_kv * head_dim, n_embd)
    wv: Dense,                     // (n_head_kv * head_dim_v, n_embd)
    wo: Dense,                     // (n_embd, n_head * head_dim_v)
    bq: Option<Vec<f32>>,             // (n_head * head_dim)
    bk: Option<Vec<f32>>,             // (n_head_kv * head_dim)
    bv: Option<Vec<f32>>,             // (n_head_kv * head_dim_v)
    q_norm: Option<Vec<f32>>,         // (head_dim)
    k_norm: Option<Vec<f32>>,         // (head_dim)
    post_attn_norm: Option<Vec<f32>>, // (n_embd)
    ffn_norm: Vec<f32>,               // (n_embd)
    w_gate: Dense,                 // (n_ff, n_embd)
    w_up: Dense,                   // (n_ff, n_embd)
    w_down: Dense,                 // (n_embd, n_ff)
    post_ffn_norm: Option<Vec<f32>>,  // (n_embd)
}

pub struct Reference<'m> {
    model: &'m Model,
    token_embd: Vec<f32>,  // (n_vocab, n_embd)
    output_norm: Vec<f32>, // (n_embd)
    output: Dense,         // (n_vocab, n_embd)
    /// Round matmul inputs as the CPU engine does: to this many bits.
    act_bits: Option<u8>,
    layers: Vec<DenseLayer>,
    /// RoPE of global and local layers for this context (`n_ctx` picks
    /// LongRoPE's table as the engine does).
    rope_global: RopeFreqs,
    rope_local: RopeFreqs,
    // state, allocated once
    x: Vec<f32>,      // (n_embd) residual stream
    xb: Vec<f32>,     // (n_embd) normed input of a branch
    q: Vec<f32>,      // (n_head * head_dim)
    k: Vec<f32>,      // (n_head_kv * head_dim)
    v: Vec<f32>,      // (n_head_kv * head_dim_v)
    att_out: Vec<f32>, // (n_head * head_dim_v)
    branch: Vec<f32>, // (n_embd) a branch's output before the residual add
    hb: Vec<f32>,     // (n_ff)
    hb2: Vec<f32>,    // (n_ff)
    scores: Vec<f32>, // (n_ctx)
    key_cache: Vec<f32>,   // (n_layer, n_ctx, n_head_kv * head_dim)
    value_cache: Vec<f32>, // (n_layer, n_ctx, n_head_kv * head_dim_v)
    logits: Vec<f32>,      // (n_vocab)
    n_ctx: usize,
}

/// A dequantized matrix, and whether the engine multiplies it with integer
/// activations (quantized weights) or f32 ones (float weights).
struct Dense {
    w: Vec<f32>,
    int_act: bool,
}

fn dense(model: &Model, m: &Matrix) -> Result<Dense> {
    Ok(Dense { w: quant::dequantize_vec(m.ty, m.bytes(&model.file))?, int_act: quant::act_format(m.ty).is_some() })
}

impl<'m> Reference<'m> {
    /// The f32 reference.
    pub fn new(model: &'m Model, n_ctx: usize) -> Result<Reference<'m>> {
        Reference::build(model, n_ctx, None)
    }

    /// The reference with the CPU engine's rounding: activations to 8 or 16
    /// bits per value (blocks of 32) before each matmul by quantized
    /// weights, and K/V to f16 in the cache.
    pub fn with_activation_rounding(model: &'m Model, n_ctx: usize, bits: u8) -> Result<Reference<'m>> {
        if bits != 8 && bits != 16 {
            return Err(Error::InvalidArgument(format!("activation rounding to {bits} bits: only 8 and 16 exist")));
        }
        Reference::build(model, n_ctx, Some(bits))
    }

    fn build(model: &'m Model, n_ctx: usize, act_bits: Option<u8>) -> Result<Reference<'m>> {
        if model.is_encoder() {
            return Err(crate::engine::encoder_error(model));
        }
        let c = &model.cfg;
        let w = &model.weights;
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(DenseLayer {
                    attn_norm: l.attn_norm.clone(),
                    wq: dense(model, &l.wq)?,
                    wk: dense(model, &l.wk)?,
                    wv: dense(model, &l.wv)?,
                    wo: dense(model, &l.wo)?,
                    bq: l.bq.clone(),
                    bk: l.bk.clone(),
                    bv: l.bv.clone(),
                    q_norm: l.q_norm.clone(),
                    k_norm: l.k_norm.clone(),
                    post_attn_norm: l.post_attn_norm.clone(),
                    ffn_norm: l.ffn_norm.clone(),
                    w_gate: dense(model, &l.w_gate)?,
                    w_up: dense(model, &l.w_up)?,
                    w_down: dense(model, &l.w_down)?,
                    post_ffn_norm: l.post_ffn_norm.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let token_embd = quant::dequantize_vec(w.token_embd.ty, w.token_embd.bytes(&model.file))?;
        let output = dense(model, &w.output)?;
        Ok(Reference {
            model,
            token_embd,
            output_norm: w.output_norm.clone(),
            output,
            act_bits,
            layers,
            rope_global: c.rope_freqs(c.rope_base, n_ctx),
            rope_local: c.rope_freqs(c.rope_base_local, n_ctx),
            x: vec![0.0; c.n_embd],
            xb: vec![0.0; c.n_embd],
            q: vec![0.0; c.q_dim()],
            k: vec![0.0; c.kv_dim()],
            v: vec![0.0; c.v_dim()],
            att_out: vec![0.0; c.n_head * c.head_dim_v],
            branch: vec![0.0; c.n_embd],
            hb: vec![0.0; c.n_ff],
            hb2: vec![0.0; c.n_ff],
            scores: vec![0.0; n_ctx],
            key_cache: vec![0.0; c.n_layer * n_ctx * c.kv_dim()],
            value_cache: vec![0.0; c.n_layer * n_ctx * c.v_dim()],
            logits: vec![0.0; c.n_vocab],
            n_ctx,
        })
    }

    /// Run one token at position `pos` (all earlier positions must have been
    /// run) and return the next-token logits.
    pub fn forward(&mut self, token: u32, pos: usize) -> Result<&[f32]> {
        let c: &Config = &self.model.cfg;
        if pos >= self.n_ctx {
            return Err(Error::InvalidArgument(format!("position {pos} is past the reference context {}", self.n_ctx)));
        }
        if token as usize >= c.n_vocab {
            return Err(Error::InvalidArgument(format!("token {token} is outside the vocab ({})", c.n_vocab)));
        }
        let (dim, hd, hdv) = (c.n_embd, c.head_dim, c.head_dim_v);
        let (kv_dim, v_dim) = (c.kv_dim(), c.v_dim());
        let group = c.n_head / c.n_head_kv; // query heads per K/V head (GQA)

        // x = embedding row, scaled by √dim for Gemma
        self.x.copy_from_slice(&self.token_embd[token as usize * dim..(token as usize + 1) * dim]);
        if c.arch.embed_scale_sqrt {
            let s = (dim as f32).sqrt();
            self.x.iter_mut().for_each(|v| *v *= s);
        }

        for (il, l) in self.layers.iter().enumerate() {
            // ---- attention: x += post_norm(wo · attention(rope(q), rope(k), v)) ----
            rmsnorm(&mut self.xb, &self.x, &l.attn_norm, c.rms_eps);
            matmul(&mut self.q, &l.wq, &self.xb, self.act_bits);
            matmul(&mut self.k, &l.wk, &self.xb, self.act_bits);
            matmul(&mut self.v, &l.wv, &self.xb, self.act_bits);
            if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
                add(&mut self.q, bq);
                add(&mut self.k, bk);
                add(&mut self.v, bv);
            }
            qk_norm(&mut self.q, &mut self.k, hd, (&l.q_norm, &l.k_norm), c.rms_eps);
            let local = c.layer_kinds[il] == LayerKind::Local;
            let freqs = if local { &self.rope_local } else { &self.rope_global };
            for h in self.q.chunks_mut(hd) {
                rope(h, pos, freqs, c.arch.rope);
            }
            for h in self.k.chunks_mut(hd) {
                rope(h, pos, freqs, c.arch.rope);
            }
            if self.act_bits.is_some() {
                // the engine's cache holds f16
                for x in self.k.iter_mut().chain(self.v.iter_mut()) {
                    *x = half::f16::from_f32(*x).to_f32();
                }
            }
            // append k, v to this layer's cache at `pos`
            let kc = &mut self.key_cache[il * self.n_ctx * kv_dim..(il + 1) * self.n_ctx * kv_dim];
            kc[pos * kv_dim..(pos + 1) * kv_dim].copy_from_slice(&self.k);
            let vc = &mut self.value_cache[il * self.n_ctx * v_dim..(il + 1) * self.n_ctx * v_dim];
            vc[pos * v_dim..(pos + 1) * v_dim].copy_from_slice(&self.v);
            // visible positions: all earlier ones, or the last `window` on local layers
            let first = match (local, c.sliding_window) {
                (true, Some(w)) => (pos + 1).saturating_sub(w),
                _ => 0,
            };
            for h in 0..c.n_head {
                let (q, out) = (&self.q[h * hd..(h + 1) * hd], &mut self.att_out[h * hdv..(h + 1) * hdv]);
                attend_head(out, q, Cache { k: kc, v: vc, k_row: kv_dim, v_row: v_dim }, h / group, first..=pos, c.attn_scale, &mut self.scores);
            }
            matmul(&mut self.branch, &l.wo, &self.att_out, self.act_bits);
            residual(&mut self.x, &mut self.branch, &l.post_attn_norm, c.rms_eps);

            // ---- FFN: x += post_norm(w_down · (act(w_gate · xb) * (w_up · xb))) ----
            rmsnorm(&mut self.xb, &self.x, &l.ffn_norm, c.rms_eps);
            matmul(&mut self.hb, &l.w_gate, &self.xb, self.act_bits);
            matmul(&mut self.hb2, &l.w_up, &self.xb, self.act_bits);
            gate(&mut self.hb, &self.hb2, c.arch.ffn_act);
            matmul(&mut self.branch, &l.w_down, &self.hb, self.act_bits);
            residual(&mut self.x, &mut self.branch, &l.post_ffn_norm, c.rms_eps);
        }

        // final norm, then logits = output · x
        let x = self.x.clone();
        rmsnorm(&mut self.x, &x, &self.output_norm, c.rms_eps);
        matmul(&mut self.logits, &self.output, &self.x, self.act_bits);
        Ok(&self.logits)
    }
}

// ----------------------------------------------------------------------------
// The same pass split over ranks as tensor parallelism splits it.

/// One rank's part of a layer under a [`ShardPlan`]: the rows of wq, wk,
/// wv, gate and up (and of the biases) its heads and FFN range need, and
/// the columns of wo and down that meet them, cut from the quantized
/// matrices by [`shard::split_rows`] / [`shard::split_cols`] (what a GPU
/// rank uploads), then dequantized.
struct RankLayer {
    wq: Dense,
    wk: Dense,
    wv: Dense,
    wo: Dense,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    w_gate: Dense,
    w_up: Dense,
    w_down: Dense,
}

struct Rank {
    shard: RankShard,
    layers: Vec<RankLayer>,
    output: Dense, // (its vocabulary rows, n_embd)
    // its shard of the KV cache: (n_layer, n_ctx, its KV heads' dims)
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
}

/// The f32 reference pass computed rank by rank under a tensor-parallel
/// [`ShardPlan`] (issue 19): each rank multiplies only its shards and
/// attends only over its heads and its shard of the cache; the partial
/// products of wo and down are summed over the ranks (the all-reduce), and
/// the LM head's vocabulary slices are concatenated (the gather). The
/// embedding and the norms are replicated. Its logits equal
/// [`Reference`]'s up to summation order (tests/shard.rs), which makes it the
/// oracle for a multi-GPU pass; it has no rounding mode.
pub struct ShardedReference<'m> {
    model: &'m Model,
    plan: ShardPlan,
    ranks: Vec<Rank>,
    token_embd: Vec<f32>,
    rope_global: RopeFreqs,
    rope_local: RopeFreqs,
    n_ctx: usize,
    logits: Vec<f32>,
}

fn dense_rows(model: &Model, m: &Matrix, r: std::ops::Range<usize>) -> Result<Dense> {
    let b = shard::split_rows(m.bytes(&model.file), m.ty, m.cols, r)?;
    Ok(Dense { w: quant::dequantize_vec(m.ty, b)?, int_act: false })
}

fn dense_cols(model: &Model, m: &Matrix, c: std::ops::Range<usize>) -> Result<Dense> {
    let b = shard::split_cols(m.bytes(&model.file), m.ty, m.cols, c)?;
    Ok(Dense { w: quant::dequantize_vec(m.ty, &b)?, int_act: false })
}

impl<'m> ShardedReference<'m> {
    /// The pass over `n_ranks` ranks, as [`ShardPlan::for_model`] splits
    /// this model (its error when the shapes do not split).
    pub fn new(model: &'m Model, n_ctx: usize, n_ranks: usize) -> Result<ShardedReference<'m>> {
        if model.is_encoder() {
            return Err(crate::engine::encoder_error(model));
        }
        let c = &model.cfg;
        let w = &model.weights;
        let plan = ShardPlan::for_model(c, w, n_ranks)?;
        let d = plan.dims;
        let ranks = plan
            .ranks
            .iter()
            .map(|rs| {
                let (q, k, v, o, f) = (rs.q_rows(&d), rs.k_rows(&d), rs.v_rows(&d), rs.o_cols(&d), rs.ffn.clone());
                let layers = w
                    .layers
                    .iter()
                    .map(|l| {
                        Ok(RankLayer {
                            wq: dense_rows(model, &l.wq, q.clone())?,
                            wk: dense_rows(model, &l.wk, k.clone())?,
                            wv: dense_rows(model, &l.wv, v.clone())?,
                            wo: dense_cols(model, &l.wo, o.clone())?,
                            bq: l.bq.as_ref().map(|b| b[q.clone()].to_vec()),
                            bk: l.bk.as_ref().map(|b| b[k.clone()].to_vec()),
                            bv: l.bv.as_ref().map(|b| b[v.clone()].to_vec()),
                            w_gate: dense_rows(model, &l.w_gate, f.clone())?,
                            w_up: dense_rows(model, &l.w_up, f.clone())?,
                            w_down: dense_cols(model, &l.w_down, f.clone())?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Rank {
                    shard: rs.clone(),
                    layers,
                    output: dense_rows(model, &w.output, rs.vocab.clone())?,
                    key_cache: vec![0.0; c.n_layer * n_ctx * k.len()],
                    value_cache: vec![0.0; c.n_layer * n_ctx * v.len()],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ShardedReference {
            model,
            plan,
            ranks,
            token_embd: quant::dequantize_vec(w.token_embd.ty, w.token_embd.bytes(&model.file))?,
            rope_global: c.rope_freqs(c.rope_base, n_ctx),
            rope_local: c.rope_freqs(c.rope_base_local, n_ctx),
            n_ctx,
            logits: vec![0.0; c.n_vocab],
        })
    }

    /// The plan it runs.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// [`Reference::forward`], rank by rank.
    pub fn forward(&mut self, token: u32, pos: usize) -> Result<&[f32]> {
        let model = self.model;
        let c: &Config = &model.cfg;
        if pos >= self.n_ctx {
            return Err(Error::InvalidArgument(format!("position {pos} is past the reference context {}", self.n_ctx)));
        }
        if token as usize >= c.n_vocab {
            return Err(Error::InvalidArgument(format!("token {token} is outside the vocab ({})", c.n_vocab)));
        }
        let (dim, hd, hdv, d) = (c.n_embd, c.head_dim, c.head_dim_v, self.plan.dims);
        let mut x = self.token_embd[token as usize * dim..(token as usize + 1) * dim].to_vec();
        if c.arch.embed_scale_sqrt {
            let s = (dim as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let mut xb = vec![0.0; dim];
        let mut part = vec![0.0; dim];
        let mut scores = vec![0.0; self.n_ctx];
        for (il, l) in model.weights.layers.iter().enumerate() {
            let local = c.layer_kinds[il] == LayerKind::Local;
            let freqs = if local { &self.rope_local } else { &self.rope_global };
            let first = match (local, c.sliding_window) {
                (true, Some(win)) => (pos + 1).saturating_sub(win),
                _ => 0,
            };
            // ---- attention: each rank its heads, then the all-reduce of wo's partial sums ----
            rmsnorm(&mut xb, &x, &l.attn_norm, c.rms_eps);
            let mut branch = vec![0.0; dim];
            for rank in &mut self.ranks {
                let rl = &rank.layers[il];
                let (nq, nk, nv) = (rl.wq.w.len() / dim, rl.wk.w.len() / dim, rl.wv.w.len() / dim);
                let (mut q, mut k, mut v) = (vec![0.0; nq], vec![0.0; nk], vec![0.0; nv]);
                matmul(&mut q, &rl.wq, &xb, None);
                matmul(&mut k, &rl.wk, &xb, None);
                matmul(&mut v, &rl.wv, &xb, None);
                if let (Some(bq), Some(bk), Some(bv)) = (&rl.bq, &rl.bk, &rl.bv) {
                    add(&mut q, bq);
                    add(&mut k, bk);
                    add(&mut v, bv);
                }
                qk_norm(&mut q, &mut k, hd, (&l.q_norm, &l.k_norm), c.rms_eps);
                for h in q.chunks_mut(hd).chain(k.chunks_mut(hd)) {
                    rope(h, pos, freqs, c.arch.rope);
                }
                let kc = &mut rank.key_cache[il * self.n_ctx * nk..(il + 1) * self.n_ctx * nk];
                kc[pos * nk..(pos + 1) * nk].copy_from_slice(&k);
                let vc = &mut rank.value_cache[il * self.n_ctx * nv..(il + 1) * self.n_ctx * nv];
                vc[pos * nv..(pos + 1) * nv].copy_from_slice(&v);
                let mut att = vec![0.0; rank.shard.heads.len() * hdv];
                for (i, h) in rank.shard.heads.clone().enumerate() {
                    let (qh, out) = (&q[i * hd..(i + 1) * hd], &mut att[i * hdv..(i + 1) * hdv]);
                    let cache = Cache { k: kc, v: vc, k_row: nk, v_row: nv };
                    attend_head(out, qh, cache, rank.shard.kv_of(&d, h), first..=pos, c.attn_scale, &mut scores);
                }
                matmul(&mut part, &rl.wo, &att, None);
                add(&mut branch, &part); // the all-reduce
            }
            residual(&mut x, &mut branch, &l.post_attn_norm, c.rms_eps);

            // ---- FFN: each rank its range, then the all-reduce of down's partial sums ----
            rmsnorm(&mut xb, &x, &l.ffn_norm, c.rms_eps);
            let mut branch = vec![0.0; dim];
            for rank in &self.ranks {
                let rl = &rank.layers[il];
                let n = rank.shard.ffn.len();
                let (mut g, mut u) = (vec![0.0; n], vec![0.0; n]);
                matmul(&mut g, &rl.w_gate, &xb, None);
                matmul(&mut u, &rl.w_up, &xb, None);
                gate(&mut g, &u, c.arch.ffn_act);
                matmul(&mut part, &rl.w_down, &g, None);
                add(&mut branch, &part); // the all-reduce
            }
            residual(&mut x, &mut branch, &l.post_ffn_norm, c.rms_eps);
        }
        // final norm (replicated), then each rank's vocabulary slice: the gather
        let t = x.clone();
        rmsnorm(&mut x, &t, &model.weights.output_norm, c.rms_eps);
        for rank in &self.ranks {
            matmul(&mut self.logits[rank.shard.vocab.clone()], &rank.output, &x, None);
        }
        Ok(&self.logits)
    }

    /// The distributed argmax of the last logits: each rank's best over its
    /// vocabulary slice, then the best of those (ties to the lower id, as
    /// a whole-vocabulary argmax takes the first).
    pub fn argmax(&self) -> u32 {
        let mut best: Option<(usize, f32)> = None;
        for rank in &self.ranks {
            let v = rank.shard.vocab.clone();
            let local = v.clone().fold(None, |b: Option<(usize, f32)>, i| match b {
                Some((_, bv)) if bv >= self.logits[i] => b,
                _ => Some((i, self.logits[i])),
            });
            if let Some((i, lv)) = local {
                if best.is_none_or(|(_, bv)| lv > bv) {
                    best = Some((i, lv));
                }
            }
        }
        best.map_or(0, |(i, _)| i as u32)
    }
}

// ----------------------------------------------------------------------------
// The math, one function per step.

/// Per-head RMSNorm of q and k (QK-norm), where the layer has it.
fn qk_norm(q: &mut [f32], k: &mut [f32], hd: usize, norms: (&Option<Vec<f32>>, &Option<Vec<f32>>), eps: f32) {
    if let (Some(qn), Some(kn)) = norms {
        for (h, w) in q.chunks_mut(hd).map(|h| (h, qn)).chain(k.chunks_mut(hd).map(|h| (h, kn))) {
            let t = h.to_vec();
            rmsnorm(h, &t, w, eps);
        }
    }
}

/// One layer's K/V cache: rows of `k_row` / `v_row` floats per position.
#[derive(Clone, Copy)]
struct Cache<'a> {
    k: &'a [f32],
    v: &'a [f32],
    k_row: usize,
    v_row: usize,
}

/// out = softmax(q · K[t] · scale) · V[t] over positions `ts` of KV head
/// `kvh` of the cache (`scores` is scratch of at least ts.end() + 1).
fn attend_head(out: &mut [f32], q: &[f32], c: Cache, kvh: usize, ts: std::ops::RangeInclusive<usize>, scale: f32, scores: &mut [f32]) {
    let (hd, hdv) = (q.len(), out.len());
    for t in ts.clone() {
        scores[t] = dot(q, &c.k[t * c.k_row + kvh * hd..t * c.k_row + (kvh + 1) * hd]) * scale;
    }
    softmax(&mut scores[ts.clone()]);
    out.fill(0.0);
    for t in ts {
        for (o, &vv) in out.iter_mut().zip(&c.v[t * c.v_row + kvh * hdv..t * c.v_row + (kvh + 1) * hdv]) {
            *o += scores[t] * vv;
        }
    }
}

/// g = act(g) * u, the gated FFN's product.
fn gate(g: &mut [f32], u: &[f32], act: FfnAct) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = match act {
            FfnAct::Silu => *g / (1.0 + (-*g).exp()),
            FfnAct::GeluTanh => gelu_tanh(*g),
        } * u;
    }
}

/// x += branch, through the block's post-norm first where it has one.
fn residual(x: &mut [f32], branch: &mut [f32], post: &Option<Vec<f32>>, eps: f32) {
    if let Some(pn) = post {
        let t = branch.to_vec();
        rmsnorm(branch, &t, pn, eps);
    }
    add(x, branch);
}

/// out = x / sqrt(mean(x²) + eps) * w
fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ss + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * s * wi;
    }
}

/// out (rows) = W (rows, cols) · x (cols), x first rounded to `act_bits`
/// integers per 32 values when the engine would round it.
fn matmul(out: &mut [f32], w: &Dense, x: &[f32], act_bits: Option<u8>) {
    let cols = x.len();
    let rounded: Vec<f32>;
    let x = match act_bits {
        Some(bits) if w.int_act => {
            rounded = match bits {
                8 => {
                    let (main, resid) = quant::quantize_a8_split(x, cols).expect("matmul inputs are a multiple of 32");
                    round_trip(&main).iter().zip(round_trip(&resid)).map(|(m, r)| m + r).collect()
                }
                _ => round_trip(&quant::quantize_act::<i16>(x).expect("matmul inputs are a multiple of 32")),
            };
            &rounded[..]
        }
        _ => x,
    };
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(&w.w[r * cols..(r + 1) * cols], x);
    }
}

/// Quantized activations back to f32 (at 8 bits the engine's matmuls sum
/// two such rows, the quants and their residual: `quant::quantize_a8_split`).
fn round_trip<T: quant::ActInt>(a: &quant::ActQ<T>) -> Vec<f32> {
    a.q.iter().enumerate().map(|(i, &q)| q.into() as f32 * a.d[i / 32]).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh())
}

/// Rotate the first `rope_dim` dims of one head by position `pos`:
/// pairs (2i, 2i+1) for Normal, (i, i + rope_dim/2) for NeoX; angle
/// pos · freq[i] (base^(-2i/rope_dim), scaled: [`Config::rope_freqs`]).
fn rope(head: &mut [f32], pos: usize, freqs: &RopeFreqs, style: RopeStyle) {
    let n = freqs.freq.len() * 2;
    for (i, &f) in freqs.freq.iter().enumerate() {
        let (cos, sin) = rope_cos_sin(pos, f, freqs.mscale);
        let (a, b) = match style {
            RopeStyle::Normal => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + n / 2),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

/// RoPE for dimension pair `i` of `n` rotated dimensions: the angle at
/// position `pos` is `pos · p · mult` with `p = base^(-2i/n)`, and cos/sin are
/// multiplied by `mscale`. Returns `(p, mult, mscale)`; linear scaling divides
/// the angle by the factor, YaRN blends interpolation and extrapolation per
/// dimension as ggml does (`ggml_rope_yarn`). The GPU backends upload
/// `p · mult` per pair; [`rope_angle`] uses the same numbers on the CPU.
pub fn rope_pair(i: usize, n: usize, base: f32, scaling: RopeScaling) -> (f32, f32, f32) {
    let p = base.powf(-2.0 * i as f32 / n as f32);
    match scaling {
        RopeScaling::None => (p, 1.0, 1.0),
        RopeScaling::Linear { factor } => (p, 1.0 / factor, 1.0),
        // the per-pair divisors are Config::rope_freqs' part
        RopeScaling::LongRope { attn_factor, .. } => (p, 1.0, attn_factor),
        RopeScaling::Yarn { factor, orig_ctx, attn_factor, beta_fast, beta_slow } => {
            let freq_scale = 1.0 / factor;
            let corr = |rot: f32| {
                n as f32 * (orig_ctx as f32 / (rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln())
            };
            let low = corr(beta_fast).floor().max(0.0);
            let high = corr(beta_slow).ceil().min(n as f32 - 1.0);
            let y = (i as f32 - low) / (high - low).max(0.001);
            let ramp_mix = 1.0 - y.clamp(0.0, 1.0);
            // theta = theta_interp (1 - ramp) + theta_extrap ramp, theta_interp = freq_scale theta_extrap
            let mult = freq_scale * (1.0 - ramp_mix) + ramp_mix;
            let mscale = attn_factor * (1.0 + 0.1 * (1.0 / freq_scale).ln());
            (p, mult, mscale)
        }
    }
}

/// (cos, sin) at `pos` of a pair turning at `freq` per position, times `mscale`.
pub fn rope_cos_sin(pos: usize, freq: f32, mscale: f32) -> (f32, f32) {
    let theta = pos as f32 * freq;
    (theta.cos() * mscale, theta.sin() * mscale)
}

/// (cos, sin) of RoPE pair `i` at `pos`, scaled as [`rope_pair`] says
/// (without per-pair divisors: [`Config::rope_freqs`] has those).
pub fn rope_angle(pos: usize, i: usize, n: usize, base: f32, scaling: RopeScaling) -> (f32, f32) {
    let (p, mult, mscale) = rope_pair(i, n, base, scaling);
    let theta = pos as f32 * p * mult;
    (theta.cos() * mscale, theta.sin() * mscale)
}
