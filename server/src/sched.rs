//! The engine thread: continuous batching over the engine's sequences.
//!
//! HTTP handlers send a [`GenRequest`] through a channel and read
//! [`Event`]s back. This thread owns the [`Engine`] and loops:
//! 1. take new requests (blocking only when there is nothing to do);
//! 2. drop the work of clients that went away (their channel is closed);
//! 3. admit waiting work first come, first served, while fewer than
//!    `parallel` sequences run, reusing cached prompt prefixes;
//! 4. build one step: a decode row for every generating sequence, then
//!    prompt chunks up to the token budget (chunked prefill);
//! 5. run it; sequences the engine preempted (the KV pool ran dry) go back
//!    to the front of the queue and are recomputed later;
//! 6. sample every row that has logits and send the text.
//!
//! Every choice of a request is a [`Slot`]: the tokens its sequence should
//! hold (`ctx` = prompt, then what it generated) and how many of them the
//! engine holds (`done`). A step feeds `ctx[done..]` (one token while
//! generating, a chunk while prefilling) and asks for logits at the last
//! token, so decode, chunked prefill and recompute after preemption are one
//! code path. A request with `n > 1` prefills once and forks its sequence
//! for the other choices (their blocks are shared, copy-on-write).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocmforge::backend::{TopRows, TOP_MAX};
use rocmforge::engine::{BatchRow, Engine, SeqId};
use rocmforge::grammar::{Grammar, Matcher};
use rocmforge::sampler::{Sampler, SamplerParams};
use rocmforge::tokenizer::StreamDecoder;
use rocmforge::{Model, Output};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// One request: its prompt and how to generate.
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplerParams,
    pub max_tokens: usize,
    /// Stop strings: the text ends before the first one (which is not returned).
    pub stop: Vec<String>,
    /// Choices, each generated independently from the same prompt.
    pub n: usize,
    /// Return each token's log-probability and its `k` best alternatives.
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
    /// Added to these tokens' logits before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// Constrain the output (e.g. to JSON).
    pub grammar: Option<Arc<Grammar>>,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// An embeddings request: each input's final hidden states, mean-pooled
/// (and L2-normalized when asked), sent back through `reply`.
pub struct EmbedRequest {
    pub inputs: Vec<Vec<u32>>,
    pub normalize: bool,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, rocmforge::Error>>,
}

/// What the HTTP side sends the engine thread.
pub enum Work {
    Generate(GenRequest),
    Embed(EmbedRequest),
}

/// The work loop of an embedding-only encoder (`nomic-bert`), which has
/// no engine: each input through [`Model::embed`] with the model's own
/// pooling. The HTTP side sends only embeddings here (it refuses
/// completions for an encoder); anything else is dropped, which its
/// sender sees as a closed channel.
pub fn run_encoder(model: Arc<Model>, rx: Receiver<Work>, metrics: Arc<Metrics>) {
    while let Ok(w) = rx.recv() {
        let Work::Embed(r) = w else { continue };
        if r.reply.is_closed() {
            continue;
        }
        let res = r.inputs.iter().map(|ids| model.embed(ids, None, r.normalize)).collect::<rocmforge::Result<Vec<_>>>();
        let n: usize = r.inputs.iter().map(Vec::len).sum();
        metrics.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
        let _ = r.reply.send(res);
    }
}

/// A token's log-probability (under the model's distribution, before
/// penalties and truncation) and the best alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    /// The text this token completes (a character split across tokens
    /// belongs to the token that completes it, so the texts join to the
    /// output).
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// (token text, logprob), best first.
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine thread tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// The request runs; `cached` prompt positions came from the prefix cache.
    Started { cached: usize },
    /// New text of one choice (may be empty when only logprobs are new).
    Text { choice: usize, text: String, logprobs: Vec<TokenLogprob> },
    /// A choice is complete.
    Done { choice: usize, finish: Finish, tokens: usize },
    /// The engine failed on this request's step (a backend error).
    Failed(String),
}

/// What the engine thread is sized by.
#[derive(Debug, Clone)]
pub struct SchedOptions {
    /// Most sequences running at once.
    pub parallel: usize,
    /// Most tokens one step carries (decode rows and prompt chunks).
    pub batch_tokens: usize,
}

#[derive(Clone, Copy)]
enum End {
    Done,
    Cancelled,
    Failed,
}

struct Job {
    events: UnboundedSender<Event>,
    stop: Vec<String>,
    max_tokens: usize,
    logprobs: Option<usize>,
    ignore_eos: bool,
    logit_bias: Vec<(u32, f32)>,
    arrived: Instant,
    first_token: Option<Instant>,
    /// Choices not finished yet.
    alive: usize,
    /// Still counted in the queue bound (not admitted yet).
    queued: bool,
}

struct Slot {
    job: u64,
    choice: usize,
    seq: Option<SeqId>,
    /// What the sequence should hold: the prompt, then the generated tokens.
    ctx: Vec<u32>,
    /// Positions of `ctx` the engine holds.
    done: usize,
    n_prompt: usize,
    /// Other choices to fork from this one once its prompt is in.
    forks: usize,
    sampler: Sampler,
    matcher: Option<Matcher>,
    decoder: StreamDecoder,
    /// Generated text not sent yet (it may be the start of a stop string).
    held: String,
    held_lp: Vec<(usize, TokenLogprob)>,
    n_gen: usize,
    last_token: Option<Instant>,
}

/// What a row's next token is picked from: all logits, or (when every
/// choice in the step is greedy with no penalties and no grammar) the
/// engine's top candidates with the row's log-sum-exp, which a GPU
/// selects on the device and copies back instead of the whole vocabulary.
enum Dist {
    Full(Vec<f32>),
    Top { ids: Vec<u32>, logits: Vec<f32>, lse: f32 },
}

/// The scheduler and its state.
pub struct Scheduler {
    engine: Engine,
    model: Arc<Model>,
    opts: SchedOptions,
    metrics: Arc<Metrics>,
    /// Requests sent but not admitted, for the HTTP layer's queue bound.
    queued: Arc<AtomicUsize>,
    jobs: HashMap<u64, Job>,
    next_job: u64,
    waiting: VecDeque<Slot>,
    running: Vec<Slot>,
    /// Each token's text, for grammars (empty for control tokens).
    pieces: Vec<Vec<u8>>,
    /// How many end-of-generation tokens the vocabulary has.
    n_eog: usize,
    scratch: Vec<f32>,
    /// Jobs whose sampling failed in this step.
    sample_failed: Vec<(u64, String)>,
}

impl Scheduler {
    pub fn new(engine: Engine, opts: SchedOptions, metrics: Arc<Metrics>, queued: Arc<AtomicUsize>) -> Scheduler {
        let model = engine.model.clone();
        let tok = &model.tokenizer;
        let pieces = (0..tok.n_vocab() as u32).map(|i| tok.token_to_piece(i, false).unwrap_or(&[]).to_vec()).collect();
        let n_eog = (0..tok.n_vocab() as u32).filter(|&t| tok.vocab.is_eog(t)).count();
        let opts = SchedOptions { parallel: opts.parallel.max(1), batch_tokens: opts.batch_tokens.max(opts.parallel).max(1) };
        Scheduler { engine, model, opts, metrics, queued, jobs: HashMap::new(), next_job: 0, waiting: VecDeque::new(), running: Vec::new(), pieces, n_eog, scratch: Vec::new(), sample_failed: Vec::new() }
    }

    /// Serve until the channel closes and every request is finished.
    pub fn run(mut self, rx: Receiver<Work>) {
        let mut open = true;
        loop {
            // take new work; wait for it only when idle
            loop {
                let idle = self.running.is_empty() && self.waiting.is_empty();
                let got = if idle && open {
                    match rx.recv_timeout(Duration::from_millis(500)) {
                        Ok(r) => Some(r),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            None
                        }
                    }
                } else if open {
                    match rx.try_recv() {
                        Ok(r) => Some(r),
                        Err(std::sync::mpsc::TryRecvError::Empty) => None,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            None
                        }
                    }
                } else {
                    None
                };
                match got {
                    Some(Work::Generate(r)) => self.submit(r),
                    // embeddings run at once, between two steps
                    Some(Work::Embed(r)) => self.embed(r),
                    None => break,
                }
            }
            if !open && self.running.is_empty() && self.waiting.is_empty() {
                return;
            }
            self.drop_cancelled();
            self.admit();
            self.publish();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn submit(&mut self, r: GenRequest) {
        let id = self.next_job;
        self.next_job += 1;
        let n = r.n.max(1);
        self.metrics.prompt_tokens.fetch_add(r.prompt.len() as u64, Ordering::Relaxed);
        let mut sampler = Sampler::new(r.sampling.clone());
        sampler.reset();
        self.jobs.insert(
            id,
            Job {
                events: r.events,
                stop: r.stop,
                max_tokens: r.max_tokens,
                logprobs: r.logprobs,
                ignore_eos: r.ignore_eos,
                logit_bias: r.logit_bias,
                arrived: r.arrived,
                first_token: None,
                alive: n,
                queued: true,
            },
        );
        let mut slot = Slot::new(id, 0, None, r.prompt, 0, sampler, r.grammar.map(Matcher::new));
        slot.forks = n - 1;
        self.waiting.push_back(slot);
    }

    fn embed(&mut self, r: EmbedRequest) {
        if r.reply.is_closed() {
            return;
        }
        let prev = self.engine.output();
        let res = self.engine.set_output(Output::Hidden).and_then(|()| {
            let mut out = Vec::with_capacity(r.inputs.len());
            for ids in &r.inputs {
                out.push(self.embed_one(ids, r.normalize)?);
            }
            Ok(out)
        });
        if let Err(e) = self.engine.set_output(prev) {
            tracing::error!("cannot restore the engine's output: {e}");
        }
        let _ = r.reply.send(res);
    }

    /// One input's mean-pooled final hidden state, its prompt fed in
    /// chunks of the step budget on a sequence of its own.
    fn embed_one(&mut self, ids: &[u32], normalize: bool) -> rocmforge::Result<Vec<f32>> {
        let d = self.model.cfg.n_embd;
        let seq = self.engine.add_seq()?;
        let mut sum = vec![0f64; d];
        let mut done = 0;
        let fed = loop {
            if done == ids.len() {
                break Ok(());
            }
            let n = (ids.len() - done).min(self.opts.batch_tokens);
            let rows: Vec<BatchRow> = (0..n).map(|k| BatchRow { seq, token: ids[done + k], pos: done + k, logits: true }).collect();
            let r = self.engine.decode(&rows);
            // generating sequences the pool made room from are recomputed later
            self.requeue_preempted();
            if let Err(e) = r {
                break Err(e);
            }
            for k in 0..n {
                if let Some(h) = self.engine.hidden(k) {
                    for (a, &x) in sum.iter_mut().zip(h) {
                        *a += x as f64;
                    }
                }
            }
            done += n;
        };
        let _ = self.engine.remove_seq(seq);
        fed?;
        let mut v: Vec<f32> = sum.iter().map(|&x| (x / ids.len().max(1) as f64) as f32).collect();
        if normalize {
            let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
            }
        }
        Ok(v)
    }

    /// Forget the work of clients that went away, and free their sequences.
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self.jobs.iter().filter(|(_, j)| j.events.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.finish_job(id, End::Cancelled);
        }
    }

    /// A job leaves, and gives back every sequence it holds.
    fn finish_job(&mut self, id: u64, how: End) {
        let Some(job) = self.jobs.remove(&id) else { return };
        if job.queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        for s in self.running.iter().chain(self.waiting.iter()).filter(|s| s.job == id) {
            if let Some(seq) = s.seq {
                let _ = self.engine.remove_seq(seq);
            }
        }
        self.running.retain(|s| s.job != id);
        self.waiting.retain(|s| s.job != id);
        match how {
            End::Cancelled => self.metrics.cancelled.fetch_add(1, Ordering::Relaxed),
            End::Failed => self.metrics.failed.fetch_add(1, Ordering::Relaxed),
            End::Done => {
                self.metrics.e2e.observe(job.arrived.elapsed().as_secs_f64());
                self.metrics.requests_done.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Admit waiting slots, first come first served, while there is room.
    fn admit(&mut self) {
        while let Some(s) = self.waiting.front() {
            // a slot with forks to make needs room for all its choices, and
            // so do the running ones that will still fork (HTTP refuses n > parallel)
            let used: usize = self.running.iter().map(|r| 1 + r.forks).sum();
            if used + 1 + s.forks > self.opts.parallel {
                break;
            }
            let mut s = self.waiting.pop_front().expect("front");
            let seq = match self.engine.add_seq() {
                Ok(q) => q,
                Err(e) => {
                    self.fail(s.job, &format!("cannot start a sequence: {e}"));
                    continue;
                }
            };
            s.seq = Some(seq);
            // the prefix cache; the last token is always fed again, for its logits
            let reused = self.engine.reuse_prefix(seq, &s.ctx).unwrap_or(0);
            s.done = reused.min(s.ctx.len() - 1);
            if s.done < reused {
                let _ = self.engine.keep(seq, s.done);
            }
            let job = self.jobs.get_mut(&s.job).expect("a slot's job");
            if job.queued {
                job.queued = false;
                self.queued.fetch_sub(1, Ordering::SeqCst);
                let _ = job.events.send(Event::Started { cached: s.done });
                if reused > 0 {
                    self.metrics.prefix_hits.fetch_add(1, Ordering::Relaxed);
                    self.metrics.prefix_tokens.fetch_add(s.done as u64, Ordering::Relaxed);
                }
            }
            self.running.push(s);
        }
    }

    fn fail(&mut self, job: u64, msg: &str) {
        if let Some(j) = self.jobs.get(&job) {
            let _ = j.events.send(Event::Failed(msg.to_string()));
        }
        tracing::error!("request failed: {msg}");
        self.finish_job(job, End::Failed);
    }

    /// Gauges for /metrics.
    fn publish(&self) {
        let m = &self.metrics;
        m.running.store(self.running.len(), Ordering::Relaxed);
        m.waiting.store(self.waiting.len(), Ordering::Relaxed);
        let st = self.engine.stats();
        m.kv_used.store(st.blocks_used, Ordering::Relaxed);
        m.kv_total.store(st.blocks_total, Ordering::Relaxed);
        m.kv_cached.store(st.blocks_cached, Ordering::Relaxed);
    }

    fn step(&mut self) {
        // decode rows first, then prompt chunks in admission order
        let budget = self.opts.batch_tokens;
        let mut rows: Vec<BatchRow> = Vec::new();
        let mut take: Vec<(usize, usize)> = Vec::new(); // (slot index, rows)
        let mut order: Vec<usize> = (0..self.running.len()).filter(|&i| self.running[i].ctx.len() - self.running[i].done == 1).collect();
        order.extend((0..self.running.len()).filter(|&i| self.running[i].ctx.len() - self.running[i].done > 1));
        for i in order {
            let s = &self.running[i];
            let left = s.ctx.len() - s.done;
            let n = left.min(budget.saturating_sub(rows.len()));
            if n == 0 {
                continue;
            }
            let seq = s.seq.expect("running slots have a sequence");
            for k in 0..n {
                let pos = s.done + k;
                rows.push(BatchRow { seq, token: s.ctx[pos], pos, logits: pos + 1 == s.ctx.len() });
            }
            take.push((i, n));
        }
        if rows.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let out = match self.candidates_needed(&take) {
            Some(k) => Output::Top(k),
            None => Output::Logits,
        };
        if self.engine.output() != out {
            if let Err(e) = self.engine.set_output(out) {
                tracing::error!("cannot switch the engine's output to {out:?}: {e}");
            }
        }
        if let Err(e) = self.engine.decode(&rows) {
            // the checks passed before: a backend error fails every request in the step
            let jobs: Vec<u64> = take.iter().map(|&(i, _)| self.running[i].job).collect();
            for j in jobs {
                self.fail(j, &format!("the engine failed: {e}"));
            }
            self.requeue_preempted();
            return;
        }
        self.metrics.steps.observe(rows.len() as f64);
        tracing::trace!("step: {} rows in {:?}", rows.len(), t0.elapsed());
        // where each slot's rows are, before anything moves
        let mut row0 = 0;
        let mut placed: Vec<(usize, usize, usize)> = Vec::new(); // (slot index, rows, first row)
        for &(i, n) in &take {
            placed.push((i, n, row0));
            row0 += n;
        }
        let preempted: Vec<SeqId> = self.engine.preempted().to_vec();
        let mut finished: Vec<usize> = Vec::new();
        let mut forks: Vec<Slot> = Vec::new();
        let mut failed: Vec<(u64, String)> = Vec::new();
        for (i, n, r0) in placed {
            let seq = self.running[i].seq.expect("running");
            if preempted.contains(&seq) {
                continue;
            }
            self.running[i].done += n;
            let s = &self.running[i];
            if s.done < s.ctx.len() {
                continue;
            }
            let row = r0 + n - 1;
            let logits = match self.engine.top(row) {
                Some((ids, logits, lse)) => Dist::Top { ids: ids.to_vec(), logits: logits.to_vec(), lse },
                None => Dist::Full(self.engine.logits(row).expect("the last row asked for logits").to_vec()),
            };
            // the other choices fork from the finished prompt and sample the same logits
            if self.running[i].forks > 0 {
                let k = std::mem::take(&mut self.running[i].forks);
                for c in 1..=k {
                    match self.engine.fork(seq) {
                        Ok(q) => {
                            let p = &self.running[i];
                            let mut params = p.sampler.params.clone();
                            params.seed = params.seed.wrapping_add(c as u64);
                            let mut f = Slot::new(p.job, c, Some(q), p.ctx.clone(), p.done, Sampler::new(params), p.matcher.clone());
                            f.n_prompt = p.n_prompt;
                            if self.sample(&mut f, &logits) {
                                self.end_slot(&mut f, None);
                            } else {
                                forks.push(f);
                            }
                        }
                        Err(e) => {
                            failed.push((self.running[i].job, format!("cannot fork for choice {c}: {e}")));
                            break;
                        }
                    }
                }
            }
            let mut s = std::mem::replace(&mut self.running[i], placeholder());
            let done = self.sample(&mut s, &logits);
            if done {
                self.end_slot(&mut s, None);
                finished.push(i);
            }
            self.running[i] = s;
        }
        // finished slots leave (their sequences are already removed)
        let mut idx = 0;
        self.running.retain(|_| {
            idx += 1;
            !finished.contains(&(idx - 1))
        });
        self.running.extend(forks);
        self.requeue_preempted();
        failed.append(&mut self.sample_failed);
        for (job, msg) in failed {
            self.fail(job, &msg);
        }
        let ended: Vec<u64> = self.jobs.iter().filter(|(_, j)| j.alive == 0).map(|(&id, _)| id).collect();
        for id in ended {
            self.finish_job(id, End::Done);
        }
    }

    /// Preempted sequences lost their positions: their slots go back to
    /// the front of the queue and recompute `ctx` when admitted again.
    fn requeue_preempted(&mut self) {
        let pre: Vec<SeqId> = self.engine.preempted().to_vec();
        if pre.is_empty() {
            return;
        }
        // the engine lists the newest first; pushed to the front in that
        // order, the oldest ends up first and runs first again
        for seq in pre.iter() {
            let Some(i) = self.running.iter().position(|s| s.seq == Some(*seq)) else { continue };
            let mut s = self.running.remove(i);
            let _ = self.engine.remove_seq(*seq);
            s.seq = None;
            s.done = 0;
            self.metrics.preempted.fetch_add(1, Ordering::Relaxed);
            self.waiting.push_front(s);
        }
    }

    /// The candidates per row a step needs, if top candidates are enough
    /// for every choice that samples in it: greedy, no penalties, no
    /// grammar; enough for its logprobs and to skip the end-of-generation
    /// tokens when it ignores them.
    fn candidates_needed(&self, take: &[(usize, usize)]) -> Option<usize> {
        let n_eog = self.n_eog;
        let mut k = 1;
        for &(i, n) in take {
            let s = &self.running[i];
            if s.done + n < s.ctx.len() {
                continue; // no logits this step
            }
            let p = &s.sampler.params;
            let job = &self.jobs[&s.job];
            let plain = p.temperature <= 0.0 && p.repeat_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0 && s.matcher.is_none() && job.logit_bias.is_empty();
            if !plain {
                return None;
            }
            k = k.max(job.logprobs.unwrap_or(0) + 1 + if job.ignore_eos { n_eog } else { 0 });
        }
        (k <= TOP_MAX.min(self.model.cfg.n_vocab)).then_some(k)
    }

    /// Pick a slot's next token and send what is complete. True when the
    /// choice is finished.
    fn sample(&mut self, s: &mut Slot, dist: &Dist) -> bool {
        let job = self.jobs.get(&s.job).expect("a slot's job");
        let ignore_eos = job.ignore_eos;
        let vocab = &self.model.tokenizer.vocab;
        let raw = match dist {
            Dist::Full(raw) => raw.as_slice(),
            Dist::Top { ids, .. } => {
                // greedy over the candidates (largest first, ties to the lower id, as argmax)
                let tok = ids.iter().copied().find(|&t| !(ignore_eos && vocab.is_eog(t))).unwrap_or(ids[0]);
                return self.take_token(s, tok, dist);
            }
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        let logits = &mut self.scratch;
        for &(t, b) in &job.logit_bias {
            logits[t as usize] += b;
        }
        if let Some(m) = &s.matcher {
            let pieces: Vec<&[u8]> = self.pieces.iter().map(|p| p.as_slice()).collect();
            let ids: Vec<u32> = (0..pieces.len() as u32).collect();
            let ok = m.allowed_mask_tokens(&ids, &pieces);
            let can_end = m.can_end();
            for (t, l) in logits.iter_mut().enumerate() {
                let allowed = if vocab.is_eog(t as u32) { can_end } else { ok[t] };
                if !allowed {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        // a grammar that is complete allows only the end, ignore_eos or not
        if ignore_eos && !s.matcher.as_ref().is_some_and(|m| m.can_end()) {
            for (t, l) in logits.iter_mut().enumerate() {
                if vocab.is_eog(t as u32) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let tok = match s.sampler.sample(logits) {
            Ok(t) => t,
            Err(e) => {
                // the whole request fails (after the step: see `step`)
                self.sample_failed.push((s.job, format!("sampling failed: {e}")));
                return true;
            }
        };
        self.take_token(s, tok, dist)
    }

    /// The choice's next token is `tok`: record it, send its text.
    fn take_token(&mut self, s: &mut Slot, tok: u32, dist: &Dist) -> bool {
        let job = &self.jobs[&s.job];
        let (ignore_eos, max_tokens, want_lp) = (job.ignore_eos, job.max_tokens, job.logprobs);
        let vocab = &self.model.tokenizer.vocab;
        let now = Instant::now();
        let job = self.jobs.get_mut(&s.job).expect("a slot's job");
        if job.first_token.is_none() {
            job.first_token = Some(now);
            self.metrics.ttft.observe(now.duration_since(job.arrived).as_secs_f64());
        }
        if let Some(t) = s.last_token {
            self.metrics.itl.observe(now.duration_since(t).as_secs_f64());
        }
        s.last_token = Some(now);
        if vocab.is_eog(tok) && !ignore_eos {
            return self.flush(s, Finish::Stop);
        }
        s.sampler.accept(tok);
        if let Some(m) = &mut s.matcher {
            if m.accept_token(tok, &self.pieces[tok as usize]).is_err() {
                return self.flush(s, Finish::Stop);
            }
        }
        s.n_gen += 1;
        self.metrics.gen_tokens.fetch_add(1, Ordering::Relaxed);
        let text = s.decoder.push(&self.model.tokenizer, tok, false).unwrap_or_default();
        if let Some(k) = want_lp {
            let lp = logprob_of(dist, tok, k, &self.model, &text);
            s.held_lp.push((s.held.len() + text.len(), lp));
        }
        s.held.push_str(&text);
        s.ctx.push(tok);
        let job = &self.jobs[&s.job];
        if let Some(cut) = job.stop.iter().filter_map(|st| s.held.find(st.as_str())).min() {
            s.held.truncate(cut);
            return self.flush(s, Finish::Stop);
        }
        if s.n_gen >= max_tokens || s.ctx.len() >= self.engine.n_ctx() {
            return self.flush(s, Finish::Length);
        }
        // send all but a tail that may begin a stop string
        let keep = rocmforge::generate::held_stop_prefix(&s.held, &job.stop);
        let send = s.held.len() - keep;
        if send > 0 || !s.held_lp.is_empty() {
            self.send(s, send);
        }
        false
    }

    /// Send the first `n` bytes of the held text, with the logprobs of the
    /// tokens that end inside them.
    fn send(&mut self, s: &mut Slot, n: usize) {
        let text: String = s.held.drain(..n).collect();
        let k = s.held_lp.iter().take_while(|(end, _)| *end <= n).count();
        let lps: Vec<TokenLogprob> = s.held_lp.drain(..k).map(|(_, lp)| lp).collect();
        for (end, _) in &mut s.held_lp {
            *end -= n;
        }
        if text.is_empty() && lps.is_empty() {
            return;
        }
        let job = &self.jobs[&s.job];
        let _ = job.events.send(Event::Text { choice: s.choice, text, logprobs: lps });
    }

    /// The choice ends: send what is held and the finish reason.
    /// The bytes of a character the output ended inside are dropped: they
    /// are not text, and the tokens' strings join to what is sent.
    fn flush(&mut self, s: &mut Slot, finish: Finish) -> bool {
        s.decoder.flush();
        // a stop string cut the text: tokens past the cut go, and the one
        // it cut keeps the part before it (the tokens' texts join to the text)
        let n = s.held.len();
        let mut start = 0;
        s.held_lp.retain_mut(|(end, lp)| {
            let keep = start < n;
            if keep && *end > n {
                lp.text.truncate(n - start);
                *end = n;
            }
            start = *end;
            keep
        });
        self.send(s, n);
        let job = &self.jobs[&s.job];
        let _ = job.events.send(Event::Done { choice: s.choice, finish, tokens: s.n_gen.min(usize::MAX - 1) });
        true
    }

    /// A finished slot gives its sequence back and counts down its job.
    fn end_slot(&mut self, s: &mut Slot, _why: Option<&str>) {
        if let Some(seq) = s.seq.take() {
            let _ = self.engine.remove_seq(seq);
        }
        if let Some(j) = self.jobs.get_mut(&s.job) {
            j.alive = j.alive.saturating_sub(1);
        }
    }
}

impl Slot {
    /// A choice that holds `done` positions of `ctx` (its prompt: `n_prompt`
    /// is `ctx.len()`), with nothing generated or sent yet.
    fn new(job: u64, choice: usize, seq: Option<SeqId>, ctx: Vec<u32>, done: usize, sampler: Sampler, matcher: Option<Matcher>) -> Slot {
        Slot {
            job,
            choice,
            seq,
            n_prompt: ctx.len(),
            ctx,
            done,
            forks: 0,
            sampler,
            matcher,
            decoder: StreamDecoder::new(),
            held: String::new(),
            held_lp: Vec::new(),
            n_gen: 0,
            last_token: None,
        }
    }
}

/// A slot that stands in for one taken out of `running` while it samples.
fn placeholder() -> Slot {
    Slot::new(u64::MAX, 0, None, Vec::new(), 0, Sampler::new(SamplerParams::greedy()), None)
}

/// Log-softmax of the model's logits at `tok`, and the `k` best alternatives
/// (from the engine's candidates, or selected on the host by the library's
/// `TopRows`, the reference of the device selection).
fn logprob_of(dist: &Dist, tok: u32, k: usize, model: &Model, text: &str) -> TokenLogprob {
    let tokz = &model.tokenizer;
    let piece = |t: u32| String::from_utf8_lossy(tokz.token_to_piece(t, false).unwrap_or(&[])).into_owned();
    let host;
    let (ids, logits, lse, chosen) = match dist {
        Dist::Top { ids, logits, lse } => (ids.as_slice(), logits.as_slice(), *lse, logits[ids.iter().position(|&t| t == tok).unwrap_or(0)]),
        Dist::Full(raw) => {
            host = {
                let mut t = TopRows::new(k.max(1));
                t.push_row(raw);
                t
            };
            let (ids, logits, lse) = host.row(0);
            (ids, logits, lse, raw[tok as usize])
        }
    };
    let top = ids.iter().zip(logits).take(k).map(|(&t, &l)| (piece(t), (l - lse).min(0.0))).collect();
    TokenLogprob { text: text.to_string(), bytes: tokz.token_to_piece(tok, false).unwrap_or(&[]).to_vec(), logprob: (chosen - lse).min(0.0), top }
}
