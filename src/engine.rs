//! Many sequences over one loaded model. An [`Engine`] owns the KV block
//! pool ([`crate::kv`]) and the backend's state, and executes a batch of
//! rows (sequence, token, position, wants-logits) in one forward pass:
//! decode rows of some sequences and prefill chunks of others together.
//!
//! The engine checks every row and does the block accounting; the
//! backend's [`Exec`] (made by the model's [`crate::backend::Backend`])
//! only computes:
//! - **CPU**: one pass over all rows ([`crate::backend::cpu::forward`]): each
//!   weight block is read once per step for every row; attention per row
//!   over its sequence's blocks.
//! - **GPU** ([`crate::backend::gpu`]): the same pass as kernel launches;
//!   the block pool's K/V live on the device in f16 and each step uploads
//!   the rows' block tables, so forks and the prefix cache share blocks
//!   there too.
//!
//! [`Session`] is this engine with one sequence.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::backend::{Exec, Logits, Output, StepRow, TopRows, TOP_MAX};
use crate::error::{Error, Result};
use crate::kv::{BlockPool, KvStats, SeqKv, BLOCK};
use crate::model::arch::LayerKind;
use crate::model::{ops, Model, MAX_CTX};

/// A sequence's handle in its engine.
pub type SeqId = u32;

/// One row of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRow {
    pub seq: SeqId,
    pub token: u32,
    /// Must be the sequence's next position: its length, then one more for
    /// each earlier row of the same sequence in this batch.
    pub pos: usize,
    /// Compute this row's logits ([`Engine::logits`]).
    pub logits: bool,
}

/// Sizes of an engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineOptions {
    /// Most positions one sequence may hold; 0 = [`Model::default_n_ctx`].
    pub n_ctx: usize,
    /// Bytes of KV cache for all sequences together; 0 = four full
    /// sequences' worth. Rounded down to whole blocks (at least one
    /// sequence's worth plus one block).
    pub kv_budget: usize,
    /// When a batch does not fit the pool: false (the default) refuses it
    /// with KV_EXHAUSTED and the caller chooses what to drop; true
    /// preempts the newest sequences until it fits ([`Engine::decode`]).
    pub preempt: bool,
}

/// What an engine or session says for an encoder (no next-token logits).
pub(crate) fn encoder_error(model: &Model) -> Error {
    Error::Unsupported(format!(
        "{} is an embedding model (a bidirectional encoder): it has no next-token logits and no KV cache; use embeddings (Model::embed, forge_embed, /v1/embeddings)",
        model.cfg.arch.name
    ))
}

/// The most blocks a pool has (16M positions), whatever the budget says:
/// the block tables stay a few tens of MB.
const MAX_BLOCKS: usize = 1 << 20;

pub struct Engine {
    pub model: Arc<Model>,
    n_ctx: usize,
    pool: BlockPool,
    /// The backend's state: KV memory, device sessions.
    exec: Box<dyn Exec>,
    seqs: BTreeMap<SeqId, SeqKv>,
    next_id: SeqId,
    /// The last step's logits, one n_vocab row per row that wanted them.
    logits: Vec<f32>,
    /// What a step returns per row that wants logits, and with
    /// [`Output::Top`] the last step's candidates.
    output: Output,
    top: TopRows,
    /// For each row of the last step, its row in `logits` (or `top`).
    logit_row: Vec<Option<usize>>,
    /// Preempt the newest sequences when a batch does not fit.
    preempt: bool,
    /// Each sequence's creation order (forks included): "newest" for preemption.
    born: BTreeMap<SeqId, u64>,
    n_born: u64,
    /// Sequences the last decode preempted, in preemption order.
    preempted: Vec<SeqId>,
    /// The sequence of each row of the last successful decode.
    row_seq: Vec<SeqId>,
}

impl Engine {
    pub fn new(model: Arc<Model>, opts: EngineOptions) -> Result<Engine> {
        if model.is_encoder() {
            return Err(encoder_error(&model));
        }
        let n_ctx = if opts.n_ctx == 0 { model.default_n_ctx() } else { opts.n_ctx };
        if n_ctx > MAX_CTX {
            return Err(Error::InvalidArgument(format!("n_ctx {n_ctx} is more than {MAX_CTX}")));
        }
        let per_pos = model.cfg.kv_bytes_per_position();
        let min_blocks = n_ctx.div_ceil(BLOCK) + 1;
        let n_blocks = match opts.kv_budget {
            0 => 4 * n_ctx.div_ceil(BLOCK),
            b => b / (per_pos * BLOCK),
        }
        .clamp(min_blocks, MAX_BLOCKS.max(min_blocks));
        let exec = model.backend.new_exec(&model, n_ctx, n_blocks)?;
        let pool = BlockPool::new(n_blocks).ok_or_else(|| Error::OutOfMemory(format!("a KV block pool of {n_blocks} blocks")))?;
        Ok(Engine {
            model,
            n_ctx,
            pool,
            exec,
            seqs: BTreeMap::new(),
            next_id: 0,
            logits: Vec::new(),
            output: Output::Logits,
            top: TopRows::default(),
            logit_row: Vec::new(),
            preempt: opts.preempt,
            born: BTreeMap::new(),
            n_born: 0,
            preempted: Vec::new(),
            row_seq: Vec::new(),
        })
    }

    /// Most positions one sequence may hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn stats(&self) -> KvStats {
        self.pool.stats()
    }

    fn seq(&self, id: SeqId) -> Result<&SeqKv> {
        self.seqs.get(&id).ok_or_else(|| Error::InvalidArgument(format!("sequence {id} does not exist")))
    }

    fn note_birth(&mut self, id: SeqId) {
        self.born.insert(id, self.n_born);
        self.n_born += 1;
    }

    fn new_id(&mut self) -> Result<SeqId> {
        // ids are not reused while the engine lives (a stale id is an error,
        // not another sequence), until they wrap after 2^31 sequences (they
        // stay non-negative as C's int32_t)
        for _ in 0..=self.seqs.len() {
            let id = self.next_id;
            self.next_id = if self.next_id >= i32::MAX as u32 { 0 } else { self.next_id + 1 };
            if !self.seqs.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(Error::InvalidArgument("no free sequence id".into()))
    }

    /// A new, empty sequence.
    pub fn add_seq(&mut self) -> Result<SeqId> {
        let id = self.new_id()?;
        self.exec.add_seq(id)?;
        self.seqs.insert(id, SeqKv::default());
        self.note_birth(id);
        Ok(id)
    }

    /// Remove a sequence and give its blocks back.
    pub fn remove_seq(&mut self, id: SeqId) -> Result<()> {
        let mut s = self.seqs.remove(&id).ok_or_else(|| Error::InvalidArgument(format!("sequence {id} does not exist")))?;
        self.pool.clear(&mut s);
        self.exec.remove_seq(id);
        self.born.remove(&id);
        Ok(())
    }

    /// Positions a sequence holds.
    pub fn seq_len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
    }

    /// The tokens at a sequence's positions (what its KV cache holds).
    pub fn seq_tokens(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.seq(id)?.tokens)
    }

    /// The sequences, in id order.
    pub fn seq_ids(&self) -> Vec<SeqId> {
        self.seqs.keys().copied().collect()
    }

    /// Keep the first `n_keep` positions of a sequence (0 clears it).
    pub fn keep(&mut self, id: SeqId, n_keep: usize) -> Result<()> {
        let s = self.seqs.get_mut(&id).ok_or_else(|| Error::InvalidArgument(format!("sequence {id} does not exist")))?;
        if n_keep > s.len {
            return Err(Error::InvalidArgument(format!("n_keep {n_keep} is past sequence {id}'s length {}", s.len)));
        }
        self.pool.truncate(s, n_keep);
        Ok(())
    }

    /// Remove positions `p0..p1` of a sequence and move the positions after
    /// them down by `p1 - p0`, turning their cached keys by as many
    /// positions (a context shift, llama.cpp's `seq_rm` + `seq_add`): the
    /// moved positions keep the K/V they were computed with, and the next
    /// token attends to them at their new distances. The moved blocks never
    /// enter the prefix cache. KV_EXHAUSTED (when the sequence shares its
    /// blocks and the pool has none to copy them into) or a failed read
    /// leaves the sequence as it was; a failed write leaves its first `p0`
    /// positions (its whole blocks among them, when one was being copied).
    pub fn shift(&mut self, id: SeqId, p0: usize, p1: usize) -> Result<()> {
        let s = self.seqs.get(&id).ok_or_else(|| Error::InvalidArgument(format!("sequence {id} does not exist")))?;
        if p0 >= p1 || p1 > s.len {
            return Err(Error::InvalidArgument(format!("positions {p0}..{p1} are not a range of sequence {id}'s {}", s.len)));
        }
        let (from, len) = ((p1..s.len).map(|p| s.slot(p)).collect::<Vec<_>>(), s.len);
        let mut rows = self.exec.read_kv(&from)?;
        self.turn_keys(&mut rows, -((p1 - p0) as i64));
        let s = self.seqs.get_mut(&id).expect("looked up above");
        let (copies, to) = self.pool.shift(s, p0, p1).map_err(|e| Error::KvExhausted(e.to_string()))?;
        debug_assert_eq!(to.len(), len - p1);
        self.write_rows(id, p0, &copies, &to, &rows)
    }

    /// Make `copies`, then write `rows` at slots `to` of sequence `id`, whose
    /// first `keep` positions are intact. If either fails, the sequence
    /// keeps only what is certainly intact: its first `keep` positions, or
    /// only its whole blocks among them when a copy-on-write copy was asked
    /// for (the copy may not have happened).
    fn write_rows(&mut self, id: SeqId, keep: usize, copies: &[crate::kv::BlockCopy], to: &[usize], rows: &crate::backend::KvHost) -> Result<()> {
        self.exec.copy_blocks(copies);
        if let Err(e) = self.exec.write_kv(to, rows) {
            let keep = if copies.is_empty() { keep } else { keep / BLOCK * BLOCK };
            let s = self.seqs.get_mut(&id).expect("the caller's sequence");
            self.pool.truncate(s, keep);
            return Err(e);
        }
        Ok(())
    }

    /// Turn the cached keys of positions `range` of a sequence by `delta`
    /// positions, without moving them: they then sit `delta` further from
    /// every later token (llama.cpp's `seq_add` on a range that leaves a
    /// gap). The turned blocks leave the prefix cache's reach. Errors as
    /// [`Engine::shift`]'s (a failed write leaves the positions before
    /// `range`).
    pub fn turn(&mut self, id: SeqId, range: std::ops::Range<usize>, delta: i64) -> Result<()> {
        let s = self.seqs.get(&id).ok_or_else(|| Error::InvalidArgument(format!("sequence {id} does not exist")))?;
        if range.start >= range.end || range.end > s.len {
            return Err(Error::InvalidArgument(format!("positions {range:?} are not a range of sequence {id}'s {}", s.len)));
        }
        // the positions from `range.start` are read, then written to blocks
        // of the sequence's own (a fork's shared blocks stay intact)
        let from: Vec<usize> = (range.start..s.len).map(|p| s.slot(p)).collect();
        let mut rows = self.exec.read_kv(&from)?;
        let c = &self.model.cfg;
        let mut head = crate::backend::KvHost { k: rows.k.iter().map(|k| k[..range.len() * c.kv_dim()].to_vec()).collect(), v: Vec::new() };
        self.turn_keys(&mut head, delta);
        for (k, h) in rows.k.iter_mut().zip(&head.k) {
            k[..h.len()].copy_from_slice(h);
        }
        let s = self.seqs.get_mut(&id).expect("looked up above");
        let (copies, to) = self.pool.shift(s, range.start, range.start).map_err(|e| Error::KvExhausted(e.to_string()))?;
        self.write_rows(id, range.start, &copies, &to, &rows)
    }

    fn turn_keys(&self, rows: &mut crate::backend::KvHost, delta: i64) {
        let c = &self.model.cfg;
        let (global, local) = (c.rope_freqs(c.rope_base, self.n_ctx), c.rope_freqs(c.rope_base_local, self.n_ctx));
        for (il, k) in rows.k.iter_mut().enumerate() {
            let freqs = match c.layer_kinds[il] {
                LayerKind::Local => &local,
                LayerKind::Global => &global,
            };
            ops::rotate_keys(k, c.kv_dim(), c.head_dim, c.arch.rope, delta, freqs);
        }
    }

    /// A sequence's cached K/V, every position and layer (as
    /// [`crate::backend::Exec::read_kv`] gives them): to save a state.
    pub fn read_seq_kv(&mut self, id: SeqId) -> Result<crate::backend::KvHost> {
        let s = self.seq(id)?;
        let slots: Vec<usize> = (0..s.len).map(|p| s.slot(p)).collect();
        self.exec.read_kv(&slots)
    }

    /// Append `tokens` to a sequence with the K/V `rows` (as
    /// [`Engine::read_seq_kv`] gave them) instead of computing them: to
    /// restore a state. The restored blocks never enter the prefix cache.
    /// An invalid input or KV_EXHAUSTED changes nothing; a failed write
    /// leaves the positions that were there (as [`Engine::shift`]).
    pub fn load_seq(&mut self, id: SeqId, tokens: &[u32], rows: &crate::backend::KvHost) -> Result<()> {
        let len = self.seq(id)?.len;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.model.cfg.n_vocab) {
            return Err(Error::InvalidArgument(format!("token id {t} is outside the vocab (n_vocab {})", self.model.cfg.n_vocab)));
        }
        if len + tokens.len() > self.n_ctx {
            return Err(Error::ContextFull(format!("sequence {id}: {} positions at {len} do not fit its context of {}", tokens.len(), self.n_ctx)));
        }
        rows.check(tokens.len(), &self.model.cfg)?;
        let s = self.seqs.get_mut(&id).expect("looked up above");
        let copies = self.pool.prepare_append(s, tokens.len()).map_err(|e| Error::KvExhausted(e.to_string()))?;
        let slots: Vec<usize> = (len..len + tokens.len()).map(|p| s.slot(p)).collect();
        self.write_rows(id, len, &copies, &slots, rows)?;
        let s = self.seqs.get_mut(&id).expect("looked up above");
        self.pool.mark_moved(s, len);
        self.pool.commit(s, tokens);
        Ok(())
    }

    /// A new sequence with the same positions as `src`: its full blocks are
    /// shared (copy-on-write), so a fork costs no copy and little memory.
    pub fn fork(&mut self, src: SeqId) -> Result<SeqId> {
        let tokens = self.seq(src)?.tokens.clone();
        let id = self.new_id()?;
        // before the pool shares anything: a failure leaves it as it was
        self.exec.fork_seq(src, id, &tokens)?;
        let kv = self.pool.fork(&self.seqs[&src]);
        self.seqs.insert(id, kv);
        self.note_birth(id);
        Ok(id)
    }

    /// Give an empty sequence the cached KV blocks its `prompt` starts with
    /// (the prefix cache); returns the positions reused. The caller then
    /// evaluates `prompt[reused..]` from position `reused`.
    pub fn reuse_prefix(&mut self, id: SeqId, prompt: &[u32]) -> Result<usize> {
        let s = self.seqs.get_mut(&id).ok_or_else(|| Error::InvalidArgument(format!("sequence {id} does not exist")))?;
        if s.len != 0 {
            return Err(Error::InvalidArgument(format!("sequence {id} is not empty ({} positions)", s.len)));
        }
        match self.exec.shares_blocks() {
            true => Ok(self.pool.reuse_prefix(s, prompt)),
            false => Ok(0),
        }
    }

    /// Check a batch against the sequences: ids, tokens, positions, room.
    /// Returns each sequence's rows' count, in order of first appearance.
    fn check(&self, rows: &[BatchRow]) -> Result<Vec<(SeqId, usize)>> {
        if rows.is_empty() {
            return Err(Error::InvalidArgument("the batch has no rows".into()));
        }
        let n_vocab = self.model.cfg.n_vocab;
        let mut order: Vec<(SeqId, usize)> = Vec::new();
        let mut next: BTreeMap<SeqId, (usize, usize)> = BTreeMap::new(); // seq -> (next pos, index in order)
        for (i, r) in rows.iter().enumerate() {
            if r.token as usize >= n_vocab {
                return Err(Error::InvalidArgument(format!("row {i}: token id {} is outside the vocab (n_vocab {n_vocab})", r.token)));
            }
            let len = self.seq(r.seq).map_err(|e| Error::InvalidArgument(format!("row {i}: {e}")))?.len;
            let e = next.entry(r.seq).or_insert_with(|| {
                order.push((r.seq, 0));
                (len, order.len() - 1)
            });
            if r.pos != e.0 {
                return Err(Error::InvalidArgument(format!(
                    "row {i}: sequence {} is at position {}, the row says {} (rows of a sequence come in order from its length)",
                    r.seq, e.0, r.pos
                )));
            }
            e.0 += 1;
            order[e.1].1 += 1;
        }
        for &(id, n) in &order {
            let len = self.seqs[&id].len;
            if len + n > self.n_ctx {
                return Err(Error::ContextFull(format!(
                    "sequence {id}: {n} tokens at position {len} do not fit its context of {} (keep fewer positions, or make the engine with a larger n_ctx)",
                    self.n_ctx
                )));
            }
        }
        let items: Vec<(&SeqKv, usize)> = order.iter().map(|&(id, n)| (&self.seqs[&id], n)).collect();
        let need = self.pool.blocks_needed_batch(&items);
        if need > self.pool.available() {
            let st = self.pool.stats();
            return Err(Error::KvExhausted(format!(
                "this batch needs {need} more blocks of {BLOCK} positions; {} of {} are free (remove or truncate a sequence, or give the engine a larger KV budget)",
                st.blocks_free, st.blocks_total
            )));
        }
        Ok(order)
    }

    /// Run one batch. All or nothing: on error no sequence has moved and
    /// no logits are readable. On success the rows that asked for logits
    /// have them ([`Engine::logits`]).
    ///
    /// A batch the pool cannot hold is KV_EXHAUSTED, unless the engine
    /// was made with [`EngineOptions::preempt`]: then the newest sequences
    /// (by creation; forks are new) that hold positions or have rows in
    /// the batch are preempted one by one until the rest fits. A preempted sequence keeps its id but loses its
    /// positions (length 0, its blocks back in the pool, full ones in the
    /// prefix cache); its rows in this batch are skipped (no logits); the
    /// caller evaluates its tokens again later (recompute, as vLLM does).
    /// The oldest sequence with rows in the batch is never preempted, so a
    /// valid batch always runs. [`Engine::preempted`] names them.
    ///
    /// Preemption is not undone if the step then fails (only a backend
    /// error can, after the checks): the preempted sequences stay empty and
    /// [`Engine::preempted`] still names them; the others are as they were.
    pub fn decode(&mut self, rows: &[BatchRow]) -> Result<()> {
        // the one allocation the step makes, before anything is preempted
        // (the last step's logits stay readable until this one runs)
        let wanted = rows.iter().filter(|r| r.logits).count();
        let nv = self.model.cfg.n_vocab;
        let per_row = match self.output {
            Output::Logits => nv,
            Output::Top(k) => k,
            Output::Hidden => self.model.cfg.n_embd,
        };
        let oom = |_| Error::OutOfMemory(format!("logits of {wanted} rows: {} MiB", (wanted * per_row * 4) >> 20));
        match self.output {
            Output::Logits | Output::Hidden => self.logits.try_reserve_exact((wanted * per_row).saturating_sub(self.logits.len())).map_err(oom)?,
            Output::Top(k) => {
                self.top.ids.try_reserve_exact((wanted * k).saturating_sub(self.top.ids.len())).map_err(oom)?;
                self.top.logits.try_reserve_exact((wanted * k).saturating_sub(self.top.logits.len())).map_err(oom)?;
                self.top.lse.try_reserve_exact(wanted.saturating_sub(self.top.lse.len())).map_err(oom)?;
            }
        }
        let mut kept: Option<Vec<BatchRow>> = None;
        let mut victims = Vec::new();
        let order = loop {
            let live = kept.as_deref().unwrap_or(rows);
            match self.check(live) {
                Err(Error::KvExhausted(msg)) if self.preempt => {
                    let Some(victim) = self.preemption_victim(live) else {
                        self.preempted = victims;
                        return Err(Error::KvExhausted(msg));
                    };
                    let s = self.seqs.get_mut(&victim).expect("a live sequence");
                    self.pool.clear(s);
                    victims.push(victim);
                    kept = Some(live.iter().copied().filter(|r| r.seq != victim).collect());
                }
                Err(e) if victims.is_empty() => return Err(e),
                Err(e) => {
                    self.preempted = victims;
                    return Err(e);
                }
                Ok(order) => break order,
            }
        };
        self.preempted = victims;
        self.row_seq.clear();
        self.logits.clear();
        self.top.clear();
        self.logit_row.clear();
        let rows_run = kept.as_deref().unwrap_or(rows);
        let r = self.run(rows_run, &order);
        if r.is_ok() {
            self.row_seq = rows.iter().map(|r| r.seq).collect();
        }
        if r.is_ok() && kept.is_some() {
            // rows of preempted sequences have no logits
            let mut run_rows = self.logit_row.drain(..).collect::<Vec<_>>().into_iter();
            self.logit_row = rows.iter().map(|r| if self.preempted.contains(&r.seq) { None } else { run_rows.next().flatten() }).collect();
        }
        if r.is_err() {
            // give back what the step reserved; nothing is readable
            for &(id, _) in &order {
                let s = self.seqs.get_mut(&id).expect("checked");
                self.pool.rollback(s);
            }
            self.logits.clear();
            self.top.clear();
            self.logit_row.clear();
        }
        r
    }

    /// What [`Engine::decode`] returns for each row that wants logits:
    /// every logit ([`Output::Logits`], the default; [`Engine::logits`]),
    /// the k largest with their ids and the row's log-sum-exp
    /// ([`Output::Top`], 1 ≤ k ≤ min([`TOP_MAX`], n_vocab);
    /// [`Engine::top`]), which a GPU selects on the device, or the final
    /// hidden state ([`Output::Hidden`]; [`Engine::hidden`]; the CPU only
    /// so far). The last step's results are gone either way.
    pub fn set_output(&mut self, out: Output) -> Result<()> {
        let nv = self.model.cfg.n_vocab;
        if let Output::Top(k) = out {
            if k == 0 || k > TOP_MAX.min(nv) {
                return Err(Error::InvalidArgument(format!("top-{k}: k must be 1 ..= {}", TOP_MAX.min(nv))));
            }
            self.top = TopRows::new(k);
        }
        self.output = out;
        self.logits.clear();
        self.top.clear();
        self.logit_row.clear();
        Ok(())
    }

    pub fn output(&self) -> Output {
        self.output
    }

    /// The final hidden state (after the output norm) of row `row` of the
    /// last successful decode under [`Output::Hidden`], if that row asked
    /// for output: `n_embd` floats.
    pub fn hidden(&self, row: usize) -> Option<&[f32]> {
        if self.output != Output::Hidden {
            return None;
        }
        let d = self.model.cfg.n_embd;
        let i = (*self.logit_row.get(row)?)?;
        Some(&self.logits[i * d..(i + 1) * d])
    }

    /// The candidates of row `row` of the last successful decode under
    /// [`Output::Top`], if that row asked for logits: k token ids and
    /// their logits, largest first (ties: the lower id first), and the
    /// row's log-sum-exp (a candidate's log-probability is its logit minus
    /// it).
    pub fn top(&self, row: usize) -> Option<(&[u32], &[f32], f32)> {
        if !matches!(self.output, Output::Top(_)) {
            return None;
        }
        let i = (*self.logit_row.get(row)?)?;
        Some(self.top.row(i))
    }

    /// The sequence to preempt next: the newest one that holds positions
    /// or has rows in `rows` (an empty sequence's rows need blocks too),
    /// never the oldest of those with rows. Once every other one is gone,
    /// the pool (at least n_ctx positions and a block) holds that one.
    fn preemption_victim(&self, rows: &[BatchRow]) -> Option<SeqId> {
        let protected = rows.iter().map(|r| r.seq).min_by_key(|id| self.born[id])?;
        let has_rows = |id: SeqId| rows.iter().any(|r| r.seq == id);
        self.seqs.iter().filter(|&(&id, s)| id != protected && (s.len > 0 || has_rows(id))).max_by_key(|&(id, _)| self.born[id]).map(|(&id, _)| id)
    }

    /// Whether row `row` of the last successful decode belonged to a
    /// sequence that decode preempted (its logits are gone with it).
    pub fn row_preempted(&self, row: usize) -> bool {
        self.row_seq.get(row).is_some_and(|s| self.preempted.contains(s))
    }

    /// Preempt the newest sequences when a batch does not fit
    /// ([`EngineOptions::preempt`]).
    pub fn set_preempt(&mut self, on: bool) {
        self.preempt = on;
    }

    /// The sequences the last [`Engine::decode`] preempted (their rows got
    /// no logits; they hold no positions now), in preemption order.
    pub fn preempted(&self) -> &[SeqId] {
        &self.preempted
    }

    fn run(&mut self, rows: &[BatchRow], order: &[(SeqId, usize)]) -> Result<()> {
        // reserve every block the step needs (cannot fail after check)
        for &(id, n) in order {
            let s = self.seqs.get_mut(&id).expect("checked");
            let copies = self.pool.prepare_append(s, n).map_err(|e| Error::KvExhausted(e.to_string()))?;
            self.exec.copy_blocks(&copies);
        }
        let seqs = &self.seqs;
        let step: Vec<StepRow> = rows.iter().map(|r| StepRow { seq: r.seq, token: r.token, pos: r.pos, kv: &seqs[&r.seq], logits: r.logits }).collect();
        match self.output {
            Output::Logits => self.exec.forward(&step, &mut self.logits)?,
            Output::Top(_) => self.exec.forward_top(&step, &mut self.top)?,
            // the hidden rows take the logits' place (n_embd floats each)
            Output::Hidden => self.exec.forward_hidden(&step, &mut self.logits)?,
        }
        let mut k = 0;
        for r in rows {
            self.logit_row.push(r.logits.then(|| {
                k += 1;
                k - 1
            }));
        }
        // the positions are written: advance the sequences
        for &(id, _) in order {
            let toks: Vec<u32> = rows.iter().filter(|r| r.seq == id).map(|r| r.token).collect();
            let s = self.seqs.get_mut(&id).expect("checked");
            self.pool.commit(s, &toks);
        }
        Ok(())
    }

    /// Append `tokens` to one sequence and write the logits `want` asks for
    /// into `out` (n_vocab floats for `Last`, one row per token for `All`):
    /// [`Engine::decode`] with one sequence's rows, where the backend writes
    /// straight into `out` (on the GPU through a page-locked buffer, with
    /// no copy). The caller has sized `out`. No logits are readable through
    /// [`Engine::logits`] afterwards. It never preempts: a pool that cannot
    /// hold the tokens is KV_EXHAUSTED, whatever [`EngineOptions::preempt`]
    /// says (a `Session`'s pool always holds its context).
    pub fn eval_seq_into(&mut self, id: SeqId, tokens: &[u32], want: Logits, out: &mut [f32]) -> Result<()> {
        let pos0 = self.seq_len(id)?;
        let rows: Vec<BatchRow> = tokens.iter().enumerate().map(|(i, &token)| BatchRow { seq: id, token, pos: pos0 + i, logits: false }).collect();
        self.check(&rows)?;
        self.logits.clear();
        self.top.clear();
        self.logit_row.clear();
        let s = self.seqs.get_mut(&id).expect("checked");
        let copies = self.pool.prepare_append(s, tokens.len()).map_err(|e| Error::KvExhausted(e.to_string()))?;
        self.exec.copy_blocks(&copies);
        if let Err(e) = self.exec.forward_seq(id, s, tokens, pos0, want, out) {
            self.pool.rollback(s);
            return Err(e);
        }
        self.pool.commit(s, tokens);
        Ok(())
    }

    /// The logits of row `row` of the last successful [`Engine::decode`], if
    /// that row asked for them (`n_vocab` floats; none under
    /// [`Output::Top`]: see [`Engine::top`]).
    pub fn logits(&self, row: usize) -> Option<&[f32]> {
        if self.output != Output::Logits {
            return None;
        }
        let nv = self.model.cfg.n_vocab;
        let i = (*self.logit_row.get(row)?)?;
        Some(&self.logits[i * nv..(i + 1) * nv])
    }

    /// Rows of the last successful decode.
    pub fn n_rows(&self) -> usize {
        self.logit_row.len()
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
        let mut engine = Engine::new(model.clone(), EngineOptions { n_ctx, kv_budget: 1, preempt: false })?;
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

    /// Keep the first `n_keep` positions (0 clears everything). A session
    /// reuses no prefixes, so the blocks given back leave the prefix cache
    /// too, and the next positions get consecutive blocks again (the GPU
    /// reads a lone sequence's consecutive blocks as one contiguous run:
    /// its fastest one-row decode).
    pub fn kv_keep(&mut self, n_keep: usize) -> Result<()> {
        let pos = self.pos();
        if n_keep > pos {
            return Err(Error::InvalidArgument(format!("n_keep {n_keep} is past the current position {pos}")));
        }
        self.engine.keep(self.seq, n_keep)?;
        self.engine.pool.forget_unused_cache();
        Ok(())
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
