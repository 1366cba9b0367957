//! Inspect a GGUF model: architecture, hyperparameters, tokenizer, tensor
//! types, and the tokenization of a prompt. `make demo` runs it on SmolLM2.
//!
//! usage: cargo run --release --example inspect -- MODEL.gguf ["prompt"]

use std::collections::BTreeMap;

use rocmforge::gguf::{GgufFile, Value};
use rocmforge::tokenizer::Tokenizer;

fn show(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 60 => format!("{:?}… ({} bytes)", &s[..s.char_indices().nth(60).map_or(s.len(), |c| c.0)], s.len()),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("[array of {}]", a.len()),
        other => format!("{other:?}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: inspect MODEL.gguf [\"prompt\"]");
        std::process::exit(2);
    };
    let prompt = args.next().unwrap_or_else(|| "Hello! Tokenize this: 12345, naïve café, 日本語 🚀".to_string());
    let t0 = std::time::Instant::now();
    let f = match GgufFile::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let load = t0.elapsed();
    println!("{path}: GGUF v{}, {} metadata keys, {} tensors (parsed and validated in {:.1} ms)", f.header.version, f.header.metadata.len(), f.tensors().len(), load.as_secs_f64() * 1e3);
    for (k, v) in f.metadata() {
        if !k.starts_with("tokenizer.ggml.") || !matches!(v, Value::Array(_)) {
            println!("  {k:45} {}", show(v));
        }
    }
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in f.tensors() {
        let e = by_type.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    println!("tensor types:");
    for (ty, (n, bytes)) in by_type {
        println!("  {ty:8} {n:4} tensors, {:8.1} MiB", bytes as f64 / (1 << 20) as f64);
    }
    match Tokenizer::from_gguf(&f) {
        Ok(tok) => {
            let ids = tok.encode(&prompt, true, true);
            println!("tokenizer: {:?}, {} tokens, pre = {:?}", tok.vocab.kind, tok.n_vocab(), tok.vocab.pre);
            println!("prompt: {prompt:?}");
            println!("ids ({}): {ids:?}", ids.len());
            let pieces: Vec<String> = ids.iter().map(|&i| String::from_utf8_lossy(tok.token_to_piece(i, true).unwrap()).into_owned()).collect();
            println!("pieces: {pieces:?}");
            println!("decoded: {:?}", tok.decode_lossy(&ids, false).unwrap());
        }
        Err(e) => println!("tokenizer: {e}"),
    }
}
