//! Pre-tokenizer splits for every supported `tokenizer.ggml.pre` family are
//! identical to HF tokenizers (Oniguruma, real look-ahead) applying the same
//! llama.cpp patterns. Fixture: scripts/gen_pretokenize_fixtures.py.

mod common;

use rocmforge::tokenizer::{PreKind, PreTokenizer};
use serde_json::Value;

#[test]
fn splits_match_hf_tokenizers_for_every_family() {
    let corpus: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("tokenizer/corpus.json")).unwrap()).unwrap();
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("tokenizer/pretokenize.json")).unwrap()).unwrap();
    let families = ["gpt2", "llama3", "qwen2", "smollm", "starcoder", "falcon", "deepseek-llm"];
    let mut failures = Vec::new();
    for name in families {
        let pre = PreTokenizer::new(PreKind::from_name(name).unwrap());
        let want = fx[name].as_array().unwrap();
        assert_eq!(want.len(), corpus.len());
        for (text, w) in corpus.iter().zip(want) {
            let w: Vec<&str> = w.as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
            let got = pre.split(text);
            if got != w {
                failures.push(format!("{name} {text:?}:\n   got  {got:?}\n   want {w:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn aliases_and_unknown_values() {
    assert_eq!(PreKind::from_name("llama-bpe"), Some(PreKind::Llama3));
    assert_eq!(PreKind::from_name("default"), Some(PreKind::Gpt2));
    assert_eq!(PreKind::from_name("no-such-pre"), None);
}
