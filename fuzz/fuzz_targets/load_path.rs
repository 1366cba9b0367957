//! Fuzz the whole load path: the bytes steer structure-aware mutations of a
//! tiny real model (metadata values, tensor table, raw header bytes); the
//! result is parsed, built into a model, given a session and evaluated for
//! two tokens. Any error is fine; a panic, an abort, a sanitizer report or a
//! case slower than `-timeout` is a bug. `tests/hardening.rs` replays the
//! same harness from a fixed seed in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/load_fuzz.rs"]
mod load_fuzz;
#[path = "../../tests/common/tiny.rs"]
mod tiny;

fuzz_target!(|data: &[u8]| {
    let bytes = load_fuzz::mutated_model(&mut load_fuzz::Src::new(data));
    let _ = load_fuzz::run_load_case(bytes);
});
