//! The CPU forward pass over one batch: rows of any number of sequences
//! (decode tokens and prefill chunks together) through every layer at once.
//! The linear layers run over all rows, so each weight block is read once
//! per step; attention runs per row over its own sequence's blocks of the
//! paged KV cache ([`crate::kv`]), GQA by indexing, with gemma3's sliding
//! window. Quantized weights multiply 8-bit quantized activations (16-bit with FORGE_ACT16)
//! ([`super::matmul`]).

use std::sync::Arc;

use rayon::prelude::*;

use super::matmul::{matmul, matmul_input, Input, SyncPtr};
use crate::error::{Error, Result};
use crate::backend::{Exec, KvHost, Logits, StepRow};
use crate::engine::SeqId;
use crate::kv::{BlockCopy, SeqKv, BLOCK};
use crate::model::arch::LayerKind;
use crate::model::config::RopeFreqs;
use crate::model::{ops, Model};
use crate::quant;

/// The CPU's KV storage: per layer, one f16 array (as bits) of
/// `n_blocks` blocks of `BLOCK` positions, each block's heads one after
/// the other ([`ops::kv_row`]), indexed by the slots the block tables give.
/// f16 as in llama.cpp's default cache: half the bytes attention reads per
/// step, the largest cost of a batched decode step after the weights.
pub struct CpuKv {
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    kv_dim: usize,
    v_dim: usize,
}

impl CpuKv {
    /// Storage for `n_blocks` blocks, or OUT_OF_MEMORY. Zeroed pages come
    /// from the allocator untouched, so an unused pool costs no memory.
    pub fn new(model: &Model, n_blocks: usize) -> Result<CpuKv> {
        let c = &model.cfg;
        let (kv_dim, v_dim) = (c.kv_dim(), c.v_dim());
        let mib = |d: usize| (n_blocks * BLOCK * d * 2 * c.n_layer) >> 20;
        let oom = || Error::OutOfMemory(format!("KV pool of {n_blocks} blocks: {} MiB", mib(kv_dim) + mib(v_dim)));
        let rows = n_blocks.checked_mul(BLOCK).ok_or_else(oom)?;
        let mut k = Vec::with_capacity(c.n_layer);
        let mut v = Vec::with_capacity(c.n_layer);
        for _ in 0..c.n_layer {
            k.push(try_zeroed(rows.checked_mul(kv_dim).ok_or_else(oom)?).ok_or_else(oom)?);
            v.push(try_zeroed(rows.checked_mul(v_dim).ok_or_else(oom)?).ok_or_else(oom)?);
        }
        Ok(CpuKv { k, v, kv_dim, v_dim })
    }

    /// Make the copy-on-write copies the block pool asked for.
    /// A block's heads are not interleaved by position ([`ops::kv_row`]):
    /// the whole block is copied (past `cp.n` only values nobody reads,
    /// in a block the copier owns).
    pub fn copy_blocks(&mut self, copies: &[BlockCopy]) {
        for cp in copies {
            let (from, to) = (cp.from as usize * BLOCK, cp.to as usize * BLOCK);
            for (store, d) in [(&mut self.k, self.kv_dim), (&mut self.v, self.v_dim)] {
                for layer in store.iter_mut() {
                    layer.copy_within(from * d..(from + BLOCK) * d, to * d);
                }
            }
        }
    }
}

/// `n` zeroed values (f32 or f16 bits: all-zero bits are 0.0 in both), or
/// None when the allocation fails. Zeroed memory comes from the allocator
/// (calloc: fresh pages are zero already), so a large KV pool costs no time
/// or resident memory until positions are written, and a size the system
/// cannot give is an error instead of an abort.
pub(crate) fn try_zeroed<T: Zeroable>(n: usize) -> Option<Vec<T>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).ok()?;
    // SAFETY: layout has a non-zero size; a non-NULL result is `n` zeroed
    // Ts (all-zero bits are a valid T, by `Zeroable`) allocated by the
    // global allocator with T's alignment, which Vec::from_raw_parts needs.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut T;
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}

/// Types whose all-zero bit pattern is a valid value (zero).
pub(crate) trait Zeroable: Copy {}
impl Zeroable for f32 {}
impl Zeroable for u16 {}

/// Rows one CPU pass takes; longer batches run in several passes.
const MAX_ROWS: usize = 512;

/// One engine's state on the CPU: its KV pool's memory, and the RoPE
/// frequencies of its context.
pub struct CpuExec {
    model: Arc<Model>,
    kv: CpuKv,
    rope: Rope,
}

/// RoPE frequencies of global and local layers for one engine's context
/// (`n_ctx` picks LongRoPE's table: [`crate::model::Config::rope_freqs`]).
pub struct Rope {
    global: RopeFreqs,
    local: RopeFreqs,
}

impl Rope {
    pub fn new(c: &crate::model::Config, n_ctx: usize) -> Rope {
        Rope { global: c.rope_freqs(c.rope_base, n_ctx), local: c.rope_freqs(c.rope_base_local, n_ctx) }
    }
}

impl CpuExec {
    pub fn new(model: Arc<Model>, n_ctx: usize, n_blocks: usize) -> Result<CpuExec> {
        let kv = CpuKv::new(&model, n_blocks)?;
        let rope = Rope::new(&model.cfg, n_ctx);
        Ok(CpuExec { model, kv, rope })
    }
}

impl Exec for CpuExec {
    fn forward(&mut self, rows: &[StepRow], logits: &mut Vec<f32>) -> Result<()> {
        let (model, kv, rope) = (&self.model, &mut self.kv, &self.rope);
        for chunk in rows.chunks(MAX_ROWS) {
            let l = model.pool.install(|| forward(model, kv, rope, chunk, false))?;
            logits.extend_from_slice(&l);
        }
        Ok(())
    }

    fn forward_hidden(&mut self, rows: &[StepRow], hidden: &mut Vec<f32>) -> Result<()> {
        let (model, kv, rope) = (&self.model, &mut self.kv, &self.rope);
        for chunk in rows.chunks(MAX_ROWS) {
            let h = model.pool.install(|| forward(model, kv, rope, chunk, true))?;
            hidden.extend_from_slice(&h);
        }
        Ok(())
    }

    fn forward_seq(&mut self, seq: SeqId, kv: &SeqKv, tokens: &[u32], pos0: usize, want: Logits, out: &mut [f32]) -> Result<()> {
        let last = tokens.len().saturating_sub(1);
        let rows: Vec<StepRow> = tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| StepRow { seq, token, pos: pos0 + i, kv, logits: want == Logits::All || (want == Logits::Last && i == last) })
            .collect();
        let mut l = Vec::new();
        self.forward(&rows, &mut l)?;
        if l.len() != out.len() {
            return Err(Error::InvalidArgument(format!("the logits buffer holds {} floats; {want:?} logits of {} tokens are {}", out.len(), tokens.len(), l.len())));
        }
        out.copy_from_slice(&l);
        Ok(())
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) {
        self.kv.copy_blocks(copies);
    }

    fn read_kv(&mut self, slots: &[usize]) -> Result<KvHost> {
        let c = &self.model.cfg;
        let (hd, hdv, n_kv) = (c.head_dim, c.head_dim_v, c.n_head_kv);
        let gather = |layer: &[u16], width: usize| -> Vec<u16> {
            let mut out = Vec::with_capacity(slots.len() * n_kv * width);
            for &s in slots {
                for h in 0..n_kv {
                    let r = ops::kv_row(s, h, n_kv, width);
                    out.extend_from_slice(&layer[r..r + width]);
                }
            }
            out
        };
        Ok(KvHost { k: self.kv.k.iter().map(|l| gather(l, hd)).collect(), v: self.kv.v.iter().map(|l| gather(l, hdv)).collect() })
    }

    fn write_kv(&mut self, slots: &[usize], rows: &KvHost) -> Result<()> {
        let c = &self.model.cfg;
        let (hd, hdv, n_kv) = (c.head_dim, c.head_dim_v, c.n_head_kv);
        let scatter = |layer: &mut [u16], src: &[u16], width: usize| {
            for (i, &s) in slots.iter().enumerate() {
                for h in 0..n_kv {
                    let r = ops::kv_row(s, h, n_kv, width);
                    layer[r..r + width].copy_from_slice(&src[(i * n_kv + h) * width..][..width]);
                }
            }
        };
        rows.check(slots.len(), c)?;
        for (layer, src) in self.kv.k.iter_mut().zip(&rows.k) {
            scatter(layer, src, hd);
        }
        for (layer, src) in self.kv.v.iter_mut().zip(&rows.v) {
            scatter(layer, src, hdv);
        }
        Ok(())
    }
}

/// Run `rows` through the model, writing their K/V into `kv`, and return
/// the logits of the rows that want them, in row order (`n_vocab` each),
/// or with `hidden` their final hidden states (after the output norm,
/// `n_embd` each). Rows of one sequence must come in position order; a row
/// attends to its sequence's positions up to its own, this step's earlier
/// rows included.
pub fn forward(model: &Model, kv: &mut CpuKv, rope: &Rope, rows: &[StepRow], hidden: bool) -> Result<Vec<f32>> {
    let (c, w, f, pool) = (&model.cfg, &model.weights, &model.file, &model.pool);
    let n = rows.len();
    let (dim, hd, hdv) = (c.n_embd, c.head_dim, c.head_dim_v);
    let (q_dim, kv_dim, v_dim) = (c.q_dim(), c.kv_dim(), c.v_dim());
    let group = c.n_head / c.n_head_kv;
    let mm = |m: &crate::model::weights::Matrix, x: &Input, out: &mut [f32]| matmul_input(pool, m, m.bytes(f), x, out);

    // x (n, dim): embedding rows
    let mut x = vec![0f32; n * dim];
    for (t, r) in rows.iter().enumerate() {
        quant::dequantize(w.token_embd.ty, w.token_embd.row(f, r.token as usize), &mut x[t * dim..(t + 1) * dim])?;
    }
    if c.arch.embed_scale_sqrt {
        let sc = (dim as f32).sqrt();
        x.iter_mut().for_each(|v| *v *= sc);
    }

    let mut xb = vec![0f32; n * dim];
    let mut q = vec![0f32; n * q_dim];
    let mut k = vec![0f32; n * kv_dim];
    let mut v = vec![0f32; n * v_dim];
    let mut att = vec![0f32; n * c.n_head * hdv];
    let mut branch = vec![0f32; n * dim];
    let mut g = vec![0f32; n * c.n_ff];
    let mut u = vec![0f32; n * c.n_ff];
    let tables_global: Vec<_> = rows.iter().map(|r| ops::rope_table(r.pos, &rope.global)).collect();
    let tables_local: Vec<_> = match c.layer_kinds.contains(&LayerKind::Local) {
        true => rows.iter().map(|r| ops::rope_table(r.pos, &rope.local)).collect(),
        false => Vec::new(),
    };
    let slots: Vec<usize> = rows.iter().map(|r| r.kv.slot(r.pos)).collect();

    for (il, l) in w.layers.iter().enumerate() {
        // ---- attention ----
        ops::rmsnorm_into(&mut xb, &x, &l.attn_norm, c.rms_eps);
        let xa = Input::new(&xb, n);
        mm(&l.wq, &xa, &mut q);
        mm(&l.wk, &xa, &mut k);
        mm(&l.wv, &xa, &mut v);
        drop(xa);
        if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
            ops::add_rows(&mut q, bq);
            ops::add_rows(&mut k, bk);
            ops::add_rows(&mut v, bv);
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            ops::rmsnorm_rows(&mut q, qn, c.rms_eps);
            ops::rmsnorm_rows(&mut k, kn, c.rms_eps);
        }
        let local = c.layer_kinds[il] == LayerKind::Local;
        let tables = if local { &tables_local } else { &tables_global };
        for t in 0..n {
            ops::rope_row(&mut q[t * q_dim..(t + 1) * q_dim], hd, &tables[t], c.arch.rope);
            ops::rope_row(&mut k[t * kv_dim..(t + 1) * kv_dim], hd, &tables[t], c.arch.rope);
        }
        let (kc, vc) = (&mut kv.k[il], &mut kv.v[il]);
        for (t, &s) in slots.iter().enumerate() {
            for h in 0..c.n_head_kv {
                let (kr, vr) = (ops::kv_row(s, h, c.n_head_kv, hd), ops::kv_row(s, h, c.n_head_kv, hdv));
                ops::to_f16(&mut kc[kr..kr + hd], &k[t * kv_dim + h * hd..][..hd]);
                ops::to_f16(&mut vc[vr..vr + hdv], &v[t * v_dim + h * hdv..][..hdv]);
            }
        }
        let (kc, vc) = (&*kc, &*vc);
        let window = if local { c.sliding_window } else { None };
        // one task per (row, K/V head): its GQA group of query heads reads
        // each K/V row once; with fewer such tasks than two per thread, one
        // task per (row, head) instead, so both threads get work
        let per = if n * c.n_head_kv >= 2 * model.n_threads { group } else { 1 };
        let aptr = SyncPtr(att.as_mut_ptr());
        let q_ref = &q;
        let task = |job: usize| {
            let a = aptr;
            let (t, h0) = (job / (c.n_head / per), job % (c.n_head / per) * per);
            let r = &rows[t];
            let first = window.map_or(0, |wnd| (r.pos + 1).saturating_sub(wnd));
            let qh = &q_ref[t * q_dim + h0 * hd..t * q_dim + (h0 + per) * hd];
            // SAFETY: each job writes its own heads h0..h0+per of row t in att.
            let out = unsafe { std::slice::from_raw_parts_mut(a.0.add((t * c.n_head + h0) * hdv), per * hdv) };
            ops::attend(qh, per, kc, vc, &r.kv.blocks, h0 / group, (hd, hdv, kv_dim, v_dim), first..=r.pos, c.attn_scale, out);
        };
        let jobs = n * c.n_head / per;
        if model.n_threads > 1 {
            pool.install(|| (0..jobs).into_par_iter().for_each(task));
        } else {
            (0..jobs).for_each(task);
        }
        mm(&l.wo, &Input::new(&att, n), &mut branch);
        if let Some(pn) = &l.post_attn_norm {
            ops::rmsnorm_rows(&mut branch, pn, c.rms_eps);
        }
        ops::add(&mut x, &branch);

        // ---- FFN ----
        ops::rmsnorm_into(&mut xb, &x, &l.ffn_norm, c.rms_eps);
        let xa = Input::new(&xb, n);
        mm(&l.w_gate, &xa, &mut g);
        mm(&l.w_up, &xa, &mut u);
        drop(xa);
        ops::gated_act(&mut g, &u, c.arch.ffn_act);
        mm(&l.w_down, &Input::new(&g, n), &mut branch);
        if let Some(pn) = &l.post_ffn_norm {
            ops::rmsnorm_rows(&mut branch, pn, c.rms_eps);
        }
        ops::add(&mut x, &branch);
    }

    // ---- output: only the rows that want logits ----
    let want: Vec<usize> = (0..n).filter(|&t| rows[t].logits).collect();
    if want.is_empty() {
        return Ok(Vec::new());
    }
    let m = want.len();
    let mut xn = vec![0f32; m * dim];
    for (i, &t) in want.iter().enumerate() {
        xn[i * dim..(i + 1) * dim].copy_from_slice(&x[t * dim..(t + 1) * dim]);
    }
    ops::rmsnorm_rows(&mut xn, &w.output_norm, c.rms_eps);
    if hidden {
        return Ok(xn);
    }
    let mut logits = vec![0f32; m * c.n_vocab];
    matmul(pool, &w.output, w.output.bytes(f), &xn, m, &mut logits);
    Ok(logits)
}
