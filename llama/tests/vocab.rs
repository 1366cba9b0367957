//! llama.cpp's tokenizer test vectors, from the pinned sdist
//! (vendor/llama-cpp-python-0.3.36/vendor/llama.cpp/models): each
//! vocabulary-only `ggml-vocab-*.gguf` with an `.inp` file (inputs split by
//! `\n__ggml_vocab_test__\n`) and an `.out` file (one line of ids per
//! input), tokenized as llama.cpp's test-tokenizer-0 does (no special
//! tokens added, none parsed), through libllama's own `llama_tokenize`.
//!
//! Every vocabulary ROCmForge supports must give exactly the expected ids;
//! the ones it does not support are listed in UNSUPPORTED with the reason,
//! and the test fails if one of them starts passing (so the list stays true).

use std::ffi::CString;
use std::path::PathBuf;

use llama::model::{LlamaModel, Vocab};
use llama::types::*;

/// Vocabularies ROCmForge does not tokenize yet, and why (none now: the last
/// two, bert-bge's WordPiece and gemma-4's tokenizer model, are supported).
const UNSUPPORTED: &[(&str, &str)] = &[];

fn models_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vendor/llama-cpp-python-0.3.36/vendor/llama.cpp/models");
    assert!(d.is_dir(), "{} missing: run scripts/fetch_llama_sdist.sh (make test-llama does)", d.display());
    d
}

/// Load a vocabulary-only file (null if it does not load).
fn load(gguf: &std::path::Path) -> *mut LlamaModel {
    let path = CString::new(gguf.to_str().unwrap()).unwrap();
    unsafe {
        let mut p = llama::llama_model_default_params();
        p.vocab_only = true;
        llama::llama_model_load_from_file(path.as_ptr(), p)
    }
}

fn tokenize(v: *const Vocab, text: &str, add_special: bool) -> Vec<i32> {
    let mut buf = vec![0 as llama_token; text.len() * 4 + 16];
    let n = unsafe { llama::llama_tokenize(v, text.as_ptr() as *const _, text.len() as i32, buf.as_mut_ptr(), buf.len() as i32, add_special, false) };
    assert!(n >= 0, "buffer too small");
    buf.truncate(n as usize);
    buf
}

fn detokenize(v: *const Vocab, ids: &[i32], remove_special: bool) -> String {
    let mut buf = vec![0u8; 4096];
    let n = unsafe { llama::llama_detokenize(v, ids.as_ptr(), ids.len() as i32, buf.as_mut_ptr() as *mut _, buf.len() as i32, remove_special, false) };
    assert!(n >= 0);
    buf.truncate(n as usize);
    String::from_utf8(buf).unwrap()
}

/// The ids, or why the vocabulary could not be loaded.
fn tokenize_all(gguf: &std::path::Path, inputs: &[&str]) -> Result<Vec<Vec<i32>>, String> {
    let m = load(gguf);
    if m.is_null() {
        return Err("does not load".into());
    }
    unsafe {
        let v = llama::llama_model_get_vocab(m);
        let out = inputs.iter().map(|text| tokenize(v, text, false)).collect();
        llama::llama_model_free(m);
        Ok(out)
    }
}

/// More vectors for the two newest tokenizers (WordPiece, Gemma 4's BPE):
/// llama/tests/vocab_extra/inputs.txt holds hand-written texts in many
/// scripts (accents, Hangul, kana, CJK, controls, zero-width and private-use
/// chars, emoji sequences, apostrophes) and random strings drawn from those
/// ranges; the `.out` files are llama.cpp's ids for them
/// (llama/tests/oracle/vocab_oracle.cpp says how they were made).
#[test]
fn extra_vectors() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vocab_extra");
    let inp = std::fs::read_to_string(here.join("inputs.txt")).unwrap();
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    for key in ["bert-bge", "gemma-4"] {
        let out = std::fs::read_to_string(here.join(format!("{key}.out"))).unwrap();
        let expected: Vec<Vec<i32>> = out.lines().map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect()).collect();
        assert_eq!(expected.len(), inputs.len(), "{key}: one line of ids per input");
        let got = tokenize_all(&models_dir().join(format!("ggml-vocab-{key}.gguf")), &inputs).unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "{key}: input {i} {:?}", inputs[i]);
        }
    }
}

/// What llama.cpp's vocabulary calls say of bert-bge (WordPiece): its type,
/// [CLS] … [SEP] around the text with special tokens, [PAD] as the newline
/// token, and its detokenizer's spacing.
#[test]
fn wordpiece_specials_and_detokenize() {
    let m = load(&models_dir().join("ggml-vocab-bert-bge.gguf"));
    assert!(!m.is_null());
    unsafe {
        let v = llama::llama_model_get_vocab(m);
        assert_eq!(llama::llama_vocab_type(v), 3, "LLAMA_VOCAB_TYPE_WPM");
        assert_eq!((llama::llama_vocab_bos(v), llama::llama_vocab_sep(v), llama::llama_vocab_nl(v)), (101, 102, 0));
        assert!(llama::llama_vocab_get_add_bos(v) && llama::llama_vocab_get_add_sep(v) && !llama::llama_vocab_get_add_eos(v));
        let plain = tokenize(v, "Hello, world!", false);
        assert_eq!(plain, [7592, 1010, 2088, 999]);
        let special = tokenize(v, "Hello, world!", true);
        assert_eq!(special, [101, 7592, 1010, 2088, 999, 102]);
        // each piece brings its space; " ," and " !" lose theirs; [SEP] is
        // a control token (empty unless unparsed), [CLS] is removed as BOS
        assert_eq!(detokenize(v, &special, true), " hello, world!");
        assert_eq!(detokenize(v, &tokenize(v, "I'm sure it's done.", false), false), " i'm sure it's done.");
        // unknown words are [UNK], which renders as nothing
        let unk = tokenize(v, "\u{10FFFF}x", false);
        assert_eq!(unk, [100]);
        llama::llama_model_free(m);
    }
}

/// gemma-4's tokenizer (SentencePiece-style BPE): BOS with special tokens,
/// and text that comes back unchanged, byte-fallback chars included.
#[test]
fn gemma4_specials_and_round_trip() {
    let m = load(&models_dir().join("ggml-vocab-gemma-4.gguf"));
    assert!(!m.is_null());
    unsafe {
        let v = llama::llama_model_get_vocab(m);
        assert_eq!(llama::llama_vocab_type(v), 2, "LLAMA_VOCAB_TYPE_BPE");
        assert!(llama::llama_vocab_get_add_bos(v));
        let ids = tokenize(v, "Hello world", true);
        assert_eq!(ids, [2, 9259, 1902]);
        for text in ["Hello world", "  two  spaces\n\n\nand\ttabs", "\u{10FFFD}\u{E000}", "Cửa Việt 我想在apple工作"] {
            assert_eq!(detokenize(v, &tokenize(v, text, false), false), text);
        }
        llama::llama_model_free(m);
    }
}

#[test]
fn tokenizer_vectors() {
    let dir = models_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".gguf.inp").map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names.len(), 15, "the sdist has 15 vocabularies with test vectors");
    let (mut passed, mut unsupported) = (Vec::new(), Vec::new());
    for name in &names {
        let base = dir.join(name);
        let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(base.with_extension("gguf.out")).unwrap();
        let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        let expected: Vec<Vec<i32>> = out.lines().map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect()).collect();
        let key = name.strip_prefix("ggml-vocab-").unwrap();
        let why = UNSUPPORTED.iter().find(|(k, _)| *k == key).map(|(_, w)| *w);
        let got = tokenize_all(&base.with_extension("gguf"), &inputs[..expected.len().min(inputs.len())]);
        let bad: Vec<usize> = match &got {
            Ok(g) => (0..expected.len()).filter(|&i| g.get(i) != Some(&expected[i])).collect(),
            Err(_) => (0..expected.len()).collect(),
        };
        match (why, bad.is_empty()) {
            (None, true) => passed.push(format!("{key} ({} cases)", expected.len())),
            (None, false) => {
                let i = bad[0];
                panic!(
                    "{key}: {} of {} cases differ; first: {:?} gave {:?}, expected {:?}",
                    bad.len(),
                    expected.len(),
                    inputs[i],
                    got.as_ref().map(|g| g[i].clone()),
                    expected[i]
                );
            }
            (Some(w), false) => unsupported.push(format!("{key}: {w} ({} of {} cases differ)", bad.len(), expected.len())),
            (Some(_), true) => panic!("{key} passes now: remove it from UNSUPPORTED"),
        }
    }
    println!("exact on {} vocabularies: {}", passed.len(), passed.join(", "));
    println!("not supported ({}):\n  {}", unsupported.len(), unsupported.join("\n  "));
}

/// User-defined tokens render as their text, as llama.cpp's token_to_piece:
/// deepseek-llm's "ö" (100003) is "ö", not the byte-level char's byte 0xF6.
#[test]
fn user_defined_tokens_render_as_text() {
    let m = load(&models_dir().join("ggml-vocab-deepseek-llm.gguf"));
    assert!(!m.is_null());
    unsafe {
        let v = llama::llama_model_get_vocab(m);
        let ids = tokenize(v, "Ångström ÷ û", false);
        assert!(ids.contains(&100003) && ids.contains(&100007) && ids.contains(&100008), "{ids:?}");
        assert_eq!(detokenize(v, &ids, false), "Ångström ÷ û");
        llama::llama_model_free(m);
    }
}
