//! Dequantization is bit-exact with gguf-py (the ggml project's numpy
//! reference): on committed fixture blocks for every supported type, and on
//! every tensor of the three real models. Fixtures: scripts/gen_quant_fixtures.py.

mod common;

use rocmforge::gguf::GgufFile;
use rocmforge::quant::{self, GgmlType};
use sha2::{Digest, Sha256};

fn assert_bits_equal(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}: element {i} (block {}): got {g:e}, gguf-py {w:e}", i / 32);
    }
}

#[test]
fn dequantize_matches_gguf_py_bit_exact() {
    for (name, ty) in common::FIXTURE_TYPES {
        let q = std::fs::read(common::fixture(&format!("quant/{name}.q"))).unwrap();
        let want = common::read_f32(&common::fixture(&format!("quant/{name}.f32")));
        assert!(!want.is_empty());
        let got = quant::dequantize_vec(ty, &q).unwrap();
        assert_bits_equal(name, &got, &want);
        println!("{name}: {} values bit-exact", got.len());
    }
}

#[test]
fn f32_passthrough_is_identity() {
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.5) * 0.37).collect();
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_bits_equal("F32", &quant::dequantize_vec(GgmlType::F32, &bytes).unwrap(), &x);
}

#[test]
fn q8_0_activation_quantization_matches_gguf_py() {
    let x = common::read_f32(&common::fixture("quant/Q8_0_act.in"));
    let want = std::fs::read(common::fixture("quant/Q8_0_act.q")).unwrap();
    let got = quant::quantize_acts(quant::ActFormat::Q8_0, &x).unwrap();
    assert_eq!(got.len(), want.len());
    for (b, (g, w)) in got.chunks(34).zip(want.chunks(34)).enumerate() {
        assert_eq!(g, w, "Q8_0 block {b} differs from gguf-py");
    }
}

#[test]
fn unsupported_types_are_refused_not_misread() {
    let err = quant::dequantize_vec(GgmlType::Iq2Xxs, &[0u8; 66]).unwrap_err();
    assert!(err.to_string().contains("IQ2_XXS"), "{err}");
    // wrong sizes are errors, not panics
    assert!(quant::dequantize(GgmlType::Q4_0, &[0u8; 17], &mut [0f32; 32]).is_err());
    assert!(quant::dequantize(GgmlType::Q4_0, &[0u8; 18], &mut [0f32; 31]).is_err());
}

/// Every tensor of every real model, dequantized in full, hashes to the same
/// sha256 as gguf-py's dequantization of it.
#[test]
fn real_model_tensors_match_gguf_py() {
    let table = std::fs::read_to_string(common::fixture("quant/model_tensors.tsv")).unwrap();
    let mut checked = 0usize;
    let mut elems = 0u64;
    for model in common::ALL_MODELS {
        let f = GgufFile::open(common::model(model)).unwrap();
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with(&format!("{model}\t"))).collect();
        assert_eq!(rows.len(), f.tensors().len(), "{model}: fixture lists every tensor");
        for row in rows {
            let c: Vec<&str> = row.split('\t').collect();
            let t = f.tensor(c[1]).unwrap_or_else(|| panic!("{model}: tensor {} missing", c[1]));
            assert_eq!(t.ty.name(), c[2], "{model}:{}", c[1]);
            let y = quant::dequantize_vec(t.ty, f.tensor_data(t)).unwrap();
            assert_eq!(y.len().to_string(), c[3]);
            let mut h = Sha256::new();
            for v in &y {
                h.update(v.to_le_bytes());
            }
            let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, c[4], "{model}:{} ({}) differs from gguf-py", c[1], c[2]);
            checked += 1;
            elems += y.len() as u64;
        }
    }
    println!("real-model tensors bit-exact with gguf-py: {checked} tensors, {elems} values");
}
