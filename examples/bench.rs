//! Throughput: prompt processing (pp, one batch) and generation (tg, one
//! token at a time) in tokens/s, plus load time, for each model on each
//! requested backend, side by side in one run. On a GPU it also reports the
//! decode ceiling: measured device-to-device copy bandwidth ÷ weight bytes
//! read per token, and tg as a fraction of it.
//! As llama-bench: pp times one batch of pp tokens in a fresh context; tg
//! times tg single-token steps in a fresh context that already holds
//! `--depth` tokens (default 0; llama-bench's `-d`), so tg128 is the same
//! measurement as llama-bench's tg128. Each tg step also copies the logits
//! back into one reused buffer and takes their argmax on the host, as a
//! greedy frontend does (llama-bench copies them back and feeds random
//! tokens instead).
//!
//! usage: cargo run --release --example bench -- [--backend cpu,cuda,...] [--threads N]
//!        [--pp 128] [--tg 64] [--depth 0] [--reps 3] [MODEL.gguf ...]
//! (default: the three real models under models/, CPU, 2 threads)
//! Reports the median of `reps` runs. FORGE_NO_GRAPH=1 turns off the decode graph.

use std::time::Instant;

use rocmforge::model::{BackendChoice, LoadOptions, Model};
use rocmforge::backend::Logits;
use rocmforge::engine::Session;
use rocmforge::sampler::argmax;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The example's body, also `rocmforge bench` / `perplexity` (the CLI
/// includes this file): `args` as on the command line, without the program.
pub fn run(args: Vec<String>) {
    // the default models: models/ here, else in the source tree
    let root = if std::path::Path::new("models").is_dir() { "." } else { env!("CARGO_MANIFEST_DIR") };
    let (mut threads, mut pp, mut tg, mut reps, mut depth) = (2usize, 128usize, 64usize, 3usize, 0usize);
    let mut backends = vec!["cpu".to_string()];
    let mut models = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--threads" => threads = num(),
            "--pp" => pp = num(),
            "--tg" => tg = num(),
            "--reps" => reps = num(),
            "--depth" => depth = num(),
            "--backend" => backends = args.next().expect("a backend list").split(',').map(String::from).collect(),
            _ => models.push(a),
        }
    }
    if models.is_empty() {
        models = ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]
            .iter()
            .map(|m| format!("{root}/models/{m}"))
            .collect();
    }
    println!("cpu threads {threads}, cpu kernels {}, median of {reps}", rocmforge::backend::cpu::kernel_name());
    println!(
        "{:45} {:28} {:>8} {:>12} {:>12} {:>9} {:>9} {:>10} {:>6}",
        "model", "backend", "load ms", format!("pp{pp} t/s"), if depth > 0 { format!("tg{tg}@d{depth}") } else { format!("tg{tg} t/s") }, "MB/token", "copy GB/s", "tg ceiling", "of it"
    );
    // in the binary (the CLI includes this file from elsewhere)
    let text = include_str!("../tests/fixtures/text/english.txt");
    for path in &models {
        for b in &backends {
            let backend: BackendChoice = b.parse().unwrap_or_else(|e| panic!("{e}"));
            let t0 = Instant::now();
            let model = match Model::load(path, LoadOptions { n_threads: threads, backend, ..Default::default() }) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("{path} on {b}: {e} (run `make models`)");
                    std::process::exit(1);
                }
            };
            let load_ms = t0.elapsed().as_secs_f64() * 1e3;
            // the text's tokens, repeated to length pp (twins have random weights: any ids do)
            let base = model.tokenizer.encode(text, true, false);
            let toks: Vec<u32> = base.iter().copied().cycle().take(pp.max(depth)).collect();
            let (mut pps, mut tgs) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let mut s = Session::new(model.clone(), pp.max(depth + tg) + 1).unwrap();
                let t = Instant::now();
                let logits = s.eval(&toks[..pp], Logits::Last).unwrap();
                pps.push(pp as f64 / t.elapsed().as_secs_f64());
                let mut next = argmax(&logits);
                // tg: the same session, emptied and refilled to `depth` (untimed)
                s.kv_keep(0).unwrap();
                if depth > 0 {
                    next = argmax(&s.eval(&toks[..depth], Logits::Last).unwrap());
                }
                // as a frontend's decode loop: logits into one reused buffer, greedy pick
                let mut logits = vec![0.0f32; s.logits_len(1, Logits::Last)];
                let t = Instant::now();
                for _ in 0..tg {
                    s.eval_into(&[next], Logits::Last, &mut logits).unwrap();
                    next = argmax(&logits);
                }
                tgs.push(tg as f64 / t.elapsed().as_secs_f64());
            }
            let name = path.rsplit('/').next().unwrap();
            let tg_t = median(tgs);
            let ceiling = model.backend.roofline().map(|(bytes, bw)| {
                let bytes = bytes as f64;
                (bytes, bw, bw / bytes)
            });
            let where_ = model.backend_description();
            match ceiling {
                Some((bytes, bw, ceil)) => println!(
                    "{name:45} {where_:28} {load_ms:>8.0} {:>12.1} {tg_t:>12.1} {:>9.1} {:>9.0} {ceil:>10.0} {:>5.0}%",
                    median(pps),
                    bytes / 1e6,
                    bw / 1e9,
                    100.0 * tg_t / ceil
                ),
                None => println!("{name:45} {where_:28} {load_ms:>8.0} {:>12.1} {tg_t:>12.1}", median(pps)),
            }
            if rocmforge::backend::gpu::profile::enabled() {
                println!("{}", rocmforge::backend::gpu::profile::report());
            }
        }
    }
}

#[allow(dead_code)]
fn main() {
    run(std::env::args().skip(1).collect())
}
