//! The paged KV cache: fixed-size blocks of `BLOCK` positions in one pool,
//! sized by a memory budget, and a block table per sequence (vLLM's
//! PagedAttention layout). No sequence reserves a whole context up front.
//!
//! - **Sharing.** A block has a reference count. `fork` copies a block table
//!   and counts each block once more; a block that is shared, or whose
//!   content is registered in the prefix cache, is never written again: the
//!   first write into it copies it (copy-on-write, `prepare_append`).
//! - **Prefix cache.** When a block fills, its content is keyed by a hash of
//!   its parent block's key and its tokens (the whole prefix, in effect).
//!   `reuse_prefix` gives a new sequence the cached blocks its prompt starts
//!   with. A block whose last user leaves stays cached (least recently
//!   released first out) until the pool needs it.
//! - **Exhaustion** is an error ([`KvExhausted`]) with the pool's numbers;
//!   nothing is half-done: `prepare_append` either reserves every block a
//!   step needs or changes nothing.
//!
//! This module only does the accounting; the storage is the backend's (the
//! CPU keeps one f16 array per layer, blocks one after the other, each
//! block's K/V heads one after the other: `model::ops::kv_row`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Positions per block. With the head-major blocks of the CPU cache, 32
/// measured 5-10% faster at 8 sequences on the CPU (docs/PERFORMANCE.md,
/// "Block size"); 16 is kept for now, for finer prefix reuse and less of
/// a last block unused, until the tests' block arithmetic (ffi_contract,
/// api_fuzz, batch, the bindings' pool sizes) is rederived for 32.
pub const BLOCK: usize = 16;

/// The pool ran out of blocks (after evicting every unused cached block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvExhausted {
    pub need: usize,
    pub free: usize,
    pub total: usize,
}

impl std::fmt::Display for KvExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KV block pool exhausted: {} more blocks of {BLOCK} positions needed, {} free of {} (remove or truncate a sequence, or give the pool a larger budget)",
            self.need, self.free, self.total
        )
    }
}

/// What a copy-on-write asks the storage to do: copy `from`'s first
/// `n` slots into `to` before the step writes into `to` (a storage may
/// copy the whole block: `to` is the copier's alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub from: u32,
    pub to: u32,
    pub n: usize,
}

/// One sequence's view of the pool.
#[derive(Debug, Clone, Default)]
pub struct SeqKv {
    /// Physical block of each BLOCK positions.
    pub blocks: Vec<u32>,
    /// Positions written.
    pub len: usize,
    /// The tokens at those positions (the prefix cache keys on them).
    pub tokens: Vec<u32>,
    /// The prefix-cache key of each full block so far.
    keys: Vec<u64>,
    /// Positions from here on were moved by [`BlockPool::shift_in`] (a
    /// context shift): their K/V are not what evaluating their tokens
    /// gives, so no block from here on enters the prefix cache.
    moved_from: Option<usize>,
}

impl SeqKv {
    /// The physical slot (`block * BLOCK + offset`) of position `pos`.
    #[inline]
    pub fn slot(&self, pos: usize) -> usize {
        self.blocks[pos / BLOCK] as usize * BLOCK + pos % BLOCK
    }
}

/// Counters for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    pub blocks_total: usize,
    /// Blocks some sequence holds.
    pub blocks_used: usize,
    /// Blocks no sequence holds (free, or cached and evictable).
    pub blocks_free: usize,
    /// Of the free ones, blocks whose content the prefix cache still keeps.
    pub blocks_cached: usize,
    /// Prefix lookups that reused at least one block, and the tokens reused.
    pub prefix_hits: u64,
    pub prefix_tokens_reused: u64,
    /// Blocks copied on a write into a shared block.
    pub cow_copies: u64,
}

#[derive(Debug, Clone)]
struct Cached {
    key: u64,
    /// The physical block before this one in the sequence that filled it
    /// (None for a first block): a match must come after that very block,
    /// so the whole prefix is checked by identity and tokens, never by the
    /// 64-bit keys alone.
    parent_block: Option<u32>,
    tokens: Vec<u32>,
}

/// The block accounting: reference counts, free list, prefix cache.
#[derive(Debug)]
pub struct BlockPool {
    refs: Vec<u32>,
    /// Blocks with no user and no cached content.
    free: Vec<u32>,
    /// Cached content of full blocks, by block.
    cached: Vec<Option<Cached>>,
    by_key: HashMap<u64, u32>,
    /// Unused cached blocks, oldest release first: (tick, block).
    lru: BTreeMap<u64, u32>,
    lru_tick: Vec<u64>,
    tick: u64,
    stats: KvStats,
}

/// The key of a full block: its parent's key and its tokens.
fn block_key(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: deterministic. The key only finds a
    // candidate; a match is then checked against the stored tokens and the
    // physical parent block, so a collision cannot hand a sequence another
    // prefix's KV.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x726f_636d_666f_7267, 0x6b76_2d70_7265_6678);
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The key chain starts from this "parent" of a sequence's first block.
const ROOT_KEY: u64 = 0x5EED;

impl BlockPool {
    /// A pool of `n_blocks` blocks, or None when its tables cannot be
    /// allocated (or the count does not fit the u32 block ids).
    pub fn new(n_blocks: usize) -> Option<BlockPool> {
        if n_blocks > u32::MAX as usize {
            return None;
        }
        fn filled<T: Clone>(n: usize, v: T) -> Option<Vec<T>> {
            let mut x = Vec::new();
            x.try_reserve_exact(n).ok()?;
            x.resize(n, v);
            Some(x)
        }
        let mut free = filled(n_blocks, 0u32)?;
        free.iter_mut().enumerate().for_each(|(i, b)| *b = (n_blocks - 1 - i) as u32);
        Some(BlockPool {
            refs: filled(n_blocks, 0)?,
            free,
            cached: filled(n_blocks, None)?,
            by_key: HashMap::new(),
            lru: BTreeMap::new(),
            lru_tick: filled(n_blocks, 0)?,
            tick: 0,
            stats: KvStats::default(),
        })
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            blocks_total: self.n_blocks(),
            blocks_used: self.n_blocks() - self.available(),
            blocks_free: self.available(),
            blocks_cached: self.lru.len(),
            ..self.stats
        }
    }

    /// A block for writing, refcount 1: a free one, else the least recently
    /// released cached one (its cache entry is dropped).
    fn take(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (&tick, &b) = self.lru.iter().next()?;
                self.lru.remove(&tick);
                if let Some(c) = self.cached[b as usize].take() {
                    self.by_key.remove(&c.key);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn retain(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            // back from the evictable list
            self.lru.remove(&self.lru_tick[b as usize]);
        }
        self.refs[b as usize] += 1;
    }

    fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "block {b} released more often than held");
        *r -= 1;
        if *r == 0 {
            if self.cached[b as usize].is_some() {
                self.tick += 1;
                self.lru_tick[b as usize] = self.tick;
                self.lru.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// A block may be written only by its single user, and only while the
    /// prefix cache does not vouch for its content.
    fn writable(&self, b: u32) -> bool {
        self.refs[b as usize] == 1 && self.cached[b as usize].is_none()
    }

    /// Blocks a sequence has after `n` more positions, whether its last
    /// block must be copied first, and how many blocks that takes.
    fn need(&self, seq: &SeqKv, n: usize) -> (usize, bool, usize) {
        let need_total = (seq.len + n).div_ceil(BLOCK);
        let i = seq.len / BLOCK;
        let cow = n > 0 && seq.len % BLOCK != 0 && i < seq.blocks.len() && !self.writable(seq.blocks[i]);
        (need_total, cow, need_total.saturating_sub(seq.blocks.len()) + cow as usize)
    }

    /// Blocks `prepare_append(seq, n)` would take from the pool.
    pub fn blocks_needed(&self, seq: &SeqKv, n: usize) -> usize {
        self.need(seq, n).2
    }

    /// Reserve room for `n` more positions of `seq`: new blocks, and a copy
    /// of its last block if that one is shared or cached. All or nothing:
    /// on error the sequence and the pool are as they were. Returns the
    /// copies the storage must make before the step writes.
    pub fn prepare_append(&mut self, seq: &mut SeqKv, n: usize) -> Result<Vec<BlockCopy>, KvExhausted> {
        let mut copies = Vec::new();
        if n == 0 {
            return Ok(copies);
        }
        let (need_total, cow, need) = self.need(seq, n);
        if need > self.available() {
            return Err(KvExhausted { need, free: self.available(), total: self.n_blocks() });
        }
        if cow {
            let i = seq.len / BLOCK;
            let old = seq.blocks[i];
            let new = self.take().expect("counted above");
            copies.push(BlockCopy { from: old, to: new, n: seq.len % BLOCK });
            self.release(old);
            seq.blocks[i] = new;
            self.stats.cow_copies += 1;
        }
        while seq.blocks.len() < need_total {
            let b = self.take().expect("counted above");
            seq.blocks.push(b);
        }
        Ok(copies)
    }

    /// Record that `tokens` were written at `seq.len..`; blocks that fill
    /// up enter the prefix cache.
    pub fn commit(&mut self, seq: &mut SeqKv, tokens: &[u32]) {
        seq.tokens.extend_from_slice(tokens);
        seq.len += tokens.len();
        while seq.keys.len() < seq.len / BLOCK {
            let i = seq.keys.len();
            let parent = if i == 0 { ROOT_KEY } else { seq.keys[i - 1] };
            let toks = &seq.tokens[i * BLOCK..(i + 1) * BLOCK];
            let key = block_key(parent, toks);
            seq.keys.push(key);
            let b = seq.blocks[i];
            let pristine = seq.moved_from.is_none_or(|m| (i + 1) * BLOCK <= m);
            if pristine && self.cached[b as usize].is_none() && !self.by_key.contains_key(&key) {
                let parent_block = i.checked_sub(1).map(|j| seq.blocks[j]);
                self.cached[b as usize] = Some(Cached { key, parent_block, tokens: toks.to_vec() });
                self.by_key.insert(key, b);
            }
        }
    }

    /// Give an empty `seq` the cached blocks its `prompt` starts with, at
    /// most up to `prompt.len() - 1` positions (the last prompt token is
    /// always computed, so its logits exist). Returns the positions reused.
    pub fn reuse_prefix(&mut self, seq: &mut SeqKv, prompt: &[u32]) -> usize {
        assert!(seq.blocks.is_empty() && seq.len == 0, "reuse_prefix on a sequence that has positions");
        let max_blocks = prompt.len().saturating_sub(1) / BLOCK;
        let mut parent = ROOT_KEY;
        for i in 0..max_blocks {
            let toks = &prompt[i * BLOCK..(i + 1) * BLOCK];
            let key = block_key(parent, toks);
            let Some(&b) = self.by_key.get(&key) else { break };
            match &self.cached[b as usize] {
                Some(c) if c.parent_block == seq.blocks.last().copied() && c.tokens == toks => {}
                _ => break,
            }
            self.retain(b);
            seq.blocks.push(b);
            seq.keys.push(key);
            seq.tokens.extend_from_slice(toks);
            seq.len += BLOCK;
            parent = key;
        }
        if seq.len > 0 {
            self.stats.prefix_hits += 1;
            self.stats.prefix_tokens_reused += seq.len as u64;
        }
        seq.len
    }

    /// A new sequence sharing all of `src`'s written blocks.
    pub fn fork(&mut self, src: &SeqKv) -> SeqKv {
        let mut s = src.clone();
        s.blocks.truncate(src.len.div_ceil(BLOCK));
        for &b in &s.blocks {
            self.retain(b);
        }
        s
    }

    /// Give back blocks `seq` reserved for a step that did not happen.
    pub fn rollback(&mut self, seq: &mut SeqKv) {
        let len = seq.len;
        self.truncate(seq, len);
    }

    /// Blocks a step appending `n` positions to each of `items` takes from
    /// the pool, in order: a partial block shared by several of them is
    /// copied by all but its last user (who then holds it alone).
    pub fn blocks_needed_batch(&self, items: &[(&SeqKv, usize)]) -> usize {
        let mut refs: HashMap<u32, u32> = HashMap::new();
        let mut need = 0;
        for &(seq, n) in items {
            if n == 0 {
                continue;
            }
            let need_total = (seq.len + n).div_ceil(BLOCK);
            let have = seq.blocks.len().min(seq.len.div_ceil(BLOCK));
            need += need_total.saturating_sub(have);
            let i = seq.len / BLOCK;
            if seq.len % BLOCK != 0 && i < seq.blocks.len() {
                let b = seq.blocks[i];
                let r = refs.entry(b).or_insert(self.refs[b as usize]);
                if *r > 1 || self.cached[b as usize].is_some() {
                    need += 1;
                    *r -= 1;
                }
            }
        }
        need
    }

    /// Give every cached block nobody holds back to the free list, and
    /// order the free list so blocks are taken lowest first: a pool whose
    /// only sequence never reuses prefixes (a `Session`) then hands a
    /// growing sequence consecutive blocks again after a truncation, which
    /// the GPU's one-row decode reads as one contiguous run.
    pub fn forget_unused_cache(&mut self) {
        let unused: Vec<u32> = self.lru.values().copied().collect();
        for b in unused {
            if let Some(c) = self.cached[b as usize].take() {
                self.by_key.remove(&c.key);
            }
            self.free.push(b);
        }
        self.lru.clear();
        // popped from the end: descending order takes the lowest first
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Keep the first `n_keep` positions of `seq`.
    pub fn truncate(&mut self, seq: &mut SeqKv, n_keep: usize) {
        let n_keep = n_keep.min(seq.len);
        let keep_blocks = n_keep.div_ceil(BLOCK).min(seq.blocks.len());
        for b in seq.blocks.drain(keep_blocks..).collect::<Vec<_>>() {
            self.release(b);
        }
        seq.len = n_keep;
        seq.tokens.truncate(n_keep);
        seq.keys.truncate(n_keep / BLOCK);
        if seq.moved_from.is_some_and(|m| n_keep <= m) {
            seq.moved_from = None;
        }
    }

    /// Positions of `seq` from `from` on hold K/V that evaluating their
    /// tokens may not give (moved, or restored from elsewhere): no block
    /// from there enters the prefix cache.
    pub fn mark_moved(&mut self, seq: &mut SeqKv, from: usize) {
        seq.moved_from = Some(seq.moved_from.map_or(from, |m| m.min(from)));
    }

    /// Blocks [`BlockPool::shift`]`(seq, a, b)` takes from the pool beyond
    /// those it gives back: the blocks of positions `b..` are released and
    /// the moved positions need blocks from `a` on (and a copy of `a`'s
    /// block when it is shared or cached).
    fn shift_need(&self, seq: &SeqKv, a: usize, b: usize) -> (usize, usize) {
        let kept = a.div_ceil(BLOCK);
        let freed = seq.blocks[kept.min(seq.blocks.len())..].iter().filter(|&&x| self.refs[x as usize] == 1).count();
        let total = (seq.len - (b - a)).div_ceil(BLOCK);
        let cow = a % BLOCK != 0 && seq.len > b && !self.writable(seq.blocks[a / BLOCK]);
        (total.saturating_sub(kept) + cow as usize, freed)
    }

    /// Remove positions `a..b` of `seq` and move positions `b..` down to
    /// `a..` (a context shift; `a == b` moves them in place, into blocks
    /// of the sequence's own): the sequence keeps its first `a` positions
    /// and gets blocks for the moved ones. Returns the copy-on-write copies
    /// to make (before the moved rows are written) and the new slots of the
    /// moved positions, in order; the caller has read their old slots
    /// first. All or nothing: on error nothing changed. The moved blocks
    /// never enter the prefix cache (`moved_from`).
    pub fn shift(&mut self, seq: &mut SeqKv, a: usize, b: usize) -> Result<(Vec<BlockCopy>, Vec<usize>), KvExhausted> {
        assert!(a <= b && b <= seq.len, "shift {a}..{b} of a sequence of {}", seq.len);
        let (need, freed) = self.shift_need(seq, a, b);
        if need > self.available() + freed {
            return Err(KvExhausted { need: need - freed, free: self.available(), total: self.n_blocks() });
        }
        let moved: Vec<u32> = seq.tokens[b..].to_vec();
        self.truncate(seq, a);
        let copies = self.prepare_append(seq, moved.len()).expect("counted above");
        let slots = (a..a + moved.len()).map(|p| seq.slot(p)).collect();
        if !moved.is_empty() {
            seq.moved_from = Some(seq.moved_from.map_or(a, |m| m.min(a)));
        }
        self.commit(seq, &moved);
        Ok((copies, slots))
    }

    /// Give back every block of `seq`.
    pub fn clear(&mut self, seq: &mut SeqKv) {
        self.truncate(seq, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i.wrapping_mul(2654435761).wrapping_add(seed) % 1000).collect()
    }

    fn append(p: &mut BlockPool, s: &mut SeqKv, t: &[u32]) -> Vec<BlockCopy> {
        let c = p.prepare_append(s, t.len()).unwrap();
        p.commit(s, t);
        c
    }

    #[test]
    fn blocks_are_taken_as_positions_grow_and_returned() {
        let mut p = BlockPool::new(8).unwrap();
        let mut s = SeqKv::default();
        append(&mut p, &mut s, &toks(1, 0));
        assert_eq!((s.blocks.len(), p.available()), (1, 7));
        append(&mut p, &mut s, &toks(BLOCK, 1));
        assert_eq!(s.blocks.len(), 2);
        assert_eq!(s.slot(BLOCK), s.blocks[1] as usize * BLOCK);
        p.clear(&mut s);
        assert_eq!(p.available(), 8);
        assert_eq!(p.stats().blocks_used, 0);
    }

    #[test]
    fn exhaustion_is_all_or_nothing() {
        let mut p = BlockPool::new(2).unwrap();
        let mut s = SeqKv::default();
        append(&mut p, &mut s, &toks(BLOCK + 3, 0));
        let before = (s.blocks.clone(), p.available());
        let e = p.prepare_append(&mut s, 2 * BLOCK).unwrap_err();
        assert_eq!((e.need, e.free, e.total), (2, 0, 2));
        assert!(e.to_string().contains("exhausted"));
        assert_eq!((s.blocks.clone(), p.available()), before);
    }

    #[test]
    fn fork_shares_blocks_and_copies_the_partial_one_on_write() {
        let mut p = BlockPool::new(8).unwrap();
        let mut a = SeqKv::default();
        append(&mut p, &mut a, &toks(BLOCK + 5, 0));
        let mut b = p.fork(&a);
        assert_eq!(p.stats().blocks_used, 2);
        // b writes into the shared partial block: it gets its own copy
        let c = append(&mut p, &mut b, &[7]);
        assert_eq!(c, vec![BlockCopy { from: a.blocks[1], to: b.blocks[1], n: 5 }]);
        assert_eq!(a.blocks[0], b.blocks[0], "the full block stays shared");
        assert_ne!(a.blocks[1], b.blocks[1]);
        // a is the last user of its partial block now: writes in place
        assert!(append(&mut p, &mut a, &[9]).is_empty());
        p.clear(&mut a);
        p.clear(&mut b);
        assert_eq!(p.stats().blocks_used, 0);
    }

    #[test]
    fn prefix_cache_reuses_full_blocks_and_evicts_oldest_first() {
        let mut p = BlockPool::new(6).unwrap();
        let prompt = toks(3 * BLOCK + 4, 5);
        let mut a = SeqKv::default();
        append(&mut p, &mut a, &prompt);
        let mut b = SeqKv::default();
        assert_eq!(p.reuse_prefix(&mut b, &prompt), 3 * BLOCK);
        assert_eq!(&b.blocks[..], &a.blocks[..3]);
        // a prompt of exactly 3 blocks reuses only 2: its last token must be computed
        let mut c = SeqKv::default();
        assert_eq!(p.reuse_prefix(&mut c, &prompt[..3 * BLOCK]), 2 * BLOCK);
        // another prompt shares the first block only
        let mut other = prompt.clone();
        other[BLOCK + 2] += 1;
        let mut d = SeqKv::default();
        assert_eq!(p.reuse_prefix(&mut d, &other), BLOCK);
        for s in [&mut a, &mut b, &mut c, &mut d] {
            p.clear(s);
        }
        // all released: cached blocks stay reusable until needed
        assert_eq!(p.stats().blocks_cached, 3);
        let mut e = SeqKv::default();
        assert_eq!(p.reuse_prefix(&mut e, &prompt), 3 * BLOCK);
        p.clear(&mut e);
        // fill the pool with new content: the cache gives its blocks back
        let mut f = SeqKv::default();
        append(&mut p, &mut f, &toks(6 * BLOCK, 99));
        assert_eq!(p.stats().blocks_cached, 0);
        let mut g = SeqKv::default();
        assert_eq!(p.reuse_prefix(&mut g, &prompt), 0);
        assert_eq!(p.stats().prefix_hits, 4);
    }

    #[test]
    fn a_rolled_back_step_leaves_nothing_shared_by_a_later_fork() {
        let mut p = BlockPool::new(8).unwrap();
        let mut a = SeqKv::default();
        append(&mut p, &mut a, &toks(BLOCK, 0));
        // a step reserved a second block, then failed
        p.prepare_append(&mut a, 1).unwrap();
        p.rollback(&mut a);
        assert_eq!(a.blocks.len(), 1);
        let mut b = p.fork(&a);
        append(&mut p, &mut a, &[1]);
        append(&mut p, &mut b, &[2]);
        assert_ne!(a.blocks[1], b.blocks[1]);
        // a fork of a sequence with a reserved, unwritten block shares only
        // the written ones
        p.prepare_append(&mut a, BLOCK).unwrap();
        let c = p.fork(&a);
        assert_eq!(c.blocks.len(), a.len.div_ceil(BLOCK));
    }

    #[test]
    fn a_shared_partial_block_is_counted_once_per_copy() {
        let mut p = BlockPool::new(8).unwrap();
        let mut a = SeqKv::default();
        append(&mut p, &mut a, &toks(BLOCK + 3, 0));
        let b = p.fork(&a);
        // one token each: a copies, then b holds the block alone
        assert_eq!(p.blocks_needed_batch(&[(&a, 1), (&b, 1)]), 1);
        assert_eq!(p.blocks_needed(&a, 1) + p.blocks_needed(&b, 1), 2);
    }

    #[test]
    fn a_cached_block_is_never_written_in_place() {
        let mut p = BlockPool::new(4).unwrap();
        let mut a = SeqKv::default();
        append(&mut p, &mut a, &toks(BLOCK, 0));
        // keep half of the (cached) full block, then write: copy first
        p.truncate(&mut a, BLOCK / 2);
        let c = append(&mut p, &mut a, &[1, 2]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].n, BLOCK / 2);
        // the cached content is still there for a prompt that matches it
        let mut b = SeqKv::default();
        let mut prompt = toks(BLOCK, 0);
        prompt.push(3);
        assert_eq!(p.reuse_prefix(&mut b, &prompt), BLOCK);
    }

    #[test]
    fn forgetting_the_cache_gives_consecutive_blocks_again() {
        let mut p = BlockPool::new(6).unwrap();
        let mut s = SeqKv::default();
        append(&mut p, &mut s, &toks(4 * BLOCK, 1));
        assert_eq!(s.blocks, [0, 1, 2, 3]);
        p.truncate(&mut s, 0);
        // without forgetting: the two never-used blocks, then the cached ones
        let mut t = s.clone();
        append(&mut p, &mut t, &toks(3 * BLOCK, 2));
        assert_eq!(t.blocks, [4, 5, 0]);
        p.truncate(&mut t, 0);
        p.forget_unused_cache();
        assert_eq!(p.stats().blocks_cached, 0);
        let mut u = SeqKv::default();
        append(&mut p, &mut u, &toks(5 * BLOCK, 3));
        assert_eq!(u.blocks, [0, 1, 2, 3, 4], "lowest first, consecutive");
        // a kept head, then the blocks right after it
        p.truncate(&mut u, 2 * BLOCK);
        p.forget_unused_cache();
        append(&mut p, &mut u, &toks(2 * BLOCK, 4));
        assert_eq!(u.blocks, [0, 1, 2, 3]);
        // blocks in use keep their prefix-cache entries
        assert_eq!(p.reuse_prefix(&mut SeqKv::default(), &toks(6 * BLOCK, 3)), 2 * BLOCK);
    }
}
