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

use llama::types::*;

/// Vocabularies ROCmForge does not tokenize yet, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("bert-bge", "WordPiece (BERT) tokenizer, `tokenizer.ggml.model = bert`: comes with the embedding models (issue 18)"),
    ("gemma-4", "tokenizer model 'gemma4' is not implemented"),
];

fn models_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vendor/llama-cpp-python-0.3.36/vendor/llama.cpp/models");
    assert!(d.is_dir(), "{} missing: run scripts/fetch_llama_sdist.sh (make test-llama does)", d.display());
    d
}

/// The ids, or why the vocabulary could not be loaded.
fn tokenize_all(gguf: &std::path::Path, inputs: &[&str]) -> Result<Vec<Vec<i32>>, String> {
    let path = CString::new(gguf.to_str().unwrap()).unwrap();
    unsafe {
        let mut p = llama::llama_model_default_params();
        p.vocab_only = true;
        let m = llama::llama_model_load_from_file(path.as_ptr(), p);
        if m.is_null() {
            return Err("does not load".into());
        }
        let v = llama::llama_model_get_vocab(m);
        let mut out = Vec::new();
        for text in inputs {
            let mut buf = vec![0 as llama_token; text.len() * 4 + 16];
            let n = llama::llama_tokenize(v, text.as_ptr() as *const _, text.len() as i32, buf.as_mut_ptr(), buf.len() as i32, false, false);
            assert!(n >= 0, "buffer too small");
            buf.truncate(n as usize);
            out.push(buf);
        }
        llama::llama_model_free(m);
        Ok(out)
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
