//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`): spaces become
//! U+2581 (▁), the text starts as one symbol per UTF-8 char, and the adjacent
//! pair whose concatenation is a vocab token with the highest score merges
//! first (leftmost on ties). Symbols left that are not tokens fall back to
//! `<0xNN>` byte tokens, or UNK when the vocab has none.

use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

pub struct Spm {
    index: FxHashMap<Vec<u8>, u32>,
    scores: Vec<f32>,
    byte_token: [Option<u32>; 256],
    unk: Option<u32>,
    /// Mergeable tokens with ▁ after their first char: the only ones a merge
    /// across a word boundary can build. `None` if there are too many to check.
    spanning: Option<Vec<(Vec<u8>, Vec<usize>)>>,
}

const SPACE: &str = "\u{2581}";

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
        let mut index = FxHashMap::with_capacity_and_hasher(pieces.len(), Default::default());
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
        let mut spanning = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            if mergeable[i] {
                let offs: Vec<usize> = p.match_indices(SPACE).map(|(o, _)| o).filter(|&o| o > 0).collect();
                if !offs.is_empty() {
                    spanning.push((p.as_bytes().to_vec(), offs));
                }
            }
        }
        let spanning = (spanning.len() <= 64).then_some(spanning);
        Spm { index, scores: scores.to_vec(), byte_token, unk, spanning }
    }

    fn lookup(&self, bytes: &[u8]) -> Option<u32> {
        self.index.get(bytes).copied()
    }

    /// True if no merge can cross the boundary before byte `p` (a ▁) of `b`:
    /// no spanning token lies in the text with one of its inner ▁ at `p`.
    fn can_split_at(spanning: &[(Vec<u8>, Vec<usize>)], b: &[u8], p: usize) -> bool {
        spanning.iter().all(|(t, offs)| {
            offs.iter().all(|&k| p < k || !b[p - k..].starts_with(t))
        })
    }

    /// Encode text that has already had spaces replaced by ▁. Where no merge
    /// can cross a ▁ boundary the text is cut into words there and each word
    /// is encoded once per call (`cache`), which gives the same ids.
    pub fn encode_text<'t>(&self, text: &'t str, out: &mut Vec<u32>, cache: &mut FxHashMap<&'t str, (usize, usize)>) {
        let Some(spanning) = &self.spanning else { return self.encode_piece(text, out) };
        let b = text.as_bytes();
        let mut start = 0;
        let mut emit = |w: &'t str, out: &mut Vec<u32>| {
            if let Some(&(s, e)) = cache.get(w) {
                out.extend_from_within(s..e);
            } else {
                let s = out.len();
                self.encode_piece(w, out);
                if w.len() < 64 {
                    cache.insert(w, (s, out.len()));
                }
            }
        };
        for (p, _) in text.match_indices(SPACE) {
            if p > start && Self::can_split_at(spanning, b, p) {
                emit(&text[start..p], out);
                start = p;
            }
        }
        if start < text.len() {
            emit(&text[start..], out);
        }
    }

    fn pair_score(&self, b: &[u8], s: usize, len: usize) -> f32 {
        match self.lookup(&b[s..s + len]) {
            Some(id) => self.scores.get(id as usize).copied().unwrap_or(0.0),
            None => f32::NEG_INFINITY,
        }
    }

    /// Short words: each adjacent pair's score in an array; merge the best
    /// (leftmost on ties) and rescore its two neighbours. Same order of merges
    /// as the heap version.
    fn encode_small(&self, text: &str, out: &mut Vec<u32>) {
        let b = text.as_bytes();
        let mut sym: Vec<(usize, usize)> = text.char_indices().map(|(i, c)| (i, c.len_utf8())).collect();
        let mut score: Vec<f32> = sym.windows(2).map(|w| self.pair_score(b, w[0].0, w[0].1 + w[1].1)).collect();
        loop {
            let (mut best, mut at) = (f32::NEG_INFINITY, usize::MAX);
            for (i, &sc) in score.iter().enumerate() {
                if sc > best {
                    best = sc;
                    at = i;
                }
            }
            if at == usize::MAX {
                break;
            }
            sym[at].1 += sym[at + 1].1;
            sym.remove(at + 1);
            score.remove(at);
            if at < score.len() {
                score[at] = self.pair_score(b, sym[at].0, sym[at].1 + sym[at + 1].1);
            }
            if at > 0 {
                score[at - 1] = self.pair_score(b, sym[at - 1].0, sym[at - 1].1 + sym[at].1);
            }
        }
        for (s, len) in sym {
            self.emit_symbol(&b[s..s + len], out);
        }
    }

    fn emit_symbol(&self, sym: &[u8], out: &mut Vec<u32>) {
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
    }

    /// Encode one piece (no word splitting).
    pub fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        if text.len() <= 64 {
            self.encode_small(text, out)
        } else {
            self.encode_heap(text, out)
        }
    }

    /// Long text: a heap of candidate pairs over a linked list of symbols.
    fn encode_heap(&self, text: &str, out: &mut Vec<u32>) {
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
            self.emit_symbol(&b[start[i]..start[i] + len[i]], out);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use crate::tokenizer::vocab::{TokenType, Vocab};

    /// Word splitting + the array merge loop give the same ids as the heap
    /// loop over the whole, unsplit text.
    #[test]
    fn word_split_and_heap_agree() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/gemma-3-270m-q4_k_m.gguf");
        let v = Vocab::from_gguf(&GgufFile::open(path).expect("run `make models` first")).unwrap();
        let mergeable: Vec<bool> = v.types.iter().map(|t| *t == TokenType::Normal).collect();
        let spm = Spm::new(&v.tokens, &v.scores, &mergeable, v.special.unk);
        assert!(spm.spanning.as_ref().is_some_and(|s| !s.is_empty()), "gemma has a token spanning a ▁");
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/text/english.txt")).unwrap();
        for para in text.split("\n\n").chain(["a>  </b> >  </ x>▁</y", "Ǆ \u{10FFFD} 日本語 x>▁</"]) {
            let t = para.replace(' ', SPACE);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            spm.encode_text(&t, &mut a, &mut FxHashMap::default());
            spm.encode_heap(&t, &mut b);
            assert_eq!(a, b, "{para:?}");
            let (mut c, mut d) = (Vec::new(), Vec::new());
            for w in t.split_inclusive(SPACE).take(30) {
                spm.encode_small(w, &mut c);
                spm.encode_heap(w, &mut d);
            }
            assert_eq!(c, d);
        }
    }
}
