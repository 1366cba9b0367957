//! GGUF reader: every value type and version, typed accessors on the real
//! models, and a typed error (field + byte offset) for each kind of corruption.

mod common;

use rocmforge::gguf::writer::GgufWriter;
use rocmforge::gguf::{parse_header, Array, GgufErrorKind as K, GgufFile, Value};
use rocmforge::quant::GgmlType;

fn all_types_file(version: u32, alignment: u64) -> Vec<u8> {
    let mut w = GgufWriter { version, alignment, ..Default::default() };
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("general.alignment", Value::U32(alignment as u32))
        .kv("t.u8", Value::U8(200))
        .kv("t.i8", Value::I8(-100))
        .kv("t.u16", Value::U16(60000))
        .kv("t.i16", Value::I16(-30000))
        .kv("t.u32", Value::U32(4_000_000_000))
        .kv("t.i32", Value::I32(-2_000_000_000))
        .kv("t.f32", Value::F32(1.5))
        .kv("t.bool", Value::Bool(true))
        .kv("t.str", Value::String("héllo ✓".into()))
        .kv("t.u64", Value::U64(u64::MAX))
        .kv("t.i64", Value::I64(i64::MIN))
        .kv("t.f64", Value::F64(-2.25))
        .kv("t.arr_f32", Value::Array(Array::F32(vec![1.0, 2.0])))
        .kv("t.arr_str", Value::Array(Array::String(vec!["a".into(), "".into(), "ccc".into()])))
        .kv(
            "t.nested",
            Value::Array(Array::Array(vec![
                Array::I64(vec![1, -2]),
                Array::Array(vec![Array::Bool(vec![true, false]), Array::U8(vec![])]),
            ])),
        )
        .kv("llama.block_count", Value::U32(2))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("tokenizer.chat_template", Value::String("{{ x }}".into()));
    let a: Vec<u8> = (0..64u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.tensor("a", &[16, 4], GgmlType::F32, a);
    w.tensor("b", &[32], GgmlType::Q8_0, vec![7u8; 34]);
    w.to_bytes()
}

#[test]
fn reads_every_value_type_in_v2_and_v3() {
    for version in [2u32, 3] {
        for alignment in [32u64, 64, 1] {
            let f = GgufFile::from_bytes(all_types_file(version, alignment)).unwrap();
            assert_eq!(f.header.version, version);
            assert_eq!(f.header.alignment, alignment);
            assert_eq!(f.header.data_offset % alignment, 0);
            assert_eq!(f.get("t.u8"), Some(&Value::U8(200)));
            assert_eq!(f.get("t.i8"), Some(&Value::I8(-100)));
            assert_eq!(f.get("t.u16"), Some(&Value::U16(60000)));
            assert_eq!(f.get("t.i16"), Some(&Value::I16(-30000)));
            assert_eq!(f.get_u64("t.u32").unwrap(), Some(4_000_000_000));
            assert_eq!(f.get("t.i32"), Some(&Value::I32(-2_000_000_000)));
            assert_eq!(f.get_f32("t.f32").unwrap(), Some(1.5));
            assert_eq!(f.get_bool("t.bool").unwrap(), Some(true));
            assert_eq!(f.get_str("t.str").unwrap(), Some("héllo ✓"));
            assert_eq!(f.get_u64("t.u64").unwrap(), Some(u64::MAX));
            assert_eq!(f.get("t.i64"), Some(&Value::I64(i64::MIN)));
            assert_eq!(f.get("t.f64"), Some(&Value::F64(-2.25)));
            assert_eq!(f.get_array("t.arr_str").unwrap().unwrap(), &Array::String(vec!["a".into(), "".into(), "ccc".into()]));
            match f.get_array("t.nested").unwrap().unwrap() {
                Array::Array(v) => {
                    assert_eq!(v[0], Array::I64(vec![1, -2]));
                    assert_eq!(v[1], Array::Array(vec![Array::Bool(vec![true, false]), Array::U8(vec![])]));
                }
                other => panic!("nested array read as {other:?}"),
            }
            // typed accessors
            assert_eq!(f.architecture().unwrap(), "llama");
            assert_eq!(f.hparam_u64("block_count").unwrap(), Some(2));
            assert_eq!(f.hparam_f32("rope.freq_base").unwrap(), Some(10000.0));
            assert_eq!(f.chat_template().unwrap(), Some("{{ x }}"));
            assert!(f.get_u64("t.str").is_err(), "wrong type is an error, not a default");
            assert!(f.get_u64("t.i64").is_err(), "negative is not u64");
            // tensors
            let a = f.tensor("a").unwrap();
            assert_eq!((a.dims.clone(), a.ty, a.n_bytes), (vec![16, 4], GgmlType::F32, 256));
            assert_eq!(a.offset % alignment, 0);
            let d = f.tensor_data(a);
            assert_eq!(f32::from_le_bytes(d[4 * 63..].try_into().unwrap()), 63.0);
            let b = f.tensor("b").unwrap();
            assert_eq!(f.tensor_data(b), &[7u8; 34][..]);
        }
    }
}

#[test]
fn tensor_data_is_borrowed_from_the_mapping() {
    let f = GgufFile::open(common::model(common::SMOLLM2)).unwrap();
    let t = &f.tensors()[0];
    let base = f.as_bytes().as_ptr() as usize;
    let data = f.tensor_data(t).as_ptr() as usize;
    assert_eq!(data - base, t.offset as usize, "a view into the mmap, not a copy");
}

#[test]
fn real_models_typed_accessors() {
    let cases = [
        (common::SMOLLM2, "llama", 30, 576, "gpt2", Some("smollm"), 49152, true),
        (common::QWEN2, "qwen2", 24, 896, "gpt2", Some("qwen2"), 151936, true),
        (common::GEMMA3, "gemma3", 18, 640, "llama", None, 262144, false),
    ];
    for (m, arch, layers, hidden, tok_model, pre, vocab, has_template) in cases {
        let f = GgufFile::open(common::model(m)).unwrap();
        assert_eq!(f.header.version, 3);
        assert_eq!(f.architecture().unwrap(), arch, "{m}");
        assert_eq!(f.hparam_u64("block_count").unwrap(), Some(layers), "{m}");
        assert_eq!(f.hparam_u64("embedding_length").unwrap(), Some(hidden), "{m}");
        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), Some(tok_model), "{m}");
        if let Some(pre) = pre {
            assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), Some(pre), "{m}");
        }
        assert_eq!(f.tokenizer_tokens().unwrap().unwrap().len(), vocab, "{m}");
        assert_eq!(f.chat_template().unwrap().is_some(), has_template, "{m} chat template");
        let emb = f.tensor("token_embd.weight").unwrap();
        assert_eq!(emb.dims, vec![hidden, vocab as u64], "{m}");
    }
}

/// A small valid file and the byte offsets of its fields, for targeted corruption.
fn small() -> Vec<u8> {
    all_types_file(3, 32)
}

fn kind_of(bytes: &[u8]) -> K {
    parse_header(bytes, bytes.len() as u64).unwrap_err().kind
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

/// Offset just after tensor `name`'s name string in the tensor-info table.
fn tensor_info(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    needle.extend_from_slice(&[1, 0, 0, 0]); // n_dims of "b" = 1 / of "a" = 2 (checked by caller)
    let pat = &needle[..needle.len() - 4];
    // the last occurrence is the tensor info (names can also occur in metadata)
    let mut pos = None;
    for i in 0..bytes.len() - pat.len() {
        if &bytes[i..i + pat.len()] == pat {
            pos = Some(i + pat.len());
        }
    }
    pos.unwrap()
}

#[test]
fn corruptions_give_typed_errors_with_field_and_offset() {
    let good = small();
    // magic
    let mut b = good.clone();
    b[0] = b'X';
    let e = parse_header(&b, b.len() as u64).unwrap_err();
    assert!(matches!(e.kind, K::BadMagic { .. }) && e.offset == 0 && e.field == "magic");
    // version
    let mut b = good.clone();
    b[4] = 1;
    assert_eq!(kind_of(&b), K::UnsupportedVersion(1));
    // absurd tensor count / kv count
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(kind_of(&b), K::CountTooLarge { .. }));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(kind_of(&b), K::CountTooLarge { .. }));
    // string length past the end
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let e = parse_header(&b, b.len() as u64).unwrap_err();
    assert!(matches!(e.kind, K::CountTooLarge { .. }), "{e}");
    assert_eq!((e.offset, e.field.as_str()), (24, "metadata[0].key"));
    // unknown value type
    let mut b = good.clone();
    let p = 24 + 8 + "general.architecture".len();
    b[p..p + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = parse_header(&b, b.len() as u64).unwrap_err();
    assert_eq!((e.kind.clone(), e.offset), (K::UnknownValueType(99), p as u64));
    assert!(e.to_string().contains(&format!("byte {p}")), "message names the offset: {e}");
    // truncation anywhere in the header
    // (either the up-front count bound or the read itself notices)
    for cut in [5, 100, 300] {
        let t = parse_header(&good[..cut], good.len() as u64).unwrap_err();
        assert!(matches!(t.kind, K::Truncated { .. } | K::CountTooLarge { .. }), "{t}");
    }
    let cut = tensor_info(&good, "b") + 2; // inside tensor b's n_dims
    let t = parse_header(&good[..cut], good.len() as u64).unwrap_err();
    assert_eq!((t.kind.clone(), t.field.as_str()), (K::Truncated { need: 4, have: 2 }, "tensor['b'].n_dims"), "{t}");
    // invalid utf-8 in a string
    let mut b = good.clone();
    let p = find(&b, "héllo".as_bytes());
    b[p + 1] = 0xFF;
    assert_eq!(kind_of(&b), K::InvalidUtf8);
    // duplicate key
    let mut w = GgufWriter::default();
    w.kv("k", Value::U8(1)).kv("k", Value::U8(2));
    assert_eq!(kind_of(&w.to_bytes()), K::DuplicateKey("k".into()));
    // bad alignment
    let mut w = GgufWriter::default();
    w.kv("general.alignment", Value::U32(48));
    assert_eq!(kind_of(&w.to_bytes()), K::BadAlignment(48));
    // tensor-level corruptions, on tensor "b" (1 dim, Q8_0, 34 bytes)
    let ti = tensor_info(&good, "b"); // -> n_dims
    let mut b = good.clone();
    b[ti..ti + 4].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(kind_of(&b), K::TooManyDims(5));
    let mut b = good.clone();
    b[ti + 4..ti + 12].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(kind_of(&b), K::ZeroDim);
    let mut b = good.clone();
    b[ti + 4..ti + 12].copy_from_slice(&33u64.to_le_bytes());
    assert_eq!(kind_of(&b), K::BlockMisaligned { ne0: 33, block: 32 });
    let mut b = good.clone();
    b[ti + 4..ti + 12].copy_from_slice(&(u64::MAX / 32 * 32).to_le_bytes());
    assert_eq!(kind_of(&b), K::SizeOverflow);
    let mut b = good.clone();
    b[ti + 12..ti + 16].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(kind_of(&b), K::UnknownTensorType(4));
    let mut b = good.clone();
    b[ti + 16..ti + 24].copy_from_slice(&0u64.to_le_bytes()); // same offset as "a"
    assert_eq!(kind_of(&b), K::Overlap { other: "a".into() });
    let mut b = good.clone();
    b[ti + 16..ti + 24].copy_from_slice(&(256u64 + 8).to_le_bytes());
    assert!(matches!(kind_of(&b), K::OffsetMisaligned { .. }));
    let mut b = good.clone();
    b[ti + 16..ti + 24].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(matches!(kind_of(&b), K::OutOfBounds { .. }));
    let mut b = good.clone();
    b[ti + 16..ti + 24].copy_from_slice(&(u64::MAX / 64 * 32).to_le_bytes());
    assert!(matches!(kind_of(&b), K::SizeOverflow | K::OutOfBounds { .. }));
    // data cut short
    let e = parse_header(&good, good.len() as u64 - 1).unwrap_err();
    assert!(matches!(e.kind, K::OutOfBounds { .. }) && e.field == "tensor['b'].offset", "{e}");
    // nesting bomb
    let mut nested = Array::U8(vec![]);
    for _ in 0..20 {
        nested = Array::Array(vec![nested]);
    }
    let mut w = GgufWriter::default();
    w.kv("deep", Value::Array(nested));
    assert_eq!(kind_of(&w.to_bytes()), K::NestingTooDeep);
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}
