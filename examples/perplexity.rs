//! Perplexity of a model on a text, the way llama.cpp's `llama-perplexity`
//! computes it, so the two can be compared on the same text and windows:
//! the text is tokenized once (with BOS when the model adds one) and cut
//! into windows of `c` tokens; each window is evaluated fresh, its first
//! token replaced by BOS (when the model adds one); positions c/2 .. c-2
//! predict the next token (the first half is context only). PPL =
//! exp(mean NLL) over all scored positions. `--all` scores every position
//! after the first instead (this example's earlier method).
//!
//! usage: perplexity [-c 256] [-f TEXT] [--all] [MODEL.gguf ...]
//! (default text: tests/fixtures/text/english.txt; default models: the three real ones)

use rocmforge::model::{LoadOptions, Model};
use rocmforge::backend::Logits;
use rocmforge::engine::Session;

/// The example's body, also `rocmforge bench` / `perplexity` (the CLI
/// includes this file): `args` as on the command line, without the program.
pub fn run(args: Vec<String>) {
    // the default models: models/ here, else in the source tree
    let root = if std::path::Path::new("models").is_dir() { "." } else { env!("CARGO_MANIFEST_DIR") };
    let (mut c, mut file) = (256usize, None);
    let mut all = false;
    let mut models = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" => c = args.next().and_then(|v| v.parse().ok()).expect("-c N"),
            "-f" => file = Some(args.next().expect("-f FILE")),
            "--all" => all = true,
            _ => models.push(a),
        }
    }
    if models.is_empty() {
        models = ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]
            .iter()
            .map(|m| format!("{root}/models/{m}"))
            .collect();
    }
    // the default text is in the binary (the CLI includes this file from elsewhere)
    let text = match &file {
        Some(f) => std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{f}: {e}")),
        None => include_str!("../tests/fixtures/text/english.txt").to_string(),
    };
    for path in models {
        let model = Model::load(&path, LoadOptions::default()).unwrap_or_else(|e| panic!("{path}: {e} (run `make models`)"));
        let bos = if model.tokenizer.vocab.add_bos { model.tokenizer.vocab.special.bos } else { None };
        let mut toks: Vec<u32> = bos.into_iter().collect();
        toks.extend(model.tokenizer.encode(&text, false, false));
        let nv = model.cfg.n_vocab;
        let (mut nll, mut count) = (0f64, 0usize);
        for chunk in toks.chunks_exact(c) {
            let mut window = chunk.to_vec();
            if let Some(b) = bos {
                window[0] = b;
            }
            let mut s = Session::new(model.clone(), c).unwrap();
            let logits = s.eval(&window, Logits::All).unwrap();
            let first = if all { 0 } else { c / 2 };
            for p in first..c - 1 {
                let row = &logits[p * nv..(p + 1) * nv];
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                nll += lse - row[window[p + 1] as usize] as f64;
                count += 1;
            }
        }
        if count == 0 {
            eprintln!("{path}: no position was scored: the text has {} tokens, fewer than one window of -c {c}", toks.len());
            std::process::exit(2);
        }
        let name = path.rsplit('/').next().unwrap();
        println!(
            "{name:45} c={c}  {count} scored tokens  PPL = {:.4}  ({}, cpu kernels {})",
            (nll / count.max(1) as f64).exp(),
            if all { "every position" } else { "second half of each window, as llama-perplexity" },
            rocmforge::backend::cpu::kernel_name()
        );
    }
}

#[allow(dead_code)]
fn main() {
    run(std::env::args().skip(1).collect())
}
