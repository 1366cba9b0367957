//! Shape twins: real metadata, random weights of the same shapes and types.
//! The engine must load them, stay numerically sane, and agree with the
//! reference pass on them (the GPU backend will be checked the same way).

mod common;

use rocmforge::gguf::GgufFile;
use rocmforge::model::reference::Reference;
use rocmforge::model::{LoadOptions, Model};
use rocmforge::backend::Logits;
use rocmforge::engine::Session;
use rocmforge::quant::{self, GgmlType};
use rocmforge::twin::{random_tensor, write_twin};

#[test]
fn random_tensors_have_the_requested_spread() {
    use GgmlType::*;
    for ty in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Iq4Nl, Iq4Xs, Mxfp4] {
        let n = 256 * 64;
        let data = random_tensor(ty, n, 0.05, 7).unwrap();
        let v = quant::dequantize_vec(ty, &data).unwrap();
        let mean = v.iter().sum::<f32>() / n as f32;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n as f32).sqrt();
        // MXFP4's scale is a power of two: within a factor √2 either way
        let tol = if ty == Mxfp4 { 0.45 } else { 0.3 };
        assert!((sd / 0.05 - 1.0).abs() < tol, "{ty}: std {sd} for target 0.05");
        assert!(v.iter().all(|x| x.is_finite()), "{ty}");
    }
}

fn check_twin(src: &str, force: Option<GgmlType>, tag: &str) {
    let f = GgufFile::open(common::model(src)).unwrap();
    let bytes = write_twin(&f, force, 42).unwrap();
    let path = std::env::temp_dir().join(format!("rocmforge-twin-{tag}-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let model = Model::load(&path, LoadOptions { n_threads: 2, ..Default::default() }).unwrap();
    std::fs::remove_file(&path).ok();
    let real = Model::load(common::model(src), LoadOptions { n_threads: 1, ..Default::default() }).unwrap();
    assert_eq!((model.cfg.n_layer, model.cfg.n_embd, model.cfg.n_vocab), (real.cfg.n_layer, real.cfg.n_embd, real.cfg.n_vocab));
    for (a, b) in model.file.tensors().iter().zip(real.file.tensors()) {
        assert_eq!((&a.name, &a.dims), (&b.name, &b.dims));
        assert_eq!(a.ty, if a.dims.len() == 2 { force.unwrap_or(b.ty) } else { GgmlType::F32 }, "{}", a.name);
    }
    let toks = model.tokenizer.encode("The lighthouse at the end of the harbour", true, false);
    let mut s = Session::new(model.clone(), 64).unwrap();
    let fast = s.eval(&toks, Logits::All).unwrap();
    let mut r = rounding_reference(&model, 64);
    let nv = model.cfg.n_vocab;
    let mut worst = 0f64;
    for (p, &t) in toks.iter().enumerate() {
        let row = &fast[p * nv..(p + 1) * nv];
        assert!(row.iter().all(|x| x.is_finite()), "{tag}: non-finite logits");
        worst = worst.max(common::rel_l2(row, r.forward(t, p).unwrap()));
    }
    let sd = (fast.iter().map(|x| x * x).sum::<f32>() / fast.len() as f32).sqrt();
    println!("{tag}: twin of {src}: fast vs reference worst relative L2 {worst:.2e}, logit rms {sd:.2}");
    assert!(worst < bound(), "{tag}: {worst:e}");
    assert!(sd > 1e-3 && sd < 1e3, "{tag}: logits out of range (rms {sd})");
}

/// The reference with the engine's activation rounding (8 bits, or 16 with
/// FORGE_ACT16). Only f32 summation order then separates the two, plus, at
/// 8 bits, the activations that order rounds the other way: measured
/// 1.8e-6 for the SmolLM2 twin but 5e-3 for the Gemma-3 twin, whose inputs
/// (a quantized embedding times sqrt(640), norms) sit on rounding ties that
/// the engine's and the reference's float order break differently; the
/// pure scalar kernels are as far (5.4e-3), so it is not a SIMD kernel.
fn rounding_reference(model: &Model, n_ctx: usize) -> Reference<'_> {
    Reference::with_activation_rounding(model, n_ctx, if act16() { 16 } else { 8 }).unwrap()
}

fn act16() -> bool {
    rocmforge::backend::cpu::simd::act16()
}

/// The bound on fast vs rounding reference (see `rounding_reference`).
fn bound() -> f64 {
    if act16() {
        2e-3
    } else {
        1e-2
    }
}

#[test]
fn smollm2_twin_runs_and_matches_reference() {
    check_twin(common::SMOLLM2, None, "smollm2");
}

#[test]
fn gemma3_twin_runs_and_matches_reference() {
    check_twin(common::GEMMA3, None, "gemma3");
}

/// F16 matrices go through the engine's float kernels.
#[test]
fn smollm2_f16_twin_runs_and_matches_reference() {
    check_twin(common::SMOLLM2, Some(GgmlType::F16), "smollm2-f16");
}

/// A small llama-shaped model with a real tokenizer loads and runs, with the
/// fast path matching the reference (the 7B benchmark twin is the same code
/// at 4096 × 32 layers).
#[test]
fn llama_shaped_twin_runs() {
    use rocmforge::twin::{write_llama_shaped, LlamaShape};
    let f = GgufFile::open(common::model(common::SMOLLM2)).unwrap();
    let shape = LlamaShape { n_embd: 256, n_layer: 2, n_head: 4, n_head_kv: 4, n_ff: 512, n_ctx: 512 };
    let bytes = write_llama_shaped(&f, &shape, GgmlType::Q4_0, 1).unwrap();
    let path = std::env::temp_dir().join(format!("rocmforge-llama-twin-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let model = Model::load(&path, LoadOptions { n_threads: 2, ..Default::default() }).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!((model.cfg.n_embd, model.cfg.n_layer, model.cfg.n_vocab, model.cfg.tied_embeddings), (256, 2, 49152, false));
    let toks = model.tokenizer.encode("Hello world", false, false);
    let mut s = Session::new(model.clone(), 32).unwrap();
    let fast = s.eval(&toks, Logits::Last).unwrap();
    let mut r = rounding_reference(&model, 32);
    let mut last = Vec::new();
    for (p, &t) in toks.iter().enumerate() {
        last = r.forward(t, p).unwrap().to_vec();
    }
    let e = common::rel_l2(&fast, &last);
    println!("llama-shaped Q4_0 twin: fast vs reference relative L2 {e:.2e}");
    assert!(e < bound(), "{e:e}");
}
