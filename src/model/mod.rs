//! A loaded model (config, weights in the mapping, tokenizer, thread pool)
//! and sessions over it (one KV cache each). Many sessions share one
//! `Arc<Model>`: the weights are never copied.

pub mod arch;
pub mod config;
pub mod ops;
pub mod reference;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use crate::backend::gpu::forward::GpuModel;
use crate::backend::gpu::{self, GpuKind};
use crate::engine::{Engine, EngineOptions, SeqId};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
pub use config::{Config, RopeScaling};

/// Which logits an evaluation returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// The last position's: n_vocab floats.
    Last,
    /// Every position's: n_tokens × n_vocab floats.
    All,
}
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
        let mut weights = Weights::load(&file, &cfg)?;
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
        if gpu.is_none() && crate::backend::cpu::packed::wanted() {
            crate::backend::cpu::packed::pack_model(&pool, &file, &mut weights)?;
        }
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

/// One sequence over a shared model: an [`Engine`] with one sequence, whose
/// KV pool holds exactly `n_ctx` positions (and a block for copy-on-write).
pub struct Session {
    pub model: Arc<Model>,
    engine: Engine,
    seq: SeqId,
}

impl Session {
    /// A new, empty session; `n_ctx` 0 means [`Model::default_n_ctx`]. The
    /// KV cache for all `n_ctx` positions is allocated here, once.
    pub fn new(model: Arc<Model>, n_ctx: usize) -> Result<Session> {
        let n_ctx = if n_ctx == 0 { model.default_n_ctx() } else { n_ctx };
        if n_ctx > MAX_CTX {
            return Err(Error::InvalidArgument(format!("n_ctx {n_ctx} is more than {MAX_CTX}")));
        }
        // one sequence: a budget of 1 byte asks for the minimum pool
        let mut engine = Engine::new(model.clone(), EngineOptions { n_ctx, kv_budget: 1 })?;
        let seq = engine.add_seq()?;
        Ok(Session { model, engine, seq })
    }

    pub fn n_ctx(&self) -> usize {
        self.engine.n_ctx()
    }

    /// Number of positions in the cache.
    pub fn pos(&self) -> usize {
        self.engine.seq_len(self.seq).expect("the session's sequence")
    }

    /// Keep the first `n_keep` positions (0 clears everything).
    pub fn kv_keep(&mut self, n_keep: usize) -> Result<()> {
        let pos = self.pos();
        if n_keep > pos {
            return Err(Error::InvalidArgument(format!("n_keep {n_keep} is past the current position {pos}")));
        }
        self.engine.keep(self.seq, n_keep)
    }

    /// Append `tokens` at the current position and return the requested
    /// logits (`Logits::Last`: n_vocab floats; `All`: one row per token).
    /// Nothing is appended on error.
    pub fn eval(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.logits_len(tokens.len(), want)];
        self.eval_into(tokens, want, &mut out)?;
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
        let c = &self.model.cfg;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to evaluate".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocab (n_vocab {})", c.n_vocab)));
        }
        let need = self.logits_len(tokens.len(), want);
        if out.len() != need {
            return Err(Error::InvalidArgument(format!("the logits buffer holds {} floats; {want:?} logits of {} tokens are {need}", out.len(), tokens.len())));
        }
        let pos0 = self.pos();
        if pos0 + tokens.len() > self.n_ctx() {
            return Err(Error::ContextFull(format!(
                "{} tokens at position {pos0} do not fit the context of {} (call forge_kv_reset or load with a larger n_ctx)",
                tokens.len(),
                self.n_ctx()
            )));
        }
        self.engine.eval_seq_into(self.seq, tokens, want, out)
    }
}
