//! Tokenizer throughput on one core: MB/s of English text encoded.
//!
//! usage: cargo run --release --example tokenize_bench -- [MODEL.gguf ...]
//! (default: the three real models under models/)
//!
//! Two numbers per model:
//!  - "one call": the committed English text repeated to 8 MB, encoded in one
//!    call (repeated words hit the per-call piece cache, as in real documents);
//!  - "per paragraph": the same bytes encoded one paragraph per call, so the
//!    cache starts empty each time (closer to many short prompts).

use std::time::Instant;

use rocmforge::gguf::GgufFile;
use rocmforge::tokenizer::Tokenizer;

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut models: Vec<String> = std::env::args().skip(1).collect();
    if models.is_empty() {
        models = ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]
            .iter()
            .map(|m| format!("{root}/models/{m}"))
            .collect();
    }
    let base = std::fs::read_to_string(format!("{root}/tests/fixtures/text/english.txt")).expect("english.txt");
    let mut text = String::new();
    while text.len() < 8 << 20 {
        text.push_str(&base);
        text.push('\n');
    }
    let paragraphs: Vec<&str> = text.split_inclusive("\n\n").collect();
    let mb = text.len() as f64 / 1e6;
    for path in models {
        let f = match GgufFile::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{path}: {e} (run `make models`)");
                std::process::exit(1);
            }
        };
        let tok = Tokenizer::from_gguf(&f).expect("tokenizer");
        let _ = tok.encode(&base, false, false); // warm-up
        let t = Instant::now();
        let n = tok.encode(&text, false, false).len();
        let one = mb / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let m: usize = paragraphs.iter().map(|p| tok.encode(p, false, false).len()).sum();
        let per = mb / t.elapsed().as_secs_f64();
        let name = path.rsplit('/').next().unwrap();
        println!("{name:45} {mb:.1} MB -> {n} tokens: one call {one:7.1} MB/s | per paragraph ({m} tokens) {per:7.1} MB/s");
    }
}
