//! Structure-aware mutation of whole model files, and the load path they
//! drive: parse, build the model (config, tokenizer, weights), open a
//! session and evaluate two tokens. The bytes that steer the mutations come
//! from libFuzzer (`fuzz/fuzz_targets/load_path.rs`) or from a seeded
//! generator (`tests/hardening.rs`, the CI-sized run).
//!
//! The mutations keep the file parseable most of the time so that the
//! loader's later stages (hyperparameters, tokenizer, weight shapes, the
//! forward pass) see hostile values, not only the header parser.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use rocmforge::gguf::writer::TensorSpec;
use rocmforge::gguf::{Array, GgufFile, Value};
use rocmforge::model::{BackendChoice, LoadOptions, Model};
use rocmforge::backend::Logits;
use rocmforge::engine::Session;
use rocmforge::quant::GgmlType;

use super::tiny::{tiny_model, TinyModel, TINY_ARCHS};

/// Bytes that steer choices; reads past the end give zeros.
pub struct Src<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Src<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Src { data, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        self.u32() as u64 | (self.u32() as u64) << 32
    }
    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            self.u8() as usize % n
        } else {
            self.u32() as usize % n
        }
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    pub fn pick<'t, T>(&mut self, from: &'t [T]) -> &'t T {
        &from[self.below(from.len())]
    }
    /// An integer that sits on a boundary more often than not.
    pub fn interesting(&mut self) -> u64 {
        const I: [u64; 26] = [
            0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 63, 64, 255, 256, 4095, 65_535, 65_536,
            (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, u64::MAX - 1, u64::MAX,
        ];
        match self.u8() % 4 {
            0 => self.u8() as u64,
            1 => self.u64(),
            _ => *self.pick(&I),
        }
    }
    pub fn float(&mut self) -> f32 {
        const F: [f32; 12] = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 0.5, 1e6];
        if self.bool() {
            *self.pick(&F)
        } else {
            f32::from_bits(self.u32())
        }
    }
    pub fn string(&mut self) -> String {
        const S: [&str; 10] = ["", "llama", "qwen2", "gemma3", "gpt2", "bert", "none", "yarn", "linear", "a b"];
        match self.u8() % 3 {
            0 => self.pick(&S).to_string(),
            1 => (0..self.below(12)).map(|_| (b'a' + self.below(26) as u8) as char).collect(),
            _ => {
                // arbitrary (valid UTF-8) text, control characters and all
                let n = self.below(8);
                (0..n).filter_map(|_| char::from_u32(self.u32() % 0x11_0000)).collect()
            }
        }
    }
    /// A value of a random type, sometimes an array.
    pub fn value(&mut self) -> Value {
        let x = self.interesting();
        match self.below(14) {
            0 => Value::U8(x as u8),
            1 => Value::I8(x as i8),
            2 => Value::U16(x as u16),
            3 => Value::I16(x as i16),
            4 => Value::U32(x as u32),
            5 => Value::I32(x as i32),
            6 => Value::F32(self.float()),
            7 => Value::Bool(x & 1 == 1),
            8 => Value::String(self.string()),
            9 => Value::U64(x),
            10 => Value::I64(x as i64),
            11 => Value::F64(self.float() as f64),
            12 => Value::Array(Array::String((0..self.below(4)).map(|_| self.string()).collect())),
            _ => Value::Array(Array::I32((0..self.below(4)).map(|_| self.interesting() as i32).collect())),
        }
    }
    /// The same kind of value as `v` (an integer stays an integer of its
    /// width), so the key keeps its meaning and only its value is hostile.
    pub fn like(&mut self, v: &Value) -> Value {
        let x = self.interesting();
        match v {
            Value::U8(_) => Value::U8(x as u8),
            Value::I8(_) => Value::I8(x as i8),
            Value::U16(_) => Value::U16(x as u16),
            Value::I16(_) => Value::I16(x as i16),
            Value::U32(_) => Value::U32(x as u32),
            Value::I32(_) => Value::I32(x as i32),
            Value::U64(_) => Value::U64(x),
            Value::I64(_) => Value::I64(x as i64),
            Value::F32(_) => Value::F32(self.float()),
            Value::F64(_) => Value::F64(self.float() as f64),
            Value::Bool(b) => Value::Bool(!b),
            Value::String(_) => Value::String(self.string()),
            Value::Array(a) => Value::Array(self.like_array(a)),
        }
    }
    fn like_array(&mut self, a: &Array) -> Array {
        let mut a = a.clone();
        match &mut a {
            Array::String(v) if !v.is_empty() => {
                let i = self.below(v.len());
                match self.below(3) {
                    0 => v[i] = self.string(),
                    1 => v.truncate(i),
                    _ => {
                        let j = self.below(v.len());
                        v[i] = v[j].clone();
                    }
                }
            }
            Array::I32(v) if !v.is_empty() => {
                let i = self.below(v.len());
                if self.bool() {
                    v[i] = self.interesting() as i32;
                } else {
                    v.truncate(i);
                }
            }
            Array::F32(v) if !v.is_empty() => {
                let i = self.below(v.len());
                if self.bool() {
                    v[i] = self.float();
                } else {
                    v.truncate(i);
                }
            }
            _ => {}
        }
        a
    }
}

/// Keys a mutation may add (with a hostile value) to a model that lacks them.
const KEYS: [&str; 22] = [
    "general.alignment",
    "general.architecture",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "attention.scale",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.freq_base_swa",
    "vocab_size",
    "context_length",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.model",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
    "tokenizer.ggml.merges",
];

/// Edits to apply after serialisation (they break the file's own layout).
enum Raw {
    Offset { tensor: usize, value: u64 },
    Flip { pos: usize, xor: u8 },
    Truncate { len: usize },
}

fn arch_prefix(m: &TinyModel) -> String {
    match m.metadata.iter().find(|(k, _)| k == "general.architecture") {
        Some((_, Value::String(s))) => s.clone(),
        _ => "llama".into(),
    }
}

/// Apply 1-3 mutations chosen by `src` to one of the tiny models, and
/// serialise it.
pub fn mutated_model(src: &mut Src) -> Vec<u8> {
    let arch = *src.pick(&TINY_ARCHS);
    let mut m = tiny_model(arch, src.u8() as u64);
    let mut raw = Vec::new();
    let n = 1 + src.below(3);
    for _ in 0..n {
        mutate(&mut m, &mut raw, src);
    }
    let mut bytes = m.to_bytes();
    for r in raw {
        match r {
            Raw::Offset { tensor, value } => {
                if let Some(field) = offset_field(&m, tensor).and_then(|p| bytes.get_mut(p..p + 8)) {
                    field.copy_from_slice(&value.to_le_bytes());
                }
            }
            Raw::Flip { pos, xor } => {
                let header = header_len(&m).min(bytes.len());
                if header > 0 {
                    bytes[pos % header] ^= xor;
                }
            }
            Raw::Truncate { len } => bytes.truncate(len % (bytes.len() + 1)),
        }
    }
    bytes
}

fn mutate(m: &mut TinyModel, raw: &mut Vec<Raw>, src: &mut Src) {
    let nm = m.metadata.len();
    let nt = m.tensors.len();
    match src.below(24) {
        // a metadata value of the same type, hostile (most of the time: the
        // deepest stages are reached this way)
        0..=9 | 22 | 23 if nm > 0 => {
            let i = src.below(nm);
            m.metadata[i].1 = src.like(&m.metadata[i].1.clone());
        }
        10 if nm > 0 => {
            let i = src.below(nm);
            m.metadata[i].1 = src.value();
        }
        11 if nm > 0 => {
            m.metadata.remove(src.below(nm));
        }
        12 | 13 => {
            let key = *src.pick(&KEYS);
            let key = if key.contains('.') && !key.starts_with("general") && !key.starts_with("tokenizer") {
                format!("{}.{key}", arch_prefix(m))
            } else {
                key.to_string()
            };
            let v = src.value();
            match m.metadata.iter_mut().find(|(k, _)| *k == key) {
                Some(kv) => kv.1 = v,
                None => m.metadata.push((key, v)),
            }
        }
        14 if nt > 0 => {
            let t = &mut m.tensors[src.below(nt)];
            let d = src.below(t.dims.len());
            t.dims[d] = src.interesting();
        }
        15 if nt > 0 => {
            let t = &mut m.tensors[src.below(nt)];
            if src.bool() && t.dims.len() > 1 {
                t.dims.pop();
            } else {
                t.dims.push(1 + src.below(3) as u64);
            }
        }
        16 if nt > 0 => {
            let t = &mut m.tensors[src.below(nt)];
            if let Some(ty) = GgmlType::from_id(src.below(40) as u32) {
                t.ty = ty;
            }
        }
        17 if nt > 0 => {
            let i = src.below(nt);
            if src.bool() {
                m.tensors.remove(i);
            } else {
                let j = src.below(nt);
                m.tensors[i].name = m.tensors[j].name.clone();
            }
        }
        18 if nt > 0 => {
            let t: &mut TensorSpec = &mut m.tensors[src.below(nt)];
            let len = src.below(t.data.len() + 1);
            t.data.truncate(len);
        }
        19 if nt > 0 => raw.push(Raw::Offset { tensor: src.below(nt), value: src.interesting() }),
        20 => raw.push(Raw::Flip { pos: src.u32() as usize, xor: 1 << src.below(8) }),
        21 => raw.push(Raw::Truncate { len: src.u32() as usize }),
        _ => {}
    }
}

/// Bytes before the tensor data (magic .. last tensor info).
fn header_len(m: &TinyModel) -> usize {
    let mut w = m.writer();
    w.tensors.clear();
    let kv_end = w.to_bytes().len();
    kv_end + m.tensors.iter().map(info_len).sum::<usize>()
}

fn info_len(t: &TensorSpec) -> usize {
    8 + t.name.len() + 4 + 8 * t.dims.len() + 4 + 8
}

/// Where tensor `i`'s data offset field sits in the serialised file.
fn offset_field(m: &TinyModel, i: usize) -> Option<usize> {
    let t = m.tensors.get(i)?;
    let mut w = m.writer();
    w.tensors.clear();
    let before: usize = m.tensors[..i].iter().map(info_len).sum();
    Some(w.to_bytes().len() + before + info_len(t) - 8)
}

/// How far one load case got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The header did not parse.
    Parse,
    /// The model was refused (config, tokenizer, weights).
    Load,
    /// The session was refused.
    Session,
    /// Evaluation was refused.
    Eval,
    /// Two tokens evaluated; the logits had the vocabulary's length.
    Ran,
}

/// Parse `bytes`, build the model on the CPU, open a 16-position session and
/// evaluate two tokens. Errors are fine; a panic or an abort is the bug the
/// callers look for. Returns the stage reached and the time taken.
pub fn run_load_case(bytes: Vec<u8>) -> (Stage, Duration) {
    let t0 = Instant::now();
    let stage = (|| {
        let Ok(file) = GgufFile::from_bytes(bytes) else { return Stage::Parse };
        let opts = LoadOptions { n_threads: 1, backend: BackendChoice::Cpu, ..Default::default() };
        let Ok(model) = Model::from_gguf(file, opts) else { return Stage::Load };
        let n_vocab = model.cfg.n_vocab;
        let Ok(mut s) = Session::new(model, 16) else { return Stage::Session };
        let toks = [1u32.min(n_vocab as u32 - 1), 2u32.min(n_vocab as u32 - 1)];
        match s.eval(&toks, Logits::Last) {
            Ok(l) => {
                assert_eq!(l.len(), n_vocab, "logits length");
                Stage::Ran
            }
            Err(_) => Stage::Eval,
        }
    })();
    (stage, t0.elapsed())
}
