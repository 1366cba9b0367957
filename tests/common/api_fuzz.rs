//! Random sequences of C-API calls with random arguments (sizes, token ids,
//! enum values, NULLs, NaNs, invalid UTF-8, callbacks that stop early or
//! call back into the busy context) against a tiny model. Every argument is
//! one a C caller may legally pass: pointers are NULL or point at buffers of
//! at least the size passed; handles are NULL or live.
//!
//! After every call it checks the ABI's promises: no FORGE_ERR_INTERNAL (a
//! caught panic), a message for every failure, out-parameters untouched on
//! failure (sentinels), `n_past` moved exactly as documented, and a nested
//! call from a callback gets BUSY. The engine calls (`forge_engine_*`,
//! `forge_seq_*`: up to 2 engines of up to 4 sequences, small KV pools)
//! are checked against a model of every sequence's tokens: a successful
//! batch grows each sequence by its rows, a failed one moves none and takes
//! no block, and every status is the one the arguments call for (KV
//! exhaustion from the pool's numbers). Driven by libFuzzer
//! (`fuzz/fuzz_targets/c_api.rs`) and by a seeded run in `tests/hardening.rs`.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use rocmforge::ffi::*;

use super::load_fuzz::Src;
use super::tiny::{tiny_model, TinyArch, HEAD_DIM, N_HEAD_KV, N_LAYER};

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
    engines: Vec<Eng>,
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
/// The tiny model loaded once per process (n_ctx 32, one thread); each case
/// starts from a clone of it. Only model-reading calls ever touch it.
fn base_ctx(path: &CString) -> *const forge_ctx {
    static BASE: OnceLock<usize> = OnceLock::new();
    *BASE.get_or_init(|| {
        let mut p = forge_load_default_params();
        p.n_threads = 1;
        p.n_ctx = 32;
        let mut c = null_mut();
        assert_eq!(unsafe { forge_load(path.as_ptr(), &p, &mut c) }, forge_status::FORGE_OK, "{}", last_error());
        c as usize
    }) as *const forge_ctx
}

pub fn run_api_case(data: &[u8]) -> usize {
    let path = tiny_model_path();
    let mut h = Handles { ctxs: Vec::new(), samplers: Vec::new(), engines: Vec::new() };
    let mut src = Src::new(data);
    // Start from one live context and sampler, so that most calls reach
    // past the argument checks; the sequence may free and replace them.
    unsafe {
        // a new sequence on the process's one loaded tiny model: cases stay
        // cheap (no load each); loads are among the random calls
        let mut c = null_mut();
        assert_eq!(forge_ctx_clone_session(base_ctx(path), &mut c), forge_status::FORGE_OK, "{}", last_error());
        h.ctxs.push(c);
        let mut sp = forge_sampler_default_params();
        sp.seed = src.u64();
        let mut s = null_mut();
        assert_eq!(forge_sampler_new(&sp, &mut s), forge_status::FORGE_OK);
        h.samplers.push(s);
        // and one engine (the context's 32 positions, a pool of 3 to 8
        // blocks) with two sequences, the first one often past its first
        // block (which the prefix cache then holds)
        let ep = forge_engine_params { n_ctx: 0, kv_budget: *src.pick(&[0, 1, 1, 3 * BLOCK_BYTES, 4 * BLOCK_BYTES, 5 * BLOCK_BYTES]) };
        let mut e = null_mut();
        assert_eq!(forge_engine_new(c, &ep, &mut e), forge_status::FORGE_OK, "{}", last_error());
        let mut eng = Eng { e, n_ctx: 32, n_vocab: forge_n_vocab(c), seqs: Vec::new(), issued: Vec::new(), last_rows: Vec::new(), top_k: 0, prompts: Vec::new() };
        for _ in 0..2 {
            let mut id = SENT_I32;
            assert_eq!(forge_seq_new(e, &mut id), forge_status::FORGE_OK, "{}", last_error());
            eng.adopt(id, Vec::new());
        }
        // a third of the engines return top-k candidates from the start
        if src.below(3) == 0 {
            let k = *src.pick(&[1u32, 5, 40]);
            assert_eq!(forge_engine_set_top_k(e, k), forge_status::FORGE_OK, "{}", last_error());
            eng.top_k = k as usize;
        }
        let n0 = *src.pick(&[0, 0, 0, 17, 20]);
        if n0 > 0 {
            let rows: Vec<forge_batch_row> =
                (0..n0).map(|k| forge_batch_row { seq: eng.seqs[0].id, token: (k * 5 + 1) % eng.n_vocab, pos: k, logits: (k + 1 == n0) as i32 }).collect();
            assert_eq!(forge_engine_decode(e, rows.as_ptr(), rows.len()), forge_status::FORGE_OK, "{}", last_error());
            eng.seqs[0].tokens = rows.iter().map(|r| r.token).collect();
            eng.last_rows = rows.iter().map(|r| r.logits != 0).collect();
        }
        h.engines.push(eng);
    }
    let mut calls = 0;
    while !src.is_empty() && calls < 64 {
        calls += 1;
        unsafe { one_call(&mut src, &mut h, path) };
    }
    unsafe {
        for eng in h.engines {
            // every block comes back when the sequences go
            for s in &eng.seqs {
                assert_eq!(forge_seq_free(eng.e, s.id), forge_status::FORGE_OK, "{}", last_error());
            }
            let st = stats(eng.e).expect("stats");
            assert!(st.blocks_used == 0 && st.blocks_free == st.blocks_total && st.n_seqs == 0, "every sequence freed: {st:?}");
            forge_engine_free(eng.e);
        }
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
    match src.below(29) {
        28 => embed(src, h),
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
        20..=27 => {
            engine_call(src, h);
            for eng in &h.engines {
                eng.verify();
            }
        }
        _ => {
            assert_eq!(forge_abi_version(), FORGE_ABI_VERSION);
            assert!(!CStr::from_ptr(forge_version()).to_bytes().is_empty());
        }
    }
}

/// forge_embed of random tokens (valid or not), pooling (valid or not),
/// buffer sizes and NULLs: the status follows the documented order of
/// checks, a failure writes nothing, and a success writes finite values
/// (unit rows when normalized) and nothing past them.
unsafe fn embed(src: &mut Src, h: &mut Handles) {
    use forge_status::*;
    let c = h.ctx(src);
    let nv = if c.is_null() { 300 } else { forge_n_vocab(c) };
    let toks = tokens(src, nv);
    let (tp, tn) = ptr_len(src, &toks);
    let pooling = *src.pick(&[-1, -1, 0, 1, 1, 2, 3, 4, -2, i32::MIN]);
    let normalize = src.bool();
    let cap = *src.pick(&[0, 1, 63, 64, 65, 200, 4096]);
    let mut out = vec![f32::from_bits(SENT_F32); cap];
    let op = if src.below(8) == 0 { null_mut() } else { out.as_mut_ptr() };
    let mut n = SENT_USIZE;
    let np = if src.below(10) == 0 { null_mut() } else { &mut n as *mut usize };
    let st = check(forge_embed(c, tp, tn, pooling, normalize, op, cap, np), "forge_embed");
    let bad_token = toks.iter().any(|&t| t < 0 || t >= nv);
    let want: &[forge_status] = if c.is_null() || np.is_null() {
        &[FORGE_ERR_NULL_POINTER]
    } else if tn == 0 || !(-1..=3).contains(&pooling) {
        &[FORGE_ERR_INVALID_ARGUMENT]
    } else if tp.is_null() {
        &[FORGE_ERR_NULL_POINTER]
    } else if bad_token {
        &[FORGE_ERR_INVALID_ARGUMENT]
    } else {
        // then the size: too small (NULL with a non-zero cap: NULL_POINTER), or the pass
        &[FORGE_OK, FORGE_ERR_BUFFER_TOO_SMALL, FORGE_ERR_NULL_POINTER]
    };
    assert!(want.contains(&st), "forge_embed({toks:?}, pooling {pooling}, cap {cap}, out {}): {st:?}, want {want:?}: {}", if op.is_null() { "NULL" } else { "buf" }, last_error());
    let untouched = |from: usize| out[from..].iter().all(|x| x.to_bits() == SENT_F32);
    match st {
        FORGE_OK => {
            assert!(n > 0 && n <= cap && !op.is_null() && untouched(n), "forge_embed: *n_out {n} of cap {cap}");
            assert!(out[..n].iter().all(|x| x.is_finite()), "forge_embed: non-finite values");
            if normalize {
                // one pooled row, or one per token: each of unit length
                let rows = if pooling == 0 { tn } else { 1 };
                for r in out[..n].chunks(n / rows) {
                    let l2: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                    assert!((l2 - 1.0).abs() < 1e-3 || l2 == 0.0, "forge_embed: a normalized row of length {l2}");
                }
            }
        }
        FORGE_ERR_BUFFER_TOO_SMALL => assert!(n > cap && untouched(0), "forge_embed: *n_out {n} on BUFFER_TOO_SMALL with cap {cap}"),
        _ => assert!((np.is_null() || n == SENT_USIZE) && untouched(0), "forge_embed wrote outputs on {st:?}"),
    }
}

// ---- the engine ------------------------------------------------------------------

/// Positions per KV block, and the bytes one block of the tiny model takes
/// (K and V in f32, every layer): KV budgets of a few blocks.
const BLOCK: usize = 16;
const BLOCK_BYTES: u64 = BLOCK as u64 * 2 * N_HEAD_KV * HEAD_DIM * 4 * N_LAYER as u64;
const SENT_F32: u32 = 0x7FC0_5EED;

/// A live sequence as the harness expects it: its tokens, one per position.
#[derive(Clone)]
struct Seq {
    id: i32,
    tokens: Vec<i32>,
}

/// A live engine and what the harness expects of it.
struct Eng {
    e: *mut forge_engine,
    n_ctx: usize,
    n_vocab: i32,
    /// Live sequences, at most 4.
    seqs: Vec<Seq>,
    /// Every id handed out (ids are not reused while the engine lives).
    issued: Vec<i32>,
    /// The last successful batch: which rows asked for logits.
    last_rows: Vec<bool>,
    /// `forge_engine_set_top_k`'s k (0: full logits).
    top_k: usize,
    /// Tokens of sequences freed or cut back (more than a block: their full
    /// blocks may still be cached), the last few: prompts for the prefix
    /// cache.
    prompts: Vec<Vec<i32>>,
}

impl Eng {
    fn seq(&self, id: i32) -> Option<&Seq> {
        self.seqs.iter().find(|s| s.id == id)
    }

    fn remember(&mut self, tokens: Vec<i32>) {
        if tokens.len() > BLOCK {
            if self.prompts.len() == 4 {
                self.prompts.remove(0);
            }
            self.prompts.push(tokens);
        }
    }

    /// A sequence id: mostly a live one, else negative, freed or never
    /// handed out.
    fn seq_arg(&self, src: &mut Src) -> i32 {
        let stale: Vec<i32> = self.issued.iter().copied().filter(|&i| self.seq(i).is_none()).collect();
        match src.below(12) {
            0 => *src.pick(&[-1, -2, i32::MIN]),
            1 if !stale.is_empty() => *src.pick(&stale),
            1 | 2 => *src.pick(&[12_345, i32::MAX]),
            _ if !self.seqs.is_empty() => self.seqs[src.below(self.seqs.len())].id,
            _ => 0,
        }
    }

    /// A new id from forge_seq_new / forge_seq_fork: kept (up to 4 live
    /// sequences) or freed again.
    unsafe fn adopt(&mut self, id: i32, tokens: Vec<i32>) {
        assert!(id >= 0 && !self.issued.contains(&id), "sequence id {id} handed out again (issued: {:?})", self.issued);
        self.issued.push(id);
        if self.seqs.len() < 4 {
            self.seqs.push(Seq { id, tokens });
        } else {
            assert_eq!(forge_seq_free(self.e, id), forge_status::FORGE_OK, "{}", last_error());
        }
    }

    /// Every live sequence has the length the harness expects; the pool's
    /// numbers add up.
    unsafe fn verify(&self) {
        for s in &self.seqs {
            let mut n = SENT_USIZE;
            assert_eq!(forge_seq_len(self.e, s.id, &mut n), forge_status::FORGE_OK, "{}", last_error());
            assert_eq!(n, s.tokens.len(), "sequence {} holds {n} positions, want {}", s.id, s.tokens.len());
        }
        let st = stats(self.e).expect("stats");
        assert!(st.block_size as usize == BLOCK && st.blocks_used + st.blocks_free == st.blocks_total, "{st:?}");
        assert!(st.blocks_cached <= st.blocks_free && st.blocks_total as usize > self.n_ctx.div_ceil(BLOCK), "{st:?}");
        assert_eq!(st.n_seqs as usize, self.seqs.len(), "{st:?}");
        let held: usize = self.seqs.iter().map(|s| s.tokens.len().div_ceil(BLOCK)).sum();
        let most: usize = self.seqs.iter().map(|s| s.tokens.len().div_ceil(BLOCK)).max().unwrap_or(0);
        assert!(st.blocks_used as usize <= held && st.blocks_used as usize >= most, "{st:?}, sequences hold {held} blocks (shared ones once)");
    }
}

unsafe fn stats(e: *const forge_engine) -> Option<forge_kv_stats> {
    let mut s: forge_kv_stats = std::mem::zeroed();
    (forge_engine_stats(e, &mut s) == forge_status::FORGE_OK).then_some(s)
}

/// The pool's numbers, to see that a failed call took nothing.
unsafe fn pool(e: *const forge_engine) -> [u64; 8] {
    let s = stats(e).expect("stats");
    [s.blocks_total, s.blocks_used, s.blocks_free, s.blocks_cached, s.prefix_hits, s.prefix_tokens_reused, s.cow_copies, s.n_seqs as u64]
}

impl Handles {
    /// An engine's index, or None (a NULL engine) now and then.
    fn engine(&self, src: &mut Src) -> Option<usize> {
        if self.engines.is_empty() || src.below(8) == 0 {
            None
        } else {
            Some(src.below(self.engines.len()))
        }
    }
}

fn eng_ptr(h: &Handles, i: Option<usize>) -> *mut forge_engine {
    i.map_or(null_mut(), |i| h.engines[i].e)
}

/// The status `forge_engine_decode` must answer for `rows` (one of two
/// where only the pool's block accounting can tell).
fn expect_decode(eng: &Eng, rows: &[forge_batch_row], free_blocks: usize) -> Vec<forge_status> {
    use forge_status::*;
    if rows.is_empty() {
        return vec![FORGE_ERR_INVALID_ARGUMENT];
    }
    // (seq, its length, rows in the batch), in order of first appearance
    let mut order: Vec<(i32, usize, usize)> = Vec::new();
    for r in rows {
        if r.seq < 0 || r.token < 0 || r.pos < 0 || r.token >= eng.n_vocab {
            return vec![FORGE_ERR_INVALID_ARGUMENT];
        }
        let Some(s) = eng.seq(r.seq) else { return vec![FORGE_ERR_INVALID_ARGUMENT] };
        let o = match order.iter().position(|o| o.0 == r.seq) {
            Some(i) => &mut order[i],
            None => {
                order.push((r.seq, s.tokens.len(), 0));
                order.last_mut().unwrap()
            }
        };
        if r.pos as usize != o.1 + o.2 {
            return vec![FORGE_ERR_INVALID_ARGUMENT];
        }
        o.2 += 1;
    }
    if order.iter().any(|&(_, len, n)| len + n > eng.n_ctx) {
        return vec![FORGE_ERR_CONTEXT_FULL];
    }
    // new blocks; at most one copy-on-write per sequence (its last, partly
    // filled block, when shared by a fork or cached)
    let need: usize = order.iter().map(|&(_, len, n)| (len + n).div_ceil(BLOCK) - len.div_ceil(BLOCK)).sum();
    let cow = order.iter().filter(|&&(_, len, _)| len % BLOCK != 0).count();
    if need > free_blocks {
        vec![FORGE_ERR_KV_EXHAUSTED]
    } else if need + cow <= free_blocks {
        vec![FORGE_OK]
    } else {
        vec![FORGE_OK, FORGE_ERR_KV_EXHAUSTED]
    }
}

unsafe fn engine_call(src: &mut Src, h: &mut Handles) {
    use forge_status::*;
    match src.below(20) {
        0 => {
            let c = h.ctx(src);
            let mut p = forge_engine_default_params();
            p.n_ctx = *src.pick(&[0, 0, 0, 1, 16, 32, 32, 48, 64, FORGE_MAX_CTX + 1, u32::MAX]);
            p.kv_budget = *src.pick(&[0, 0, 1, 1, 2 * BLOCK_BYTES, 3 * BLOCK_BYTES, 4 * BLOCK_BYTES, 6 * BLOCK_BYTES, u64::MAX]);
            let pp: *const forge_engine_params = if src.below(8) == 0 { null() } else { &p };
            let mut out = 0x1 as *mut forge_engine;
            let op = if src.below(12) == 0 { null_mut() } else { &mut out as *mut _ };
            let st = check(forge_engine_new(c, pp, op), "forge_engine_new");
            let p = if pp.is_null() { forge_engine_default_params() } else { p };
            let want = if c.is_null() || op.is_null() {
                FORGE_ERR_NULL_POINTER
            } else if p.n_ctx > FORGE_MAX_CTX {
                FORGE_ERR_INVALID_ARGUMENT
            } else {
                FORGE_OK
            };
            // a huge budget is capped at 2^20 blocks: that pool may still be
            // more than the host gives (OUT_OF_MEMORY), never an abort
            let oom_ok = p.kv_budget == u64::MAX && st == FORGE_ERR_OUT_OF_MEMORY;
            assert!(st == want || oom_ok, "forge_engine_new({p:?}): {st:?}, expected {want:?}: {}", last_error());
            if st == FORGE_OK {
                let mut info: forge_model_info = std::mem::zeroed();
                assert_eq!(forge_get_model_info(c, &mut info), FORGE_OK);
                let n_ctx = if p.n_ctx == 0 { info.n_ctx as usize } else { p.n_ctx as usize };
                let eng = Eng { e: out, n_ctx, n_vocab: info.n_vocab, seqs: Vec::new(), issued: Vec::new(), last_rows: Vec::new(), top_k: 0, prompts: Vec::new() };
                let st = stats(out).expect("stats");
                assert!(st.blocks_total as usize >= n_ctx.div_ceil(BLOCK) + 1 && st.blocks_used == 0, "a new engine ({p:?}): {st:?}");
                if h.engines.len() < 2 {
                    h.engines.push(eng);
                } else {
                    forge_engine_free(out);
                }
            } else {
                assert_eq!(out as usize, 1, "forge_engine_new wrote *out on {st:?}");
            }
        }
        1 => {
            if !h.engines.is_empty() && src.below(3) == 0 {
                forge_engine_free(h.engines.swap_remove(src.below(h.engines.len())).e);
            } else {
                forge_engine_free(null_mut());
            }
        }
        2 | 3 => {
            let i = h.engine(src);
            let mut id = SENT_I32;
            let op = if src.below(10) == 0 { null_mut() } else { &mut id as *mut i32 };
            let st = check(forge_seq_new(eng_ptr(h, i), op), "forge_seq_new");
            match i {
                Some(i) if !op.is_null() => {
                    assert_eq!(st, FORGE_OK);
                    h.engines[i].adopt(id, Vec::new());
                }
                _ => assert!(st == FORGE_ERR_NULL_POINTER && id == SENT_I32, "forge_seq_new: {st:?}, *seq_out {id}"),
            }
        }
        4 => {
            let i = h.engine(src);
            let Some(i) = i else {
                assert_eq!(check(forge_seq_free(null_mut(), 0), "forge_seq_free"), FORGE_ERR_NULL_POINTER);
                return;
            };
            let eng = &mut h.engines[i];
            let id = eng.seq_arg(src);
            let before = pool(eng.e);
            let st = check(forge_seq_free(eng.e, id), "forge_seq_free");
            if let Some(k) = eng.seqs.iter().position(|s| s.id == id) {
                assert_eq!(st, FORGE_OK);
                let gone = eng.seqs.swap_remove(k);
                eng.remember(gone.tokens);
            } else {
                assert_eq!(st, FORGE_ERR_INVALID_ARGUMENT, "forge_seq_free({id})");
                assert_eq!(pool(eng.e), before, "a failed forge_seq_free changed the pool");
            }
        }
        5 => {
            let i = h.engine(src);
            let id = i.map_or(0, |i| h.engines[i].seq_arg(src));
            let mut out = SENT_I32;
            let op = if src.below(10) == 0 { null_mut() } else { &mut out as *mut i32 };
            let before = i.map(|i| pool(h.engines[i].e));
            let st = check(forge_seq_fork(eng_ptr(h, i), id, op), "forge_seq_fork");
            let src_seq = i.and_then(|i| h.engines[i].seq(id).cloned());
            let want = match (i, op.is_null(), &src_seq) {
                (None, ..) | (_, true, _) => FORGE_ERR_NULL_POINTER,
                (_, _, None) => FORGE_ERR_INVALID_ARGUMENT,
                _ => FORGE_OK,
            };
            assert_eq!(st, want, "forge_seq_fork({id}): {}", last_error());
            if st == FORGE_OK {
                h.engines[i.unwrap()].adopt(out, src_seq.unwrap().tokens);
            } else {
                assert_eq!(out, SENT_I32, "forge_seq_fork wrote *seq_out on {st:?}");
                if let Some(i) = i {
                    assert_eq!(Some(pool(h.engines[i].e)), before, "a failed forge_seq_fork changed the pool");
                }
            }
        }
        6 => {
            let Some(i) = h.engine(src) else {
                assert_eq!(check(forge_seq_keep(null_mut(), 0, 0), "forge_seq_keep"), FORGE_ERR_NULL_POINTER);
                return;
            };
            let eng = &mut h.engines[i];
            let id = eng.seq_arg(src);
            let len = eng.seq(id).map_or(0, |s| s.tokens.len());
            let n_keep = match src.below(5) {
                0 => len + 1 + src.below(3),
                1 => usize::MAX,
                _ => src.below(len + 1),
            };
            let before = pool(eng.e);
            let st = check(forge_seq_keep(eng.e, id, n_keep), "forge_seq_keep");
            match eng.seqs.iter_mut().find(|s| s.id == id) {
                Some(s) if n_keep <= len => {
                    assert_eq!(st, FORGE_OK);
                    let was = s.tokens.clone();
                    s.tokens.truncate(n_keep);
                    if n_keep < len {
                        eng.remember(was);
                    }
                }
                _ => {
                    assert_eq!(st, FORGE_ERR_INVALID_ARGUMENT, "forge_seq_keep({id}, {n_keep}) of {len}");
                    assert_eq!(pool(eng.e), before, "a failed forge_seq_keep changed the pool");
                }
            }
        }
        7 => {
            let i = h.engine(src);
            let id = i.map_or(0, |i| h.engines[i].seq_arg(src));
            let mut n = SENT_USIZE;
            let np = if src.below(10) == 0 { null_mut() } else { &mut n as *mut usize };
            let st = check(forge_seq_len(eng_ptr(h, i), id, np), "forge_seq_len");
            match (i, np.is_null()) {
                (None, _) | (_, true) => assert!(st == FORGE_ERR_NULL_POINTER && n == SENT_USIZE),
                (Some(i), _) => match h.engines[i].seq(id) {
                    Some(s) => assert!(st == FORGE_OK && n == s.tokens.len(), "forge_seq_len({id}): {st:?}, {n}"),
                    None => assert!(st == FORGE_ERR_INVALID_ARGUMENT && n == SENT_USIZE, "forge_seq_len({id}): {st:?}"),
                },
            }
        }
        8 => {
            let i = h.engine(src);
            let nv = i.map_or(300, |i| h.engines[i].n_vocab);
            // mostly an empty sequence and a prompt whose blocks may be
            // cached (a live or a past sequence's tokens) plus a few more
            let (id, mut prompt) = match i.map(|i| &h.engines[i]) {
                None => (0, Vec::new()),
                Some(eng) => {
                    let empty: Vec<i32> = eng.seqs.iter().filter(|s| s.tokens.is_empty()).map(|s| s.id).collect();
                    let id = if !empty.is_empty() && src.below(4) > 0 { *src.pick(&empty) } else { eng.seq_arg(src) };
                    let known: Vec<&Vec<i32>> = eng.seqs.iter().map(|s| &s.tokens).filter(|t| !t.is_empty()).chain(&eng.prompts).collect();
                    (id, if !known.is_empty() && src.below(4) > 0 { (*src.pick(&known)).clone() } else { Vec::new() })
                }
            };
            prompt.extend(tokens(src, nv));
            let (tp, tn) = ptr_len(src, &prompt);
            let mut n = SENT_USIZE;
            let np = if src.below(10) == 0 { null_mut() } else { &mut n as *mut usize };
            let before = i.map(|i| pool(h.engines[i].e));
            let st = check(forge_seq_reuse_prefix(eng_ptr(h, i), id, tp, tn, np), "forge_seq_reuse_prefix");
            let given = if tp.is_null() { &[][..] } else { &prompt[..] };
            let seq = i.and_then(|i| h.engines[i].seq(id));
            let want = if i.is_none() || np.is_null() || (tp.is_null() && tn > 0) {
                FORGE_ERR_NULL_POINTER
            } else if given.iter().any(|&t| t < 0 || t >= nv) || seq.map_or(true, |s| !s.tokens.is_empty()) {
                FORGE_ERR_INVALID_ARGUMENT
            } else {
                FORGE_OK
            };
            assert_eq!(st, want, "forge_seq_reuse_prefix({id}, {} tokens): {}", given.len(), last_error());
            if st == FORGE_OK {
                assert!(n % BLOCK == 0 && n <= given.len().saturating_sub(1), "reused {n} of {} tokens", given.len());
                let eng = &mut h.engines[i.unwrap()];
                eng.seqs.iter_mut().find(|s| s.id == id).unwrap().tokens = given[..n].to_vec();
            } else {
                assert_eq!(n, SENT_USIZE, "forge_seq_reuse_prefix wrote *n_reused on {st:?}");
                if let Some(i) = i {
                    assert_eq!(Some(pool(h.engines[i].e)), before, "a failed forge_seq_reuse_prefix changed the pool");
                }
            }
        }
        9..=14 => decode(src, h),
        15..=17 => {
            let i = h.engine(src);
            match src.below(4) {
                0 => set_top_k(src, h, i),
                1 => top(src, h, i),
                _ => logits(src, h, i),
            }
        }
        _ => {
            let i = h.engine(src);
            let mut s: forge_kv_stats = std::mem::zeroed();
            s.blocks_total = SENT_USIZE as u64;
            s.n_seqs = SENT_I32 as u32;
            let sp = if src.below(8) == 0 { null_mut() } else { &mut s as *mut _ };
            let st = check(forge_engine_stats(eng_ptr(h, i), sp), "forge_engine_stats");
            match i {
                Some(i) if !sp.is_null() => {
                    assert_eq!(st, FORGE_OK);
                    let eng = &h.engines[i];
                    assert!(s.block_size as usize == BLOCK && s.blocks_used + s.blocks_free == s.blocks_total, "{s:?}");
                    assert_eq!(s.n_seqs as usize, eng.seqs.len());
                }
                _ => assert!(st == FORGE_ERR_NULL_POINTER && s.blocks_total == SENT_USIZE as u64 && s.n_seqs == SENT_I32 as u32),
            }
            // preemption stays off here (the harness models a pool that
            // refuses): the list is always empty, and a NULL is refused
            let mut ids = [SENT_I32; 2];
            let mut n = SENT_USIZE;
            let ip = if src.below(4) == 0 { null_mut() } else { ids.as_mut_ptr() };
            let st = check(forge_engine_preempted(eng_ptr(h, i), ip, if ip.is_null() { 0 } else { 2 }, &mut n), "forge_engine_preempted");
            match i {
                Some(_) => assert!(st == FORGE_OK && n == 0, "forge_engine_preempted: {st:?}, {n}"),
                None => assert!(st == FORGE_ERR_NULL_POINTER && n == SENT_USIZE),
            }
            assert_eq!(ids, [SENT_I32; 2], "forge_engine_preempted wrote ids");
        }
    }
}

/// forge_engine_decode of a random batch: groups of rows that continue
/// random sequences (a token or a prefill chunk each, in order or
/// interleaved), now and then one row broken.
unsafe fn decode(src: &mut Src, h: &mut Handles) {
    use forge_status::*;
    let i = h.engine(src);
    let mut rows: Vec<forge_batch_row> = Vec::new();
    if let Some(i) = i {
        let eng = &h.engines[i];
        let nv = eng.n_vocab;
        let mut groups: Vec<Vec<forge_batch_row>> = Vec::new();
        let mut next: Vec<(i32, usize)> = Vec::new();
        for _ in 0..*src.pick(&[1, 1, 1, 2, 2, 3]) {
            let seq = eng.seq_arg(src);
            let n = *src.pick(&[1, 1, 1, 1, 2, 3, 5, 8, 12, 16, 17, 20, 24, 33]);
            let seed = src.u8() as usize;
            let mode = src.below(4);
            let from = match next.iter().find(|x| x.0 == seq) {
                Some(x) => x.1,
                None => eng.seq(seq).map_or(0, |s| s.tokens.len()),
            };
            groups.push(
                (0..n)
                    .map(|k| forge_batch_row {
                        seq,
                        token: ((seed + k * 7) % nv as usize) as i32,
                        pos: (from + k) as i32,
                        logits: match mode {
                            0 => 0,
                            1 => (k + 1 == n) as i32,
                            2 => 1,
                            _ => (k % 2) as i32 * 3,
                        },
                    })
                    .collect(),
            );
            next.retain(|x| x.0 != seq);
            next.push((seq, from + n));
        }
        if src.bool() {
            rows = groups.concat();
        } else {
            // round robin: each sequence's rows stay in order
            let most = groups.iter().map(Vec::len).max().unwrap_or(0);
            for k in 0..most {
                rows.extend(groups.iter().filter_map(|g| g.get(k)));
            }
        }
        if !rows.is_empty() && src.below(6) == 0 {
            let k = src.below(rows.len());
            let r = &mut rows[k];
            match src.below(8) {
                0 => r.token = -1 - src.below(3) as i32,
                1 => r.token = nv + src.below(3) as i32,
                2 => r.token = *src.pick(&[i32::MIN, i32::MAX]),
                3 => r.pos -= 1,
                4 => r.pos += 1,
                5 => r.pos = *src.pick(&[-1, i32::MIN, i32::MAX]),
                6 => r.seq = *src.pick(&[-1, i32::MIN]),
                _ => r.seq = 12_345,
            }
        }
    } else {
        rows.push(forge_batch_row { seq: 0, token: 1, pos: 0, logits: 1 });
    }
    let (rp, rn) = match src.below(16) {
        0 => (null(), rows.len()),
        1 => (null(), 0),
        2 => (rows.as_ptr(), 0),
        _ => (rows.as_ptr(), rows.len()),
    };
    let before = i.map(|i| {
        let e = h.engines[i].e;
        (pool(e), stats(e).unwrap().blocks_free as usize)
    });
    let st = check(forge_engine_decode(eng_ptr(h, i), rp, rn), "forge_engine_decode");
    let Some(i) = i else {
        assert_eq!(st, FORGE_ERR_NULL_POINTER);
        return;
    };
    let (pool_before, free) = before.unwrap();
    let eng = &mut h.engines[i];
    let want = if rp.is_null() && rn > 0 { vec![FORGE_ERR_NULL_POINTER] } else { expect_decode(eng, &rows[..rn], free) };
    assert!(want.contains(&st), "forge_engine_decode({:?}): {st:?}, want {want:?}: {}", &rows[..rn], last_error());
    if st == FORGE_OK {
        for r in &rows[..rn] {
            eng.seqs.iter_mut().find(|s| s.id == r.seq).unwrap().tokens.push(r.token);
        }
        eng.last_rows = rows[..rn].iter().map(|r| r.logits != 0).collect();
        if src.bool() {
            // as a caller would, right after the batch
            if h.engines[i].top_k > 0 {
                top(src, h, Some(i));
            } else {
                logits(src, h, Some(i));
            }
        }
    } else {
        // all or nothing: no sequence moved (`verify`), no block taken
        assert_eq!(pool(eng.e), pool_before, "a failed forge_engine_decode ({st:?}) changed the pool");
    }
}

/// forge_engine_set_top_k with a random k, valid or not: a new mode drops
/// the last batch's results.
unsafe fn set_top_k(src: &mut Src, h: &mut Handles, i: Option<usize>) {
    use forge_status::*;
    let nv = i.map_or(300, |i| h.engines[i].n_vocab as usize);
    let k = *src.pick(&[0u32, 0, 1, 1, 2, 5, 40, FORGE_TOP_MAX, FORGE_TOP_MAX + 1, nv as u32 + 1, u32::MAX]);
    let st = check(forge_engine_set_top_k(eng_ptr(h, i), k), "forge_engine_set_top_k");
    let Some(i) = i else {
        return assert_eq!(st, FORGE_ERR_NULL_POINTER);
    };
    let valid = (k as usize) <= FORGE_TOP_MAX.min(nv as u32) as usize;
    assert_eq!(st, if valid { FORGE_OK } else { FORGE_ERR_INVALID_ARGUMENT }, "forge_engine_set_top_k({k}) of {nv}");
    if valid {
        h.engines[i].top_k = k as usize;
        h.engines[i].last_rows.clear();
    }
}

/// A row of the last batch to read (`last`: which rows asked for output):
/// mostly one that asked, at times one that did not or past the end.
fn pick_row(src: &mut Src, last: &[bool]) -> usize {
    let asked: Vec<usize> = (0..last.len()).filter(|&r| last[r]).collect();
    match src.below(6) {
        0 => last.len() + src.below(3),
        1 => usize::MAX,
        2 => src.below(last.len().max(1)),
        _ if !asked.is_empty() => *src.pick(&asked),
        _ => 0,
    }
}

/// forge_engine_top of a random row (mostly one that asked for logits)
/// into buffers of random size, NULL pointers at times.
unsafe fn top(src: &mut Src, h: &mut Handles, i: Option<usize>) {
    use forge_status::*;
    let (nv, k, last) = i.map_or((300, 0, Vec::new()), |i| (h.engines[i].n_vocab as usize, h.engines[i].top_k, h.engines[i].last_rows.clone()));
    let row = pick_row(src, &last);
    let cap = match src.below(5) {
        0 => k.saturating_sub(1),
        1 => src.below(k + 1),
        2 => k + 3,
        _ => k,
    };
    let mut ids = vec![SENT_I32; cap];
    let mut vals = vec![f32::from_bits(SENT_F32); cap];
    let (mut n, mut lse) = (SENT_USIZE, f32::from_bits(SENT_F32));
    let ip = if src.below(10) == 0 { null_mut() } else { ids.as_mut_ptr() };
    let vp = if src.below(10) == 0 { null_mut() } else { vals.as_mut_ptr() };
    let np = if src.below(12) == 0 { null_mut() } else { &mut n as *mut usize };
    let lp = if src.below(4) == 0 { null_mut() } else { &mut lse as *mut f32 };
    let st = check(forge_engine_top(eng_ptr(h, i), row, ip, vp, cap, np, lp), "forge_engine_top");
    let want = if i.is_none() || np.is_null() {
        FORGE_ERR_NULL_POINTER
    } else if k == 0 || !last.get(row).copied().unwrap_or(false) {
        FORGE_ERR_INVALID_ARGUMENT
    } else if cap > 0 && (ip.is_null() || vp.is_null()) {
        FORGE_ERR_NULL_POINTER
    } else if cap < k {
        FORGE_ERR_BUFFER_TOO_SMALL
    } else {
        FORGE_OK
    };
    assert_eq!(st, want, "forge_engine_top(row {row} of {last:?}, k {k}, cap {cap})");
    let untouched = |from: usize| ids[from..].iter().all(|&x| x == SENT_I32) && vals[from..].iter().all(|x| x.to_bits() == SENT_F32);
    match st {
        FORGE_OK => {
            assert!(n == k && untouched(k), "forge_engine_top: *n_out {n}, k {k}, or written past k");
            assert!(ids[..k].iter().all(|&t| t >= 0 && (t as usize) < nv), "forge_engine_top: ids {:?}", &ids[..k]);
            assert!(vals[..k].windows(2).all(|w| w[0] >= w[1]) && vals[..k].iter().all(|x| x.is_finite()), "forge_engine_top: logits {:?}", &vals[..k]);
            assert!(lp.is_null() || lse >= vals[0], "forge_engine_top: log-sum-exp {lse} below the top logit {}", vals[0]);
        }
        FORGE_ERR_BUFFER_TOO_SMALL => assert!(n == k && untouched(0) && lse.to_bits() == SENT_F32, "forge_engine_top: *n_out {n} on BUFFER_TOO_SMALL"),
        _ => assert!((np.is_null() || n == SENT_USIZE) && untouched(0) && lse.to_bits() == SENT_F32, "forge_engine_top wrote on {st:?}"),
    }
}

/// forge_engine_logits of a random row of the last batch (mostly one that
/// asked for logits) into a buffer of random size.
unsafe fn logits(src: &mut Src, h: &mut Handles, i: Option<usize>) {
    use forge_status::*;
    let (nv, last) = i.map_or((300, Vec::new()), |i| (h.engines[i].n_vocab as usize, h.engines[i].last_rows.clone()));
    let row = pick_row(src, &last);
    let cap = match src.below(6) {
        0 => nv - 1,
        1 => src.below(nv),
        2 => nv + 3,
        _ => nv,
    };
    let mut buf = vec![f32::from_bits(SENT_F32); cap];
    let op = if src.below(8) == 0 { null_mut() } else { buf.as_mut_ptr() };
    let st = check(forge_engine_logits(eng_ptr(h, i), row, op, cap), "forge_engine_logits");
    let top_mode = i.is_some_and(|i| h.engines[i].top_k > 0);
    let want: &[forge_status] = if i.is_none() {
        &[FORGE_ERR_NULL_POINTER]
    } else if top_mode || !last.get(row).copied().unwrap_or(false) {
        &[FORGE_ERR_INVALID_ARGUMENT]
    } else if op.is_null() && cap > 0 {
        // NULL with a non-zero cap: NULL_POINTER by the (pointer, length) rule
        &[FORGE_ERR_NULL_POINTER]
    } else if cap < nv {
        &[FORGE_ERR_BUFFER_TOO_SMALL]
    } else if op.is_null() {
        &[FORGE_ERR_NULL_POINTER]
    } else {
        &[FORGE_OK]
    };
    assert!(want.contains(&st), "forge_engine_logits(row {row} of {last:?}, cap {cap}): {st:?}, want {want:?}");
    let wrote = buf.iter().take_while(|x| x.to_bits() != SENT_F32).count();
    if st == FORGE_OK {
        assert!(wrote == nv && buf[..nv].iter().all(|x| x.is_finite()), "logits: {wrote} of {nv} written");
        assert!(buf[nv..].iter().all(|x| x.to_bits() == SENT_F32), "logits written past n_vocab");
    } else {
        assert!(buf.iter().all(|x| x.to_bits() == SENT_F32), "forge_engine_logits wrote on {st:?}");
    }
}
