//! `rocmforge-server`: an OpenAI-compatible HTTP server over ROCmForge's
//! engine, with continuous batching.
//!
//! Two parts: one engine thread ([`sched`]) owns the [`rocmforge::Engine`]
//! and runs the scheduler loop; the HTTP handlers (tokio + axum, here) parse
//! and check requests, render chat templates ([`template`]), tokenize, and
//! talk to the engine thread through channels. The library crate stays free
//! of an async runtime: only this binary has one.

pub mod api;
pub mod metrics;
pub mod sched;
pub mod template;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use parking_lot::Mutex;
use rocmforge::grammar::Grammar;
use rocmforge::tokenizer::Tokenizer;
use rocmforge::{BackendChoice, Engine, EngineOptions, LoadOptions, Model};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use api::{ApiError, GenParams, Prompt};
use metrics::Metrics;
use sched::{EmbedRequest, Event, Finish, GenRequest, SchedOptions, Scheduler, TokenLogprob, Work};
pub use template::ChatTemplate;

/// The server's settings besides the model (the command line of
/// `rocmforge-server` and of `rocmforge serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// auto, cpu, cuda or hip.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// GPU index for cuda / hip.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Most sequences running at once (each choice of a request is one).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Most positions one sequence may hold (0: the model's, at most 4096).
    #[arg(long = "ctx-size", visible_alias = "ctx", short = 'c', default_value_t = 0)]
    pub ctx_size: usize,
    /// Most tokens one engine step carries (decode rows plus prompt chunks).
    #[arg(long = "batch-tokens", default_value_t = 512)]
    pub batch_tokens: usize,
    /// Bytes of KV cache for all sequences (0: `parallel` full contexts).
    #[arg(long = "kv-budget", default_value_t = 0)]
    pub kv_budget: usize,
    /// Most requests waiting to start; more get 429.
    #[arg(long = "max-queue", default_value_t = 64)]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* and the tokenizer endpoints.
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// The model's name in responses and /v1/models (default: the file's stem).
    #[arg(long)]
    pub alias: Option<String>,
    /// A Jinja chat template to use instead of the GGUF's.
    #[arg(long = "chat-template-file")]
    pub chat_template_file: Option<std::path::PathBuf>,
    /// CPU worker threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long = "max-body", default_value_t = 4 << 20)]
    pub max_body: usize,
}

/// The model and the settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The GGUF model file.
    pub model: std::path::PathBuf,
    pub args: ServeArgs,
}

impl std::ops::Deref for ServeOptions {
    type Target = ServeArgs;
    fn deref(&self) -> &ServeArgs {
        &self.args
    }
}

/// Log to stderr, filtered by `ROCMFORGE_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROCMFORGE_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// [`serve`] on a runtime of its own (a few worker threads: HTTP work is
/// light next to the engine thread's).
pub fn serve_blocking(opts: ServeOptions) -> Result<(), String> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(serve(opts))
}

/// What exists once the model is loaded.
struct Loaded {
    model: Arc<Model>,
    name: String,
    n_ctx: usize,
    template: ChatTemplate,
    tx: Mutex<Option<mpsc::Sender<Work>>>,
}

struct AppState {
    opts: ServeOptions,
    loaded: OnceLock<Loaded>,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    created: u64,
}

type Shared = Arc<AppState>;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `auto`, `cpu`, or a GPU backend with its index, parsed by the library
/// (the server's and the CLI's `--backend` / `--gpu`).
pub fn backend_choice(name: &str, gpu: usize) -> Result<BackendChoice, String> {
    let spec = match name {
        "auto" | "cpu" => name.to_string(),
        b => format!("{b}:{gpu}"),
    };
    spec.parse().map_err(|e: rocmforge::Error| e.to_string())
}

/// The chat template to use: the file given, else the GGUF's, else ChatML.
pub fn chat_template(model: &Model, file: Option<&std::path::Path>) -> Result<ChatTemplate, String> {
    let tok = &model.tokenizer;
    let text = |id: Option<u32>| id.and_then(|i| tok.vocab.tokens.get(i as usize)).cloned().unwrap_or_default();
    let (bos, eos) = (text(tok.vocab.special.bos), text(tok.vocab.special.eos));
    let source = match file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => match model.file.chat_template().ok().flatten() {
            Some(t) => t.to_string(),
            None => {
                tracing::warn!("the model has no chat template (tokenizer.chat_template): using ChatML");
                template::CHATML.to_string()
            }
        },
    };
    ChatTemplate::new(&source, &bos, &eos).map_err(|e| format!("the chat template does not compile: {e}"))
}

/// Load the model and start the engine thread.
fn load(state: &AppState) -> Result<(Loaded, std::thread::JoinHandle<()>), String> {
    let o = &state.opts;
    let backend = backend_choice(&o.backend, o.gpu)?;
    let model = Model::load(&o.model, LoadOptions { n_threads: o.threads, backend, ..Default::default() }).map_err(|e| format!("cannot load {}: {e}", o.model.display()))?;
    if model.is_encoder() {
        return load_encoder(state, model);
    }
    let template = chat_template(&model, o.chat_template_file.as_deref())?;
    let n_ctx = if o.ctx_size == 0 { model.default_n_ctx() } else { o.ctx_size };
    let kv_budget = match o.kv_budget {
        // `parallel` whole contexts, each rounded up to whole blocks, and a block each for copy-on-write
        0 => o.parallel.max(1) * (n_ctx.div_ceil(rocmforge::kv::BLOCK) + 1) * rocmforge::kv::BLOCK * model.cfg.kv_bytes_per_position(),
        b => b,
    };
    let engine = Engine::new(model.clone(), EngineOptions { n_ctx, kv_budget, preempt: true }).map_err(|e| format!("cannot make the engine: {e}"))?;
    let name = model_name(o);
    let (tx, rx) = mpsc::channel();
    let sched = Scheduler::new(engine, SchedOptions { parallel: o.parallel, batch_tokens: o.batch_tokens }, state.metrics.clone(), state.queued.clone());
    let metrics = state.metrics.clone();
    let thread = std::thread::Builder::new()
        .name("rocmforge-engine".into())
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.run(rx))).is_err() {
                // requests now get 503 (the channel is gone) and /health says so
                metrics.engine_dead.store(true, Ordering::SeqCst);
                tracing::error!("the engine thread panicked: restart the server");
            }
        })
        .map_err(|e| e.to_string())?;
    tracing::info!("loaded {} ({}) on {}: context {n_ctx}, {} sequences, {} tokens per step", name, model.cfg.arch.name, model.backend_description(), o.parallel, o.batch_tokens);
    Ok((Loaded { model, name, n_ctx, template, tx: Mutex::new(Some(tx)) }, thread))
}

fn model_name(o: &ServeOptions) -> String {
    o.alias.clone().unwrap_or_else(|| o.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()))
}

/// An embedding-only encoder (`nomic-bert`): no engine, no chat template;
/// a thread answers `/v1/embeddings` ([`sched::run_encoder`]) and the
/// completion endpoints refuse ([`generative`]). Its context is its
/// `context_length` (`--ctx-size` may lower it).
fn load_encoder(state: &AppState, model: Arc<Model>) -> Result<(Loaded, std::thread::JoinHandle<()>), String> {
    let o = &state.opts;
    let n_ctx = match o.ctx_size {
        0 => model.cfg.n_ctx_train,
        n => n.min(model.cfg.n_ctx_train),
    };
    let template = ChatTemplate::new(template::CHATML, "", "").map_err(|e| e.to_string())?;
    let name = model_name(o);
    let (tx, rx) = mpsc::channel();
    let (m, metrics) = (model.clone(), state.metrics.clone());
    let thread = std::thread::Builder::new()
        .name("rocmforge-encoder".into())
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched::run_encoder(m, rx, metrics.clone()))).is_err() {
                metrics.engine_dead.store(true, Ordering::SeqCst);
                tracing::error!("the encoder thread panicked: restart the server");
            }
        })
        .map_err(|e| e.to_string())?;
    tracing::info!("loaded {name} ({}, an embedding model: /v1/embeddings only) on the CPU: context {n_ctx}, {} pooling", model.cfg.arch.name, model.default_pooling().name());
    Ok((Loaded { model, name, n_ctx, template, tx: Mutex::new(Some(tx)) }, thread))
}

/// Completions need a generative model: an embedding-only encoder answers
/// 400 `model_not_supported`.
fn generative(l: &Loaded) -> Result<(), ApiError> {
    if l.model.is_encoder() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("{} ({}) is an embedding model: it serves /v1/embeddings only, not completions", l.name, l.model.cfg.arch.name),
        )
        .code("model_not_supported"));
    }
    Ok(())
}

/// Run the server until SIGTERM or Ctrl-C: bind, load the model (health
/// says 503 meanwhile), serve, then drain the running requests and exit.
pub async fn serve(opts: ServeOptions) -> Result<(), String> {
    backend_choice(&opts.backend, opts.gpu)?;
    let addr: SocketAddr = tokio::net::lookup_host((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", opts.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", opts.host))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let state = Arc::new(AppState { opts: opts.clone(), loaded: OnceLock::new(), metrics: Arc::new(Metrics::default()), queued: Arc::new(AtomicUsize::new(0)), created: now_secs() });
    tracing::info!("listening on http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let loader = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(ms) = std::env::var("ROCMFORGE_SERVER_TEST_LOAD_DELAY_MS") {
                // tests see the loading state through this (never set in production)
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            }
            let (loaded, thread) = load(&state)?;
            let _ = state.loaded.set(loaded);
            tracing::info!("ready");
            Ok::<_, String>(thread)
        })
    };
    let app = router(state.clone());
    let (fail_tx, mut fail_rx) = tokio::sync::oneshot::channel::<String>();
    let engine_thread = tokio::spawn(async move {
        match loader.await {
            Ok(Ok(t)) => Some(t),
            Ok(Err(e)) => {
                let _ = fail_tx.send(e);
                None
            }
            Err(e) => {
                let _ = fail_tx.send(format!("the loader panicked: {e}"));
                None
            }
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutting down: draining running requests"),
            e = &mut fail_rx => match e {
                Ok(e) => tracing::error!("{e}"),
                // loaded: serve until a signal
                Err(_) => shutdown_signal().await,
            },
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(|e| e.to_string())?;
    match engine_thread.await {
        Ok(Some(t)) => {
            // every handler has finished (and the load, if a signal came
            // during it): close the engine's channel and let it drain
            if let Some(l) = state.loaded.get() {
                l.tx.lock().take();
            }
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
            Ok(())
        }
        _ if state.loaded.get().is_none() => Err("the model did not load".into()),
        _ => Ok(()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn router(state: Shared) -> Router {
    let guarded = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(guarded)
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "no such endpoint").code("not_found") })
        .layer(DefaultBodyLimit::max(state.opts.max_body))
        .with_state(state)
}

async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.opts.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "a valid API key is required (Authorization: Bearer KEY)").code("invalid_api_key").into_response();
        }
    }
    next.run(req).await
}

async fn health(State(state): State<Shared>) -> Response {
    match state.loaded.get() {
        Some(_) if state.metrics.engine_dead.load(Ordering::SeqCst) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "error", "error": "the engine thread failed"}))).into_response(),
        Some(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response(),
    }
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

fn ready(state: &AppState) -> Result<&Loaded, ApiError> {
    state.loaded.get().ok_or_else(ApiError::loading)
}

async fn models(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let l = ready(&state)?;
    Ok(Json(json!({"object": "list", "data": [{"id": l.name, "object": "model", "created": state.created, "owned_by": "rocmforge", "max_model_len": l.n_ctx}]})))
}

/// The body as a JSON object, or an OpenAI-shaped 400 / 413.
fn body_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "the request body is too large").code("request_too_large"),
        s => ApiError::new(s, "invalid_request_error", e.body_text()),
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the request body is not valid JSON: {e}")).code("invalid_json")),
    }
}

/// A chat request's prompt tokens (checked messages, optional tools).
fn chat_tokens(l: &Loaded, obj: &Map<String, Value>, add_generation_prompt: bool) -> Result<Vec<u32>, ApiError> {
    let msgs = api::messages(obj.get("messages"))?;
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => None,
        Some(t @ Value::Array(_)) => Some(t),
        Some(_) => return Err(ApiError::param("tools", "'tools' must be a list")),
    };
    prompt_tokens(&l.model.tokenizer, &l.template, &msgs, tools, add_generation_prompt).map_err(|e| ApiError::param("messages", format!("the chat template refused these messages: {e}")))
}

/// Render a conversation and tokenize it: control tokens come only from
/// the template, and a BOS that the template and the tokenizer both add
/// appears once. Control-token text the client wrote anywhere (contents,
/// tool calls, tools) is swapped for placeholders before rendering, so
/// the template cannot mix it up with its own, and put back afterwards as
/// literal spans that are tokenized as text (no injection, whatever the
/// template does with the strings). Err: the template's own error
/// (`raise_exception`).
pub fn prompt_tokens(tok: &Tokenizer, template: &ChatTemplate, msgs: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<Vec<u32>, String> {
    let mut originals = Vec::new();
    let msgs = mask_control(tok, msgs, &mut originals);
    let tools = tools.map(|t| mask_control(tok, t, &mut originals));
    let rendered = template.render(&msgs, tools.as_ref(), add_generation_prompt)?;
    let (text, spans) = unmask_control(&rendered, &originals);
    let mut ids = tok.encode_with_literals(&text, true, true, &spans);
    let bos = tok.vocab.special.bos;
    if bos.is_some() && ids.len() >= 2 && ids[0] == ids[1] && Some(ids[0]) == bos {
        ids.remove(0);
    }
    Ok(ids)
}

/// Placeholder brackets: two code points of Unicode's supplementary
/// private use area A, which no tokenizer gives a meaning to.
const MASK_OPEN: char = '\u{F0000}';
const MASK_CLOSE: char = '\u{F0001}';

/// Every string in `v` with its control-token text replaced by
/// `MASK_OPEN index MASK_CLOSE` (the text saved in `originals`).
fn mask_control(tok: &Tokenizer, v: &Value, originals: &mut Vec<String>) -> Value {
    match v {
        Value::String(s) => {
            let spans = tok.control_token_spans(s);
            if spans.is_empty() {
                return v.clone();
            }
            let mut out = String::with_capacity(s.len() + 8 * spans.len());
            let mut at = 0;
            for r in spans {
                out.push_str(&s[at..r.start]);
                out.push(MASK_OPEN);
                out.push_str(&originals.len().to_string());
                out.push(MASK_CLOSE);
                originals.push(s[r.clone()].to_string());
                at = r.end;
            }
            out.push_str(&s[at..]);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| mask_control(tok, x, originals)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), mask_control(tok, x, originals))).collect()),
        _ => v.clone(),
    }
}

/// The rendered text with the placeholders put back, and where they were.
fn unmask_control(rendered: &str, originals: &[String]) -> (String, Vec<std::ops::Range<usize>>) {
    let mut text = String::with_capacity(rendered.len());
    let mut spans = Vec::new();
    let mut rest = rendered;
    while let Some(i) = rest.find(MASK_OPEN) {
        text.push_str(&rest[..i]);
        let after = &rest[i + MASK_OPEN.len_utf8()..];
        let found = after.find(MASK_CLOSE).and_then(|j| after[..j].parse::<usize>().ok().filter(|&k| k < originals.len()).map(|k| (j, k)));
        match found {
            Some((j, k)) => {
                let start = text.len();
                text.push_str(&originals[k]);
                spans.push(start..text.len());
                rest = &after[j + MASK_CLOSE.len_utf8()..];
            }
            None => {
                text.push(MASK_OPEN);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    (text, spans)
}

fn text_tokens(l: &Loaded, p: Prompt) -> Vec<u32> {
    match p {
        Prompt::Text(s) => l.model.tokenizer.encode(&s, true, true),
        Prompt::Tokens(t) => t,
    }
}

/// The JSON grammar `response_format: json_object` constrains output to:
/// an object, with bounded members, items and string lengths, so that a
/// small model that starts repeating itself still closes the object.
const JSON_GRAMMAR: &str = r#"
root   ::= object
value  ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( member ( "," ws member ){0,15} )? "}"
member ::= string ":" ws value ws
array  ::= "[" ws ( value ws ( "," ws value ws ){0,15} )? "]"
string ::= "\"" ( [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) ){0,128} "\""
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
ws     ::= " "?
"#;

fn json_grammar() -> Arc<Grammar> {
    static G: OnceLock<Arc<Grammar>> = OnceLock::new();
    G.get_or_init(|| Grammar::parse(JSON_GRAMMAR, "root").expect("the JSON grammar parses")).clone()
}

/// One prompt's generation, started.
struct Started {
    rx: UnboundedReceiver<Event>,
    n_prompt: usize,
}

/// Check a request's prompts against the context and `n` against the
/// server's sequences, then take `prompts.len()` places in the queue at
/// once (all or none: 429) and send them to the engine thread.
fn start(state: &AppState, l: &Loaded, prompts: Vec<Vec<u32>>, p: &GenParams, param: &str) -> Result<Vec<Started>, ApiError> {
    if p.n > state.opts.parallel.max(1) {
        return Err(ApiError::param("n", format!("n = {} is more than this server's {} parallel sequences", p.n, state.opts.parallel.max(1))));
    }
    for prompt in &prompts {
        let n_prompt = prompt.len();
        if n_prompt == 0 {
            return Err(ApiError::param(param, "the prompt has no tokens"));
        }
        if n_prompt >= l.n_ctx {
            return Err(ApiError::param(param, format!("the prompt has {n_prompt} tokens; this model's context holds {} (prompt and output together)", l.n_ctx)).code("context_length_exceeded"));
        }
    }
    if let Some(&(id, _)) = p.logit_bias.iter().find(|&&(id, _)| id as usize >= l.model.cfg.n_vocab) {
        return Err(ApiError::param("logit_bias", format!("token id {id} is outside the vocabulary ({} tokens)", l.model.cfg.n_vocab)));
    }
    let k = prompts.len();
    let max_queue = state.opts.max_queue;
    if state.queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| (q + k <= max_queue).then_some(q + k)).is_err() {
        state.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!("the queue is full ({max_queue} requests waiting); retry later")).code("queue_full");
        e.retry_after = Some(1);
        return Err(e);
    }
    let tx = l.tx.lock().clone();
    let mut started = Vec::with_capacity(k);
    for (i, prompt) in prompts.into_iter().enumerate() {
        let n_prompt = prompt.len();
        let room = l.n_ctx - n_prompt;
        let (events, rx) = unbounded_channel();
        let req = GenRequest {
            prompt,
            sampling: p.sampling.clone(),
            max_tokens: p.max_tokens.unwrap_or(room).min(room),
            stop: p.stop.clone(),
            n: p.n,
            logprobs: p.logprobs,
            ignore_eos: p.ignore_eos,
            logit_bias: p.logit_bias.clone(),
            grammar: p.json_output.then(json_grammar),
            events,
            arrived: Instant::now(),
        };
        if tx.as_ref().is_none_or(|tx| tx.send(Work::Generate(req)).is_err()) {
            // the ones not sent give their places back (those sent are
            // dropped by the engine thread when their channels close)
            state.queued.fetch_sub(k - i, Ordering::SeqCst);
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "the server is shutting down"));
        }
        started.push(Started { rx, n_prompt });
    }
    Ok(started)
}

/// One choice's output, gathered.
#[derive(Default)]
struct ChoiceOut {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<Finish>,
    tokens: usize,
}

/// Usage of a request (all its prompts and choices).
#[derive(Default, Clone, Copy)]
struct Usage {
    prompt: usize,
    completion: usize,
    cached: usize,
}

impl Usage {
    fn json(&self) -> Value {
        json!({"prompt_tokens": self.prompt, "completion_tokens": self.completion, "total_tokens": self.prompt + self.completion, "prompt_tokens_details": {"cached_tokens": self.cached}})
    }
}

/// Wait for every choice of one started prompt.
async fn gather(s: &mut Started, n: usize) -> Result<(Vec<ChoiceOut>, usize), ApiError> {
    let mut out: Vec<ChoiceOut> = (0..n).map(|_| ChoiceOut::default()).collect();
    let mut cached = 0;
    let mut left = n;
    while left > 0 {
        match s.rx.recv().await {
            Some(Event::Started { cached: c }) => cached = c,
            Some(Event::Text { choice, text, logprobs }) => {
                out[choice].text.push_str(&text);
                out[choice].logprobs.extend(logprobs);
            }
            Some(Event::Done { choice, finish, tokens }) => {
                out[choice].finish = Some(finish);
                out[choice].tokens = tokens;
                left -= 1;
            }
            Some(Event::Failed(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("the engine stopped")),
        }
    }
    Ok((out, cached))
}

fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let top: Vec<Value> = t.top.iter().map(|(s, lp)| json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})).collect();
            json!({"token": t.text, "logprob": t.logprob, "bytes": t.bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Legacy completions logprobs; `offset` is where this text starts.
fn text_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut lp = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for t in lps {
        tokens.push(json!(t.text));
        lp.push(json!(t.logprob));
        let m: Map<String, Value> = t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect();
        top.push(Value::Object(m));
        offsets.push(json!(offset));
        offset += t.text.len();
    }
    json!({"tokens": tokens, "token_logprobs": lp, "top_logprobs": top, "text_offset": offsets})
}

fn request_id(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{:x}{:06x}", now_secs(), NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn chat_completions(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let l = ready(&state)?;
    generative(l)?;
    let obj = body_object(body)?;
    let p = api::gen_params(&obj, true)?;
    let prompt = chat_tokens(l, &obj, true)?;
    let started = start(&state, l, vec![prompt], &p, "messages")?;
    let id = request_id("chatcmpl");
    if p.stream {
        return Ok(stream_response(started, p, l.name.clone(), id, true).into_response());
    }
    let mut started = started.into_iter().next().expect("one prompt");
    let (outs, cached) = gather(&mut started, p.n).await?;
    let usage = Usage { prompt: started.n_prompt, completion: outs.iter().map(|o| o.tokens).sum(), cached };
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": p.logprobs.map(|_| chat_logprobs(&o.logprobs)),
                   "finish_reason": o.finish.map(Finish::as_str)})
        })
        .collect();
    Ok(Json(json!({"id": id, "object": "chat.completion", "created": now_secs(), "model": l.name, "choices": choices, "usage": usage.json(), "system_fingerprint": fingerprint()})).into_response())
}

fn fingerprint() -> String {
    format!("rocmforge-{}", env!("CARGO_PKG_VERSION"))
}

async fn completions(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let l = ready(&state)?;
    generative(l)?;
    let obj = body_object(body)?;
    let p = api::gen_params(&obj, false)?;
    let prompts = api::prompts(obj.get("prompt"), l.model.cfg.n_vocab)?;
    let token_lists: Vec<Vec<u32>> = prompts.into_iter().map(|pr| text_tokens(l, pr)).collect();
    let mut started = start(&state, l, token_lists, &p, "prompt")?;
    let id = request_id("cmpl");
    if p.stream {
        return Ok(stream_response(started, p, l.name.clone(), id, false).into_response());
    }
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    for (k, s) in started.iter_mut().enumerate() {
        let (outs, cached) = gather(s, p.n).await?;
        usage.prompt += s.n_prompt;
        usage.cached += cached;
        for (i, o) in outs.into_iter().enumerate() {
            usage.completion += o.tokens;
            choices.push(json!({"index": k * p.n + i, "text": o.text, "logprobs": p.logprobs.map(|_| text_logprobs(&o.logprobs, 0)), "finish_reason": o.finish.map(Finish::as_str)}));
        }
    }
    Ok(Json(json!({"id": id, "object": "text_completion", "created": now_secs(), "model": l.name, "choices": choices, "usage": usage.json(), "system_fingerprint": fingerprint()})).into_response())
}

/// Server-sent events for one or more started prompts: each choice's text
/// as it comes, `finish_reason` on its last chunk, an optional usage chunk
/// with no choices, then `[DONE]`. Comments keep the connection alive
/// during a long prefill. Dropping the stream (the client went away)
/// closes the channels, and the engine frees the sequences.
fn stream_response(started: Vec<Started>, p: GenParams, model: String, id: String, chat: bool) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let n = p.n;
    let n_prompts = started.len();
    let usage = Usage { prompt: started.iter().map(|s| s.n_prompt).sum(), ..Default::default() };
    let merged = stream::select_all(started.into_iter().enumerate().map(|(k, s)| {
        stream::unfold(s.rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).map(move |e| (k, e)).boxed()
    }));
    struct St {
        usage: Usage,
        left: usize,
        offsets: Vec<usize>,
        done: bool,
    }
    let created = now_secs();
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "system_fingerprint": fingerprint(), "choices": choices});
        if p.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::default().data(v.to_string())
    };
    let logprobs = p.logprobs.is_some();
    let include_usage = p.include_usage;
    // the role comes first in a chat stream, one chunk per choice
    let mut head = Vec::new();
    if chat {
        for k in 0..n_prompts * n {
            head.push(Ok(chunk(json!([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None)));
        }
    }
    let st = St { usage, left: n_prompts * n, offsets: vec![0; n_prompts * n], done: false };
    let body = stream::unfold((merged, st), move |(mut merged, mut st)| {
        let chunk = chunk.clone();
        async move {
            if st.done {
                return None;
            }
            loop {
                let Some((k, ev)) = merged.next().await else {
                    st.done = true;
                    let e = json!({"error": {"message": "the engine stopped", "type": "server_error", "param": null, "code": null}});
                    return Some((vec![Ok(SseEvent::default().data(e.to_string()))], (merged, st)));
                };
                let out: Vec<Result<SseEvent, Infallible>> = match ev {
                    Event::Started { cached } => {
                        st.usage.cached += cached;
                        continue;
                    }
                    Event::Text { choice, text, logprobs: lps } => {
                        let idx = k * n + choice;
                        let c = if chat {
                            json!({"index": idx, "delta": {"content": text}, "logprobs": logprobs.then(|| chat_logprobs(&lps)), "finish_reason": null})
                        } else {
                            let v = json!({"index": idx, "text": text, "logprobs": logprobs.then(|| text_logprobs(&lps, st.offsets[idx])), "finish_reason": null});
                            st.offsets[idx] += text.len();
                            v
                        };
                        vec![Ok(chunk(json!([c]), None))]
                    }
                    Event::Done { choice, finish, tokens } => {
                        let idx = k * n + choice;
                        st.usage.completion += tokens;
                        st.left -= 1;
                        let c = if chat {
                            json!({"index": idx, "delta": {}, "logprobs": null, "finish_reason": finish.as_str()})
                        } else {
                            json!({"index": idx, "text": "", "logprobs": null, "finish_reason": finish.as_str()})
                        };
                        let mut v = vec![Ok(chunk(json!([c]), None))];
                        if st.left == 0 {
                            if include_usage {
                                v.push(Ok(chunk(json!([]), Some(st.usage.json()))));
                            }
                            v.push(Ok(SseEvent::default().data("[DONE]")));
                            st.done = true;
                        }
                        v
                    }
                    Event::Failed(msg) => {
                        st.done = true;
                        let e = json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}});
                        vec![Ok(SseEvent::default().data(e.to_string()))]
                    }
                };
                return Some((out, (merged, st)));
            }
        }
    })
    .flat_map(stream::iter);
    Sse::new(stream::iter(head).chain(body)).keep_alive(KeepAlive::new().interval(Duration::from_secs(2)).text("keep-alive"))
}

/// `POST /v1/embeddings`: each input's embedding, L2-normalized; floats or
/// base64 of little-endian f32. A decoder's is its final hidden state
/// (after the output norm) mean-pooled over its tokens, which the engine
/// computes between two steps; an encoder's (`nomic-bert`) comes from its
/// encoder pass with the model's own pooling (`pooling_type`), on a
/// thread of its own.
async fn embeddings(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let l = ready(&state)?;
    let obj = body_object(body)?;
    let inputs: Vec<Vec<u32>> = api::prompts(obj.get("input"), l.model.cfg.n_vocab)
        .map_err(|e| ApiError { param: Some("input".into()), message: e.message.replace("'prompt'", "'input'"), ..e })?
        .into_iter()
        .map(|p| text_tokens(l, p))
        .collect();
    for (i, t) in inputs.iter().enumerate() {
        if t.is_empty() {
            return Err(ApiError::param("input", format!("input {i} has no tokens")));
        }
        if t.len() > l.n_ctx {
            return Err(ApiError::param("input", format!("input {i} has {} tokens; this model's context holds {}", t.len(), l.n_ctx)).code("context_length_exceeded"));
        }
    }
    let base64 = match obj.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => return Err(ApiError::param("encoding_format", format!("encoding_format {f:?} is not float or base64"))),
    };
    let dim = l.model.cfg.n_embd;
    if let Some(d) = obj.get("dimensions").filter(|v| !v.is_null()) {
        if d.as_u64() != Some(dim as u64) {
            return Err(ApiError::param("dimensions", format!("this model's embeddings have {dim} dimensions")));
        }
    }
    let n_tokens: usize = inputs.iter().map(Vec::len).sum();
    let (reply, rx) = tokio::sync::oneshot::channel();
    let tx = l.tx.lock().clone();
    if tx.as_ref().is_none_or(|tx| tx.send(Work::Embed(EmbedRequest { inputs, normalize: true, reply })).is_err()) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "the server is shutting down"));
    }
    let vecs = match rx.await {
        Ok(Ok(v)) => v,
        Ok(Err(rocmforge::Error::Unsupported(m))) | Ok(Err(rocmforge::Error::BackendUnavailable(m))) => {
            return Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "invalid_request_error", format!("embeddings are not available on this backend: {m}")).code("not_supported"))
        }
        Ok(Err(e)) => return Err(ApiError::internal(format!("the engine failed: {e}"))),
        Err(_) => return Err(ApiError::internal("the engine stopped")),
    };
    let data: Vec<Value> = vecs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let e = if base64 { json!(b64(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": l.name, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})))
}

/// Standard base64 with padding (RFC 4648), for `encoding_format: base64`.
fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            out.push(if k <= c.len() { A[(n >> (18 - 6 * k)) as usize & 63] as char } else { '=' });
        }
    }
    out
}

async fn tokenize(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let l = ready(&state)?;
    let obj = body_object(body)?;
    let add_special = match obj.get("add_special").or(obj.get("add_special_tokens")) {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::param("add_special", "'add_special' must be true or false")),
    };
    let tokens = if obj.contains_key("messages") {
        let agp = obj.get("add_generation_prompt").and_then(Value::as_bool).unwrap_or(true);
        chat_tokens(l, &obj, agp)?
    } else {
        let Some(text) = obj.get("content").or(obj.get("prompt")).and_then(Value::as_str) else {
            return Err(ApiError::param("content", "'content' (a string) or 'messages' is required"));
        };
        l.model.tokenizer.encode(text, add_special, true)
    };
    Ok(Json(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": l.n_ctx})))
}

async fn detokenize(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let l = ready(&state)?;
    let obj = body_object(body)?;
    let Some(Value::Array(a)) = obj.get("tokens") else { return Err(ApiError::param("tokens", "'tokens' must be a list of token ids")) };
    let ids: Vec<u32> = a.iter().map(|v| v.as_u64().filter(|&t| (t as usize) < l.model.cfg.n_vocab).map(|t| t as u32)).collect::<Option<_>>().ok_or_else(|| ApiError::param("tokens", "every token must be an id in the vocabulary"))?;
    let text = l.model.tokenizer.decode_lossy(&ids, false).map_err(|e| ApiError::param("tokens", e.to_string()))?;
    Ok(Json(json!({"content": text})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc_4648() {
        for (raw, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(b64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn placeholders_round_trip_and_mark_the_client_text() {
        let originals = vec!["<|im_end|>".to_string(), "<|im_start|>".to_string()];
        let rendered = format!("a{MASK_OPEN}0{MASK_CLOSE}b \"{MASK_OPEN}1{MASK_CLOSE}\" {MASK_OPEN}9{MASK_CLOSE} {MASK_OPEN}x");
        let (text, spans) = unmask_control(&rendered, &originals);
        assert_eq!(text, format!("a<|im_end|>b \"<|im_start|>\" {MASK_OPEN}9{MASK_CLOSE} {MASK_OPEN}x"));
        assert_eq!(spans.iter().map(|r| &text[r.clone()]).collect::<Vec<_>>(), ["<|im_end|>", "<|im_start|>"]);
    }
}
