//! The vocabulary as GGUF metadata describes it (`tokenizer.ggml.*`): token
//! spellings, types, scores and the special token ids.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Token types as llama.cpp writes them to `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    pub fn from_i64(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Special token ids; `None` where the model has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn (chat models): from `eot_token_id` or recognised by text.
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
}

/// Which tokenizer algorithm `tokenizer.ggml.model` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// "gpt2": byte-level BPE with merges.
    Bpe,
    /// "llama": SentencePiece-style BPE with scores.
    Spm,
    /// "bert": WordPiece, greedy longest match (BERT's embedding models).
    Wpm,
}

pub struct Vocab {
    pub kind: ModelKind,
    pub tokens: Vec<String>,
    pub types: Vec<TokenType>,
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub special: SpecialTokens,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// Whether a SEP token is to follow the text (`add_sep_token`; on for
    /// WordPiece): what `llama_vocab_get_add_sep` reports. WordPiece's encode
    /// ends with SEP whenever it adds special tokens.
    pub add_sep: bool,
    /// `tokenizer.ggml.pre` (BPE only); "default" when absent, "gemma4" for
    /// the `gemma4` tokenizer model.
    pub pre: String,
    /// BERT normalizer options (WordPiece only): lowercase the text, and
    /// strip accents (NFD, combining marks dropped). Both default to on;
    /// `strip_accents` defaults to `lowercase`.
    pub lowercase: bool,
    pub strip_accents: bool,
}

/// Texts that mark an end-of-turn token when `eot_token_id` is absent.
const EOT_TEXTS: [&str; 5] = ["<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"];

impl Vocab {
    pub fn from_gguf(f: &GgufFile) -> Result<Vocab> {
        let err = |m: String| Error::Tokenizer(m);
        let model = f.get_str("tokenizer.ggml.model")?.ok_or_else(|| err("tokenizer.ggml.model is missing".into()))?;
        let kind = match model {
            // gemma4: BPE merges over raw UTF-8 with ▁ for spaces (PreKind::Gemma4)
            "gpt2" | "gemma4" => ModelKind::Bpe,
            "llama" => ModelKind::Spm,
            "bert" => ModelKind::Wpm,
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.model = {other:?} is not supported (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece, \"bert\" WordPiece, \"gemma4\")"
                )))
            }
        };
        let tokens = f.tokenizer_tokens()?.ok_or_else(|| err("tokenizer.ggml.tokens is missing".into()))?.to_vec();
        let n = tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(err(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let types = match f.tokenizer_token_types()? {
            Some(t) if t.len() == n => t.into_iter().map(TokenType::from_i64).collect(),
            Some(t) => return Err(err(format!("token_type has {} entries for {n} tokens", t.len()))),
            None => vec![TokenType::Normal; n],
        };
        let scores = match f.tokenizer_scores()? {
            Some(s) if s.len() == n => s.to_vec(),
            Some(s) => return Err(err(format!("scores has {} entries for {n} tokens", s.len()))),
            None => vec![0.0; n],
        };
        let merges = f.tokenizer_merges()?.map(|m| m.to_vec()).unwrap_or_default();
        if kind == ModelKind::Bpe && merges.is_empty() {
            return Err(err("byte-level BPE needs tokenizer.ggml.merges, which is missing or empty".into()));
        }
        let id = |key: &str| -> Result<Option<u32>> {
            match f.get_u64(&format!("tokenizer.ggml.{key}"))? {
                Some(v) if (v as usize) < n => Ok(Some(v as u32)),
                Some(v) => Err(err(format!("tokenizer.ggml.{key} = {v} is outside the vocab ({n} tokens)"))),
                None => Ok(None),
            }
        };
        let mut special = SpecialTokens {
            bos: id("bos_token_id")?,
            eos: id("eos_token_id")?,
            eot: id("eot_token_id")?,
            pad: id("padding_token_id")?,
            unk: id("unknown_token_id")?,
            sep: id("seperator_token_id")?.or(id("separator_token_id")?),
        };
        if kind == ModelKind::Wpm {
            // BERT's fixed ids where the file names none (as llama.cpp):
            // [PAD] 0, [UNK] 100, [CLS] 101 (the "BOS"), [SEP] 102
            let default = |v: Option<u32>, d: u32| v.or(((d as usize) < n).then_some(d));
            special.bos = default(special.bos, 101);
            special.unk = default(special.unk, 100);
            special.sep = default(special.sep, 102);
            special.pad = default(special.pad, 0);
        }
        if special.eot.is_none() {
            special.eot = EOT_TEXTS
                .iter()
                .find_map(|t| tokens.iter().position(|x| x == t).filter(|&i| types[i] == TokenType::Control))
                .map(|i| i as u32)
                .filter(|&i| Some(i) != special.eos);
        }
        // llama.cpp names the gemma4 model's pre-tokenizer itself
        let pre = if model == "gemma4" { "gemma4" } else { f.get_str("tokenizer.ggml.pre")?.unwrap_or("default") }.to_string();
        let mut add_bos = f.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(matches!(kind, ModelKind::Spm | ModelKind::Wpm));
        // llama.cpp turns BOS on for Gemma 4's pre-tokenizer whatever the file says
        if kind == ModelKind::Bpe && matches!(pre.as_str(), "gemma4" | "granite-embed-multi-311m") {
            add_bos = true;
        }
        let add_eos = f.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(kind == ModelKind::Spm);
        let sep_default = kind == ModelKind::Wpm
            || (kind == ModelKind::Bpe && matches!(pre.as_str(), "jina-v1-en" | "jina-v2-code" | "roberta-bpe"));
        let add_sep = f.get_bool("tokenizer.ggml.add_sep_token")?.unwrap_or(sep_default);
        let lowercase = f.get_bool("tokenizer.ggml.normalizer.lowercase")?.unwrap_or(true);
        let strip_accents = f.get_bool("tokenizer.ggml.normalizer.strip_accents")?.unwrap_or(lowercase);
        Ok(Vocab { kind, tokens, types, scores, merges, special, add_bos, add_eos, add_space_prefix, add_sep, pre, lowercase, strip_accents })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// End-of-generation: EOS or EOT.
    pub fn is_eog(&self, id: u32) -> bool {
        Some(id) == self.special.eos || Some(id) == self.special.eot
    }
}
