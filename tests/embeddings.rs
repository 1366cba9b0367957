//! nomic-embed-text-v1.5 (`nomic-bert`, F16) against HF transformers' own
//! NomicBertModel on the same GGUF's weights, dequantized
//! (scripts/gen_embed_hf.py: transformers 5.x, float32), and against an
//! independent PyTorch implementation of the published architecture in
//! float64 (scripts/gen_embed_fixtures.py, written before transformers had
//! a native NomicBert; the two agree to a cosine of 1.000000000):
//! - token ids: our WordPiece tokenizer against HF's BertTokenizer;
//! - 20 sentences, mean pooling + L2 normalisation (the model's own): cosine
//!   similarity ≥ 0.999 each (min printed), against HF's, against the
//!   float64 reference and against llama.cpp's own embeddings of the same
//!   sentences (scripts/gen_embed_llama_cpp.py: the sdist's libllama
//!   through its llama-cpp-python, which also gives the same token ids);
//! - the unpooled first token (CLS pooling, not normalised): cosine ≥ 0.999
//!   against HF's and the float64 reference's;
//! - retrieval: for 5 queries ("search_query: ") the right one of 8
//!   passages ("search_document: ") ranks first;
//! - the API's edges: pooling kinds agree with each other, too-long and
//!   empty inputs and out-of-vocab tokens are errors, the engine refuses an
//!   encoder with a message that says why.

mod common;

use std::sync::Arc;

use rocmforge::engine::Session;
use rocmforge::model::{LoadOptions, Model, Pooling};
use serde_json::Value;

const NOMIC: &str = "nomic-embed-text-v1.5.f16.gguf";

fn load() -> Arc<Model> {
    Model::load(common::model(NOMIC), LoadOptions::default()).unwrap()
}

fn fixtures() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture("embed/sentences.json")).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn embed_text(m: &Arc<Model>, text: &str) -> Vec<f32> {
    let ids = m.tokenizer.encode(text, true, false);
    m.embed(&ids, None, true).unwrap()
}

#[test]
fn nomic_matches_reference() {
    let m = load();
    assert!(m.is_encoder());
    assert_eq!(m.default_pooling(), Pooling::Mean);
    let fx = fixtures();
    let d = fx["n_embd"].as_u64().unwrap() as usize;
    assert_eq!(d, m.cfg.n_embd);
    let mean = common::read_f32(&common::fixture("embed/mean.f32"));
    let cls = common::read_f32(&common::fixture("embed/cls.f32"));
    // another reference: llama.cpp's own (scripts/gen_embed_llama_cpp.py)
    let llama_cpp = common::read_f32(&common::fixture("embed/llama_cpp_mean.f32"));
    // and HF transformers' NomicBertModel (scripts/gen_embed_hf.py)
    let (hf_mean, hf_cls) = (common::read_f32(&common::fixture("embed/hf_mean.f32")), common::read_f32(&common::fixture("embed/hf_cls.f32")));
    assert_eq!((hf_mean.len(), hf_cls.len()), (20 * d, 20 * d));
    let sentences = fx["sentences"].as_array().unwrap();
    assert_eq!(sentences.len(), 20);
    let (mut min_mean, mut min_cls, mut min_llama, mut min_hf, mut min_hf_cls) = (1f64, 1f64, 1f64, 1f64, 1f64);
    for (i, s) in sentences.iter().enumerate() {
        let s = s.as_str().unwrap();
        let ids = m.tokenizer.encode(s, true, false);
        let want_ids: Vec<u32> = fx["ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want_ids, "token ids of {s:?}");
        let e = m.embed(&ids, Some(Pooling::Mean), true).unwrap();
        assert_eq!(e.len(), d);
        let norm: f64 = e.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised length {norm}");
        let c = cosine(&e, &mean[i * d..(i + 1) * d]);
        min_mean = min_mean.min(c);
        assert!(c >= 0.999, "sentence {i} {s:?}: cosine {c} with the reference");
        let c = cosine(&e, &hf_mean[i * d..(i + 1) * d]);
        min_hf = min_hf.min(c);
        assert!(c >= 0.999, "sentence {i} {s:?}: cosine {c} with HF transformers'");
        let c = cosine(&e, &llama_cpp[i * d..(i + 1) * d]);
        min_llama = min_llama.min(c);
        assert!(c >= 0.999, "sentence {i} {s:?}: cosine {c} with llama.cpp's");
        let h = m.embed(&ids, Some(Pooling::Cls), false).unwrap();
        let c = cosine(&h, &cls[i * d..(i + 1) * d]);
        min_cls = min_cls.min(c);
        assert!(c >= 0.999, "sentence {i} {s:?}: first-token cosine {c} with the reference");
        let c = cosine(&h, &hf_cls[i * d..(i + 1) * d]);
        min_hf_cls = min_hf_cls.min(c);
        assert!(c >= 0.999, "sentence {i} {s:?}: first-token cosine {c} with HF transformers'");
    }
    // far tighter than the 0.999: the same f32 arithmetic on the
    // same weights, so a slipped constant (an eps, a RoPE base) shows
    assert!(1.0 - min_hf <= 1e-6 && 1.0 - min_hf_cls <= 1e-6, "against HF transformers: 1 - cos {:.1e} (mean) and {:.1e} (first token)", 1.0 - min_hf, 1.0 - min_hf_cls);
    println!(
        "nomic-embed-text-v1.5: min cosine over 20 sentences: against HF transformers' mean+L2 {min_hf:.7} (1 - cos = {:.1e}), first token {min_hf_cls:.7} (1 - cos = {:.1e}); against the float64 reference mean+L2 {min_mean:.7} (1 - cos = {:.1e}), first token {min_cls:.7} (1 - cos = {:.1e}); against llama.cpp's mean+L2 {min_llama:.7} (1 - cos = {:.1e})",
        1.0 - min_hf,
        1.0 - min_hf_cls,
        1.0 - min_mean,
        1.0 - min_cls,
        1.0 - min_llama
    );
}

#[test]
fn nomic_retrieval_ranks_the_right_passage_first() {
    let m = load();
    let fx = fixtures();
    let strs = |k: &str| -> Vec<String> { fx[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect() };
    let (queries, passages) = (strs("queries"), strs("passages"));
    let answers: Vec<usize> = fx["answers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let p: Vec<Vec<f32>> = passages.iter().map(|t| embed_text(&m, t)).collect();
    for (qi, q) in queries.iter().enumerate() {
        let e = embed_text(&m, q);
        let scores: Vec<f64> = p.iter().map(|pe| cosine(&e, pe)).collect();
        let best = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
        println!("{q:?} -> {:?} ({:.4})", passages[best], scores[best]);
        assert_eq!(best, answers[qi], "query {q:?}: scores {scores:?}");
    }
}

#[test]
fn nomic_pooling_kinds_and_errors() {
    let m = load();
    let d = m.cfg.n_embd;
    let ids = m.tokenizer.encode("search_query: pooling kinds", true, false);
    let n = ids.len();
    let all = m.embed(&ids, Some(Pooling::None), false).unwrap();
    assert_eq!(all.len(), n * d);
    let cls = m.embed(&ids, Some(Pooling::Cls), false).unwrap();
    let last = m.embed(&ids, Some(Pooling::Last), false).unwrap();
    let mean = m.embed(&ids, Some(Pooling::Mean), false).unwrap();
    assert_eq!(&cls[..], &all[..d]);
    assert_eq!(&last[..], &all[(n - 1) * d..]);
    for j in (0..d).step_by(97) {
        let want = (0..n).map(|t| all[t * d + j] as f64).sum::<f64>() / n as f64;
        assert!((mean[j] as f64 - want).abs() < 1e-5);
    }
    // the model's default is its pooling_type (mean), and normalising every
    // row of Pooling::None gives unit rows
    assert_eq!(m.embed(&ids, None, false).unwrap(), mean);
    let rows = m.embed(&ids, Some(Pooling::None), true).unwrap();
    for r in rows.chunks(d) {
        let norm: f64 = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    // the same tokens give the same vector (no state between calls)
    assert_eq!(m.embed(&ids, None, true).unwrap(), m.embed(&ids, None, true).unwrap());

    let err = |r: rocmforge::Result<Vec<f32>>| r.unwrap_err().to_string();
    assert!(err(m.embed(&[], None, true)).contains("no tokens"));
    assert!(err(m.embed(&[m.cfg.n_vocab as u32], None, true)).contains("outside the vocab"));
    let long = vec![101u32; m.cfg.n_ctx_train + 1];
    let e = err(m.embed(&long, None, true));
    assert!(e.contains("2049 tokens") && e.contains("2048"), "{e}");
    // the whole context is fine
    rocmforge::model::encoder::check_input(&m.cfg, &vec![1996u32; m.cfg.n_ctx_train]).unwrap();

    let e = Session::new(m.clone(), 0).err().expect("a session on an encoder").to_string();
    assert!(e.contains("nomic-bert") && e.contains("embedding model"), "{e}");
}

#[test]
fn unknown_architecture_names_the_supported_ones() {
    // a decoder's GGUF with its architecture renamed: the load error names
    // it and lists every supported one, nomic-bert included
    let mut b = std::fs::read(common::model(NOMIC)).unwrap();
    let at = b.windows(10).position(|w| w == b"nomic-bert").unwrap();
    b[at..at + 10].copy_from_slice(b"nomic-bort");
    let f = rocmforge::gguf::GgufFile::from_bytes(b).unwrap();
    let e = Model::from_gguf(f, LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("'nomic-bort'") && e.contains("llama, qwen2, qwen3, phi3, gemma3, nomic-bert"), "{e}");
}

/// The C API on an encoder: forge_load gives a context without a
/// sequence, forge_embed matches Model::embed, the decoder calls are
/// UNSUPPORTED with a message, and misuse is an error status.
#[test]
fn nomic_through_the_c_api() {
    use rocmforge::ffi::forge_status::*;
    use rocmforge::ffi::*;
    use std::ptr::{null, null_mut};
    let path = std::ffi::CString::new(common::model(NOMIC).to_str().unwrap()).unwrap();
    let mut ctx = null_mut();
    let mut p = forge_load_default_params();
    p.backend = forge_backend::FORGE_BACKEND_CUDA as i32; // an encoder runs on the CPU whatever is asked
    let st = unsafe { forge_load(path.as_ptr(), &p, &mut ctx) };
    if st != FORGE_OK {
        // no CUDA in this build or machine: the CPU
        p.backend = forge_backend::FORGE_BACKEND_CPU as i32;
        assert_eq!(unsafe { forge_load(path.as_ptr(), &p, &mut ctx) }, FORGE_OK, "{}", common::last_error());
    }
    unsafe {
        assert!(forge_is_encoder(ctx));
        assert_eq!(forge_pooling_type(ctx), forge_pooling::FORGE_POOLING_MEAN as i32);
        let text = "search_query: What is the capital of France?";
        let mut toks = vec![0i32; 64];
        let mut n = 0usize;
        assert_eq!(forge_tokenize(ctx, text.as_ptr().cast(), text.len(), true, false, toks.as_mut_ptr(), 64, &mut n), FORGE_OK);
        toks.truncate(n);
        assert_eq!(toks[0], 101, "[CLS] first");
        assert_eq!(*toks.last().unwrap(), 102, "[SEP] last");
        let mut e = vec![0f32; 768];
        let mut ne = 0usize;
        let def = forge_pooling::FORGE_POOLING_DEFAULT as i32;
        assert_eq!(forge_embed(ctx, toks.as_ptr(), toks.len(), def, true, e.as_mut_ptr(), 768, &mut ne), FORGE_OK, "{}", common::last_error());
        assert_eq!(ne, 768);
        let m = load();
        let ids: Vec<u32> = toks.iter().map(|&t| t as u32).collect();
        assert_eq!(e, m.embed(&ids, None, true).unwrap());
        // decoder calls: UNSUPPORTED, saying why
        assert_eq!(forge_eval(ctx, toks.as_ptr(), toks.len(), null_mut(), 0), FORGE_ERR_UNSUPPORTED);
        assert!(common::last_error().contains("embedding model"), "{}", common::last_error());
        assert_eq!(forge_kv_reset(ctx, 0), FORGE_ERR_UNSUPPORTED);
        let mut eng = null_mut();
        assert_eq!(forge_engine_new(ctx, null(), &mut eng), FORGE_ERR_UNSUPPORTED);
        assert!(eng.is_null());
        // too long: INVALID_ARGUMENT, nothing written
        let long = vec![1996i32; 2049];
        ne = 7;
        assert_eq!(forge_embed(ctx, long.as_ptr(), long.len(), def, true, e.as_mut_ptr(), 768, &mut ne), FORGE_ERR_INVALID_ARGUMENT);
        assert!(common::last_error().contains("2048"), "{}", common::last_error());
        assert_eq!(ne, 7);
        let mut info = std::mem::zeroed::<forge_model_info>();
        assert_eq!(forge_get_model_info(ctx, &mut info), FORGE_OK);
        assert_eq!((info.n_embd, info.n_ctx, info.n_layer), (768, 2048, 12));
        let mut clone = null_mut();
        assert_eq!(forge_ctx_clone_session(ctx, &mut clone), FORGE_OK);
        assert!(forge_is_encoder(clone));
        forge_free(clone);
        forge_free(ctx);
    }
}
