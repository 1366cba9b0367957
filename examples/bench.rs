//! CPU throughput: prompt processing (pp, one batch) and generation (tg, one
//! token at a time) in tokens/s, plus load time, for each model.
//!
//! usage: cargo run --release --example bench -- [--threads N] [--pp 128] [--tg 64] [--reps 3] [MODEL.gguf ...]
//! (default: the three real models under models/, 2 threads)
//! Reports the median of `reps` runs.

use std::time::Instant;

use rocmforge::model::{LoadOptions, Logits, Model, Session};
use rocmforge::sampler::argmax;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (mut threads, mut pp, mut tg, mut reps) = (2usize, 128usize, 64usize, 3usize);
    let mut models = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--threads" => threads = num(),
            "--pp" => pp = num(),
            "--tg" => tg = num(),
            "--reps" => reps = num(),
            _ => models.push(a),
        }
    }
    if models.is_empty() {
        models = ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]
            .iter()
            .map(|m| format!("{root}/models/{m}"))
            .collect();
    }
    println!("threads {threads}, kernels {}, median of {reps}", rocmforge::backend::cpu::kernel_name());
    println!("{:45} {:>10} {:>12} {:>12}", "model", "load ms", format!("pp{pp} t/s"), format!("tg{tg} t/s"));
    for path in models {
        let t0 = Instant::now();
        let model = match Model::load(&path, LoadOptions { n_threads: threads, progress: None }) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{path}: {e} (run `make models`)");
                std::process::exit(1);
            }
        };
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let text = std::fs::read_to_string(format!("{root}/tests/fixtures/text/english.txt")).unwrap();
        let toks: Vec<u32> = model.tokenizer.encode(&text, true, false).into_iter().take(pp).collect();
        assert_eq!(toks.len(), pp, "text too short for pp{pp}");
        let mut pps = Vec::new();
        let mut tgs = Vec::new();
        for _ in 0..reps {
            let mut s = Session::new(model.clone(), pp + tg + 1).unwrap();
            let t = Instant::now();
            let logits = s.eval(&toks, Logits::Last).unwrap();
            pps.push(pp as f64 / t.elapsed().as_secs_f64());
            let mut next = argmax(&logits);
            let t = Instant::now();
            for _ in 0..tg {
                next = argmax(&s.eval(&[next], Logits::Last).unwrap());
            }
            tgs.push(tg as f64 / t.elapsed().as_secs_f64());
        }
        let name = path.rsplit('/').next().unwrap();
        println!("{name:45} {load_ms:>10.0} {:>12.1} {:>12.1}", median(pps), median(tgs));
    }
}
