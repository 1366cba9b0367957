//! The GPU forward pass: the same steps as `model::forward` (the CPU fast
//! path) and `model::reference` (the oracle), as kernel launches on one
//! stream. Weights are uploaded once and stay in their GGUF types; the KV
//! cache is f16 on the device; only logits come back. The decode step (one
//! token) is captured once per session as a graph and replayed: the token id
//! and position live in a small device buffer the kernels read, so the same
//! graph serves every position.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::memory::{Buffer, HostBuf, MemPool};
use super::decode;
use super::ops::{self, ActBuf, ActQ, AttnShape, DevMatrix, GemmScratch, Out, QkvBufs, QkvPost};
use super::runtime::{DevPtr, Graph, Stream};
use super::Device;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::arch::{FfnAct, LayerKind};
use crate::model::reference::rope_pair;
use crate::model::weights::{Matrix, Weights};
use crate::backend::{Backend, Exec, Logits, StepRow};
use crate::engine::SeqId;
use crate::kv::SeqKv;
use crate::model::{Config, Model};

struct Layer {
    attn_norm: Buffer,              // (n_embd)
    wq: DevMatrix,                  // (n_head * head_dim, n_embd)
    wk: DevMatrix,                  // (n_head_kv * head_dim, n_embd)
    wv: DevMatrix,                  // (n_head_kv * head_dim_v, n_embd)
    /// wq, wk, wv in runs of one type, each run stored as one matrix (its
    /// members are views into it): a decode step projects a run in one
    /// launch. Entry: (matrix, offset of its output in q|k|v, in values).
    qkv_runs: Vec<(DevMatrix, usize)>,
    wo: DevMatrix,                  // (n_embd, n_head * head_dim_v)
    bq: Option<Buffer>,             // (n_head * head_dim)       qwen2
    bk: Option<Buffer>,             // (n_head_kv * head_dim)    qwen2
    bv: Option<Buffer>,             // (n_head_kv * head_dim_v)  qwen2
    q_norm: Option<Buffer>,         // (head_dim)                gemma3
    k_norm: Option<Buffer>,         // (head_dim)                gemma3
    post_attn_norm: Option<Buffer>, // (n_embd)                  gemma3
    ffn_norm: Buffer,               // (n_embd)
    w_gate: DevMatrix,              // (n_ff, n_embd)
    w_up: DevMatrix,                // (n_ff, n_embd)
    w_down: DevMatrix,              // (n_embd, n_ff)
    post_ffn_norm: Option<Buffer>,  // (n_embd)                  gemma3
}

/// A model's weights on one device.
pub struct GpuModel {
    pub dev: Arc<Device>,
    pub pool: Arc<MemPool>,
    cfg: Config,
    token_embd: DevMatrix, // (n_vocab, n_embd)
    output: DevMatrix,     // (n_vocab, n_embd); token_embd when tied
    output_norm: Buffer,   // (n_embd)
    layers: Vec<Layer>,
    /// Per-pair RoPE frequencies (rope_dim / 2) for global and local layers.
    freq_global: Buffer,
    freq_local: Buffer,
    mscale: f32,
    _matrices: Vec<Buffer>,
}

fn ptr(b: &Option<Buffer>) -> DevPtr {
    b.as_ref().map_or(0, |b| b.ptr)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

struct Uploader<'a> {
    pool: &'a Arc<MemPool>,
    s: Stream,
    f: &'a GgufFile,
    owned: Vec<Buffer>,
    /// Regroup the matrices [`ops::packs`] takes (FORGE_NO_PACK=1: keep
    /// every matrix in its GGUF layout; for comparisons).
    pack: bool,
}

impl Uploader<'_> {
    fn bytes(&self, data: &[u8], what: &str) -> Result<Buffer> {
        let b = self.pool.alloc(data.len(), what)?;
        self.pool.rt.htod(self.s, b.ptr, data)?;
        Ok(b)
    }
    fn vec(&self, v: &[f32], what: &str) -> Result<Buffer> {
        let b = self.bytes(&f32_bytes(v), what)?;
        // the host copy is a temporary: finish the copy before it is dropped
        self.pool.rt.stream_sync(self.s)?;
        Ok(b)
    }
    fn opt(&self, v: &Option<Vec<f32>>, what: &str) -> Result<Option<Buffer>> {
        v.as_ref().map(|v| self.vec(v, what)).transpose()
    }
    fn matrix(&mut self, m: &Matrix) -> Result<DevMatrix> {
        Ok(self.stacked(&[m])?.0[0])
    }
    /// Matrices of one type and width in one buffer, one after another: the
    /// views of each, and of all of them as one matrix.
    fn stacked(&mut self, ms: &[&Matrix]) -> Result<(Vec<DevMatrix>, DevMatrix)> {
        let (ty, cols) = (ms[0].ty, ms[0].cols);
        if let Some(m) = ms.iter().find(|m| ops::type_suffix(m.ty).is_none()) {
            return Err(Error::UnsupportedType { what: format!("{} ({}) on the GPU backends", m.ty, m.name) });
        }
        debug_assert!(ms.iter().all(|m| m.ty == ty && m.cols == cols));
        let total: usize = ms.iter().map(|m| m.bytes(self.f).len()).sum();
        let b = self.pool.alloc(total, &ms[0].name)?;
        let mut views = Vec::with_capacity(ms.len());
        let mut off = 0;
        let mut packed = false;
        for m in ms {
            let bytes = m.bytes(self.f);
            packed = ops::put_matrix(self.pool.rt.as_ref(), self.s, b.ptr + off as u64, ty, cols, bytes, self.pack)?;
            views.push(DevMatrix { ty, rows: m.rows, cols, ptr: b.ptr + off as u64, packed });
            off += bytes.len();
        }
        let all = DevMatrix { ty, rows: ms.iter().map(|m| m.rows).sum(), cols, ptr: b.ptr, packed };
        self.owned.push(b);
        Ok((views, all))
    }
    /// wq, wk, wv, stored in runs of one type (see `Layer::qkv_runs`).
    fn qkv(&mut self, ms: [&Matrix; 3]) -> Result<([DevMatrix; 3], Vec<(DevMatrix, usize)>)> {
        let (mut views, mut runs) = (Vec::new(), Vec::new());
        let (mut i, mut out) = (0, 0);
        while i < 3 {
            let n = ms[i..].iter().take_while(|m| m.ty == ms[i].ty && m.cols == ms[i].cols).count();
            let (v, all) = self.stacked(&ms[i..i + n])?;
            runs.push((all, out));
            out += all.rows;
            views.extend(v);
            i += n;
        }
        Ok(([views[0], views[1], views[2]], runs))
    }
}

impl GpuModel {
    /// Upload `w` (located in `f`) to `dev` under a memory budget of
    /// `budget` bytes (0 = most of the free memory).
    pub fn upload(dev: Arc<Device>, cfg: &Config, w: &Weights, f: &GgufFile, budget: usize) -> Result<Arc<GpuModel>> {
        let pool = MemPool::new(dev.rt.clone(), budget)?;
        let s = dev.rt.stream_create()?;
        let r = Self::upload_on(&dev, &pool, s, cfg, w, f);
        let synced = dev.rt.stream_sync(s);
        dev.rt.stream_destroy(s);
        let m = r?;
        synced?;
        Ok(Arc::new(m))
    }

    fn upload_on(dev: &Arc<Device>, pool: &Arc<MemPool>, s: Stream, c: &Config, w: &Weights, f: &GgufFile) -> Result<GpuModel> {
        let mut up = Uploader { pool, s, f, owned: Vec::new(), pack: !crate::env_flag("FORGE_NO_PACK") };
        let token_embd = up.matrix(&w.token_embd)?;
        let output = if c.tied_embeddings { token_embd } else { up.matrix(&w.output)? };
        let mut layers = Vec::with_capacity(c.n_layer);
        for (i, l) in w.layers.iter().enumerate() {
            let n = |what: &str| format!("blk.{i}.{what}");
            let ([wq, wk, wv], qkv_runs) = up.qkv([&l.wq, &l.wk, &l.wv])?;
            layers.push(Layer {
                attn_norm: up.vec(&l.attn_norm, &n("attn_norm"))?,
                wq,
                wk,
                wv,
                qkv_runs,
                wo: up.matrix(&l.wo)?,
                bq: up.opt(&l.bq, &n("attn_q.bias"))?,
                bk: up.opt(&l.bk, &n("attn_k.bias"))?,
                bv: up.opt(&l.bv, &n("attn_v.bias"))?,
                q_norm: up.opt(&l.q_norm, &n("attn_q_norm"))?,
                k_norm: up.opt(&l.k_norm, &n("attn_k_norm"))?,
                post_attn_norm: up.opt(&l.post_attn_norm, &n("post_attention_norm"))?,
                ffn_norm: up.vec(&l.ffn_norm, &n("ffn_norm"))?,
                w_gate: up.matrix(&l.w_gate)?,
                w_up: up.matrix(&l.w_up)?,
                w_down: up.matrix(&l.w_down)?,
                post_ffn_norm: up.opt(&l.post_ffn_norm, &n("post_ffw_norm"))?,
            });
        }
        let freqs = |base: f32| -> (Vec<f32>, f32) {
            let mut ms = 1.0;
            let v = (0..c.rope_dim / 2)
                .map(|i| {
                    let (p, mult, m) = rope_pair(i, c.rope_dim, base, c.rope_scaling);
                    ms = m;
                    p * mult
                })
                .collect();
            (v, ms)
        };
        let (fg, mscale) = freqs(c.rope_base);
        let (fl, _) = freqs(c.rope_base_local);
        Ok(GpuModel {
            dev: dev.clone(),
            pool: pool.clone(),
            cfg: c.clone(),
            token_embd,
            output,
            output_norm: up.vec(&w.output_norm, "output_norm")?,
            freq_global: up.vec(&fg, "rope frequencies")?,
            freq_local: up.vec(&fl, "rope frequencies")?,
            mscale,
            layers,
            _matrices: up.owned,
        })
    }
}

impl GpuModel {
    /// Bytes one decode step must read at least: every matrix except the
    /// embedding (one row of it), plus the output matrix.
    pub fn decode_bytes_per_token(&self) -> usize {
        let m = |d: &DevMatrix| d.rows * d.row_bytes();
        let layers: usize = self.layers.iter().map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].into_iter().map(m).sum::<usize>()).sum();
        layers + m(&self.output) + self.token_embd.row_bytes()
    }
}

/// A model on a GPU as the [`Backend`] of its [`Model`].
pub struct GpuBackend(pub Arc<GpuModel>);

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        self.0.dev.describe()
    }
    fn new_exec(&self, _model: &Arc<Model>, n_ctx: usize, _n_blocks: usize) -> Result<Box<dyn Exec>> {
        Ok(Box::new(GpuExec { m: self.0.clone(), n_ctx, sessions: BTreeMap::new() }))
    }
    fn roofline(&self) -> Option<(usize, f64)> {
        Some((self.0.decode_bytes_per_token(), super::copy_bandwidth(&self.0.dev).unwrap_or(f64::NAN)))
    }
    fn is_gpu(&self) -> bool {
        true
    }
}

/// One engine's state on the GPU, until the batched kernels land: a
/// device session (a contiguous f16 KV cache of `n_ctx` positions) per
/// sequence, run one after the other. The engine's block pool still does
/// the accounting; no KV is shared (a fork replays its source's tokens).
pub struct GpuExec {
    m: Arc<GpuModel>,
    n_ctx: usize,
    sessions: BTreeMap<SeqId, GpuSession>,
}

impl GpuExec {
    fn session(&mut self, seq: SeqId) -> Result<&mut GpuSession> {
        self.sessions.get_mut(&seq).ok_or_else(|| Error::InvalidArgument(format!("sequence {seq} has no device session")))
    }
}

impl Exec for GpuExec {
    fn forward(&mut self, rows: &[StepRow], logits: &mut Vec<f32>) -> Result<()> {
        // sequence by sequence: all of a sequence's logits (or its last, or
        // none), then each row that asked gets its slot in row order
        let nv = self.m.cfg.n_vocab;
        let base = logits.len();
        let wanted_before: Vec<usize> = rows.iter().scan(0, |k, r| {
            let i = *k;
            *k += r.logits as usize;
            Some(i)
        }).collect();
        logits.resize(base + rows.iter().filter(|r| r.logits).count() * nv, 0.0);
        let mut order: Vec<SeqId> = Vec::new();
        for r in rows {
            if !order.contains(&r.seq) {
                order.push(r.seq);
            }
        }
        for id in order {
            let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].seq == id).collect();
            let toks: Vec<u32> = idx.iter().map(|&i| rows[i].token).collect();
            let wanted: Vec<usize> = idx.iter().copied().filter(|&i| rows[i].logits).collect();
            let want = match wanted.len() {
                0 => Logits::None,
                1 if wanted[0] == *idx.last().expect("a sequence's rows") => Logits::Last,
                _ => Logits::All,
            };
            let n_out = match want {
                Logits::None => 0,
                Logits::Last => nv,
                Logits::All => toks.len() * nv,
            };
            let mut out = vec![0f32; n_out];
            self.session(id)?.eval_into(&toks, rows[idx[0]].pos, want, &mut out)?;
            for &i in &wanted {
                let src = if want == Logits::Last { 0 } else { idx.iter().position(|&j| j == i).expect("a row of the sequence") };
                let dst = base + wanted_before[i] * nv;
                logits[dst..dst + nv].copy_from_slice(&out[src * nv..(src + 1) * nv]);
            }
        }
        Ok(())
    }

    fn forward_seq(&mut self, seq: SeqId, _kv: &SeqKv, tokens: &[u32], pos0: usize, want: Logits, out: &mut [f32]) -> Result<()> {
        self.session(seq)?.eval_into(tokens, pos0, want, out)
    }

    fn add_seq(&mut self, seq: SeqId) -> Result<()> {
        let s = GpuSession::new(self.m.clone(), self.n_ctx)?;
        self.sessions.insert(seq, s);
        Ok(())
    }

    fn remove_seq(&mut self, seq: SeqId) {
        self.sessions.remove(&seq);
    }

    fn fork_seq(&mut self, _src: SeqId, dst: SeqId, tokens: &[u32]) -> Result<()> {
        // today's device sessions have contiguous caches: replay
        let mut s = GpuSession::new(self.m.clone(), self.n_ctx)?;
        if !tokens.is_empty() {
            s.eval_into(tokens, 0, Logits::None, &mut [])?;
        }
        self.sessions.insert(dst, s);
        Ok(())
    }

    fn shares_blocks(&self) -> bool {
        false
    }
}

/// Largest number of tokens one pass takes; longer evaluations run in chunks.
pub const MAX_BATCH: usize = 512;
/// Elements of W held in f16 at once on the BLAS path (64 MiB).
const W16_ELEMS: usize = 32 << 20;

struct StreamGuard(Arc<dyn super::runtime::GpuRuntime>, Stream, bool);
impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.2 {
            self.0.stream_destroy(self.1);
        }
    }
}

/// One sequence on the device: KV cache, scratch, the decode graph.
pub struct GpuSession {
    m: Arc<GpuModel>,
    s: Stream,
    n_ctx: usize,
    splits: usize,
    kc: Buffer, // (n_layer, n_ctx, n_head_kv * head_dim) f16
    vc: Buffer, // (n_layer, n_ctx, n_head_kv * head_dim_v) f16
    x: Buffer,      // (MAX_BATCH, n_embd) residual stream
    xb: Buffer,     // (MAX_BATCH, n_embd) normed input of a block
    q: Buffer,      // (MAX_BATCH, n_head * head_dim)
    k: Buffer,      // (MAX_BATCH, n_head_kv * head_dim)
    v: Buffer,      // (MAX_BATCH, n_head_kv * head_dim_v)
    qkv1: Buffer,   // (n_head * head_dim + n_head_kv * (head_dim + head_dim_v)) q|k|v of one token
    att: Buffer,    // (MAX_BATCH, n_head * head_dim_v)
    branch: Buffer, // (MAX_BATCH, n_embd) block output before its post-norm
    g: Buffer,      // (MAX_BATCH, n_ff)
    u: Buffer,      // (MAX_BATCH, n_ff)
    part: Buffer,   // (n_head, splits, 2 + head_dim_v) decode partials
    counters: Buffer, // (n_head) i32 split tickets, zero between launches
    params: Buffer, // i32 [pos0, token ids (MAX_BATCH)]
    act: ActBuf,    // (MMV_MAXT, max_cols) activations prepared for the decode products
    logits: Buffer, // (logits_rows, n_vocab)
    logits_rows: usize,
    // page-locked host copies of `params` and one row of `logits`: a
    // decode step's copies are DMA transfers, not the driver's staged
    // copies of pageable memory
    params_host: HostBuf,
    logits_host: HostBuf,
    gemm: Option<GemmScratch>,
    graph: Option<Graph>,
    /// Replay the decode graph (FORGE_NO_GRAPH=1 turns it off).
    pub use_graph: bool,
}

impl Drop for GpuSession {
    fn drop(&mut self) {
        let rt = &self.m.dev.rt;
        let _ = rt.stream_sync(self.s);
        if let Some(g) = self.graph.take() {
            rt.graph_destroy(g);
        }
        rt.stream_destroy(self.s);
    }
}

impl GpuSession {
    pub fn new(m: Arc<GpuModel>, n_ctx: usize) -> Result<GpuSession> {
        let c = &m.cfg;
        let p = &m.pool;
        let f32s = |n: usize, what: &str| p.alloc(n * 4, what);
        let kv = |w: usize, what: &str| {
            c.n_layer.checked_mul(n_ctx).and_then(|v| v.checked_mul(w * 2)).ok_or_else(|| Error::InvalidArgument(format!("n_ctx {n_ctx} overflows the KV cache size"))).and_then(|b| p.alloc(b, what))
        };
        let b = MAX_BATCH;
        let splits = ops::decode_splits(n_ctx);
        let max_cols = c.n_embd.max(c.n_ff).max(c.n_head * c.head_dim_v);
        let gemm = if m.dev.rt.has_blas() {
            let max_elems = [c.n_vocab * c.n_embd, c.n_ff * c.n_embd, c.q_dim() * c.n_embd].into_iter().max().unwrap_or(0);
            let w16_elems = max_elems.min(W16_ELEMS);
            Some(GemmScratch {
                w16: p.alloc(w16_elems * 2, "f16 weight slab")?,
                w16_elems,
                x16: p.alloc(b * max_cols * 2, "f16 activations")?,
                x16_elems: b * max_cols,
            })
        } else {
            None
        };
        // on an allocation failure below, the guard gives the stream back
        let mut guard = StreamGuard(m.dev.rt.clone(), m.dev.rt.stream_create()?, true);
        let s = guard.1;
        let sess = GpuSession {
            kc: kv(c.kv_dim(), "K cache")?,
            vc: kv(c.v_dim(), "V cache")?,
            x: f32s(b * c.n_embd, "activations")?,
            xb: f32s(b * c.n_embd, "activations")?,
            q: f32s(b * c.q_dim(), "activations")?,
            k: f32s(b * c.kv_dim(), "activations")?,
            v: f32s(b * c.v_dim(), "activations")?,
            qkv1: f32s(c.q_dim() + c.kv_dim() + c.v_dim(), "activations")?,
            att: f32s(b * c.n_head * c.head_dim_v, "activations")?,
            branch: f32s(b * c.n_embd, "activations")?,
            g: f32s(b * c.n_ff, "activations")?,
            u: f32s(b * c.n_ff, "activations")?,
            part: f32s(c.n_head * splits * (2 + c.head_dim_v), "attention partials")?,
            counters: p.alloc(c.n_head * 4, "attention counters")?,
            params: p.alloc((1 + b) * 4, "step parameters")?,
            act: ActBuf::new(p, max_cols)?,
            logits: f32s(c.n_vocab, "logits")?,
            logits_rows: 1,
            params_host: HostBuf::new(&m.dev.rt, (1 + b) * 4)?,
            logits_host: HostBuf::new(&m.dev.rt, c.n_vocab * 4)?,
            gemm,
            graph: None,
            use_graph: !crate::env_flag("FORGE_NO_GRAPH") && !super::profile::enabled(),
            m,
            s,
            n_ctx,
            splits,
        };
        guard.2 = false; // from here on, GpuSession's drop releases the stream
        let rt = &sess.m.dev.rt;
        rt.memset(sess.s, sess.counters.ptr, 0, sess.counters.bytes)?;
        rt.stream_sync(sess.s)?;
        Ok(sess)
    }

    /// Evaluate `tokens` at positions pos0.. (the caller has checked ids and
    /// context room) and write the logits `want` asks for into `out`, whose
    /// length the caller has matched to them (rows × n_vocab).
    pub fn eval_into(&mut self, tokens: &[u32], pos0: usize, want: Logits, out: &mut [f32]) -> Result<()> {
        if pos0 + tokens.len() > self.n_ctx {
            return Err(Error::ContextFull(format!("{} tokens at {pos0} exceed n_ctx {}", tokens.len(), self.n_ctx)));
        }
        let nv = self.m.cfg.n_vocab;
        let mut done = 0;
        let chunks: Vec<&[u32]> = tokens.chunks(MAX_BATCH).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let last = ci + 1 == chunks.len();
            let w = match want {
                Logits::All => Logits::All,
                Logits::Last if last => Logits::Last,
                _ => Logits::None,
            };
            let rows = match w {
                Logits::All => chunk.len(),
                Logits::Last => 1,
                Logits::None => 0,
            };
            if rows > self.logits_rows {
                self.logits = self.m.pool.alloc(rows * nv * 4, "logits")?;
                self.logits_rows = rows;
            }
            let params = self.params_host.bytes_mut();
            params[..4].copy_from_slice(&((pos0 + ci * MAX_BATCH) as i32).to_ne_bytes());
            for (i, &t) in chunk.iter().enumerate() {
                params[4 * (1 + i)..4 * (2 + i)].copy_from_slice(&(t as i32).to_ne_bytes());
            }
            let rt = self.m.dev.rt.clone();
            rt.htod(self.s, self.params.ptr, &self.params_host.bytes()[..4 * (1 + chunk.len())])?;
            if chunk.len() == 1 && w == Logits::Last && self.use_graph {
                if self.graph.is_none() {
                    rt.graph_begin(self.s)?;
                    let r = self.enqueue(1, Logits::Last);
                    let g = rt.graph_end(self.s);
                    r?;
                    self.graph = Some(g?);
                }
                rt.graph_launch(self.s, self.graph.unwrap())?;
            } else {
                self.enqueue(chunk.len(), w)?;
            }
            // one row (decode) through the page-locked buffer; the rows of a
            // whole batch (Logits::All, up to MAX_BATCH × n_vocab floats)
            // straight into `out`, not into that much page-locked memory
            let n = rows * nv;
            let dst = &mut out[done..done + n];
            let staged = n * 4 <= self.logits_host.len();
            if staged && n > 0 {
                rt.dtoh(self.s, &mut self.logits_host.bytes_mut()[..4 * n], self.logits.ptr)?;
            } else if n > 0 {
                // SAFETY: f32 has no invalid bit patterns; the slice is exactly n floats.
                let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, n * 4) };
                rt.dtoh(self.s, bytes, self.logits.ptr)?;
            }
            // the host buffers are reused by the next chunk: wait for this one
            rt.stream_sync(self.s)?;
            if staged {
                dst.copy_from_slice(self.logits_host.f32s(n));
            }
            done += n;
        }
        debug_assert_eq!(done, out.len());
        Ok(())
    }

    /// Enqueue one pass of `n` tokens (ids and pos0 already in `params`).
    fn enqueue(&self, n: usize, want: Logits) -> Result<()> {
        let m = &*self.m;
        let (c, dev, s) = (&m.cfg, &*m.dev, self.s);
        let dim = c.n_embd;
        let pos0 = self.params.ptr;
        let ids = self.params.ptr + 4;

        let scale = if c.arch.embed_scale_sqrt { (dim as f32).sqrt() } else { 1.0 };
        ops::get_rows(dev, s, &m.token_embd, ids, self.x.ptr, n, scale)?;
        let kv_layer = (self.n_ctx * c.kv_dim() * 2) as u64;
        let v_layer = (self.n_ctx * c.v_dim() * 2) as u64;
        for (il, l) in m.layers.iter().enumerate() {
            // ---- attention ----
            let norm = Some((l.attn_norm.ptr, c.rms_eps));
            let (q, k, v) = if n == 1 {
                // one token: q|k|v side by side, one launch per run of one weight type
                let at = |off: usize| self.qkv1.ptr + (off * 4) as u64;
                let runs: Vec<Proj> = l.qkv_runs.iter().map(|(w, off)| Proj::new(w, at(*off))).collect();
                self.project(self.x.ptr, norm, 1, &runs)?;
                (at(0), at(c.q_dim()), at(c.q_dim() + c.kv_dim()))
            } else {
                self.project(self.x.ptr, norm, n, &[Proj::new(&l.wq, self.q.ptr), Proj::new(&l.wk, self.k.ptr), Proj::new(&l.wv, self.v.ptr)])?;
                (self.q.ptr, self.k.ptr, self.v.ptr)
            };
            let local = c.layer_kinds[il] == LayerKind::Local;
            let (kc, vc) = (self.kc.ptr + il as u64 * kv_layer, self.vc.ptr + il as u64 * v_layer);
            let post = QkvPost { n, n_head: c.n_head, n_head_kv: c.n_head_kv, hd: c.head_dim, hdv: c.head_dim_v, rope_dim: c.rope_dim, rope: c.arch.rope, mscale: m.mscale, eps: c.rms_eps };
            let bufs = QkvBufs {
                q, k, v,
                bq: ptr(&l.bq), bk: ptr(&l.bk), bv: ptr(&l.bv),
                q_norm: ptr(&l.q_norm), k_norm: ptr(&l.k_norm),
                k_cache: kc, v_cache: vc, pos0,
                freq: if local { m.freq_local.ptr } else { m.freq_global.ptr },
            };
            // one token: attention does qkv_post's work itself (one launch less)
            let fused = n == 1;
            if !fused {
                ops::qkv_post(dev, s, &post, &bufs)?;
            }
            let window = if local { c.sliding_window.unwrap_or(0) } else { 0 };
            let splits = if n == 1 { self.splits } else { 1 };
            let a = AttnShape { n, n_head: c.n_head, n_head_kv: c.n_head_kv, hd: c.head_dim, hdv: c.head_dim_v, window, scale: c.attn_scale, splits };
            // one token: attention also writes its output prepared for the
            // decode product of wo (no quantize_act)
            let wo_prepared = decode::Product::of(&l.wo, 1, false, false).is_ok_and(|p| decode::choose(dev.rt.info(), decode::Input::Prepared, &p).is_some());
            let prep = if n == 1 && wo_prepared && c.head_dim_v % 32 == 0 {
                Some(self.act.layout(c.n_head * c.head_dim_v, 1, self.att.ptr)?)
            } else {
                None
            };
            ops::attention(dev, s, &a, q, kc, vc, self.att.ptr, self.part.ptr, self.counters.ptr, pos0, prep.as_ref(), fused.then_some((&post, &bufs)))?;
            self.block_out(&l.wo, self.att.ptr, prep.as_ref(), &l.post_attn_norm, n)?;

            // ---- FFN: down(act(gate(x)) * up(x)) ----
            let norm = Some((l.ffn_norm.ptr, c.rms_eps));
            let gate = Proj { w: &l.w_gate, up: Some((&l.w_up, c.arch.ffn_act)), y: self.g.ptr, out: Out::Store };
            self.project(self.x.ptr, norm, n, &[gate])?;
            self.block_out(&l.w_down, self.g.ptr, None, &l.post_ffn_norm, n)?;
        }

        // ---- output ----
        let (first, rows) = match want {
            Logits::None => return Ok(()),
            Logits::Last => (n - 1, 1),
            Logits::All => (0, n),
        };
        let xr = self.x.ptr + (first * dim * 4) as u64;
        self.project(xr, Some((m.output_norm.ptr, c.rms_eps)), rows, &[Proj::new(&m.output, self.logits.ptr)])
    }

    /// x += W·a, or x += rmsnorm(W·a) when the block has a post-norm;
    /// `prep`: a already prepared for the decode products.
    fn block_out(&self, w: &DevMatrix, a: DevPtr, prep: Option<&ActQ>, post: &Option<Buffer>, n: usize) -> Result<()> {
        let m = &*self.m;
        match post {
            Some(pn) => {
                self.project_with(a, None, n, &[Proj::new(w, self.branch.ptr)], prep)?;
                ops::rmsnorm(&m.dev, self.s, self.branch.ptr, pn.ptr, self.x.ptr, n, m.cfg.n_embd, m.cfg.rms_eps, true)
            }
            None => self.project_with(a, None, n, &[Proj { w, up: None, y: self.x.ptr, out: Out::Add }], prep),
        }
    }

    /// The products that read one input x (n tokens), RMS-normalized first
    /// when `norm` is given, as [`decode::plan`] says (its table answers
    /// which kernel runs for each matrix): one token and kernels that
    /// prepare x themselves (norm fused; two matrices in one launch where a
    /// pair kernel exists); or x prepared once (`quantize_act`, norm fused)
    /// for up to 8 tokens; or the older matvec kernel (one token, norm
    /// fused). Prefill: rmsnorm, then vendor BLAS or the tiled kernel, and a
    /// separate activation kernel for gated pairs.
    fn project(&self, x: DevPtr, norm: Option<(DevPtr, f32)>, n: usize, projs: &[Proj]) -> Result<()> {
        self.project_with(x, norm, n, projs, None)
    }

    /// [`Self::project`], where `prep` (if any) is x already prepared for
    /// the decode products (no norm).
    fn project_with(&self, x: DevPtr, norm: Option<(DevPtr, f32)>, n: usize, projs: &[Proj], prep: Option<&ActQ>) -> Result<()> {
        let (m, s) = (&*self.m, self.s);
        let dev = &*m.dev;
        let cols = projs[0].w.cols;
        let same_types = projs.iter().all(|p| p.up.map_or(true, |(u, _)| u.ty == p.w.ty && u.packed == p.w.packed));
        let prods = projs.iter().map(|p| decode::Product::of(p.w, n, p.up.is_some(), norm.is_some())).collect::<Result<Vec<_>>>()?;
        let stores = projs.iter().all(|p| p.out == Out::Store);
        let prepared = prep.is_some() && norm.is_none();
        match decode::plan(dev.rt.info(), &prods, prepared, stores, same_types) {
            decode::Plan::Pair => {
                let [a, b] = projs else { unreachable!("a pair plan has two products") };
                return decode::launch_pair(dev, s, a.w, b.w, x, norm, a.y, b.y);
            }
            decode::Plan::Raw => return projs.iter().try_for_each(|p| ops::matvec_x(dev, s, p.w, p.up, x, norm, p.y, p.out)),
            decode::Plan::Prepared => {
                let a = match prep {
                    Some(a) if norm.is_none() => *a,
                    _ => ops::quantize_act(dev, s, &self.act, x, cols, n, norm)?,
                };
                return projs.iter().try_for_each(|p| ops::matvec_q(dev, s, p.w, p.up, &a, p.y, p.out));
            }
            decode::Plan::Staged => return projs.iter().try_for_each(|p| ops::matvec(dev, s, p.w, p.up, x, p.y, 1, p.out, norm)),
            decode::Plan::Gemm => {}
        }
        let xin = match norm {
            Some((w, eps)) => {
                ops::rmsnorm(dev, s, x, w, self.xb.ptr, n, cols, eps, false)?;
                self.xb.ptr
            }
            None => x,
        };
        for p in projs {
            match p.up {
                Some((u, _)) if ops::matvec_fits(dev, p.w.ty, cols, n) && u.ty == p.w.ty => {
                    ops::matvec(dev, s, p.w, p.up, xin, p.y, n, p.out, None)?;
                }
                Some((u, act)) => {
                    ops::matmul(dev, s, p.w, xin, p.y, n, Out::Store, self.gemm.as_ref())?;
                    ops::matmul(dev, s, u, xin, self.u.ptr, n, Out::Store, self.gemm.as_ref())?;
                    ops::glu(dev, s, p.y, self.u.ptr, n * u.rows, act)?;
                }
                None => {
                    ops::matmul(dev, s, p.w, xin, p.y, n, p.out, self.gemm.as_ref())?;
                }
            }
        }
        Ok(())
    }
}

/// One product of [`GpuSession::project`]: y = / += W x, or with `up`,
/// y = act(W x) * (up x).
struct Proj<'a> {
    w: &'a DevMatrix,
    up: Option<(&'a DevMatrix, FfnAct)>,
    y: DevPtr,
    out: Out,
}

impl<'a> Proj<'a> {
    fn new(w: &'a DevMatrix, y: DevPtr) -> Proj<'a> {
        Proj { w, up: None, y, out: Out::Store }
    }
}
