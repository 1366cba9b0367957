//! Command-line text generation: load progress bar, streamed output, sampler
//! flags. `make demo` runs it on SmolLM2.
//!
//! usage: generate -m MODEL.gguf [-p PROMPT] [options]
//!   -n N                 tokens to generate (default 128)
//!   -t N                 threads (default: all cores)
//!   -c N                 context size (default: min(n_ctx_train, 4096))
//!   --backend B          auto (default), cpu, cuda[:N], hip[:N]
//!   --temp F             temperature; 0 = greedy (default 0.8)
//!   --top-k N --top-p F --min-p F
//!   --repeat-penalty F --frequency-penalty F --presence-penalty F --penalty-last-n N
//!   --seed N             RNG seed (default 0x5EED)
//!   --stop STR           stop string (repeatable)
//!   --chat               wrap the prompt as one user turn (ChatML or Gemma turns)
//!   --raw                do not add BOS/EOS; do not parse special tokens

use std::io::Write;
use std::time::Instant;

use rocmforge::generate::{generate, GenerateOptions};
use rocmforge::model::{BackendChoice, LoadOptions, Model};
use rocmforge::engine::Session;
use rocmforge::sampler::{Sampler, SamplerParams};

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}\nusage: generate -m MODEL.gguf [-p PROMPT] [-n N] [-t N] [-c N] [--backend B] [--temp F] [--top-k N] [--top-p F] [--min-p F] [--repeat-penalty F] [--frequency-penalty F] [--presence-penalty F] [--penalty-last-n N] [--seed N] [--stop STR]... [--chat] [--raw]");
    std::process::exit(2)
}

fn main() {
    let mut model_path = None;
    let mut prompt = "Once upon a time".to_string();
    let (mut n, mut threads, mut n_ctx) = (128usize, 0usize, 0usize);
    let mut sp = SamplerParams::default();
    let mut backend = BackendChoice::Auto;
    let (mut stops, mut chat, mut raw) = (Vec::new(), false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        macro_rules! num {
            () => {{
                let v = val();
                v.parse().unwrap_or_else(|_| usage(&format!("{a}: '{v}' is not a number")))
            }};
        }
        match a.as_str() {
            "-m" | "--model" => model_path = Some(val()),
            "-p" | "--prompt" => prompt = val(),
            "-n" => n = num!(),
            "-t" | "--threads" => threads = num!(),
            "-c" | "--ctx" => n_ctx = num!(),
            "--backend" => backend = val().parse().unwrap_or_else(|e| usage(&format!("{e}"))),
            "--temp" => sp.temperature = num!(),
            "--top-k" => sp.top_k = num!(),
            "--top-p" => sp.top_p = num!(),
            "--min-p" => sp.min_p = num!(),
            "--repeat-penalty" => sp.repeat_penalty = num!(),
            "--frequency-penalty" => sp.frequency_penalty = num!(),
            "--presence-penalty" => sp.presence_penalty = num!(),
            "--penalty-last-n" => sp.penalty_last_n = num!(),
            "--seed" => sp.seed = num!(),
            "--stop" => stops.push(val()),
            "--chat" => chat = true,
            "--raw" => raw = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument '{other}'")),
        }
    }
    let path = model_path.unwrap_or_else(|| usage("no model (-m)"));

    // load, with a progress bar on stderr
    let t0 = Instant::now();
    let mut bar = |p: f32| {
        let w = 30;
        let k = (p * w as f32) as usize;
        eprint!("\rloading [{}{}] {:3.0}%", "#".repeat(k), ".".repeat(w - k), p * 100.0);
        true
    };
    let model = match Model::load(&path, LoadOptions { n_threads: threads, progress: Some(&mut bar), backend, gpu_mem_budget: 0 }) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("\nerror: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(" {} in {:.0} ms ({} layers, on {})", model.cfg.arch.name, t0.elapsed().as_secs_f64() * 1e3, model.cfg.n_layer, model.backend_description());

    let text = if chat {
        if model.cfg.arch.name == "gemma3" {
            format!("<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n")
        } else {
            format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
        }
    } else {
        prompt.clone()
    };
    let ids = model.tokenizer.encode(&text, !raw, !raw);
    let mut session = Session::new(model.clone(), n_ctx).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let mut sampler = Sampler::new(sp);
    print!("{}", if chat { "" } else { prompt.as_str() });
    let t1 = Instant::now();
    let mut first: Option<f64> = None;
    let out = generate(&mut session, &mut sampler, &ids, &GenerateOptions { max_tokens: n, stop: stops }, |_, piece| {
        first.get_or_insert_with(|| t1.elapsed().as_secs_f64());
        print!("{piece}");
        std::io::stdout().flush().ok();
        true
    });
    println!();
    match out {
        Ok(g) => {
            let total = t1.elapsed().as_secs_f64();
            let pp = first.unwrap_or(total);
            eprintln!(
                "[{} prompt tokens in {:.0} ms; {} generated at {:.1} tok/s; stop: {:?}]",
                ids.len(),
                pp * 1e3,
                g.tokens.len(),
                (g.tokens.len().saturating_sub(1)) as f64 / (total - pp).max(1e-9),
                g.reason
            );
            if !model.backend.is_gpu() {
                eprintln!("[{}]", cpu_note(model.n_threads));
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// What ran on the CPU, and why it may be slower than the numbers in
/// docs/PERFORMANCE.md (SmolLM2 decodes at ~100-130 tok/s on 2 cores of an
/// AVX-512 VNNI Xeon).
fn cpu_note(threads: usize) -> String {
    use rocmforge::backend::cpu::{packed, simd};
    let mut note = format!("cpu: {threads} threads, kernels {}", simd::kernel_name());
    if packed::wanted() {
        note += ", weights packed in 8-row tiles";
    }
    let why = match simd::Family::current() {
        _ if simd::act16() => Some("FORGE_ACT16 is set: 16-bit activations, about half the decode speed of 8-bit"),
        f if f != simd::Family::Avx512Vnni && simd::Family::Avx512Vnni.available() => Some("FORGE_CPU_KERNELS chose a family below this CPU's best (avx512vnni)"),
        simd::Family::Scalar => Some("this CPU has no AVX2: portable scalar kernels, many times slower"),
        simd::Family::Avx2 | simd::Family::AvxVnni => Some("this CPU has no AVX-512 VNNI: per-row kernels, weights not packed (the packed path is about 2x faster)"),
        simd::Family::Avx512Vnni if !packed::wanted() => Some("FORGE_NO_PACK is set: per-row kernels, about half the packed speed"),
        _ => None,
    };
    if let Some(w) = why {
        note += "; slower than it could be: ";
        note += w;
    }
    if threads < 2 {
        note += "; one thread (more cores decode faster)";
    }
    note
}
