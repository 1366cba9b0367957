//! Hardening (issue 20): no file, argument or thread pattern may crash, hang
//! or silently corrupt the library. Each test here failed on the code before
//! the fix it covers; the CI-sized fuzz runs replay the fuzz targets'
//! harnesses (`fuzz/fuzz_targets/load_path.rs`, `c_api.rs`) from a fixed seed.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use common::load_fuzz::{mutated_model, run_load_case, Src, Stage};
use common::Rng;


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

// ---- class by class ---------------------------------------------------------

use std::ffi::{c_char, c_void, CString};
use std::ptr::{null, null_mut};
use std::time::Instant;

use common::last_error;
use rocmforge::ffi::*;
use rocmforge::gguf::Value;

const OK: forge_status = forge_status::FORGE_OK;

/// Load `path` through the C API; the status, the handle (NULL on error)
/// and how long the call took.
fn load(path: &std::path::Path, f: impl FnOnce(&mut forge_load_params)) -> (forge_status, *mut forge_ctx, Duration) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    let mut p = forge_load_default_params();
    p.n_threads = 2;
    p.n_ctx = 64;
    f(&mut p);
    let mut ctx = null_mut();
    let t0 = Instant::now();
    let st = unsafe { forge_load(c.as_ptr(), &p, &mut ctx) };
    (st, ctx, t0.elapsed())
}

/// A copy of a real model with one metadata value replaced in place (same
/// type, so every other byte stays where it was).
fn patched_real_model(key: &str, v: Value) -> std::path::PathBuf {
    let src = common::model(common::SMOLLM2);
    let mut bytes = std::fs::read(&src).unwrap();
    // key: u64 length, the bytes, u32 value type, the value
    let mut pat = (key.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(key.as_bytes());
    let at = bytes.windows(pat.len()).position(|w| w == pat.as_slice()).unwrap_or_else(|| panic!("{key} not in the file")) + pat.len();
    let ty = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let val: Vec<u8> = match (ty, v) {
        (4, Value::U32(x)) => x.to_le_bytes().to_vec(),
        (6, Value::F32(x)) => x.to_le_bytes().to_vec(),
        (t, v) => panic!("{key}: type {t} in the file, {v:?} given"),
    };
    bytes[at + 4..at + 4 + val.len()].copy_from_slice(&val);
    let out = std::env::temp_dir().join(format!("rocmforge-patched-{}-{key}.gguf", std::process::id()));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Class 2: counts from the file are checked against what the file holds
/// before anything is allocated from them. Before the fix, block_count
/// 2^31-1 asked for 1.4 TB and aborted the process (SIGABRT). Every case
/// fails with a status and a message within 1 s, or loads for real.
#[test]
fn absurd_metadata_in_a_real_model_fails_fast_with_invalid_model() {
    use forge_status::*;
    let cases: [(&str, Value, forge_status, &str); 6] = [
        ("llama.block_count", Value::U32(i32::MAX as u32), FORGE_ERR_INVALID_MODEL, "block_count"),
        ("llama.block_count", Value::U32(u32::MAX), FORGE_ERR_INVALID_MODEL, "block_count"),
        ("llama.attention.head_count", Value::U32(1 << 30), FORGE_ERR_UNSUPPORTED, "n_head"),
        ("llama.embedding_length", Value::U32(u32::MAX), FORGE_ERR_UNSUPPORTED, "token_embd"),
        ("llama.rope.freq_base", Value::F32(f32::NAN), FORGE_ERR_INVALID_MODEL, "rope.freq_base"),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(f32::INFINITY), FORGE_ERR_INVALID_MODEL, "epsilon"),
    ];
    for (key, v, want, word) in cases {
        let path = patched_real_model(key, v.clone());
        let (st, ctx, t) = load(&path, |_| {});
        let msg = last_error();
        std::fs::remove_file(&path).ok();
        println!("{key} = {v:?}: {st:?} in {t:?}: {msg}");
        assert!(ctx.is_null());
        assert_eq!(st, want, "{key} = {v:?}: {msg}");
        assert!(msg.contains(word), "{key}: the message does not name the problem: {msg}");
        assert!(t < Duration::from_secs(1), "{key} = {v:?} took {t:?} to fail");
    }
    // a huge training context is not an allocation: the model loads, and a
    // session gets the default size
    let path = patched_real_model("llama.context_length", Value::U32(u32::MAX));
    let (st, ctx, _) = load(&path, |p| p.n_ctx = 0);
    std::fs::remove_file(&path).ok();
    assert_eq!(st, OK, "{}", last_error());
    let mut info: forge_model_info = unsafe { std::mem::zeroed() };
    unsafe {
        assert_eq!(forge_get_model_info(ctx, &mut info), OK);
        forge_free(ctx);
    }
    assert_eq!((info.n_ctx_train, info.n_ctx), (i32::MAX, 4096));
}

/// Class 3: every numeric load parameter has a range. Before the fix,
/// n_threads = 100000 made forge_load start 100,000 threads (minutes).
#[test]
fn out_of_range_load_parameters_are_refused_at_once() {
    let model = common::model(common::SMOLLM2);
    for (what, set) in [
        ("n_threads", Box::new(|p: &mut forge_load_params| p.n_threads = 100_000) as Box<dyn Fn(&mut forge_load_params)>),
        ("n_threads", Box::new(|p: &mut forge_load_params| p.n_threads = FORGE_MAX_THREADS + 1)),
        ("n_ctx", Box::new(|p: &mut forge_load_params| p.n_ctx = FORGE_MAX_CTX + 1)),
        ("gpu_index", Box::new(|p: &mut forge_load_params| {
            p.backend = forge_backend::FORGE_BACKEND_CUDA as i32;
            p.gpu_index = -1;
        })),
    ] {
        let (st, ctx, t) = load(&model, set);
        let msg = last_error();
        assert_eq!(st, forge_status::FORGE_ERR_INVALID_ARGUMENT, "{what}: {msg}");
        assert!(ctx.is_null() && msg.contains(what), "{what}: {msg}");
        assert!(t < Duration::from_millis(100), "{what}: refused after {t:?}");
    }
    // the largest accepted values still work (n_ctx up to the cap is an
    // allocation that may fail as OUT_OF_MEMORY, never an abort)
    let (st, ctx, _) = load(&model, |p| p.n_threads = 64);
    assert_eq!(st, OK, "{}", last_error());
    unsafe { forge_free(ctx) };
    let (st, ctx, t) = load(&model, |p| p.n_ctx = FORGE_MAX_CTX);
    println!("n_ctx = FORGE_MAX_CTX on SmolLM2: {st:?} in {t:?} ({})", last_error());
    assert!(st == OK || st == forge_status::FORGE_ERR_OUT_OF_MEMORY);
    unsafe { forge_free(ctx) };
}

/// Class 1: enums are integers checked at the boundary. Before the fix, an
/// out-of-range forge_backend in forge_load_params segfaulted forge_load
/// and forge_device_count answered OK.
#[test]
fn out_of_range_enums_are_invalid_argument() {
    let model = common::model(common::SMOLLM2);
    for b in [4, 42, -1, i32::MIN, i32::MAX] {
        let (st, ctx, _) = load(&model, |p| p.backend = b);
        assert_eq!(st, forge_status::FORGE_ERR_INVALID_ARGUMENT, "backend {b}");
        assert!(ctx.is_null() && last_error().contains("not a forge_backend"), "{}", last_error());
        let mut n = -7;
        assert_eq!(unsafe { forge_device_count(b, &mut n) }, forge_status::FORGE_ERR_INVALID_ARGUMENT);
        assert_eq!(n, -7);
        assert!(!forge_backend_compiled(b));
        assert!(last_error().contains(&format!("backend {b}")), "{}", last_error());
    }
}

struct Hold {
    ctx: *mut forge_ctx,
    seen: Vec<forge_status>,
    n_past_inside: usize,
    go: std::sync::mpsc::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

unsafe extern "C" fn hold_on_first(_t: i32, _p: *const c_char, _n: usize, user: *mut c_void) -> bool {
    let h = &mut *(user as *mut Hold);
    if h.seen.is_empty() {
        // the same thread re-enters its own busy context
        let tok = 1i32;
        h.seen.push(forge_eval(h.ctx, &tok, 1, null_mut(), 0));
        h.seen.push(forge_kv_reset(h.ctx, 0));
        h.n_past_inside = forge_n_past(h.ctx);
        // another thread tries while this call is inside the context
        h.go.send(()).unwrap();
        h.done.recv().unwrap();
    }
    true
}

/// A handle moved to another thread (the C API allows it; the tests are
/// about what happens when two threads use it at once).
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}

/// Class 5: one context used by two calls at once. Before the fix, two
/// threads on one context gave wrong tokens silently (10 of 10 trials).
/// Now the second call gets FORGE_ERR_BUSY and changes nothing, whether it
/// comes from another thread or from a callback on the same thread, and the
/// call that holds the context produces exactly its solo tokens.
#[test]
fn a_context_in_use_answers_busy_and_is_never_corrupted() {
    let model = common::model(common::SMOLLM2);
    let (st, ctx, _) = load(&model, |_| {});
    assert_eq!(st, OK);
    let text = "The capital of France is";
    let mut prompt = vec![0i32; 32];
    let mut n = 0usize;
    unsafe {
        assert_eq!(forge_tokenize(ctx, text.as_ptr() as *const c_char, text.len(), true, false, prompt.as_mut_ptr(), 32, &mut n), OK);
    }
    prompt.truncate(n);
    let greedy = |ctx: *mut forge_ctx, gp: &forge_generate_params| -> (forge_status, Vec<i32>) {
        let mut sp = forge_sampler_default_params();
        sp.temperature = 0.0;
        let mut s = null_mut();
        let mut out = vec![0i32; 16];
        let mut got = 0usize;
        unsafe {
            assert_eq!(forge_sampler_new(&sp, &mut s), OK);
            assert_eq!(forge_kv_reset(ctx, 0), OK);
            let st = forge_generate(ctx, s, prompt.as_ptr(), prompt.len(), gp, out.as_mut_ptr(), 16, &mut got, null_mut());
            forge_sampler_free(s);
            out.truncate(got);
            (st, out)
        }
    };
    let mut gp = forge_generate_default_params();
    gp.max_tokens = 12;
    let (st, solo) = greedy(ctx, &gp);
    assert_eq!(st, OK);

    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut hold = Hold { ctx, seen: Vec::new(), n_past_inside: usize::MAX, go: go_tx, done: done_rx };
    let other = SendPtr(ctx);
    let thread = std::thread::spawn(move || {
        go_rx.recv().unwrap();
        let c = other;
        let toks = [1i32, 2, 3];
        let mut logits = vec![0f32; 49152];
        let mut sts = Vec::new();
        unsafe {
            sts.push(forge_eval(c.0, toks.as_ptr(), 3, logits.as_mut_ptr(), logits.len()));
            sts.push(forge_kv_reset(c.0, 0));
            let mut s = null_mut();
            assert_eq!(forge_sampler_new(null(), &mut s), OK);
            sts.push(forge_generate(c.0, s, toks.as_ptr(), 3, null(), null_mut(), 0, null_mut(), null_mut()));
            forge_sampler_free(s);
            // model-only calls are not exclusive
            let mut n = 0usize;
            let mut ids = [0i32; 8];
            sts.push(forge_tokenize(c.0, b"hello".as_ptr() as *const c_char, 5, false, false, ids.as_mut_ptr(), 8, &mut n));
        }
        let msg = last_error();
        done_tx.send(()).unwrap();
        (sts, msg)
    });
    gp.on_token = Some(hold_on_first);
    gp.user_data = &mut hold as *mut Hold as *mut c_void;
    let (st, held) = greedy(ctx, &gp);
    let (sts, msg) = thread.join().unwrap();
    use forge_status::FORGE_ERR_BUSY as BUSY;
    assert_eq!(st, OK);
    assert_eq!(hold.seen, vec![BUSY, BUSY], "re-entry from the callback");
    assert_eq!(sts, vec![BUSY, BUSY, BUSY, OK], "another thread while the context is in use");
    assert!(msg.contains("in use"), "{msg}");
    assert_eq!(hold.n_past_inside, 0, "forge_n_past inside the call: the position before it (after the reset)");
    assert_eq!(held, solo, "the call that held the context was disturbed");
    unsafe { forge_free(ctx) };
}

/// Class 5 under load: four threads hammer one context with evaluations
/// and resets. Each call either runs whole (OK / CONTEXT_FULL)
/// or is refused whole (BUSY); afterwards the context still gives its solo
/// logits.
#[test]
fn threads_hammering_one_context_leave_it_consistent() {
    let model = common::model(common::SMOLLM2);
    let (st, ctx, _) = load(&model, |p| p.n_ctx = 256);
    assert_eq!(st, OK);
    let toks = [1i32, 504, 3458, 282];
    let mut reference = vec![0f32; 49152];
    unsafe {
        assert_eq!(forge_eval(ctx, toks.as_ptr(), 4, reference.as_mut_ptr(), reference.len()), OK);
    }
    let shared = SendPtr(ctx);
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                let c = shared;
                let (mut busy, mut ran) = (0, 0);
                let mut logits = vec![0f32; 49152];
                start.wait();
                // each thread keeps trying until ten of its calls have run
                let mut i = 0;
                while ran < 10 {
                    i += 1;
                    assert!(busy < 1_000_000, "thread {t} never got the context");
                    let st = unsafe {
                        match (t + i) % 4 {
                            0 => forge_kv_reset(c.0, 0),
                            1 => forge_eval(c.0, toks.as_ptr(), 4, logits.as_mut_ptr(), logits.len()),
                            _ => {
                                let _ = forge_n_past(c.0);
                                forge_eval(c.0, toks.as_ptr(), 2, null_mut(), 0)
                            }
                        }
                    };
                    match st {
                        forge_status::FORGE_ERR_BUSY => {
                            busy += 1;
                            std::thread::yield_now();
                        }
                        forge_status::FORGE_OK | forge_status::FORGE_ERR_CONTEXT_FULL => ran += 1,
                        other => panic!("thread {t}: {other:?}: {}", last_error()),
                    }
                }
                (busy, ran)
            })
        })
        .collect();
    let counts: Vec<(usize, usize)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    println!("(busy, ran) per thread: {counts:?}");
    assert!(counts.iter().map(|c| c.0).sum::<usize>() > 0, "four threads on two cores never collided");
    let mut again = vec![0f32; 49152];
    unsafe {
        assert!(forge_n_past(ctx) <= 256);
        assert_eq!(forge_kv_reset(ctx, 0), OK);
        assert_eq!(forge_eval(ctx, toks.as_ptr(), 4, again.as_mut_ptr(), again.len()), OK);
        forge_free(ctx);
    }
    assert_eq!(again, reference, "the context's state was corrupted");
}

/// Class 6: NaN / +inf / all -inf logits are an error, not token 0; a model
/// that produces them fails generate with INVALID_MODEL.
#[test]
fn unsamplable_logits_are_an_error() {
    let mut s = null_mut();
    unsafe { assert_eq!(forge_sampler_new(null(), &mut s), OK) };
    let inf = f32::INFINITY;
    for mut l in [vec![f32::NAN; 4], vec![0.0, f32::NAN, 1.0], vec![0.0, inf], vec![-inf; 3]] {
        let mut t = -7;
        let st = unsafe { forge_sampler_sample(s, l.as_mut_ptr(), l.len(), &mut t) };
        assert_eq!(st, forge_status::FORGE_ERR_INVALID_ARGUMENT, "{l:?}");
        assert_eq!(t, -7);
        assert!(last_error().contains("not samplable"), "{}", last_error());
    }
    let mut l = vec![-inf, 0.5, -inf];
    let mut t = -7;
    unsafe { assert_eq!(forge_sampler_sample(s, l.as_mut_ptr(), 3, &mut t), OK) };
    assert_eq!(t, 1, "-inf masks, the finite logit is chosen");

    // a model whose output norm is NaN: every logit is NaN
    let mut m = common::tiny::tiny_model(common::tiny::TinyArch::Llama, 3);
    let norm = m.tensors.iter_mut().find(|t| t.name == "output_norm.weight").unwrap();
    norm.data = f32::NAN.to_le_bytes().repeat(norm.data.len() / 4);
    let path = std::env::temp_dir().join(format!("rocmforge-nan-{}.gguf", std::process::id()));
    std::fs::write(&path, m.to_bytes()).unwrap();
    let (st, ctx, _) = load(&path, |_| {});
    std::fs::remove_file(&path).ok();
    assert_eq!(st, OK, "{}", last_error());
    let prompt = [1i32, 2];
    let mut out = [-7i32; 4];
    let mut n = 99usize;
    let st = unsafe { forge_generate(ctx, s, prompt.as_ptr(), 2, null(), out.as_mut_ptr(), 4, &mut n, null_mut()) };
    assert_eq!(st, forge_status::FORGE_ERR_INVALID_MODEL, "{}", last_error());
    assert!(last_error().contains("NaN"), "{}", last_error());
    assert_eq!((out, n), ([-7; 4], 99));
    unsafe {
        forge_free(ctx);
        forge_sampler_free(s);
    }
}

/// Class 6: paths that are not model files say what they are, at once; a
/// FIFO with no writer does not block forge_load.
#[test]
fn directories_fifos_and_devices_are_clear_io_errors() {
    let dir = std::env::temp_dir();
    let fifo = dir.join(format!("rocmforge-fifo-{}", std::process::id()));
    let cf = CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(cf.as_ptr(), 0o600) }, 0);
    for (path, word) in [(dir.clone(), "a directory"), (fifo.clone(), "not a regular file"), ("/dev/zero".into(), "not a regular file")] {
        let (st, ctx, t) = load(&path, |_| {});
        let msg = last_error();
        assert_eq!(st, forge_status::FORGE_ERR_IO, "{}: {msg}", path.display());
        assert!(ctx.is_null() && msg.contains(word) && !msg.contains("os error 19"), "{msg}");
        assert!(t < Duration::from_secs(1), "{}: {t:?}", path.display());
    }
    std::fs::remove_file(&fifo).ok();
    // an empty file is a short GGUF, not an mmap error
    let empty = dir.join(format!("rocmforge-empty-{}.gguf", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let (st, _, _) = load(&empty, |_| {});
    std::fs::remove_file(&empty).ok();
    assert_eq!(st, forge_status::FORGE_ERR_INVALID_MODEL, "{}", last_error());
    assert!(last_error().contains("file ends early"), "{}", last_error());
}

/// Class 6: one NULL rule ((NULL, 0) is an empty input everywhere), and an
/// invalid-UTF-8 stop string says what is wrong with it.
#[test]
fn null_with_length_zero_is_empty_and_stop_errors_say_why() {
    let (st, ctx, _) = load(&common::model(common::SMOLLM2), |_| {});
    assert_eq!(st, OK);
    unsafe {
        let mut n = 99usize;
        assert_eq!(forge_tokenize(ctx, null(), 0, false, false, null_mut(), 0, &mut n), OK);
        assert_eq!(n, 0);
        n = 99;
        assert_eq!(forge_detokenize(ctx, null(), 0, false, null_mut(), 0, &mut n), OK);
        assert_eq!(n, 0);
        // non-zero length with NULL: NULL_POINTER, nothing written
        n = 99;
        assert_eq!(forge_tokenize(ctx, null(), 3, false, false, null_mut(), 0, &mut n), forge_status::FORGE_ERR_NULL_POINTER);
        assert_eq!(n, 99);
        let mut s = null_mut();
        assert_eq!(forge_sampler_new(null(), &mut s), OK);
        let bad = CString::new(vec![b'a', 0xff, b'b']).unwrap();
        let stops = [bad.as_ptr()];
        let mut gp = forge_generate_default_params();
        gp.stop = stops.as_ptr();
        gp.n_stop = 1;
        let prompt = [1i32];
        let st = forge_generate(ctx, s, prompt.as_ptr(), 1, &gp, null_mut(), 0, null_mut(), null_mut());
        assert_eq!(st, forge_status::FORGE_ERR_INVALID_UTF8);
        let msg = last_error();
        assert!(msg.contains("stop[0] is not valid UTF-8") && msg.contains("byte"), "{msg}");
        assert_eq!(forge_n_past(ctx), 0, "nothing was evaluated");
        forge_sampler_free(s);
        forge_free(ctx);
    }
}
