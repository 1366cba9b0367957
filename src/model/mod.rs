//! A loaded model (config, weights in the mapping, tokenizer, thread pool)
//! and sessions over it (one KV cache each). Many sessions share one
//! `Arc<Model>`: the weights are never copied.

pub mod arch;
pub mod config;
mod forward;
pub mod ops;
pub mod reference;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use crate::backend::gpu::forward::{GpuModel, GpuSession};
use crate::backend::gpu::{self, GpuKind};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
pub use config::{Config, RopeScaling};
pub use forward::Logits;
use weights::Weights;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The first GPU of a compiled-in backend (CUDA, then HIP) if one is
    /// present, else the CPU.
    Auto,
    Cpu,
    Gpu(GpuKind, usize),
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    /// "auto", "cpu", "cuda", "cuda:N", "hip", "hip:N".
    fn from_str(s: &str) -> Result<Self> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => (n, i.parse().map_err(|_| Error::InvalidArgument(format!("bad device index in '{s}'")))?),
            None => (s, 0),
        };
        Ok(match name {
            "auto" => BackendChoice::Auto,
            "cpu" => BackendChoice::Cpu,
            "cuda" => BackendChoice::Gpu(GpuKind::Cuda, index),
            "hip" | "rocm" => BackendChoice::Gpu(GpuKind::Hip, index),
            _ => return Err(Error::InvalidArgument(format!("unknown backend '{s}' (auto, cpu, cuda[:N], hip[:N])"))),
        })
    }
}

/// Options for [`Model::load`].
pub struct LoadOptions<'a> {
    /// Worker threads for the CPU matmuls; 0 = all cores.
    pub n_threads: usize,
    /// Progress in [0, 1]; return false to cancel the load.
    pub progress: Option<&'a mut dyn FnMut(f32) -> bool>,
    pub backend: BackendChoice,
    /// GPU memory budget in bytes for weights, KV caches and scratch;
    /// 0 = the device's free memory less a reserve.
    pub gpu_mem_budget: usize,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions { n_threads: 0, progress: None, backend: BackendChoice::Auto, gpu_mem_budget: 0 }
    }
}

fn check_threads(n: usize) -> Result<()> {
    if n > MAX_THREADS {
        return Err(Error::InvalidArgument(format!("n_threads {n} is more than {MAX_THREADS} (0 = one per core)")));
    }
    Ok(())
}

fn report(opts: &mut LoadOptions, p: f32) -> Result<()> {
    match &mut opts.progress {
        Some(cb) => if cb(p) { Ok(()) } else { Err(Error::Cancelled) },
        None => Ok(()),
    }
}

/// The GPU [`BackendChoice::Auto`] takes, if any.
fn auto_gpu() -> Option<(GpuKind, usize)> {
    [GpuKind::Cuda, GpuKind::Hip].into_iter().find(|k| k.device_count().map_or(false, |n| n > 0)).map(|k| (k, 0))
}

pub struct Model {
    pub cfg: Config,
    pub file: GgufFile,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub(crate) pool: rayon::ThreadPool,
    pub n_threads: usize,
    /// The weights on a GPU, when the model runs there.
    pub gpu: Option<Arc<GpuModel>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("arch", &self.cfg.arch.name).field("n_layer", &self.cfg.n_layer).finish()
    }
}

/// The most CPU worker threads a model accepts (`LoadOptions::n_threads`):
/// more is a caller's mistake (a pool of 100,000 threads takes minutes to
/// start), refused with INVALID_ARGUMENT rather than spun up.
pub const MAX_THREADS: usize = 1024;
/// The largest context a session accepts (`Session::new`'s `n_ctx`).
pub const MAX_CTX: usize = 1 << 24;

impl Model {
    pub fn load(path: impl AsRef<Path>, mut opts: LoadOptions) -> Result<Arc<Model>> {
        check_threads(opts.n_threads)?;
        report(&mut opts, 0.0)?;
        let file = GgufFile::open(path)?;
        Model::from_gguf(file, opts)
    }

    /// Build a model from a GGUF file already parsed (in memory, in tests and
    /// fuzzing; [`Model::load`] maps one from a path). Progress starts at 0.1.
    pub fn from_gguf(file: GgufFile, mut opts: LoadOptions) -> Result<Arc<Model>> {
        check_threads(opts.n_threads)?;
        report(&mut opts, 0.1)?;
        let cfg = Config::from_gguf(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        if tokenizer.n_vocab() != cfg.n_vocab {
            return Err(Error::Unsupported(format!(
                "tokenizer has {} tokens but token_embd.weight has {} rows",
                tokenizer.n_vocab(),
                cfg.n_vocab
            )));
        }
        report(&mut opts, 0.4)?;
        let weights = Weights::load(&file, &cfg)?;
        report(&mut opts, 0.9)?;
        let n_threads = if opts.n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.n_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .thread_name(|i| format!("rocmforge-cpu-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {n_threads} worker threads: {e}")))?;
        let target = match opts.backend {
            BackendChoice::Auto => auto_gpu(),
            BackendChoice::Cpu => None,
            BackendChoice::Gpu(kind, index) => Some((kind, index)),
        };
        let gpu = match target {
            Some((kind, index)) => {
                let dev = gpu::device(kind, index)?;
                Some(GpuModel::upload(dev, &cfg, &weights, &file, opts.gpu_mem_budget)?)
            }
            None => None,
        };
        report(&mut opts, 1.0)?;
        Ok(Arc::new(Model { cfg, file, weights, tokenizer, pool, n_threads, gpu }))
    }

    /// "cpu" or the GPU device, e.g. "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn backend_description(&self) -> String {
        match &self.gpu {
            Some(g) => g.dev.describe(),
            None => format!("cpu ({} threads)", self.n_threads),
        }
    }

    /// The context size a session gets when asked for 0: min(n_ctx_train, 4096).
    pub fn default_n_ctx(&self) -> usize {
        self.cfg.n_ctx_train.min(4096)
    }
}

/// One sequence over a shared model: its KV cache and position.
pub struct Session {
    pub model: Arc<Model>,
    n_ctx: usize,
    pos: usize,
    /// (n_layer, n_ctx, n_head_kv * head_dim)
    k_cache: Vec<f32>,
    /// (n_layer, n_ctx, n_head_kv * head_dim_v)
    v_cache: Vec<f32>,
    /// The device-side state when the model runs on a GPU (the CPU caches
    /// above are then empty).
    gpu: Option<GpuSession>,
}

impl Session {
    /// A new, empty session; `n_ctx` 0 means [`Model::default_n_ctx`]. The
    /// KV cache for all `n_ctx` positions is allocated here, once.
    pub fn new(model: Arc<Model>, n_ctx: usize) -> Result<Session> {
        let n_ctx = if n_ctx == 0 { model.default_n_ctx() } else { n_ctx };
        if n_ctx > MAX_CTX {
            return Err(Error::InvalidArgument(format!("n_ctx {n_ctx} is more than {MAX_CTX}")));
        }
        if let Some(g) = &model.gpu {
            let gpu = GpuSession::new(g.clone(), n_ctx)?;
            return Ok(Session { model, n_ctx, pos: 0, k_cache: Vec::new(), v_cache: Vec::new(), gpu: Some(gpu) });
        }
        let c = &model.cfg;
        let k = c.n_layer.checked_mul(n_ctx).and_then(|v| v.checked_mul(c.kv_dim()));
        let v = c.n_layer.checked_mul(n_ctx).and_then(|v| v.checked_mul(c.v_dim()));
        let (Some(k), Some(v)) = (k, v) else {
            return Err(Error::InvalidArgument(format!("n_ctx {n_ctx} makes the KV cache size overflow")));
        };
        let oom = || Error::OutOfMemory(format!("KV cache for n_ctx {n_ctx}: {} MiB", (k + v) * 4 >> 20));
        let k_cache = try_zeroed(k).ok_or_else(oom)?;
        let v_cache = try_zeroed(v).ok_or_else(oom)?;
        Ok(Session { model, n_ctx, pos: 0, k_cache, v_cache, gpu: None })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Number of positions in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Keep the first `n_keep` positions (0 clears everything).
    pub fn kv_keep(&mut self, n_keep: usize) -> Result<()> {
        if n_keep > self.pos {
            return Err(Error::InvalidArgument(format!("n_keep {n_keep} is past the current position {}", self.pos)));
        }
        self.pos = n_keep;
        Ok(())
    }

    /// Append `tokens` at the current position and return the requested
    /// logits (`Logits::Last`: n_vocab floats; `All`: one row per token).
    /// Nothing is appended on error.
    pub fn eval(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>> {
        self.check_eval(tokens)?;
        if self.gpu.is_none() {
            // the CPU pass makes its own vector: return it as it is
            return self.forward_cpu(tokens, want);
        }
        let mut out = vec![0.0; self.logits_len(tokens.len(), want)];
        self.eval_gpu(tokens, want, &mut out)?;
        Ok(out)
    }

    /// Floats of logits an evaluation of `n_tokens` returns: n_vocab for
    /// `Last`, n_tokens × n_vocab for `All`, 0 for `None`.
    pub fn logits_len(&self, n_tokens: usize, want: Logits) -> usize {
        let nv = self.model.cfg.n_vocab;
        match want {
            Logits::None => 0,
            Logits::Last => nv,
            Logits::All => n_tokens * nv,
        }
    }

    /// As [`Session::eval`], writing the logits into `out` (exactly
    /// [`Session::logits_len`] floats) instead of a new vector: a GPU
    /// decode loop then allocates nothing per token.
    pub fn eval_into(&mut self, tokens: &[u32], want: Logits, out: &mut [f32]) -> Result<()> {
        self.check_eval(tokens)?;
        let need = self.logits_len(tokens.len(), want);
        if out.len() != need {
            return Err(Error::InvalidArgument(format!("the logits buffer holds {} floats; {want:?} logits of {} tokens are {need}", out.len(), tokens.len())));
        }
        if self.gpu.is_some() {
            return self.eval_gpu(tokens, want, out);
        }
        out.copy_from_slice(&self.forward_cpu(tokens, want)?);
        Ok(())
    }

    /// The checks every evaluation makes before anything runs.
    fn check_eval(&self, tokens: &[u32]) -> Result<()> {
        let c = &self.model.cfg;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to evaluate".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocab (n_vocab {})", c.n_vocab)));
        }
        if self.pos + tokens.len() > self.n_ctx {
            return Err(Error::ContextFull(format!(
                "{} tokens at position {} do not fit the context of {} (call forge_kv_reset or load with a larger n_ctx)",
                tokens.len(),
                self.pos,
                self.n_ctx
            )));
        }
        Ok(())
    }

    /// The GPU pass (checked tokens, `out` of the right length).
    fn eval_gpu(&mut self, tokens: &[u32], want: Logits, out: &mut [f32]) -> Result<()> {
        let g = self.gpu.as_mut().expect("eval_gpu without a GPU session");
        g.eval_into(tokens, self.pos, want, out)?;
        self.pos += tokens.len();
        Ok(())
    }

    /// The CPU pass (checked tokens).
    fn forward_cpu(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>> {
        // Run the whole pass on the pool: the matmuls' parallel loops then start
        // from a worker thread (which joins in) instead of waking the pool from
        // outside once per matmul.
        let model = self.model.clone();
        let v = model.pool.install(|| forward::forward(self, tokens, want))?;
        self.pos += tokens.len();
        Ok(v)
    }
}

/// `n` zeroed floats, or None when the allocation fails. Zeroed memory comes
/// from the allocator (calloc: fresh pages are zero already), so a large KV
/// cache costs no time or resident memory until positions are written, and
/// a size the system cannot give is an error instead of an abort.
fn try_zeroed(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).ok()?;
    // SAFETY: layout has a non-zero size; a non-NULL result is `n` zeroed
    // f32s (0x0 is 0.0) allocated by the global allocator with f32's
    // alignment, which is what Vec::from_raw_parts requires.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut f32;
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}
