//! The C ABI's out-parameter contract, export by export (the module doc of
//! src/ffi/mod.rs):
//!
//! - out-parameters are written only on success; the one exception is
//!   FORGE_ERR_BUFFER_TOO_SMALL, where the size out-parameter (`*n_out`)
//!   receives the size needed and the buffer stays as it was;
//! - on any other failure (NULL_POINTER, INVALID_ARGUMENT, INVALID_UTF8,
//!   BUSY, CONTEXT_FULL, ...) no out-parameter is touched (and a failed
//!   eval/generate/kv_reset leaves `forge_n_past` where it was);
//! - every failing call leaves its own message in `forge_last_error()`;
//! - a (pointer, length) pair with length 0 may have a NULL pointer (an
//!   empty input), and a non-zero length with NULL is NULL_POINTER.
//!
//! `header_declares_exactly_the_exports_with_cases` parses
//! include/rocmforge.h: a new export without a case here, or a case for an
//! export that is gone, fails it. `every_export_keeps_the_contract` runs the
//! cases on SmolLM2 (n_ctx 16; engines of 16 to 512 positions) and lists
//! every broken check at the end. The engine's cases also check that a
//! failing call moves no sequence (`forge_seq_len`) and takes nothing from
//! the KV pool (`forge_engine_stats`).
//! Checks marked `was a bug` failed on the library as this test found it
//! (fixed in the same change); they are not to be relaxed.
//!
//! Out-parameters are [`Out`] buffers pre-filled with a byte pattern (0xA5)
//! or with given values; "untouched" means byte for byte as they were. The
//! library is never handed an invalid non-NULL pointer: the pattern is only
//! a value stored where the library may write.

mod common;

use std::collections::BTreeSet;
use std::ffi::{c_char, c_void, CStr, CString};
use std::marker::PhantomData;
use std::ptr::{null, null_mut};

use rocmforge::ffi::forge_status::*;
use rocmforge::ffi::*;

const N_CTX: u32 = 16;
const AUTO: i32 = forge_backend::FORGE_BACKEND_AUTO as i32;
const CPU: i32 = forge_backend::FORGE_BACKEND_CPU as i32;
const CUDA: i32 = forge_backend::FORGE_BACKEND_CUDA as i32;
const HIP: i32 = forge_backend::FORGE_BACKEND_HIP as i32;

// ---- the case table ------------------------------------------------------------

type Case = fn(&mut Report, &Env);

/// `export => case`: naming the export as a Rust item makes a case for an
/// export removed from src/ffi a compile error; the header test catches the
/// rest (an export without a case, a case the header lacks).
macro_rules! cases {
    ($($export:ident => $case:ident),* $(,)?) => {
        vec![$({
            let _exists = $export as *const ();
            (stringify!($export), $case as Case)
        }),*]
    };
}

fn cases() -> Vec<(&'static str, Case)> {
    cases![
        forge_version => version,
        forge_abi_version => abi_version,
        forge_last_error => last_error,
        forge_backend_compiled => backend_compiled,
        forge_device_count => device_count,
        forge_ctx_backend => ctx_backend,
        forge_load_default_params => load_default_params,
        forge_load => load,
        forge_ctx_clone_session => ctx_clone_session,
        forge_free => free,
        forge_eval => eval,
        forge_kv_reset => kv_reset,
        forge_n_past => n_past,
        forge_pooling_type => pooling_type,
        forge_is_encoder => is_encoder,
        forge_embed => embed,
        forge_n_vocab => n_vocab,
        forge_tokenize => tokenize,
        forge_token_to_piece => token_to_piece,
        forge_detokenize => detokenize,
        forge_get_model_info => get_model_info,
        forge_token_is_eog => token_is_eog,
        forge_sampler_default_params => sampler_default_params,
        forge_sampler_new => sampler_new,
        forge_sampler_free => sampler_free,
        forge_sampler_reset => sampler_reset,
        forge_sampler_accept => sampler_accept,
        forge_sampler_sample => sampler_sample,
        forge_generate_default_params => generate_default_params,
        forge_generate => generate,
        forge_engine_default_params => engine_default_params,
        forge_engine_new => engine_new,
        forge_engine_free => engine_free,
        forge_seq_new => seq_new,
        forge_seq_free => seq_free,
        forge_seq_fork => seq_fork,
        forge_seq_keep => seq_keep,
        forge_seq_len => seq_len,
        forge_seq_reuse_prefix => seq_reuse_prefix,
        forge_engine_decode => engine_decode,
        forge_engine_logits => engine_logits,
        forge_engine_set_top_k => engine_set_top_k,
        forge_engine_top => engine_top,
        forge_engine_stats => engine_stats,
        forge_engine_set_preempt => engine_set_preempt,
        forge_engine_preempted => engine_preempted,
    ]
}

// ---- the tests -------------------------------------------------------------------

const HEADER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/rocmforge.h");

#[test]
fn header_declares_exactly_the_exports_with_cases() {
    let declared = header_functions(&std::fs::read_to_string(HEADER).unwrap());
    assert!(declared.contains("forge_load") && declared.contains("forge_generate"), "header parse found {declared:?}");
    let covered: BTreeSet<String> = cases().iter().map(|(n, _)| n.to_string()).collect();
    let missing: Vec<_> = declared.difference(&covered).collect();
    let stale: Vec<_> = covered.difference(&declared).collect();
    println!("{} functions declared in include/rocmforge.h, {} cases", declared.len(), covered.len());
    assert!(
        missing.is_empty() && stale.is_empty(),
        "tests/ffi_contract.rs is out of step with include/rocmforge.h:\n  exports without a case: {missing:?}\n  cases for no export: {stale:?}"
    );
}

#[test]
fn every_export_keeps_the_contract() {
    let env = Env::new();
    let mut r = Report::default();
    for (name, case) in cases() {
        let (checks, failures) = (r.checks, r.failures.len());
        case(&mut r, &env);
        let bad = r.failures.len() - failures;
        println!("{name:32} {:3} checks{}", r.checks - checks, if bad > 0 { format!(", {bad} FAILED") } else { String::new() });
    }
    println!("{} checks over {} exports, {} failed", r.checks, cases().len(), r.failures.len());
    assert!(r.failures.is_empty(), "{} contract violations:\n  {}", r.failures.len(), r.failures.join("\n  "));
}

/// Every `forge_*` identifier that is directly followed by `(` outside
/// comments: the functions the header declares (a function-pointer typedef
/// such as `(*forge_token_cb)(` is followed by `)`, not `(`).
fn header_functions(header: &str) -> BTreeSet<String> {
    let mut code = String::new();
    let mut rest = header;
    while !rest.is_empty() {
        let (line_c, block_c) = (rest.find("//"), rest.find("/*"));
        match (line_c, block_c) {
            (Some(l), b) if b.map_or(true, |b| l < b) => {
                code.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
            }
            (_, Some(b)) => {
                code.push_str(&rest[..b]);
                code.push(' ');
                rest = rest[b + 2..].find("*/").map_or("", |e| &rest[b + 2 + e + 2..]);
            }
            _ => {
                code.push_str(rest);
                rest = "";
            }
        }
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("forge_") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue; // inside a longer identifier
        }
        let ident_len = code[at..].find(|c: char| !is_ident(c)).unwrap_or(code.len() - at);
        if code[at + ident_len..].trim_start_matches([' ', '\t']).starts_with('(') {
            names.insert(code[at..at + ident_len].to_string());
        }
    }
    names
}

// ---- checking ------------------------------------------------------------------

const POISON: u8 = 0xA5;

/// Storage for `n` values of `T` handed to the library as an out-parameter
/// (or an in/out buffer), pre-filled with POISON bytes or with given values.
/// `untouched()` compares every byte with how it started.
struct Out<T> {
    words: Vec<u64>,
    init: Vec<u64>,
    n: usize,
    _t: PhantomData<T>,
}

impl<T: Copy> Out<T> {
    fn poisoned(n: usize) -> Self {
        assert!(std::mem::align_of::<T>() <= 8 && n > 0);
        let words = vec![u64::from_ne_bytes([POISON; 8]); (n * std::mem::size_of::<T>()).div_ceil(8)];
        Out { init: words.clone(), words, n, _t: PhantomData }
    }
    fn one() -> Self {
        Self::poisoned(1)
    }
    fn with(values: &[T]) -> Self {
        let mut o = Self::poisoned(values.len());
        // SAFETY: room for values.len() items of T, aligned (align <= 8).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), o.ptr(), values.len()) };
        o.init = o.words.clone();
        o
    }
    fn ptr(&mut self) -> *mut T {
        self.words.as_mut_ptr().cast()
    }
    fn cap(&self) -> usize {
        self.n
    }
    fn untouched(&self) -> bool {
        self.words == self.init
    }
    /// The first value. Only where the library wrote it, or for a `T` every
    /// bit pattern of which is valid (integers, floats, raw pointers).
    fn get(&self) -> T {
        self.slice(1)[0]
    }
    fn slice(&self, len: usize) -> &[T] {
        assert!(len <= self.n, "{len} > {}", self.n);
        // SAFETY: len <= n initialized items (see `get` on validity).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), len) }
    }
}

/// `forge_n_past(ctx)` as it was: a failed eval/generate/kv_reset must not
/// move it.
struct NPast {
    ctx: *const forge_ctx,
    was: usize,
}

impl NPast {
    fn of(ctx: *const forge_ctx) -> Self {
        NPast { ctx, was: unsafe { forge_n_past(ctx) } }
    }
    fn untouched(&self) -> bool {
        unsafe { forge_n_past(self.ctx) == self.was }
    }
}

#[derive(Default)]
struct Report {
    checks: usize,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    /// The last error is `"<func>: <something>"`: this call's own message.
    fn own_message(&mut self, func: &str, case: &str) {
        let msg = common::last_error();
        let ok = msg.strip_prefix(func).and_then(|m| m.strip_prefix(": ")).is_some_and(|m| !m.is_empty());
        self.check(ok, || format!("{func} [{case}]: no message of its own in forge_last_error() (it holds {msg:?})"));
    }

    /// A failing call: the status wanted, its own message, outs untouched.
    fn failed(&mut self, func: &str, case: &str, got: forge_status, want: forge_status, outs: &[(&str, bool)]) {
        let msg = common::last_error();
        self.check(got == want, || format!("{func} [{case}]: {got:?}, want {want:?} (last error: {msg:?})"));
        if got != FORGE_OK {
            self.own_message(func, case);
        }
        for &(name, untouched) in outs {
            self.check(untouched, || format!("{func} [{case}]: `{name}` changed by a call that returned {got:?}"));
        }
    }

    fn ok(&mut self, func: &str, case: &str, got: forge_status) {
        self.check(got == FORGE_OK, || format!("{func} [{case}]: {got:?}, want FORGE_OK (last error: {:?})", common::last_error()));
    }
}

/// Leave a message of another export in forge_last_error(), so that a stale
/// message cannot pass for the message of the call under test.
fn prime_last_error(func: &str) {
    if func == "forge_n_vocab" {
        forge_backend_compiled(-999);
    } else {
        unsafe { forge_n_vocab(null()) };
    }
}

/// `fails!(r, WANT, "case", forge_x(args..), [outs..])`: the call returns
/// WANT with its own message, and every listed out (an [`Out`] or an
/// [`NPast`]) is untouched.
macro_rules! fails {
    ($r:expr, $want:ident, $case:expr, $f:ident($($arg:expr),* $(,)?) $(, [$($out:expr),* $(,)?])?) => {{
        prime_last_error(stringify!($f));
        #[allow(unused_unsafe)]
        let got = unsafe { $f($($arg),*) };
        $r.failed(stringify!($f), $case, got, $want, &[$($((stringify!($out), $out.untouched())),*)?]);
    }};
}

/// `too_small!(r, "case", forge_x(args..), n == NEED, [outs..])`:
/// BUFFER_TOO_SMALL with its own message, `*n` = NEED, the outs untouched.
macro_rules! too_small {
    ($r:expr, $case:expr, $f:ident($($arg:expr),* $(,)?), $n:ident == $need:expr $(, [$($out:expr),* $(,)?])?) => {{
        fails!($r, FORGE_ERR_BUFFER_TOO_SMALL, $case, $f($($arg),*) $(, [$($out),*])?);
        let (got, need): (usize, usize) = ($n.get(), $need);
        $r.check(got == need, || {
            format!("{} [{}]: *{} = {got:#x} on BUFFER_TOO_SMALL, want the size needed, {need}", stringify!($f), $case, stringify!($n))
        });
    }};
}

/// `ok!(r, "case", forge_x(args..))`: FORGE_OK.
macro_rules! ok {
    ($r:expr, $case:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        #[allow(unused_unsafe)]
        let got = unsafe { $f($($arg),*) };
        $r.ok(stringify!($f), $case, got);
    }};
}

/// `falls_back!(r, "case", forge_x(args..) == FALLBACK)`: a value-returning
/// export given a NULL/invalid argument returns its documented fallback and
/// leaves its own message.
macro_rules! falls_back {
    ($r:expr, $case:expr, $f:ident($($arg:expr),* $(,)?) == $want:expr) => {{
        prime_last_error(stringify!($f));
        #[allow(unused_unsafe)]
        let got = unsafe { $f($($arg),*) };
        let want = $want;
        $r.check(got == want, || format!("{} [{}]: returned {got:?}, want the fallback {want:?}", stringify!($f), $case));
        $r.own_message(stringify!($f), $case);
    }};
}

/// A no-op call (free(NULL), a defaults getter) leaves forge_last_error()
/// as it was.
fn no_message(r: &mut Report, func: &str, case: &str, before: &str) {
    let now = common::last_error();
    r.check(now == before, || format!("{func} [{case}]: changed forge_last_error() from {before:?} to {now:?}"));
}

// ---- fixtures ------------------------------------------------------------------

/// A context freed on drop.
struct Ctx(*mut forge_ctx);
impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe { forge_free(self.0) }
    }
}

/// A sampler freed on drop.
struct Smp(*mut forge_sampler);
impl Drop for Smp {
    fn drop(&mut self) {
        unsafe { forge_sampler_free(self.0) }
    }
}

struct Env {
    path: CString,
    ctx: Ctx,
    n_vocab: usize,
    /// "Hello world" tokenized (no specials).
    hello: Vec<i32>,
}

const HELLO: &str = "Hello world";

fn load_params() -> forge_load_params {
    let mut p = forge_load_default_params();
    p.n_ctx = N_CTX;
    p.n_threads = 2;
    p
}

impl Env {
    fn new() -> Env {
        let path = CString::new(common::model(common::SMOLLM2).to_str().unwrap()).unwrap();
        let mut ctx = null_mut();
        let st = unsafe { forge_load(path.as_ptr(), &load_params(), &mut ctx) };
        assert_eq!(st, FORGE_OK, "{}", common::last_error());
        let ctx = Ctx(ctx);
        let n_vocab = unsafe { forge_n_vocab(ctx.0) };
        assert!(n_vocab > 0);
        let mut hello = vec![0i32; 64];
        let mut n = 0usize;
        let st = unsafe { forge_tokenize(ctx.0, HELLO.as_ptr().cast(), HELLO.len(), false, false, hello.as_mut_ptr(), 64, &mut n) };
        assert_eq!(st, FORGE_OK, "{}", common::last_error());
        hello.truncate(n);
        assert!(n >= 2, "{HELLO:?} is {hello:?}");
        Env { path, ctx, n_vocab: n_vocab as usize, hello }
    }

    /// A context of its own (same model, empty sequence).
    fn fresh(&self) -> Ctx {
        let mut c = null_mut();
        let st = unsafe { forge_ctx_clone_session(self.ctx.0, &mut c) };
        assert_eq!(st, FORGE_OK, "{}", common::last_error());
        Ctx(c)
    }
}

fn greedy() -> Smp {
    let mut p = forge_sampler_default_params();
    p.temperature = 0.0;
    let mut s = null_mut();
    assert_eq!(unsafe { forge_sampler_new(&p, &mut s) }, FORGE_OK, "{}", common::last_error());
    Smp(s)
}

fn cstr(bytes: &[u8]) -> CString {
    CString::new(bytes).unwrap()
}

// ---- cases: version, errors, backends ------------------------------------------

fn version(r: &mut Report, _: &Env) {
    let v = forge_version();
    r.check(!v.is_null(), || "forge_version: NULL".into());
    if !v.is_null() {
        let v = unsafe { CStr::from_ptr(v) }.to_str().unwrap_or("<not UTF-8>");
        r.check(v == env!("CARGO_PKG_VERSION"), || format!("forge_version: {v:?}, want {:?}", env!("CARGO_PKG_VERSION")));
    }
}

fn abi_version(r: &mut Report, _: &Env) {
    let header = std::fs::read_to_string(HEADER).unwrap();
    let define = header.lines().find_map(|l| l.strip_prefix("#define FORGE_ABI_VERSION ")).and_then(|v| v.trim().parse::<u32>().ok());
    let v = forge_abi_version();
    r.check(v == FORGE_ABI_VERSION && Some(v) == define, || format!("forge_abi_version: {v}, header #define {define:?}"));
}

fn last_error(r: &mut Report, _: &Env) {
    unsafe { forge_n_vocab(null()) };
    let p = forge_last_error();
    r.check(!p.is_null(), || "forge_last_error: NULL".into());
    r.own_message("forge_n_vocab", "the message of the last failing call");
    // a successful call leaves it alone
    forge_abi_version();
    r.own_message("forge_n_vocab", "after a successful call");
    r.check(forge_last_error() == p, || "forge_last_error: moved without a failing call".into());
}

fn backend_compiled(r: &mut Report, _: &Env) {
    for bad in [42, -1, 4, i32::MIN] {
        falls_back!(r, &format!("backend {bad}"), forge_backend_compiled(bad) == false);
    }
    r.check(forge_backend_compiled(CPU), || "forge_backend_compiled(CPU) is false".into());
    r.check(forge_backend_compiled(AUTO), || "forge_backend_compiled(AUTO) is false".into());
}

fn device_count(r: &mut Report, _: &Env) {
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL", forge_device_count(CPU, null_mut()));
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, backend 42", forge_device_count(42, null_mut()));
    for bad in [42, -1, 4] {
        let mut out = Out::<i32>::one();
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, &format!("backend {bad}"), forge_device_count(bad, out.ptr()), [out]);
    }
    for (b, name) in [(CPU, "CPU"), (AUTO, "AUTO")] {
        let mut out = Out::<i32>::one();
        ok!(r, name, forge_device_count(b, out.ptr()));
        r.check(out.get() == 1, || format!("forge_device_count({name}): {}, want 1", out.get()));
    }
    // GPU backends: a count, or BACKEND_UNAVAILABLE with *out untouched.
    for (b, name) in [(CUDA, "CUDA"), (HIP, "HIP")] {
        let mut out = Out::<i32>::one();
        prime_last_error("forge_device_count");
        let st = unsafe { forge_device_count(b, out.ptr()) };
        println!("  (forge_device_count({name}) on this machine: {st:?})");
        if st == FORGE_OK {
            r.check(out.get() >= 0, || format!("forge_device_count({name}): {}", out.get()));
        } else {
            r.failed("forge_device_count", name, st, FORGE_ERR_BACKEND_UNAVAILABLE, &[("out", out.untouched())]);
        }
    }
}

fn ctx_backend(r: &mut Report, env: &Env) {
    let ctx = env.ctx.0;
    let desc = {
        let (mut buf, mut n) = (Out::<c_char>::poisoned(256), Out::<usize>::one());
        ok!(r, "256 bytes", forge_ctx_backend(ctx, buf.ptr(), buf.cap(), n.ptr()));
        let d: Vec<u8> = buf.slice(n.get().min(256)).iter().map(|&c| c as u8).collect();
        String::from_utf8_lossy(&d).into_owned()
    };
    r.check(desc.starts_with("cpu") || desc.contains(':'), || format!("forge_ctx_backend: {desc:?}"));
    let need = desc.len();

    let (mut buf, mut n) = (Out::<c_char>::poisoned(256), Out::<usize>::one());
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_ctx_backend(null(), buf.ptr(), buf.cap(), n.ptr()), [buf, n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_ctx_backend(ctx, buf.ptr(), buf.cap(), null_mut()), [buf]);
    fails!(r, FORGE_ERR_NULL_POINTER, "buf NULL, cap 256", forge_ctx_backend(ctx, null_mut(), 256, n.ptr()), [n]);
    // was a bug (write_out): a NULL buf with a non-zero cap smaller than the
    // text was BUFFER_TOO_SMALL with *n_out written; the (pointer, length)
    // rule makes it NULL_POINTER with nothing written.
    let mut n = Out::<usize>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "buf NULL, cap 3", forge_ctx_backend(ctx, null_mut(), 3, n.ptr()), [n]);

    let (mut buf, mut n) = (Out::<c_char>::poisoned(3), Out::<usize>::one());
    too_small!(r, "cap 3", forge_ctx_backend(ctx, buf.ptr(), 3, n.ptr()), n == need, [buf]);
    let mut n = Out::<usize>::one();
    too_small!(r, "size query (NULL, 0)", forge_ctx_backend(ctx, null_mut(), 0, n.ptr()), n == need);
}

// ---- cases: loading and contexts -----------------------------------------------

/// A change to the load parameters.
type SetLoad = fn(&mut forge_load_params);

unsafe extern "C" fn cancel_load(_progress: f32, _user_data: *mut c_void) -> bool {
    false
}

fn load(r: &mut Report, env: &Env) {
    let path = env.path.as_ptr();
    let good = load_params();

    let mut out = Out::<*mut forge_ctx>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "path NULL", forge_load(null(), &good, out.ptr()), [out]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL", forge_load(path, &good, null_mut()));
    let not_utf8 = cstr(b"/tmp/\xff\xfe.gguf");
    fails!(r, FORGE_ERR_INVALID_UTF8, "path not UTF-8", forge_load(not_utf8.as_ptr(), &good, out.ptr()), [out]);

    let invalid: [(&str, SetLoad); 8] = [
        ("backend 42", |p| p.backend = 42),
        ("backend -1", |p| p.backend = -1),
        ("CUDA, gpu_index -1", |p| (p.backend, p.gpu_index) = (CUDA, -1)),
        ("HIP, gpu_index -1", |p| (p.backend, p.gpu_index) = (HIP, -1)),
        ("n_threads 100000", |p| p.n_threads = 100_000),
        ("n_threads FORGE_MAX_THREADS + 1", |p| p.n_threads = FORGE_MAX_THREADS + 1),
        ("n_ctx FORGE_MAX_CTX + 1", |p| p.n_ctx = FORGE_MAX_CTX + 1),
        ("n_ctx u32::MAX", |p| p.n_ctx = u32::MAX),
    ];
    for (case, set) in invalid {
        let mut p = load_params();
        set(&mut p);
        let mut out = Out::<*mut forge_ctx>::one();
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_load(path, &p, out.ptr()), [out]);
    }

    let missing = cstr(concat!(env!("CARGO_MANIFEST_DIR"), "/models/no-such-model.gguf").as_bytes());
    let dir = cstr(env!("CARGO_MANIFEST_DIR").as_bytes());
    let not_gguf = cstr(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").as_bytes());
    let mut out = Out::<*mut forge_ctx>::one();
    fails!(r, FORGE_ERR_IO, "missing file", forge_load(missing.as_ptr(), &good, out.ptr()), [out]);
    fails!(r, FORGE_ERR_IO, "a directory", forge_load(dir.as_ptr(), &good, out.ptr()), [out]);
    fails!(r, FORGE_ERR_INVALID_MODEL, "not a GGUF file", forge_load(not_gguf.as_ptr(), &good, out.ptr()), [out]);
    let mut p = load_params();
    p.progress = Some(cancel_load);
    fails!(r, FORGE_ERR_CANCELLED, "progress returns false", forge_load(path, &p, out.ptr()), [out]);

    // Failures that depend on the machine: a GPU backend without a device or
    // without the feature, a KV cache of FORGE_MAX_CTX positions. Whatever
    // the outcome, *out is written only with FORGE_OK.
    let maybe: [(&str, SetLoad, forge_status); 3] = [
        ("backend CUDA", |p| p.backend = CUDA, FORGE_ERR_BACKEND_UNAVAILABLE),
        ("backend HIP", |p| p.backend = HIP, FORGE_ERR_BACKEND_UNAVAILABLE),
        ("n_ctx FORGE_MAX_CTX", |p| p.n_ctx = FORGE_MAX_CTX, FORGE_ERR_OUT_OF_MEMORY),
    ];
    for (case, set, want) in maybe {
        let mut p = load_params();
        set(&mut p);
        let mut out = Out::<*mut forge_ctx>::one();
        prime_last_error("forge_load");
        let st = unsafe { forge_load(path, &p, out.ptr()) };
        println!("  (forge_load [{case}] on this machine: {st:?})");
        if st == FORGE_OK {
            drop(Ctx(out.get()));
        } else {
            r.failed("forge_load", case, st, want, &[("out", out.untouched())]);
        }
    }

    for (case, params) in [("params NULL (defaults)", null()), ("n_ctx 16", &good as *const _)] {
        let mut out = Out::<*mut forge_ctx>::one();
        ok!(r, case, forge_load(path, params, out.ptr()));
        if !out.untouched() {
            r.check(!out.get().is_null(), || format!("forge_load [{case}]: FORGE_OK with *out NULL"));
            drop(Ctx(out.get()));
        }
    }
}

fn ctx_clone_session(r: &mut Report, env: &Env) {
    let mut out = Out::<*mut forge_ctx>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_ctx_clone_session(null(), out.ptr()), [out]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL", forge_ctx_clone_session(env.ctx.0, null_mut()));
    ok!(r, "clone", forge_ctx_clone_session(env.ctx.0, out.ptr()));
    if !out.untouched() {
        let c = Ctx(out.get());
        r.check(unsafe { forge_n_past(c.0) } == 0, || "forge_ctx_clone_session: the clone is not empty".into());
    }
}

fn free(r: &mut Report, env: &Env) {
    prime_last_error("forge_free");
    let before = common::last_error();
    unsafe { forge_free(null_mut()) };
    no_message(r, "forge_free", "NULL is a no-op", &before);
    let c = env.fresh();
    unsafe { forge_free(c.0) };
    std::mem::forget(c);
    no_message(r, "forge_free", "a context", &before);
}

// ---- cases: evaluation ---------------------------------------------------------

fn eval(r: &mut Report, env: &Env) {
    let c = env.fresh();
    let (ctx, nv) = (c.0, env.n_vocab);
    let toks = &env.hello;
    let mut logits = Out::<f32>::poisoned(nv);
    let n_past = NPast::of(ctx);
    let bad_ids = [(nv as i32, "token n_vocab"), (-1, "token -1"), (i32::MAX, "token INT32_MAX")];

    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_eval(null_mut(), toks.as_ptr(), toks.len(), logits.ptr(), nv), [logits]);
    fails!(r, FORGE_ERR_NULL_POINTER, "tokens NULL, n_tokens 2", forge_eval(ctx, null(), 2, logits.ptr(), nv), [logits, n_past]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_tokens 0", forge_eval(ctx, toks.as_ptr(), 0, logits.ptr(), nv), [logits, n_past]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "(NULL, 0) tokens", forge_eval(ctx, null(), 0, logits.ptr(), nv), [logits, n_past]);
    for (bad, case) in bad_ids {
        let t = [toks[0], bad];
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_eval(ctx, t.as_ptr(), 2, logits.ptr(), nv), [logits, n_past]);
    }
    // no size out-parameter: the buffer and the sequence stay as they were
    let mut short = Out::<f32>::poisoned(nv - 1);
    fails!(r, FORGE_ERR_BUFFER_TOO_SMALL, "logits_len n_vocab - 1", forge_eval(ctx, toks.as_ptr(), toks.len(), short.ptr(), nv - 1), [short, n_past]);
    let over: Vec<i32> = vec![toks[0]; N_CTX as usize + 1];
    fails!(r, FORGE_ERR_CONTEXT_FULL, "17 tokens, n_ctx 16", forge_eval(ctx, over.as_ptr(), over.len(), logits.ptr(), nv), [logits, n_past]);

    let ten = [toks[0]; 10];
    ok!(r, "10 tokens, no logits", forge_eval(ctx, ten.as_ptr(), 10, null_mut(), 0));
    let n_past = NPast::of(ctx);
    r.check(n_past.was == 10, || format!("forge_eval: n_past {} after 10 tokens", n_past.was));
    let seven = [toks[0]; 7];
    fails!(r, FORGE_ERR_CONTEXT_FULL, "7 tokens at position 10 of 16", forge_eval(ctx, seven.as_ptr(), 7, logits.ptr(), nv), [logits, n_past]);
    ok!(r, "6 tokens fill the context", forge_eval(ctx, seven.as_ptr(), 6, logits.ptr(), nv));
    r.check(!logits.untouched(), || "forge_eval: FORGE_OK without writing the logits".into());
    let mut logits = Out::<f32>::poisoned(nv);
    let n_past = NPast::of(ctx);
    fails!(r, FORGE_ERR_CONTEXT_FULL, "1 token, context full", forge_eval(ctx, toks.as_ptr(), 1, logits.ptr(), nv), [logits, n_past]);
}

fn kv_reset(r: &mut Report, env: &Env) {
    let c = env.fresh();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_kv_reset(null_mut(), 0));
    let n_past = NPast::of(c.0);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_keep 1 at position 0", forge_kv_reset(c.0, 1), [n_past]);
    ok!(r, "3 tokens", forge_eval(c.0, [env.hello[0]; 3].as_ptr(), 3, null_mut(), 0));
    let n_past = NPast::of(c.0);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_keep 4 at position 3", forge_kv_reset(c.0, 4), [n_past]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_keep SIZE_MAX", forge_kv_reset(c.0, usize::MAX), [n_past]);
    ok!(r, "n_keep 1", forge_kv_reset(c.0, 1));
    r.check(unsafe { forge_n_past(c.0) } == 1, || "forge_kv_reset: n_past is not 1 after n_keep 1".into());
    ok!(r, "n_keep 0", forge_kv_reset(c.0, 0));
}

fn n_past(r: &mut Report, env: &Env) {
    falls_back!(r, "NULL ctx", forge_n_past(null()) == 0);
    let c = env.fresh();
    r.check(unsafe { forge_n_past(c.0) } == 0, || "forge_n_past: a fresh context is not at 0".into());
}

fn n_vocab(r: &mut Report, env: &Env) {
    falls_back!(r, "NULL ctx", forge_n_vocab(null()) == -1);
    r.check(unsafe { forge_n_vocab(env.ctx.0) } == env.n_vocab as i32, || "forge_n_vocab changed".into());
}

// ---- cases: embeddings ---------------------------------------------------------

fn pooling_type(r: &mut Report, env: &Env) {
    falls_back!(r, "NULL ctx", forge_pooling_type(null()) == -1);
    // SmolLM2 has no pooling_type: mean
    r.check(unsafe { forge_pooling_type(env.ctx.0) } == forge_pooling::FORGE_POOLING_MEAN as i32, || "forge_pooling_type: SmolLM2's is not mean".into());
}

fn is_encoder(r: &mut Report, env: &Env) {
    falls_back!(r, "NULL ctx", forge_is_encoder(null()) == false);
    r.check(!unsafe { forge_is_encoder(env.ctx.0) }, || "forge_is_encoder: SmolLM2 is an encoder".into());
}

fn embed(r: &mut Report, env: &Env) {
    let ctx = env.ctx.0;
    let mut info = Out::<forge_model_info>::one();
    ok!(r, "model info", forge_get_model_info(ctx, info.ptr()));
    let d = info.get().n_embd as usize;
    let toks = &env.hello;
    let (nt, mean, none, default) = (toks.len(), forge_pooling::FORGE_POOLING_MEAN as i32, forge_pooling::FORGE_POOLING_NONE as i32, forge_pooling::FORGE_POOLING_DEFAULT as i32);
    let bufs = || (Out::<f32>::poisoned(d), Out::<usize>::one());
    let past = unsafe { forge_n_past(ctx) };

    let (mut out, mut n) = bufs();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_embed(null(), toks.as_ptr(), nt, mean, true, out.ptr(), d, n.ptr()), [out, n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_embed(ctx, toks.as_ptr(), nt, mean, true, out.ptr(), d, null_mut()), [out]);
    fails!(r, FORGE_ERR_NULL_POINTER, "tokens NULL, n_tokens 2", forge_embed(ctx, null(), 2, mean, true, out.ptr(), d, n.ptr()), [out, n]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_tokens 0", forge_embed(ctx, toks.as_ptr(), 0, mean, true, out.ptr(), d, n.ptr()), [out, n]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "(NULL, 0) tokens", forge_embed(ctx, null(), 0, mean, true, out.ptr(), d, n.ptr()), [out, n]);
    for bad in [env.n_vocab as i32, -1, i32::MAX] {
        let t = [toks[0], bad];
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, &format!("token {bad}"), forge_embed(ctx, t.as_ptr(), 2, mean, true, out.ptr(), d, n.ptr()), [out, n]);
    }
    for bad in [-2, 4, i32::MAX, i32::MIN] {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, &format!("pooling {bad}"), forge_embed(ctx, toks.as_ptr(), nt, bad, true, out.ptr(), d, n.ptr()), [out, n]);
    }
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, cap n_embd", forge_embed(ctx, toks.as_ptr(), nt, mean, true, null_mut(), d, n.ptr()), [n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, cap 1", forge_embed(ctx, toks.as_ptr(), nt, mean, true, null_mut(), 1, n.ptr()), [n]);
    let (mut small, mut n) = (Out::<f32>::poisoned(d - 1), Out::<usize>::one());
    too_small!(r, "cap n_embd - 1", forge_embed(ctx, toks.as_ptr(), nt, mean, true, small.ptr(), d - 1, n.ptr()), n == d, [small]);
    let mut n = Out::<usize>::one();
    too_small!(r, "size query (NULL, 0)", forge_embed(ctx, toks.as_ptr(), nt, default, true, null_mut(), 0, n.ptr()), n == d);
    let mut n = Out::<usize>::one();
    too_small!(r, "size query, pooling NONE", forge_embed(ctx, toks.as_ptr(), nt, none, false, null_mut(), 0, n.ptr()), n == nt * d);

    let (mut out, mut n) = bufs();
    ok!(r, "mean, normalized", forge_embed(ctx, toks.as_ptr(), nt, mean, true, out.ptr(), d, n.ptr()));
    r.check(n.get() == d, || format!("forge_embed: *n_out {} for n_embd {d}", n.get()));
    let norm: f64 = out.slice(d).iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    r.check((norm - 1.0).abs() < 1e-4, || format!("forge_embed: normalized length {norm}"));
    // reads only the model: the context's sequence does not move
    r.check(unsafe { forge_n_past(ctx) } == past, || "forge_embed moved the context's sequence".into());
    let (mut all, mut n) = (Out::<f32>::poisoned(nt * d), Out::<usize>::one());
    ok!(r, "pooling NONE", forge_embed(ctx, toks.as_ptr(), nt, none, false, all.ptr(), nt * d, n.ptr()));
    r.check(n.get() == nt * d, || format!("forge_embed [NONE]: *n_out {}, want {}", n.get(), nt * d));
}

// ---- cases: tokens -------------------------------------------------------------

fn tokenize(r: &mut Report, env: &Env) {
    let ctx = env.ctx.0;
    let (text, need) = (HELLO.as_ptr() as *const c_char, env.hello.len());
    let bufs = || (Out::<i32>::poisoned(64), Out::<usize>::one());

    let (mut out, mut n) = bufs();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_tokenize(null(), text, HELLO.len(), false, false, out.ptr(), 64, n.ptr()), [out, n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_tokenize(ctx, text, HELLO.len(), false, false, out.ptr(), 64, null_mut()), [out]);
    fails!(r, FORGE_ERR_NULL_POINTER, "text NULL, text_len 5", forge_tokenize(ctx, null(), 5, false, false, out.ptr(), 64, n.ptr()), [out, n]);
    let bad = b"ab\xffcd";
    fails!(r, FORGE_ERR_INVALID_UTF8, "text not UTF-8", forge_tokenize(ctx, bad.as_ptr().cast(), bad.len(), false, false, out.ptr(), 64, n.ptr()), [out, n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, out_cap 64", forge_tokenize(ctx, text, HELLO.len(), false, false, null_mut(), 64, n.ptr()), [n]);
    // was a bug (write_out): NULL out with a non-zero, too small out_cap was
    // BUFFER_TOO_SMALL and wrote *n_out; the rule makes it NULL_POINTER.
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, out_cap 1", forge_tokenize(ctx, text, HELLO.len(), false, false, null_mut(), 1, n.ptr()), [n]);

    let (mut out, mut n) = (Out::<i32>::poisoned(1), Out::<usize>::one());
    too_small!(r, "out_cap 1", forge_tokenize(ctx, text, HELLO.len(), false, false, out.ptr(), 1, n.ptr()), n == need, [out]);
    let mut n = Out::<usize>::one();
    too_small!(r, "size query (NULL, 0)", forge_tokenize(ctx, text, HELLO.len(), false, false, null_mut(), 0, n.ptr()), n == need);

    let mut n = Out::<usize>::one();
    ok!(r, "(NULL, 0) text, out (NULL, 0)", forge_tokenize(ctx, null(), 0, false, false, null_mut(), 0, n.ptr()));
    r.check(n.get() == 0, || format!("forge_tokenize [(NULL, 0) text]: *n_out = {:#x}, want 0", n.get()));
    let (mut out, mut n) = (Out::<i32>::poisoned(need), Out::<usize>::one());
    ok!(r, "out_cap exactly the count", forge_tokenize(ctx, text, HELLO.len(), false, false, out.ptr(), need, n.ptr()));
    r.check(n.get() == need && out.slice(need) == env.hello, || "forge_tokenize: a different result".into());
}

fn token_to_piece(r: &mut Report, env: &Env) {
    let (ctx, tok) = (env.ctx.0, env.hello[0]);
    let piece = {
        let (mut buf, mut n) = (Out::<c_char>::poisoned(64), Out::<usize>::one());
        ok!(r, "64 bytes", forge_token_to_piece(ctx, tok, false, buf.ptr(), 64, n.ptr()));
        n.get().min(64)
    };
    r.check(piece >= 2, || format!("forge_token_to_piece: token {tok} of {HELLO:?} has {piece} bytes"));
    let bufs = || (Out::<c_char>::poisoned(64), Out::<usize>::one());

    let (mut buf, mut n) = bufs();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_token_to_piece(null(), tok, false, buf.ptr(), 64, n.ptr()), [buf, n]);
    for (bad, case) in [(env.n_vocab as i32, "token n_vocab"), (-1, "token -1"), (i32::MIN, "token INT32_MIN")] {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_token_to_piece(ctx, bad, true, buf.ptr(), 64, n.ptr()), [buf, n]);
    }
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_token_to_piece(ctx, tok, false, buf.ptr(), 64, null_mut()), [buf]);
    fails!(r, FORGE_ERR_NULL_POINTER, "buf NULL, cap 64", forge_token_to_piece(ctx, tok, false, null_mut(), 64, n.ptr()), [n]);
    // was a bug (write_out): NULL buf with a non-zero, too small cap.
    fails!(r, FORGE_ERR_NULL_POINTER, "buf NULL, cap 1", forge_token_to_piece(ctx, tok, false, null_mut(), 1, n.ptr()), [n]);

    let (mut buf, mut n) = (Out::<c_char>::poisoned(1), Out::<usize>::one());
    too_small!(r, "cap 1", forge_token_to_piece(ctx, tok, false, buf.ptr(), 1, n.ptr()), n == piece, [buf]);
    let mut n = Out::<usize>::one();
    too_small!(r, "size query (NULL, 0)", forge_token_to_piece(ctx, tok, false, null_mut(), 0, n.ptr()), n == piece);
}

fn detokenize(r: &mut Report, env: &Env) {
    let (ctx, toks, need) = (env.ctx.0, &env.hello, HELLO.len());
    let bufs = || (Out::<c_char>::poisoned(64), Out::<usize>::one());

    let (mut buf, mut n) = bufs();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_detokenize(null(), toks.as_ptr(), toks.len(), false, buf.ptr(), 64, n.ptr()), [buf, n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "tokens NULL, n_tokens 2", forge_detokenize(ctx, null(), 2, false, buf.ptr(), 64, n.ptr()), [buf, n]);
    for (bad, case) in [(env.n_vocab as i32, "token n_vocab"), (-1, "token -1")] {
        let t = [toks[0], bad];
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_detokenize(ctx, t.as_ptr(), 2, false, buf.ptr(), 64, n.ptr()), [buf, n]);
    }
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_detokenize(ctx, toks.as_ptr(), toks.len(), false, buf.ptr(), 64, null_mut()), [buf]);
    fails!(r, FORGE_ERR_NULL_POINTER, "buf NULL, cap 64", forge_detokenize(ctx, toks.as_ptr(), toks.len(), false, null_mut(), 64, n.ptr()), [n]);
    // was a bug (write_out): NULL buf with a non-zero, too small cap.
    fails!(r, FORGE_ERR_NULL_POINTER, "buf NULL, cap 4", forge_detokenize(ctx, toks.as_ptr(), toks.len(), false, null_mut(), 4, n.ptr()), [n]);

    let (mut buf, mut n) = (Out::<c_char>::poisoned(4), Out::<usize>::one());
    too_small!(r, "cap 4", forge_detokenize(ctx, toks.as_ptr(), toks.len(), false, buf.ptr(), 4, n.ptr()), n == need, [buf]);
    let mut n = Out::<usize>::one();
    too_small!(r, "size query (NULL, 0)", forge_detokenize(ctx, toks.as_ptr(), toks.len(), false, null_mut(), 0, n.ptr()), n == need);

    let mut n = Out::<usize>::one();
    ok!(r, "(NULL, 0) tokens, buf (NULL, 0)", forge_detokenize(ctx, null(), 0, false, null_mut(), 0, n.ptr()));
    r.check(n.get() == 0, || format!("forge_detokenize [(NULL, 0) tokens]: *n_out = {:#x}, want 0", n.get()));
    let (mut buf, mut n) = bufs();
    ok!(r, "\"Hello world\"", forge_detokenize(ctx, toks.as_ptr(), toks.len(), false, buf.ptr(), 64, n.ptr()));
    let text: Vec<u8> = buf.slice(n.get().min(64)).iter().map(|&c| c as u8).collect();
    r.check(text == HELLO.as_bytes(), || format!("forge_detokenize: {:?}", String::from_utf8_lossy(&text)));
}

fn get_model_info(r: &mut Report, env: &Env) {
    let mut info = Out::<forge_model_info>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_get_model_info(null(), info.ptr()), [info]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL", forge_get_model_info(env.ctx.0, null_mut()));
    ok!(r, "SmolLM2", forge_get_model_info(env.ctx.0, info.ptr()));
    if !info.untouched() {
        let i = info.get();
        r.check(i.n_vocab == env.n_vocab as i32 && i.n_ctx == N_CTX as i32, || format!("forge_get_model_info: {i:?}"));
    }
}

fn token_is_eog(r: &mut Report, env: &Env) {
    falls_back!(r, "NULL ctx, token 0", forge_token_is_eog(null(), 0) == false);
    // was a bug: with a negative token the NULL ctx was never looked at
    // (`token >= 0 && ctx_ref(ctx)?`): false without a message.
    falls_back!(r, "NULL ctx, token -1", forge_token_is_eog(null(), -1) == false);
    let mut info = Out::<forge_model_info>::one();
    ok!(r, "model info", forge_get_model_info(env.ctx.0, info.ptr()));
    let eos = info.get().eos;
    r.check(unsafe { forge_token_is_eog(env.ctx.0, eos) }, || format!("forge_token_is_eog: eos {eos} is not EOG"));
    for t in [-1, env.n_vocab as i32, i32::MAX] {
        r.check(!unsafe { forge_token_is_eog(env.ctx.0, t) }, || format!("forge_token_is_eog: token {t} is EOG"));
    }
}

// ---- cases: sampling and generation --------------------------------------------

fn defaults_unchanged_message(r: &mut Report, func: &str, get: impl FnOnce()) {
    prime_last_error(func);
    let before = common::last_error();
    get();
    no_message(r, func, "defaults", &before);
}

fn load_default_params(r: &mut Report, _: &Env) {
    let p = forge_load_default_params();
    r.check(
        p.n_threads == 0 && p.n_ctx == 0 && p.backend == AUTO && p.gpu_index == 0 && p.progress.is_none() && p.progress_user_data.is_null() && p.gpu_mem_budget == 0,
        || format!("forge_load_default_params: {p:?}"),
    );
    defaults_unchanged_message(r, "forge_load_default_params", || {
        let _ = forge_load_default_params();
    });
}

fn sampler_default_params(r: &mut Report, _: &Env) {
    let p = forge_sampler_default_params();
    r.check(
        (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.frequency_penalty, p.presence_penalty, p.penalty_last_n, p.seed)
            == (0.8, 40, 0.95, 0.05, 1.0, 0.0, 0.0, 64, 0x5EED),
        || format!("forge_sampler_default_params: {p:?}"),
    );
    defaults_unchanged_message(r, "forge_sampler_default_params", || {
        let _ = forge_sampler_default_params();
    });
}

fn generate_default_params(r: &mut Report, _: &Env) {
    let p = forge_generate_default_params();
    r.check(
        p.max_tokens == 128 && p.stop.is_null() && p.n_stop == 0 && p.on_token.is_none() && p.user_data.is_null(),
        || format!("forge_generate_default_params: {p:?}"),
    );
    defaults_unchanged_message(r, "forge_generate_default_params", || {
        let _ = forge_generate_default_params();
    });
}

/// A change to the sampler parameters.
type SetSampler = fn(&mut forge_sampler_params);

fn sampler_new(r: &mut Report, _: &Env) {
    let good = forge_sampler_default_params();
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL", forge_sampler_new(&good, null_mut()));
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, params NULL", forge_sampler_new(null(), null_mut()));
    let invalid: [(&str, SetSampler); 14] = [
        ("temperature NaN", |p| p.temperature = f32::NAN),
        ("temperature +inf", |p| p.temperature = f32::INFINITY),
        ("top_p NaN", |p| p.top_p = f32::NAN),
        ("top_p 1.5", |p| p.top_p = 1.5),
        ("top_p -0.1", |p| p.top_p = -0.1),
        ("min_p NaN", |p| p.min_p = f32::NAN),
        ("min_p 2", |p| p.min_p = 2.0),
        ("repeat_penalty 0", |p| p.repeat_penalty = 0.0),
        ("repeat_penalty -1", |p| p.repeat_penalty = -1.0),
        ("repeat_penalty NaN", |p| p.repeat_penalty = f32::NAN),
        ("frequency_penalty NaN", |p| p.frequency_penalty = f32::NAN),
        ("frequency_penalty +inf", |p| p.frequency_penalty = f32::INFINITY),
        ("presence_penalty NaN", |p| p.presence_penalty = f32::NAN),
        ("presence_penalty -inf", |p| p.presence_penalty = f32::NEG_INFINITY),
    ];
    for (case, set) in invalid {
        let mut p = good;
        set(&mut p);
        let mut out = Out::<*mut forge_sampler>::one();
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_sampler_new(&p, out.ptr()), [out]);
    }
    for (case, params) in [("params NULL (defaults)", null()), ("defaults", &good as *const _)] {
        let mut out = Out::<*mut forge_sampler>::one();
        ok!(r, case, forge_sampler_new(params, out.ptr()));
        if !out.untouched() {
            drop(Smp(out.get()));
        }
    }
}

fn sampler_free(r: &mut Report, _: &Env) {
    prime_last_error("forge_sampler_free");
    let before = common::last_error();
    unsafe { forge_sampler_free(null_mut()) };
    no_message(r, "forge_sampler_free", "NULL is a no-op", &before);
    let s = greedy();
    unsafe { forge_sampler_free(s.0) };
    std::mem::forget(s);
    no_message(r, "forge_sampler_free", "a sampler", &before);
}

fn sampler_reset(r: &mut Report, _: &Env) {
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL sampler", forge_sampler_reset(null_mut()));
    let s = greedy();
    ok!(r, "a sampler", forge_sampler_reset(s.0));
    // BUSY: see `generate` (a call from inside forge_generate's callback).
}

fn sampler_accept(r: &mut Report, _: &Env) {
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL sampler", forge_sampler_accept(null_mut(), 1));
    let s = greedy();
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "token -1", forge_sampler_accept(s.0, -1));
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "token INT32_MIN", forge_sampler_accept(s.0, i32::MIN));
    ok!(r, "token 5", forge_sampler_accept(s.0, 5));
}

fn sampler_sample(r: &mut Report, _: &Env) {
    let s = greedy();
    let good = [1.0f32, 3.0, 2.0];
    let mut logits = Out::with(&good);
    let mut tok = Out::<i32>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL sampler", forge_sampler_sample(null_mut(), logits.ptr(), 3, tok.ptr()), [logits, tok]);
    fails!(r, FORGE_ERR_NULL_POINTER, "logits NULL, n_logits 3", forge_sampler_sample(s.0, null_mut(), 3, tok.ptr()), [tok]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out_token NULL", forge_sampler_sample(s.0, logits.ptr(), 3, null_mut()), [logits]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_logits 0", forge_sampler_sample(s.0, logits.ptr(), 0, tok.ptr()), [logits, tok]);
    // was a bug: (NULL, 0) is an empty input by the length-0 rule, so this is
    // n_logits 0 = INVALID_ARGUMENT; the NULL check came first and answered
    // NULL_POINTER. (*out_token is untouched either way.)
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "(NULL, 0) logits", forge_sampler_sample(s.0, null_mut(), 0, tok.ptr()), [tok]);
    let bad: [(&str, [f32; 3]); 4] = [
        ("a NaN logit", [1.0, f32::NAN, 2.0]),
        ("a +inf logit", [1.0, f32::INFINITY, 2.0]),
        ("all -inf", [f32::NEG_INFINITY; 3]),
        ("all NaN", [f32::NAN; 3]),
    ];
    for (case, l) in bad {
        let mut l = Out::with(&l);
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_sampler_sample(s.0, l.ptr(), 3, tok.ptr()), [l, tok]);
    }
    ok!(r, "greedy over [1, 3, 2]", forge_sampler_sample(s.0, logits.ptr(), 3, tok.ptr()));
    r.check(tok.get() == 1, || format!("forge_sampler_sample: greedy picked {}", tok.get()));
    // BUSY: see `generate`.
}

/// Out-parameters of one forge_generate call.
struct GenOuts {
    toks: Out<i32>,
    n: Out<usize>,
    reason: Out<forge_stop_reason>,
}

impl GenOuts {
    fn new() -> Self {
        GenOuts { toks: Out::poisoned(8), n: Out::one(), reason: Out::one() }
    }
    fn untouched(&self) -> bool {
        self.toks.untouched() && self.n.untouched() && self.reason.untouched()
    }
}

/// forge_generate with its three out-parameters in one [`GenOuts`]. The
/// cases that call it `use` this one, which keeps the export's name in the
/// checks' messages.
mod with_outs {
    use super::GenOuts;
    use rocmforge::ffi::{forge_ctx, forge_generate_params, forge_sampler, forge_status};

    pub unsafe fn forge_generate(
        ctx: *mut forge_ctx,
        s: *mut forge_sampler,
        prompt: *const i32,
        n_prompt: usize,
        p: *const forge_generate_params,
        o: &mut GenOuts,
    ) -> forge_status {
        rocmforge::ffi::forge_generate(ctx, s, prompt, n_prompt, p, o.toks.ptr(), o.toks.cap(), o.n.ptr(), o.reason.ptr())
    }
}

fn generate(r: &mut Report, env: &Env) {
    use with_outs::forge_generate;
    let c = env.fresh();
    let s = greedy();
    let (ctx, prompt) = (c.0, &env.hello);
    let (pp, np) = (prompt.as_ptr(), prompt.len());
    let mut gp = forge_generate_default_params();
    gp.max_tokens = 4;
    let n_past = NPast::of(ctx);
    let mut outs = GenOuts::new();

    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_generate(null_mut(), s.0, pp, np, &gp, &mut outs), [outs]);
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL sampler", forge_generate(ctx, null_mut(), pp, np, &gp, &mut outs), [outs, n_past]);
    fails!(r, FORGE_ERR_NULL_POINTER, "prompt NULL, n_prompt 2", forge_generate(ctx, s.0, null(), 2, &gp, &mut outs), [outs, n_past]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "(NULL, 0) prompt", forge_generate(ctx, s.0, null(), 0, &gp, &mut outs), [outs, n_past]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_prompt 0", forge_generate(ctx, s.0, pp, 0, &gp, &mut outs), [outs, n_past]);
    for (bad, case) in [(env.n_vocab as i32, "token n_vocab in the prompt"), (-5, "token -5 in the prompt")] {
        let p = [prompt[0], bad];
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_generate(ctx, s.0, p.as_ptr(), 2, &gp, &mut outs), [outs, n_past]);
    }
    let over = vec![prompt[0]; N_CTX as usize + 1];
    fails!(r, FORGE_ERR_CONTEXT_FULL, "17-token prompt, n_ctx 16", forge_generate(ctx, s.0, over.as_ptr(), over.len(), &gp, &mut outs), [outs, n_past]);

    let not_utf8 = cstr(b"a\xffb");
    let stop_sets: [(&str, Vec<*const c_char>, usize, forge_status); 3] = [
        ("stop NULL, n_stop 1", vec![], 1, FORGE_ERR_NULL_POINTER),
        ("stop[0] NULL", vec![null()], 1, FORGE_ERR_NULL_POINTER),
        ("stop[1] not UTF-8", vec![c"ok".as_ptr(), not_utf8.as_ptr()], 2, FORGE_ERR_INVALID_UTF8),
    ];
    for (case, stops, n_stop, want) in stop_sets {
        let mut p = gp;
        p.stop = if stops.is_empty() { null() } else { stops.as_ptr() };
        p.n_stop = n_stop;
        prime_last_error("forge_generate");
        let got = unsafe { forge_generate(ctx, s.0, pp, np, &p, &mut outs) };
        r.failed("forge_generate", case, got, want, &[("outs", outs.untouched()), ("n_past", n_past.untouched())]);
    }

    busy(r, env, &c, &s);

    ok!(r, "params NULL (defaults), 2-token prompt", forge_generate(ctx, s.0, pp, np, null(), &mut outs));
    ok!(r, "kv reset", forge_kv_reset(ctx, 0));
    let mut outs = GenOuts::new();
    ok!(r, "2-token prompt, max_tokens 4", forge_generate(ctx, s.0, pp, np, &gp, &mut outs));
    if !outs.n.untouched() {
        let n = outs.n.get();
        r.check(n <= 4 && !outs.reason.untouched(), || format!("forge_generate: *n_out {n}, reason untouched: {}", outs.reason.untouched()));
    }
}

/// What `reenter` needs: handles that are busy while forge_generate runs.
struct Reentry<'a> {
    r: &'a mut Report,
    ctx: *mut forge_ctx,
    other_ctx: *mut forge_ctx,
    sampler: *mut forge_sampler,
    other_sampler: *mut forge_sampler,
    n_vocab: usize,
    token: i32,
    calls: usize,
}

/// forge_generate's token callback: while the call runs, its ctx and sampler
/// are busy; every call that takes them must answer BUSY and touch nothing.
/// (No panics here: a panic cannot unwind through the C callback.)
unsafe extern "C" fn reenter(_token: i32, _piece: *const c_char, _len: usize, user_data: *mut c_void) -> bool {
    use with_outs::forge_generate;
    let e = &mut *(user_data as *mut Reentry);
    e.calls += 1;
    if e.calls > 1 {
        return false;
    }
    let r = &mut *e.r;
    let (ctx, s, t) = (e.ctx, e.sampler, [e.token]);
    let n_past = NPast::of(ctx);
    let mut logits = Out::<f32>::poisoned(e.n_vocab);
    fails!(r, FORGE_ERR_BUSY, "ctx busy", forge_eval(ctx, t.as_ptr(), 1, logits.ptr(), e.n_vocab), [logits, n_past]);
    fails!(r, FORGE_ERR_BUSY, "ctx busy", forge_kv_reset(ctx, 0), [n_past]);
    let mut outs = GenOuts::new();
    fails!(r, FORGE_ERR_BUSY, "ctx busy", forge_generate(ctx, e.other_sampler, t.as_ptr(), 1, null(), &mut outs), [outs, n_past]);
    let other_past = NPast::of(e.other_ctx);
    fails!(r, FORGE_ERR_BUSY, "sampler busy", forge_generate(e.other_ctx, s, t.as_ptr(), 1, null(), &mut outs), [outs, other_past]);
    fails!(r, FORGE_ERR_BUSY, "sampler busy", forge_sampler_reset(s));
    fails!(r, FORGE_ERR_BUSY, "sampler busy", forge_sampler_accept(s, 1));
    let (mut l, mut tok) = (Out::with(&[1.0f32, 3.0, 2.0]), Out::<i32>::one());
    fails!(r, FORGE_ERR_BUSY, "sampler busy", forge_sampler_sample(s, l.ptr(), 3, tok.ptr()), [l, tok]);
    // forge_engine_new reads only the model: a busy ctx is fine
    let mut eng = Out::<*mut forge_engine>::one();
    ok!(r, "from a busy ctx", forge_engine_new(ctx, null(), eng.ptr()));
    if !eng.untouched() {
        forge_engine_free(eng.get());
    }
    false
}

/// BUSY for forge_eval, forge_kv_reset, forge_generate and the sampler calls,
/// from inside a forge_generate callback.
fn busy(r: &mut Report, env: &Env, c: &Ctx, s: &Smp) {
    use with_outs::forge_generate;
    let (other_ctx, other_sampler) = (env.fresh(), greedy());
    let mut e = Reentry {
        r,
        ctx: c.0,
        other_ctx: other_ctx.0,
        sampler: s.0,
        other_sampler: other_sampler.0,
        n_vocab: env.n_vocab,
        token: env.hello[0],
        calls: 0,
    };
    let mut gp = forge_generate_default_params();
    gp.max_tokens = 4;
    gp.on_token = Some(reenter);
    gp.user_data = &mut e as *mut Reentry as *mut c_void;
    let mut outs = GenOuts::new();
    let st = unsafe { forge_generate(c.0, s.0, env.hello.as_ptr(), env.hello.len(), &gp, &mut outs) };
    let calls = e.calls;
    let r = e.r;
    r.ok("forge_generate", "callback returns false", st);
    r.check(calls >= 1, || "forge_generate: the callback never ran, BUSY untested".into());
    if st == FORGE_OK {
        let reason = outs.reason.get();
        r.check(reason == forge_stop_reason::FORGE_STOP_CALLBACK, || format!("forge_generate: stopped by {reason:?}, want FORGE_STOP_CALLBACK"));
    }
    ok!(r, "kv reset after the BUSY checks", forge_kv_reset(c.0, 0));
}

// ---- cases: many sequences (the engine) ----------------------------------------

/// An engine freed on drop.
struct Eng(*mut forge_engine);
impl Drop for Eng {
    fn drop(&mut self) {
        unsafe { forge_engine_free(self.0) }
    }
}

/// Positions per KV block (`forge_kv_stats.block_size`).
const BLOCK: usize = 16;

fn engine_params(n_ctx: u32, kv_budget: u64) -> forge_engine_params {
    let mut p = forge_engine_default_params();
    p.n_ctx = n_ctx;
    p.kv_budget = kv_budget;
    p
}

impl Env {
    /// An engine over the model (`n_ctx` 0: the context's 16; `kv_budget`
    /// 0: four full sequences, 1: the smallest pool, one sequence's n_ctx
    /// plus one block).
    fn engine(&self, n_ctx: u32, kv_budget: u64) -> Eng {
        let mut e = null_mut();
        let st = unsafe { forge_engine_new(self.ctx.0, &engine_params(n_ctx, kv_budget), &mut e) };
        assert_eq!(st, FORGE_OK, "{}", common::last_error());
        Eng(e)
    }
}

impl Eng {
    fn seq(&self) -> i32 {
        let mut s = -1;
        assert_eq!(unsafe { forge_seq_new(self.0, &mut s) }, FORGE_OK, "{}", common::last_error());
        s
    }
    fn len(&self, seq: i32) -> usize {
        let mut n = usize::MAX;
        assert_eq!(unsafe { forge_seq_len(self.0, seq, &mut n) }, FORGE_OK, "{}", common::last_error());
        n
    }
    fn stats(&self) -> forge_kv_stats {
        let mut s = Out::<forge_kv_stats>::one();
        assert_eq!(unsafe { forge_engine_stats(self.0, s.ptr()) }, FORGE_OK, "{}", common::last_error());
        s.get()
    }
    /// Append `n` tokens to `seq` (one batch; logits for the last row).
    fn append(&self, seq: i32, n: usize) {
        let rows = rows(seq, self.len(seq), n);
        assert_eq!(unsafe { forge_engine_decode(self.0, rows.as_ptr(), rows.len()) }, FORGE_OK, "{}", common::last_error());
    }
}

/// The token the test puts at position `pos` of every sequence.
fn tok_at(pos: usize) -> i32 {
    100 + (pos as i32 * 37) % 1000
}

fn row(seq: i32, token: i32, pos: i32, logits: bool) -> forge_batch_row {
    forge_batch_row { seq, token, pos, logits: logits as i32 }
}

/// Rows that append `n` tokens to `seq` from position `from`; the last one
/// asks for logits.
fn rows(seq: i32, from: usize, n: usize) -> Vec<forge_batch_row> {
    (0..n).map(|i| row(seq, tok_at(from + i), (from + i) as i32, i + 1 == n)).collect()
}

/// Every listed sequence's `forge_seq_len` as it was: a failing call must
/// move none (a failed decode is all or nothing).
struct SeqLens {
    e: *const forge_engine,
    lens: Vec<(i32, usize)>,
}

impl SeqLens {
    fn of(e: &Eng, seqs: &[i32]) -> Self {
        SeqLens { e: e.0, lens: seqs.iter().map(|&s| (s, e.len(s))).collect() }
    }
    fn untouched(&self) -> bool {
        self.lens.iter().all(|&(s, was)| {
            let mut n = usize::MAX;
            unsafe { forge_seq_len(self.e, s, &mut n) == FORGE_OK && n == was }
        })
    }
}

/// The pool's statistics as they were: a failing call takes no block,
/// makes no sequence and copies nothing.
struct Pool {
    e: *const forge_engine,
    was: [u64; 8],
}

impl Pool {
    fn numbers(e: *const forge_engine) -> Option<[u64; 8]> {
        let mut s = Out::<forge_kv_stats>::one();
        (unsafe { forge_engine_stats(e, s.ptr()) } == FORGE_OK).then(|| {
            let s = s.get();
            [s.blocks_total, s.blocks_used, s.blocks_free, s.blocks_cached, s.prefix_hits, s.prefix_tokens_reused, s.cow_copies, s.n_seqs as u64]
        })
    }
    fn of(e: &Eng) -> Self {
        Pool { e: e.0, was: Self::numbers(e.0).expect("stats") }
    }
    fn untouched(&self) -> bool {
        Self::numbers(self.e) == Some(self.was)
    }
}

fn engine_default_params(r: &mut Report, _: &Env) {
    let p = forge_engine_default_params();
    r.check(p.n_ctx == 0 && p.kv_budget == 0, || format!("forge_engine_default_params: {p:?}"));
    defaults_unchanged_message(r, "forge_engine_default_params", || {
        let _ = forge_engine_default_params();
    });
}

/// The pool a fresh engine has: (blocks_total, n_seqs, ...) sane.
fn check_fresh_pool(r: &mut Report, case: &str, e: *mut forge_engine, want_blocks: u64) {
    match Pool::numbers(e) {
        Some([total, used, free, ..]) => r.check(total == want_blocks && used == 0 && free == total, || {
            format!("forge_engine_new [{case}]: blocks total/used/free {total}/{used}/{free}, want {want_blocks}/0/{want_blocks}")
        }),
        None => r.check(false, || format!("forge_engine_new [{case}]: forge_engine_stats failed: {}", common::last_error())),
    }
}

fn engine_new(r: &mut Report, env: &Env) {
    let ctx = env.ctx.0;
    let good = forge_engine_default_params();
    let mut out = Out::<*mut forge_engine>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx", forge_engine_new(null(), &good, out.ptr()), [out]);
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL ctx, params NULL", forge_engine_new(null(), null(), out.ptr()), [out]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL", forge_engine_new(ctx, &good, null_mut()));
    for (case, n_ctx, kv) in [
        ("n_ctx FORGE_MAX_CTX + 1", FORGE_MAX_CTX + 1, 0),
        ("n_ctx FORGE_MAX_CTX + 1, kv_budget 1", FORGE_MAX_CTX + 1, 1),
        ("n_ctx u32::MAX", u32::MAX, 0),
    ] {
        let mut out = Out::<*mut forge_engine>::one();
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_engine_new(ctx, &engine_params(n_ctx, kv), out.ptr()), [out]);
    }

    // Pools the host may not give (terabytes): OUT_OF_MEMORY with *out
    // untouched, or a pool (the memory is not touched until written).
    for (case, p) in [("kv_budget u64::MAX", engine_params(0, u64::MAX)), ("n_ctx FORGE_MAX_CTX, four sequences", engine_params(FORGE_MAX_CTX, 0))] {
        let mut out = Out::<*mut forge_engine>::one();
        prime_last_error("forge_engine_new");
        let st = unsafe { forge_engine_new(ctx, &p, out.ptr()) };
        println!("  (forge_engine_new [{case}] on this machine: {st:?})");
        if st == FORGE_OK {
            drop(Eng(out.get()));
        } else {
            r.failed("forge_engine_new", case, st, FORGE_ERR_OUT_OF_MEMORY, &[("out", out.untouched())]);
        }
    }

    // defaults: the context's n_ctx (16 = one block), four sequences' worth
    let four = 4 * N_CTX.div_ceil(BLOCK as u32) as u64;
    let sizes: [(&str, *const forge_engine_params, u64); 4] = [
        ("params NULL (defaults)", null(), four),
        ("defaults", &good, four),
        ("n_ctx 32, kv_budget 1: the smallest pool", &engine_params(32, 1), 32 / BLOCK as u64 + 1),
        ("n_ctx 1, kv_budget 1", &engine_params(1, 1), 2),
    ];
    for (case, p, blocks) in sizes {
        let mut out = Out::<*mut forge_engine>::one();
        ok!(r, case, forge_engine_new(ctx, p, out.ptr()));
        if !out.untouched() {
            r.check(!out.get().is_null(), || format!("forge_engine_new [{case}]: FORGE_OK with *out NULL"));
            let e = Eng(out.get());
            check_fresh_pool(r, case, e.0, blocks);
        }
    }

    // the engine keeps the model: it outlives the context it came from
    let c = env.fresh();
    let mut out = Out::<*mut forge_engine>::one();
    ok!(r, "from a clone", forge_engine_new(c.0, null(), out.ptr()));
    drop(c);
    if !out.untouched() {
        let e = Eng(out.get());
        let s = e.seq();
        let rs = rows(s, 0, 3);
        ok!(r, "after forge_free(ctx)", forge_engine_decode(e.0, rs.as_ptr(), rs.len()));
    }
}

fn engine_free(r: &mut Report, env: &Env) {
    prime_last_error("forge_engine_free");
    let before = common::last_error();
    unsafe { forge_engine_free(null_mut()) };
    no_message(r, "forge_engine_free", "NULL is a no-op", &before);
    let e = env.engine(0, 0);
    let s = e.seq();
    e.append(s, 5);
    e.seq();
    unsafe { forge_engine_free(e.0) };
    std::mem::forget(e);
    no_message(r, "forge_engine_free", "an engine with two sequences", &before);
}

fn seq_new(r: &mut Report, env: &Env) {
    let e = env.engine(0, 0);
    let mut out = Out::<i32>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_seq_new(null_mut(), out.ptr()), [out]);
    let pool = Pool::of(&e);
    fails!(r, FORGE_ERR_NULL_POINTER, "seq_out NULL", forge_seq_new(e.0, null_mut()), [pool]);
    ok!(r, "first", forge_seq_new(e.0, out.ptr()));
    let first = out.get();
    let mut out = Out::<i32>::one();
    ok!(r, "second", forge_seq_new(e.0, out.ptr()));
    let second = out.get();
    r.check(first >= 0 && second >= 0 && first != second, || format!("forge_seq_new: ids {first} and {second}"));
    r.check(e.len(first) == 0 && e.stats().n_seqs == 2, || format!("forge_seq_new: len {}, stats {:?}", e.len(first), e.stats()));
    // ids are not reused while the engine lives
    ok!(r, "free the first", forge_seq_free(e.0, first));
    let mut out = Out::<i32>::one();
    ok!(r, "third", forge_seq_new(e.0, out.ptr()));
    let third = out.get();
    r.check(third >= 0 && third != first && third != second, || format!("forge_seq_new: id {third} after {first} (freed) and {second}"));
}

fn seq_free(r: &mut Report, env: &Env) {
    let e = env.engine(0, 0);
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_seq_free(null_mut(), 0));
    let (a, b) = (e.seq(), e.seq());
    e.append(a, 5);
    let (lens, pool) = (SeqLens::of(&e, &[a, b]), Pool::of(&e));
    for (case, bad) in [("seq -1", -1), ("seq INT32_MIN", i32::MIN), ("unknown seq 999", 999)] {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_seq_free(e.0, bad), [lens, pool]);
    }
    ok!(r, "5 positions", forge_seq_free(e.0, a));
    let s = e.stats();
    r.check(s.n_seqs == 1 && s.blocks_used == 0 && s.blocks_free == s.blocks_total, || format!("forge_seq_free: blocks not given back: {s:?}"));
    let (lens, pool) = (SeqLens::of(&e, &[b]), Pool::of(&e));
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "freed twice", forge_seq_free(e.0, a), [lens, pool]);
    let mut n = Out::<usize>::one();
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "len of a freed sequence", forge_seq_len(e.0, a, n.ptr()), [n]);
    ok!(r, "an empty sequence", forge_seq_free(e.0, b));
}

fn seq_fork(r: &mut Report, env: &Env) {
    let e = env.engine(0, 0);
    let a = e.seq();
    e.append(a, 5);
    let mut out = Out::<i32>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_seq_fork(null_mut(), a, out.ptr()), [out]);
    let (lens, pool) = (SeqLens::of(&e, &[a]), Pool::of(&e));
    fails!(r, FORGE_ERR_NULL_POINTER, "seq_out NULL", forge_seq_fork(e.0, a, null_mut()), [lens, pool]);
    for (case, bad) in [("src -1", -1), ("src INT32_MIN", i32::MIN), ("unknown src 999", 999)] {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_seq_fork(e.0, bad, out.ptr()), [out, lens, pool]);
    }
    let used = e.stats().blocks_used;
    ok!(r, "5 positions", forge_seq_fork(e.0, a, out.ptr()));
    if !out.untouched() {
        let f = out.get();
        let s = e.stats();
        r.check(f >= 0 && f != a && e.len(f) == 5, || format!("forge_seq_fork: fork {f} of {a}, len {}", e.len(f)));
        r.check(s.n_seqs == 2 && s.blocks_used == used, || format!("forge_seq_fork: the fork copied blocks: {s:?} (used {used} before)"));
        // both write into the shared last block: the second writer copies it
        e.append(a, 1);
        e.append(f, 1);
        let s = e.stats();
        r.check(s.cow_copies == 1 && e.len(a) == 6 && e.len(f) == 6, || format!("forge_seq_fork: after both appended: {s:?}"));
    }
}

fn seq_keep(r: &mut Report, env: &Env) {
    let e = env.engine(0, 0);
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_seq_keep(null_mut(), 0, 0));
    let (a, b) = (e.seq(), e.seq());
    e.append(a, 5);
    let (lens, pool) = (SeqLens::of(&e, &[a, b]), Pool::of(&e));
    for (case, bad) in [("seq -1", -1), ("seq INT32_MIN", i32::MIN), ("unknown seq 999", 999)] {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_seq_keep(e.0, bad, 0), [lens, pool]);
    }
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_keep 6 of 5", forge_seq_keep(e.0, a, 6), [lens, pool]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_keep SIZE_MAX", forge_seq_keep(e.0, a, usize::MAX), [lens, pool]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_keep 1 of an empty sequence", forge_seq_keep(e.0, b, 1), [lens, pool]);
    ok!(r, "n_keep 5 of 5", forge_seq_keep(e.0, a, 5));
    ok!(r, "n_keep 2 of 5", forge_seq_keep(e.0, a, 2));
    r.check(e.len(a) == 2, || format!("forge_seq_keep: len {} after n_keep 2", e.len(a)));
    ok!(r, "n_keep 0 of 2", forge_seq_keep(e.0, a, 0));
    let s = e.stats();
    r.check(e.len(a) == 0 && s.blocks_used == 0, || format!("forge_seq_keep: len {} after n_keep 0, {s:?}", e.len(a)));
    ok!(r, "n_keep 0 of an empty sequence", forge_seq_keep(e.0, b, 0));
}

fn seq_len(r: &mut Report, env: &Env) {
    let e = env.engine(0, 0);
    let a = e.seq();
    let mut n = Out::<usize>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_seq_len(null(), a, n.ptr()), [n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_seq_len(e.0, a, null_mut()));
    for (case, bad) in [("seq -1", -1), ("seq INT32_MIN", i32::MIN), ("unknown seq 999", 999)] {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_seq_len(e.0, bad, n.ptr()), [n]);
    }
    ok!(r, "empty", forge_seq_len(e.0, a, n.ptr()));
    r.check(n.get() == 0, || format!("forge_seq_len: a new sequence holds {}", n.get()));
    e.append(a, 3);
    let mut n = Out::<usize>::one();
    ok!(r, "3 positions", forge_seq_len(e.0, a, n.ptr()));
    r.check(n.get() == 3, || format!("forge_seq_len: {} after 3 tokens", n.get()));
}

fn seq_reuse_prefix(r: &mut Report, env: &Env) {
    let e = env.engine(32, 0);
    let (a, b) = (e.seq(), e.seq());
    e.append(a, 20); // the first block (16 positions) fills and is cached
    let prompt: Vec<i32> = (0..20).map(tok_at).collect();
    let (pp, np) = (prompt.as_ptr(), prompt.len());
    let mut n = Out::<usize>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_seq_reuse_prefix(null_mut(), b, pp, np, n.ptr()), [n]);
    let (lens, pool) = (SeqLens::of(&e, &[a, b]), Pool::of(&e));
    fails!(r, FORGE_ERR_NULL_POINTER, "n_reused NULL", forge_seq_reuse_prefix(e.0, b, pp, np, null_mut()), [lens, pool]);
    fails!(r, FORGE_ERR_NULL_POINTER, "tokens NULL, n_tokens 2", forge_seq_reuse_prefix(e.0, b, null(), 2, n.ptr()), [n, lens, pool]);
    for (case, bad) in [("seq -1", -1), ("seq INT32_MIN", i32::MIN), ("unknown seq 999", 999)] {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_seq_reuse_prefix(e.0, bad, pp, np, n.ptr()), [n, lens, pool]);
    }
    for (case, bad) in [("token n_vocab", env.n_vocab as i32), ("token -1", -1), ("token INT32_MIN", i32::MIN)] {
        let mut p = prompt.clone();
        p[3] = bad;
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_seq_reuse_prefix(e.0, b, p.as_ptr(), p.len(), n.ptr()), [n, lens, pool]);
    }
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "a sequence with 20 positions", forge_seq_reuse_prefix(e.0, a, pp, np, n.ptr()), [n, lens, pool]);

    ok!(r, "(NULL, 0) tokens", forge_seq_reuse_prefix(e.0, b, null(), 0, n.ptr()));
    r.check(n.get() == 0 && e.len(b) == 0, || format!("forge_seq_reuse_prefix [(NULL, 0)]: reused {}", n.get()));
    // never the last token: 16 tokens reuse nothing, 17 reuse the block
    let mut n = Out::<usize>::one();
    ok!(r, "16 tokens (one block, all of the prompt)", forge_seq_reuse_prefix(e.0, b, pp, 16, n.ptr()));
    r.check(n.get() == 0 && e.len(b) == 0, || format!("forge_seq_reuse_prefix [16 tokens]: reused {}, want 0 (never the last token)", n.get()));
    let mut n = Out::<usize>::one();
    ok!(r, "the 20-token prompt", forge_seq_reuse_prefix(e.0, b, pp, np, n.ptr()));
    let s = e.stats();
    r.check(n.get() == BLOCK && e.len(b) == BLOCK && s.prefix_hits == 1 && s.prefix_tokens_reused == BLOCK as u64, || {
        format!("forge_seq_reuse_prefix: reused {}, len {}, {s:?}", n.get(), e.len(b))
    });
    let (lens, pool) = (SeqLens::of(&e, &[a, b]), Pool::of(&e));
    let mut n = Out::<usize>::one();
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "again, now not empty", forge_seq_reuse_prefix(e.0, b, pp, np, n.ptr()), [n, lens, pool]);
    // the reused positions continue like computed ones
    let rs = rows(b, BLOCK, 4);
    ok!(r, "decode after the reuse", forge_engine_decode(e.0, rs.as_ptr(), rs.len()));
}

fn engine_decode(r: &mut Report, env: &Env) {
    let e = env.engine(0, 0); // n_ctx 16, four blocks
    let (a, b) = (e.seq(), e.seq());
    e.append(a, 3);
    let nv = env.n_vocab as i32;
    let good = [row(a, tok_at(3), 3, true)];
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_engine_decode(null_mut(), good.as_ptr(), 1));
    let (lens, pool) = (SeqLens::of(&e, &[a, b]), Pool::of(&e));
    fails!(r, FORGE_ERR_NULL_POINTER, "rows NULL, n_rows 2", forge_engine_decode(e.0, null(), 2), [lens, pool]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "n_rows 0", forge_engine_decode(e.0, good.as_ptr(), 0), [lens, pool]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "(NULL, 0) rows", forge_engine_decode(e.0, null(), 0), [lens, pool]);
    let bad_rows: [(&str, Vec<forge_batch_row>); 16] = [
        ("seq -1", vec![row(-1, tok_at(0), 0, true)]),
        ("seq INT32_MIN", vec![row(i32::MIN, tok_at(0), 0, true)]),
        ("unknown seq 999", vec![row(999, tok_at(0), 0, true)]),
        ("token -1", vec![row(a, -1, 3, true)]),
        ("token INT32_MIN", vec![row(a, i32::MIN, 3, true)]),
        ("token n_vocab", vec![row(a, nv, 3, true)]),
        ("token INT32_MAX", vec![row(a, i32::MAX, 3, true)]),
        ("pos -1", vec![row(b, tok_at(0), -1, true)]),
        ("pos INT32_MIN", vec![row(b, tok_at(0), i32::MIN, true)]),
        ("pos 4 at length 3 (a gap)", vec![row(a, tok_at(4), 4, true)]),
        ("pos 2 at length 3 (rewrite)", vec![row(a, tok_at(2), 2, true)]),
        ("pos INT32_MAX", vec![row(a, tok_at(3), i32::MAX, true)]),
        ("the same position twice", vec![row(a, tok_at(3), 3, false), row(a, tok_at(3), 3, true)]),
        ("second row of a sequence skips one", vec![row(b, tok_at(0), 0, false), row(b, tok_at(2), 2, true)]),
        ("good rows, then token n_vocab", vec![row(a, tok_at(3), 3, false), row(b, tok_at(0), 0, true), row(b, nv, 1, true)]),
        ("good rows, then unknown seq", vec![row(a, tok_at(3), 3, true), row(b, tok_at(0), 0, true), row(999, 1, 0, true)]),
    ];
    for (case, rs) in &bad_rows {
        fails!(r, FORGE_ERR_INVALID_ARGUMENT, case, forge_engine_decode(e.0, rs.as_ptr(), rs.len()), [lens, pool]);
    }
    // a sequence past n_ctx (16): CONTEXT_FULL, even next to a good row
    let over = rows(a, 3, 14);
    fails!(r, FORGE_ERR_CONTEXT_FULL, "14 rows at length 3 of 16", forge_engine_decode(e.0, over.as_ptr(), over.len()), [lens, pool]);
    let mut mixed = rows(b, 0, 2);
    mixed.extend(rows(a, 3, 14));
    fails!(r, FORGE_ERR_CONTEXT_FULL, "a good sequence, one past n_ctx", forge_engine_decode(e.0, mixed.as_ptr(), mixed.len()), [lens, pool]);
    let fresh17 = rows(b, 0, 17);
    fails!(r, FORGE_ERR_CONTEXT_FULL, "17 rows of an empty sequence", forge_engine_decode(e.0, fresh17.as_ptr(), 17), [lens, pool]);

    // two sequences, interleaved, some rows with logits
    let batch = [row(a, tok_at(3), 3, false), row(b, tok_at(0), 0, true), row(a, tok_at(4), 4, true)];
    ok!(r, "two sequences interleaved", forge_engine_decode(e.0, batch.as_ptr(), 3));
    r.check(e.len(a) == 5 && e.len(b) == 1, || format!("forge_engine_decode: lens {} and {}, want 5 and 1", e.len(a), e.len(b)));
    let full = rows(a, 5, 11);
    ok!(r, "fill a's context (11 rows to 16)", forge_engine_decode(e.0, full.as_ptr(), 11));
    let (lens, pool) = (SeqLens::of(&e, &[a, b]), Pool::of(&e));
    let one_more = [row(b, tok_at(1), 1, true), row(a, tok_at(16), 16, true)];
    fails!(r, FORGE_ERR_CONTEXT_FULL, "a full, one more row", forge_engine_decode(e.0, one_more.as_ptr(), 2), [lens, pool]);

    kv_exhausted(r, env);
    engine_busy(r, env);
}

/// The pool too small for a batch: KV_EXHAUSTED, nothing moved; a sequence
/// with room in its last block still runs.
fn kv_exhausted(r: &mut Report, env: &Env) {
    let e = env.engine(32, 1); // the smallest pool: 32 / 16 + 1 = 3 blocks
    let (x, y) = (e.seq(), e.seq());
    let total = e.stats().blocks_total;
    r.check(total == 3, || format!("forge_engine_new [n_ctx 32, kv_budget 1]: {total} blocks, want 3"));
    let x20 = rows(x, 0, 20);
    ok!(r, "20 rows: two of three blocks", forge_engine_decode(e.0, x20.as_ptr(), 20));
    let (lens, pool) = (SeqLens::of(&e, &[x, y]), Pool::of(&e));
    let y17 = rows(y, 0, 17);
    fails!(r, FORGE_ERR_KV_EXHAUSTED, "17 rows need two blocks, one free", forge_engine_decode(e.0, y17.as_ptr(), 17), [lens, pool]);
    let mut both = rows(x, 20, 1);
    both.extend(rows(y, 0, 17));
    fails!(r, FORGE_ERR_KV_EXHAUSTED, "a row with room, 17 rows without", forge_engine_decode(e.0, both.as_ptr(), both.len()), [lens, pool]);
    let y16 = rows(y, 0, 16);
    ok!(r, "16 rows: the last block", forge_engine_decode(e.0, y16.as_ptr(), 16));
    let s = e.stats();
    r.check(s.blocks_used == 3 && s.blocks_free == 0, || format!("forge_engine_stats: a full pool: {s:?}"));
    let (lens, pool) = (SeqLens::of(&e, &[x, y]), Pool::of(&e));
    let y1 = rows(y, 16, 1);
    fails!(r, FORGE_ERR_KV_EXHAUSTED, "one row into a full pool", forge_engine_decode(e.0, y1.as_ptr(), 1), [lens, pool]);
    let x1 = rows(x, 20, 1);
    ok!(r, "one row with room in its block", forge_engine_decode(e.0, x1.as_ptr(), 1));
    ok!(r, "free x", forge_seq_free(e.0, x));
    ok!(r, "y grows once x is gone", forge_engine_decode(e.0, y1.as_ptr(), 1));
}

/// A handle another thread may use.
#[derive(Clone, Copy)]
struct Shared(*mut forge_engine);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// BUSY for every call that takes the engine: a second thread calls while
/// a batch runs. The calls are ones that change nothing when they do get
/// through (before or after the batch): each must answer BUSY at least once,
/// with its own message and its outs untouched. A batch takes milliseconds
/// and a round of calls microseconds; a longer batch is tried only if a
/// call never met the busy engine.
fn engine_busy(r: &mut Report, env: &Env) {
    let e = env.engine(64, 0);
    let b = e.seq();
    e.append(b, 1);
    let mut seen = [0usize; BUSY_CALLS.len()];
    for n in [16, 64] {
        let a = e.seq();
        let st = busy_round(r, env, &e, a, b, n, &mut seen);
        r.ok("forge_engine_decode", &format!("{n} rows while another thread calls"), st);
        r.check(e.len(a) == n && e.len(b) == 1, || format!("forge_engine_decode: lens {} and {} after the BUSY round", e.len(a), e.len(b)));
        ok!(r, "free the round's sequence", forge_seq_free(e.0, a));
        if seen.iter().all(|&k| k > 0) {
            break;
        }
    }
    for (call, k) in BUSY_CALLS.iter().zip(seen) {
        r.check(k > 0, || format!("{call} [engine busy]: never answered BUSY while a batch ran (BUSY untested)"));
    }
}

const BUSY_CALLS: [&str; 13] = [
    "forge_seq_new",
    "forge_seq_free",
    "forge_seq_fork",
    "forge_seq_keep",
    "forge_seq_len",
    "forge_seq_reuse_prefix",
    "forge_engine_decode",
    "forge_engine_logits",
    "forge_engine_stats",
    "forge_engine_set_preempt",
    "forge_engine_preempted",
    "forge_engine_set_top_k",
    "forge_engine_top",
];

/// One `n`-row batch of `a` on a worker thread; meanwhile this thread
/// makes BUSY_CALLS over and over (`b`: a sequence of length 1). Returns
/// the batch's status.
fn busy_round(r: &mut Report, env: &Env, e: &Eng, a: i32, b: i32, n: usize, seen: &mut [usize; BUSY_CALLS.len()]) -> forge_status {
    use std::sync::atomic::{AtomicBool, Ordering};
    let batch = rows(a, 0, n);
    let h = Shared(e.0);
    let done = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let worker = sc.spawn(|| {
            let h = h;
            // the other thread's calls can hold the engine when the batch
            // arrives: then the batch itself is refused, and tries again
            let st = loop {
                let st = unsafe { forge_engine_decode(h.0, batch.as_ptr(), batch.len()) };
                if st != FORGE_ERR_BUSY {
                    break st;
                }
                std::thread::yield_now();
            };
            done.store(true, Ordering::SeqCst);
            st
        });
        let e = h.0;
        while !done.load(Ordering::SeqCst) {
            for (i, call) in BUSY_CALLS.iter().enumerate() {
                prime_last_error(call);
                let (mut o32, mut osz) = (Out::<i32>::one(), Out::<usize>::one());
                let mut logits = Out::<f32>::poisoned(env.n_vocab);
                let mut stats = Out::<forge_kv_stats>::one();
                let bad_row = [row(999, 1, 0, true)];
                let t = [tok_at(0); 2];
                let st = unsafe {
                    match i {
                        0 => forge_seq_new(e, o32.ptr()),
                        1 => forge_seq_free(e, 999),
                        2 => forge_seq_fork(e, 999, o32.ptr()),
                        3 => forge_seq_keep(e, b, 5),
                        4 => forge_seq_len(e, b, osz.ptr()),
                        5 => forge_seq_reuse_prefix(e, b, t.as_ptr(), 2, osz.ptr()),
                        6 => forge_engine_decode(e, bad_row.as_ptr(), 1),
                        7 => forge_engine_logits(e, 0, logits.ptr(), env.n_vocab),
                        8 => forge_engine_stats(e, stats.ptr()),
                        9 => forge_engine_set_preempt(e, 0),
                        10 => forge_engine_preempted(e, o32.ptr(), 1, osz.ptr()),
                        // full logits (the mode the batch runs in): no change if it gets in
                        11 => forge_engine_set_top_k(e, 0),
                        _ => forge_engine_top(e, 0, o32.ptr(), logits.ptr(), 1, osz.ptr(), null_mut()),
                    }
                };
                if st == FORGE_ERR_BUSY {
                    seen[i] += 1;
                    if seen[i] == 1 {
                        let outs = [("seq_out", o32.untouched()), ("n_out", osz.untouched()), ("logits", logits.untouched()), ("stats", stats.untouched())];
                        r.failed(call, "engine busy", st, FORGE_ERR_BUSY, &outs);
                    }
                } else if i == 0 && st == FORGE_OK {
                    unsafe { forge_seq_free(e, o32.get()) }; // got in before or after the batch
                }
            }
        }
        worker.join().unwrap()
    })
}

fn engine_logits(r: &mut Report, env: &Env) {
    let nv = env.n_vocab;
    let e = env.engine(0, 0);
    let (a, b) = (e.seq(), e.seq());
    let mut buf = Out::<f32>::poisoned(nv);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 0 before any batch", forge_engine_logits(e.0, 0, buf.ptr(), nv), [buf]);
    e.append(a, 2);
    // rows: a@2 (no logits), b@0 (logits), a@3 (logits)
    let batch = [row(a, tok_at(2), 2, false), row(b, tok_at(0), 0, true), row(a, tok_at(3), 3, true)];
    ok!(r, "a batch of 3 rows", forge_engine_decode(e.0, batch.as_ptr(), 3));
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_engine_logits(null(), 1, buf.ptr(), nv), [buf]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 0 did not ask", forge_engine_logits(e.0, 0, buf.ptr(), nv), [buf]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 3 of 3", forge_engine_logits(e.0, 3, buf.ptr(), nv), [buf]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row SIZE_MAX", forge_engine_logits(e.0, usize::MAX, buf.ptr(), nv), [buf]);
    let mut short = Out::<f32>::poisoned(nv - 1);
    fails!(r, FORGE_ERR_BUFFER_TOO_SMALL, "cap n_vocab - 1", forge_engine_logits(e.0, 1, short.ptr(), nv - 1), [short]);
    fails!(r, FORGE_ERR_BUFFER_TOO_SMALL, "(NULL, 0) out", forge_engine_logits(e.0, 1, null_mut(), 0));
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, cap n_vocab", forge_engine_logits(e.0, 1, null_mut(), nv));
    // was a bug: the (pointer, length) rule makes a NULL out with a non-zero
    // cap NULL_POINTER; the cap was compared with n_vocab first and the call
    // answered BUFFER_TOO_SMALL.
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL, cap 3", forge_engine_logits(e.0, 1, null_mut(), 3));

    // success: n_vocab floats, the rest of the buffer untouched
    let mut big = Out::<f32>::poisoned(nv + 1);
    ok!(r, "row 1, cap n_vocab + 1", forge_engine_logits(e.0, 1, big.ptr(), nv + 1));
    let got = big.slice(nv + 1);
    r.check(got[..nv].iter().all(|x| x.is_finite()), || "forge_engine_logits: not n_vocab finite floats".into());
    r.check(got[nv].to_bits() == u32::from_ne_bytes([POISON; 4]), || "forge_engine_logits: wrote past n_vocab".into());
    // the same numbers as forge_eval of that sequence (b: one token)
    let c = env.fresh();
    let mut want = vec![0f32; nv];
    ok!(r, "reference", forge_eval(c.0, [tok_at(0)].as_ptr(), 1, want.as_mut_ptr(), nv));
    let diff = got[..nv].iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    r.check(diff <= 1e-3 * scale.max(1.0), || format!("forge_engine_logits: row 1 differs from forge_eval by {diff} (scale {scale})"));
    let mut row2 = Out::<f32>::poisoned(nv);
    ok!(r, "row 2, cap n_vocab", forge_engine_logits(e.0, 2, row2.ptr(), nv));

    // a failed batch leaves the last successful one's logits
    let bad = [row(a, tok_at(9), 9, true)];
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "a gap (to keep the last batch)", forge_engine_decode(e.0, bad.as_ptr(), 1));
    let mut again = Out::<f32>::poisoned(nv);
    ok!(r, "row 1 after a failed batch", forge_engine_logits(e.0, 1, again.ptr(), nv));
    r.check(again.slice(nv) == &got[..nv], || "forge_engine_logits: a failed batch changed the last batch's logits".into());
}

fn engine_set_top_k(r: &mut Report, env: &Env) {
    let nv = env.n_vocab;
    let e = env.engine(0, 0);
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_engine_set_top_k(null_mut(), 1));
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "k FORGE_TOP_MAX + 1", forge_engine_set_top_k(e.0, FORGE_TOP_MAX + 1));
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "k u32::MAX", forge_engine_set_top_k(e.0, u32::MAX));
    ok!(r, "k FORGE_TOP_MAX", forge_engine_set_top_k(e.0, FORGE_TOP_MAX));
    ok!(r, "k 1", forge_engine_set_top_k(e.0, 1));
    let a = e.seq();
    let batch = [row(a, tok_at(0), 0, true)];
    ok!(r, "a batch under top-1", forge_engine_decode(e.0, batch.as_ptr(), 1));
    let mut buf = Out::<f32>::poisoned(nv);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "full logits under top-k", forge_engine_logits(e.0, 0, buf.ptr(), nv), [buf]);
    // a new mode drops the last step's results
    ok!(r, "k 0: full logits again", forge_engine_set_top_k(e.0, 0));
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 0 after the mode changed", forge_engine_logits(e.0, 0, buf.ptr(), nv), [buf]);
    ok!(r, "free the sequence", forge_seq_free(e.0, a));
}

fn engine_top(r: &mut Report, env: &Env) {
    let nv = env.n_vocab;
    let e = env.engine(0, 0);
    let (a, b) = (e.seq(), e.seq());
    let (mut ids, mut vals, mut n, mut lse) = (Out::<i32>::poisoned(8), Out::<f32>::poisoned(8), Out::<usize>::one(), Out::<f32>::one());
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_engine_top(null(), 0, ids.ptr(), vals.ptr(), 8, n.ptr(), lse.ptr()), [ids, vals, n, lse]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "full-logits mode", forge_engine_top(e.0, 0, ids.ptr(), vals.ptr(), 8, n.ptr(), lse.ptr()), [ids, vals, n, lse]);
    ok!(r, "top-5", forge_engine_set_top_k(e.0, 5));
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 0 before any batch", forge_engine_top(e.0, 0, ids.ptr(), vals.ptr(), 8, n.ptr(), lse.ptr()), [ids, vals, n, lse]);
    e.append(a, 2);
    // rows: a@2 (no logits), b@0 (logits), a@3 (logits)
    let batch = [row(a, tok_at(2), 2, false), row(b, tok_at(0), 0, true), row(a, tok_at(3), 3, true)];
    ok!(r, "a batch of 3 rows", forge_engine_decode(e.0, batch.as_ptr(), 3));
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_engine_top(e.0, 1, ids.ptr(), vals.ptr(), 8, null_mut(), lse.ptr()), [ids, vals, lse]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 0 did not ask", forge_engine_top(e.0, 0, ids.ptr(), vals.ptr(), 8, n.ptr(), lse.ptr()), [ids, vals, n, lse]);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 3 of 3", forge_engine_top(e.0, 3, ids.ptr(), vals.ptr(), 8, n.ptr(), lse.ptr()), [ids, vals, n, lse]);
    fails!(r, FORGE_ERR_NULL_POINTER, "ids NULL, cap 8", forge_engine_top(e.0, 1, null_mut(), vals.ptr(), 8, n.ptr(), lse.ptr()), [vals, n, lse]);
    fails!(r, FORGE_ERR_NULL_POINTER, "logits NULL, cap 8", forge_engine_top(e.0, 1, ids.ptr(), null_mut(), 8, n.ptr(), lse.ptr()), [ids, n, lse]);
    fails!(r, FORGE_ERR_NULL_POINTER, "ids NULL, cap 3", forge_engine_top(e.0, 1, null_mut(), vals.ptr(), 3, n.ptr(), lse.ptr()), [vals, n, lse]);
    let (mut short_i, mut short_v) = (Out::<i32>::poisoned(4), Out::<f32>::poisoned(4));
    too_small!(r, "cap 4 < k 5", forge_engine_top(e.0, 1, short_i.ptr(), short_v.ptr(), 4, n.ptr(), lse.ptr()), n == 5, [short_i, short_v, lse]);
    too_small!(r, "(NULL, 0)", forge_engine_top(e.0, 1, null_mut(), null_mut(), 0, n.ptr(), lse.ptr()), n == 5, [lse]);

    // success: the five largest of the row's logits, in order, the rest untouched
    let mut n = Out::<usize>::one();
    ok!(r, "row 1, cap 8", forge_engine_top(e.0, 1, ids.ptr(), vals.ptr(), 8, n.ptr(), lse.ptr()));
    r.check(n.get() == 5, || format!("forge_engine_top: *n_out = {}, want 5", n.get()));
    let (got_i, got_v) = (ids.slice(8).to_vec(), vals.slice(8).to_vec());
    r.check(got_i[5..].iter().all(|&x| x.to_ne_bytes() == [POISON; 4]), || "forge_engine_top: wrote ids past k".into());
    // the same row's full logits from a fresh engine in the default mode
    let f = env.engine(0, 0);
    let (fa, fb) = (f.seq(), f.seq());
    f.append(fa, 2);
    let fbatch = [row(fa, tok_at(2), 2, false), row(fb, tok_at(0), 0, true), row(fa, tok_at(3), 3, true)];
    ok!(r, "the same batch, full logits", forge_engine_decode(f.0, fbatch.as_ptr(), 3));
    let mut full = vec![0f32; nv];
    ok!(r, "row 1's logits", forge_engine_logits(f.0, 1, full.as_mut_ptr(), nv));
    let mut order: Vec<usize> = (0..nv).collect();
    order.sort_by(|&x, &y| full[y].total_cmp(&full[x]).then(x.cmp(&y)));
    let want_i: Vec<i32> = order[..5].iter().map(|&i| i as i32).collect();
    r.check(got_i[..5] == want_i[..], || format!("forge_engine_top: ids {:?}, the full logits' top 5 {want_i:?}", &got_i[..5]));
    let close = got_i[..5].iter().zip(&got_v[..5]).all(|(&i, &v)| (v - full[i as usize]).abs() <= 1e-4 * full[i as usize].abs().max(1.0));
    r.check(close, || format!("forge_engine_top: logits {:?} differ from the full row's", &got_v[..5]));
    let m = full.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let want_lse = m + full.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    r.check((lse.get() as f64 - want_lse).abs() <= 1e-3, || format!("forge_engine_top: log-sum-exp {} vs {want_lse}", lse.get()));
    // lse may be NULL
    let mut n2 = Out::<usize>::one();
    ok!(r, "lse NULL", forge_engine_top(e.0, 2, ids.ptr(), vals.ptr(), 5, n2.ptr(), null_mut()));
}

fn engine_stats(r: &mut Report, env: &Env) {
    let e = env.engine(0, 0);
    let mut s = Out::<forge_kv_stats>::one();
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_engine_stats(null(), s.ptr()), [s]);
    fails!(r, FORGE_ERR_NULL_POINTER, "out NULL", forge_engine_stats(e.0, null_mut()));
    let a = e.seq();
    e.append(a, 5);
    e.seq();
    ok!(r, "two sequences, 5 positions", forge_engine_stats(e.0, s.ptr()));
    if !s.untouched() {
        let s = s.get();
        r.check(
            s.block_size == BLOCK as u32
                && s.blocks_total == 4
                && s.blocks_used == 1
                && s.blocks_used + s.blocks_free == s.blocks_total
                && s.blocks_cached <= s.blocks_free
                && s.n_seqs == 2
                && (s.prefix_hits, s.prefix_tokens_reused, s.cow_copies) == (0, 0, 0),
            || format!("forge_engine_stats: {s:?}"),
        );
    }
}

/// The smallest pool (n_ctx 16: two blocks) full with a and b; a batch of
/// a (room in its block) and c (new and empty, needs a block): with
/// preemption, c (the newest) goes.
fn full_pool_batch(env: &Env) -> (Eng, [i32; 3], Vec<forge_batch_row>) {
    let e = env.engine(16, 1);
    let (a, b, c) = (e.seq(), e.seq(), e.seq());
    e.append(a, 1);
    e.append(b, 1);
    let mut batch = rows(a, 1, 1);
    batch.extend(rows(c, 0, 1));
    (e, [a, b, c], batch)
}

fn engine_set_preempt(r: &mut Report, env: &Env) {
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_engine_set_preempt(null_mut(), 1));
    let (e, [a, b, c], batch) = full_pool_batch(env);
    let (lens, pool) = (SeqLens::of(&e, &[a, b, c]), Pool::of(&e));
    fails!(r, FORGE_ERR_KV_EXHAUSTED, "preemption off (the default)", forge_engine_decode(e.0, batch.as_ptr(), 2), [lens, pool]);
    ok!(r, "on", forge_engine_set_preempt(e.0, 1));
    ok!(r, "off again", forge_engine_set_preempt(e.0, 0));
    fails!(r, FORGE_ERR_KV_EXHAUSTED, "preemption turned off again", forge_engine_decode(e.0, batch.as_ptr(), 2), [lens, pool]);
    ok!(r, "on, any non-zero", forge_engine_set_preempt(e.0, -7));
    ok!(r, "the batch preempts c, the newest", forge_engine_decode(e.0, batch.as_ptr(), 2));
    let lens = [a, b, c].map(|s| e.len(s));
    r.check(lens == [2, 1, 0], || format!("forge_engine_decode with preemption: lengths {lens:?}, want [2, 1, 0]"));
}

fn engine_preempted(r: &mut Report, env: &Env) {
    let (e, [_, _, c], batch) = full_pool_batch(env);
    let (mut ids, mut n) = (Out::<i32>::poisoned(2), Out::<usize>::one());
    fails!(r, FORGE_ERR_NULL_POINTER, "NULL engine", forge_engine_preempted(null(), ids.ptr(), 2, n.ptr()), [ids, n]);
    fails!(r, FORGE_ERR_NULL_POINTER, "n_out NULL", forge_engine_preempted(e.0, ids.ptr(), 2, null_mut()), [ids]);
    ok!(r, "none before any preemption", forge_engine_preempted(e.0, ids.ptr(), 2, n.ptr()));
    r.check(n.get() == 0 && ids.untouched(), || format!("forge_engine_preempted: none preempted yet, *n_out = {}", n.get()));
    ok!(r, "on", forge_engine_set_preempt(e.0, 1));
    ok!(r, "a preempting batch", forge_engine_decode(e.0, batch.as_ptr(), 2));
    let mut n = Out::<usize>::one();
    too_small!(r, "(NULL, 0) asks the count", forge_engine_preempted(e.0, null_mut(), 0, n.ptr()), n == 1);
    fails!(r, FORGE_ERR_NULL_POINTER, "ids NULL, cap 1", forge_engine_preempted(e.0, null_mut(), 1, n.ptr()));
    let mut buf = Out::<f32>::poisoned(env.n_vocab);
    fails!(r, FORGE_ERR_INVALID_ARGUMENT, "row 1: c was preempted", forge_engine_logits(e.0, 1, buf.ptr(), env.n_vocab), [buf]);
    let msg = common::last_error();
    r.check(msg.contains("preempted"), || format!("forge_engine_logits of a preempted row: message {msg:?} does not say why"));
    let (mut ids, mut n) = (Out::<i32>::poisoned(2), Out::<usize>::one());
    ok!(r, "cap 2", forge_engine_preempted(e.0, ids.ptr(), 2, n.ptr()));
    let got = ids.slice(2);
    r.check(n.get() == 1 && got[0] == c && got[1].to_ne_bytes() == [POISON; 4], || format!("forge_engine_preempted: {} ids {got:?}, want [{c}] and the rest untouched", n.get()));
}
