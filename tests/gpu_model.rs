//! End to end on a GPU (built only with `--features cuda` or `rocm`; a GPU
//! build is for a GPU machine, so nothing here skips):
//!
//! - shape twins of the three real models, and Qwen's in Q4_0 (make them
//!   with `make_twin`, see scripts/gpu_check.sh; `FORGE_TWIN_DIR` names
//!   their folder): after a 128-token prefill and at each of 64 greedy
//!   decode steps, the GPU logits agree with the run.c-style f32 reference
//!   pass (the CPU oracle) to relative L2 ≤ 3e-2 (the bound: f16 KV
//!   cache and, in prefill, f16 GEMM operands);
//! - one sequence decoding from position 2,040 to 2,119 (contiguous and
//!   paged) agrees with the CPU engine at every step, on the decode kernel
//!   and on the tensor-core attention with key splits;
//! - device memory returns to its starting level after each model;
//! - out-of-memory and too-long contexts come back as status codes, and the
//!   process goes on with the CPU backend;
//! - with `FORGE_REAL_SMOLLM2` set to the real SmolLM2 file: the same greedy
//!   tokens on the GPU as on the CPU.
#![cfg(any(feature = "cuda", feature = "rocm"))]

mod common;

use common::last_error;

use std::ffi::CString;
use std::path::PathBuf;

use parking_lot::Mutex;
use rocmforge::backend::gpu::{self, GpuKind};
use rocmforge::ffi::*;
use rocmforge::model::reference::Reference;
use rocmforge::model::{BackendChoice, LoadOptions, Model};
use rocmforge::backend::Logits;
use rocmforge::engine::Session;
use rocmforge::sampler::argmax;

static LOCK: Mutex<()> = Mutex::new(());
const SLACK: usize = 64 << 20;

fn kind() -> GpuKind {
    match std::env::var("FORGE_TEST_GPU").as_deref() {
        Ok("hip") => GpuKind::Hip,
        Ok("cuda") => GpuKind::Cuda,
        _ if cfg!(feature = "cuda") => GpuKind::Cuda,
        _ => GpuKind::Hip,
    }
}

fn twin(name: &str) -> PathBuf {
    let dir = std::env::var_os("FORGE_TWIN_DIR").map(PathBuf::from).expect("FORGE_TWIN_DIR must name the folder of shape twins (scripts/gpu_check.sh makes them)");
    let p = dir.join(name);
    assert!(p.is_file(), "{} missing: make it with `make_twin --from MODEL(.head) --out {}`", p.display(), p.display());
    p
}

fn free_mem() -> usize {
    gpu::device(kind(), 0).unwrap().rt.mem_info().unwrap().0
}

fn load(path: &PathBuf, backend: BackendChoice) -> std::sync::Arc<Model> {
    Model::load(path, LoadOptions { n_threads: 8, backend, ..Default::default() }).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Prefill 128 tokens, then 64 greedy steps; GPU vs the reference pass.
fn twin_matches_reference(name: &str) {
    let path = twin(name);
    let cpu = load(&path, BackendChoice::Cpu);
    let nv = cpu.cfg.n_vocab;
    // prompt: fixed pseudo-random ids
    let prompt: Vec<u32> = (0..128u64).map(|i| ((i * 2654435761 + 12345) % nv as u64) as u32).collect();
    // the oracle first (no GPU lock: it is slow and CPU-only)
    let mut r = Reference::new(&cpu, 256).unwrap();
    let mut ref_logits = Vec::new();
    let mut toks = prompt.clone();
    let mut last = Vec::new();
    for (p, &t) in prompt.iter().enumerate() {
        last = r.forward(t, p).unwrap().to_vec();
    }
    ref_logits.push(last.clone());
    for step in 0..64 {
        let next = argmax(&last);
        toks.push(next);
        last = r.forward(next, 128 + step).unwrap().to_vec();
        ref_logits.push(last.clone());
    }

    let _g = LOCK.lock();
    let free0 = free_mem();
    {
        let gm = load(&path, BackendChoice::Gpu(kind(), 0));
        assert!(gm.backend.is_gpu(), "model not on the GPU");
        let mut s = Session::new(gm.clone(), 256).unwrap();
        let mut worst = 0f64;
        let mut errs = Vec::new();
        let first = s.eval(&prompt, Logits::Last).unwrap();
        errs.push(common::rel_l2(&first, &ref_logits[0]));
        let mut agree = (argmax(&first) == argmax(&ref_logits[0])) as usize;
        // decode through eval_into's reused buffer (the C API's path); NaN
        // first, so a step that wrote nothing would show
        let mut l = vec![f32::NAN; nv];
        for step in 0..64 {
            l.fill(f32::NAN);
            s.eval_into(&[toks[128 + step]], Logits::Last, &mut l).unwrap();
            assert!(l.iter().all(|v| v.is_finite()), "{name}: step {step} left logits unwritten or not finite");
            errs.push(common::rel_l2(&l, &ref_logits[step + 1]));
            agree += (argmax(&l) == argmax(&ref_logits[step + 1])) as usize;
        }
        for &e in &errs {
            worst = worst.max(e);
        }
        let mean = errs.iter().sum::<f64>() / errs.len() as f64;
        println!(
            "{name} on {}: GPU vs reference rel L2: prefill {:.2e}, decode worst {:.2e}, mean {:.2e}; top-1 agreement {agree}/65",
            gm.backend_description(),
            errs[0],
            worst,
            mean
        );
        assert!(worst <= 3e-2, "{name}: rel L2 {worst:.3e} > 3e-2 (per step: {errs:?})");
        // all-positions logits of a prefill (the BLAS path for the output matrix)
        let mut s2 = Session::new(gm.clone(), 256).unwrap();
        let all = s2.eval(&toks[..16], Logits::All).unwrap();
        let mut r2 = Reference::new(&cpu, 16).unwrap();
        for p in 0..16 {
            let e = common::rel_l2(&all[p * nv..(p + 1) * nv], r2.forward(toks[p], p).unwrap());
            assert!(e <= 3e-2, "{name}: all-logits position {p}: {e:.3e}");
        }
    }
    let free1 = free_mem();
    assert!(free1 + SLACK >= free0, "{name}: device memory not returned: {} MiB free before, {} MiB after", free0 >> 20, free1 >> 20);
}

#[test]
fn smollm2_twin() {
    twin_matches_reference("smollm2-twin.gguf");
}
#[test]
fn qwen2_twin() {
    twin_matches_reference("qwen2-twin.gguf");
}
#[test]
fn gemma3_twin() {
    twin_matches_reference("gemma3-twin.gguf");
}
/// Qwen's shapes in Q4_0: the 4864-wide down matrices take the regrouped
/// device layout (ops::pack_rows), the 896-wide ones the GGUF one.
#[test]
fn qwen2_q4_0_twin() {
    twin_matches_reference("qwen2-q4_0-twin.gguf");
}


/// The engine on the GPU (one pass per step over the paged device cache):
/// three sequences of different lengths and a fork (sharing its source's
/// full blocks), prefilled in one batch and decoded together for 16 steps,
/// give each sequence its solo GPU session's logits and stay within the
/// twin bound of the CPU engine's.
fn engine_matches_solo(name: &str) {
    use rocmforge::engine::{BatchRow, Engine, EngineOptions};
    let path = twin(name);
    let cpu = load(&path, BackendChoice::Cpu);
    let nv = cpu.cfg.n_vocab;
    let prompts: Vec<Vec<u32>> = [7u64, 19, 33].iter().map(|&n| (0..n).map(|i| ((i * 2654435761 + 977 * n) % nv as u64) as u32).collect()).collect();
    let _g = LOCK.lock();
    let free0 = free_mem();
    {
        let gm = load(&path, BackendChoice::Gpu(kind(), 0));
        let run = |m: &std::sync::Arc<Model>| -> (Vec<Vec<f32>>, rocmforge::kv::KvStats) {
            let mut e = Engine::new(m.clone(), EngineOptions { n_ctx: 64, ..Default::default() }).unwrap();
            let ids: Vec<u32> = prompts.iter().map(|_| e.add_seq().unwrap()).collect();
            let mut rows = Vec::new();
            for (&id, p) in ids.iter().zip(&prompts) {
                rows.extend(p.iter().enumerate().map(|(i, &t)| BatchRow { seq: id, token: t, pos: i, logits: i + 1 == p.len() }));
            }
            e.decode(&rows).unwrap();
            let mut out: Vec<Vec<f32>> = (0..rows.len()).filter(|&r| rows[r].logits).map(|r| e.logits(r).unwrap().to_vec()).collect();
            let fork = e.fork(ids[2]).unwrap();
            let mut seqs: Vec<(u32, usize)> = ids.iter().zip(&prompts).map(|(&id, p)| (id, p.len())).collect();
            seqs.push((fork, prompts[2].len()));
            for step in 0..16 {
                let rows: Vec<BatchRow> = seqs
                    .iter()
                    .enumerate()
                    .map(|(i, &(id, len))| BatchRow { seq: id, token: ((step * 31 + i * 7 + 1) % nv) as u32, pos: len + step, logits: true })
                    .collect();
                e.decode(&rows).unwrap();
                out.extend((0..rows.len()).map(|r| e.logits(r).unwrap().to_vec()));
            }
            (out, e.stats())
        };
        let (gpu_rows, st) = run(&gm);
        let (cpu_rows, _) = run(&cpu);
        // solo GPU sessions fed the same tokens
        let mut solo_rows = Vec::new();
        let mut sessions: Vec<Session> = Vec::new();
        for p in &prompts {
            let mut s = Session::new(gm.clone(), 64).unwrap();
            solo_rows.push(s.eval(p, Logits::Last).unwrap());
            sessions.push(s);
        }
        let mut f = Session::new(gm.clone(), 64).unwrap();
        f.eval(&prompts[2], Logits::None).unwrap_or_default();
        sessions.push(f);
        for step in 0..16 {
            for (i, s) in sessions.iter_mut().enumerate() {
                solo_rows.push(s.eval(&[((step * 31 + i * 7 + 1) % nv) as u32], Logits::Last).unwrap());
            }
        }
        let worst_solo = gpu_rows.iter().zip(&solo_rows).map(|(a, b)| common::rel_l2(a, b)).fold(0.0, f64::max);
        let worst_cpu = gpu_rows.iter().zip(&cpu_rows).map(|(a, b)| common::rel_l2(a, b)).fold(0.0, f64::max);
        println!("{name} engine on {}: {} rows; GPU engine vs solo GPU sessions: worst rel L2 {worst_solo:.2e}; vs the CPU engine {worst_cpu:.2e}; pool {st:?}", gm.backend_description(), gpu_rows.len());
        assert_eq!(gpu_rows.len(), 3 + 16 * 4);
        assert!(worst_solo <= 1e-3, "{name}: GPU engine vs solo {worst_solo:.3e}");
        assert!(worst_cpu <= 3e-2, "{name}: GPU engine vs CPU engine {worst_cpu:.3e}");
    }
    let free1 = free_mem();
    assert!(free1 + SLACK >= free0, "{name}: device memory not returned: {} MiB free before, {} MiB after", free0 >> 20, free1 >> 20);
}

/// Batched steps against the CPU engine, on the same batches: B sequences
/// with prompts of mixed lengths prefilled in one batch, then 64 decode
/// steps of one token per sequence, each fed the CPU engine's greedy
/// token. At every step and for every sequence the GPU logits are within
/// rel L2 3e-2 of the CPU's, and top-1 agrees for at least 99% of rows.
/// Device memory returns to its starting level.
fn batched_matches_cpu_engine(name: &str, batch: &[usize]) {
    use rocmforge::engine::{BatchRow, Engine, EngineOptions};
    let path = twin(name);
    let cpu = load(&path, BackendChoice::Cpu);
    let nv = cpu.cfg.n_vocab;
    let _g = LOCK.lock();
    let free0 = free_mem();
    {
        let gm = load(&path, BackendChoice::Gpu(kind(), 0));
        for &b in batch {
            let lens: Vec<usize> = (0..b).map(|i| 3 + (i * 37 + b * 11) % 125).collect();
            let prompts: Vec<Vec<u32>> = lens.iter().enumerate().map(|(s, &n)| (0..n as u64).map(|i| ((i * 2654435761 + 977 * s as u64 + 13) % nv as u64) as u32).collect()).collect();
            let opts = EngineOptions { n_ctx: 256, kv_budget: b * 256 * cpu.cfg.kv_bytes_per_position(), ..Default::default() };
            let (mut ec, mut eg) = (Engine::new(cpu.clone(), opts).unwrap(), Engine::new(gm.clone(), opts).unwrap());
            let ids: Vec<u32> = (0..b).map(|_| ec.add_seq().unwrap()).collect();
            let gids: Vec<u32> = (0..b).map(|_| eg.add_seq().unwrap()).collect();
            assert_eq!(ids, gids);
            let mut rows = Vec::new();
            for (&id, p) in ids.iter().zip(&prompts) {
                rows.extend(p.iter().enumerate().map(|(i, &t)| BatchRow { seq: id, token: t, pos: i, logits: i + 1 == p.len() }));
            }
            let (mut worst, mut agree, mut total) = (0f64, 0usize, 0usize);
            let mut lens = lens.clone();
            for step in 0..=64 {
                ec.decode(&rows).unwrap();
                eg.decode(&rows).unwrap();
                let mut next = Vec::new();
                for r in (0..rows.len()).filter(|&r| rows[r].logits) {
                    let (c, g) = (ec.logits(r).unwrap(), eg.logits(r).unwrap());
                    assert!(g.iter().all(|v| v.is_finite()), "{name} B={b} step {step}: logits not finite");
                    let e = common::rel_l2(g, c);
                    assert!(e <= 3e-2, "{name} B={b} step {step} row {r}: rel L2 {e:.3e} > 3e-2");
                    worst = worst.max(e);
                    agree += (argmax(g) == argmax(c)) as usize;
                    total += 1;
                    next.push((rows[r].seq, argmax(c)));
                }
                rows = next.iter().map(|&(seq, token)| {
                    let i = ids.iter().position(|&x| x == seq).unwrap();
                    lens[i] += 1;
                    BatchRow { seq, token, pos: lens[i] - 1, logits: true }
                }).collect();
            }
            println!("{name} B={b}: GPU engine vs CPU engine over 65 steps: worst rel L2 {worst:.2e}, top-1 {agree}/{total}");
            assert!(agree * 100 >= total * 99, "{name} B={b}: top-1 agreement {agree}/{total} < 99%");
            for id in ids {
                eg.remove_seq(id).unwrap();
            }
            assert_eq!(eg.stats().blocks_used, 0, "{name} B={b}: blocks left held");
        }
    }
    let free1 = free_mem();
    assert!(free1 + SLACK >= free0, "{name}: device memory not returned: {} MiB free before, {} MiB after", free0 >> 20, free1 >> 20);
}

/// One sequence decoding from position 2,040 to 2,119 on the GPU against
/// the CPU engine at every step, through a Session (contiguous cache) or an
/// Engine (paged): once with the decode kernel, once with one-row steps
/// moving to the tensor-core attention with key splits at 2,048
/// (`FORGE_FLASH_DECODE`).
fn long_decode_matches_cpu(name: &str, paged: bool) {
    use rocmforge::engine::{BatchRow, Engine, EngineOptions};
    let path = twin(name);
    let cpu = load(&path, BackendChoice::Cpu);
    let nv = cpu.cfg.n_vocab;
    // 80 steps: past 2,048 (the attention changes) and past 2,112 (a key
    // tile more, so a replayed graph's split ranges change)
    let (n_prompt, steps, n_ctx) = (2040usize, 80usize, 2304usize);
    let prompt: Vec<u32> = (0..n_prompt as u64).map(|i| ((i * 2654435761 + 4242) % nv as u64) as u32).collect();
    // each side's logits after the prompt and after each greedy step (the
    // CPU's token fed to both)
    let run = |m: &std::sync::Arc<Model>, feed: Option<&[u32]>| -> (Vec<Vec<f32>>, Vec<u32>) {
        let mut out = Vec::new();
        let mut toks = Vec::new();
        if paged {
            let opts = EngineOptions { n_ctx, kv_budget: n_ctx * m.cfg.kv_bytes_per_position(), ..Default::default() };
            let mut e = Engine::new(m.clone(), opts).unwrap();
            let id = e.add_seq().unwrap();
            let mut rows: Vec<BatchRow> = prompt.iter().enumerate().map(|(i, &t)| BatchRow { seq: id, token: t, pos: i, logits: i + 1 == n_prompt }).collect();
            for step in 0..=steps {
                e.decode(&rows).unwrap();
                let l = e.logits(rows.len() - 1).unwrap().to_vec();
                let next = feed.map_or_else(|| argmax(&l), |f| f[step]);
                out.push(l);
                toks.push(next);
                rows = vec![BatchRow { seq: id, token: next, pos: n_prompt + step, logits: true }];
            }
            e.remove_seq(id).unwrap();
        } else {
            let mut s = Session::new(m.clone(), n_ctx).unwrap();
            let mut l = s.eval(&prompt, Logits::Last).unwrap();
            for step in 0..=steps {
                let next = feed.map_or_else(|| argmax(&l), |f| f[step]);
                out.push(l.clone());
                toks.push(next);
                if step < steps {
                    l = s.eval(&[next], Logits::Last).unwrap();
                }
            }
        }
        (out, toks)
    };
    let (want, toks) = run(&cpu, None);
    let _g = LOCK.lock();
    let free0 = free_mem();
    for flash in [Some(0), Some(2048)] {
        rocmforge::backend::gpu::forward::set_flash_decode(flash);
        let gm = load(&path, BackendChoice::Gpu(kind(), 0));
        let (got, _) = run(&gm, Some(&toks));
        let (mut worst, mut agree) = (0f64, 0usize);
        for (step, (g, c)) in got.iter().zip(&want).enumerate() {
            assert!(g.iter().all(|v| v.is_finite()), "{name}: step {step}: logits not finite");
            let e = common::rel_l2(g, c);
            assert!(e <= 3e-2, "{name}: position {}: rel L2 {e:.3e} > 3e-2", n_prompt - 1 + step);
            worst = worst.max(e);
            agree += (argmax(g) == argmax(c)) as usize;
        }
        let how = if flash == Some(0) { "decode kernel" } else { "tensor-core attention from 2,048" };
        println!("{name} ({}, {how}): GPU vs CPU engine, positions {}..{}: worst rel L2 {worst:.2e}, top-1 {agree}/{}", if paged { "paged" } else { "contiguous" }, n_prompt - 1, n_prompt + steps - 1, got.len());
        assert!(agree + 1 >= got.len(), "{name}: top-1 agreement {agree}/{}", got.len());
    }
    rocmforge::backend::gpu::forward::set_flash_decode(None);
    let free1 = free_mem();
    assert!(free1 + SLACK >= free0, "{name}: device memory not returned: {} MiB free before, {} MiB after", free0 >> 20, free1 >> 20);
}

#[test]
fn long_decode_qwen2_twin() {
    long_decode_matches_cpu("qwen2-twin.gguf", false);
}

#[test]
fn long_decode_smollm2_twin_paged() {
    long_decode_matches_cpu("smollm2-twin.gguf", true);
}

#[test]
fn batched_smollm2_twin() {
    batched_matches_cpu_engine("smollm2-twin.gguf", &[1, 7, 64]);
}
#[test]
fn batched_qwen2_twin() {
    batched_matches_cpu_engine("qwen2-twin.gguf", &[7]);
}
/// A small llama in Q4_0 with every width a multiple of 256: its 20-row
/// decode steps (padded to 24) take the `mmf_*` products over the
/// quantized weights (ops::mmf_rows, default 17-32), its 64-row steps and
/// prefill chunks the BLAS (`FORGE_MMF=17-64` puts the 64-row steps on
/// `mmf_*` too).
#[test]
fn batched_llama_small_q4_0_twin() {
    batched_matches_cpu_engine("llama-small-q4_0-twin.gguf", &[20, 64]);
}
#[test]
fn batched_gemma3_twin() {
    batched_matches_cpu_engine("gemma3-twin.gguf", &[1, 7, 64]);
}

/// The engine's random schedule on the GPU: sequences added, removed,
/// forked, truncated and stepped (decode rows and prefill chunks mixed,
/// prefixes reused) over a small paged pool. Every row's logits that a
/// step returns equal a fresh GPU session fed that sequence's tokens (no
/// cross-talk between sequences: shared blocks, copy-on-write and block
/// reuse keep each sequence's cache its own), and the block pool and
/// device memory return to their starting level.
#[test]
fn random_schedule_on_the_gpu() {
    use common::Rng;
    use rocmforge::engine::{BatchRow, Engine, EngineOptions, SeqId};
    let path = twin("smollm2-twin.gguf");
    let _g = LOCK.lock();
    let free0 = free_mem();
    {
        let gm = load(&path, BackendChoice::Gpu(kind(), 0));
        let nv = gm.cfg.n_vocab as u64;
        let n_ctx = 96;
        let per_block = gm.cfg.kv_bytes_per_position() * rocmforge::kv::BLOCK;
        let mut e = Engine::new(gm.clone(), EngineOptions { n_ctx, kv_budget: 24 * per_block, preempt: false }).unwrap();
        let total = e.stats().blocks_total;
        let mut rng = Rng(0x6E_5EED);
        let mut live: Vec<(SeqId, Vec<u32>)> = Vec::new();
        let stems: Vec<Vec<u32>> = (0..3).map(|s| (0..40).map(|i| ((s * 31 + i * 7) % nv as usize) as u32).collect()).collect();
        let (mut checked, mut worst, mut exhausted) = (0, 0f64, 0);
        let solo = |toks: &[u32]| -> Vec<f32> {
            let mut s = Session::new(gm.clone(), n_ctx).unwrap();
            s.eval(toks, Logits::Last).unwrap()
        };
        for _ in 0..400 {
            match rng.below(10) {
                0 if live.len() < 8 => {
                    let id = e.add_seq().unwrap();
                    let stem = &stems[rng.below(3)];
                    let n = e.reuse_prefix(id, stem).unwrap();
                    let rows: Vec<BatchRow> = (n..stem.len()).map(|p| BatchRow { seq: id, token: stem[p], pos: p, logits: p + 1 == stem.len() }).collect();
                    match e.decode(&rows) {
                        Ok(()) => live.push((id, stem.clone())),
                        Err(rocmforge::Error::KvExhausted(_)) => {
                            exhausted += 1;
                            live.push((id, stem[..n].to_vec()));
                        }
                        Err(err) => panic!("{err}"),
                    }
                }
                1 if !live.is_empty() => {
                    let (id, _) = live.swap_remove(rng.below(live.len()));
                    e.remove_seq(id).unwrap();
                }
                2 if !live.is_empty() && live.len() < 8 => {
                    let i = rng.below(live.len());
                    let id = e.fork(live[i].0).unwrap();
                    let toks = live[i].1.clone();
                    live.push((id, toks));
                }
                3 if !live.is_empty() => {
                    let i = rng.below(live.len());
                    let keep = rng.below(live[i].1.len() + 1);
                    e.keep(live[i].0, keep).unwrap();
                    live[i].1.truncate(keep);
                }
                _ if !live.is_empty() => {
                    let mut rows = Vec::new();
                    let mut added = Vec::new();
                    for (i, (id, toks)) in live.iter().enumerate() {
                        if rng.below(3) == 0 {
                            continue;
                        }
                        let n = if rng.below(3) == 0 { 1 + rng.below(20) } else { 1 };
                        let n = n.min(n_ctx - toks.len());
                        if n == 0 {
                            continue;
                        }
                        let new: Vec<u32> = (0..n).map(|_| (rng.next() % nv) as u32).collect();
                        for (j, &t) in new.iter().enumerate() {
                            rows.push(BatchRow { seq: *id, token: t, pos: toks.len() + j, logits: j + 1 == n || rng.below(4) == 0 });
                        }
                        added.push((i, new));
                    }
                    if rows.is_empty() {
                        continue;
                    }
                    match e.decode(&rows) {
                        Ok(()) => {
                            for (i, new) in &added {
                                live[*i].1.extend(new);
                            }
                            // one row of the step, checked against a fresh session
                            let wanted: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].logits).collect();
                            let r = wanted[rng.below(wanted.len())];
                            let k = added.iter().position(|(i, _)| live[*i].0 == rows[r].seq).unwrap();
                            let toks = &live[added[k].0].1[..rows[r].pos + 1];
                            let err = common::rel_l2(e.logits(r).unwrap(), &solo(toks));
                            assert!(err <= 1e-2, "row {r} (sequence {}, position {}): rel L2 {err:.3e} against a fresh session", rows[r].seq, rows[r].pos);
                            worst = worst.max(err);
                            checked += 1;
                        }
                        Err(rocmforge::Error::KvExhausted(_)) => exhausted += 1,
                        Err(err) => panic!("{err}"),
                    }
                }
                _ => {}
            }
        }
        for (id, _) in live.drain(..) {
            e.remove_seq(id).unwrap();
        }
        let st = e.stats();
        println!("random schedule on {}: {checked} rows checked (worst rel L2 {worst:.2e}), {exhausted} refused for lack of blocks, pool {st:?}", gm.backend_description());
        assert!(checked >= 100, "only {checked} rows checked");
        assert_eq!((st.blocks_used, st.blocks_free), (0, total), "the block pool did not return to its starting level");
    }
    let free1 = free_mem();
    assert!(free1 + SLACK >= free0, "device memory not returned: {} MiB free before, {} MiB after", free0 >> 20, free1 >> 20);
}

#[test]
fn engine_smollm2_twin() {
    engine_matches_solo("smollm2-twin.gguf");
}
#[test]
fn engine_gemma3_twin() {
    engine_matches_solo("gemma3-twin.gguf");
}

/// Over-budget and driver-refused allocations, and a too-long context, are
/// statuses with messages; the process then carries on on the CPU.
#[test]
fn gpu_errors_are_statuses() {
    let path = CString::new(twin("smollm2-twin.gguf").to_str().unwrap()).unwrap();
    let _g = LOCK.lock();
    let gk = match kind() {
        GpuKind::Cuda => forge_backend::FORGE_BACKEND_CUDA as i32,
        GpuKind::Hip => forge_backend::FORGE_BACKEND_HIP as i32,
    };
    let mut n = -1;
    assert_eq!(unsafe { forge_device_count(gk, &mut n) }, forge_status::FORGE_OK);
    assert!(n >= 1);
    unsafe {
        // 1. budget too small for the weights
        let mut p = forge_load_default_params();
        p.backend = gk;
        p.gpu_mem_budget = 1 << 20;
        let mut ctx = std::ptr::null_mut();
        assert_eq!(forge_load(path.as_ptr(), &p, &mut ctx), forge_status::FORGE_ERR_OUT_OF_MEMORY);
        assert!(ctx.is_null());
        let msg = last_error();
        assert!(msg.contains("budget"), "{msg}");
        // 2. the driver itself refuses (a KV cache far beyond the card)
        p.gpu_mem_budget = u64::MAX / 2;
        p.n_ctx = FORGE_MAX_CTX; // 16M positions: ~370 GB of f16 KV
        assert_eq!(forge_load(path.as_ptr(), &p, &mut ctx), forge_status::FORGE_ERR_OUT_OF_MEMORY);
        println!("driver OOM message: {}", last_error());
        // 3. a working GPU context, then a too-long evaluation
        p.gpu_mem_budget = 0;
        p.n_ctx = 32;
        assert_eq!(forge_load(path.as_ptr(), &p, &mut ctx), forge_status::FORGE_OK, "{}", last_error());
        let toks: Vec<i32> = (1..=40).collect();
        assert_eq!(forge_eval(ctx, toks.as_ptr(), 40, std::ptr::null_mut(), 0), forge_status::FORGE_ERR_CONTEXT_FULL);
        assert!(last_error().contains("context"), "{}", last_error());
        let mut buf = vec![0u8; 128];
        let mut len = 0usize;
        assert_eq!(forge_ctx_backend(ctx, buf.as_mut_ptr() as *mut _, 128, &mut len), forge_status::FORGE_OK);
        let desc = String::from_utf8_lossy(&buf[..len]).into_owned();
        assert!(desc.starts_with(kind().name()), "{desc}");
        forge_free(ctx);
        // 4. the process goes on with the CPU backend
        p.backend = forge_backend::FORGE_BACKEND_CPU as i32;
        assert_eq!(forge_load(path.as_ptr(), &p, &mut ctx), forge_status::FORGE_OK);
        let mut logits = vec![0f32; 49152];
        assert_eq!(forge_eval(ctx, toks.as_ptr(), 4, logits.as_mut_ptr(), logits.len()), forge_status::FORGE_OK, "{}", last_error());
        assert!(logits.iter().take(100).all(|v| v.is_finite()));
        forge_free(ctx);
    }
}

/// The real SmolLM2 file: greedy tokens identical on GPU and CPU.
#[test]
fn real_smollm2_greedy_matches_cpu() {
    let path = PathBuf::from(std::env::var_os("FORGE_REAL_SMOLLM2").expect("FORGE_REAL_SMOLLM2 must name the real SmolLM2 GGUF"));
    let cpu = load(&path, BackendChoice::Cpu);
    let _g = LOCK.lock();
    let gm = load(&path, BackendChoice::Gpu(kind(), 0));
    let prompt = cpu.tokenizer.encode("The capital of France is Paris. The capital of Germany is", true, false);
    let run = |m: &std::sync::Arc<Model>| -> Vec<u32> {
        let mut s = Session::new(m.clone(), 256).unwrap();
        let mut l = s.eval(&prompt, Logits::Last).unwrap();
        let mut out = Vec::new();
        for _ in 0..64 {
            let t = argmax(&l);
            out.push(t);
            l = s.eval(&[t], Logits::Last).unwrap();
        }
        out
    };
    let (a, b) = (run(&cpu), run(&gm));
    println!("CPU: {:?}\nGPU: {:?}\ntext: {}", a, b, String::from_utf8_lossy(&cpu.tokenizer.decode(&a, false).unwrap()));
    assert_eq!(a, b, "greedy tokens differ between CPU and GPU");
}

/// The GPU engine's final hidden states (embeddings, `Output::Hidden`),
/// context shifts (`Engine::shift`, `Engine::turn`) and restored caches
/// (`read_seq_kv` / `load_seq`) against the CPU engine on the same twin:
/// hidden rows and the next logits after each operation within the
/// batched bound, and device memory back at its starting level.
fn hidden_and_shifts_match_cpu(name: &str) {
    use rocmforge::backend::Output;
    use rocmforge::engine::{BatchRow, Engine, EngineOptions};
    let path = twin(name);
    let cpu = load(&path, BackendChoice::Cpu);
    let nv = cpu.cfg.n_vocab;
    let _g = LOCK.lock();
    let free0 = free_mem();
    {
        let gm = load(&path, BackendChoice::Gpu(kind(), 0));
        let opts = EngineOptions { n_ctx: 256, kv_budget: 4 * 256 * cpu.cfg.kv_bytes_per_position(), ..Default::default() };
        let (mut ec, mut eg) = (Engine::new(cpu.clone(), opts).unwrap(), Engine::new(gm.clone(), opts).unwrap());
        let toks: Vec<u32> = (0..150u64).map(|i| ((i * 2654435761 + 17) % nv as u64) as u32).collect();
        let rows = |seq, p0: usize, t: &[u32], all: bool| -> Vec<BatchRow> {
            t.iter().enumerate().map(|(i, &token)| BatchRow { seq, token, pos: p0 + i, logits: all || i + 1 == t.len() }).collect()
        };
        // hidden states of every row of a prompt, two sequences in one step
        for e in [&mut ec, &mut eg] {
            e.set_output(Output::Hidden).unwrap();
            let (a, b) = (e.add_seq().unwrap(), e.add_seq().unwrap());
            let mut r = rows(a, 0, &toks[..40], true);
            r.extend(rows(b, 0, &toks[40..43], true));
            e.decode(&r).unwrap();
        }
        let mut worst = 0f64;
        for r in 0..43 {
            let (c, g) = (ec.hidden(r).unwrap(), eg.hidden(r).unwrap());
            assert_eq!(c.len(), cpu.cfg.n_embd);
            let e = common::rel_l2(g, c);
            assert!(e <= 3e-2, "{name}: hidden row {r}: rel L2 {e:.3e}");
            worst = worst.max(e);
        }
        println!("{name}: GPU hidden states vs CPU over 43 rows: worst rel L2 {worst:.2e}");
        for e in [&mut ec, &mut eg] {
            for s in e.seq_ids() {
                e.remove_seq(s).unwrap();
            }
            e.set_output(Output::Logits).unwrap();
        }
        // a shift, a turn, and a restored copy: the next logits agree
        let next = |e: &mut Engine, s, pos| {
            e.decode(&rows(s, pos, &[5], false)).unwrap();
            let l = e.logits(0).unwrap().to_vec();
            e.keep(s, pos).unwrap();
            l
        };
        let (a, ag) = (ec.add_seq().unwrap(), eg.add_seq().unwrap());
        ec.decode(&rows(a, 0, &toks, false)).unwrap();
        eg.decode(&rows(ag, 0, &toks, false)).unwrap();
        let fork = (ec.fork(a).unwrap(), eg.fork(ag).unwrap());
        ec.shift(a, 7, 70).unwrap();
        eg.shift(ag, 7, 70).unwrap();
        let e1 = common::rel_l2(&next(&mut eg, ag, 87), &next(&mut ec, a, 87));
        ec.turn(a, 0..20, -11).unwrap();
        eg.turn(ag, 0..20, -11).unwrap();
        let e2 = common::rel_l2(&next(&mut eg, ag, 87), &next(&mut ec, a, 87));
        let kv = eg.read_seq_kv(ag).unwrap();
        let r = eg.add_seq().unwrap();
        eg.load_seq(r, &eg.seq_tokens(ag).unwrap().to_vec(), &kv).unwrap();
        let (lg, lr) = (next(&mut eg, ag, 87), next(&mut eg, r, 87));
        assert_eq!(lg, lr, "{name}: a restored sequence computes what its source does");
        let e3 = common::rel_l2(&next(&mut eg, fork.1, 150), &next(&mut ec, fork.0, 150));
        println!("{name}: after a shift {e1:.2e}, a turn {e2:.2e}, the fork {e3:.2e} (GPU vs CPU, rel L2)");
        for e in [e1, e2, e3] {
            assert!(e <= 3e-2, "{name}: rel L2 {e:.3e} > 3e-2");
        }
        for s in eg.seq_ids() {
            eg.remove_seq(s).unwrap();
        }
        assert_eq!(eg.stats().blocks_used, 0);
    }
    let free1 = free_mem();
    assert!(free1 + SLACK >= free0, "{name}: device memory not returned: {} MiB free before, {} MiB after", free0 >> 20, free1 >> 20);
}

#[test]
fn hidden_and_shifts_smollm2_twin() {
    hidden_and_shifts_match_cpu("smollm2-twin.gguf");
}
#[test]
fn hidden_and_shifts_gemma3_twin() {
    hidden_and_shifts_match_cpu("gemma3-twin.gguf");
}
