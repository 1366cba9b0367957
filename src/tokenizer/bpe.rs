//! Byte-level BPE (GPT-2 style): pieces are UTF-8 bytes, each byte starts as
//! its own symbol, and the adjacent pair with the lowest merge rank is merged
//! until no listed merge applies. O(n log n) per piece via a heap over a
//! linked list of symbols, so pathological inputs stay fast.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

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

pub struct Bpe {
    /// (left id, right id) → (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// token id of each single byte (None if the vocab lacks it)
    byte_token: [Option<u32>; 256],
    unk: Option<u32>,
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
        let mut table = HashMap::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            let (l, r) = m
                .split_once(' ')
                .ok_or_else(|| format!("tokenizer.ggml.merges[{rank}] = {m:?} is not \"left right\""))?;
            let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) else { continue };
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            if let Some(&mi) = index.get(joined.as_str()) {
                table.entry((li, ri)).or_insert((rank as u32, mi));
            }
        }
        Ok(Bpe { merges: table, byte_token, unk })
    }

    /// Encode one pre-tokenized piece, appending ids to `out`.
    pub fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        // symbols: id, prev, next (usize::MAX = none); dead symbols have id u32::MAX
        let mut ids: Vec<u32> = Vec::with_capacity(piece.len());
        for &b in piece {
            match self.byte_token[b as usize].or(self.unk) {
                Some(id) => ids.push(id),
                None => {}
            }
        }
        let n = ids.len();
        if n < 2 {
            out.extend_from_slice(&ids);
            return;
        }
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
