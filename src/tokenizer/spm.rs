//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`): spaces become
//! U+2581 (▁), the text starts as one symbol per UTF-8 char, and the adjacent
//! pair whose concatenation is a vocab token with the highest score merges
//! first (leftmost on ties). Symbols left that are not tokens fall back to
//! `<0xNN>` byte tokens, or UNK when the vocab has none.

use std::collections::{BinaryHeap, HashMap};

pub struct Spm {
    index: HashMap<Vec<u8>, u32>,
    scores: Vec<f32>,
    byte_token: [Option<u32>; 256],
    unk: Option<u32>,
}

#[derive(PartialEq)]
struct Cand {
    score: f32,
    left: usize,
    len: usize,
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // highest score first, then leftmost
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl Spm {
    /// `pieces`: each token's text as stored (with ▁ for spaces); only
    /// `mergeable` tokens (normal ones) take part in merges.
    pub fn new(pieces: &[String], scores: &[f32], mergeable: &[bool], unk: Option<u32>) -> Spm {
        let mut index = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            if mergeable[i] {
                index.entry(p.as_bytes().to_vec()).or_insert(i as u32);
            }
        }
        let mut byte_token = [None; 256];
        for (i, p) in pieces.iter().enumerate() {
            if let Some(b) = parse_byte_token(p) {
                byte_token[b as usize].get_or_insert(i as u32);
            }
        }
        Spm { index, scores: scores.to_vec(), byte_token, unk }
    }

    fn lookup(&self, bytes: &[u8]) -> Option<u32> {
        self.index.get(bytes).copied()
    }

    /// Encode text that has already had spaces replaced by ▁.
    pub fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        // symbols as byte ranges into `text`, linked list
        let b = text.as_bytes();
        let mut start: Vec<usize> = Vec::new();
        let mut len: Vec<usize> = Vec::new();
        for (i, c) in text.char_indices() {
            start.push(i);
            len.push(c.len_utf8());
        }
        let n = start.len();
        if n == 0 {
            return;
        }
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        next[n - 1] = usize::MAX;
        let mut heap = BinaryHeap::new();
        let try_pair = |heap: &mut BinaryHeap<Cand>, start: &[usize], len: &[usize], l: usize, r: usize| {
            let s = start[l];
            let total = len[l] + len[r];
            if let Some(id) = self.lookup(&b[s..s + total]) {
                heap.push(Cand { score: self.scores.get(id as usize).copied().unwrap_or(0.0), left: l, len: total });
            }
        };
        for i in 0..n - 1 {
            try_pair(&mut heap, &start, &len, i, i + 1);
        }
        while let Some(c) = heap.pop() {
            let r = next[c.left];
            // stale: the left symbol or its neighbour changed size
            if len[c.left] == 0 || r == usize::MAX || len[c.left] + len[r] != c.len {
                continue;
            }
            len[c.left] = c.len;
            len[r] = 0;
            let k = next[r];
            next[c.left] = k;
            if k != usize::MAX {
                prev[k] = c.left;
                try_pair(&mut heap, &start, &len, c.left, k);
            }
            let p = prev[c.left];
            if p != usize::MAX {
                try_pair(&mut heap, &start, &len, p, c.left);
            }
        }
        let mut i = 0;
        while i != usize::MAX {
            let sym = &b[start[i]..start[i] + len[i]];
            match self.lookup(sym) {
                Some(id) => out.push(id),
                None => {
                    for &byte in sym {
                        if let Some(id) = self.byte_token[byte as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = next[i];
        }
    }
}

/// `<0xNN>` → NN.
pub fn parse_byte_token(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
