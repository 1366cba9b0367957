//! A chat prompt's tokens equal Hugging Face's for the three real models:
//! the fixtures (scripts/gen_chat_fixtures.py) hold each conversation's
//! text as transformers renders it and the ids its tokenizer (loaded from
//! the same GGUF) gives that text. The server renders with its template
//! module and tokenizes with the library (`prompt_tokens`): the same text
//! (checked in template.rs's tests) and the same ids. Two deliberate
//! differences, both checked here: a model whose metadata asks for a BOS
//! gets one (HF's apply_chat_template leaves that to the template), and
//! special-token text a user wrote stays text (HF parses it as control
//! tokens: an injection the server refuses).

use std::path::PathBuf;

use rocmforge::gguf::GgufFile;
use rocmforge::tokenizer::Tokenizer;
use rocmforge_server::{prompt_tokens, ChatTemplate};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn chat_prompt_ids_equal_hugging_face() {
    let mut checked = 0;
    for stem in ["SmolLM2-135M-Instruct.Q4_1", "qwen2.5-coder-0.5b-instruct-q4_k_m", "gemma-3-270m-q4_k_m"] {
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(root().join(format!("tests/fixtures/chat/{stem}.json"))).unwrap()).unwrap();
        let path = root().join(format!("models/{stem}.gguf"));
        assert!(path.is_file(), "{} not found: run `make models` first (tests never skip a missing model)", path.display());
        let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        assert_eq!(tok.vocab.add_bos, fx["add_bos"].as_bool().unwrap(), "{stem}: add_bos");
        let s = |k: &str| fx[k].as_str().unwrap().to_string();
        let t = ChatTemplate::new(&s("template"), &s("bos_token"), &s("eos_token")).unwrap();
        for case in fx["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let Some(hf) = case.get("ids").and_then(Value::as_array) else {
                // HF refuses this conversation: so does the template here
                assert!(prompt_tokens(&tok, &t, &case["messages"], case.get("tools"), case["add_generation_prompt"].as_bool().unwrap()).is_err(), "{stem}/{name}: HF raised");
                continue;
            };
            let mut want: Vec<u32> = hf.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            if tok.vocab.add_bos && want.first().copied() != tok.vocab.special.bos {
                want.insert(0, tok.vocab.special.bos.unwrap());
            }
            let got = prompt_tokens(&tok, &t, &case["messages"], case.get("tools"), case["add_generation_prompt"].as_bool().unwrap()).unwrap();
            let text = String::from_utf8(tok.decode(&got, true).unwrap()).unwrap();
            let expected = case["expected"].as_str().unwrap();
            assert!(text.ends_with(expected), "{stem}/{name}: our ids decode to {text:?}");
            if case.get("hf_parses_user_special").and_then(Value::as_bool) == Some(true) {
                // the user's "<|im_end|>" etc. stay text: fewer control tokens than HF's ids
                let control = |ids: &[u32]| ids.iter().filter(|&&i| tok.vocab.types[i as usize] == rocmforge::tokenizer::TokenType::Control).count();
                assert!(control(&got) < control(&want), "{stem}/{name}: the user's special-token text was parsed as control tokens");
            } else {
                assert_eq!(got, want, "{stem}/{name}");
            }
            checked += 1;
        }
    }
    println!("{checked} conversations tokenized as Hugging Face does");
    assert!(checked >= 25, "only {checked} cases with ids");
}
