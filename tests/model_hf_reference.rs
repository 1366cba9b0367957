//! The CPU engine against HF transformers (fp32, dequantized weights) on the
//! three real models. Fixtures: scripts/gen_logit_fixtures.py.
//!
//! - Teacher-forced next-token top-1 agreement ≥ 97% over 320 positions of
//!   the committed English text (the engine quantizes activations to 8 bits,
//!   so near-ties may flip; that is why agreement is measured teacher-forced).
//! - Relative L2 error of the last-position logits ≤ 5e-2 on 5 prompts.
//!   The fixture stores HF's logits as f16 (relative rounding ≤ 5e-4, far
//!   below the bound).

mod common;

use common::rel_l2;
use rocmforge::model::{LoadOptions, Logits, Model, Session};
use rocmforge::sampler::argmax;
use serde_json::Value;

fn json(p: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture(p)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}


fn check(model_file: &str, key: &str) {
    let model = Model::load(common::model(model_file), LoadOptions::default()).unwrap();
    let n_vocab = model.cfg.n_vocab;

    let t = json(&format!("logits/{key}/teacher.json"));
    let toks = ids(&t["ids"]);
    let mut s = Session::new(model.clone(), 512).unwrap();
    let all = s.eval(&toks, Logits::All).unwrap();
    let top: Vec<u32> = t["top_ids"].as_array().unwrap().iter().map(|r| r[0].as_u64().unwrap() as u32).collect();
    let agree = (0..toks.len()).filter(|&p| argmax(&all[p * n_vocab..(p + 1) * n_vocab]) == top[p]).count();
    let rate = agree as f64 / toks.len() as f64;

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
    println!(
        "{key}: teacher-forced top-1 agreement {agree}/{} = {:.2}%; last-logit relative L2 on 5 prompts [{}], worst {worst:.3e}",
        toks.len(),
        rate * 100.0,
        errs.join(", ")
    );
    assert!(worst <= 5e-2, "{key}: relative L2 {worst:.3e} > 5e-2");
    assert!(toks.len() >= 256);
    assert!(rate >= 0.97, "{key}: top-1 agreement {:.2}% < 97%", rate * 100.0);
}

#[test]
fn smollm2_agrees_with_transformers() {
    check(common::SMOLLM2, "smollm2");
}

#[test]
fn qwen2_agrees_with_transformers() {
    check(common::QWEN2, "qwen2");
}

#[test]
fn gemma3_agrees_with_transformers() {
    check(common::GEMMA3, "gemma3");
}
