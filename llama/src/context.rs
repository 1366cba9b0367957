//! `llama_context`: a ROCmForge [`Engine`] over the model, with llama.cpp's
//! view of it: sequence ids chosen by the caller (mapped to the engine's),
//! positions given or tracked, logits per batch index, and the memory
//! calls (`llama_memory_*`) on those sequences.

use std::collections::BTreeMap;

use rocmforge::engine::{BatchRow, Engine, EngineOptions, SeqId};
use rocmforge::{Error, Output};

use crate::log::{error, warning};
use crate::model::LlamaModel;
use crate::types::*;

/// What `llama_get_memory` hands out: a handle back to its context.
#[repr(C)]
pub struct Memory {
    pub ctx: *mut Context,
}

pub struct Context {
    pub model: *const LlamaModel,
    /// None for a vocabulary-only model: such a context tokenizes, never
    /// decodes; and for an encoder, which decodes without one
    /// ([`Context::decode_encoder`]).
    pub engine: Option<Engine>,
    /// The model is a bidirectional encoder (`nomic-bert`): every batch is
    /// encoded on its own, per sequence, with no memory (llama.cpp's
    /// semantics for BERT-like models).
    pub encoder: bool,
    /// llama.cpp sequence id → the engine's.
    pub seqs: BTreeMap<llama_seq_id, SeqId>,
    /// Where a sequence's llama.cpp positions differ from the engine's
    /// (absent: they are equal).
    pub places: BTreeMap<llama_seq_id, Place>,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_seq_max: u32,
    /// Sequence ids a batch may use: below n_seq_max, or below
    /// LLAMA_MAX_SEQ with `kv_unified` (llama.cpp's rule).
    pub seq_limit: u32,
    pub n_threads: i32,
    pub n_threads_batch: i32,
    pub embeddings: bool,
    pub pooling: i32,
    pub n_vocab: usize,
    /// The last decode's logits: one n_vocab row per output, in batch order.
    pub logits: Vec<f32>,
    /// For each index of the last batch, its output row (or -1).
    pub out_row: Vec<i32>,
    /// With `embeddings`: the last decode's final hidden states, one
    /// n_embd row per output (pooling NONE), and each sequence's pooled one.
    pub emb: Vec<f32>,
    pub emb_seq: BTreeMap<llama_seq_id, Vec<f32>>,
    pub n_embd: usize,
    pub memory: Memory,
    /// Scratch for `llama_sampler_sample`: the candidates of one row.
    pub cand: Vec<llama_token_data>,
    pub perf: llama_perf_context_data,
    pub t_start: std::time::Instant,
    /// ROCMFORGE_LLAMA_TIMING=1: time spent in the engine and in this
    /// layer (batch conversion, logits copies, sampling over the vocabulary),
    /// printed to stderr when the context is freed.
    pub timing: Option<Timing>,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Timing {
    pub decodes: u64,
    pub samples: u64,
    pub engine_s: f64,
    pub layer_s: f64,
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(t) = self.timing {
            eprintln!(
                "rocmforge-llama timing: {} decodes, {} samples; engine {:.1} ms, compatibility layer {:.1} ms ({:.2}% of the engine's time)",
                t.decodes,
                t.samples,
                t.engine_s * 1e3,
                t.layer_s * 1e3,
                100.0 * t.layer_s / t.engine_s.max(1e-12)
            );
        }
    }
}

/// A sequence's llama.cpp positions against the engine's, which always
/// hold positions `0..len` in order (a key is turned for its engine
/// position, and only distances matter to attention):
/// - llama.cpp position = engine position + `off`;
/// - `hole`: engine positions `llama_memory_seq_rm` removed from the
///   middle, still in the cache until the `llama_memory_seq_add` that
///   closes the gap moves the later ones down (a context shift).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place {
    pub off: i64,
    pub hole: Option<(usize, usize)>,
}

/// The first bytes of a state.
const MAGIC: &[u8; 8] = b"RFLLST02";

/// The length of the state at `p` (its own lengths, read field by field,
/// for `llama_set_state_data`, which gets no size), if it is one. The
/// layout is [`Context::state_bytes`]'.
///
/// # Safety
/// `p` points at a state written by `llama_state_get_data`, or at least 8
/// readable bytes.
pub unsafe fn state_len(p: *const u8) -> Option<usize> {
    if p.is_null() || std::slice::from_raw_parts(p, 8) != MAGIC {
        return None;
    }
    let u32_at = |off: usize| u32::from_le_bytes(std::ptr::read_unaligned(p.add(off) as *const [u8; 4])) as usize;
    // n_vocab, n_layer, kv_dim, v_dim, RoPE table
    let row = u32_at(12).checked_mul(u32_at(16).checked_add(u32_at(20))?)?.checked_mul(2)?;
    let mut off = 28;
    let n = u32_at(off);
    off += 4;
    for _ in 0..n {
        // id, off (i64), gap (2 × u32), then the length
        let len = u32_at(off + 20);
        off = off.checked_add(24)?.checked_add(len.checked_mul(4)?)?.checked_add(len.checked_mul(row)?)?;
    }
    let nr = u32_at(off);
    off = off.checked_add(4)?.checked_add(nr.checked_mul(4)?)?;
    let nl = u64::from_le_bytes(std::ptr::read_unaligned(p.add(off) as *const [u8; 8]));
    off = off.checked_add(8)?.checked_add(usize::try_from(nl).ok()?.checked_mul(4)?)?;
    (off <= isize::MAX as usize).then_some(off)
}

/// llama.cpp's most sequences in one context (`LLAMA_MAX_SEQ`).
pub const LLAMA_MAX_SEQ: u32 = 256;

fn n_batch(p: &llama_context_params, n_ctx: u32) -> u32 {
    p.n_batch.min(n_ctx).max(1)
}

/// `llama_decode`'s return codes.
pub const DECODE_OK: i32 = 0;
pub const DECODE_NO_SLOT: i32 = 1;
pub const DECODE_INVALID: i32 = -1;
pub const DECODE_FAILED: i32 = -3;

impl Context {
    pub fn new(model: &LlamaModel, p: &llama_context_params) -> Result<Box<Context>, String> {
        let n_ctx = if p.n_ctx == 0 { model.n_ctx_train.max(0) as u32 } else { p.n_ctx };
        let n_seq_max = p.n_seq_max.max(1);
        if n_seq_max > LLAMA_MAX_SEQ {
            return Err(format!("n_seq_max must be <= {LLAMA_MAX_SEQ}"));
        }
        let encoder = model.model.as_ref().is_some_and(|m| m.is_encoder());
        let engine = match &model.model {
            None => None,
            Some(_) if encoder => None,
            Some(m) => {
                if n_ctx == 0 {
                    return Err("n_ctx is 0 and the model gives no training context".into());
                }
                // n_ctx positions in all, as llama.cpp's unified cache, plus a
                // block per further sequence for copy-on-write
                let blocks = (n_ctx as usize).div_ceil(rocmforge::kv::BLOCK) + n_seq_max as usize;
                let budget = blocks * rocmforge::kv::BLOCK * m.cfg.kv_bytes_per_position();
                Some(Engine::new(m.clone(), EngineOptions { n_ctx: n_ctx as usize, kv_budget: budget, preempt: false }).map_err(|e| e.to_string())?)
            }
        };
        let mut ctx = Box::new(Context {
            model: model as *const LlamaModel,
            engine,
            encoder,
            seqs: BTreeMap::new(),
            places: BTreeMap::new(),
            n_ctx,
            // llama.cpp's clamps: a causal model's batch is at most n_ctx; a
            // micro-batch of 0 is the whole batch
            n_batch: n_batch(p, n_ctx),
            n_ubatch: if p.n_ubatch == 0 { n_batch(p, n_ctx) } else { p.n_ubatch.min(n_batch(p, n_ctx)) },
            n_seq_max,
            seq_limit: if p.kv_unified { LLAMA_MAX_SEQ } else { n_seq_max },
            n_threads: p.n_threads,
            n_threads_batch: p.n_threads_batch,
            embeddings: p.embeddings,
            pooling: p.pooling_type,
            n_vocab: model.vocab.n_tokens() as usize,
            logits: Vec::new(),
            out_row: Vec::new(),
            emb: Vec::new(),
            emb_seq: BTreeMap::new(),
            n_embd: model.n_embd.max(0) as usize,
            memory: Memory { ctx: std::ptr::null_mut() },
            cand: Vec::new(),
            perf: llama_perf_context_data::default(),
            t_start: std::time::Instant::now(),
            timing: std::env::var_os("ROCMFORGE_LLAMA_TIMING").filter(|v| !v.is_empty() && v != "0").map(|_| Timing::default()),
        });
        ctx.perf.t_load_ms = model.t_load_ms;
        // memory.ctx is set by the caller once the context has its final address
        Ok(ctx)
    }

    /// The pooling in effect: the context's, else the model's
    /// (`{arch}.pooling_type`), else none (0; 1 mean, 2 CLS, 3 last).
    pub fn pooling(&self) -> i32 {
        if self.pooling >= 0 {
            return self.pooling;
        }
        let m = self.model();
        m.meta_value(format!("{}.pooling_type", m.arch).as_bytes()).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0)
    }

    pub fn model(&self) -> &LlamaModel {
        // SAFETY: llama.h requires a model to outlive its contexts.
        unsafe { &*self.model }
    }

    /// The engine's sequence for a llama.cpp id, made on first use.
    fn seq(&mut self, id: llama_seq_id) -> Result<SeqId, Error> {
        if let Some(&s) = self.seqs.get(&id) {
            return Ok(s);
        }
        let e = self.engine.as_mut().ok_or_else(|| Error::InvalidArgument("a vocabulary-only model has no memory".into()))?;
        let s = e.add_seq()?;
        self.seqs.insert(id, s);
        Ok(s)
    }

    fn place(&self, id: llama_seq_id) -> Place {
        self.places.get(&id).copied().unwrap_or_default()
    }

    fn set_place(&mut self, id: llama_seq_id, p: Place) {
        if p == Place::default() {
            self.places.remove(&id);
        } else {
            self.places.insert(id, p);
        }
    }

    /// After a failed shift: a sequence whose cache the engine cut (a
    /// failed write) no longer matches its place, so it goes whole; one the
    /// engine left as it was (no room, a failed read) stays.
    fn drop_if_changed(&mut self, id: llama_seq_id, len: usize) {
        if self.len_of(id) != len {
            warning!("sequence {id}: its cache was lost in the failed shift; the sequence is removed");
            self.drop_seq(id);
        }
    }

    /// Forget a sequence: its engine sequence and its place.
    fn drop_seq(&mut self, id: llama_seq_id) {
        if let (Some(s), Some(e)) = (self.seqs.remove(&id), self.engine.as_mut()) {
            let _ = e.remove_seq(s);
        }
        self.places.remove(&id);
    }

    fn len_of(&self, id: llama_seq_id) -> usize {
        match (self.seqs.get(&id), &self.engine) {
            (Some(&s), Some(e)) => e.seq_len(s).unwrap_or(0),
            _ => 0,
        }
    }

    /// `llama_decode`: every token of the batch appended to each of its
    /// sequences; the logits of the tokens the batch flags.
    ///
    /// # Safety
    /// The batch's arrays hold `n_tokens` entries each (or are NULL), as llama.h requires.
    pub unsafe fn decode(&mut self, b: &llama_batch) -> i32 {
        let t0 = std::time::Instant::now();
        if self.encoder {
            return self.decode_encoder(b, t0);
        }
        if self.engine.is_none() {
            error!("llama_decode: the model was loaded with vocab_only");
            return DECODE_INVALID;
        }
        let n = match self.batch_len(b) {
            Ok(n) => n,
            Err(code) => return code,
        };
        let pooling = self.pooling();
        let pooled = self.embeddings && pooling != 0;
        if pooled && !(1..=3).contains(&pooling) {
            error!("llama_decode: pooling type {pooling} is not supported (none, mean, CLS and last are)");
            return DECODE_INVALID;
        }
        let mut rows: Vec<BatchRow> = Vec::with_capacity(n);
        // the llama.cpp sequence of each output row (for pooling)
        let mut out_seq: Vec<llama_seq_id> = Vec::new();
        // for each row that wants logits, its batch index
        let mut row_of_out: Vec<usize> = Vec::new();
        let mut out_row = vec![-1i32; n];
        let mut next: BTreeMap<llama_seq_id, usize> = BTreeMap::new();
        let mut n_out = 0;
        #[allow(clippy::needless_range_loop)] // i indexes the C arrays too
        for i in 0..n {
            let tok = *b.token.add(i);
            if tok < 0 || tok as usize >= self.n_vocab {
                error!("llama_decode: invalid token[{i}] = {tok}");
                return DECODE_INVALID;
            }
            let ids: Vec<llama_seq_id> = if b.seq_id.is_null() || b.n_seq_id.is_null() {
                vec![0]
            } else {
                let k = *b.n_seq_id.add(i);
                let p = *b.seq_id.add(i);
                if k <= 0 || p.is_null() {
                    error!("llama_decode: token {i} belongs to no sequence");
                    return DECODE_INVALID;
                }
                // a sequence named twice counts once (llama.cpp's sets)
                let mut ids: Vec<llama_seq_id> = Vec::with_capacity(k as usize);
                for j in 0..k as usize {
                    let sid = *p.add(j);
                    if !ids.contains(&sid) {
                        ids.push(sid);
                    }
                }
                ids
            };
            // with embeddings every token is an output (llama.cpp's output_all)
            let want = self.embeddings || if b.logits.is_null() { i + 1 == n } else { *b.logits.add(i) != 0 };
            if want {
                out_row[i] = n_out as i32;
                n_out += 1;
            }
            for (j, &sid) in ids.iter().enumerate() {
                if sid < 0 || sid as u32 >= self.seq_limit {
                    error!("llama_decode: invalid seq_id[{i}] = {sid} >= {}", self.seq_limit);
                    return DECODE_INVALID;
                }
                let place = self.place(sid);
                if let Some((h0, h1)) = place.hole {
                    error!("llama_decode: positions {}..{} of sequence {sid} were removed from the middle and the gap is still open (ROCmForge keeps a sequence's positions contiguous: close it with llama_memory_seq_add, as a context shift does)", h0 as i64 + place.off, h1 as i64 + place.off);
                    return DECODE_INVALID;
                }
                let expect = *next.entry(sid).or_insert_with(|| self.len_of(sid));
                let want_pos = expect as i64 + place.off;
                // no position (NULL, or negative from llama_batch_ext): the sequence's next
                let pos = if b.pos.is_null() || *b.pos.add(i) < 0 { want_pos } else { *b.pos.add(i) as i64 };
                if pos != want_pos {
                    error!("llama_decode: token {i} of sequence {sid} is at position {pos}, but the sequence's next position is {want_pos} (ROCmForge appends in order; remove positions with llama_memory_seq_rm first)");
                    return DECODE_INVALID;
                }
                next.insert(sid, expect + 1);
                let pos = expect;
                let seq = match self.seq(sid) {
                    Ok(s) => s,
                    Err(e) => {
                        error!("llama_decode: {e}");
                        return DECODE_FAILED;
                    }
                };
                let first = j == 0;
                if want && first {
                    row_of_out.push(rows.len());
                    out_seq.push(sid);
                }
                rows.push(BatchRow { seq, token: tok as u32, pos, logits: want && first });
            }
        }
        let e = self.engine.as_mut().expect("checked");
        let out = if self.embeddings { Output::Hidden } else { Output::Logits };
        if e.output() != out {
            if let Err(err) = e.set_output(out) {
                error!("llama_decode: {err}");
                return DECODE_FAILED;
            }
        }
        let te = std::time::Instant::now();
        let r = e.decode(&rows);
        let engine_s = te.elapsed().as_secs_f64();
        match r {
            Ok(()) => {}
            Err(Error::KvExhausted(m)) => {
                warning!("llama_decode: {m}");
                return DECODE_NO_SLOT;
            }
            Err(Error::InvalidArgument(m)) | Err(Error::ContextFull(m)) => {
                error!("llama_decode: {m}");
                return DECODE_INVALID;
            }
            Err(err) => {
                error!("llama_decode: {err}");
                return DECODE_FAILED;
            }
        }
        let nv = self.n_vocab;
        self.logits.clear();
        self.emb.clear();
        self.emb_seq.clear();
        if self.embeddings {
            let d = self.n_embd;
            for &r in &row_of_out {
                self.emb.extend_from_slice(e.hidden(r).expect("the row asked for output"));
            }
            if pooled {
                // mean, first (CLS) or last row of each sequence in the batch
                for (k, &sid) in out_seq.iter().enumerate() {
                    let row = &self.emb[k * d..(k + 1) * d];
                    let first = !self.emb_seq.contains_key(&sid);
                    let acc = self.emb_seq.entry(sid).or_insert_with(|| vec![0.0; d + 1]);
                    match pooling {
                        2 if !first => {}
                        2 | 3 => acc[..d].copy_from_slice(row),
                        _ => acc[..d].iter_mut().zip(row).for_each(|(a, &v)| *a += v),
                    }
                    acc[d] += 1.0;
                }
                for acc in self.emb_seq.values_mut() {
                    let cnt = acc.pop().unwrap_or(1.0);
                    if pooling == 1 {
                        acc.iter_mut().for_each(|a| *a /= cnt);
                    }
                }
            }
        } else {
            self.logits.reserve(n_out * nv);
            for &r in &row_of_out {
                self.logits.extend_from_slice(e.logits(r).expect("the row asked for logits"));
            }
        }
        self.out_row = out_row;
        if let Some(t) = self.timing.as_mut() {
            t.decodes += 1;
            t.engine_s += engine_s;
            t.layer_s += t0.elapsed().as_secs_f64() - engine_s;
        }
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        if n > 1 {
            self.perf.t_p_eval_ms += dt;
            self.perf.n_p_eval += n as i32;
        } else {
            self.perf.t_eval_ms += dt;
            self.perf.n_eval += 1;
        }
        DECODE_OK
    }

    /// `llama_decode` / `llama_encode` on an encoder (`nomic-bert`), as
    /// llama.cpp runs BERT-like models: the batch's tokens grouped by
    /// sequence (each token's first sequence), each group encoded on its
    /// own with bidirectional attention and positions 0, 1, ... in batch
    /// order, nothing kept for the next call. Every token is an output:
    /// `llama_get_embeddings(_ith)` give the final hidden states,
    /// `llama_get_embeddings_seq` each sequence's pooled one (mean, CLS or
    /// last; not normalised, as llama.cpp).
    ///
    /// # Safety
    /// As [`Context::decode`].
    unsafe fn decode_encoder(&mut self, b: &llama_batch, t0: std::time::Instant) -> i32 {
        let n = match self.batch_len(b) {
            Ok(n) => n,
            Err(code) => return code,
        };
        if !self.embeddings {
            error!("llama_decode: {} is an embedding model (an encoder): create the context with embeddings = true", self.model().arch);
            return DECODE_INVALID;
        }
        let pooling = self.pooling();
        let pool = match pooling {
            0 => None,
            p => match rocmforge::Pooling::from_llama(p as i64) {
                Some(p) => Some(p),
                None => {
                    error!("llama_decode: pooling type {pooling} is not supported (none, mean, CLS and last are)");
                    return DECODE_INVALID;
                }
            },
        };
        // each sequence's tokens, and each token's (sequence, index in it)
        let mut groups: BTreeMap<llama_seq_id, Vec<u32>> = BTreeMap::new();
        let mut at: Vec<(llama_seq_id, usize)> = Vec::with_capacity(n);
        for i in 0..n {
            let tok = *b.token.add(i);
            if tok < 0 || tok as usize >= self.n_vocab {
                error!("llama_decode: invalid token[{i}] = {tok}");
                return DECODE_INVALID;
            }
            let sid = if b.seq_id.is_null() || b.n_seq_id.is_null() {
                0
            } else {
                let (k, p) = (*b.n_seq_id.add(i), *b.seq_id.add(i));
                if k <= 0 || p.is_null() {
                    error!("llama_decode: token {i} belongs to no sequence");
                    return DECODE_INVALID;
                }
                *p
            };
            if sid < 0 || sid as u32 >= self.seq_limit {
                error!("llama_decode: invalid seq_id[{i}] = {sid} >= {}", self.seq_limit);
                return DECODE_INVALID;
            }
            let g = groups.entry(sid).or_default();
            at.push((sid, g.len()));
            g.push(tok as u32);
        }
        let Some(m) = self.model().model.clone() else { return DECODE_INVALID };
        let d = self.n_embd;
        let te = std::time::Instant::now();
        let mut hidden: BTreeMap<llama_seq_id, Vec<f32>> = BTreeMap::new();
        for (&sid, toks) in &groups {
            match rocmforge::model::encoder::encode(&m, toks) {
                Ok(h) => {
                    hidden.insert(sid, h);
                }
                Err(Error::InvalidArgument(msg)) => {
                    error!("llama_decode: sequence {sid}: {msg}");
                    return DECODE_INVALID;
                }
                Err(e) => {
                    error!("llama_decode: sequence {sid}: {e}");
                    return DECODE_FAILED;
                }
            }
        }
        let engine_s = te.elapsed().as_secs_f64();
        self.logits.clear();
        self.emb.clear();
        self.emb.reserve(n * d);
        for &(sid, k) in &at {
            self.emb.extend_from_slice(&hidden[&sid][k * d..(k + 1) * d]);
        }
        self.emb_seq = match pool {
            Some(p) => hidden.iter().map(|(&sid, h)| (sid, rocmforge::model::encoder::pool(h, d, p, false))).collect(),
            None => BTreeMap::new(),
        };
        self.out_row = (0..n as i32).collect();
        if let Some(t) = self.timing.as_mut() {
            t.decodes += 1;
            t.engine_s += engine_s;
            t.layer_s += t0.elapsed().as_secs_f64() - engine_s;
        }
        self.perf.t_p_eval_ms += t0.elapsed().as_secs_f64() * 1e3;
        self.perf.n_p_eval += n as i32;
        DECODE_OK
    }

    /// A batch's token count, checked as llama.cpp checks it: at least one
    /// token, token ids (not embeddings), at most n_batch.
    fn batch_len(&self, b: &llama_batch) -> Result<usize, i32> {
        let n = b.n_tokens;
        if n <= 0 {
            error!("llama_decode: n_tokens == 0");
            return Err(DECODE_INVALID);
        }
        if b.token.is_null() {
            error!("llama_decode: embedding inputs (batch.embd) are not supported; pass token ids");
            return Err(DECODE_INVALID);
        }
        if n as u32 > self.n_batch {
            error!("llama_decode: n_tokens = {n} > n_batch = {}", self.n_batch);
            return Err(DECODE_INVALID);
        }
        Ok(n as usize)
    }

    /// The output row of batch index `i` among `n_out` outputs (negative:
    /// counted from the last output), llama.cpp's `output_resolve_row`.
    fn output_row(&self, i: i32, n_out: usize) -> Option<usize> {
        if i < 0 {
            usize::try_from(n_out as i64 + i as i64).ok()
        } else {
            match self.out_row.get(i as usize) {
                Some(&r) if r >= 0 => Some(r as usize),
                _ => None,
            }
        }
    }

    /// The embedding row of batch index `i` (pooling none; negative: from
    /// the last output).
    pub fn embd_ith(&mut self, i: i32) -> Option<&mut [f32]> {
        let d = self.n_embd;
        let row = self.output_row(i, self.emb.len() / d.max(1))?;
        self.emb.get_mut(row * d..(row + 1) * d)
    }

    /// The logits row of batch index `i` (negative: from the last output).
    pub fn logits_ith(&mut self, i: i32) -> Option<&mut [f32]> {
        let nv = self.n_vocab;
        let row = self.output_row(i, self.logits.len() / nv.max(1))?;
        self.logits.get_mut(row * nv..(row + 1) * nv)
    }

    // ---- memory -------------------------------------------------------------

    pub fn clear(&mut self) {
        if let Some(e) = self.engine.as_mut() {
            for (_, s) in std::mem::take(&mut self.seqs) {
                let _ = e.remove_seq(s);
            }
        }
        self.seqs.clear();
        self.places.clear();
    }

    fn targets(&self, id: llama_seq_id) -> Vec<llama_seq_id> {
        if id < 0 {
            self.seqs.keys().copied().collect()
        } else {
            vec![id]
        }
    }

    /// llama.cpp positions [p0, p1) (negative: from the start, to the end)
    /// of a sequence as engine positions, clamped to its length.
    fn engine_range(&self, id: llama_seq_id, p0: llama_pos, p1: llama_pos) -> (usize, usize) {
        let (len, off) = (self.len_of(id) as i64, self.place(id).off);
        let a = if p0 < 0 { 0 } else { (p0 as i64 - off).clamp(0, len) };
        let b = if p1 < 0 { len } else { (p1 as i64 - off).clamp(0, len) };
        (a as usize, b as usize)
    }

    /// Remove positions [p0, p1) (p1 < 0: to the end) of a sequence (all
    /// when id < 0). A tail is dropped and a head removed at once (the
    /// later positions keep theirs); a range in the middle stays in the
    /// cache as a gap that `seq_add` closes (a context shift), and a second
    /// gap in one sequence is refused (false).
    pub fn seq_rm(&mut self, id: llama_seq_id, p0: llama_pos, p1: llama_pos) -> bool {
        for sid in self.targets(id) {
            let (a, b) = self.engine_range(sid, p0, p1);
            let len = self.len_of(sid);
            if a >= b {
                continue;
            }
            let mut place = self.place(sid);
            let (Some(&s), Some(e)) = (self.seqs.get(&sid), self.engine.as_mut()) else { continue };
            if a == 0 && b == len {
                self.drop_seq(sid);
                continue;
            }
            if b == len {
                if e.keep(s, a).is_err() {
                    return false;
                }
                // a gap at or past the new end is gone with it
                place.hole = place.hole.filter(|&(h0, _)| h0 < a).map(|(h0, h1)| (h0, h1.min(a)));
                if place.hole.is_some_and(|(h0, h1)| h1 == a && h0 < a) {
                    // the gap reaches the end: drop it too
                    let (h0, _) = place.hole.take().expect("just checked");
                    if e.keep(s, h0).is_err() {
                        return false;
                    }
                }
            } else if a == 0 {
                // the later positions move to the front and keep their
                // llama.cpp positions; a gap the head reaches goes with it
                let b = match place.hole {
                    Some((h0, h1)) if h0 <= b => b.max(h1),
                    _ => b,
                };
                if b == len {
                    self.drop_seq(sid);
                    continue;
                }
                if let Err(err) = e.shift(s, 0, b) {
                    warning!("llama_memory_seq_rm: {err}");
                    self.drop_if_changed(sid, len);
                    return false;
                }
                place.off += b as i64;
                place.hole = place.hole.filter(|&(h0, _)| h0 > b).map(|(h0, h1)| (h0 - b, h1 - b));
            } else {
                match place.hole {
                    None => place.hole = Some((a, b)),
                    // a range that touches the gap widens it
                    Some((h0, h1)) if a <= h1 && b >= h0 => place.hole = Some((h0.min(a), h1.max(b))),
                    Some((h0, h1)) => {
                        warning!("llama_memory_seq_rm: sequence {sid} already has a gap at {}..{}; close it with llama_memory_seq_add first", h0 as i64 + place.off, h1 as i64 + place.off);
                        return false;
                    }
                }
            }
            self.set_place(sid, place);
        }
        true
    }

    /// Add `delta` to the positions [p0, p1) of a sequence (all when id < 0),
    /// llama.cpp's position shift, by turning the cached keys:
    /// - the whole sequence: its positions move (those that fall below 0
    ///   are removed);
    /// - the positions after a gap, to the left by at most the gap's
    ///   width: they move down and the gap closes (a context shift);
    /// - anything else (positions that would overlap others, or leave
    ///   unused positions between the cached ones) is refused with a
    ///   warning, and the cache stays as it was.
    pub fn seq_add(&mut self, id: llama_seq_id, p0: llama_pos, p1: llama_pos, delta: llama_pos) {
        if delta == 0 {
            return;
        }
        let delta = delta as i64;
        for sid in self.targets(id) {
            let (a, b) = self.engine_range(sid, p0, p1);
            let len = self.len_of(sid);
            if a >= b {
                continue;
            }
            let mut place = self.place(sid);
            let Some(&s) = self.seqs.get(&sid) else { continue };
            let e = self.engine.as_mut().expect("a sequence exists");
            let done = match place.hole {
                _ if a == 0 && b == len => {
                    place.off += delta;
                    Ok(())
                }
                // the positions after the gap move left into it
                Some((h0, h1)) if b == len && a >= h0 && a <= h1 && delta < 0 && -delta <= (h1 - h0) as i64 => {
                    let m = -delta as usize;
                    place.hole = (h1 - m > h0).then_some((h0, h1 - m));
                    e.shift(s, h1 - m, h1)
                }
                _ => {
                    warning!("llama_memory_seq_add: shifting positions {p0}..{p1} of sequence {sid} by {delta} is not supported (ROCmForge keeps a sequence's positions contiguous: it shifts whole sequences, and the positions after a gap left into it); the cache is unchanged");
                    continue;
                }
            };
            if let Err(err) = done {
                warning!("llama_memory_seq_add: {err}");
                self.drop_if_changed(sid, len);
                continue;
            }
            self.set_place(sid, place);
            // positions that fall below 0 are removed
            if place.off < 0 {
                self.seq_rm(sid, -1, 0);
            }
        }
    }

    /// Copy positions [p0, p1) of `src` into `dst`: supported as a copy of
    /// the source's first positions (p0 ≤ 0), which shares its blocks.
    pub fn seq_cp(&mut self, src: llama_seq_id, dst: llama_seq_id, p0: llama_pos, p1: llama_pos) {
        if src == dst || src < 0 || dst < 0 {
            return;
        }
        let (a, b) = self.engine_range(src, p0, p1);
        let place = self.place(src);
        if a > 0 || place.hole.is_some_and(|(h0, _)| h0 < b) {
            warning!("llama_memory_seq_cp: copying positions {p0}..{p1} of sequence {src} is not supported (only a sequence's first positions, before any gap)");
            return;
        }
        let Some(&s) = self.seqs.get(&src) else { return };
        let Some(e) = self.engine.as_mut() else { return };
        let f = match e.fork(s) {
            Ok(f) => f,
            Err(err) => {
                warning!("llama_memory_seq_cp: {err}");
                return;
            }
        };
        let _ = e.keep(f, b);
        self.drop_seq(dst);
        self.seqs.insert(dst, f);
        self.set_place(dst, Place { off: place.off, hole: None });
    }

    pub fn seq_keep(&mut self, id: llama_seq_id) {
        let others: Vec<llama_seq_id> = self.seqs.keys().copied().filter(|&s| s != id).collect();
        for s in others {
            self.seq_rm(s, -1, -1);
        }
    }

    pub fn pos_max(&self, id: llama_seq_id) -> llama_pos {
        match self.len_of(id) {
            0 => -1,
            n => (n as i64 - 1 + self.place(id).off) as llama_pos,
        }
    }

    pub fn pos_min(&self, id: llama_seq_id) -> llama_pos {
        match self.len_of(id) {
            0 => -1,
            // a gap never starts at 0 (seq_rm removes a head at once)
            _ => self.place(id).off as llama_pos,
        }
    }

    // ---- state ----
    //
    // A state holds each sequence's tokens, places and cached K/V (f16, as
    // every backend keeps them), and the last outputs' logits. Loading
    // writes the K/V back, so a sequence that was shifted comes back as it
    // was, and nothing is recomputed. Layout, little-endian:
    //   MAGIC, n_vocab u32, n_layer u32, kv_dim u32, v_dim u32, RoPE table
    //   u32 (the keys were turned with: LongRoPE's long or short one, by
    //   n_ctx), n_seqs u32;
    //   per sequence: id i32, off i64, gap h0 u32, h1 u32 (0, 0: none),
    //     len u32, len tokens u32, then per layer len × kv_dim K values
    //     (u16), then per layer len × v_dim V values;
    //   n_rows u32, rows i32 (output row of each batch index);
    //   n_logits u64, logits f32.

    const MAGIC: &'static [u8; 8] = MAGIC;

    /// The shape a state is made for: n_vocab, n_layer, kv_dim, v_dim and
    /// the RoPE table the cached keys were turned with.
    fn state_dims(&self) -> [usize; 5] {
        match &self.model().model {
            Some(m) => [self.n_vocab, m.cfg.n_layer, m.cfg.kv_dim(), m.cfg.v_dim(), m.cfg.rope_long(self.n_ctx as usize) as usize],
            None => [self.n_vocab, 0, 0, 0, 0],
        }
    }

    /// The state (None when a sequence's cache could not be read: a state
    /// missing a sequence would look whole).
    pub fn state_bytes(&mut self, only: Option<llama_seq_id>) -> Option<Vec<u8>> {
        let mut o = Vec::new();
        o.extend_from_slice(Self::MAGIC);
        for v in self.state_dims() {
            o.extend_from_slice(&(v as u32).to_le_bytes());
        }
        let ids: Vec<(llama_seq_id, SeqId)> = self.seqs.iter().filter(|(id, _)| only.is_none_or(|o| o == **id)).map(|(&a, &b)| (a, b)).collect();
        let mut seqs = Vec::new();
        if let Some(e) = self.engine.as_mut() {
            for (id, s) in ids {
                let toks = e.seq_tokens(s).map(|t| t.to_vec()).unwrap_or_default();
                match e.read_seq_kv(s) {
                    Ok(kv) => seqs.push((id, toks, kv)),
                    Err(err) => {
                        error!("llama_state_get_data: reading sequence {id}'s cache: {err}");
                        return None;
                    }
                }
            }
        }
        o.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
        for (id, toks, kv) in &seqs {
            let place = self.place(*id);
            let (h0, h1) = place.hole.unwrap_or((0, 0));
            o.extend_from_slice(&id.to_le_bytes());
            o.extend_from_slice(&place.off.to_le_bytes());
            o.extend_from_slice(&(h0 as u32).to_le_bytes());
            o.extend_from_slice(&(h1 as u32).to_le_bytes());
            o.extend_from_slice(&(toks.len() as u32).to_le_bytes());
            for t in toks {
                o.extend_from_slice(&t.to_le_bytes());
            }
            for layer in kv.k.iter().chain(&kv.v) {
                o.extend(layer.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        // outputs (whole-context states only)
        let (rows, logits): (&[i32], &[f32]) = if only.is_none() { (&self.out_row, &self.logits) } else { (&[], &[]) };
        o.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        for r in rows {
            o.extend_from_slice(&r.to_le_bytes());
        }
        o.extend_from_slice(&(logits.len() as u64).to_le_bytes());
        for v in logits {
            o.extend_from_slice(&v.to_le_bytes());
        }
        Some(o)
    }

    /// Restore a state (into `dest` for a one-sequence state); returns the
    /// bytes read, 0 on a malformed state, one of another model, or a
    /// cache that cannot hold it.
    pub fn set_state(&mut self, src: &[u8], dest: Option<llama_seq_id>) -> usize {
        struct R<'a>(&'a [u8], usize);
        impl R<'_> {
            fn take(&mut self, n: usize) -> Option<&[u8]> {
                let s = self.0.get(self.1..self.1.checked_add(n)?)?;
                self.1 += n;
                Some(s)
            }
            fn u32(&mut self) -> Option<u32> {
                Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
            }
            fn u64(&mut self) -> Option<u64> {
                Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
            }
            fn u16s(&mut self, n: usize) -> Option<Vec<u16>> {
                Some(self.take(n.checked_mul(2)?)?.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())
            }
        }
        let dims = self.state_dims();
        let [_, n_layer, kv_dim, v_dim, _] = dims;
        let seq_limit = self.seq_limit as i64;
        let mut r = R(src, 0);
        let parsed = (|| {
            if r.take(8)? != Self::MAGIC {
                return None;
            }
            if [r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?].map(|v| v as usize) != dims {
                return None;
            }
            let n = r.u32()? as usize;
            let mut seqs = Vec::new();
            for _ in 0..n {
                let id = r.u32()? as i32;
                let off = r.u64()? as i64;
                let (h0, h1) = (r.u32()? as usize, r.u32()? as usize);
                let len = r.u32()? as usize;
                let hole = (h1 > 0).then_some((h0, h1));
                if hole.is_some_and(|(h0, h1)| h0 == 0 || h0 >= h1 || h1 >= len) {
                    return None;
                }
                // a sequence id this context takes, and positions llama_pos holds
                let fits = |p: i64| (0..=i32::MAX as i64).contains(&p);
                if !(0..seq_limit).contains(&(id as i64)) || !fits(off) || !fits(off.checked_add(len as i64)?) {
                    return None;
                }
                let toks: Vec<u32> = (0..len).map(|_| r.u32()).collect::<Option<_>>()?;
                let k: Vec<Vec<u16>> = (0..n_layer).map(|_| r.u16s(len.checked_mul(kv_dim)?)).collect::<Option<_>>()?;
                let v: Vec<Vec<u16>> = (0..n_layer).map(|_| r.u16s(len.checked_mul(v_dim)?)).collect::<Option<_>>()?;
                seqs.push((id, Place { off, hole }, toks, rocmforge::backend::KvHost { k, v }));
            }
            let nr = r.u32()? as usize;
            let rows: Vec<i32> = (0..nr).map(|_| r.u32().map(|v| v as i32)).collect::<Option<_>>()?;
            let nl = usize::try_from(r.u64()?).ok()?;
            let logits: Vec<f32> = (0..nl).map(|_| r.u32().map(f32::from_bits)).collect::<Option<_>>()?;
            Some((seqs, rows, logits))
        })();
        let Some((seqs, rows, logits)) = parsed else {
            error!("llama_state_set_data: not a state of this model");
            return 0;
        };
        match dest {
            None => self.clear(),
            Some(d) => {
                self.seq_rm(d, -1, -1);
            }
        }
        for (id, place, toks, kv) in seqs {
            let id = dest.unwrap_or(id);
            if toks.is_empty() {
                continue;
            }
            let s = match self.seq(id) {
                Ok(s) => s,
                Err(e) => {
                    error!("llama_state_set_data: {e}");
                    return 0;
                }
            };
            let e = self.engine.as_mut().expect("a sequence exists");
            if let Err(err) = e.load_seq(s, &toks, &kv) {
                error!("llama_state_set_data: restoring sequence {id}: {err}");
                self.drop_seq(id);
                return 0;
            }
            self.set_place(id, place);
        }
        if dest.is_none() {
            self.out_row = rows;
            self.logits = logits;
        }
        r.1
    }
}
