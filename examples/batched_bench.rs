//! Batched decoding throughput, with llama.cpp's `llama-batched-bench`
//! semantics, flags and table, so the two can be run side by side: for each
//! B in `-npl`, B sequences each get PP prompt tokens, prefilled together in
//! one batch, then TG decode steps in which every step carries one token of
//! each of the B sequences.
//!
//! cargo run --release --example batched_bench -- -m MODEL -npp 128 -ntg 64 -npl 1,4,8 -t 2 [--backend cpu]
//!
//! Columns: PP, TG, B; N_KV = B·(PP+TG); T_PP / S_PP: prefill time and
//! tokens/s (B·PP tokens); T_TG / S_TG: decode time and aggregate tokens/s
//! (B·TG tokens); T / S: both. Each step's next tokens are the argmax of
//! each row: the engine's top-1 ([`Output::Top`], selected on the device
//! on a GPU), or with `--full-logits` picked on the host from every logit
//! (what a caller of `forge_engine_logits` does). `--detail` adds, on stderr, each decode
//! step's time and how much of it picking the next tokens took, and with
//! FORGE_PROFILE=1 (GPU) the time of each kernel.

use std::time::Instant;

use rocmforge::engine::{BatchRow, Engine, EngineOptions};
use rocmforge::Output;
use rocmforge::model::{BackendChoice, LoadOptions, Model};
use rocmforge::sampler::argmax;

fn usage() -> ! {
    eprintln!("usage: batched_bench -m MODEL [-npp 128] [-ntg 64] [-npl 1,4,8] [-t THREADS] [--backend auto|cpu|cuda|hip] [--reps N] [--detail] [--full-logits]");
    std::process::exit(2)
}

fn list(s: &str) -> Vec<usize> {
    s.split(',').map(|x| x.trim().parse().unwrap_or_else(|_| usage())).collect()
}

/// The example's body, also `rocmforge bench` / `perplexity` (the CLI
/// includes this file): `args` as on the command line, without the program.
pub fn run(args: Vec<String>) {
    let mut args = args.into_iter();
    let (mut model, mut npp, mut ntg, mut npl, mut threads, mut backend, mut reps) =
        (None, vec![128], vec![64], vec![1, 4, 8], 0usize, BackendChoice::Cpu, 1usize);
    let (mut detail, mut full_logits) = (false, false);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "-m" | "--model" => model = Some(val()),
            "-npp" => npp = list(&val()),
            "-ntg" => ntg = list(&val()),
            "-npl" => npl = list(&val()),
            "-t" | "--threads" => threads = val().parse().unwrap_or_else(|_| usage()),
            "--backend" => backend = val().parse().unwrap_or_else(|e| {
                eprintln!("{e}");
                usage()
            }),
            "--reps" => reps = val().parse().unwrap_or_else(|_| usage()),
            "--detail" => detail = true,
            "--full-logits" => full_logits = true,
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {a}");
                usage()
            }
        }
    }
    let path = model.unwrap_or_else(|| usage());
    let m = Model::load(&path, LoadOptions { n_threads: threads, backend, ..Default::default() }).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let nv = m.cfg.n_vocab as u32;
    println!("model {path}, {}, n_threads {}, cpu: {}", m.backend_description(), m.n_threads, cpu_name());
    println!();
    println!("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |");
    println!("|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|");
    for &pp in &npp {
        for &tg in &ntg {
            for &b in &npl {
                let n_ctx = pp + tg;
                let per_pos = m.cfg.kv_bytes_per_position();
                let budget = b * (n_ctx.div_ceil(16) + 1) * 16 * per_pos;
                let mut best: Option<(f64, f64)> = None;
                for _ in 0..reps.max(1) {
                    let mut e = Engine::new(m.clone(), EngineOptions { n_ctx, kv_budget: budget, ..Default::default() }).expect("engine");
                    if !full_logits {
                        e.set_output(Output::Top(1)).expect("top-1");
                    }
                    let pick = |e: &Engine, row: usize| if full_logits { argmax(e.logits(row).unwrap()) } else { e.top(row).unwrap().0[0] };
                    let seqs: Vec<u32> = (0..b).map(|_| e.add_seq().expect("sequence")).collect();
                    // prompts: fixed, different per sequence
                    let mut rows = Vec::with_capacity(b * pp);
                    for (i, &s) in seqs.iter().enumerate() {
                        for p in 0..pp {
                            rows.push(BatchRow { seq: s, token: ((i * 7919 + p * 104_729) as u32 % (nv - 1)) + 1, pos: p, logits: p + 1 == pp });
                        }
                    }
                    let t0 = Instant::now();
                    e.decode(&rows).expect("prefill");
                    let t_pp = t0.elapsed().as_secs_f64();
                    let mut next: Vec<u32> = (0..b).map(|i| pick(&e, (i + 1) * pp - 1)).collect();
                    let t1 = Instant::now();
                    let mut t_pick = 0.0;
                    let mut steps = Vec::with_capacity(tg);
                    for step in 0..tg {
                        let ts = Instant::now();
                        let rows: Vec<BatchRow> =
                            seqs.iter().zip(&next).map(|(&s, &t)| BatchRow { seq: s, token: t, pos: pp + step, logits: true }).collect();
                        e.decode(&rows).expect("decode");
                        let t2 = Instant::now();
                        next = (0..b).map(|i| pick(&e, i)).collect();
                        t_pick += t2.elapsed().as_secs_f64();
                        steps.push(ts.elapsed().as_secs_f64());
                    }
                    let t_tg = t1.elapsed().as_secs_f64();
                    if detail {
                        eprintln!("B={b}: decode step {:.3} ms, of which picking the next tokens on the host {:.3} ms", t_tg * 1e3 / tg as f64, t_pick * 1e3 / tg as f64);
                        // the first step captures the step's graph on a GPU
                        if let Some((first, rest)) = steps.split_first() {
                            let mut r = rest.to_vec();
                            r.sort_by(f64::total_cmp);
                            let med = r.get(r.len() / 2).copied().unwrap_or(*first);
                            eprintln!("B={b}: first decode step {:.3} ms, median of the others {:.3} ms", first * 1e3, med * 1e3);
                        }
                        if rocmforge::backend::gpu::profile::enabled() {
                            eprintln!("{}", rocmforge::backend::gpu::profile::report());
                        }
                    }
                    best = Some(match best {
                        Some((a, c)) => (a.min(t_pp), c.min(t_tg)),
                        None => (t_pp, t_tg),
                    });
                }
                let (t_pp, t_tg) = best.unwrap();
                let n_kv = b * (pp + tg);
                let t = t_pp + t_tg;
                println!(
                    "| {pp:5} | {tg:6} | {b:4} | {n_kv:6} | {t_pp:8.3} | {:8.2} | {t_tg:8.3} | {:8.2} | {t:8.3} | {:8.2} |",
                    (b * pp) as f64 / t_pp,
                    (b * tg) as f64 / t_tg,
                    n_kv as f64 / t
                );
            }
        }
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

#[allow(dead_code)]
fn main() {
    run(std::env::args().skip(1).collect())
}
