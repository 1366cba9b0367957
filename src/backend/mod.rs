//! Compute backends behind one narrow interface.
//!
//! - [`Backend`]: where a loaded model's weights live and how an engine's
//!   steps run there; one per [`crate::model::Model`]. The CPU
//!   ([`cpu::CpuBackend`]) is always compiled in; a model on a GPU
//!   ([`gpu::forward::GpuBackend`]) is one when a GPU feature is.
//! - [`Exec`]: one engine's state on its backend (the KV memory of its
//!   block pool, or per-sequence device sessions) and the forward pass of a
//!   checked batch of rows.
//!
//! The layers: `model/` describes a model (config, architecture tables,
//! weights in the mapping, the f32 reference pass) and reaches a GPU only
//! through [`Backend`] ([`open_gpu`]); the GPU backend depends on `model/`,
//! never the reverse. The CPU backend's math still sits partly in
//! `model/ops.rs` (attention, norms, shared with the reference pass) and
//! its packed weights in `model::weights`. [`crate::engine`] drives an
//! [`Exec`] over its KV block pool.
//!
//! Each GPU vendor is a module with one API; when its feature is off, a
//! stub module with the same API answers `Error::NotCompiled`, so calling
//! code needs no `#[cfg]` of its own (the candle pattern).

use std::sync::Arc;

use crate::engine::SeqId;
use crate::error::Result;
use crate::kv::{BlockCopy, SeqKv};
use crate::model::{Config, Model};
use crate::gguf::GgufFile;
use crate::model::weights::Weights;

pub mod cpu;
pub mod gpu;

#[cfg(feature = "cuda")]
#[path = "cuda/mod.rs"]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;

#[cfg(feature = "rocm")]
#[path = "hip/mod.rs"]
pub mod hip;
#[cfg(not(feature = "rocm"))]
#[path = "hip_stub.rs"]
pub mod hip;

pub use gpu::GpuKind;

/// Which logits an evaluation returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// The last position's: n_vocab floats.
    Last,
    /// Every position's: n_tokens × n_vocab floats.
    All,
}

/// What a step returns for each row that wants logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Every logit: n_vocab floats per row.
    #[default]
    Logits,
    /// The k largest logits with their token ids (largest first; ties: the
    /// lower id first), and the row's log-sum-exp: what a sampler needs,
    /// and all a GPU copies back (k ≤ [`TOP_MAX`]).
    Top(usize),
    /// The final hidden state (after the output norm, before the LM head):
    /// n_embd floats per row, for embeddings.
    Hidden,
}

/// Most candidates [`Output::Top`] returns per row.
pub const TOP_MAX: usize = 256;

/// The candidates of a step's rows that wanted logits, in row order:
/// `k` ids and logits per row, and each row's log-sum-exp (log-probability
/// of a candidate = its logit − lse).
#[derive(Debug, Clone, Default)]
pub struct TopRows {
    pub k: usize,
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub lse: Vec<f32>,
}

impl TopRows {
    pub fn new(k: usize) -> TopRows {
        TopRows { k, ..Default::default() }
    }

    pub fn clear(&mut self) {
        self.ids.clear();
        self.logits.clear();
        self.lse.clear();
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.lse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lse.is_empty()
    }

    /// Row `i`: its ids, logits and log-sum-exp.
    pub fn row(&self, i: usize) -> (&[u32], &[f32], f32) {
        let k = self.k;
        (&self.ids[i * k..(i + 1) * k], &self.logits[i * k..(i + 1) * k], self.lse[i])
    }

    /// Append the top `k` of one row of logits, selected on the host: the
    /// CPU backend's path, and the reference of the GPU's `topk_rows`
    /// (kernels/sample.cu). A NaN is never a candidate unless the row has
    /// fewer than k other values; its lse is then NaN.
    pub fn push_row(&mut self, row: &[f32]) {
        let k = self.k.min(row.len());
        // the k best so far, kept sorted: a value enters only if strictly
        // larger than the smallest kept (an earlier equal one wins the tie)
        let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
        for (i, &v) in row.iter().enumerate() {
            if best.len() == k && !(v > best[k - 1].0) {
                continue;
            }
            let at = best.partition_point(|&(b, _)| b >= v);
            best.insert(at, (v, i as u32));
            best.truncate(k);
        }
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
        self.ids.extend(best.iter().map(|b| b.1));
        self.logits.extend(best.iter().map(|b| b.0));
        // rows shorter than k (never: k ≤ n_vocab) would misalign: pad
        for _ in best.len()..self.k {
            self.ids.push(u32::MAX);
            self.logits.push(f32::NEG_INFINITY);
        }
        self.lse.push(m + sum.ln() as f32);
    }
}

/// K/V rows copied out of (or into) a backend's cache, to move positions
/// (a context shift: [`crate::engine::Engine::shift`]): per layer, the rows
/// of the slots asked for, one after the other, `kv_dim` (K) or `v_dim` (V)
/// f16 values each (as bits), heads back to back. The same on every
/// backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvHost {
    pub k: Vec<Vec<u16>>,
    pub v: Vec<Vec<u16>>,
}

impl KvHost {
    /// InvalidArgument unless these are `n` slots' K/V for every layer of
    /// a model of `c`.
    pub fn check(&self, n: usize, c: &crate::model::Config) -> Result<()> {
        let ok = self.k.len() == c.n_layer
            && self.v.len() == c.n_layer
            && self.k.iter().all(|l| l.len() == n * c.kv_dim())
            && self.v.iter().all(|l| l.len() == n * c.v_dim());
        match ok {
            true => Ok(()),
            false => Err(crate::error::Error::InvalidArgument(format!("K/V rows for {n} positions do not match the model's {} layers", c.n_layer))),
        }
    }
}

/// One row of a step as a backend sees it, checked by the engine: the
/// sequence's blocks for this position are reserved in `kv`.
#[derive(Clone, Copy)]
pub struct StepRow<'a> {
    pub seq: SeqId,
    pub token: u32,
    pub pos: usize,
    /// The sequence's block table.
    pub kv: &'a SeqKv,
    /// This row's logits are wanted.
    pub logits: bool,
}

/// Where a loaded model's weights live and how its steps run.
pub trait Backend: Send + Sync {
    /// "cpu (2 threads)", or the device: "cuda:0 NVIDIA H200 (sm_90)".
    fn describe(&self) -> String;
    /// The state of one engine on this backend: KV memory for `n_blocks`
    /// blocks of the engine's pool, sequences of at most `n_ctx` positions.
    fn new_exec(&self, model: &Arc<Model>, n_ctx: usize, n_blocks: usize) -> Result<Box<dyn Exec>>;
    /// For a decode roofline (`examples/bench`): the bytes one decode step
    /// reads at least and the device's copy bandwidth in bytes/s; `None`
    /// on the CPU.
    fn roofline(&self) -> Option<(usize, f64)> {
        None
    }
    /// Whether this is a GPU.
    fn is_gpu(&self) -> bool;
}

/// One engine's state on its backend. The engine checks every row and
/// reserves the blocks first; a backend only computes.
pub trait Exec: Send {
    /// Run `rows` (any sequences; each sequence's rows in position order),
    /// writing their K/V, and append to `logits` the `n_vocab` logits of
    /// each row that wants them, in row order.
    fn forward(&mut self, rows: &[StepRow], logits: &mut Vec<f32>) -> Result<()>;
    /// [`Exec::forward`], appending each wanted row's final hidden state
    /// ([`Output::Hidden`], n_embd floats) in place of its logits.
    fn forward_hidden(&mut self, _rows: &[StepRow], _hidden: &mut Vec<f32>) -> Result<()> {
        Err(crate::error::Error::Unsupported("hidden states (embeddings) on this backend".into()))
    }
    /// [`Exec::forward`], appending to `out` only the top `out.k` of each
    /// row that wants logits ([`Output::Top`]). By default the full rows,
    /// selected on the host; a GPU selects on the device and copies back
    /// only the candidates.
    fn forward_top(&mut self, rows: &[StepRow], out: &mut TopRows) -> Result<()> {
        let mut logits = Vec::new();
        self.forward(rows, &mut logits)?;
        let wanted = rows.iter().filter(|r| r.logits).count();
        if wanted > 0 {
            let nv = logits.len() / wanted;
            for row in logits.chunks_exact(nv) {
                out.push_row(row);
            }
        }
        Ok(())
    }
    /// One sequence's `tokens` from `pos0`, with the logits `want` asks for
    /// written straight into `out` (sized by the caller): the
    /// single-sequence path, which copies nothing on the GPU.
    fn forward_seq(&mut self, seq: SeqId, kv: &SeqKv, tokens: &[u32], pos0: usize, want: Logits, out: &mut [f32]) -> Result<()>;
    /// Make the copy-on-write copies the block pool asked for.
    fn copy_blocks(&mut self, _copies: &[BlockCopy]) {}
    /// The K/V rows at cache `slots`, every layer.
    fn read_kv(&mut self, slots: &[usize]) -> Result<KvHost>;
    /// Write `rows` (as [`Exec::read_kv`] gives them) at cache `slots`.
    fn write_kv(&mut self, slots: &[usize], rows: &KvHost) -> Result<()>;
    /// A new, empty sequence.
    fn add_seq(&mut self, _seq: SeqId) -> Result<()> {
        Ok(())
    }
    fn remove_seq(&mut self, _seq: SeqId) {}
    /// `dst` starts as a copy of `src`, which holds `tokens`. Called before
    /// the pool shares anything, so an error leaves the engine as it was.
    fn fork_seq(&mut self, _src: SeqId, _dst: SeqId, _tokens: &[u32]) -> Result<()> {
        Ok(())
    }
    /// Whether sequences read each other's KV blocks (forks sharing full
    /// blocks, the prefix cache); if not, the engine reuses no prefix.
    fn shares_blocks(&self) -> bool {
        true
    }
}

/// The CPU backend for a model loaded from `file`: packs the weights the
/// AVX-512 VNNI kernels read in tiles (`FORGE_NO_PACK=1` leaves them as
/// they are); the model's thread `pool` runs the matmuls.
pub fn open_cpu(pool: &rayon::ThreadPool, n_threads: usize, file: &GgufFile, weights: &mut Weights) -> Result<Arc<dyn Backend>> {
    if cpu::packed::wanted() {
        cpu::packed::pack_model(pool, file, weights)?;
    }
    Ok(Arc::new(cpu::CpuBackend { n_threads }))
}

/// Upload a model to GPU `index` of `kind` (opening the device and its
/// kernels the first time), within `budget` bytes (0: the free memory less
/// a reserve).
pub fn open_gpu(kind: GpuKind, index: usize, cfg: &Config, weights: &Weights, file: &GgufFile, budget: usize) -> Result<Arc<dyn Backend>> {
    let dev = gpu::device(kind, index)?;
    Ok(Arc::new(gpu::forward::GpuBackend(gpu::forward::GpuModel::upload(dev, cfg, weights, file, budget)?)))
}
