//! Random sequences of C-API calls with random arguments (sizes, token ids,
//! enum values, NULLs, NaNs, invalid UTF-8, callbacks that stop early or
//! call back into the busy context) against a tiny model. Every argument is
//! one a C caller may legally pass: pointers are NULL or point at buffers of
//! at least the size passed; handles are NULL or live.
//!
//! After every call it checks the ABI's promises: no FORGE_ERR_INTERNAL (a
//! caught panic), a message for every failure, out-parameters untouched on
//! failure (sentinels), `n_past` moved exactly as documented, and a nested
//! call from a callback gets BUSY. Driven by libFuzzer
//! (`fuzz/fuzz_targets/c_api.rs`) and by a seeded run in `tests/hardening.rs`.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use rocmforge::ffi::*;

use super::load_fuzz::Src;
use super::tiny::{tiny_model, TinyArch};

/// The tiny llama model, written once per process to a temporary file.
pub fn tiny_model_path() -> &'static CString {
    static PATH: OnceLock<CString> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("rocmforge-api-fuzz-{}.gguf", std::process::id()));
        std::fs::write(&p, tiny_model(TinyArch::Llama, 7).to_bytes()).expect("write the tiny model");
        CString::new(p.to_str().unwrap()).unwrap()
    })
}

const SENT_I32: i32 = -0x5EED;
const SENT_USIZE: usize = 0x5EED_5EED;

fn last_error() -> String {
    unsafe { CStr::from_ptr(forge_last_error()) }.to_string_lossy().into_owned()
}

thread_local! {
    /// (call name, status) -> count, for the CI run's report.
    pub static SEEN: std::cell::RefCell<std::collections::BTreeMap<(String, String), usize>> = Default::default();
}

/// A status is acceptable: never INTERNAL, and a failure says why.
fn check(st: forge_status, call: &str) -> forge_status {
    SEEN.with(|m| *m.borrow_mut().entry((call.to_string(), format!("{st:?}"))).or_default() += 1);
    assert_ne!(st, forge_status::FORGE_ERR_INTERNAL, "{call}: a panic reached the boundary: {}", last_error());
    if st != forge_status::FORGE_OK {
        assert!(!last_error().is_empty(), "{call} failed with {st:?} and no message");
    }
    st
}

/// What a generate callback saw; checked after the call returns (a panic
/// inside an extern "C" callback would abort).
struct CbState {
    ctx: *mut forge_ctx,
    calls: usize,
    stop_at: usize,
    nested_not_busy: Option<forge_status>,
}

unsafe extern "C" fn on_token(_t: i32, _p: *const c_char, _n: usize, user: *mut c_void) -> bool {
    let s = &mut *(user as *mut CbState);
    s.calls += 1;
    // the context is busy inside its own call: a nested call must say so
    let tok = 1i32;
    let st = forge_eval(s.ctx, &tok, 1, null_mut(), 0);
    if st != forge_status::FORGE_ERR_BUSY {
        s.nested_not_busy = Some(st);
    }
    s.calls < s.stop_at
}

unsafe extern "C" fn cancel_progress(p: f32, user: *mut c_void) -> bool {
    p < *(user as *const f32)
}

struct Handles {
    ctxs: Vec<*mut forge_ctx>,
    samplers: Vec<*mut forge_sampler>,
}

impl Handles {
    fn ctx(&self, src: &mut Src) -> *mut forge_ctx {
        if self.ctxs.is_empty() || src.below(8) == 0 {
            null_mut()
        } else {
            self.ctxs[src.below(self.ctxs.len())]
        }
    }
    fn sampler(&self, src: &mut Src) -> *mut forge_sampler {
        if self.samplers.is_empty() || src.below(8) == 0 {
            null_mut()
        } else {
            self.samplers[src.below(self.samplers.len())]
        }
    }
}

fn n_vocab_of(ctx: *mut forge_ctx) -> i32 {
    unsafe { forge_n_vocab(ctx) }
}

/// A token id: valid most of the time, else just outside the vocabulary.
fn token(src: &mut Src, n_vocab: i32) -> i32 {
    let n = n_vocab.max(1);
    match src.below(8) {
        0 => -1 - src.below(3) as i32,
        1 => n + src.below(3) as i32,
        2 => *src.pick(&[i32::MIN, i32::MAX]),
        _ => src.below(n as usize) as i32,
    }
}

fn tokens(src: &mut Src, n_vocab: i32) -> Vec<i32> {
    (0..src.below(7)).map(|_| token(src, n_vocab)).collect()
}

/// (ptr, len) of a Vec, or NULL with that length or with 0, at random.
fn ptr_len<T>(src: &mut Src, v: &[T]) -> (*const T, usize) {
    match src.below(10) {
        0 => (null(), v.len()),
        1 => (null(), 0),
        _ => (v.as_ptr(), v.len()),
    }
}

/// Random bytes, valid UTF-8 or not.
fn text(src: &mut Src) -> Vec<u8> {
    if src.bool() {
        src.string().into_bytes()
    } else {
        (0..src.below(16)).map(|_| src.u8()).collect()
    }
}

/// Run one random sequence of calls; returns how many calls it made.
pub fn run_api_case(data: &[u8]) -> usize {
    let path = tiny_model_path();
    let mut h = Handles { ctxs: Vec::new(), samplers: Vec::new() };
    let mut src = Src::new(data);
    // Start from one live context and sampler, so that most calls reach
    // past the argument checks; the sequence may free and replace them.
    unsafe {
        let mut p = forge_load_default_params();
        p.n_threads = 1;
        p.n_ctx = 32;
        let mut c = null_mut();
        assert_eq!(forge_load(path.as_ptr(), &p, &mut c), forge_status::FORGE_OK, "{}", last_error());
        h.ctxs.push(c);
        let mut sp = forge_sampler_default_params();
        sp.seed = src.u64();
        let mut s = null_mut();
        assert_eq!(forge_sampler_new(&sp, &mut s), forge_status::FORGE_OK);
        h.samplers.push(s);
    }
    let mut calls = 0;
    while !src.is_empty() && calls < 64 {
        calls += 1;
        unsafe { one_call(&mut src, &mut h, path) };
    }
    unsafe {
        for c in h.ctxs {
            forge_free(c);
        }
        for s in h.samplers {
            forge_sampler_free(s);
        }
    }
    calls
}

unsafe fn one_call(src: &mut Src, h: &mut Handles, path: &CString) {
    use forge_status::*;
    match src.below(20) {
        0 => {
            let mut p = forge_load_default_params();
            p.n_threads = *src.pick(&[0, 1, 1, 1, 2, 2, 3, FORGE_MAX_THREADS + 1, 100_000, u32::MAX]);
            p.n_ctx = *src.pick(&[0, 1, 2, 8, 16, 16, 32, 32, 64, 1 << 16, FORGE_MAX_CTX + 1, u32::MAX]);
            p.backend = *src.pick(&[0, 0, 0, 1, 1, 1, 2, 3, -1, 4, 42, i32::MIN]);
            p.gpu_index = *src.pick(&[0, 0, 1, -1, i32::MIN]);
            let cut: f32 = *src.pick(&[2.0, 2.0, 2.0, 2.0, 0.0, 0.5]);
            if cut < 1.5 {
                p.progress = Some(cancel_progress);
                p.progress_user_data = &cut as *const f32 as *mut c_void;
            }
            let dir = CString::new(std::env::temp_dir().to_str().unwrap()).unwrap();
            let missing = CString::new("/nonexistent/model.gguf").unwrap();
            let where_: *const c_char = match src.below(16) {
                0 => null(),
                1 => dir.as_ptr(),
                2 => missing.as_ptr(),
                _ => path.as_ptr(),
            };
            let pp: *const forge_load_params = if src.below(6) == 0 { null() } else { &p };
            let mut out = 0x1 as *mut forge_ctx;
            let out_p = if src.below(12) == 0 { null_mut() } else { &mut out as *mut _ };
            let st = check(forge_load(where_, pp, out_p), "forge_load");
            if st == FORGE_OK {
                assert!(!out.is_null() && out as usize != 1);
                if h.ctxs.len() < 3 {
                    h.ctxs.push(out);
                } else {
                    forge_free(out);
                }
            } else {
                assert_eq!(out as usize, 1, "forge_load wrote *out on {st:?}");
            }
        }
        1 => {
            let c = h.ctx(src);
            let mut out = 0x1 as *mut forge_ctx;
            let st = check(forge_ctx_clone_session(c, &mut out), "forge_ctx_clone_session");
            if st == FORGE_OK {
                assert_eq!(forge_n_past(out), 0);
                if h.ctxs.len() < 3 {
                    h.ctxs.push(out);
                } else {
                    forge_free(out);
                }
            } else {
                assert_eq!(out as usize, 1);
            }
        }
        2 => {
            if !h.ctxs.is_empty() && src.bool() {
                forge_free(h.ctxs.swap_remove(src.below(h.ctxs.len())));
            } else {
                forge_free(null_mut());
            }
        }
        3 => {
            let c = h.ctx(src);
            let nv = n_vocab_of(c);
            let toks = tokens(src, nv);
            let (tp, tn) = ptr_len(src, &toks);
            let want = if src.bool() { nv.max(0) as usize } else { src.below(nv.max(1) as usize + 2) };
            let mut logits = vec![f32::NAN; want];
            let (lp, ln) = if src.below(3) == 0 { (null_mut(), 0) } else { (logits.as_mut_ptr(), logits.len()) };
            let before = forge_n_past(c);
            let st = check(forge_eval(c, tp, tn, lp, ln), "forge_eval");
            let after = forge_n_past(c);
            if st == FORGE_OK {
                assert_eq!(after, before + tn, "n_past after a good eval");
                if !lp.is_null() {
                    assert!(logits[..nv as usize].iter().all(|x| !x.is_nan()), "eval OK left logits unwritten");
                }
            } else {
                assert_eq!(after, before, "a failed eval ({st:?}) moved n_past");
                assert!(logits.iter().all(|x| x.is_nan()), "a failed eval wrote logits");
            }
        }
        4 => {
            let c = h.ctx(src);
            let before = forge_n_past(c);
            let n = src.below(before + 3);
            let st = check(forge_kv_reset(c, n), "forge_kv_reset");
            if c.is_null() {
                assert_eq!(st, FORGE_ERR_NULL_POINTER);
            } else if n <= before {
                assert_eq!(st, FORGE_OK);
                assert_eq!(forge_n_past(c), n);
            } else {
                assert_eq!(st, FORGE_ERR_INVALID_ARGUMENT);
                assert_eq!(forge_n_past(c), before);
            }
        }
        5 | 6 => {
            let c = h.ctx(src);
            let t = text(src);
            let (tp, tn) = ptr_len(src, &t);
            let cap = src.below(24);
            let mut out = vec![SENT_I32; cap];
            let op = if src.below(6) == 0 { null_mut() } else { out.as_mut_ptr() };
            let mut n = SENT_USIZE;
            let np = if src.below(10) == 0 { null_mut() } else { &mut n as *mut usize };
            let st = check(forge_tokenize(c, tp as *const c_char, tn, src.bool(), src.bool(), op, cap, np), "forge_tokenize");
            match st {
                FORGE_OK => assert!(n <= cap && out[n..].iter().all(|&x| x == SENT_I32)),
                FORGE_ERR_BUFFER_TOO_SMALL => assert!(n > cap && out.iter().all(|&x| x == SENT_I32)),
                _ => assert!(n == SENT_USIZE && out.iter().all(|&x| x == SENT_I32), "tokenize wrote outputs on {st:?}"),
            }
        }
        7 | 8 => {
            let c = h.ctx(src);
            let nv = n_vocab_of(c);
            let toks = tokens(src, nv);
            let cap = src.below(24);
            let mut buf = vec![0xA5u8; cap];
            let bp = if src.below(6) == 0 { null_mut() } else { buf.as_mut_ptr() as *mut c_char };
            let mut n = SENT_USIZE;
            let np = if src.below(10) == 0 { null_mut() } else { &mut n as *mut usize };
            let st = if src.bool() {
                let t = toks.first().copied().unwrap_or(0);
                check(forge_token_to_piece(c, t, src.bool(), bp, cap, np), "forge_token_to_piece")
            } else {
                let (tp, tn) = ptr_len(src, &toks);
                check(forge_detokenize(c, tp, tn, src.bool(), bp, cap, np), "forge_detokenize")
            };
            match st {
                FORGE_OK => assert!(n <= cap && buf[n..].iter().all(|&x| x == 0xA5)),
                FORGE_ERR_BUFFER_TOO_SMALL => assert!(n > cap && buf.iter().all(|&x| x == 0xA5)),
                _ => assert!(n == SENT_USIZE && buf.iter().all(|&x| x == 0xA5), "piece/detokenize wrote outputs on {st:?}"),
            }
        }
        9 => {
            let c = h.ctx(src);
            let mut info: forge_model_info = std::mem::zeroed();
            info.n_vocab = SENT_I32;
            let ip = if src.below(6) == 0 { null_mut() } else { &mut info as *mut _ };
            let st = check(forge_get_model_info(c, ip), "forge_get_model_info");
            if st == FORGE_OK {
                assert_eq!(info.n_vocab, forge_n_vocab(c));
                assert!(info.n_ctx as usize >= forge_n_past(c));
            } else {
                assert_eq!(info.n_vocab, SENT_I32);
            }
            let _ = forge_token_is_eog(c, token(src, info.n_vocab.max(1)));
        }
        10 => {
            let mut p = forge_sampler_default_params();
            p.temperature = if src.bool() { *src.pick(&[0.0, 0.7, 1.0, -1.0]) } else { src.float() };
            p.top_k = *src.pick(&[0, 1, 40, u32::MAX]);
            p.top_p = if src.bool() { *src.pick(&[0.0, 0.9, 1.0]) } else { src.float() };
            p.min_p = if src.bool() { *src.pick(&[0.0, 0.05, 1.0]) } else { src.float() };
            p.repeat_penalty = if src.bool() { *src.pick(&[1.0, 1.3]) } else { src.float() };
            p.frequency_penalty = if src.bool() { 0.0 } else { src.float() };
            p.presence_penalty = if src.bool() { 0.0 } else { src.float() };
            p.penalty_last_n = *src.pick(&[0, 8, 64, u32::MAX]);
            p.seed = src.u64();
            let pp: *const forge_sampler_params = if src.below(6) == 0 { null() } else { &p };
            let mut out = 0x1 as *mut forge_sampler;
            let op = if src.below(12) == 0 { null_mut() } else { &mut out as *mut _ };
            let st = check(forge_sampler_new(pp, op), "forge_sampler_new");
            if st == FORGE_OK {
                if h.samplers.len() < 3 {
                    h.samplers.push(out);
                } else {
                    forge_sampler_free(out);
                }
            } else {
                assert_eq!(out as usize, 1);
            }
        }
        11 => {
            if !h.samplers.is_empty() && src.bool() {
                forge_sampler_free(h.samplers.swap_remove(src.below(h.samplers.len())));
            } else {
                forge_sampler_free(null_mut());
            }
        }
        12 => {
            let s = h.sampler(src);
            if src.bool() {
                check(forge_sampler_reset(s), "forge_sampler_reset");
            } else {
                let t = token(src, 300);
                let st = check(forge_sampler_accept(s, t), "forge_sampler_accept");
                assert_eq!(st == FORGE_OK, !s.is_null() && t >= 0);
            }
        }
        13 => {
            let s = h.sampler(src);
            let n = src.below(300);
            let mut logits: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.1).collect();
            if n > 0 {
                match src.below(4) {
                    0 => logits[src.below(n)] = src.float(),
                    1 => logits.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                    _ => {}
                }
            }
            let valid = rocmforge::sampler::check_logits(&logits).is_ok();
            let (lp, ln) = if src.below(8) == 0 { (null_mut(), n) } else { (logits.as_mut_ptr(), n) };
            let mut t = SENT_I32;
            let tp = if src.below(8) == 0 { null_mut() } else { &mut t as *mut i32 };
            let st = check(forge_sampler_sample(s, lp, ln, tp), "forge_sampler_sample");
            if st == FORGE_OK {
                assert!(valid, "sampled from logits the sampler must refuse");
                assert!(t >= 0 && (t as usize) < n);
            } else {
                assert_eq!(t, SENT_I32);
            }
        }
        14 | 15 => {
            let c = h.ctx(src);
            let s = h.sampler(src);
            let nv = n_vocab_of(c);
            let prompt = tokens(src, nv);
            let (pp, pn) = ptr_len(src, &prompt);
            let stop_text: Vec<CString> = (0..src.below(3)).map(|_| {
                let mut t = text(src);
                t.retain(|&b| b != 0);
                CString::new(t).unwrap()
            }).collect();
            let stops: Vec<*const c_char> = stop_text.iter().map(|s| if src.below(10) == 0 { null() } else { s.as_ptr() }).collect();
            let mut gp = forge_generate_default_params();
            gp.max_tokens = src.below(6) as u32;
            (gp.stop, gp.n_stop) = ptr_len(src, &stops);
            let mut cb = CbState { ctx: c, calls: 0, stop_at: 1 + src.below(6), nested_not_busy: None };
            if src.bool() {
                gp.on_token = Some(on_token);
                gp.user_data = &mut cb as *mut CbState as *mut c_void;
            }
            let gpp: *const forge_generate_params = if src.below(8) == 0 { null() } else { &gp };
            let cap = src.below(8);
            let mut out = vec![SENT_I32; cap];
            let mut n = SENT_USIZE;
            let mut why = forge_stop_reason::FORGE_STOP_EOG;
            let before = forge_n_past(c);
            let st = check(
                forge_generate(c, s, pp, pn, gpp, out.as_mut_ptr(), cap, &mut n, &mut why),
                "forge_generate",
            );
            assert_eq!(cb.nested_not_busy, None, "a nested forge_eval from the callback was not BUSY");
            let after = forge_n_past(c);
            if st == FORGE_OK {
                assert!(n <= gp.max_tokens.max(if gpp.is_null() { 128 } else { 0 }) as usize);
                assert!(after > before && after <= before + pn + n);
                assert!(out.iter().take(n.min(cap)).all(|&t| t >= 0 && t < nv));
            } else {
                assert!(n == SENT_USIZE && out.iter().all(|&x| x == SENT_I32), "generate wrote outputs on {st:?}");
            }
        }
        16 => {
            let b = *src.pick(&[0, 1, 2, 3, -1, 4, 42, i32::MAX]);
            let mut n = SENT_I32;
            let np = if src.below(6) == 0 { null_mut() } else { &mut n as *mut i32 };
            let st = check(forge_device_count(b, np), "forge_device_count");
            if st == FORGE_OK {
                assert_eq!(n, 1, "CPU/AUTO count one device");
            } else {
                assert_eq!(n, SENT_I32);
                if !(0..=3).contains(&b) && !np.is_null() {
                    assert_eq!(st, FORGE_ERR_INVALID_ARGUMENT);
                }
            }
            let compiled = forge_backend_compiled(b);
            assert_eq!(compiled, b == 0 || b == 1, "backend_compiled({b}) in a CPU-only build");
        }
        17 => {
            let c = h.ctx(src);
            let cap = src.below(40);
            let mut buf = vec![0xA5u8; cap];
            let mut n = SENT_USIZE;
            let st = check(forge_ctx_backend(c, buf.as_mut_ptr() as *mut c_char, cap, &mut n), "forge_ctx_backend");
            match st {
                FORGE_OK => assert!(n <= cap && buf[..n].starts_with(b"cpu")),
                FORGE_ERR_BUFFER_TOO_SMALL => assert!(n > cap),
                _ => assert_eq!(n, SENT_USIZE),
            }
        }
        _ => {
            assert_eq!(forge_abi_version(), FORGE_ABI_VERSION);
            assert!(!CStr::from_ptr(forge_version()).to_bytes().is_empty());
        }
    }
}
