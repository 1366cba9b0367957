//! `llama_detokenize` follows llama.cpp's rules on the sdist's
//! vocabulary-only files: the SentencePiece space prefix comes off the
//! first token unless it follows a BOS that `remove_special` removed, and
//! byte-level BPE vocabularies (gpt-2 here; qwen2 is exempt, as in
//! llama.cpp) get the space clean-up (`clean_spaces`). The negative
//! length asked for is the text's before the clean-up.

use std::ffi::CString;
use std::path::PathBuf;

use llama::types::*;

fn vocab_file(name: &str) -> CString {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../vendor/llama-cpp-python-0.3.36/vendor/llama.cpp/models/ggml-vocab-{name}.gguf"));
    assert!(p.is_file(), "{} missing: run scripts/fetch_llama_sdist.sh (make test-llama does)", p.display());
    CString::new(p.to_str().unwrap()).unwrap()
}

unsafe fn with_vocab(name: &str, f: impl FnOnce(*const llama::model::Vocab)) {
    let mut p = llama::llama_model_default_params();
    p.vocab_only = true;
    let path = vocab_file(name);
    let m = llama::llama_model_load_from_file(path.as_ptr(), p);
    assert!(!m.is_null());
    f(llama::llama_model_get_vocab(m));
    llama::llama_model_free(m);
}

unsafe fn tokenize(v: *const llama::model::Vocab, text: &str, add_special: bool) -> Vec<llama_token> {
    let mut buf = vec![0 as llama_token; text.len() * 4 + 16];
    let n = llama::llama_tokenize(v, text.as_ptr() as *const _, text.len() as i32, buf.as_mut_ptr(), buf.len() as i32, add_special, false);
    assert!(n >= 0);
    buf.truncate(n as usize);
    buf
}

unsafe fn detok(v: *const llama::model::Vocab, ids: &[llama_token], remove_special: bool) -> String {
    let mut buf = vec![0u8; 256];
    let n = llama::llama_detokenize(v, ids.as_ptr(), ids.len() as i32, buf.as_mut_ptr() as *mut _, buf.len() as i32, remove_special, false);
    assert!(n >= 0, "{n}");
    String::from_utf8(buf[..n as usize].to_vec()).unwrap()
}

#[test]
fn spm_space_prefix_and_a_removed_bos() {
    unsafe {
        with_vocab("llama-spm", |v| {
            let ids = tokenize(v, "Hello world", true);
            assert_eq!(ids[0], llama::llama_vocab_bos(v));
            assert_eq!(detok(v, &ids[1..], false), "Hello world", "the first token's space prefix comes off");
            assert_eq!(detok(v, &ids, false), " Hello world", "after a kept BOS it stays");
            assert_eq!(detok(v, &ids, true), " Hello world", "after a removed BOS it stays too (llama.cpp)");
        });
    }
}

#[test]
fn bpe_clean_up_of_spaces() {
    unsafe {
        let text = "Hello , world ' s it 's and you 're . Don 't ! ok ?";
        with_vocab("gpt-2", |v| {
            let ids = tokenize(v, text, false);
            assert_eq!(detok(v, &ids, false), "Hello, world's it's and you're. Don 't! ok?");
            // too small a buffer: the length before the clean-up
            let mut small = [0u8; 4];
            let n = llama::llama_detokenize(v, ids.as_ptr(), ids.len() as i32, small.as_mut_ptr() as *mut _, 4, false, false);
            assert_eq!(n, -(text.len() as i32));
        });
        with_vocab("qwen2", |v| {
            let ids = tokenize(v, text, false);
            assert_eq!(detok(v, &ids, false), text, "qwen2 is exempt from the clean-up");
        });
    }
}
