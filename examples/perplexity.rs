//! Perplexity of a model on a text, in windows of `c` tokens (default 256).
//! Each window starts fresh (BOS if the model adds one); every position after
//! the first predicts the next token; PPL = exp(mean NLL) over all of them.
//!
//! usage: perplexity [-c 256] [-f TEXT] [MODEL.gguf ...]
//! (default text: tests/fixtures/text/english.txt; default models: the three real ones)

use rocmforge::model::{LoadOptions, Logits, Model, Session};

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (mut c, mut file) = (256usize, format!("{root}/tests/fixtures/text/english.txt"));
    let mut models = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" => c = args.next().and_then(|v| v.parse().ok()).expect("-c N"),
            "-f" => file = args.next().expect("-f FILE"),
            _ => models.push(a),
        }
    }
    if models.is_empty() {
        models = ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]
            .iter()
            .map(|m| format!("{root}/models/{m}"))
            .collect();
    }
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    for path in models {
        let model = Model::load(&path, LoadOptions::default()).unwrap_or_else(|e| panic!("{path}: {e} (run `make models`)"));
        let bos: Vec<u32> = if model.tokenizer.vocab.add_bos { model.tokenizer.vocab.special.bos.into_iter().collect() } else { vec![] };
        let toks = model.tokenizer.encode(&text, false, false);
        let body = c - bos.len();
        let (mut nll, mut count) = (0f64, 0usize);
        for chunk in toks.chunks(body).filter(|ch| ch.len() == body) {
            let window: Vec<u32> = bos.iter().chain(chunk).copied().collect();
            let mut s = Session::new(model.clone(), c).unwrap();
            let logits = s.eval(&window, Logits::All).unwrap();
            let nv = model.cfg.n_vocab;
            for p in bos.len()..window.len() - 1 {
                let row = &logits[p * nv..(p + 1) * nv];
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                nll += lse - row[window[p + 1] as usize] as f64;
                count += 1;
            }
        }
        let name = path.rsplit('/').next().unwrap();
        println!("{name:45} c={c}  {count} scored tokens  PPL = {:.3}", (nll / count.max(1) as f64).exp());
    }
}
