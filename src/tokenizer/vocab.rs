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
    /// `tokenizer.ggml.pre` (BPE only); "default" when absent.
    pub pre: String,
}

/// Texts that mark an end-of-turn token when `eot_token_id` is absent.
const EOT_TEXTS: [&str; 5] = ["<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"];

impl Vocab {
    pub fn from_gguf(f: &GgufFile) -> Result<Vocab> {
        let err = |m: String| Error::Tokenizer(m);
        let model = f.get_str("tokenizer.ggml.model")?.ok_or_else(|| err("tokenizer.ggml.model is missing".into()))?;
        let kind = match model {
            "gpt2" => ModelKind::Bpe,
            "llama" => ModelKind::Spm,
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.model = {other:?} is not supported (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
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
        if special.eot.is_none() {
            special.eot = EOT_TEXTS
                .iter()
                .find_map(|t| tokens.iter().position(|x| x == t).filter(|&i| types[i] == TokenType::Control))
                .map(|i| i as u32)
                .filter(|&i| Some(i) != special.eos);
        }
        let add_bos = f.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(kind == ModelKind::Spm);
        let add_eos = f.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(kind == ModelKind::Spm);
        let pre = f.get_str("tokenizer.ggml.pre")?.unwrap_or("default").to_string();
        Ok(Vocab { kind, tokens, types, scores, merges, special, add_bos, add_eos, add_space_prefix, pre })
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
