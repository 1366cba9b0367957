//! `llama_model` and `llama_vocab`: a ROCmForge [`Model`] (or, for a
//! vocab-only file, just its tokenizer) with what llama.h reads off it
//! (metadata as strings, token texts, special ids) prepared once at load.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::sync::Arc;

use rocmforge::gguf::{GgufFile, Value};
use rocmforge::model::{BackendChoice, LoadOptions, Model};
use rocmforge::tokenizer::vocab::{ModelKind, TokenType};
use rocmforge::tokenizer::Tokenizer;

use crate::log::{info, warning};
use crate::types::*;

/// Where a vocabulary's tokenizer lives.
enum Tok {
    Model(Arc<Model>),
    Own(Box<Tokenizer>),
}

pub struct Vocab {
    tok: Tok,
    /// Every token's text as a C string (`llama_vocab_get_text`).
    texts: Vec<CString>,
    /// "\n" as one token, if the vocabulary has one.
    nl: llama_token,
    fim: [llama_token; 6],
}

impl Vocab {
    pub fn tok(&self) -> &Tokenizer {
        match &self.tok {
            Tok::Model(m) => &m.tokenizer,
            Tok::Own(t) => t,
        }
    }

    pub fn n_tokens(&self) -> i32 {
        self.texts.len() as i32
    }

    /// The id as a vocabulary index, if it is one.
    pub fn id(&self, t: llama_token) -> Option<u32> {
        (t >= 0 && (t as usize) < self.texts.len()).then_some(t as u32)
    }

    pub fn text(&self, t: llama_token) -> Option<&CStr> {
        self.id(t).map(|i| self.texts[i as usize].as_c_str())
    }

    pub fn score(&self, t: llama_token) -> f32 {
        self.id(t).and_then(|i| self.tok().vocab.scores.get(i as usize).copied()).unwrap_or(0.0)
    }

    pub fn token_type(&self, t: llama_token) -> Option<TokenType> {
        self.id(t).and_then(|i| self.tok().vocab.types.get(i as usize).copied())
    }

    /// llama.cpp's attribute bits for a token type.
    pub fn attr(&self, t: llama_token) -> i32 {
        match self.token_type(t) {
            Some(TokenType::Unknown) => 1,
            Some(TokenType::Unused) => 2,
            Some(TokenType::Normal) => 4,
            Some(TokenType::Control) => 8,
            Some(TokenType::UserDefined) => 16,
            Some(TokenType::Byte) => 32,
            _ => 0,
        }
    }

    pub fn is_eog(&self, t: llama_token) -> bool {
        self.id(t).is_some_and(|i| self.tok().vocab.is_eog(i))
    }

    pub fn is_control(&self, t: llama_token) -> bool {
        self.token_type(t) == Some(TokenType::Control)
    }

    fn special(v: Option<u32>) -> llama_token {
        v.map_or(LLAMA_TOKEN_NULL, |i| i as llama_token)
    }

    pub fn bos(&self) -> llama_token {
        Self::special(self.tok().vocab.special.bos)
    }
    pub fn eos(&self) -> llama_token {
        Self::special(self.tok().vocab.special.eos)
    }
    pub fn eot(&self) -> llama_token {
        Self::special(self.tok().vocab.special.eot)
    }
    pub fn sep(&self) -> llama_token {
        Self::special(self.tok().vocab.special.sep)
    }
    pub fn pad(&self) -> llama_token {
        Self::special(self.tok().vocab.special.pad)
    }
    pub fn nl(&self) -> llama_token {
        self.nl
    }
    /// pre, suf, mid, pad, rep, sep
    pub fn fim(&self, i: usize) -> llama_token {
        self.fim[i]
    }
    pub fn add_bos(&self) -> bool {
        self.tok().vocab.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.tok().vocab.add_eos
    }
    /// llama.h's `enum llama_vocab_type`.
    pub fn kind(&self) -> i32 {
        match self.tok().vocab.kind {
            ModelKind::Spm => 1,
            ModelKind::Bpe => 2,
            ModelKind::Wpm => 3,
        }
    }

    fn new(tok: Tok, file: &GgufFile) -> Vocab {
        let mut v = Vocab { tok, texts: Vec::new(), nl: LLAMA_TOKEN_NULL, fim: [LLAMA_TOKEN_NULL; 6] };
        let t = v.tok();
        let texts = t.vocab.tokens.iter().map(|s| CString::new(s.replace('\0', "")).expect("NUL removed")).collect();
        let nl = match t.encode("\n", false, false).as_slice() {
            // WordPiece has no newline: llama.cpp answers [PAD]
            _ if t.vocab.kind == ModelKind::Wpm => Self::special(t.vocab.special.pad),
            [one] => *one as llama_token,
            _ => LLAMA_TOKEN_NULL,
        };
        let fim = ["pre", "suf", "mid", "pad", "rep", "sep"].map(|k| match file.get(&format!("tokenizer.ggml.fim_{k}_token_id")) {
            Some(Value::U32(i)) => *i as llama_token,
            Some(Value::I32(i)) => *i,
            _ => LLAMA_TOKEN_NULL,
        });
        v.texts = texts;
        v.nl = nl;
        v.fim = fim;
        v
    }
}

pub struct LlamaModel {
    /// None for a vocabulary-only file (`vocab_only`).
    pub model: Option<Arc<Model>>,
    pub vocab: Vocab,
    /// Scalar metadata as llama.cpp prints it (arrays skipped), in file order.
    pub meta: Vec<(CString, CString)>,
    pub desc: String,
    pub size: u64,
    pub n_params: u64,
    pub ftype: i32,
    pub arch: String,
    pub n_ctx_train: i32,
    pub n_embd: i32,
    pub n_layer: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    pub n_swa: i32,
    /// `tokenizer.chat_template` and the named `tokenizer.chat_template.NAME`s.
    pub templates: Vec<(Option<String>, CString)>,
    pub t_load_ms: f64,
}

/// A metadata value as llama.cpp's `gguf_kv_to_str` writes it; None for arrays.
fn value_str(v: &Value) -> Option<String> {
    Some(match v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => format!("{x:.6}"),
        Value::F64(x) => format!("{x:.6}"),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(_) => return None,
    })
}

/// llama.cpp's `llama_model_ftype_name` for the common types.
pub fn ftype_name(ftype: i32) -> &'static str {
    match ftype {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        25 => "IQ4_NL - 4.5 bpw",
        30 => "IQ4_XS - 4.25 bpw",
        32 => "BF16",
        38 => "MXFP4 MoE",
        _ => "unknown, may not work",
    }
}

fn human(n: u64) -> String {
    match n {
        0..=999_999 => format!("{:.0}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.0}M", n as f64 / 1e6),
        _ => format!("{:.1}B", n as f64 / 1e9),
    }
}

impl LlamaModel {
    pub fn load(path: &Path, p: &llama_model_params) -> Result<LlamaModel, String> {
        let t0 = std::time::Instant::now();
        let (model, file_for_meta) = if p.vocab_only {
            let f = GgufFile::open(path).map_err(|e| e.to_string())?;
            (None, f)
        } else {
            let backend = if p.n_gpu_layers == 0 { BackendChoice::Cpu } else { BackendChoice::Auto };
            let mut progress = |x: f32| -> bool {
                match p.progress_callback {
                    // SAFETY: the caller's callback, with the user data it gave for it.
                    Some(f) => unsafe { f(x, p.progress_callback_user_data) },
                    None => true,
                }
            };
            let opts = LoadOptions { n_threads: 0, backend, progress: Some(&mut progress), ..Default::default() };
            let m = Model::load(path, opts).map_err(|e| e.to_string())?;
            let layers = m.cfg.n_layer as i32;
            if p.n_gpu_layers > 0 && p.n_gpu_layers < layers && m.backend.is_gpu() {
                warning!("n_gpu_layers = {} of {layers}: ROCmForge does not split a model between CPU and GPU; all layers are on {}", p.n_gpu_layers, m.backend_description());
            }
            info!("llama_model_load: {} on {}", path.display(), m.backend_description());
            let f = GgufFile::open(path).map_err(|e| e.to_string())?;
            (Some(m), f)
        };
        let f = &file_for_meta;
        let vocab = match &model {
            Some(m) => Vocab::new(Tok::Model(m.clone()), f),
            None => Vocab::new(Tok::Own(Box::new(Tokenizer::from_gguf(f).map_err(|e| e.to_string())?)), f),
        };
        let meta = f
            .metadata()
            .filter_map(|(k, v)| Some((CString::new(k).ok()?, CString::new(value_str(v)?.replace('\0', "")).ok()?)))
            .collect();
        let size = f.tensors().iter().map(|t| t.n_bytes).sum();
        let n_params = f.tensors().iter().map(|t| t.n_elements()).sum();
        let arch = match f.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let ftype = match f.get("general.file_type") {
            Some(Value::U32(x)) => *x as i32,
            Some(Value::I32(x)) => *x,
            _ => 0,
        };
        let mut templates = Vec::new();
        for (k, v) in f.metadata() {
            if let (Some(rest), Value::String(s)) = (k.strip_prefix("tokenizer.chat_template"), v) {
                let name = rest.strip_prefix('.').map(str::to_string);
                if rest.is_empty() || name.is_some() {
                    templates.push((name, CString::new(s.replace('\0', "")).expect("NUL removed")));
                }
            }
        }
        let c = model.as_ref().map(|m| &m.cfg);
        let dim = |f: fn(&rocmforge::model::Config) -> usize| c.map_or(0, |c| f(c) as i32);
        Ok(LlamaModel {
            desc: format!("{arch} {} {}", human(n_params), ftype_name(ftype)),
            n_ctx_train: dim(|c| c.n_ctx_train),
            n_embd: dim(|c| c.n_embd),
            n_layer: dim(|c| c.n_layer),
            n_head: dim(|c| c.n_head),
            n_head_kv: dim(|c| c.n_head_kv),
            n_swa: dim(|c| c.sliding_window.unwrap_or(0)),
            model,
            vocab,
            meta,
            size,
            n_params,
            ftype,
            arch,
            templates,
            t_load_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub fn meta_value(&self, key: &[u8]) -> Option<&CStr> {
        self.meta.iter().find(|(k, _)| k.as_bytes() == key).map(|(_, v)| v.as_c_str())
    }

    pub fn chat_template(&self, name: Option<&str>) -> Option<&CStr> {
        self.templates.iter().find(|(n, _)| n.as_deref() == name).map(|(_, t)| t.as_c_str())
    }
}
