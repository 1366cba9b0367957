//! WordPiece (`tokenizer.ggml.model = "bert"`), the way llama.cpp runs it.
//!
//! The GGUF converter rewrites a BERT vocabulary so that word-initial pieces
//! start with ▁ (U+2581) and continuation pieces lose their `##`. Encoding:
//!
//! 1. Split the text into words (BERT's basic tokenizer): whitespace ends a
//!    word; NUL, U+FFFD and control / format / private-use chars are
//!    dropped; every punctuation char, every ASCII symbol and every CJK
//!    ideograph is a word of its own. With `strip_accents` each char is first
//!    replaced by the first char of its canonical decomposition (NFD) and
//!    combining marks are dropped; with `lowercase` chars are lowercased
//!    (simple, one-char mapping).
//! 2. Each word, with ▁ in front, is cut greedily into the longest vocabulary
//!    tokens from the left. If some position matches no token the whole word
//!    is the unknown token (`[UNK]`).
//!
//! Decoding turns ▁ back into a space (so the text starts with one), and
//! [`clean_spaces`] removes the spaces the word split put before
//! punctuation, as llama.cpp's detokenizer does.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};
use rustc_hash::FxHashMap;
use unicode_normalization::UnicodeNormalization;

const SPACE: char = '\u{2581}';

/// The general categories the word split looks at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cat {
    /// letters, numbers, separators, unassigned
    Other,
    /// \p{M}
    Mark,
    /// \p{P}
    Punct,
    /// \p{S}
    Symbol,
    /// Cc, Cf, Co (\p{C} without the unassigned Cn)
    Control,
}

struct CatTable {
    ascii: [Cat; 128],
    /// (first, last, category), sorted, disjoint
    ranges: Vec<(u32, u32, Cat)>,
}

impl CatTable {
    fn get() -> &'static CatTable {
        static T: OnceLock<CatTable> = OnceLock::new();
        T.get_or_init(|| {
            let mut ranges = Vec::new();
            // the regex crate's own Unicode tables, as ranges
            for (class, cat) in [
                (r"\p{M}", Cat::Mark),
                (r"\p{P}", Cat::Punct),
                (r"\p{S}", Cat::Symbol),
                (r"[\p{Cc}\p{Cf}\p{Co}]", Cat::Control),
            ] {
                let hir = regex_syntax::parse(class).expect("built-in class parses");
                let HirKind::Class(Class::Unicode(c)) = hir.kind() else { unreachable!("{class} is a Unicode class") };
                ranges.extend(c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32, cat)));
            }
            ranges.sort_unstable_by_key(|r| r.0);
            let mut t = CatTable { ascii: [Cat::Other; 128], ranges };
            for b in 0..128u8 {
                t.ascii[b as usize] = t.lookup(b as u32);
            }
            t
        })
    }

    fn lookup(&self, cp: u32) -> Cat {
        let i = self.ranges.partition_point(|r| r.0 <= cp);
        match i.checked_sub(1).map(|i| self.ranges[i]) {
            Some((_, last, cat)) if cp <= last => cat,
            _ => Cat::Other,
        }
    }

    fn of(&self, c: char) -> Cat {
        match self.ascii.get(c as usize) {
            Some(&cat) => cat,
            None => self.lookup(c as u32),
        }
    }
}

/// CJK ideographs, each a word of its own (BERT's list, with the upper
/// bound of Extension E and the start of Extension F merged as HF's Rust
/// tokenizers and llama.cpp have them: 0x2B820..0x2B91F is not included).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// The first char of `c`'s canonical decomposition (`c` itself if it has
/// none): what llama.cpp's NFD table maps a code point to.
fn nfd_first(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    std::iter::once(c).nfd().next().unwrap_or(c)
}

/// Simple (one-char) lowercase mapping. `char::to_lowercase` gives the full
/// mapping; its first char is the simple one (the only multi-char mapping,
/// U+0130, starts with its simple mapping 'i').
fn lower(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    c.to_lowercase().next().unwrap_or(c)
}

pub struct Wpm {
    /// Every token's text → id (a later duplicate wins, as in llama.cpp).
    index: FxHashMap<String, u32>,
    /// Longest token, in bytes.
    max_len: usize,
    unk: Option<u32>,
    lowercase: bool,
    strip_accents: bool,
}

impl Wpm {
    pub fn new(tokens: &[String], unk: Option<u32>, lowercase: bool, strip_accents: bool) -> Wpm {
        let mut index = FxHashMap::with_capacity_and_hasher(tokens.len(), Default::default());
        for (i, t) in tokens.iter().enumerate() {
            index.insert(t.clone(), i as u32);
        }
        let max_len = tokens.iter().map(String::len).max().unwrap_or(0);
        Wpm { index, max_len, unk, lowercase, strip_accents }
    }

    /// Split `text` into words (step 1 above); `f` gets each word, without
    /// the ▁, never empty.
    pub fn split_words(&self, text: &str, mut f: impl FnMut(&str)) {
        let cats = CatTable::get();
        let mut word = String::new();
        let mut flush = |word: &mut String| {
            if !word.is_empty() {
                f(word);
                word.clear();
            }
        };
        for c in text.chars() {
            let c = if self.strip_accents { nfd_first(c) } else { c };
            if c.is_whitespace() {
                flush(&mut word);
                continue;
            }
            let cat = cats.of(c);
            if c == '\0' || c == '\u{FFFD}' || cat == Cat::Control || (self.strip_accents && cat == Cat::Mark) {
                continue;
            }
            let out = if self.lowercase { lower(c) } else { c };
            if cat == Cat::Punct || (cat == Cat::Symbol && c.is_ascii()) || is_cjk(c) {
                flush(&mut word);
                word.push(out);
                flush(&mut word);
            } else {
                word.push(out);
            }
        }
        flush(&mut word);
    }

    /// Encode raw text (no special tokens), appending ids to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut buf = String::new();
        self.split_words(text, |w| {
            buf.clear();
            buf.push(SPACE);
            buf.push_str(w);
            self.encode_word(&buf, out);
        });
    }

    /// Greedy longest match over one word that already starts with ▁; the
    /// unknown token if any position matches nothing.
    fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let start = out.len();
        let mut i = 0;
        while i < word.len() {
            let hi = word.len().min(i + self.max_len);
            let hit = (i + 1..=hi)
                .rev()
                .filter(|&j| word.is_char_boundary(j))
                .find_map(|j| self.index.get(&word[i..j]).map(|&id| (j, id)));
            match hit {
                Some((j, id)) => {
                    out.push(id);
                    i = j;
                }
                None => {
                    out.truncate(start);
                    break;
                }
            }
        }
        if out.len() == start {
            out.extend(self.unk);
        }
    }
}

/// llama.cpp's `clean_spaces` pass over detokenized text: drop the space
/// before `?`, `!`, `.`, `,`; turn ` ' ` into `'`; and drop the space before
/// the contractions `'s`, `'m`, `'re`, `'ve` (not `'t`, `'d`, `'ll`).
pub fn clean_spaces(text: &mut Vec<u8>) {
    // each pass keeps text[0] and compacts the rest in place; a pass reads
    // the previous char from the uncompacted text
    let mut t = std::mem::take(text);
    // 1: " ?" " !" " ." " ,"
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    t = out;
    // 2: " ' " → "'" (the space after it is dropped, and no longer counts as
    // the char before the next one)
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        let x = t[i];
        if i > 0 && x == b'\'' && i + 1 < t.len() && t[i - 1] == b' ' && t[i + 1] == b' ' {
            out.pop();
            out.push(x);
            t[i + 1] = 0; // stands for the dropped space when the next char looks back
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    t = out;
    // 3: " 's" " 'm" " 're" " 've"
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && x == b'\'' && i + 1 < t.len() {
            let x1 = t[i + 1];
            let x2 = t.get(i + 2).copied();
            if matches!(x1, b's' | b'm') || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))) {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small BERT-style vocabulary as the GGUF converter writes it.
    fn wpm() -> Wpm {
        let toks = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "▁hello", "▁world", "▁,", "▁!", "▁'", "▁s", "▁play", "ing", "▁un", "aff", "able",
            "▁cafe", "▁naive", "▁$", "▁-", "▁a", "b", "▁我", "▁想", "▁你", "▁好", "▁x",
        ];
        let toks: Vec<String> = toks.iter().map(|s| s.to_string()).collect();
        Wpm::new(&toks, Some(1), true, true)
    }

    fn words(w: &Wpm, text: &str) -> Vec<String> {
        let mut v = Vec::new();
        w.split_words(text, |s| v.push(s.to_string()));
        v
    }

    fn ids(w: &Wpm, text: &str) -> Vec<u32> {
        let mut v = Vec::new();
        w.encode(text, &mut v);
        v
    }

    #[test]
    fn punctuation_and_ascii_symbols_are_words() {
        let w = wpm();
        assert_eq!(words(&w, "Hello, world!"), ["hello", ",", "world", "!"]);
        assert_eq!(words(&w, "it's"), ["it", "'", "s"]);
        // ASCII symbols split; non-ASCII symbols (€, ©) stay in the word
        assert_eq!(words(&w, "a$b+c€d©e"), ["a", "$", "b", "+", "c€d©e"]);
        // a run of punctuation is one word per char
        assert_eq!(words(&w, "...--"), [".", ".", ".", "-", "-"]);
        assert_eq!(ids(&w, "Hello, world!"), [4, 6, 5, 7]);
    }

    #[test]
    fn whitespace_and_controls() {
        let w = wpm();
        assert_eq!(words(&w, "  a\t\nb\u{3000}c\u{a0}d  "), ["a", "b", "c", "d"]);
        // controls, format chars, NUL and U+FFFD vanish without ending the word
        assert_eq!(words(&w, "a\u{0}b\u{200d}c\u{fffd}d\u{7}e"), ["abcde"]);
        assert!(words(&w, "").is_empty());
        assert!(ids(&w, " \n ").is_empty());
    }

    #[test]
    fn cjk_chars_are_words() {
        let w = wpm();
        assert_eq!(words(&w, "我想apple你好"), ["我", "想", "apple", "你", "好"]);
        // kana are not in BERT's CJK list: they stay in words (and lose
        // their voicing marks to the accent stripping: が → か)
        assert_eq!(words(&w, "ひらがな"), ["ひらかな"]);
        assert_eq!(ids(&w, "我想你好"), [21, 22, 23, 24]);
    }

    #[test]
    fn lowercase_and_accents() {
        let w = wpm();
        assert_eq!(words(&w, "CAFÉ Naïve ÄPFEL"), ["cafe", "naive", "apfel"]);
        assert_eq!(ids(&w, "Café NAÏVE"), [15, 16]);
        // a decomposition keeps only its first char: Hangul syllables become their leading jamo
        assert_eq!(words(&w, "한국"), ["\u{1112}\u{1100}"]);
        // İ: NFD gives I + combining dot (dropped), then 'i'
        assert_eq!(words(&w, "İ"), ["i"]);
        // without the normalizer options nothing changes but the split
        let toks: Vec<String> = ["[UNK]", "▁Café"].iter().map(|s| s.to_string()).collect();
        let raw = Wpm::new(&toks, Some(0), false, false);
        assert_eq!(words(&raw, "Café e\u{301}"), ["Café", "e\u{301}"]);
        assert_eq!(ids(&raw, "Café"), [1]);
    }

    #[test]
    fn longest_match_and_unknown_words() {
        let w = wpm();
        assert_eq!(ids(&w, "playing unaffable"), [10, 11, 12, 13, 14]);
        // "▁playx": ▁play then "x" is no continuation piece → the whole word is [UNK]
        assert_eq!(ids(&w, "playx hello"), [1, 4]);
        assert_eq!(ids(&w, "zzz"), [1]);
        // a continuation "b" after "▁a"
        assert_eq!(ids(&w, "ab a"), [19, 20, 19]);
    }

    #[test]
    fn clean_spaces_as_llama_cpp() {
        let c = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            clean_spaces(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(c(" hello , world !"), " hello, world!");
        assert_eq!(c(" it ' s"), " it's");
        assert_eq!(c(" it 's i 'm we 're we 've"), " it's i'm we're we've");
        assert_eq!(c(" don 't i 'd we 'll"), " don 't i 'd we 'll");
        assert_eq!(c(" a ' ' b"), " a'' b");
        assert_eq!(c(""), "");
        // the first char is kept, but the space before the second one goes
        assert_eq!(c(" ."), ".");
    }
}
