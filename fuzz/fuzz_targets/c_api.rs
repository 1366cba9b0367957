//! Fuzz the C API: the bytes choose a sequence of up to 64 calls with
//! random arguments (sizes, token ids, enum values, NULLs, NaNs, invalid
//! UTF-8, callbacks that stop early or re-enter the busy context) against a
//! tiny model, and after each call the harness checks the ABI's promises
//! (tests/common/api_fuzz.rs). `tests/hardening.rs` replays it from a fixed
//! seed in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/api_fuzz.rs"]
mod api_fuzz;
#[path = "../../tests/common/load_fuzz.rs"]
mod load_fuzz;
#[path = "../../tests/common/tiny.rs"]
mod tiny;

fuzz_target!(|data: &[u8]| {
    api_fuzz::run_api_case(data);
});
