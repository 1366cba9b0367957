//! Tokenizer behaviour on small synthetic GGUF vocabularies: fallbacks,
//! errors, and special-token handling that the real models do not exercise.

use rocmforge::gguf::writer::GgufWriter;
use rocmforge::gguf::{Array, GgufFile, Value};
use rocmforge::tokenizer::bpe::byte_to_char;
use rocmforge::tokenizer::Tokenizer;

/// A byte-level vocab: the 256 byte tokens, then "ab", " ab", "<|end|>".
fn bpe_file(pre: Option<&str>, merges: Vec<&str>) -> GgufFile {
    let mut tokens: Vec<String> = byte_to_char().iter().map(|c| c.to_string()).collect();
    let b = byte_to_char()[b' ' as usize];
    tokens.extend(["ab".to_string(), format!("{b}ab"), "<|end|>".to_string()]);
    let mut types = vec![1i32; tokens.len()];
    *types.last_mut().unwrap() = 3;
    let mut w = GgufWriter::default();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .kv("tokenizer.ggml.merges", Value::Array(Array::String(merges.into_iter().map(String::from).collect())))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(258));
    if let Some(p) = pre {
        w.kv("tokenizer.ggml.pre", Value::String(p.into()));
    }
    GgufFile::from_bytes(w.to_bytes()).unwrap()
}

#[test]
fn unknown_pre_falls_back_to_gpt2_with_a_warning() {
    let b = byte_to_char()[b' ' as usize];
    let merge2 = format!("{b} ab");
    let f = bpe_file(Some("some-future-model"), vec!["a b", &merge2]);
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let w = tok.warning.as_deref().expect("a warning");
    assert!(w.contains("some-future-model") && w.contains("gpt2"), "{w}");
    assert_eq!(tok.encode("ab ab", false, false), vec![256, 257]);
    // known and absent `pre` values give no warning
    assert!(Tokenizer::from_gguf(&bpe_file(Some("llama-bpe"), vec!["a b"])).unwrap().warning.is_none());
    assert!(Tokenizer::from_gguf(&bpe_file(None, vec!["a b"])).unwrap().warning.is_none());
}

#[test]
fn control_tokens_parse_only_when_asked_and_eot_is_recognised() {
    let tok = Tokenizer::from_gguf(&bpe_file(None, vec!["a b"])).unwrap();
    assert_eq!(tok.encode("ab<|end|>", false, true), vec![256, 258]);
    assert_eq!(tok.encode("ab<|end|>", false, false).len(), 1 + "<|end|>".len());
    // <|end|> is the EOS here, so it is not also reported as EOT
    assert_eq!(tok.vocab.special.eos, Some(258));
    assert_eq!(tok.vocab.special.eot, None);
    assert!(tok.vocab.is_eog(258));
}

#[test]
fn missing_or_inconsistent_metadata_is_a_clear_error() {
    // BPE without merges
    let e = Tokenizer::from_gguf(&bpe_file(None, vec![])).err().unwrap();
    assert!(e.to_string().contains("merges"), "{e}");
    // unknown model
    let mut w = GgufWriter::default();
    w.kv("tokenizer.ggml.model", Value::String("t5".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(vec!["a".into()])));
    let e = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).err().unwrap();
    assert!(e.to_string().contains("t5"), "{e}");
    // special id outside the vocab
    let mut w = GgufWriter::default();
    w.kv("tokenizer.ggml.model", Value::String("llama".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(vec!["a".into()])))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(7));
    let e = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).err().unwrap();
    assert!(e.to_string().contains("bos_token_id"), "{e}");
    // scores of the wrong length
    let mut w = GgufWriter::default();
    w.kv("tokenizer.ggml.model", Value::String("llama".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(vec!["a".into(), "b".into()])))
        .kv("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0])));
    assert!(Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).is_err());
}

#[test]
fn spm_add_space_prefix_and_unk_fallback() {
    // A SentencePiece vocab with no byte tokens: unknown chars become <unk>.
    let toks = ["<unk>", "<s>", "\u{2581}", "h", "i", "\u{2581}h", "\u{2581}hi"];
    let mut w = GgufWriter::default();
    w.kv("tokenizer.ggml.model", Value::String("llama".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(toks.iter().map(|s| s.to_string()).collect())))
        .kv("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0, 0.0, -1.0, -2.0, -2.0, -1.5, -1.0])))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![2, 3, 1, 1, 1, 1, 1])))
        .kv("tokenizer.ggml.unknown_token_id", Value::U32(0))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1));
    let tok = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap();
    assert!(tok.vocab.add_space_prefix && tok.vocab.add_bos, "SentencePiece defaults");
    assert_eq!(tok.encode("hi", true, false), vec![1, 6]);
    assert_eq!(tok.encode("hi x", false, false), vec![6, 2, 0]);
    assert_eq!(tok.decode(&[6], false).unwrap(), b"hi", "the prefix space is not part of the text");
}

/// A WordPiece vocabulary as the GGUF converter writes BERT's (▁ before
/// word-initial pieces, no `##`).
fn bert_file(extra: &[(&str, bool)]) -> GgufFile {
    let toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "\u{2581}hello", "\u{2581}Hello", "\u{2581},", "\u{2581}world", "\u{2581}!", "\u{2581}cafe", "\u{2581}café"];
    let mut w = GgufWriter::default();
    w.kv("tokenizer.ggml.model", Value::String("bert".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(toks.iter().map(|s| s.to_string()).collect())))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1])))
        .kv("tokenizer.ggml.unknown_token_id", Value::U32(1))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(2))
        .kv("tokenizer.ggml.seperator_token_id", Value::U32(3))
        .kv("tokenizer.ggml.padding_token_id", Value::U32(0));
    for (k, v) in extra {
        w.kv(&format!("tokenizer.ggml.normalizer.{k}"), Value::Bool(*v));
    }
    GgufFile::from_bytes(w.to_bytes()).unwrap()
}

#[test]
fn wordpiece_encode_decode_and_normalizer_options() {
    let tok = Tokenizer::from_gguf(&bert_file(&[])).unwrap();
    assert!(tok.vocab.add_bos && tok.vocab.add_sep && !tok.vocab.add_eos, "WordPiece defaults");
    assert!(tok.vocab.lowercase && tok.vocab.strip_accents);
    assert_eq!(tok.encode("Hello, WORLD!", false, false), vec![4, 6, 7, 8]);
    // [CLS] text [SEP]
    assert_eq!(tok.encode("Café", true, false), vec![2, 9, 3]);
    // a word with no way through the vocabulary is [UNK]
    assert_eq!(tok.encode("hello hellos", false, false), vec![4, 1]);
    // the word pieces' spaces, tidied before punctuation as llama.cpp does
    assert_eq!(tok.decode(&[4, 6, 7, 8], false).unwrap(), b" hello, world!");
    assert_eq!(tok.decode(&[2, 4, 3], true).unwrap(), b"[CLS] hello[SEP]");
    // the normalizer as the file sets it: case kept, and so (by default) accents
    let cased = Tokenizer::from_gguf(&bert_file(&[("lowercase", false)])).unwrap();
    assert_eq!(cased.encode("Hello café", false, false), vec![5, 10]);
    let only_accents = Tokenizer::from_gguf(&bert_file(&[("lowercase", false), ("strip_accents", true)])).unwrap();
    assert_eq!(only_accents.encode("Café", false, false), vec![1]);
    assert_eq!(only_accents.encode("cafè", false, false), vec![9]);
}
