//! A model: its config and architecture tables, its weights in the
//! mapping, the tokenizer, the f32 reference pass, and the loaded [`Model`]
//! with its [`Backend`]. Many engines and sessions
//! ([`crate::engine::Session`]) share one `Arc<Model>`: the weights are
//! never copied. This layer reaches a GPU only through the backend
//! interface ([`crate::backend`]); the CPU's math (`ops`) and packed
//! weights still live here beside the reference pass.

pub mod arch;
pub mod config;
pub mod encoder;
pub mod ops;
pub mod reference;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use crate::backend::{self, Backend, GpuKind};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
pub use config::{Config, RopeScaling};
pub use encoder::Pooling;
/// Where these lived before the backend interface (code written against
/// `rocmforge::model::{Logits, Session}` keeps compiling); the crate root
/// re-exports both.
pub use crate::backend::Logits;
pub use crate::engine::Session;

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
    /// Where the model runs: the CPU (weights read from the mapping) or a
    /// GPU holding its own copy.
    pub backend: Arc<dyn Backend>,
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
        // an encoder runs on the CPU whatever was asked (model::encoder)
        let target = match opts.backend {
            _ if cfg.arch.encoder => None,
            BackendChoice::Auto => auto_gpu(),
            BackendChoice::Cpu => None,
            BackendChoice::Gpu(kind, index) => Some((kind, index)),
        };
        let backend = match target {
            Some((kind, index)) => backend::open_gpu(kind, index, &cfg, &weights, &file, opts.gpu_mem_budget)?,
            None => backend::open_cpu(&pool, n_threads, &file, &mut weights)?,
        };
        report(&mut opts, 1.0)?;
        Ok(Arc::new(Model { cfg, file, weights, tokenizer, pool, n_threads, backend }))
    }

    /// "cpu" or the GPU device, e.g. "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn backend_description(&self) -> String {
        self.backend.describe()
    }

    /// The context size a session gets when asked for 0: min(n_ctx_train, 4096).
    pub fn default_n_ctx(&self) -> usize {
        self.cfg.n_ctx_train.min(4096)
    }

    /// A bidirectional encoder for embeddings (`nomic-bert`): no next-token
    /// logits, so engines and sessions refuse it; [`Model::embed`] works.
    pub fn is_encoder(&self) -> bool {
        self.cfg.arch.encoder
    }

    /// The pooling the model asks for (`{arch}.pooling_type`), else mean.
    pub fn default_pooling(&self) -> Pooling {
        self.cfg.pooling_type.and_then(|p| Pooling::from_llama(p as i64)).unwrap_or(Pooling::Mean)
    }

    /// The most tokens one [`Model::embed`] input may have: an encoder's
    /// `context_length`; a decoder's [`MAX_CTX`] (bounded in practice by
    /// memory).
    pub fn max_embed_tokens(&self) -> usize {
        if self.is_encoder() { self.cfg.n_ctx_train } else { MAX_CTX }
    }

    /// The embedding of one input of token ids (add the tokenizer's
    /// special tokens first: [`Tokenizer::encode`] with `add_special`):
    /// its final hidden states, pooled (`None`: the model's
    /// [`Model::default_pooling`]) and, if `normalize`, scaled to unit L2
    /// length. `n_embd` floats, or `tokens.len() × n_embd` with
    /// [`Pooling::None`].
    ///
    /// An encoder (`nomic-bert`) runs its encoder pass (bidirectional,
    /// [`encoder::encode`], on the CPU); a decoder runs the input through
    /// a fresh engine of its own and takes the hidden states after the
    /// output norm ([`crate::backend::Output::Hidden`], which only the CPU
    /// backend computes so far). Errors: no tokens, a token outside the
    /// vocab, an encoder input longer than its context (INVALID_ARGUMENT).
    pub fn embed(self: &Arc<Self>, tokens: &[u32], pooling: Option<Pooling>, normalize: bool) -> Result<Vec<f32>> {
        let pooling = pooling.unwrap_or_else(|| self.default_pooling());
        let hidden = if self.is_encoder() {
            encoder::encode(self, tokens)?
        } else {
            self.decoder_hidden(tokens, pooling)?
        };
        Ok(encoder::pool(&hidden, self.cfg.n_embd, pooling, normalize))
    }

    /// A decoder's final hidden states for `tokens` (only the rows the
    /// pooling reads: the first for CLS, the last for last).
    fn decoder_hidden(self: &Arc<Self>, tokens: &[u32], pooling: Pooling) -> Result<Vec<f32>> {
        use crate::backend::Output;
        use crate::engine::{BatchRow, Engine, EngineOptions};
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to embed".into()));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.n_vocab) {
            return Err(Error::InvalidArgument(format!("token {t} is outside the vocab ({})", self.cfg.n_vocab)));
        }
        let n = tokens.len();
        let mut e = Engine::new(self.clone(), EngineOptions { n_ctx: n, kv_budget: 0, preempt: false })?;
        e.set_output(Output::Hidden)?;
        let seq = e.add_seq()?;
        let wanted = |i: usize| match pooling {
            Pooling::None | Pooling::Mean => true,
            Pooling::Cls => i == 0,
            Pooling::Last => i == n - 1,
        };
        let rows: Vec<BatchRow> = tokens.iter().enumerate().map(|(pos, &token)| BatchRow { seq, token, pos, logits: wanted(pos) }).collect();
        e.decode(&rows)?;
        let d = self.cfg.n_embd;
        let mut out = vec![0f32; n * d];
        for i in (0..n).filter(|&i| wanted(i)) {
            let h = e.hidden(i).ok_or_else(|| Error::Unsupported(format!("no hidden state for row {i}")))?;
            out[i * d..(i + 1) * d].copy_from_slice(h);
        }
        // CLS and last read only their row; mean and none every row
        Ok(match pooling {
            Pooling::Cls => out[..d].to_vec(),
            Pooling::Last => out[(n - 1) * d..].to_vec(),
            _ => out,
        })
    }
}
