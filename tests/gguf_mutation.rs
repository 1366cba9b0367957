//! Deterministic mutation test of the GGUF reader on a real model header:
//! truncations, bit flips and length-field corruptions. Every case must
//! return Ok or Err; a panic (or out-of-bounds read, which would panic) fails.

mod common;

use common::Rng;

use std::panic::{catch_unwind, AssertUnwindSafe};

use rocmforge::gguf::parse_header;


/// Offsets of every u64 length/count field in a well-formed header, found by
/// walking it independently of the reader under test.
fn length_fields(h: &[u8]) -> Vec<usize> {
    fn u32_at(h: &[u8], p: usize) -> u32 {
        u32::from_le_bytes(h[p..p + 4].try_into().unwrap())
    }
    fn u64_at(h: &[u8], p: usize) -> u64 {
        u64::from_le_bytes(h[p..p + 8].try_into().unwrap())
    }
    fn skip_value(h: &[u8], p: &mut usize, ty: u32, out: &mut Vec<usize>) {
        match ty {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4 | 5 | 6 => *p += 4,
            10 | 11 | 12 => *p += 8,
            8 => {
                out.push(*p);
                *p += 8 + u64_at(h, *p) as usize;
            }
            9 => {
                let et = u32_at(h, *p);
                out.push(*p + 4);
                let n = u64_at(h, *p + 4);
                *p += 12;
                for _ in 0..n {
                    skip_value(h, p, et, out);
                }
            }
            _ => unreachable!(),
        }
    }
    let mut out = vec![8, 16];
    let n_tensors = u64_at(h, 8);
    let n_kv = u64_at(h, 16);
    let mut p = 24;
    for _ in 0..n_kv {
        skip_value(h, &mut p, 8, &mut out);
        let ty = u32_at(h, p);
        p += 4;
        skip_value(h, &mut p, ty, &mut out);
    }
    for _ in 0..n_tensors {
        skip_value(h, &mut p, 8, &mut out);
        let nd = u32_at(h, p) as usize;
        out.push(p); // n_dims (u32, corrupted as a length too)
        p += 4;
        for d in 0..nd {
            out.push(p + 8 * d);
        }
        p += 8 * nd + 4;
        out.push(p); // offset
        p += 8;
    }
    out
}

#[test]
fn twenty_thousand_mutations_never_panic() {
    let path = common::model(common::SMOLLM2);
    let bytes = std::fs::read(&path).unwrap();
    let file_len = bytes.len() as u64;
    let good = parse_header(&bytes, file_len).expect("the real model parses");
    // Mutate the header plus a little of the data section.
    let header = &bytes[..(good.data_offset as usize + 4096).min(bytes.len())];
    let fields = length_fields(header);
    assert!(fields.len() > 1000, "found {} length fields", fields.len());

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    #[derive(Clone, Copy)]
    enum Case {
        Truncate(usize),
        Flip(usize, u8),
        Length(usize, u64),
    }
    let mut cases = Vec::new();
    for _ in 0..5000 {
        cases.push(Case::Truncate(rng.below(header.len())));
    }
    // Bit flips: half anywhere, half in the structural tail (tensor infos).
    let tail = header.len() - 4096 - good.tensors.len() * 40;
    for i in 0..9000 {
        let p = if i % 2 == 0 { rng.below(header.len()) } else { tail + rng.below(header.len() - tail) };
        cases.push(Case::Flip(p, 1 << rng.below(8)));
    }
    let specials = [0u64, 1, 2, 7, 8, 255, 1 << 31, 1 << 32, 1 << 40, 1 << 62, 1 << 63, u64::MAX, u64::MAX - 7];
    for i in 0..7000 {
        let f = fields[rng.below(fields.len())];
        let orig = u64::from_le_bytes(header[f..f + 8].try_into().unwrap());
        let v = match i % 4 {
            0 => specials[rng.below(specials.len())],
            1 => orig.wrapping_add(1 + rng.below(64) as u64),
            2 => orig.wrapping_sub(1 + rng.below(64) as u64),
            _ => rng.next(),
        };
        cases.push(Case::Length(f, v));
    }

    let run = |chunk: &[Case]| -> (usize, usize, Vec<String>) {
        let (mut ok, mut err, mut panics) = (0, 0, Vec::new());
        let mut buf = header.to_vec();
        for &c in chunk {
            buf.clear();
            buf.extend_from_slice(header);
            let (data, len, what) = match c {
                Case::Truncate(n) => (&buf[..n], n as u64, format!("truncate at {n}")),
                Case::Flip(p, m) => {
                    buf[p] ^= m;
                    (&buf[..], file_len, format!("flip byte {p} mask {m:#x}"))
                }
                Case::Length(f, v) => {
                    buf[f..f + 8].copy_from_slice(&v.to_le_bytes());
                    (&buf[..], file_len, format!("length field at {f} = {v}"))
                }
            };
            match catch_unwind(AssertUnwindSafe(|| parse_header(data, len))) {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => {
                    assert!(!e.field.is_empty());
                    err += 1
                }
                Err(_) => panics.push(what),
            }
        }
        (ok, err, panics)
    };
    std::panic::set_hook(Box::new(|_| {}));
    let half = cases.len() / 2;
    let (a, b) = std::thread::scope(|s| {
        let h = s.spawn(|| run(&cases[..half]));
        let b = run(&cases[half..]);
        (h.join().unwrap(), b)
    });
    let _ = std::panic::take_hook();
    let (ok, err) = (a.0 + b.0, a.1 + b.1);
    let panics: Vec<_> = a.2.into_iter().chain(b.2).collect();
    println!(
        "GGUF mutation test on {}: {} cases (5000 truncations, 9000 bit flips, 7000 length-field corruptions over {} fields): {} Ok, {} Err, {} panics",
        common::SMOLLM2,
        cases.len(),
        fields.len(),
        ok,
        err,
        panics.len()
    );
    assert!(cases.len() >= 20_000);
    assert!(panics.is_empty(), "{} cases panicked, first: {:?}", panics.len(), &panics[..panics.len().min(5)]);
    assert!(err > cases.len() / 2, "most corruptions must be detected");
}
