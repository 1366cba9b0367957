//! nomic-embed-text-v1.5 (`nomic-bert`, F16) against an independent
//! PyTorch implementation of the published architecture in float64, on the
//! same GGUF's weights (scripts/gen_embed_fixtures.py; transformers has no
//! native NomicBert and the hub's remote code is out of reach):
//! - token ids: our WordPiece tokenizer against HF's BertTokenizer;
//! - 20 sentences, mean pooling + L2 normalisation (the model's own): cosine
//!   similarity ≥ 0.999 each (min printed);
//! - the unpooled first token (CLS pooling, not normalised): cosine ≥ 0.999;
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
    let sentences = fx["sentences"].as_array().unwrap();
    assert_eq!(sentences.len(), 20);
    let (mut min_mean, mut min_cls) = (1f64, 1f64);
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
        let h = m.embed(&ids, Some(Pooling::Cls), false).unwrap();
        let c = cosine(&h, &cls[i * d..(i + 1) * d]);
        min_cls = min_cls.min(c);
        assert!(c >= 0.999, "sentence {i} {s:?}: first-token cosine {c} with the reference");
    }
    println!("nomic-embed-text-v1.5: min cosine over 20 sentences: mean+L2 {min_mean:.7} (1 - cos = {:.1e}), first token {min_cls:.7} (1 - cos = {:.1e})", 1.0 - min_mean, 1.0 - min_cls);
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
    assert!(e.contains("'nomic-bort'") && e.contains("llama, qwen2, gemma3, nomic-bert"), "{e}");
}
