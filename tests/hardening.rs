//! Hardening (issue 20): no file, argument or thread pattern may crash, hang
//! or silently corrupt the library. Each test here failed on the code before
//! the fix it covers; the CI-sized fuzz runs replay the fuzz targets'
//! harnesses (`fuzz/fuzz_targets/load_path.rs`, `c_api.rs`) from a fixed seed.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use common::load_fuzz::{mutated_model, run_load_case, Src, Stage};

/// xorshift64*: a fixed-seed byte stream for the CI-sized fuzz runs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Cases of the CI-sized runs (the fuzz targets ran >= 1M each; see
/// docs/RELIABILITY.md). FORGE_FUZZ_CASES overrides.
fn cases() -> usize {
    std::env::var("FORGE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// The load path fuzz target's harness over 20k seeded inputs: every case
/// returns (no panic, no abort) within a second, and the mutations reach
/// every stage of loading, evaluation included.
#[test]
fn load_path_mutations_never_crash_or_hang() {
    let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
    let mut stages = std::collections::BTreeMap::new();
    let mut slowest = (Duration::ZERO, 0usize);
    let n = cases();
    for case in 0..n {
        let input = rng.bytes(48);
        let r = catch_unwind(AssertUnwindSafe(|| run_load_case(mutated_model(&mut Src::new(&input)))));
        let (stage, t) = r.unwrap_or_else(|_| panic!("case {case} panicked; input {input:02x?}"));
        *stages.entry(stage).or_insert(0usize) += 1;
        if t > slowest.0 {
            slowest = (t, case);
        }
    }
    println!("{n} load cases: {stages:?}; slowest {:?} (case {})", slowest.0, slowest.1);
    assert!(slowest.0 < Duration::from_secs(1), "case {} took {:?}: any input must fail within 1 s", slowest.1, slowest.0);
    for s in [Stage::Parse, Stage::Load, Stage::Ran] {
        assert!(stages.get(&s).copied().unwrap_or(0) * 50 >= n, "stage {s:?} reached by < 2% of cases: {stages:?}");
    }
}

/// The C-API fuzz target's harness over 20k seeded call sequences (see
/// tests/common/api_fuzz.rs for the promises it checks after every call).
#[test]
fn c_api_call_sequences_keep_every_promise() {
    let mut rng = Rng(0xC0FF_EE00_DEAD_BEEF);
    let n = cases();
    let mut calls = 0;
    for case in 0..n {
        let input = rng.bytes(96);
        let r = catch_unwind(AssertUnwindSafe(|| common::api_fuzz::run_api_case(&input)));
        calls += r.unwrap_or_else(|_| panic!("case {case} failed; input {input:02x?}"));
    }
    println!("{n} C-API sequences, {calls} calls");
    let seen = common::api_fuzz::SEEN.with(|m| m.borrow().clone());
    for ((call, st), k) in &seen {
        println!("  {call:28} {st:32} {k}");
    }
    // the sequences reach the deep paths, not only the argument checks
    for call in ["forge_load", "forge_eval", "forge_generate", "forge_sampler_sample", "forge_tokenize", "forge_detokenize"] {
        let ok = seen.get(&(call.to_string(), "FORGE_OK".to_string())).copied().unwrap_or(0);
        assert!(ok * 100 >= n, "{call} succeeded only {ok} times in {n} sequences");
    }
    assert!(calls > n * 5);
}
