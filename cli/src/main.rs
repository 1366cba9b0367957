//! `rocmforge`: one command line for the library.
//!
//! `run` streams a completion, `chat` talks through the model's chat
//! template with the history kept in the KV cache, `serve` is
//! `rocmforge-server`, `bench` and `perplexity` are the examples of the same
//! names (their code, included from `examples/`), `tokenize` and `info`
//! look inside a model. Every library error becomes one line on stderr, a
//! hint where there is one, and a distinct exit code (see [`exit`]).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rocmforge::backend::GpuKind;
use rocmforge::engine::Session;
use rocmforge::generate::{generate, GenerateOptions, StopReason};
use rocmforge::gguf::{GgufFile, Value as Meta};
use rocmforge::model::config::Config;
use rocmforge::sampler::{Sampler, SamplerParams};
use rocmforge::tokenizer::Tokenizer;
use rocmforge::{BackendChoice, Error, LoadOptions, Model};
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../../examples/bench.rs"]
mod bench_example;
#[allow(dead_code)]
#[path = "../../examples/batched_bench.rs"]
mod batched_bench_example;
#[allow(dead_code)]
#[path = "../../examples/perplexity.rs"]
mod perplexity_example;

/// Exit codes: one per kind of failure, so scripts can tell them apart.
mod exit {
    /// Anything else (writing the output failed, an internal error).
    pub const FAILURE: u8 = 1;
    /// Bad arguments (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// The model file is missing or cannot be read.
    pub const NOT_FOUND: u8 = 3;
    /// The file is not a valid GGUF model (corrupt, contradictory metadata).
    pub const INVALID_MODEL: u8 = 4;
    /// The architecture or a tensor type is not supported.
    pub const UNSUPPORTED: u8 = 5;
    /// The backend asked for is not compiled in or has no device.
    pub const BACKEND: u8 = 6;
    /// Memory (host or GPU) ran out.
    pub const OUT_OF_MEMORY: u8 = 7;
    /// The context (or the KV cache) is full.
    pub const CONTEXT_FULL: u8 = 8;
}

const EXIT_CODES: &str = "Exit codes: 0 success, 1 other failure, 2 bad arguments, 3 model file not found or unreadable, \
4 invalid or corrupt model, 5 unsupported architecture or tensor type, 6 backend not available, 7 out of memory, 8 context full.";

#[derive(Parser)]
#[command(name = "rocmforge", version, about = "LLM inference for GGUF models on AMD, NVIDIA and CPU", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where and how a model runs (every command that loads one).
#[derive(Args, Clone, Debug)]
struct Common {
    /// auto (the first GPU found, else the CPU), cpu, cuda or hip.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda", "hip"])]
    backend: String,
    /// GPU index for cuda / hip.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// CPU worker threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Context size in tokens (0: the model's, at most 4096).
    #[arg(long, short = 'c', default_value_t = 0)]
    ctx: usize,
}

/// Sampling, with llama.cpp's option names.
#[derive(Args, Clone, Debug)]
struct Sampling {
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    /// Penalty on recently used tokens (1.0: off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: a new one each run).
    #[arg(long)]
    seed: Option<u64>,
}

impl Sampling {
    fn params(&self) -> SamplerParams {
        let seed = self.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
        SamplerParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            seed,
            ..SamplerParams::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt, streamed to stdout (the prompt is read from stdin when not given).
    Run {
        /// The GGUF model file.
        model: PathBuf,
        prompt: Option<String>,
        /// Most tokens to generate.
        #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
        n_predict: usize,
        /// Send the prompt as one user turn through the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Add no BOS and parse no special-token text in the prompt.
        #[arg(long)]
        raw: bool,
        /// Stop at this text (repeatable; not printed).
        #[arg(long)]
        stop: Vec<String>,
        /// Print one JSON object (text, tokens, timings) instead of streaming.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sampling: Sampling,
    },
    /// Chat with the model through its chat template; the history stays in the KV cache.
    ///
    /// Type a message and press Enter. Commands: /reset (forget the conversation), /system TEXT
    /// (set the system prompt), /save FILE (write the conversation as JSON), /exit. Ctrl-C stops
    /// the current answer (the conversation goes on); Ctrl-D or /exit ends the chat.
    Chat {
        model: PathBuf,
        /// A system prompt to start with.
        #[arg(long)]
        system: Option<String>,
        /// Most tokens per answer.
        #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
        n_predict: usize,
        /// A Jinja chat template to use instead of the model's.
        #[arg(long = "chat-template-file")]
        chat_template_file: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sampling: Sampling,
    },
    /// Serve the OpenAI-compatible API (the same server as rocmforge-server).
    Serve {
        model: PathBuf,
        #[command(flatten)]
        args: rocmforge_server::ServeArgs,
    },
    /// Measure throughput, with examples/bench's table (prompt processing and generation per model and
    /// backend, as llama-bench), or with --batched examples/batched_bench's (many sequences per step,
    /// llama-batched-bench's columns).
    Bench {
        /// Models (default: the three test models under models/).
        models: Vec<PathBuf>,
        /// Many sequences per step instead of one.
        #[arg(long)]
        batched: bool,
        /// Backends, comma-separated (cpu, cuda, hip); --batched takes one.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// CPU threads.
        #[arg(long, short = 't', default_value_t = 2)]
        threads: usize,
        /// Prompt tokens (per sequence with --batched).
        #[arg(long, default_value_t = 128)]
        pp: usize,
        /// Generated tokens (per sequence with --batched).
        #[arg(long, default_value_t = 64)]
        tg: usize,
        /// Tokens already in the context when generation is timed (not with --batched).
        #[arg(long, default_value_t = 0)]
        depth: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Batch sizes, comma-separated (with --batched).
        #[arg(long, default_value = "1,4,8")]
        npl: String,
        /// Each decode step's time on stderr (with --batched).
        #[arg(long)]
        detail: bool,
        /// Pick tokens from every logit on the host instead of the engine's top-1 (with --batched).
        #[arg(long = "full-logits")]
        full_logits: bool,
    },
    /// Perplexity of models over a text, computed as llama.cpp's llama-perplexity does.
    Perplexity {
        /// Models (default: the three test models under models/).
        models: Vec<PathBuf>,
        /// Window size in tokens.
        #[arg(short = 'c', long = "ctx", default_value_t = 256)]
        ctx: usize,
        /// The text (default: tests/fixtures/text/english.txt).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Score every position after the first (not only the second half of each window).
        #[arg(long)]
        all: bool,
    },
    /// Tokenize text (the argument, or stdin) and print the token ids.
    Tokenize {
        model: PathBuf,
        text: Option<String>,
        /// Add no BOS/EOS.
        #[arg(long = "no-special")]
        no_special: bool,
        /// Turn special-token text (e.g. <|im_start|>) into its token.
        #[arg(long = "parse-special")]
        parse_special: bool,
        /// Print ids and pieces as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Describe a model: architecture, parameters, tensor types, context, chat template,
    /// special tokens, the memory it needs, and the backends and devices present.
    Info {
        model: PathBuf,
        /// Context size for the memory estimate (0: the model's, at most 4096).
        #[arg(long, short = 'c', default_value_t = 0)]
        ctx: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// A failure: the message, a hint, and the exit code.
struct Fail {
    code: u8,
    msg: String,
    hint: Option<&'static str>,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let (code, hint) = match &e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                (exit::NOT_FOUND, Some("check the path (`make models` fetches the three test models into models/)"))
            }
            Error::Io { .. } => (exit::NOT_FOUND, Some("check that the file is readable")),
            Error::Gguf(_) | Error::InvalidModel(_) | Error::Tokenizer(_) => (exit::INVALID_MODEL, Some("the file is damaged or not a GGUF model: download it again")),
            Error::Unsupported(m) if m.contains("embedding model") => {
                (exit::UNSUPPORTED, Some("serve it for embeddings: `rocmforge serve MODEL` answers POST /v1/embeddings"))
            }
            Error::Unsupported(_) | Error::UnsupportedType { .. } => (
                exit::UNSUPPORTED,
                Some("supported architectures: llama (Llama 2/3, Mistral), qwen2, qwen3, phi3, gemma3, and nomic-bert for embeddings (`rocmforge info MODEL` shows what the file holds)"),
            ),
            Error::NotCompiled { .. } => (exit::BACKEND, Some("or run on the CPU with --backend cpu")),
            Error::BackendUnavailable(_) => (exit::BACKEND, Some("run on the CPU with --backend cpu (`rocmforge info MODEL` lists the devices found)")),
            Error::OutOfMemory(_) => (exit::OUT_OF_MEMORY, Some("use a smaller --ctx, or the CPU")),
            Error::ContextFull(_) | Error::KvExhausted(_) => (exit::CONTEXT_FULL, Some("use a larger --ctx or a shorter prompt")),
            Error::InvalidArgument(_) => (exit::USAGE, None),
            Error::Cancelled => (exit::FAILURE, None),
        };
        Fail { code, msg: e.to_string(), hint }
    }
}

impl Fail {
    fn usage(msg: impl Into<String>) -> Fail {
        Fail { code: exit::USAGE, msg: msg.into(), hint: None }
    }
    fn other(msg: impl Into<String>) -> Fail {
        Fail { code: exit::FAILURE, msg: msg.into(), hint: None }
    }
}

fn main() -> ExitCode {
    // a closed pipe (`rocmforge run ... | head`) ends the program quietly,
    // as for other command-line tools, instead of a write error per token
    // SAFETY: restoring the default disposition of a signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("rocmforge: {}", f.msg);
            if let Some(h) = f.hint {
                eprintln!("  hint: {h}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<(), Fail> {
    match cmd {
        Cmd::Run { model, prompt, n_predict, chat, raw, stop, json, common, sampling } => run(&model, prompt, n_predict, chat, raw, stop, json, &common, &sampling),
        Cmd::Chat { model, system, n_predict, chat_template_file, common, sampling } => chat(&model, system, n_predict, chat_template_file.as_deref(), &common, &sampling),
        Cmd::Serve { model, args } => {
            // what the server would fail on while loading, with its exit code, first
            let common = Common { backend: args.backend.clone(), gpu: args.gpu, threads: args.threads, ctx: args.ctx_size };
            check_backend(&backend(&common)?)?;
            let f = GgufFile::open(&model)?;
            Config::from_gguf(&f)?;
            Tokenizer::from_gguf(&f)?;
            rocmforge_server::init_logging();
            rocmforge_server::serve_blocking(rocmforge_server::ServeOptions { model, args }).map_err(Fail::other)
        }
        Cmd::Bench { models, batched, backend, threads, pp, tg, depth, reps, npl, detail, full_logits } => {
            if pp == 0 || tg == 0 || reps == 0 {
                return Err(Fail::usage("--pp, --tg and --reps must be at least 1"));
            }
            let sizes: Vec<usize> = npl.split(',').map(|x| x.trim().parse::<usize>().ok().filter(|&n| n > 0)).collect::<Option<_>>().ok_or_else(|| Fail::usage(format!("--npl {npl:?}: batch sizes are positive integers, comma-separated")))?;
            if batched && backend.contains(',') {
                return Err(Fail::usage("bench --batched takes one backend"));
            }
            for b in backend.split(',') {
                let choice: BackendChoice = b.parse().map_err(|e: Error| Fail::usage(e.to_string()))?;
                check_backend(&choice)?;
            }
            let paths = model_paths(&models)?;
            let npl = sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
            let s = |x: &dyn ToString| x.to_string();
            if batched {
                if paths.is_empty() {
                    return Err(Fail::usage("bench --batched needs a model"));
                }
                for m in paths {
                    let mut a = vec![s(&"-m"), m, s(&"-npp"), s(&pp), s(&"-ntg"), s(&tg), s(&"-npl"), npl.clone(), s(&"-t"), s(&threads), s(&"--backend"), backend.clone(), s(&"--reps"), s(&reps)];
                    a.extend(detail.then(|| s(&"--detail")));
                    a.extend(full_logits.then(|| s(&"--full-logits")));
                    batched_bench_example::run(a);
                }
            } else {
                let mut a = vec![s(&"--threads"), s(&threads), s(&"--pp"), s(&pp), s(&"--tg"), s(&tg), s(&"--reps"), s(&reps), s(&"--depth"), s(&depth), s(&"--backend"), backend];
                a.extend(paths);
                bench_example::run(a);
            }
            Ok(())
        }
        Cmd::Perplexity { models, ctx, file, all } => {
            if ctx < 2 {
                return Err(Fail::usage("-c must be at least 2"));
            }
            let mut a = vec!["-c".to_string(), ctx.to_string()];
            if let Some(f) = file {
                std::fs::read_to_string(&f).map_err(|e| Fail { code: exit::NOT_FOUND, msg: format!("{}: {e}", f.display()), hint: Some("-f takes a UTF-8 text file") })?;
                a.extend(["-f".to_string(), f.display().to_string()]);
            }
            let models = model_paths(&models)?;
            if all {
                a.push("--all".into());
            }
            a.extend(models);
            perplexity_example::run(a);
            Ok(())
        }
        Cmd::Tokenize { model, text, no_special, parse_special, json } => tokenize(&model, text, !no_special, parse_special, json),
        Cmd::Info { model, ctx, json } => info(&model, ctx, json),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rocmforge", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn backend(c: &Common) -> Result<BackendChoice, Fail> {
    rocmforge_server::backend_choice(&c.backend, c.gpu).map_err(Fail::usage)
}

/// A GPU backend that is not compiled in or has no device is refused
/// before anything runs (exit code 6).
fn check_backend(choice: &BackendChoice) -> Result<(), Fail> {
    if let BackendChoice::Gpu(kind, index) = *choice {
        let n = kind.device_count()?;
        if index >= n {
            return Err(Error::BackendUnavailable(format!("{kind:?} device {index} asked for; {n} present")).into());
        }
    }
    Ok(())
}

/// The models given (each opened and checked, for its exit code), or the
/// three test models of the source tree.
fn model_paths(models: &[PathBuf]) -> Result<Vec<String>, Fail> {
    let models: Vec<PathBuf> = if models.is_empty() {
        let dir = [PathBuf::from("models"), PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))].into_iter().find(|d| d.is_dir()).unwrap_or_else(|| PathBuf::from("models"));
        ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"].iter().map(|m| dir.join(m)).collect()
    } else {
        models.to_vec()
    };
    for m in &models {
        let f = GgufFile::open(m)?;
        Config::from_gguf(&f)?;
    }
    Ok(models.iter().map(|m| m.display().to_string()).collect())
}

/// Load a model with a progress bar on stderr (when it is a terminal)
/// saying what is happening.
fn load(path: &Path, c: &Common) -> Result<Arc<Model>, Fail> {
    let choice = backend(c)?;
    let gpu = !matches!(choice, BackendChoice::Cpu);
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(100) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} {msg:58} [{bar:30}] {percent:>3}%").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut progress = |p: f32| {
        bar.set_position((p * 100.0) as u64);
        bar.set_message(match p {
            p if p < 0.1 => "opening the file",
            p if p < 0.4 => "reading the metadata and tokenizer",
            p if p < 0.9 => "mapping the weights",
            _ if gpu => "uploading weights, compiling GPU kernels (first run only)",
            _ => "preparing the CPU kernels",
        });
        true
    };
    let t0 = Instant::now();
    let model = Model::load(path, LoadOptions { n_threads: c.threads, progress: Some(&mut progress), backend: choice, gpu_mem_budget: 0 });
    bar.finish_and_clear();
    let model = model?;
    eprintln!("loaded {} ({}, {} layers) on {} in {:.1} s", path.display(), model.cfg.arch.name, model.cfg.n_layer, model.backend_description(), t0.elapsed().as_secs_f64());
    Ok(model)
}

fn read_stdin() -> Result<String, Fail> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| Fail::other(format!("reading stdin: {e}")))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// The template to chat with: the file given, the model's, or ChatML (the
/// server's choice, shared).
fn template(model: &Model, file: Option<&Path>) -> Result<rocmforge_server::ChatTemplate, Fail> {
    if model.file.chat_template().ok().flatten().is_none() && file.is_none() {
        eprintln!("the model has no chat template: using ChatML");
    }
    rocmforge_server::chat_template(model, file).map_err(|e| Fail { code: if file.is_some() { exit::USAGE } else { exit::FAILURE }, msg: e, hint: None })
}

fn stop_name(r: StopReason) -> &'static str {
    match r {
        StopReason::EndOfGeneration => "end of generation",
        StopReason::MaxTokens => "token limit",
        StopReason::StopString => "stop string",
        StopReason::Callback => "interrupted",
        StopReason::ContextFull => "context full",
    }
}

#[allow(clippy::too_many_arguments)]
fn run(path: &Path, prompt: Option<String>, n: usize, as_chat: bool, raw: bool, stop: Vec<String>, json: bool, c: &Common, s: &Sampling) -> Result<(), Fail> {
    let prompt = match prompt {
        Some(p) => p,
        None => read_stdin()?,
    };
    if prompt.is_empty() {
        return Err(Fail::usage("the prompt is empty (give it as an argument or on stdin)"));
    }
    let model = load(path, c)?;
    let ids = if as_chat {
        let t = template(&model, None)?;
        rocmforge_server::prompt_tokens(&model.tokenizer, &t, &json!([{"role": "user", "content": prompt}]), None, true).map_err(Fail::other)?
    } else {
        model.tokenizer.encode(&prompt, !raw, !raw)
    };
    let mut session = Session::new(model.clone(), c.ctx)?;
    let mut sampler = Sampler::new(s.params());
    let mut out = std::io::stdout().lock();
    if !json && !as_chat {
        let _ = write!(out, "{prompt}");
    }
    let t0 = Instant::now();
    let mut first = None;
    let g = generate(&mut session, &mut sampler, &ids, &GenerateOptions { max_tokens: n, stop }, |_, text| {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        if !json {
            let _ = write!(out, "{text}");
            let _ = out.flush();
        }
        true
    })?;
    let total = t0.elapsed().as_secs_f64();
    let pp = first.unwrap_or(total);
    let tps = g.tokens.len().saturating_sub(1) as f64 / (total - pp).max(1e-9);
    if json {
        let v = json!({"text": g.text, "tokens": g.tokens, "prompt_tokens": ids.len(), "stop": stop_name(g.reason), "prompt_ms": pp * 1e3, "tokens_per_second": tps});
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(out);
        eprintln!("[{} prompt tokens in {:.0} ms; {} generated at {:.1} tok/s; stop: {}]", ids.len(), pp * 1e3, g.tokens.len(), tps, stop_name(g.reason));
    }
    Ok(())
}

/// Set by SIGINT during `chat`: the answer in progress stops. A second
/// Ctrl-C before the answer has stopped ends the program, as usual.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: signal() and raise() are async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
        }
    }
}

fn chat(path: &Path, system: Option<String>, n: usize, template_file: Option<&Path>, c: &Common, s: &Sampling) -> Result<(), Fail> {
    let model = load(path, c)?;
    let tpl = template(&model, template_file)?;
    let mut session = Session::new(model.clone(), c.ctx)?;
    let mut sampler = Sampler::new(s.params());
    // Ctrl-C stops an answer, not the program (stdin reads retry after it)
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let system_msg = |t: &str| json!({"role": "system", "content": t});
    let mut messages: Vec<Value> = system.as_deref().map(system_msg).into_iter().collect();
    // what the session's KV cache holds, token by token
    let mut cached: Vec<u32> = Vec::new();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chat: /reset, /system TEXT, /save FILE, /exit; Ctrl-C stops an answer, Ctrl-D quits");
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut raw = Vec::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        raw.clear();
        match input.read_until(b'\n', &mut raw) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(Fail::other(format!("reading stdin: {e}"))),
        }
        // after a Ctrl-C at the prompt, the next answer starts afresh
        INTERRUPTED.store(false, Ordering::SeqCst);
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once(' ').map_or((line, ""), |(a, b)| (a, b.trim())) {
            ("/exit" | "/quit", _) => break,
            ("/reset", _) => {
                messages.retain(|m| m["role"] == "system");
                session.kv_keep(0)?;
                cached.clear();
                sampler = Sampler::new(s.params());
                eprintln!("(the conversation is cleared)");
                continue;
            }
            ("/system", text) => {
                messages.retain(|m| m["role"] != "system");
                if !text.is_empty() {
                    messages.insert(0, system_msg(text));
                }
                eprintln!("(system prompt {})", if text.is_empty() { "removed" } else { "set" });
                continue;
            }
            ("/save", file) if !file.is_empty() => {
                let doc = serde_json::to_string_pretty(&json!({"messages": messages})).unwrap_or_default();
                match std::fs::write(file, doc + "\n") {
                    Ok(()) => eprintln!("(saved {} messages to {file})", messages.len()),
                    Err(e) => eprintln!("(cannot save to {file}: {e})"),
                }
                continue;
            }
            (cmd, _) if cmd.starts_with('/') => {
                eprintln!("(unknown command {cmd}: /reset, /system TEXT, /save FILE, /exit)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        let ids = match rocmforge_server::prompt_tokens(&model.tokenizer, &tpl, &Value::Array(messages.clone()), None, true) {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!("(the chat template refused this: {e})");
                messages.pop();
                continue;
            }
        };
        if ids.is_empty() {
            eprintln!("(the chat template rendered nothing for this conversation)");
            messages.pop();
            continue;
        }
        // reuse what the cache holds of this prompt; feed the rest
        let common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        session.kv_keep(common)?;
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut out = std::io::stdout().lock();
        let t0 = Instant::now();
        let result = generate(&mut session, &mut sampler, &ids[common..], &GenerateOptions { max_tokens: n, stop: Vec::new() }, |_, text| {
            let _ = write!(out, "{text}");
            let _ = out.flush();
            !INTERRUPTED.load(Ordering::SeqCst)
        });
        let _ = writeln!(out);
        drop(out);
        match result {
            Ok(g) => {
                // every token but the last sampled one went through the model
                cached = ids.clone();
                cached.extend_from_slice(&g.tokens[..g.tokens.len().saturating_sub(1)]);
                if cached.len() != session.pos() {
                    session.kv_keep(0)?;
                    cached.clear();
                }
                match g.reason {
                    StopReason::Callback => eprintln!("(interrupted)"),
                    StopReason::ContextFull => eprintln!("(the context is full: /reset starts over)"),
                    _ => {}
                }
                let secs = t0.elapsed().as_secs_f64();
                if interactive {
                    eprintln!("[{} tokens, {:.1} tok/s]", g.tokens.len(), g.tokens.len() as f64 / secs.max(1e-9));
                }
                messages.push(json!({"role": "assistant", "content": g.text}));
            }
            Err(Error::ContextFull(m)) => {
                eprintln!("(the context is full: {m}; /reset starts over)");
                messages.pop();
                session.kv_keep(0)?;
                cached.clear();
            }
            // the conversation survives a failed answer (it can still be saved)
            Err(e) => {
                eprintln!("(this answer failed: {e})");
                messages.pop();
                session.kv_keep(0)?;
                cached.clear();
            }
        }
    }
    Ok(())
}

fn tokenize(path: &Path, text: Option<String>, add_special: bool, parse_special: bool, json: bool) -> Result<(), Fail> {
    let text = match text {
        Some(t) => t,
        None => read_stdin()?,
    };
    let f = GgufFile::open(path)?;
    let tok = Tokenizer::from_gguf(&f)?;
    let ids = tok.encode(&text, add_special, parse_special);
    if json {
        let pieces: Vec<String> = ids.iter().map(|&i| String::from_utf8_lossy(tok.token_to_piece(i, true).unwrap_or(&[])).into_owned()).collect();
        println!("{}", json!({"ids": ids, "pieces": pieces}));
    } else {
        println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

fn meta_json(v: &Meta) -> Option<Value> {
    Some(match v {
        Meta::U8(x) => json!(x),
        Meta::I8(x) => json!(x),
        Meta::U16(x) => json!(x),
        Meta::I16(x) => json!(x),
        Meta::U32(x) => json!(x),
        Meta::I32(x) => json!(x),
        Meta::U64(x) => json!(x),
        Meta::I64(x) => json!(x),
        Meta::F32(x) => json!(x),
        Meta::F64(x) => json!(x),
        Meta::Bool(x) => json!(x),
        Meta::String(s) => json!(s),
        Meta::Array(_) => return None,
    })
}

fn info(path: &Path, ctx: usize, as_json: bool) -> Result<(), Fail> {
    if ctx > rocmforge::model::MAX_CTX {
        return Err(Fail::usage(format!("--ctx {ctx} is more than {}", rocmforge::model::MAX_CTX)));
    }
    let f = GgufFile::open(path)?;
    let arch = f.architecture()?.to_string();
    let cfg = Config::from_gguf(&f);
    let tok = Tokenizer::from_gguf(&f);
    // tensor types: count, elements, bytes
    let mut types: std::collections::BTreeMap<String, (usize, u64, u64)> = Default::default();
    let (mut params, mut weight_bytes) = (0u64, 0u64);
    for t in f.tensors() {
        let e = types.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.n_bytes;
        params += t.n_elements();
        weight_bytes += t.n_bytes;
    }
    let meta: serde_json::Map<String, Value> = f.metadata().filter_map(|(k, v)| meta_json(v).map(|j| (k.to_string(), j))).collect();
    let mut v = json!({
        "file": path.display().to_string(),
        "architecture": arch,
        "supported": cfg.is_ok(),
        "parameters": params,
        "weight_bytes": weight_bytes,
        "tensor_types": types.iter().map(|(k, (n, e, b))| json!({"type": k, "tensors": n, "elements": e, "bytes": b})).collect::<Vec<_>>(),
        "chat_template": f.chat_template().ok().flatten(),
        "metadata": meta,
    });
    match &cfg {
        Ok(cfg) => {
            let n_ctx = if ctx == 0 { cfg.n_ctx_train.min(4096) } else { ctx };
            // the KV pool holds whole blocks of 16 positions, and one more for
            // copy-on-write; an encoder keeps no cache and returns hidden states
            let encoder = cfg.arch.encoder;
            let kv = if encoder { 0 } else { cfg.kv_bytes_per_position() * (n_ctx.div_ceil(16) + 1) * 16 };
            let logits = if encoder { n_ctx * cfg.n_embd * 4 } else { cfg.n_vocab * 4 };
            // the resident f16 copies a GPU keeps for batched products when they fit
            let f16_copies: usize = if encoder { 0 } else { f.tensors().iter().filter(|t| t.dims.len() == 2 && (t.name.starts_with("blk.") || t.name == "output.weight")).map(|t| t.n_elements() as usize * 2).sum() };
            v["context_length"] = json!(cfg.n_ctx_train);
            v["model"] = json!({"encoder": encoder, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_head_kv": cfg.n_head_kv, "head_dim": cfg.head_dim, "n_ff": cfg.n_ff, "n_vocab": cfg.n_vocab, "sliding_window": cfg.sliding_window});
            v["memory"] = json!({
                "ctx": n_ctx,
                "kv_cache_bytes": kv,
                // the CPU reads the weights from the file's mapping
                "cpu_bytes": weight_bytes as usize + kv + logits,
                // a GPU holds its own copy; scratch buffers come on top
                // (an encoder runs on the CPU whatever the backend)
                "gpu_bytes": if encoder { 0 } else { weight_bytes as usize + kv + logits },
                // batched products on a GPU: f16 copies of the projections, when they fit a quarter of the memory
                "gpu_f16_copies_bytes": f16_copies,
            });
        }
        Err(e) => v["unsupported_reason"] = json!(e.to_string()),
    }
    if let Ok(tok) = &tok {
        let sp = &tok.vocab.special;
        let name = |id: Option<u32>| id.map(|i| json!({"id": i, "text": tok.vocab.tokens.get(i as usize)}));
        v["tokenizer"] = json!({"kind": format!("{:?}", tok.vocab.kind), "pre": tok.vocab.pre, "n_vocab": tok.n_vocab(), "add_bos": tok.vocab.add_bos,
            "special": {"bos": name(sp.bos), "eos": name(sp.eos), "eot": name(sp.eot), "pad": name(sp.pad), "unk": name(sp.unk), "sep": name(sp.sep)}});
    }
    let devices = |k: GpuKind| match k.device_count() {
        Ok(n) => json!({"available": n > 0, "devices": n}),
        Err(e) => json!({"available": false, "why": e.to_string()}),
    };
    v["backends"] = json!({"cpu": {"available": true, "threads": std::thread::available_parallelism().map_or(1, |n| n.get())}, "cuda": devices(GpuKind::Cuda), "hip": devices(GpuKind::Hip)});
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("{}: {arch}, {:.1} M parameters, {:.1} MiB of weights", path.display(), params as f64 / 1e6, mib(weight_bytes));
    if let Some(name) = f.get_str("general.name").ok().flatten() {
        println!("  name             {name}");
    }
    match &cfg {
        Ok(cfg) => {
            println!("  layers           {} (embedding {}, heads {} / {} kv, head size {}, FFN {})", cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_ff);
            println!("  context          {} trained", cfg.n_ctx_train);
            let m = &v["memory"];
            if cfg.arch.encoder {
                let pooling = match cfg.pooling_type {
                    Some(0) => "none",
                    Some(1) | None => "mean",
                    Some(2) => "CLS",
                    Some(3) => "last",
                    Some(_) => "other",
                };
                println!("  encoder          embeddings only ({pooling} pooling): no KV cache, no LM head");
                println!("  memory at ctx {}  CPU {:.1} MiB (weights mapped from the file; encoders run on the CPU whatever the backend)", m["ctx"], mib(m["cpu_bytes"].as_u64().unwrap_or(0)));
            } else {
                println!("  memory at ctx {}  KV cache {:.1} MiB; CPU {:.1} MiB (weights mapped from the file), GPU {:.1} MiB + scratch (+ {:.1} MiB of f16 copies when they fit)",
                m["ctx"], mib(m["kv_cache_bytes"].as_u64().unwrap_or(0)), mib(m["cpu_bytes"].as_u64().unwrap_or(0)), mib(m["gpu_bytes"].as_u64().unwrap_or(0)), mib(m["gpu_f16_copies_bytes"].as_u64().unwrap_or(0)));
            }
        }
        Err(e) => println!("  not supported    {e}"),
    }
    println!("  tensor types");
    let max = types.values().map(|t| t.2).max().unwrap_or(1).max(1);
    for (k, (n, _, b)) in &types {
        let bar = "#".repeat(((*b as f64 / max as f64) * 30.0).ceil() as usize);
        println!("    {k:8} {n:4} tensors {:9.1} MiB  {bar}", mib(*b));
    }
    match &tok {
        Ok(tok) => {
            let sp = &tok.vocab.special;
            let show = |id: Option<u32>| id.map_or("-".to_string(), |i| format!("{i} {:?}", tok.vocab.tokens.get(i as usize).map(String::as_str).unwrap_or("?")));
            println!("  tokenizer        {:?} ({} tokens, pre {:?}), add BOS {}", tok.vocab.kind, tok.n_vocab(), tok.vocab.pre, tok.vocab.add_bos);
            println!("  special tokens   bos {}, eos {}, eot {}, pad {}", show(sp.bos), show(sp.eos), show(sp.eot), show(sp.pad));
        }
        Err(e) => println!("  tokenizer        {e}"),
    }
    match f.chat_template().ok().flatten() {
        Some(t) => println!("  chat template    {} bytes: {:?}…", t.len(), t.chars().take(70).collect::<String>()),
        None => println!("  chat template    none (chat uses ChatML)"),
    }
    let b = &v["backends"];
    let show = |x: &Value| match x["available"].as_bool() {
        Some(true) => format!("{} device(s)", x["devices"]),
        _ => format!("not available ({})", x["why"].as_str().unwrap_or("no device")),
    };
    println!("  backends         cpu ({} threads), cuda {}, hip {}", b["cpu"]["threads"], show(&b["cuda"]), show(&b["hip"]));
    Ok(())
}
