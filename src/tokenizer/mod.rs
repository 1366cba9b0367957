//! Tokenizers built from GGUF metadata alone (`tokenizer.ggml.*`).
//!
//! - `gpt2`: byte-level BPE with merges, pre-split by the pattern
//!   `tokenizer.ggml.pre` selects ([`pretokenize`]).
//! - `llama`: SentencePiece-style BPE with scores and `<0xNN>` byte
//!   fallback ([`spm`]); Gemma-3 uses it.
//! - `gemma4`: BPE merges over raw UTF-8 with ▁ for spaces and `<0xNN>`
//!   byte fallback ([`bpe::Bpe::new_raw`]), split only at newlines.
//! - `bert`: WordPiece ([`wpm`]), BERT's embedding models.
//!
//! Special tokens: user-defined tokens are always matched whole in the text;
//! control tokens only when the caller asks (`parse_special`). Matching is
//! leftmost-longest, as llama.cpp and HF do.

pub mod bpe;
pub mod pretokenize;
pub mod spm;
pub mod stream;
pub mod vocab;
pub mod wpm;

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
pub use pretokenize::{PreKind, PreTokenizer};
pub use stream::StreamDecoder;
pub use vocab::{ModelKind, SpecialTokens, TokenType, Vocab};

enum Algo {
    Bpe(bpe::Bpe, PreTokenizer),
    Spm(spm::Spm),
    Wpm(wpm::Wpm),
}

/// Each token's bytes for a vocabulary written SentencePiece-style: ▁ for a
/// space, `<0xNN>` byte tokens.
fn spm_pieces(vocab: &Vocab) -> Vec<Vec<u8>> {
    vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .map(|(t, ty)| match (ty, spm::parse_byte_token(t)) {
            (TokenType::Byte, Some(b)) => vec![b],
            _ => t.replace('\u{2581}', " ").into_bytes(),
        })
        .collect()
}

struct SpecialMatcher {
    ac: AhoCorasick,
    ids: Vec<u32>,
}

impl SpecialMatcher {
    fn new(vocab: &Vocab, include: impl Fn(TokenType) -> bool) -> Result<Option<SpecialMatcher>> {
        let ids: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&i| include(vocab.types[i as usize]) && !vocab.tokens[i as usize].is_empty())
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(ids.iter().map(|&i| vocab.tokens[i as usize].as_str()))
            .map_err(|e| Error::Tokenizer(format!("special token matcher: {e}")))?;
        Ok(Some(SpecialMatcher { ac, ids }))
    }
}

enum Fragment<'t> {
    Token(u32),
    Text(&'t str),
}

pub struct Tokenizer {
    pub vocab: Vocab,
    algo: Algo,
    /// Each token's bytes when detokenized.
    pieces: Vec<Vec<u8>>,
    /// user-defined only (always parsed)
    user: Option<SpecialMatcher>,
    /// control + unknown + user-defined (parse_special = true)
    all: Option<SpecialMatcher>,
    /// Set when `tokenizer.ggml.pre` was not recognised.
    pub warning: Option<String>,
}

impl Tokenizer {
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
        Self::from_vocab(Vocab::from_gguf(f)?)
    }

    pub fn from_vocab(vocab: Vocab) -> Result<Tokenizer> {
        let mut warning = None;
        let (algo, pieces) = match vocab.kind {
            ModelKind::Bpe => {
                let kind = PreKind::from_name(&vocab.pre).unwrap_or_else(|| {
                    let w = format!(
                        "unknown tokenizer.ggml.pre = {:?}; falling back to the gpt2 pre-tokenizer (token ids may differ from the model's own tokenizer)",
                        vocab.pre
                    );
                    eprintln!("rocmforge: warning: {w}");
                    warning = Some(w);
                    PreKind::Gpt2
                });
                let pieces: Vec<Vec<u8>>;
                let mut bpe;
                if kind == PreKind::Gemma4 {
                    bpe = bpe::Bpe::new_raw(&vocab.tokens, &vocab.merges, vocab.special.unk).map_err(Error::Tokenizer)?;
                    pieces = spm_pieces(&vocab);
                    // llama.cpp: a run of newlines that is a token is that token
                    let texts: Vec<Vec<u8>> = vocab.tokens.iter().map(|t| t.as_bytes().to_vec()).collect();
                    bpe.whole_tokens(&texts, |t| !t.is_empty() && t.iter().all(|&b| b == b'\n'));
                } else {
                    bpe = bpe::Bpe::new(&vocab.tokens, &vocab.merges, vocab.special.unk).map_err(Error::Tokenizer)?;
                    let inv: HashMap<char, u8> = bpe::byte_to_char().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
                    pieces = vocab
                        .tokens
                        .iter()
                        .map(|t| bpe::unmap_token(t, &inv).unwrap_or_else(|| t.as_bytes().to_vec()))
                        .collect();
                    // llama.cpp's `ignore_merges` pre-tokenizers (llama-vocab.cpp)
                    const IGNORE_MERGES: [&str; 11] = ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "minicpm5", "youtu"];
                    if IGNORE_MERGES.contains(&vocab.pre.as_str()) {
                        bpe.ignore_merges(&pieces);
                    }
                }
                (Algo::Bpe(bpe, PreTokenizer::new(kind)), pieces)
            }
            ModelKind::Spm => {
                let mergeable: Vec<bool> =
                    vocab.types.iter().map(|t| matches!(t, TokenType::Normal | TokenType::Undefined)).collect();
                let spm = spm::Spm::new(&vocab.tokens, &vocab.scores, &mergeable, vocab.special.unk);
                let pieces = spm_pieces(&vocab);
                (Algo::Spm(spm), pieces)
            }
            ModelKind::Wpm => {
                let wpm = wpm::Wpm::new(&vocab.tokens, vocab.special.unk, vocab.lowercase, vocab.strip_accents);
                let pieces = vocab.tokens.iter().map(|t| t.replace('\u{2581}', " ").into_bytes()).collect();
                (Algo::Wpm(wpm), pieces)
            }
        };
        let mut pieces = pieces;
        // control, unknown and user-defined tokens render as their text, not
        // byte-decoded or with ▁ unescaped (llama.cpp's token_to_piece): e.g.
        // deepseek's user-defined "ö" is "ö", not the byte 0xF6
        for ((p, t), ty) in pieces.iter_mut().zip(&vocab.tokens).zip(&vocab.types) {
            if matches!(ty, TokenType::Control | TokenType::Unknown | TokenType::UserDefined) {
                *p = t.as_bytes().to_vec();
            }
        }
        let user = SpecialMatcher::new(&vocab, |t| t == TokenType::UserDefined)?;
        let all = SpecialMatcher::new(&vocab, |t| {
            matches!(t, TokenType::UserDefined | TokenType::Control | TokenType::Unknown)
        })?;
        Ok(Tokenizer { vocab, algo, pieces, user, all, warning })
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    fn partition<'t>(&self, text: &'t str, parse_special: bool, literal: &[std::ops::Range<usize>]) -> Vec<Fragment<'t>> {
        let matcher = if parse_special { self.all.as_ref() } else { self.user.as_ref() };
        let Some(m) = matcher else { return vec![Fragment::Text(text)] };
        let mut out = Vec::new();
        let mut pos = 0;
        for hit in m.ac.find_iter(text) {
            // control-token text inside a literal span stays text (user-defined
            // tokens are matched everywhere, as without parse_special)
            let id = m.ids[hit.pattern().as_usize()];
            if self.vocab.types[id as usize] != TokenType::UserDefined && literal.iter().any(|r| hit.start() < r.end && r.start < hit.end()) {
                continue;
            }
            if hit.start() > pos {
                out.push(Fragment::Text(&text[pos..hit.start()]));
            }
            out.push(Fragment::Token(m.ids[hit.pattern().as_usize()]));
            pos = hit.end();
        }
        if pos < text.len() {
            out.push(Fragment::Text(&text[pos..]));
        }
        out
    }

    /// Encode text to token ids.
    ///
    /// `add_special`: add BOS/EOS as the model's metadata asks
    /// (`add_bos_token` / `add_eos_token`). `parse_special`: control tokens
    /// written in the text (e.g. `<|im_start|>`) become their single ids;
    /// otherwise they are tokenized as plain text. User-defined tokens are
    /// always matched whole.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_with_literals(text, add_special, parse_special, &[])
    }

    /// Where `text` holds the text of a control token (one that
    /// `parse_special` turns into its id; user-defined tokens are not
    /// listed), leftmost-longest, as byte ranges.
    pub fn control_token_spans(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let Some(m) = &self.all else { return Vec::new() };
        m.ac.find_iter(text)
            .filter(|h| self.vocab.types[m.ids[h.pattern().as_usize()] as usize] != TokenType::UserDefined)
            .map(|h| h.start()..h.end())
            .collect()
    }

    /// [`Tokenizer::encode`], where control-token text that overlaps one of
    /// the `literal` byte ranges is tokenized as plain text even with
    /// `parse_special`: a chat prompt's control tokens come from its
    /// template, never from what a user wrote (no injection).
    pub fn encode_with_literals(&self, text: &str, add_special: bool, parse_special: bool, literal: &[std::ops::Range<usize>]) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        // WordPiece: [CLS] text [SEP] whenever special tokens are added (llama.cpp)
        let wpm = matches!(self.algo, Algo::Wpm(_));
        if add_special && (self.vocab.add_bos || wpm) {
            out.extend(self.vocab.special.bos);
        }
        let mut cache: FxHashMap<&str, (usize, usize)> = FxHashMap::default();
        // SentencePiece(-style) text with ▁ for spaces, built once, then encoded per fragment
        let frags = self.partition(text, parse_special, literal);
        let escape_bpe = matches!(&self.algo, Algo::Bpe(_, pre) if pre.kind == PreKind::Gemma4);
        let escaped: Vec<String> = match &self.algo {
            Algo::Spm(_) => frags
                .iter()
                .enumerate()
                .map(|(i, f)| match f {
                    Fragment::Text(t) => {
                        // an empty text gets no space prefix (llama.cpp: "" → no tokens)
                        let prefix = if self.vocab.add_space_prefix && i == 0 && !t.is_empty() { "\u{2581}" } else { "" };
                        format!("{prefix}{}", t.replace(' ', "\u{2581}"))
                    }
                    Fragment::Token(_) => String::new(),
                })
                .collect(),
            Algo::Bpe(..) if escape_bpe => frags
                .iter()
                .map(|f| match f {
                    Fragment::Text(t) => t.replace(' ', "\u{2581}"),
                    Fragment::Token(_) => String::new(),
                })
                .collect(),
            Algo::Bpe(..) | Algo::Wpm(_) => Vec::new(),
        };
        let mut spm_cache: FxHashMap<&str, (usize, usize)> = FxHashMap::default();
        for (i, frag) in frags.into_iter().enumerate() {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(t) => match &self.algo {
                    Algo::Bpe(bpe, pre) => {
                        let t = if escape_bpe { escaped[i].as_str() } else { t };
                        for piece in pre.split(t) {
                            // repeated pieces (common words) reuse earlier output
                            if let Some(&(s, e)) = cache.get(piece) {
                                out.extend_from_within(s..e);
                                continue;
                            }
                            let s = out.len();
                            bpe.encode_piece(piece, &mut out);
                            if piece.len() < 64 {
                                cache.insert(piece, (s, out.len()));
                            }
                        }
                    }
                    Algo::Spm(spm) => {
                        spm.encode_text(&escaped[i], &mut out, &mut spm_cache);
                    }
                    Algo::Wpm(w) => w.encode(t, &mut out),
                },
            }
        }
        if add_special && wpm {
            out.extend(self.vocab.special.sep);
        } else if add_special && self.vocab.add_eos {
            out.extend(self.vocab.special.eos);
        }
        out
    }

    /// The bytes token `id` stands for. Control tokens render as their text
    /// only when `special` is true (otherwise empty); `None` if out of range.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Option<&[u8]> {
        let i = id as usize;
        let ty = *self.vocab.types.get(i)?;
        if !special && matches!(ty, TokenType::Control | TokenType::Unknown | TokenType::Unused) {
            return Some(&[]);
        }
        Some(&self.pieces[i])
    }

    /// Decode a whole sequence to bytes (possibly not UTF-8 if the sequence
    /// ends inside a multi-byte char). Out-of-range ids are an error.
    /// WordPiece text is llama.cpp's: each word piece brings its space (so
    /// the text starts with one), then [`wpm::clean_spaces`].
    pub fn decode(&self, ids: &[u32], special: bool) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let p = self
                .token_to_piece(id, special)
                .ok_or_else(|| Error::InvalidArgument(format!("token id {id} is outside the vocab ({} tokens)", self.n_vocab())))?;
            // SentencePiece's space prefix is not part of the text.
            let p = if k == 0 && matches!(self.algo, Algo::Spm(_)) && self.vocab.add_space_prefix {
                p.strip_prefix(b" ").unwrap_or(p)
            } else {
                p
            };
            out.extend_from_slice(p);
        }
        if matches!(self.algo, Algo::Wpm(_)) {
            wpm::clean_spaces(&mut out);
        }
        Ok(out)
    }

    /// Decode to a String, replacing invalid UTF-8 with U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32], special: bool) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode(ids, special)?).into_owned())
    }
}
