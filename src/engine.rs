//! Many sequences over one loaded model. An [`Engine`] owns the KV block
//! pool ([`crate::kv`]) and the backend's state, and executes a batch of
//! rows (sequence, token, position, wants-logits) in one forward pass:
//! decode rows of some sequences and prefill chunks of others together.
//!
//! - **CPU**: one pass over all rows ([`crate::backend::cpu::forward`]): each
//!   weight block is read once per step for every row; attention per row
//!   over its sequence's blocks.
//! - **GPU** (until the batched kernels land): each sequence keeps today's
//!   device session (a contiguous f16 KV cache of `n_ctx` positions) and a
//!   step runs sequence by sequence; the block pool still does the
//!   accounting, so budgets, statistics and exhaustion behave as on the
//!   CPU. A fork replays the source's tokens; the prefix cache reuses
//!   nothing on the GPU yet.
//!
//! [`crate::model::Session`] is this engine with one sequence.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::backend::cpu::forward::{self as cpu, CpuKv};
use crate::backend::gpu::forward::GpuSession;
use crate::error::{Error, Result};
use crate::kv::{BlockPool, KvStats, SeqKv, BLOCK};
use crate::model::{Logits, Model};

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
}

/// Rows one CPU pass takes; longer batches run in several passes.
const MAX_ROWS: usize = 512;
/// The most blocks a pool has (16M positions), whatever the budget says:
/// the block tables stay a few tens of MB.
const MAX_BLOCKS: usize = 1 << 20;

enum Exec {
    Cpu(CpuKv),
    Gpu(BTreeMap<SeqId, GpuSession>),
}

pub struct Engine {
    pub model: Arc<Model>,
    n_ctx: usize,
    pool: BlockPool,
    exec: Exec,
    seqs: BTreeMap<SeqId, SeqKv>,
    next_id: SeqId,
    /// The last step's logits, one n_vocab row per row that wanted them.
    logits: Vec<f32>,
    /// For each row of the last step, its row in `logits`.
    logit_row: Vec<Option<usize>>,
}

impl Engine {
    pub fn new(model: Arc<Model>, opts: EngineOptions) -> Result<Engine> {
        let n_ctx = if opts.n_ctx == 0 { model.default_n_ctx() } else { opts.n_ctx };
        if n_ctx > crate::model::MAX_CTX {
            return Err(Error::InvalidArgument(format!("n_ctx {n_ctx} is more than {}", crate::model::MAX_CTX)));
        }
        let per_pos = CpuKv::bytes_per_position(&model);
        let min_blocks = n_ctx.div_ceil(BLOCK) + 1;
        let n_blocks = match opts.kv_budget {
            0 => 4 * n_ctx.div_ceil(BLOCK),
            b => b / (per_pos * BLOCK),
        }
        .clamp(min_blocks, MAX_BLOCKS.max(min_blocks));
        let exec = match &model.gpu {
            Some(_) => Exec::Gpu(BTreeMap::new()),
            None => Exec::Cpu(CpuKv::new(&model, n_blocks)?),
        };
        let pool = BlockPool::new(n_blocks).ok_or_else(|| Error::OutOfMemory(format!("a KV block pool of {n_blocks} blocks")))?;
        Ok(Engine {
            model,
            n_ctx,
            pool,
            exec,
            seqs: BTreeMap::new(),
            next_id: 0,
            logits: Vec::new(),
            logit_row: Vec::new(),
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
        if let (Exec::Gpu(sessions), Some(g)) = (&mut self.exec, &self.model.gpu) {
            sessions.insert(id, GpuSession::new(g.clone(), self.n_ctx)?);
        }
        self.seqs.insert(id, SeqKv::default());
        Ok(id)
    }

    /// Remove a sequence and give its blocks back.
    pub fn remove_seq(&mut self, id: SeqId) -> Result<()> {
        let mut s = self.seqs.remove(&id).ok_or_else(|| Error::InvalidArgument(format!("sequence {id} does not exist")))?;
        self.pool.clear(&mut s);
        if let Exec::Gpu(sessions) = &mut self.exec {
            sessions.remove(&id);
        }
        Ok(())
    }

    /// Positions a sequence holds.
    pub fn seq_len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
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

    /// A new sequence with the same positions as `src`: its full blocks are
    /// shared (copy-on-write), so a fork costs no copy and little memory.
    pub fn fork(&mut self, src: SeqId) -> Result<SeqId> {
        let tokens = self.seq(src)?.tokens.clone();
        let id = self.new_id()?;
        if let (Exec::Gpu(sessions), Some(g)) = (&mut self.exec, &self.model.gpu) {
            // today's device sessions have contiguous caches: replay (before
            // the pool shares anything, so a failure leaves it as it was)
            let mut s = GpuSession::new(g.clone(), self.n_ctx)?;
            if !tokens.is_empty() {
                s.eval_into(&tokens, 0, Logits::None, &mut [])?;
            }
            sessions.insert(id, s);
        }
        let kv = self.pool.fork(&self.seqs[&src]);
        self.seqs.insert(id, kv);
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
        match self.exec {
            Exec::Cpu(_) => Ok(self.pool.reuse_prefix(s, prompt)),
            Exec::Gpu(_) => Ok(0),
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
    pub fn decode(&mut self, rows: &[BatchRow]) -> Result<()> {
        let order = self.check(rows)?;
        self.logits.clear();
        self.logit_row.clear();
        let wanted = rows.iter().filter(|r| r.logits).count();
        let nv = self.model.cfg.n_vocab;
        self.logits.try_reserve_exact(wanted * nv).map_err(|_| Error::OutOfMemory(format!("logits of {wanted} rows: {} MiB", wanted * nv * 4 >> 20)))?;
        let r = self.run(rows, &order);
        if r.is_err() {
            // give back what the step reserved; nothing is readable
            for &(id, _) in &order {
                let s = self.seqs.get_mut(&id).expect("checked");
                self.pool.rollback(s);
            }
            self.logits.clear();
            self.logit_row.clear();
        }
        r
    }

    fn run(&mut self, rows: &[BatchRow], order: &[(SeqId, usize)]) -> Result<()> {
        // reserve every block the step needs (cannot fail after check)
        for &(id, n) in order {
            let s = self.seqs.get_mut(&id).expect("checked");
            let copies = self.pool.prepare_append(s, n).map_err(|e| Error::KvExhausted(e.to_string()))?;
            if let Exec::Cpu(kv) = &mut self.exec {
                kv.copy_blocks(&copies);
            }
        }
        let model = self.model.clone();
        let nv = model.cfg.n_vocab;
        match &mut self.exec {
            Exec::Cpu(kv) => {
                let seqs = &self.seqs;
                for chunk in rows.chunks(MAX_ROWS) {
                    let rr: Vec<cpu::Row> =
                        chunk.iter().map(|r| cpu::Row { token: r.token, pos: r.pos, seq: &seqs[&r.seq], logits: r.logits }).collect();
                    let l = model.pool.install(|| cpu::forward(&model, kv, &rr))?;
                    self.logits.extend_from_slice(&l);
                }
                let mut k = 0;
                for r in rows {
                    self.logit_row.push(r.logits.then(|| {
                        k += 1;
                        k - 1
                    }));
                }
            }
            Exec::Gpu(sessions) => {
                // sequence by sequence: all of a sequence's logits (or its
                // last, or none), then the rows that asked are picked
                self.logit_row = vec![None; rows.len()];
                for &(id, _) in order {
                    let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].seq == id).collect();
                    let toks: Vec<u32> = idx.iter().map(|&i| rows[i].token).collect();
                    let wanted: Vec<usize> = idx.iter().copied().filter(|&i| rows[i].logits).collect();
                    let want = match wanted.len() {
                        0 => Logits::None,
                        1 if wanted[0] == *idx.last().unwrap() => Logits::Last,
                        _ => Logits::All,
                    };
                    let n_out = match want {
                        Logits::None => 0,
                        Logits::Last => nv,
                        Logits::All => toks.len() * nv,
                    };
                    let mut out = vec![0f32; n_out];
                    let pos0 = rows[idx[0]].pos;
                    sessions.get_mut(&id).expect("a device session per sequence").eval_into(&toks, pos0, want, &mut out)?;
                    for &i in &wanted {
                        let src = if want == Logits::Last { 0 } else { idx.iter().position(|&j| j == i).unwrap() };
                        self.logit_row[i] = Some(self.logits.len() / nv);
                        self.logits.extend_from_slice(&out[src * nv..(src + 1) * nv]);
                    }
                }
            }
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
    /// [`Engine::decode`] with one sequence's rows, without a copy on the
    /// GPU, where the device session writes straight into `out` (through a
    /// page-locked buffer). The caller has sized `out`.
    pub fn eval_seq_into(&mut self, id: SeqId, tokens: &[u32], want: Logits, out: &mut [f32]) -> Result<()> {
        let pos0 = self.seq_len(id)?;
        let last = tokens.len().saturating_sub(1);
        let rows: Vec<BatchRow> = tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| BatchRow { seq: id, token, pos: pos0 + i, logits: want == Logits::All || (want == Logits::Last && i == last) })
            .collect();
        if let Exec::Cpu(_) = self.exec {
            self.decode(&rows)?;
            let nv = self.model.cfg.n_vocab;
            for (i, chunk) in out.chunks_mut(nv).enumerate() {
                let row = if want == Logits::Last { last } else { i };
                chunk.copy_from_slice(self.logits(row).expect("the row asked for logits"));
            }
            return Ok(());
        }
        self.check(&rows)?;
        self.logits.clear();
        self.logit_row.clear();
        let s = self.seqs.get_mut(&id).expect("checked");
        self.pool.prepare_append(s, tokens.len()).map_err(|e| Error::KvExhausted(e.to_string()))?;
        if let Exec::Gpu(sessions) = &mut self.exec {
            if let Err(e) = sessions.get_mut(&id).expect("a device session per sequence").eval_into(tokens, pos0, want, out) {
                self.pool.rollback(s);
                return Err(e);
            }
        }
        self.pool.commit(s, tokens);
        Ok(())
    }

    /// The logits of row `row` of the last successful [`Engine::decode`], if
    /// that row asked for them (`n_vocab` floats).
    pub fn logits(&self, row: usize) -> Option<&[f32]> {
        let nv = self.model.cfg.n_vocab;
        let i = (*self.logit_row.get(row)?)?;
        Some(&self.logits[i * nv..(i + 1) * nv])
    }

    /// Rows of the last successful decode.
    pub fn n_rows(&self) -> usize {
        self.logit_row.len()
    }
}
