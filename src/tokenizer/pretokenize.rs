//! Pre-tokenizers: split text into pieces before BPE, as selected by
//! `tokenizer.ggml.pre`. Each is a sequence of regexes; every stage splits
//! every piece into its matches and the gaps between them ("isolated"), the
//! way llama.cpp and HF `pre_tokenizers.Split(behavior="isolated")` do.
//!
//! The gpt2-family patterns end in `\s+(?!\S)|\s+`. The `regex` crate has no
//! look-ahead, so those stages use `\s+` and then apply the look-ahead by
//! hand: a whitespace run matched by that last branch that is followed by a
//! non-space gives its last character to the next piece.

use regex::Regex;

/// The contractions, case-insensitive as llama3/qwen2 spell them.
const CONTRACTIONS_CI: &str = "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]";

/// gpt2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn gpt2() -> String {
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+".to_string()
}

/// llama3 / qwen2: `(?:contractions)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// with `\p{N}{1,3}` (llama3) or `\p{N}` (qwen2).
fn llama3_like(numbers: &str) -> String {
    format!(r"(?:{CONTRACTIONS_CI})|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{numbers}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+")
}

/// How a stage's final `\s+` branch stands in for `\s+(?!\S)|\s+`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lookahead {
    /// Plain regex, no look-ahead emulation.
    None,
    /// gpt2 family: any all-whitespace match came from the final branch.
    Gpt2,
    /// llama3 family: an all-whitespace match with no \r or \n came from the
    /// final branch (`\s*[\r\n]+` takes every run that holds a newline).
    Llama3,
}

struct Stage {
    re: Regex,
    lookahead: Lookahead,
}

/// The pre-tokenizer kinds named by `tokenizer.ggml.pre`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PreKind {
    Gpt2,
    Llama3,
    Qwen2,
    /// `\p{N}` isolated, then gpt2 (smollm, starcoder, refact, codeshell, ...).
    DigitsThenGpt2,
    Falcon,
    DeepseekLlm,
    DeepseekCoder,
    /// Qwen2's split with combining marks (`\p{M}`) kept in words.
    Qwen35,
    /// Gemma 4: SentencePiece-style BPE (raw UTF-8, spaces already ▁), cut
    /// only into lines and runs of newlines.
    Gemma4,
}

impl PreKind {
    /// Map a `tokenizer.ggml.pre` value; `None` for unknown values.
    pub fn from_name(pre: &str) -> Option<PreKind> {
        Some(match pre {
            "default" | "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" | "jais" => PreKind::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => PreKind::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "megrez" => PreKind::Qwen2,
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
                PreKind::DigitsThenGpt2
            }
            "falcon" => PreKind::Falcon,
            "deepseek-llm" => PreKind::DeepseekLlm,
            "deepseek-coder" => PreKind::DeepseekCoder,
            "qwen35" => PreKind::Qwen35,
            "gemma4" | "granite-embed-multi-311m" => PreKind::Gemma4,
            _ => return None,
        })
    }
}

pub struct PreTokenizer {
    pub kind: PreKind,
    stages: Vec<Stage>,
}

fn stage(pattern: &str, lookahead: Lookahead) -> Stage {
    Stage { re: Regex::new(pattern).expect("built-in pre-tokenizer pattern compiles"), lookahead }
}

impl PreTokenizer {
    pub fn new(kind: PreKind) -> PreTokenizer {
        use Lookahead as L;
        let stages = match kind {
            PreKind::Gpt2 => vec![stage(&gpt2(), L::Gpt2)],
            PreKind::Llama3 => vec![stage(&llama3_like(r"\p{N}{1,3}"), L::Llama3)],
            PreKind::Qwen2 => vec![stage(&llama3_like(r"\p{N}"), L::Llama3)],
            PreKind::DigitsThenGpt2 => vec![stage(r"\p{N}", L::None), stage(&gpt2(), L::Gpt2)],
            PreKind::Falcon => vec![
                stage(r"[\p{P}\$\+<=>\^~\|`]+", L::None),
                stage(&gpt2(), L::Gpt2),
                stage(r"[0-9][0-9][0-9]", L::None),
            ],
            PreKind::DeepseekLlm => vec![
                stage(r"[\r\n]", L::None),
                stage(r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+", L::None),
                stage(r"\s?[!-/:-~！-／：-～‘-‟　-。]+", L::None),
                stage(r"\s+$", L::None),
                stage(r"[一-龥ࠀ-一가-퟿]+", L::None),
                stage(r"\p{N}+", L::None),
            ],
            // llama.cpp's list for deepseek-coder (llama-vocab.cpp)
            PreKind::DeepseekCoder => vec![
                stage(r"[\r\n]", L::None),
                stage(r"\s?\p{L}+", L::None),
                stage(r"\s?\p{P}+", L::None),
                stage(r"[一-龥ࠀ-一가-퟿]+", L::None),
                stage(r"\p{N}", L::None),
            ],
            PreKind::Qwen35 => vec![stage(
                &format!(r"(?:{CONTRACTIONS_CI})|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}\p{{M}}]+|\p{{N}}| ?[^\s\p{{L}}\p{{M}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+"),
                L::Llama3,
            )],
            PreKind::Gemma4 => vec![stage(r"[^\n]+|\n+", L::None)],
        };
        PreTokenizer { kind, stages }
    }

    /// Split `text` into pieces (sub-slices of `text`, in order, covering it).
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for st in &self.stages {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                split_stage(st, p, &mut next);
            }
            pieces = next;
        }
        pieces
    }
}

fn split_stage<'t>(st: &Stage, text: &'t str, out: &mut Vec<&'t str>) {
    let mut pos = 0; // end of the last piece pushed
    let mut at = 0; // where to search from
    while at < text.len() {
        let Some(m) = st.re.find_at(text, at) else { break };
        let (s, mut e) = (m.start(), m.end());
        if e == s {
            // empty match: step one char and keep looking
            at = s + text[s..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        if st.lookahead != Lookahead::None && e < text.len() {
            let piece = &text[s..e];
            let all_ws = piece.chars().all(char::is_whitespace);
            let final_branch = all_ws
                && (st.lookahead == Lookahead::Gpt2 || !piece.contains(['\r', '\n']));
            if final_branch && !text[e..].starts_with(char::is_whitespace) {
                // `\s+(?!\S)`: give the last whitespace char to the next piece,
                // unless the run is a single char (then `\s+` takes it whole).
                let last = piece.chars().next_back().unwrap().len_utf8();
                if e - s > last {
                    e -= last;
                }
            }
        }
        if s > pos {
            out.push(&text[pos..s]);
        }
        out.push(&text[s..e]);
        pos = e;
        at = e;
    }
    if pos < text.len() {
        out.push(&text[pos..]);
    }
}
