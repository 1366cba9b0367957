//! The GPU forward pass: the same steps as `model::forward` (the CPU fast
//! path) and `model::reference` (the oracle), as kernel launches on one
//! stream. Weights are uploaded once and stay in their GGUF types; the KV
//! cache is f16 on the device; only logits come back. A step of only decode
//! rows is padded to a size of [`GRAPH_BUCKETS`] and captured once per size
//! as a graph, then replayed: token ids, positions and block tables live in
//! a small device buffer the kernels read, so one graph serves every step
//! of its size.

use std::sync::Arc;

use super::memory::{Buffer, HostBuf, MemPool};
use super::decode;
use super::ops::{self, ActBuf, ActQ, AttnShape, DevMatrix, GemmScratch, KvRows, Out, QkvBufs, QkvPost};
use super::runtime::{DevPtr, Graph, Stream};
use super::Device;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::arch::{FfnAct, LayerKind};
use crate::model::weights::{Matrix, Weights};
use crate::backend::{Backend, Exec, KvHost, Logits, StepRow, TopRows, TOP_MAX};
use crate::engine::SeqId;
use crate::kv::{BlockCopy, SeqKv, BLOCK};
use crate::model::{Config, Model, RopeScaling};

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
    /// RoPE for contexts up to the original one (`[0]`) and, with
    /// LongRoPE, past it (`[1]`): an engine takes the one its n_ctx picks
    /// ([`Config::rope_freqs`]).
    rope: Vec<GpuRope>,
    _matrices: Vec<Buffer>,
}

/// Per-pair RoPE frequencies (rope_dim / 2) for global and local layers,
/// with llama3's and LongRoPE's per-pair divisors folded in, and the
/// cos/sin scale.
struct GpuRope {
    freq_global: Buffer,
    freq_local: Buffer,
    mscale: f32,
}

fn ptr(b: &Option<Buffer>) -> DevPtr {
    b.as_ref().map_or(0, |b| b.ptr)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

struct Uploader<'a> {
    dev: &'a Device,
    pool: &'a Arc<MemPool>,
    s: Stream,
    f: &'a GgufFile,
    owned: Vec<Buffer>,
    /// Regroup the matrices [`ops::packs`] takes (FORGE_NO_PACK=1: keep
    /// every matrix in its GGUF layout; for comparisons).
    pack: bool,
    /// Keep a resident f16 copy of every projection matrix (see
    /// [`f16_weights_wanted`]).
    f16: bool,
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
            views.push(DevMatrix { ty, rows: m.rows, cols, ptr: b.ptr + off as u64, packed, f16: 0 });
            off += bytes.len();
        }
        let mut all = DevMatrix { ty, rows: ms.iter().map(|m| m.rows).sum(), cols, ptr: b.ptr, packed, f16: 0 };
        self.owned.push(b);
        if self.f16 {
            // the f16 copies of the views, one after another as the views are
            let h = self.pool.alloc(all.rows * cols * 2, &format!("{} (f16 copy)", ms[0].name))?;
            let mut r0 = 0;
            for v in &mut views {
                v.f16 = h.ptr + (r0 * cols * 2) as u64;
                ops::dequant_to_f16(self.dev, self.s, v, v.f16)?;
                r0 += v.rows;
            }
            all.f16 = h.ptr;
            self.owned.push(h);
        }
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

/// Whether the projection matrices get resident f16 copies: with
/// `FORGE_F16_WEIGHTS=1` always, with `=0` never, and by default when the
/// vendor BLAS is loaded and the copies take at most a quarter of the
/// memory budget (the rest stays for the quantized weights, the KV cache
/// and scratch). Batched steps then multiply them with no dequantization
/// per step (`ops::matmul`); one-token decode keeps the quantized kernels.
fn f16_weights_wanted(dev: &Device, pool: &MemPool, c: &Config, w: &Weights) -> bool {
    match std::env::var("FORGE_F16_WEIGHTS").ok().as_deref() {
        Some("1") | Some("on") | Some("true") => return dev.rt.has_blas(),
        Some("0") | Some("off") | Some("false") => return false,
        _ => {}
    }
    let mats = |l: &crate::model::weights::LayerWeights| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].into_iter().map(|m| m.rows * m.cols).sum::<usize>();
    let elems: usize = w.layers.iter().map(mats).sum::<usize>() + c.n_vocab * c.n_embd;
    dev.rt.has_blas() && elems * 2 <= pool.budget() / 4
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
        let f16 = f16_weights_wanted(dev, pool, c, w);
        let mut up = Uploader { dev, pool, s, f, owned: Vec::new(), pack: !crate::env_flag("FORGE_NO_PACK"), f16: false };
        // the embedding is read a row at a time: an f16 copy only when it is the output too
        up.f16 = f16 && c.tied_embeddings;
        let token_embd = up.matrix(&w.token_embd)?;
        up.f16 = f16;
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
        // an n_ctx at or below the original context, and one past it
        // (LongRoPE's long table; the same numbers otherwise)
        let ctxs: &[usize] = match c.rope_scaling {
            RopeScaling::LongRope { orig_ctx, .. } => &[orig_ctx as usize, orig_ctx as usize + 1],
            _ => &[1],
        };
        let mut rope = Vec::new();
        for &n_ctx in ctxs {
            let (g, l) = (c.rope_freqs(c.rope_base, n_ctx), c.rope_freqs(c.rope_base_local, n_ctx));
            rope.push(GpuRope {
                freq_global: up.vec(&g.freq, "rope frequencies")?,
                freq_local: up.vec(&l.freq, "rope frequencies")?,
                mscale: g.mscale,
            });
        }
        Ok(GpuModel {
            dev: dev.clone(),
            pool: pool.clone(),
            cfg: c.clone(),
            token_embd,
            output,
            output_norm: up.vec(&w.output_norm, "output_norm")?,
            rope,
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
    fn new_exec(&self, _model: &Arc<Model>, n_ctx: usize, n_blocks: usize) -> Result<Box<dyn Exec>> {
        Ok(Box::new(GpuExec::new(self.0.clone(), n_ctx, n_blocks)?))
    }
    fn roofline(&self) -> Option<(usize, f64)> {
        Some((self.0.decode_bytes_per_token(), super::copy_bandwidth(&self.0.dev).unwrap_or(f64::NAN)))
    }
    fn is_gpu(&self) -> bool {
        true
    }
}

impl Exec for GpuExec {
    fn forward(&mut self, rows: &[StepRow], logits: &mut Vec<f32>) -> Result<()> {
        self.forward_rows(rows, Sink::Logits(logits))
    }

    fn forward_hidden(&mut self, rows: &[StepRow], hidden: &mut Vec<f32>) -> Result<()> {
        self.out_hidden = true;
        let r = self.forward_rows(rows, Sink::Logits(hidden));
        self.out_hidden = false;
        r
    }

    fn forward_top(&mut self, rows: &[StepRow], out: &mut TopRows) -> Result<()> {
        self.forward_rows(rows, Sink::Top(out))
    }


    fn forward_seq(&mut self, _seq: SeqId, kv: &SeqKv, tokens: &[u32], pos0: usize, want: Logits, out: &mut [f32]) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let nv = self.m.cfg.n_vocab;
        let mut done = 0;
        let n_chunks = tokens.len().div_ceil(MAX_BATCH);
        for (ci, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let (p0, n) = (pos0 + ci * MAX_BATCH, chunk.len());
            let rows = match want {
                Logits::All => OutRows::All,
                Logits::Last if ci + 1 == n_chunks => OutRows::Last,
                _ => OutRows::None,
            };
            let pos: Vec<i32> = (p0..p0 + n).map(|p| p as i32).collect();
            let tab = vec![0i32; n];
            let bt: Vec<i32> = kv.blocks[..(p0 + n - 1) / BLOCK + 1].iter().map(|&b| b as i32).collect();
            let runs = [(0, n)];
            let (n_dec, runs): (usize, &[(usize, usize)]) = if n == 1 { (1, &[]) } else { (0, &runs) };
            let k = rows.count(n) * nv;
            let pass = Pass { ids: chunk, pos: &pos, tab: &tab, bt: &bt, n_dec, runs, out: rows, pad: 0 };
            self.run_pass(&pass, Dest::Logits(&mut out[done..done + k]))?;
            done += k;
        }
        debug_assert_eq!(done, out.len());
        Ok(())
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) {
        let c = &self.m.cfg;
        let rt = self.m.dev.rt.clone();
        for cp in copies {
            for il in 0..c.n_layer {
                for (buf, w) in [(&self.kc, c.kv_dim()), (&self.vc, c.v_dim())] {
                    let row = (w * 2) as u64;
                    let layer = buf.ptr + il as u64 * self.slots as u64 * row;
                    let (from, to) = (cp.from as u64 * BLOCK as u64, cp.to as u64 * BLOCK as u64);
                    if let Err(e) = rt.dtod(self.s, layer + to * row, layer + from * row, cp.n * w * 2) {
                        // reported by the next forward: the copy is part of its step
                        self.failed.get_or_insert(e);
                    }
                }
            }
        }
    }

    fn read_kv(&mut self, slots: &[usize]) -> Result<KvHost> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let c = &self.m.cfg;
        let rt = self.m.dev.rt.clone();
        let mut out = KvHost { k: vec![vec![0u16; slots.len() * c.kv_dim()]; c.n_layer], v: vec![vec![0u16; slots.len() * c.v_dim()]; c.n_layer] };
        let mut issued = Ok(());
        'copy: for (buf, w, dst) in [(&self.kc, c.kv_dim(), &mut out.k), (&self.vc, c.v_dim(), &mut out.v)] {
            let row = w * 2;
            for (il, host) in dst.iter_mut().enumerate() {
                let layer = buf.ptr + (il * self.slots * row) as u64;
                let bytes = u16_bytes_mut(host);
                for (i, s, n) in slot_runs(slots) {
                    issued = rt.dtoh(self.s, &mut bytes[i * row..(i + n) * row], layer + (s * row) as u64);
                    if issued.is_err() {
                        break 'copy;
                    }
                }
            }
        }
        // the copies issued so far land in `out` before it is read or dropped
        let synced = rt.stream_sync(self.s);
        issued.and(synced).map(|_| out)
    }

    fn write_kv(&mut self, slots: &[usize], rows: &KvHost) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let c = &self.m.cfg;
        rows.check(slots.len(), c)?;
        let rt = self.m.dev.rt.clone();
        let mut issued = Ok(());
        'copy: for (buf, w, src) in [(&self.kc, c.kv_dim(), &rows.k), (&self.vc, c.v_dim(), &rows.v)] {
            let row = w * 2;
            for (il, host) in src.iter().enumerate() {
                let layer = buf.ptr + (il * self.slots * row) as u64;
                // SAFETY: u16 to bytes, the same memory.
                let bytes = unsafe { std::slice::from_raw_parts(host.as_ptr() as *const u8, host.len() * 2) };
                for (i, s, n) in slot_runs(slots) {
                    issued = rt.htod(self.s, layer + (s * row) as u64, &bytes[i * row..(i + n) * row]);
                    if issued.is_err() {
                        break 'copy;
                    }
                }
            }
        }
        // `rows` outlives the copies issued
        let synced = rt.stream_sync(self.s);
        issued.and(synced)
    }
}

/// `slots` as runs of consecutive slots: (index in `slots`, first slot, length).
fn slot_runs(slots: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &s) in slots.iter().enumerate() {
        match runs.last_mut() {
            Some((_, s0, n)) if *s0 + *n == s => *n += 1,
            _ => runs.push((i, s, 1)),
        }
    }
    runs
}

fn u16_bytes_mut(v: &mut [u16]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid u16; the same memory, twice the length.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 2) }
}

// The kernels address the paged cache in the engine's blocks, and select
// as many candidates as the engine offers.
const _: () = assert!(super::kernel_table::KV_BLOCK == BLOCK, "KV_BLOCK in kernels/rope.cu must equal kv::BLOCK");
const _: () = assert!(super::kernel_table::TOPK_MAX == TOP_MAX, "TOPK_MAX in kernels/sample.cu must equal backend::TOP_MAX");

/// Where a pass's logits rows go: into the caller's floats, or selected
/// on the device and appended as candidates.
enum Dest<'a> {
    Logits(&'a mut [f32]),
    Top(&'a mut TopRows),
}

/// Where a step's results go ([`Exec::forward`] or [`Exec::forward_top`]).
enum Sink<'a> {
    Logits(&'a mut Vec<f32>),
    Top(&'a mut TopRows),
}

/// Largest number of rows one pass takes; longer batches run in chunks.
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

/// Which rows of a pass return logits.
#[derive(Clone, PartialEq, Eq)]
enum OutRows {
    None,
    /// The last row's (a single sequence's last token).
    Last,
    /// Every row's, in pass order.
    All,
    /// These rows' (indices into the pass), in this order.
    Gather(Vec<i32>),
}

impl OutRows {
    fn count(&self, n: usize) -> usize {
        match self {
            OutRows::None => 0,
            OutRows::Last => 1,
            OutRows::All => n,
            OutRows::Gather(g) => g.len(),
        }
    }
}

/// One pass on the device: `n` rows, the first `n_dec` of them decode rows
/// (any sequences, one query each), then `runs` (first row, rows) of one
/// sequence each at consecutive positions (prefill chunks).
struct Pass<'a> {
    ids: &'a [u32],
    pos: &'a [i32],
    tab: &'a [i32],
    bt: &'a [i32],
    n_dec: usize,
    runs: &'a [(usize, usize)],
    out: OutRows,
    /// The last `pad` rows only fill a captured size (decode rows of the
    /// trash block); their logits are not returned.
    pad: usize,
}

/// What a captured decode step was captured for: its rows, and a one-row
/// contiguous pass's first slot.
#[derive(Clone, Copy, PartialEq, Eq)]
struct GraphKey {
    n: usize,
    contiguous: Option<usize>,
    /// The one-row step's attention is the tensor-core kernel
    /// ([`GpuExec::flash_decode`]).
    flash: bool,
}

/// The sizes decode steps are captured at; a step of n rows is padded to
/// the first size ≥ n (larger steps run uncaptured). Powers of two up to
/// 32, then steps of at most a quarter, so padding costs at most a
/// quarter of a large step's compute (and of its logits buffer).
pub const GRAPH_BUCKETS: [usize; 15] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256];

impl Pass<'_> {
    /// One sequence whose blocks are consecutive in the pool (a lone
    /// session's always are): its first slot. The pass then reads the
    /// cache as one contiguous run from there, with no block table.
    fn contiguous(&self) -> Option<usize> {
        let first = *self.bt.first()?;
        let one_seq = self.tab.iter().all(|&t| t == 0);
        (one_seq && self.bt.iter().enumerate().all(|(i, &b)| b == first + i as i32)).then_some(first as usize * BLOCK)
    }
}

/// Where a pass's step data sits in [`GpuExec::step`] (i32 offsets).
#[derive(Clone, Copy)]
struct StepLayout {
    ids: DevPtr,
    at: KvRows,
    gather: DevPtr,
    /// The slot the cache pointers start at (a contiguous pass's first
    /// slot, with `at.bt` 0; else 0).
    base: usize,
}

/// One engine's state on the GPU: the engine's KV block pool as f16 on the
/// device (K and V per layer, `slots` = blocks × [`BLOCK`] positions, each
/// sequence's positions where its block table says), scratch for a pass of
/// up to [`MAX_BATCH`] rows, and the captured decode steps. A pass
/// runs the rows of any sequences together: the products take all rows at
/// once, attention reads each row's keys through its block table (decode
/// rows in one launch, each prefill chunk in the tiled kernels).
pub struct GpuExec {
    m: Arc<GpuModel>,
    s: Stream,
    slots: usize,
    /// Key splits of a one-row decode step ([`ops::decode_splits`] of n_ctx).
    splits: usize,
    /// The most key splits of a step of several decode rows
    /// ([`ops::mixed_max_splits`] of n_ctx).
    mixed_max: usize,
    /// Key splits of a one-row step on the tensor-core kernel
    /// ([`flash_splits`] of n_ctx).
    flash_splits: usize,
    /// Which of the model's RoPE tables this context takes (`GpuModel::rope`).
    rope: usize,
    kc: Buffer,     // (n_layer, slots, n_head_kv * head_dim) f16
    vc: Buffer,     // (n_layer, slots, n_head_kv * head_dim_v) f16
    x: Buffer,      // (MAX_BATCH, n_embd) residual stream
    xb: Buffer,     // (MAX_BATCH, n_embd) normed input of a block
    q: Buffer,      // (MAX_BATCH, n_head * head_dim)
    k: Buffer,      // (MAX_BATCH, n_head_kv * head_dim)
    v: Buffer,      // (MAX_BATCH, n_head_kv * head_dim_v)
    qkv1: Buffer,   // (n_head * head_dim + n_head_kv * (head_dim + head_dim_v)) q|k|v of one token
    att: Buffer,    // (MAX_BATCH, n_head * head_dim_v)
    branch: Buffer, // (MAX_BATCH, n_embd) block output before its post-norm; the rows logits are made of
    g: Buffer,      // (MAX_BATCH, n_ff)
    u: Buffer,      // (MAX_BATCH, n_ff)
    part: Buffer,   // decode partials, see `part_rows`
    counters: Buffer, // (MAX_BATCH, n_head) i32 split tickets, zero between launches
    act: ActBuf,    // (MMQ_MAX or MMV_MAXT, max_cols) activations prepared for the integer products
    logits: Buffer, // (logits_rows, n_vocab)
    logits_rows: usize,
    top: Buffer,    // (MAX_BATCH, TOP_MAX) i32 ids, the same f32 logits, (MAX_BATCH) f32 log-sum-exp, the top-1 scratch
    /// i32 step data: ids | pos | tab | gather | block tables (`step_cap` of them).
    step: Buffer,
    step_cap: usize,
    // page-locked host copies of `step` and one row of `logits`: a decode
    // step's copies are DMA transfers, not the driver's staged copies of
    // pageable memory
    step_host: HostBuf,
    logits_host: HostBuf,
    gemm: Option<GemmScratch>,
    /// Captured decode steps, replayed: a pass of only decode rows, padded
    /// to a size of [`GRAPH_BUCKETS`], is captured once per size (the
    /// one-row step also per first slot of a contiguous pass). The kernels
    /// read tokens, positions and block tables from `step`, so one graph
    /// serves every step of its size.
    graphs: Vec<(GraphKey, Graph)>,
    /// Replay decode graphs (FORGE_NO_GRAPH=1 turns them off).
    pub use_graph: bool,
    /// A block outside the engine's pool (its last): a padded row of a
    /// captured step writes its K/V there and attends only to it.
    trash: i32,
    /// Step sizes whose capture failed (a vendor library that allocates
    /// while capturing): they run uncaptured and unpadded.
    uncapturable: Vec<usize>,
    /// This pass's output rows are the final hidden states (after the
    /// output norm, n_embd floats each) in the logits buffer, not logits
    /// ([`Exec::forward_hidden`]); never captured in the graph.
    out_hidden: bool,
    /// A failed block copy, reported by the next forward.
    failed: Option<Error>,
}

impl Drop for GpuExec {
    fn drop(&mut self) {
        let rt = &self.m.dev.rt;
        let _ = rt.stream_sync(self.s);
        for (_, g) in self.graphs.drain(..) {
            rt.graph_destroy(g);
        }
        rt.stream_destroy(self.s);
    }
}

/// Partial rows the attention kernels may need: one-row steps use `splits`
/// per head; a step of r decode rows uses [`ops::mixed_splits`], so r ·
/// n_head · splits ≤ f SMs + r · n_head (f = `MIXED_FILL[0]`). Where the
/// tensor-core kernel runs (`mma`), its one-row steps use up to
/// APM_MAX_SPLITS per head, and prefill runs get room for 64 (4 SMs + b)
/// rows, b = ceil(MAX_BATCH / 64) · n_head: [`ops::prefill_splits`] is
/// capped there (a 512-row chunk of Qwen's 14 heads: 5 splits).
fn part_rows(n_head: usize, splits: usize, sms: usize, mma: bool) -> usize {
    let decode = (n_head * splits).max(ops::MIXED_FILL[0] * sms + MAX_BATCH * n_head);
    match mma {
        true => decode.max(n_head * ops::APM_MAX_SPLITS).max(64 * (4 * sms + MAX_BATCH.div_ceil(64) * n_head)),
        false => decode,
    }
}

/// Key splits of a one-row step on the tensor-core kernel for a context of
/// n_ctx: `FORGE_FLASH_TILES` (default 2) 64-key tiles a split at the
/// longest (the kernel works out each step's own ranges from its position).
fn flash_splits(n_ctx: usize) -> usize {
    static TILES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let tiles = *TILES.get_or_init(|| std::env::var("FORGE_FLASH_TILES").ok().and_then(|v| v.parse().ok()).unwrap_or(2).max(1));
    n_ctx.div_ceil(64 * tiles).clamp(1, ops::APM_MAX_SPLITS)
}

/// The position from which a one-row step takes the tensor-core attention
/// (`FORGE_FLASH_DECODE=p` or [`set_flash_decode`]; 0 = never; default
/// 4096: on the H200 the decode kernel, which also does qkv_post's work, is
/// faster at 2,048, the two are even at 4,096, and the tensor cores win
/// from 8,192 on; docs/PERFORMANCE.md).
fn flash_decode_from() -> usize {
    use std::sync::atomic::Ordering;
    let v = FLASH_FROM.load(Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    let v = match std::env::var("FORGE_FLASH_DECODE").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(0) => usize::MAX,
        Some(v) => v,
        None => 4096,
    };
    FLASH_FROM.store(v, Ordering::Relaxed);
    v
}

/// 0: not yet read from the environment; usize::MAX: never.
static FLASH_FROM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One-row steps from position `from` on take the tensor-core attention
/// (Some(0): never; None: back to the default, `FORGE_FLASH_DECODE` or
/// 4096), for this process (tests run both).
pub fn set_flash_decode(from: Option<usize>) {
    let v = match from {
        Some(0) => usize::MAX,
        Some(p) => p,
        None => 0, // read from the environment again
    };
    FLASH_FROM.store(v, std::sync::atomic::Ordering::Relaxed);
}

impl GpuExec {
    pub fn new(m: Arc<GpuModel>, n_ctx: usize, n_blocks: usize) -> Result<GpuExec> {
        let c = &m.cfg;
        let p = &m.pool;
        let f32s = |n: usize, what: &str| p.alloc(n * 4, what);
        // one block more than the pool's: the padded rows' (`trash`)
        let slots = (n_blocks + 1).checked_mul(BLOCK).ok_or_else(|| Error::InvalidArgument(format!("{n_blocks} KV blocks")))?;
        let kv = |w: usize, what: &str| {
            c.n_layer.checked_mul(slots).and_then(|v| v.checked_mul(w * 2)).ok_or_else(|| Error::InvalidArgument(format!("{n_blocks} KV blocks overflow the KV cache size"))).and_then(|b| p.alloc(b, what))
        };
        let b = MAX_BATCH;
        let splits = ops::decode_splits(n_ctx);
        let sms = m.dev.rt.info().multiprocessors as usize;
        let max_cols = c.n_embd.max(c.n_ff).max(c.n_head * c.head_dim_v);
        let gemm = if m.dev.rt.has_blas() {
            let max_elems = [c.n_vocab * c.n_embd, c.n_ff * c.n_embd, c.q_dim() * c.n_embd].into_iter().max().unwrap_or(0);
            let w16_elems = max_elems.min(W16_ELEMS);
            Some(GemmScratch {
                w16: p.alloc(w16_elems * 2, "f16 weight slab")?,
                w16_elems,
                x16: p.alloc(b * max_cols * 2, "f16 activations")?,
                x16_elems: b * max_cols,
                x16lo: if ops::f16_split() { Some(p.alloc(b * max_cols * 2, "f16 activations' low halves")?) } else { None },
            })
        } else {
            None
        };
        // room for the step data of a full pass whose rows all read one
        // context's table; more is allocated when a pass needs it
        let step_cap = 4 * b + n_ctx.div_ceil(BLOCK) + 1;
        // on an allocation failure below, the guard gives the stream back
        let mut guard = StreamGuard(m.dev.rt.clone(), m.dev.rt.stream_create()?, true);
        let s = guard.1;
        let exec = GpuExec {
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
            part: f32s(part_rows(c.n_head, splits, sms, ops::mma_attention(&m.dev, c.head_dim, c.head_dim_v)) * (2 + c.head_dim_v), "attention partials")?,
            counters: p.alloc(b * c.n_head * 4, "attention counters")?,
            act: ActBuf::with_tokens(p, max_cols, if decode::has_mmq(m.dev.rt.info()) { (*decode::mmq_rows().end()).max(ops::MMV_MAXT) } else { ops::MMV_MAXT })?,
            // one row of logits, or of hidden states (forward_hidden)
            logits: f32s(c.n_vocab.max(c.n_embd), "logits")?,
            logits_rows: 1,
            top: p.alloc(b * TOP_MAX * 8 + b * 4 + ops::topk_scratch_bytes(b), "top-k candidates")?,
            step: p.alloc(step_cap * 4, "step data")?,
            step_cap,
            step_host: HostBuf::new(&m.dev.rt, step_cap * 4)?,
            logits_host: HostBuf::new(&m.dev.rt, c.n_vocab * 4)?,
            gemm,
            graphs: Vec::new(),
            uncapturable: Vec::new(),
            trash: i32::try_from(n_blocks).map_err(|_| Error::InvalidArgument(format!("{n_blocks} KV blocks")))?,
            use_graph: !crate::env_flag("FORGE_NO_GRAPH") && !super::profile::enabled(),
            out_hidden: false,
            failed: None,
            rope: usize::from(c.rope_long(n_ctx)),
            m,
            s,
            slots,
            splits,
            mixed_max: ops::mixed_max_splits(n_ctx),
            flash_splits: flash_splits(n_ctx),
        };
        guard.2 = false; // from here on, GpuExec's drop releases the stream
        let rt = &exec.m.dev.rt;
        rt.memset(exec.s, exec.counters.ptr, 0, exec.counters.bytes)?;
        rt.stream_sync(exec.s)?;
        Ok(exec)
    }

    /// The step's rows, in chunks of at most [`MAX_BATCH`], into `sink`.
    fn forward_rows(&mut self, rows: &[StepRow], mut sink: Sink) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let nv = self.out_width();
        for chunk in rows.chunks(MAX_BATCH) {
            // each sequence's rows in this chunk, in order of first appearance
            let mut seqs: Vec<(SeqId, Vec<usize>)> = Vec::new();
            for (i, r) in chunk.iter().enumerate() {
                match seqs.iter_mut().find(|(id, _)| *id == r.seq) {
                    Some((_, v)) => v.push(i),
                    None => seqs.push((r.seq, vec![i])),
                }
            }
            // decode rows (a sequence's only row here) first, then each
            // longer run of one sequence
            let mut order: Vec<usize> = Vec::with_capacity(chunk.len());
            let mut tab_of: Vec<i32> = vec![0; chunk.len()];
            let mut bt: Vec<i32> = Vec::new();
            for (_, idx) in &seqs {
                let last = chunk[*idx.last().expect("a row")];
                let off = bt.len() as i32;
                bt.extend(last.kv.blocks[..last.pos / BLOCK + 1].iter().map(|&b| b as i32));
                for &i in idx {
                    tab_of[i] = off;
                }
            }
            order.extend(seqs.iter().filter(|(_, v)| v.len() == 1).map(|(_, v)| v[0]));
            let n_dec = order.len();
            let mut runs = Vec::new();
            for (_, idx) in seqs.iter().filter(|(_, v)| v.len() > 1) {
                runs.push((order.len(), idx.len()));
                order.extend(idx);
            }
            let mut ids: Vec<u32> = order.iter().map(|&i| chunk[i].token).collect();
            let mut pos: Vec<i32> = order.iter().map(|&i| chunk[i].pos as i32).collect();
            let mut tab: Vec<i32> = order.iter().map(|&i| tab_of[i]).collect();
            // a step of only decode rows, each wanting its logits, runs as a
            // captured graph of the next bucket's size: the padded rows
            // (token 0 at position 0) write and read only the trash block,
            // and their logits are not returned
            let all_out = chunk.iter().all(|r| r.logits);
            let pad = match self.graph_bucket(chunk.len()) {
                Some(b) if n_dec == chunk.len() && all_out && chunk.len() > 1 => b - chunk.len(),
                _ => 0,
            };
            if pad > 0 {
                let t = bt.len() as i32;
                bt.push(self.trash);
                ids.resize(chunk.len() + pad, 0);
                pos.resize(chunk.len() + pad, 0);
                tab.resize(chunk.len() + pad, t);
            }
            // the rows that want logits, in row order, as rows of the pass
            let mut at_in_pass = vec![0i32; chunk.len()];
            for (k, &i) in order.iter().enumerate() {
                at_in_pass[i] = k as i32;
            }
            let want: Vec<i32> = (0..chunk.len()).filter(|&i| chunk[i].logits).map(|i| at_in_pass[i]).collect();
            let n = chunk.len();
            let out = if pad > 0 {
                OutRows::All
            } else if want.is_empty() {
                OutRows::None
            } else if want == [n as i32 - 1] {
                OutRows::Last
            } else if want.len() == n && want.iter().enumerate().all(|(k, &r)| r == k as i32) {
                OutRows::All
            } else {
                OutRows::Gather(want)
            };
            let count = out.count(n);
            let pass = Pass { ids: &ids, pos: &pos, tab: &tab, bt: &bt, n_dec: n_dec + pad, runs: &runs, out, pad };
            match &mut sink {
                Sink::Logits(logits) => {
                    let start = logits.len();
                    logits.resize(start + count * nv, 0.0);
                    self.run_pass(&pass, Dest::Logits(&mut logits[start..]))?;
                }
                Sink::Top(t) => self.run_pass(&pass, Dest::Top(t))?,
            }
        }
        Ok(())
    }

    /// Forget the captured graphs (a buffer they read moved).
    fn drop_graph(&mut self) {
        if !self.graphs.is_empty() {
            let _ = self.m.dev.rt.stream_sync(self.s);
        }
        for (_, g) in self.graphs.drain(..) {
            self.m.dev.rt.graph_destroy(g);
        }
    }

    /// The captured size a decode step of `n` rows is padded to, if steps
    /// are captured at all.
    fn graph_bucket(&self, n: usize) -> Option<usize> {
        if !self.use_graph || self.out_hidden {
            return None;
        }
        GRAPH_BUCKETS.iter().copied().find(|&b| b >= n).filter(|b| !self.uncapturable.contains(b))
    }

    /// Run one pass and write its logits rows (`p.out`) into `dst`, sized
    /// rows × n_vocab by the caller.
    fn run_pass(&mut self, p: &Pass, dest: Dest) -> Result<()> {
        let n = p.ids.len();
        debug_assert!(n > 0 && n <= MAX_BATCH && p.pos.len() == n && p.tab.len() == n);
        debug_assert!(p.pad == 0 || (p.out == OutRows::All && p.n_dec == n && p.pad < n));
        let nv = self.out_width();
        // rows computed; the last `pad` of them are not returned
        let rows = p.out.count(n);
        let gather: &[i32] = match &p.out {
            OutRows::Gather(g) => g,
            _ => &[],
        };
        // step data: ids | pos | tab | gather | block tables
        let need = 3 * n + gather.len() + p.bt.len();
        if need > self.step_cap {
            self.drop_graph();
            let cap = need.next_power_of_two();
            self.step = self.m.pool.alloc(cap * 4, "step data")?;
            self.step_host = HostBuf::new(&self.m.dev.rt, cap * 4)?;
            self.step_cap = cap;
        }
        if rows > self.logits_rows {
            self.drop_graph();
            // sized for logits whatever this pass returns, and for a bucket
            // of rows (each growth forgets every captured graph)
            let rows = self.graph_bucket(rows).unwrap_or(rows);
            let width = self.m.cfg.n_vocab.max(self.m.cfg.n_embd);
            // the old buffer goes first (the last pass is done with it), so
            // growing never holds both; if the new one does not fit, the
            // next pass tries again
            self.logits = self.m.pool.alloc(4, "logits")?;
            self.logits_rows = 0;
            self.logits = self.m.pool.alloc(rows * width * 4, "logits")?;
            self.logits_rows = rows;
        }
        {
            let h = &mut self.step_host.bytes_mut()[..need * 4];
            let mut put = |i: usize, v: i32| h[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
            for i in 0..n {
                put(i, p.ids[i] as i32);
                put(n + i, p.pos[i]);
                put(2 * n + i, p.tab[i]);
            }
            for (i, &g) in gather.iter().enumerate() {
                put(3 * n + i, g);
            }
            for (i, &b) in p.bt.iter().enumerate() {
                put(3 * n + gather.len() + i, b);
            }
        }
        let step = self.step.ptr;
        let at = |i: usize| step + 4 * i as u64;
        let contiguous = p.contiguous();
        let bt = if contiguous.is_some() { 0 } else { at(3 * n + gather.len()) };
        let lay = StepLayout { ids: at(0), at: KvRows { pos: at(n), tab: at(2 * n), bt }, gather: at(3 * n), base: contiguous.unwrap_or(0) };
        let rt = self.m.dev.rt.clone();
        rt.htod(self.s, step, &self.step_host.bytes()[..need * 4])?;
        let captured = if n == 1 { p.out == OutRows::Last } else { p.out == OutRows::All && p.runs.is_empty() && p.n_dec == n };
        if captured && self.graph_bucket(n) == Some(n) {
            let key = GraphKey { n, contiguous, flash: self.flash_decode(p) };
            if n == 1 {
                // one one-row graph of each attention: a contiguous pass
                // elsewhere replaces it
                if let Some(i) = self.graphs.iter().position(|(k, _)| k.n == 1 && k.flash == key.flash && *k != key) {
                    let _ = rt.stream_sync(self.s);
                    rt.graph_destroy(self.graphs.swap_remove(i).1);
                }
            }
            let g = match self.graphs.iter().find(|(k, _)| *k == key) {
                Some((_, g)) => Some(*g),
                None => {
                    // a size that cannot be captured (a vendor library that
                    // allocates while capturing) runs uncaptured from now on;
                    // an error of the step itself comes back from that run
                    let g = rt.graph_begin(self.s).and_then(|()| {
                        let r = self.enqueue(p, &lay);
                        let g = rt.graph_end(self.s);
                        match (r, g) {
                            (Ok(()), g) => g,
                            (Err(e), g) => {
                                if let Ok(g) = g {
                                    rt.graph_destroy(g);
                                }
                                Err(e)
                            }
                        }
                    });
                    match g {
                        Ok(g) => {
                            self.graphs.push((key, g));
                            Some(g)
                        }
                        Err(e) => {
                            eprintln!("rocmforge: warning: {n}-row GPU decode steps run uncaptured: capturing one failed ({e})");
                            self.uncapturable.push(n);
                            None
                        }
                    }
                }
            };
            match g {
                Some(g) => rt.graph_launch(self.s, g)?,
                None => self.enqueue(p, &lay)?,
            }
        } else {
            self.enqueue(p, &lay)?;
        }
        let rows = rows - p.pad;
        let dst = match dest {
            Dest::Logits(dst) => dst,
            Dest::Top(t) => return self.top_rows(rows, t),
        };
        debug_assert_eq!(dst.len(), rows * nv);
        // one row (decode) through the page-locked buffer; more rows (up to
        // MAX_BATCH × n_vocab floats) straight into `dst`, not into that
        // much page-locked memory
        let count = rows * nv;
        let staged = count * 4 <= self.logits_host.len();
        if staged && count > 0 {
            rt.dtoh(self.s, &mut self.logits_host.bytes_mut()[..4 * count], self.logits.ptr)?;
        } else if count > 0 {
            // SAFETY: f32 has no invalid bit patterns; the slice is exactly `count` floats.
            let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, count * 4) };
            rt.dtoh(self.s, bytes, self.logits.ptr)?;
        }
        // the host buffers are reused by the next pass: wait for this one
        rt.stream_sync(self.s)?;
        if staged && count > 0 {
            dst.copy_from_slice(self.logits_host.f32s(count));
        }
        Ok(())
    }

    /// Select the top `t.k` of the pass's `rows` logits rows on the device
    /// and append them (ids, logits, log-sum-exp) to `t`: k × 8 + 4 bytes
    /// a row come back, not n_vocab × 4.
    fn top_rows(&mut self, rows: usize, t: &mut TopRows) -> Result<()> {
        let k = t.k;
        if rows == 0 {
            return self.m.dev.rt.stream_sync(self.s);
        }
        let nv = self.m.cfg.n_vocab;
        // ids | logits | log-sum-exp packed for these rows, so one copy
        // brings them back (into page-locked memory when they fit there)
        let n = rows * k * 8 + rows * 4;
        let ids = self.top.ptr;
        let (vals, lse) = (ids + (rows * k * 4) as u64, ids + (rows * k * 8) as u64);
        let scratch = self.top.ptr + (MAX_BATCH * TOP_MAX * 8 + MAX_BATCH * 4) as u64;
        ops::topk(&self.m.dev, self.s, self.logits.ptr, rows, nv, k, ids, vals, lse, scratch)?;
        let rt = self.m.dev.rt.clone();
        let mut spill = Vec::new();
        let staged = n <= self.logits_host.len();
        let bytes: &mut [u8] = if staged {
            &mut self.logits_host.bytes_mut()[..n]
        } else {
            spill.resize(n, 0u8);
            &mut spill
        };
        rt.dtoh(self.s, bytes, ids)?;
        rt.stream_sync(self.s)?;
        let (a, rest) = bytes.split_at(rows * k * 4);
        let (b, c) = rest.split_at(rows * k * 4);
        let word = |x: &[u8]| [x[0], x[1], x[2], x[3]];
        t.ids.extend(a.chunks_exact(4).map(|x| i32::from_ne_bytes(word(x)) as u32));
        t.logits.extend(b.chunks_exact(4).map(|x| f32::from_ne_bytes(word(x))));
        t.lse.extend(c.chunks_exact(4).map(|x| f32::from_ne_bytes(word(x))));
        Ok(())
    }

    /// Whether a one-row step's attention takes the tensor-core kernel: a
    /// position from [`flash_decode_from`] on, a grouped-query model (its
    /// heads of one KV head fill the mma rows), where the kernel exists.
    fn flash_decode(&self, p: &Pass) -> bool {
        let c = &self.m.cfg;
        p.ids.len() == 1 && p.n_dec == 1 && p.pos[0] as usize >= flash_decode_from() && c.n_head / c.n_head_kv >= 2 && ops::mma_attention(&self.m.dev, c.head_dim, c.head_dim_v)
    }

    /// Enqueue one pass (its step data already in `step`).
    fn enqueue(&self, p: &Pass, lay: &StepLayout) -> Result<()> {
        let m = &*self.m;
        let (c, dev, s) = (&m.cfg, &*m.dev, self.s);
        let n = p.ids.len();
        let flash = self.flash_decode(p);
        let dim = c.n_embd;
        let at = lay.at;

        let scale = if c.arch.embed_scale_sqrt { (dim as f32).sqrt() } else { 1.0 };
        ops::get_rows(dev, s, &m.token_embd, lay.ids, self.x.ptr, n, scale)?;
        let kv_layer = (self.slots * c.kv_dim() * 2) as u64;
        let v_layer = (self.slots * c.v_dim() * 2) as u64;
        let (k_base, v_base) = ((lay.base * c.kv_dim() * 2) as u64, (lay.base * c.v_dim() * 2) as u64);
        // decode rows of several sequences: enough key splits to fill the
        // device, fewer as rows grow (see `part_rows`)
        let sms = dev.rt.info().multiprocessors as usize;
        // one decode row on attn_dr (unfused) instead of the fused attn_d:
        // FORGE_ATTN_ROWS=2 (A/B runs)
        let one_rows = p.n_dec == 1 && !flash && ops::attn_rows_one(dev, c.head_dim, c.head_dim_v);
        let dec_splits = match (flash, p.n_dec) {
            (true, _) => self.flash_splits,
            (false, 1) if !one_rows => self.splits,
            (false, r) => ops::mixed_splits(dev, r, c.n_head, c.head_dim, c.head_dim_v, self.mixed_max),
        };
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
            let (kc, vc) = (self.kc.ptr + il as u64 * kv_layer + k_base, self.vc.ptr + il as u64 * v_layer + v_base);
            let rope = &m.rope[self.rope];
            let post = QkvPost { n, n_head: c.n_head, n_head_kv: c.n_head_kv, hd: c.head_dim, hdv: c.head_dim_v, rope_dim: c.rope_dim, rope: c.arch.rope, mscale: rope.mscale, eps: c.rms_eps };
            let bufs = QkvBufs {
                q, k, v,
                bq: ptr(&l.bq), bk: ptr(&l.bk), bv: ptr(&l.bv),
                q_norm: ptr(&l.q_norm), k_norm: ptr(&l.k_norm),
                k_cache: kc, v_cache: vc, at,
                freq: if local { rope.freq_local.ptr } else { rope.freq_global.ptr },
            };
            // one token: attention does qkv_post's work itself (one launch
            // less), except on the tensor-core kernel
            let fused = n == 1 && !flash && !one_rows;
            if !fused {
                ops::qkv_post(dev, s, &post, &bufs)?;
            }
            let window = if local { c.sliding_window.unwrap_or(0) } else { 0 };
            let shape = |rows: usize, splits: usize, mixed: bool| AttnShape { n: rows, n_head: c.n_head, n_head_kv: c.n_head_kv, hd: c.head_dim, hdv: c.head_dim_v, window, scale: c.attn_scale, splits, mixed, flash: false };
            // one token: attention also writes its output prepared for the
            // decode product of wo (no quantize_act)
            let wo_prepared = decode::Product::of(&l.wo, 1, false, false).is_ok_and(|p| decode::choose(dev.rt.info(), decode::Input::Prepared, &p).is_some());
            let prep = if n == 1 && wo_prepared && c.head_dim_v % 32 == 0 {
                Some(self.act.layout(c.n_head * c.head_dim_v, 1, self.att.ptr)?)
            } else {
                None
            };
            if p.n_dec > 0 {
                let a = AttnShape { flash, ..shape(p.n_dec, dec_splits, p.n_dec > 1 || one_rows) };
                ops::attention(dev, s, &a, q, kc, vc, self.att.ptr, self.part.ptr, self.counters.ptr, at, prep.as_ref(), fused.then_some((&post, &bufs)))?;
            }
            for &(r0, len) in p.runs {
                let (qo, ao) = ((r0 * c.q_dim() * 4) as u64, (r0 * c.n_head * c.head_dim_v * 4) as u64);
                // the keys the run's last query sees (of its first tile's window)
                let keys = p.pos[r0 + len - 1] as usize + 1;
                let keys = if window > 0 { keys.min(window + 64) } else { keys };
                let room = part_rows(c.n_head, self.splits, sms, true) / (len * c.n_head);
                let splits = ops::prefill_attention_splits(dev, &shape(len, 1, false), keys, room);
                ops::attention(dev, s, &shape(len, splits, false), q + qo, kc, vc, self.att.ptr + ao, self.part.ptr, self.counters.ptr, at.from_row(r0), None, None)?;
            }
            self.block_out(&l.wo, self.att.ptr, prep.as_ref(), &l.post_attn_norm, n)?;

            // ---- FFN: down(act(gate(x)) * up(x)) ----
            let norm = Some((l.ffn_norm.ptr, c.rms_eps));
            let gate = Proj { w: &l.w_gate, up: Some((&l.w_up, c.arch.ffn_act)), y: self.g.ptr, out: Out::Store };
            self.project(self.x.ptr, norm, n, &[gate])?;
            self.block_out(&l.w_down, self.g.ptr, None, &l.post_ffn_norm, n)?;
        }

        // ---- output ----
        let (xr, rows) = match &p.out {
            OutRows::None => return Ok(()),
            OutRows::Last => (self.x.ptr + ((n - 1) * dim * 4) as u64, 1),
            OutRows::All => (self.x.ptr, n),
            OutRows::Gather(g) => {
                // the rows that want logits, side by side
                let xm = DevMatrix { ty: crate::quant::GgmlType::F32, rows: n, cols: dim, ptr: self.x.ptr, packed: false, f16: 0 };
                ops::get_rows(dev, s, &xm, lay.gather, self.branch.ptr, g.len(), 1.0)?;
                (self.branch.ptr, g.len())
            }
        };
        if self.out_hidden {
            return ops::rmsnorm(dev, s, xr, m.output_norm.ptr, self.logits.ptr, rows, dim, c.rms_eps, false);
        }
        self.project(xr, Some((m.output_norm.ptr, c.rms_eps)), rows, &[Proj::new(&m.output, self.logits.ptr)])
    }

    /// Floats per output row: n_vocab logits, or n_embd hidden values.
    fn out_width(&self) -> usize {
        match self.out_hidden {
            true => self.m.cfg.n_embd,
            false => self.m.cfg.n_vocab,
        }
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
        // the tensor-core products where they win (decode::mmq_rows); else
        // matrices with resident f16 copies: several rows go to the vendor BLAS
        let info = dev.rt.info();
        let mmq = decode::mmq_wanted(info, n) && same_types && prods.iter().all(|p| decode::mmq_fits(info, p));
        let gemm = self.gemm.as_ref();
        let resident = !mmq && projs.iter().all(|p| ops::resident_gemm(dev, p.w, n, gemm) && p.up.map_or(true, |(u, _)| ops::resident_gemm(dev, u, n, gemm)));
        let plan = if resident { decode::Plan::Gemm } else { decode::plan_with(info, &prods, prepared, stores, same_types, mmq) };
        match plan {
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
            decode::Plan::Mmq => {
                let a = ops::quantize_act_mmq(dev, s, &self.act, x, cols, n, norm)?;
                for p in projs {
                    match p.up {
                        Some((u, act)) => {
                            ops::matmul_q(dev, s, p.w, &a, p.y, Out::Store)?;
                            ops::matmul_q(dev, s, u, &a, self.u.ptr, Out::Store)?;
                            ops::glu(dev, s, p.y, self.u.ptr, n * u.rows, act)?;
                        }
                        None => ops::matmul_q(dev, s, p.w, &a, p.y, p.out)?,
                    }
                }
                return Ok(());
            }
            decode::Plan::Gemm => {}
        }
        if let (true, Some(sc)) = (resident, gemm) {
            // x normalized and converted to f16 once for every product
            let x16 = ops::x_to_f16(dev, s, x, n, cols, norm, sc)?;
            for p in projs {
                match p.up {
                    Some((u, act)) => {
                        ops::gemm_resident(dev, s, p.w, x16, p.y, n, Out::Store)?;
                        ops::gemm_resident(dev, s, u, x16, self.u.ptr, n, Out::Store)?;
                        ops::glu(dev, s, p.y, self.u.ptr, n * u.rows, act)?;
                    }
                    None => ops::gemm_resident(dev, s, p.w, x16, p.y, n, p.out)?,
                }
            }
            return Ok(());
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
                Some((u, _)) if !resident && ops::matvec_fits(dev, p.w.ty, cols, n) && u.ty == p.w.ty => {
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
