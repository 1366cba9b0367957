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
    /// None for a vocabulary-only model: such a context tokenizes, never decodes.
    pub engine: Option<Engine>,
    /// llama.cpp sequence id → the engine's.
    pub seqs: BTreeMap<llama_seq_id, SeqId>,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_seq_max: u32,
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

/// The first bytes of a state.
const MAGIC: &[u8; 8] = b"RFLLST01";

/// The length of the state at `p` (its own lengths, read field by field,
/// for `llama_set_state_data`, which gets no size), if it is one.
///
/// # Safety
/// `p` points at a state written by `llama_state_get_data`, or at least 12
/// readable bytes.
pub unsafe fn state_len(p: *const u8) -> Option<usize> {
    if p.is_null() || std::slice::from_raw_parts(p, 8) != MAGIC {
        return None;
    }
    let u32_at = |off: usize| u32::from_le_bytes(std::ptr::read_unaligned(p.add(off) as *const [u8; 4]));
    let mut off = 12;
    let n = u32_at(off) as usize;
    off += 4;
    for _ in 0..n {
        let len = u32_at(off + 4) as usize;
        off = off.checked_add(8)?.checked_add(len.checked_mul(4)?)?;
    }
    let nr = u32_at(off) as usize;
    off = off.checked_add(4)?.checked_add(nr.checked_mul(4)?)?;
    let nl = u64::from_le_bytes(std::ptr::read_unaligned(p.add(off) as *const [u8; 8]));
    off = off.checked_add(8)?.checked_add(usize::try_from(nl).ok()?.checked_mul(4)?)?;
    (off <= isize::MAX as usize).then_some(off)
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
        let engine = match &model.model {
            None => None,
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
            seqs: BTreeMap::new(),
            n_ctx,
            n_batch: p.n_batch.max(1),
            n_ubatch: p.n_ubatch.max(1).min(p.n_batch.max(1)),
            n_seq_max,
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
        if self.engine.is_none() {
            error!("llama_decode: the model was loaded with vocab_only");
            return DECODE_INVALID;
        }
        let n = b.n_tokens;
        if n <= 0 {
            error!("llama_decode: n_tokens == 0");
            return DECODE_INVALID;
        }
        if b.token.is_null() {
            error!("llama_decode: embedding inputs (batch.embd) are not supported; pass token ids");
            return DECODE_INVALID;
        }
        if n as u32 > self.n_batch {
            error!("llama_decode: n_tokens = {n} > n_batch = {}", self.n_batch);
            return DECODE_INVALID;
        }
        let n = n as usize;
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
                (0..k as usize).map(|j| *p.add(j)).collect()
            };
            // with embeddings every token is an output (llama.cpp's output_all)
            let want = self.embeddings || if b.logits.is_null() { i + 1 == n } else { *b.logits.add(i) != 0 };
            if want {
                out_row[i] = n_out as i32;
                n_out += 1;
            }
            for (j, &sid) in ids.iter().enumerate() {
                if sid < 0 || sid as u32 >= self.n_seq_max {
                    error!("llama_decode: invalid seq_id[{i}] = {sid} >= n_seq_max {}", self.n_seq_max);
                    return DECODE_INVALID;
                }
                let expect = *next.entry(sid).or_insert_with(|| self.len_of(sid));
                // no position (NULL, or negative from llama_batch_ext): the sequence's next
                let pos = if b.pos.is_null() || *b.pos.add(i) < 0 { expect } else { *b.pos.add(i) as usize };
                if pos != expect {
                    error!("llama_decode: token {i} of sequence {sid} is at position {pos}, but the sequence holds {expect} positions (ROCmForge appends in order; remove positions with llama_memory_seq_rm first)");
                    return DECODE_INVALID;
                }
                next.insert(sid, expect + 1);
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
    }

    fn targets(&self, id: llama_seq_id) -> Vec<llama_seq_id> {
        if id < 0 {
            self.seqs.keys().copied().collect()
        } else {
            vec![id]
        }
    }

    /// Remove positions [p0, p1) (p1 < 0: to the end) of a sequence (all
    /// when id < 0). Only a sequence's tail can go: false for a range with
    /// positions after it, as llama.cpp answers for caches that cannot.
    pub fn seq_rm(&mut self, id: llama_seq_id, p0: llama_pos, p1: llama_pos) -> bool {
        let p0 = p0.max(0) as usize;
        for sid in self.targets(id) {
            let len = self.len_of(sid);
            let end = if p1 < 0 { usize::MAX } else { p1 as usize };
            if p0 >= len || p0 >= end {
                continue;
            }
            if end < len {
                return false;
            }
            let (Some(&s), Some(e)) = (self.seqs.get(&sid), self.engine.as_mut()) else { continue };
            if p0 == 0 {
                let _ = e.remove_seq(s);
                self.seqs.remove(&sid);
            } else if e.keep(s, p0).is_err() {
                return false;
            }
        }
        true
    }

    /// Copy positions [p0, p1) of `src` into `dst`: supported as a copy of
    /// the source's first positions (p0 ≤ 0), which shares its blocks.
    pub fn seq_cp(&mut self, src: llama_seq_id, dst: llama_seq_id, p0: llama_pos, p1: llama_pos) {
        if src == dst || src < 0 || dst < 0 {
            return;
        }
        if p0 > 0 {
            warning!("llama_memory_seq_cp: copying from position {p0} is not supported (only a sequence's first positions)");
            return;
        }
        let len = self.len_of(src);
        let Some(&s) = self.seqs.get(&src) else { return };
        let Some(e) = self.engine.as_mut() else { return };
        let f = match e.fork(s) {
            Ok(f) => f,
            Err(err) => {
                warning!("llama_memory_seq_cp: {err}");
                return;
            }
        };
        if p1 >= 0 && (p1 as usize) < len {
            let _ = e.keep(f, p1 as usize);
        }
        if let Some(old) = self.seqs.insert(dst, f) {
            let _ = e.remove_seq(old);
        }
    }

    pub fn seq_keep(&mut self, id: llama_seq_id) {
        let others: Vec<llama_seq_id> = self.seqs.keys().copied().filter(|&s| s != id).collect();
        for s in others {
            self.seq_rm(s, -1, -1);
        }
    }

    pub fn pos_max(&self, id: llama_seq_id) -> llama_pos {
        self.len_of(id) as llama_pos - 1
    }

    pub fn pos_min(&self, id: llama_seq_id) -> llama_pos {
        if self.len_of(id) > 0 {
            0
        } else {
            -1
        }
    }

    // ---- state ------------------------------------------------------------
    //
    // The state is each sequence's tokens and the last outputs' logits. The
    // KV cache is not copied: loading recomputes it from the tokens (the
    // same numbers: the passes are deterministic), so a state is small and
    // independent of the backend.

    const MAGIC: &'static [u8; 8] = MAGIC;

    fn seq_state(&self, only: Option<llama_seq_id>) -> Vec<(llama_seq_id, Vec<u32>)> {
        let Some(e) = &self.engine else { return Vec::new() };
        self.seqs.iter().filter(|(id, _)| only.is_none_or(|o| o == **id)).map(|(&id, &s)| (id, e.seq_tokens(s).map(|t| t.to_vec()).unwrap_or_default())).collect()
    }

    pub fn state_bytes(&self, only: Option<llama_seq_id>) -> Vec<u8> {
        let mut o = Vec::new();
        o.extend_from_slice(Self::MAGIC);
        o.extend_from_slice(&(self.n_vocab as u32).to_le_bytes());
        let seqs = self.seq_state(only);
        o.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
        for (id, toks) in &seqs {
            o.extend_from_slice(&id.to_le_bytes());
            o.extend_from_slice(&(toks.len() as u32).to_le_bytes());
            for t in toks {
                o.extend_from_slice(&t.to_le_bytes());
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
        o
    }

    /// Restore a state (into `dest` for a one-sequence state); returns the
    /// bytes read, 0 on a malformed state or a failed recomputation.
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
        }
        let mut r = R(src, 0);
        let parsed = (|| {
            if r.take(8)? != Self::MAGIC || r.u32()? as usize != self.n_vocab {
                return None;
            }
            let n = r.u32()? as usize;
            let mut seqs = Vec::new();
            for _ in 0..n {
                let id = r.u32()? as i32;
                let len = r.u32()? as usize;
                let toks: Vec<u32> = (0..len).map(|_| r.u32()).collect::<Option<_>>()?;
                seqs.push((id, toks));
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
        for (id, toks) in seqs {
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
            for (ci, chunk) in toks.chunks(self.n_batch.max(1) as usize).enumerate() {
                let p0 = ci * self.n_batch.max(1) as usize;
                let rows: Vec<BatchRow> = chunk.iter().enumerate().map(|(i, &t)| BatchRow { seq: s, token: t, pos: p0 + i, logits: false }).collect();
                if let Err(err) = e.decode(&rows) {
                    error!("llama_state_set_data: recomputing the cache: {err}");
                    return 0;
                }
            }
        }
        if dest.is_none() {
            self.out_row = rows;
            self.logits = logits;
        }
        r.1
    }
}
