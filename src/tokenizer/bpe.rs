//! Byte-level BPE (GPT-2 style): pieces are UTF-8 bytes, each byte starts as
//! its own symbol, and the adjacent pair with the lowest merge rank is merged
//! until no listed merge applies. O(n log n) per piece via a heap over a
//! linked list of symbols, so pathological inputs stay fast.
//!
//! [`Bpe::new_raw`] is the SentencePiece-style variant (Gemma 4): tokens are
//! raw UTF-8 (▁ for spaces), each char starts as its own symbol, and a char
//! that is no token becomes its `<0xNN>` byte tokens.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rustc_hash::FxHashMap;

/// GPT-2's reversible byte → printable-char map (`bytes_to_unicode`).
pub fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    map
}

/// Decode a byte-level token spelling back to raw bytes; `None` if it uses a
/// char outside the byte alphabet (e.g. a mislabelled special token).
pub fn unmap_token(s: &str, inv: &HashMap<char, u8>) -> Option<Vec<u8>> {
    s.chars().map(|c| inv.get(&c).copied()).collect()
}

/// (left id, right id) → (rank, merged id)
type MergeTable = FxHashMap<(u32, u32), (u32, u32)>;

pub struct Bpe {
    merges: MergeTable,
    /// token id of each single byte (None if the vocab lacks it)
    byte_token: [Option<u32>; 256],
    unk: Option<u32>,
    /// Pre-tokenizers with `ignore_merges` (Llama 3's and its kin, as
    /// llama.cpp): a piece that is a token as a whole is that token,
    /// whatever the merges would make of it. Bytes → id.
    whole: Option<FxHashMap<Vec<u8>, u32>>,
    /// Raw UTF-8 symbols ([`Bpe::new_raw`]): each single-char token's id.
    /// `byte_token` then holds the `<0xNN>` tokens.
    chars: Option<FxHashMap<char, u32>>,
}

/// Split a `"left right"` merge where llama.cpp does: at the first space
/// after the first byte.
fn split_merge(m: &str) -> Option<(&str, &str)> {
    let p = m.bytes().skip(1).position(|b| b == b' ')? + 1;
    Some((&m[..p], &m[p + 1..]))
}


impl Bpe {
    /// Build from the vocab's token spellings and the `"left right"` merges.
    pub fn new(tokens: &[String], merges: &[String], unk: Option<u32>) -> Result<Bpe, String> {
        let index: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
        let b2c = byte_to_char();
        let mut byte_token = [None; 256];
        for (b, c) in b2c.iter().enumerate() {
            byte_token[b] = index.get(c.to_string().as_str()).copied();
        }
        let merges = Self::merge_table(&index, merges)?;
        Ok(Bpe { merges, byte_token, unk, whole: None, chars: None })
    }

    /// SentencePiece-style BPE over raw UTF-8 (Gemma 4): the symbols start as
    /// chars; a char that is no token is written as its `<0xNN>` tokens (and
    /// merges with nothing, as no merge names it).
    pub fn new_raw(tokens: &[String], merges: &[String], unk: Option<u32>) -> Result<Bpe, String> {
        let index: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
        let mut byte_token = [None; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            *slot = index.get(format!("<0x{b:02X}>").as_str()).copied();
        }
        let mut chars = FxHashMap::default();
        for (&t, &id) in &index {
            let mut it = t.chars();
            if let (Some(c), None) = (it.next(), it.next()) {
                chars.insert(c, id);
            }
        }
        let merges = Self::merge_table(&index, merges)?;
        Ok(Bpe { merges, byte_token, unk, whole: None, chars: Some(chars) })
    }

    fn merge_table(index: &HashMap<&str, u32>, merges: &[String]) -> Result<MergeTable, String> {
        let mut table = FxHashMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            let (l, r) =
                split_merge(m).ok_or_else(|| format!("tokenizer.ggml.merges[{rank}] = {m:?} is not \"left right\""))?;
            let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) else { continue };
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            if let Some(&mi) = index.get(joined.as_str()) {
                table.entry((li, ri)).or_insert((rank as u32, mi));
            }
        }
        Ok(table)
    }

    fn rank(&self, l: u32, r: u32) -> u32 {
        self.merges.get(&(l, r)).map_or(u32::MAX, |m| m.0)
    }

    /// Short pieces (almost all words): keep each adjacent pair's rank in an
    /// array, merge the lowest (leftmost on ties), update its two neighbours.
    /// Same result as the heap version, far less bookkeeping.
    fn merge_small(&self, mut ids: Vec<u32>, out: &mut Vec<u32>) {
        let mut ranks: Vec<u32> = ids.windows(2).map(|w| self.rank(w[0], w[1])).collect();
        loop {
            let (mut best, mut at) = (u32::MAX, 0);
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == u32::MAX {
                break;
            }
            ids[at] = self.merges[&(ids[at], ids[at + 1])].1;
            ids.remove(at + 1);
            ranks.remove(at);
            if at < ranks.len() {
                ranks[at] = self.rank(ids[at], ids[at + 1]);
            }
            if at > 0 {
                ranks[at - 1] = self.rank(ids[at - 1], ids[at]);
            }
        }
        out.extend_from_slice(&ids);
    }

    /// Take a piece that is a whole token as that token (`pieces`: each
    /// token's bytes), before any merge: llama.cpp's `ignore_merges`.
    pub fn ignore_merges(&mut self, pieces: &[Vec<u8>]) {
        self.whole_tokens(pieces, |_| true);
    }

    /// [`Bpe::ignore_merges`] for the tokens `which` accepts only (Gemma 4:
    /// runs of newlines).
    pub fn whole_tokens(&mut self, pieces: &[Vec<u8>], which: impl Fn(&[u8]) -> bool) {
        let mut m = FxHashMap::default();
        for (i, p) in pieces.iter().enumerate() {
            if which(p) {
                m.entry(p.clone()).or_insert(i as u32);
            }
        }
        self.whole = Some(m);
    }

    /// Encode one pre-tokenized piece, appending ids to `out`.
    pub fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.whole.as_ref().and_then(|w| w.get(piece.as_bytes())) {
            out.push(id);
            return;
        }
        let Some(chars) = &self.chars else {
            let ids = piece.bytes().filter_map(|b| self.byte_token[b as usize].or(self.unk)).collect();
            return self.merge(ids, out);
        };
        // runs of chars that are tokens merge on their own: a char that is
        // no token is in no merge, so nothing merges across it
        let mut run = Vec::new();
        for c in piece.chars() {
            match chars.get(&c) {
                Some(&id) => run.push(id),
                None => {
                    self.merge(std::mem::take(&mut run), out);
                    let mut buf = [0u8; 4];
                    out.extend(c.encode_utf8(&mut buf).bytes().filter_map(|b| self.byte_token[b as usize]));
                }
            }
        }
        self.merge(run, out);
    }

    fn merge(&self, ids: Vec<u32>, out: &mut Vec<u32>) {
        match ids.len() {
            0 | 1 => out.extend_from_slice(&ids),
            2..=48 => self.merge_small(ids, out),
            _ => self.merge_heap(ids, out),
        }
    }

    /// Long pieces: a heap of candidate pairs over a linked list of symbols;
    /// stale entries (a side changed since queued) are skipped. Dead symbols
    /// have id u32::MAX.
    fn merge_heap(&self, mut ids: Vec<u32>, out: &mut Vec<u32>) {
        let n = ids.len();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        next[n - 1] = usize::MAX;
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>, ids: &[u32], i: usize, j: usize| {
            if let Some(&(rank, _)) = self.merges.get(&(ids[i], ids[j])) {
                heap.push(Reverse((rank, i, ids[i], ids[j])));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &ids, i, i + 1);
        }
        while let Some(Reverse((_, i, l, r))) = heap.pop() {
            let j = next[i];
            // stale entry: a symbol changed since it was queued
            if ids[i] != l || j == usize::MAX || ids[j] != r {
                continue;
            }
            ids[i] = self.merges[&(l, r)].1;
            ids[j] = u32::MAX;
            let k = next[j];
            next[i] = k;
            if k != usize::MAX {
                prev[k] = i;
                push(&mut heap, &ids, i, k);
            }
            let p = prev[i];
            if p != usize::MAX {
                push(&mut heap, &ids, p, i);
            }
        }
        let mut i = 0;
        while i != usize::MAX {
            out.push(ids[i]);
            i = next[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    /// The array and heap merge loops give identical ids on every piece of
    /// the corpus texts and on long synthetic pieces.
    #[test]
    fn small_and_heap_merges_agree() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let f = GgufFile::open(path).expect("run `make models` first");
        let bpe = Bpe::new(f.tokenizer_tokens().unwrap().unwrap(), f.tokenizer_merges().unwrap().unwrap(), None).unwrap();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/corpus.json")).unwrap();
        let mut pieces: Vec<Vec<u8>> = text.split(' ').map(|w| format!(" {w}").into_bytes()).collect();
        pieces.push("abcabcabc".repeat(20).into_bytes());
        pieces.push(" ".repeat(100).into_bytes());
        pieces.push(text.as_bytes()[..1500].to_vec());
        for p in pieces {
            let ids: Vec<u32> = p.iter().filter_map(|&b| bpe.byte_token[b as usize]).collect();
            if ids.len() < 2 {
                continue;
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            bpe.merge_small(ids.clone(), &mut a);
            bpe.merge_heap(ids, &mut b);
            assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&p));
        }
    }
}
