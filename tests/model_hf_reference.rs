//! The CPU engine against HF transformers (fp32, dequantized weights) on the
//! three real models. Fixtures: scripts/gen_logit_fixtures.py (HF) and
//! scripts/gen_llama_cpp_top1.sh (llama.cpp's top-1 on the same positions).
//!
//! Teacher-forced next-token top-1 agreement over 320 positions of the
//! committed English text, and the relative L2 error of the last-position
//! logits on 5 prompts (HF's logits are stored as f16: relative rounding
//! ≤ 5e-4, far below the bounds). Near-ties flip with any rounding change,
//! so the agreement is measured teacher-forced, and bounds depend on the
//! activation width the engine runs with:
//!
//! - 8-bit activations with residuals in outlier blocks (the default): the
//!   issue's bounds, ≥ 95% per model and ≥ 97% overall, and at least
//!   llama.cpp's own agreement with HF on the same positions, per model and
//!   overall (llama.cpp scores 95.0 / 98.8 / 94.1% here, 95.9% overall:
//!   this text is harder than the project's hidden prompts); relative L2
//!   ≤ 1e-1.
//! - 16-bit activations (`FORGE_ACT16=1`, run by `make test` too): ≥ 97%
//!   per model, relative L2 ≤ 5e-2.

mod common;

use common::rel_l2;
use rocmforge::model::{LoadOptions, Model};
use rocmforge::backend::Logits;
use rocmforge::engine::Session;
use rocmforge::sampler::argmax;
use serde_json::Value;

fn json(p: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture(p)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}


struct Score {
    key: &'static str,
    agree: usize,
    llama_cpp: usize,
    positions: usize,
}

fn check(model_file: &str, key: &'static str, act16: bool) -> Score {
    let model = Model::load(common::model(model_file), LoadOptions::default()).unwrap();
    let n_vocab = model.cfg.n_vocab;

    let t = json(&format!("logits/{key}/teacher.json"));
    let toks = ids(&t["ids"]);
    let mut s = Session::new(model.clone(), 512).unwrap();
    let all = s.eval(&toks, Logits::All).unwrap();
    let top: Vec<u32> = t["top_ids"].as_array().unwrap().iter().map(|r| r[0].as_u64().unwrap() as u32).collect();
    let agree = (0..toks.len()).filter(|&p| argmax(&all[p * n_vocab..(p + 1) * n_vocab]) == top[p]).count();
    let ll = ids(&json(&format!("logits/{key}/llama_cpp_top1.json"))["top1"]);
    assert_eq!(ll.len(), toks.len());
    let llama_cpp = (0..toks.len()).filter(|&p| ll[p] == top[p]).count();

    let mut worst = 0f64;
    let mut errs = Vec::new();
    for i in 0..5 {
        let p = json(&format!("logits/{key}/prompt{i}.json"));
        let bytes = std::fs::read(common::fixture(&format!("logits/{key}/prompt{i}.f16"))).unwrap();
        let want: Vec<f32> = bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        let mut s = Session::new(model.clone(), 256).unwrap();
        let got = s.eval(&ids(&p["ids"]), Logits::Last).unwrap();
        let e = rel_l2(&got, &want);
        worst = worst.max(e);
        errs.push(format!("{e:.2e}"));
    }
    let pct = |a: usize| a as f64 * 100.0 / toks.len() as f64;
    println!(
        "{key}: teacher-forced top-1 agreement {agree}/{} = {:.2}% (llama.cpp {llama_cpp} = {:.2}%); last-logit relative L2 on 5 prompts [{}], worst {worst:.3e}",
        toks.len(),
        pct(agree),
        pct(llama_cpp),
        errs.join(", ")
    );
    assert!(toks.len() >= 256);
    if act16 {
        assert!(worst <= 5e-2, "{key}: relative L2 {worst:.3e} > 5e-2");
        assert!(pct(agree) >= 97.0, "{key}: top-1 agreement {:.2}% < 97%", pct(agree));
    } else {
        assert!(worst <= 1e-1, "{key}: relative L2 {worst:.3e} > 1e-1");
        assert!(pct(agree) >= 95.0, "{key}: top-1 agreement {:.2}% < 95%", pct(agree));
        assert!(agree >= llama_cpp, "{key}: top-1 agreement {agree} is below llama.cpp's {llama_cpp}");
    }
    Score { key, agree, llama_cpp, positions: toks.len() }
}

#[test]
fn agrees_with_transformers() {
    let act16 = rocmforge::backend::cpu::simd::act16();
    println!("cpu kernels: {}", rocmforge::backend::cpu::kernel_name());
    let scores = [check(common::SMOLLM2, "smollm2", act16), check(common::QWEN2, "qwen2", act16), check(common::GEMMA3, "gemma3", act16)];
    let (agree, llama_cpp, n) = scores.iter().fold((0, 0, 0), |(a, l, n), s| (a + s.agree, l + s.llama_cpp, n + s.positions));
    println!(
        "overall: {agree}/{n} = {:.2}% (llama.cpp {llama_cpp}/{n} = {:.2}%); per model {:?}",
        agree as f64 * 100.0 / n as f64,
        llama_cpp as f64 * 100.0 / n as f64,
        scores.iter().map(|s| (s.key, s.agree)).collect::<Vec<_>>()
    );
    if !act16 {
        assert!(agree * 100 >= 97 * n, "overall top-1 agreement {agree}/{n} is below 97%");
        assert!(agree >= llama_cpp, "overall top-1 agreement {agree}/{n} is below llama.cpp's {llama_cpp}/{n}");
    }
}

/// Qwen2.5-Coder-1.5B, the same checks (`make models-extra`, then `make
/// test-extra`): not in CI, whose time the 1.1 GB model would cost.
#[test]
#[ignore = "needs models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf: make models-extra, then make test-extra"]
fn qwen2_1_5b_agrees_with_transformers() {
    let act16 = rocmforge::backend::cpu::simd::act16();
    check(common::QWEN2_1_5B, "qwen2-1.5b", act16);
}
