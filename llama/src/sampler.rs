//! The sampler API of llama.h: `struct llama_sampler` objects with an
//! interface table. ROCmForge's own samplers (`crate::sampling`, the
//! grammar sampler over `crate::grammar`) sit behind one table; chains
//! behind another; samplers a caller builds with its own table (NULL
//! members allowed, as llama-cpp-python's `CustomSampler` does) are called
//! through it and never deallocated here unless this library allocated
//! them (`llama_sampler_init`).

use std::collections::HashSet;
use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::context::Context;
use crate::grammar::{Grammar, Matcher};
use crate::log::{error, warning};
use crate::model::Vocab;
use crate::sampling::{self, Cur, Sampler, TokenData};
use crate::types::*;

/// The `llama_sampler` structs this library allocated (only those it frees).
static OWNED: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn alloc(iface: *mut llama_sampler_i, ctx: *mut c_void) -> *mut llama_sampler {
    let p = Box::into_raw(Box::new(llama_sampler { iface, ctx }));
    OWNED.lock().get_or_insert_with(HashSet::new).insert(p as usize);
    p
}

fn owned(p: *const llama_sampler) -> bool {
    OWNED.lock().as_ref().is_some_and(|s| s.contains(&(p as usize)))
}

fn release(p: *mut llama_sampler) {
    let mine = OWNED.lock().as_mut().is_some_and(|s| s.remove(&(p as usize)));
    if mine {
        // SAFETY: allocated by `alloc` and removed from OWNED just now.
        drop(unsafe { Box::from_raw(p) });
    }
}

// ---- the table of ROCmForge's own samplers ----------------------------------

struct Own {
    s: Box<dyn Sampler>,
    name: CString,
}

unsafe fn own<'a>(smpl: *const llama_sampler) -> &'a mut Own {
    &mut *((*smpl).ctx as *mut Own)
}

unsafe extern "C" fn own_name(smpl: *const llama_sampler) -> *const c_char {
    own(smpl).name.as_ptr()
}
unsafe extern "C" fn own_accept(smpl: *mut llama_sampler, t: llama_token) {
    crate::guard("llama_sampler_accept", (), || own(smpl).s.accept(t))
}
unsafe extern "C" fn own_apply(smpl: *mut llama_sampler, cur_p: *mut llama_token_data_array) {
    crate::guard("llama_sampler_apply", (), || own_apply_inner(smpl, cur_p))
}
unsafe fn own_apply_inner(smpl: *mut llama_sampler, cur_p: *mut llama_token_data_array) {
    let Some(a) = cur_p.as_mut() else { return };
    if a.data.is_null() && a.size > 0 {
        return;
    }
    // TokenData is llama_token_data field for field (both repr(C))
    let data: &mut [TokenData] = if a.size == 0 { &mut [] } else { std::slice::from_raw_parts_mut(a.data as *mut TokenData, a.size) };
    let base = a.data as *const TokenData;
    let mut cur = Cur { data, size: a.size, selected: a.selected, sorted: a.sorted };
    own(smpl).s.apply(&mut cur);
    // a sampler may move the start of the candidates (XTC, as llama.cpp's `data += n`)
    let moved = cur.offset_from(base);
    a.data = a.data.add(moved);
    a.size = cur.size;
    a.selected = cur.selected;
    a.sorted = cur.sorted;
}
unsafe extern "C" fn own_reset(smpl: *mut llama_sampler) {
    crate::guard("llama_sampler_reset", (), || own(smpl).s.reset())
}
unsafe extern "C" fn own_clone(smpl: *const llama_sampler) -> *mut llama_sampler {
    crate::guard("llama_sampler_clone", std::ptr::null_mut(), || new_own(own(smpl).s.clone_box()))
}
unsafe extern "C" fn own_free(smpl: *mut llama_sampler) {
    drop(Box::from_raw((*smpl).ctx as *mut Own));
}

struct Table(std::cell::UnsafeCell<llama_sampler_i>);
// SAFETY: the tables are never written after their construction.
unsafe impl Sync for Table {}

const fn table(
    name: unsafe extern "C" fn(*const llama_sampler) -> *const c_char,
    accept: unsafe extern "C" fn(*mut llama_sampler, llama_token),
    apply: unsafe extern "C" fn(*mut llama_sampler, *mut llama_token_data_array),
    reset: unsafe extern "C" fn(*mut llama_sampler),
    clone: unsafe extern "C" fn(*const llama_sampler) -> *mut llama_sampler,
    free: unsafe extern "C" fn(*mut llama_sampler),
) -> Table {
    Table(std::cell::UnsafeCell::new(llama_sampler_i {
        name: Some(name),
        accept: Some(accept),
        apply: Some(apply),
        reset: Some(reset),
        clone: Some(clone),
        free: Some(free),
        backend_init: std::ptr::null_mut(),
        backend_accept: std::ptr::null_mut(),
        backend_apply: std::ptr::null_mut(),
        backend_set_input: std::ptr::null_mut(),
        backend_reset: std::ptr::null_mut(),
        copy_state: None,
    }))
}

static OWN_IFACE: Table = table(own_name, own_accept, own_apply, own_reset, own_clone, own_free);

fn new_own(s: Box<dyn Sampler>) -> *mut llama_sampler {
    let name = CString::new(s.name()).unwrap_or_default();
    let ctx = Box::into_raw(Box::new(Own { s, name })) as *mut c_void;
    alloc(OWN_IFACE.0.get(), ctx)
}

// ---- chains ----------------------------------------------------------------------

struct Chain {
    members: Vec<*mut llama_sampler>,
    perf: llama_perf_sampler_data,
}

static CHAIN_IFACE: Table = table(chain_name, chain_accept, chain_apply, chain_reset, chain_clone, chain_free);

unsafe fn chain<'a>(smpl: *const llama_sampler) -> Option<&'a mut Chain> {
    (!smpl.is_null() && (*smpl).iface == CHAIN_IFACE.0.get() && !(*smpl).ctx.is_null()).then(|| &mut *((*smpl).ctx as *mut Chain))
}

unsafe extern "C" fn chain_name(_smpl: *const llama_sampler) -> *const c_char {
    c"chain".as_ptr()
}
unsafe extern "C" fn chain_accept(smpl: *mut llama_sampler, t: llama_token) {
    if let Some(c) = chain(smpl) {
        for &m in &c.members {
            llama_sampler_accept(m, t);
        }
    }
}
unsafe extern "C" fn chain_apply(smpl: *mut llama_sampler, cur_p: *mut llama_token_data_array) {
    if let Some(c) = chain(smpl) {
        for &m in &c.members {
            // a member without apply is skipped, as llama.cpp's chain does
            if let Some(f) = m.as_ref().and_then(|s| s.iface.as_ref()).and_then(|i| i.apply) {
                f(m, cur_p);
            }
        }
    }
}
unsafe extern "C" fn chain_reset(smpl: *mut llama_sampler) {
    if let Some(c) = chain(smpl) {
        for &m in &c.members {
            llama_sampler_reset(m);
        }
        c.perf = llama_perf_sampler_data::default();
    }
}
unsafe extern "C" fn chain_clone(smpl: *const llama_sampler) -> *mut llama_sampler {
    let Some(c) = chain(smpl) else { return std::ptr::null_mut() };
    let mut members = Vec::with_capacity(c.members.len());
    for &m in &c.members {
        let k = llama_sampler_clone(m);
        if k.is_null() {
            for k in members {
                llama_sampler_free(k);
            }
            return std::ptr::null_mut();
        }
        members.push(k);
    }
    alloc(CHAIN_IFACE.0.get(), Box::into_raw(Box::new(Chain { members, perf: c.perf })) as *mut c_void)
}
unsafe extern "C" fn chain_free(smpl: *mut llama_sampler) {
    let c = Box::from_raw((*smpl).ctx as *mut Chain);
    for m in c.members {
        llama_sampler_free(m);
    }
}

// ---- the grammar sampler ------------------------------------------------------------

/// Tokens whose text a grammar allows: the others' logits go to -inf. An
/// end-of-generation token is allowed where the grammar may end; tokens
/// with no text never are (llama.cpp's rules).
struct GrammarSampler {
    grammar: Arc<Grammar>,
    state: Matcher,
    /// Every token's text (special tokens rendered), and whether it ends generation.
    pieces: Arc<Vec<Vec<u8>>>,
    eog: Arc<Vec<bool>>,
}

impl Sampler for GrammarSampler {
    fn name(&self) -> &'static str {
        "grammar"
    }
    fn accept(&mut self, t: i32) {
        let Some(p) = usize::try_from(t).ok().and_then(|i| self.pieces.get(i)) else { return };
        if self.eog.get(t as usize).copied().unwrap_or(false) {
            return;
        }
        if let Err(e) = self.state.accept(p) {
            error!("grammar sampler: token {t} is not allowed here: {e}");
        }
    }
    fn apply(&mut self, cur: &mut Cur) {
        let can_end = self.state.can_end();
        let n = cur.size;
        let mut idx = Vec::with_capacity(n);
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(n);
        for (i, d) in cur.data[..n].iter_mut().enumerate() {
            let id = d.id as usize;
            if self.eog.get(id).copied().unwrap_or(false) {
                if !can_end {
                    d.logit = f32::NEG_INFINITY;
                }
                continue;
            }
            match self.pieces.get(id) {
                Some(p) if !p.is_empty() && p[0] != 0 => {
                    idx.push(i);
                    pieces.push(p);
                }
                _ => d.logit = f32::NEG_INFINITY,
            }
        }
        let ok = self.state.allowed_mask(&pieces);
        for (k, &i) in idx.iter().enumerate() {
            if !ok[k] {
                cur.data[i].logit = f32::NEG_INFINITY;
            }
        }
    }
    fn reset(&mut self) {
        self.state = Matcher::new(self.grammar.clone());
    }
    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(GrammarSampler { grammar: self.grammar.clone(), state: self.state.clone(), pieces: self.pieces.clone(), eog: self.eog.clone() })
    }
}

/// A no-op sampler (llama.cpp's grammar sampler without a grammar).
struct Nothing(&'static str);
impl Sampler for Nothing {
    fn name(&self) -> &'static str {
        self.0
    }
    fn apply(&mut self, _cur: &mut Cur) {}
    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(Nothing(self.0))
    }
}

fn pieces_of(v: &Vocab) -> (Vec<Vec<u8>>, Vec<bool>) {
    let n = v.n_tokens();
    let pieces = (0..n).map(|t| v.tok().token_to_piece(t as u32, true).map(|p| p.to_vec()).unwrap_or_default()).collect();
    let eog = (0..n).map(|t| v.is_eog(t)).collect();
    (pieces, eog)
}

// ---- the exported calls ----------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_init(iface: *mut llama_sampler_i, ctx: *mut c_void) -> *mut llama_sampler {
    alloc(iface, ctx)
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_name(smpl: *const llama_sampler) -> *const c_char {
    match smpl.as_ref().and_then(|s| s.iface.as_ref()).and_then(|i| i.name) {
        Some(f) => f(smpl),
        None => c"(custom)".as_ptr(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_accept(smpl: *mut llama_sampler, t: llama_token) {
    if let Some(f) = smpl.as_ref().and_then(|s| s.iface.as_ref()).and_then(|i| i.accept) {
        f(smpl, t)
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_apply(smpl: *mut llama_sampler, cur_p: *mut llama_token_data_array) {
    match smpl.as_ref().and_then(|s| s.iface.as_ref()).and_then(|i| i.apply) {
        Some(f) => f(smpl, cur_p),
        None => error!("llama_sampler_apply: the sampler has no apply"),
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_reset(smpl: *mut llama_sampler) {
    if let Some(f) = smpl.as_ref().and_then(|s| s.iface.as_ref()).and_then(|i| i.reset) {
        f(smpl)
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_clone(smpl: *const llama_sampler) -> *mut llama_sampler {
    let Some(s) = smpl.as_ref() else { return std::ptr::null_mut() };
    match s.iface.as_ref().and_then(|i| i.clone) {
        Some(f) => f(smpl),
        None if s.ctx.is_null() => alloc(s.iface, std::ptr::null_mut()),
        None => {
            error!("llama_sampler_clone: the sampler does not support cloning");
            std::ptr::null_mut()
        }
    }
}

/// Copy `src`'s state into `dst` (same kind of sampler): through the
/// interface's copy_state, or, as llama.cpp does without one, by cloning
/// `src` and moving the clone's state into `dst`.
#[no_mangle]
pub unsafe extern "C" fn llama_sampler_copy(src: *const llama_sampler, dst: *mut llama_sampler) {
    let (Some(s), Some(d)) = (src.as_ref(), dst.as_mut()) else { return };
    if s.iface != d.iface {
        error!("llama_sampler_copy: the samplers are of different kinds");
        return;
    }
    if let Some(f) = s.iface.as_ref().and_then(|i| i.copy_state) {
        return f(src, dst);
    }
    let k = llama_sampler_clone(src);
    let Some(kr) = k.as_mut() else { return };
    // free dst's state, take the clone's, drop the clone's shell
    if let Some(f) = d.iface.as_ref().and_then(|i| i.free) {
        f(dst);
    }
    d.ctx = std::mem::replace(&mut kr.ctx, std::ptr::null_mut());
    release(k);
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_free(smpl: *mut llama_sampler) {
    let Some(s) = smpl.as_ref() else { return };
    if let Some(f) = s.iface.as_ref().and_then(|i| i.free) {
        f(smpl)
    }
    release(smpl);
}

#[no_mangle]
pub extern "C" fn llama_sampler_chain_init(p: llama_sampler_chain_params) -> *mut llama_sampler {
    let _ = p.no_perf;
    alloc(CHAIN_IFACE.0.get(), Box::into_raw(Box::new(Chain { members: Vec::new(), perf: Default::default() })) as *mut c_void)
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_chain_add(c: *mut llama_sampler, smpl: *mut llama_sampler) {
    if let (Some(c), false) = (chain(c), smpl.is_null()) {
        c.members.push(smpl);
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_chain_get(c: *mut llama_sampler, i: i32) -> *mut llama_sampler {
    if i == -1 && chain(c).is_some() {
        return c; // llama.cpp: -1 is the chain itself
    }
    chain(c).and_then(|c| usize::try_from(i).ok().and_then(|i| c.members.get(i).copied())).unwrap_or(std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_chain_n(c: *const llama_sampler) -> i32 {
    chain(c).map_or(0, |c| c.members.len() as i32)
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_chain_remove(c: *mut llama_sampler, i: i32) -> *mut llama_sampler {
    match chain(c) {
        Some(c) if i >= 0 && (i as usize) < c.members.len() => c.members.remove(i as usize),
        _ => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub extern "C" fn llama_set_sampler(_c: *mut Context, _s: llama_seq_id, _smpl: *mut llama_sampler) -> bool {
    warning!("llama_set_sampler: sampling on the backend is not supported; use llama_sampler_sample");
    false
}

#[no_mangle]
pub extern "C" fn llama_sampler_init_greedy() -> *mut llama_sampler {
    new_own(sampling::greedy())
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_dist(seed: u32) -> *mut llama_sampler {
    new_own(sampling::dist(seed))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_top_k(k: i32) -> *mut llama_sampler {
    new_own(sampling::top_k(k))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_top_p(p: f32, min_keep: usize) -> *mut llama_sampler {
    new_own(sampling::top_p(p, min_keep))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_min_p(p: f32, min_keep: usize) -> *mut llama_sampler {
    new_own(sampling::min_p(p, min_keep))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_typical(p: f32, min_keep: usize) -> *mut llama_sampler {
    new_own(sampling::typical(p, min_keep))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_temp(t: f32) -> *mut llama_sampler {
    new_own(sampling::temp(t))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_temp_ext(t: f32, delta: f32, exponent: f32) -> *mut llama_sampler {
    new_own(sampling::temp_ext(t, delta, exponent))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_xtc(p: f32, t: f32, min_keep: usize, seed: u32) -> *mut llama_sampler {
    new_own(sampling::xtc(p, t, min_keep, seed))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_top_n_sigma(n: f32) -> *mut llama_sampler {
    new_own(sampling::top_n_sigma(n))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_mirostat(n_vocab: i32, seed: u32, tau: f32, eta: f32, m: i32) -> *mut llama_sampler {
    new_own(sampling::mirostat(n_vocab, seed, tau, eta, m))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_mirostat_v2(seed: u32, tau: f32, eta: f32) -> *mut llama_sampler {
    new_own(sampling::mirostat_v2(seed, tau, eta))
}
#[no_mangle]
pub extern "C" fn llama_sampler_init_penalties(n_vocab: i32, last_n: i32, repeat: f32, freq: f32, present: f32) -> *mut llama_sampler {
    new_own(sampling::penalties(n_vocab, last_n, repeat, freq, present))
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_init_logit_bias(n_vocab: i32, n: i32, bias: *const llama_logit_bias) -> *mut llama_sampler {
    let biases: Vec<(i32, f32)> = if bias.is_null() || n <= 0 { Vec::new() } else { std::slice::from_raw_parts(bias, n as usize).iter().map(|b| (b.token, b.bias)).collect() };
    new_own(sampling::logit_bias(n_vocab, &biases))
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_init_dry(v: *const Vocab, multiplier: f32, base: f32, allowed_length: i32, last_n: i32, breakers: *const *const c_char, n_breakers: usize) -> *mut llama_sampler {
    crate::guard("llama_sampler_init_dry", std::ptr::null_mut(), || init_dry(v, multiplier, base, allowed_length, last_n, breakers, n_breakers))
}

unsafe fn init_dry(v: *const Vocab, multiplier: f32, base: f32, allowed_length: i32, last_n: i32, breakers: *const *const c_char, n_breakers: usize) -> *mut llama_sampler {
    let Some(v) = v.as_ref() else { return std::ptr::null_mut() };
    let mut b: Vec<String> = Vec::new();
    for i in 0..if breakers.is_null() { 0 } else { n_breakers } {
        if let Some(s) = crate::cstr_bytes(*breakers.add(i)) {
            b.push(String::from_utf8_lossy(s).into_owned());
        }
    }
    // the token texts as llama.cpp detokenizes one token (special ones rendered)
    let (pieces, _) = pieces_of(v);
    let mut tokenize = |text: &[u8]| -> Vec<i32> { v.tok().encode(&String::from_utf8_lossy(text), false, false).into_iter().map(|t| t as i32).collect() };
    new_own(sampling::dry_with_tokenizer(&pieces, &mut tokenize, multiplier, base, allowed_length, last_n, &b))
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_init_grammar(v: *const Vocab, src: *const c_char, root: *const c_char) -> *mut llama_sampler {
    crate::guard("llama_sampler_init_grammar", std::ptr::null_mut(), || init_grammar(v, src, root))
}

unsafe fn init_grammar(v: *const Vocab, src: *const c_char, root: *const c_char) -> *mut llama_sampler {
    let Some(v) = v.as_ref() else { return std::ptr::null_mut() };
    let Some(src) = crate::cstr_bytes(src).filter(|s| !s.is_empty()) else { return new_own(Box::new(Nothing("grammar"))) };
    let root = crate::cstr_bytes(root).map_or("root".to_string(), |r| String::from_utf8_lossy(r).into_owned());
    let g = match Grammar::parse(&String::from_utf8_lossy(src), &root) {
        Ok(g) => g,
        Err(e) => {
            error!("llama_sampler_init_grammar: failed to parse grammar: {e}");
            return std::ptr::null_mut();
        }
    };
    let (pieces, eog) = pieces_of(v);
    new_own(Box::new(GrammarSampler { state: Matcher::new(g.clone()), grammar: g, pieces: Arc::new(pieces), eog: Arc::new(eog) }))
}

#[no_mangle]
pub extern "C" fn llama_sampler_init_grammar_lazy(_v: *const Vocab, _s: *const c_char, _r: *const c_char, _w: *const *const c_char, _nw: usize, _t: *const llama_token, _nt: usize) -> *mut llama_sampler {
    error!("llama_sampler_init_grammar_lazy: lazy grammars are not supported by ROCmForge");
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_sampler_init_grammar_lazy_patterns(_v: *const Vocab, _s: *const c_char, _r: *const c_char, _p: *const *const c_char, _np: usize, _t: *const llama_token, _nt: usize) -> *mut llama_sampler {
    error!("llama_sampler_init_grammar_lazy_patterns: lazy grammars are not supported by ROCmForge");
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn llama_sampler_init_adaptive_p(target: f32, decay: f32, seed: u32) -> *mut llama_sampler {
    new_own(sampling::adaptive_p(target, decay, seed))
}

#[no_mangle]
pub extern "C" fn llama_sampler_init_infill(_v: *const Vocab) -> *mut llama_sampler {
    error!("llama_sampler_init_infill: not supported by ROCmForge");
    std::ptr::null_mut()
}

#[no_mangle]
pub unsafe extern "C" fn llama_sampler_get_seed(smpl: *const llama_sampler) -> u32 {
    if let Some(c) = chain(smpl) {
        for &m in c.members.iter().rev() {
            let s = llama_sampler_get_seed(m);
            if s != LLAMA_DEFAULT_SEED {
                return s;
            }
        }
        return LLAMA_DEFAULT_SEED;
    }
    match smpl.as_ref() {
        Some(s) if s.iface == OWN_IFACE.0.get() && owned(smpl) => own(smpl).s.seed().unwrap_or(LLAMA_DEFAULT_SEED),
        _ => LLAMA_DEFAULT_SEED,
    }
}

/// Sample from the logits of batch index `idx` (negative: from the last
/// output) through `smpl`, accept the token and return it. No reference to
/// the context is held while the samplers run (a caller's sampler may call
/// back into the context).
#[no_mangle]
pub unsafe extern "C" fn llama_sampler_sample(smpl: *mut llama_sampler, ctx: *mut Context, idx: i32) -> llama_token {
    if smpl.is_null() || ctx.is_null() {
        error!("llama_sampler_sample: NULL sampler or context");
        return LLAMA_TOKEN_NULL;
    }
    crate::guard("llama_sampler_sample", LLAMA_TOKEN_NULL, || sample(smpl, ctx, idx))
}

unsafe fn sample(smpl: *mut llama_sampler, ctx: *mut Context, idx: i32) -> llama_token {
    let t0 = std::time::Instant::now();
    let mut cand = {
        let c = &mut *ctx;
        let mut cand = std::mem::take(&mut c.cand);
        cand.clear();
        match c.logits_ith(idx) {
            Some(row) => cand.extend(row.iter().enumerate().map(|(i, &l)| llama_token_data { id: i as i32, logit: l, p: 0.0 })),
            None => {
                error!("llama_sampler_sample: no logits for index {idx}");
                c.cand = cand;
                return LLAMA_TOKEN_NULL;
            }
        }
        cand
    };
    let mut arr = llama_token_data_array { data: cand.as_mut_ptr(), size: cand.len(), selected: -1, sorted: false };
    llama_sampler_apply(smpl, &mut arr);
    let tok = if arr.selected >= 0 && (arr.selected as usize) < arr.size && !arr.data.is_null() {
        Some((*arr.data.add(arr.selected as usize)).id)
    } else {
        error!("llama_sampler_sample: the sampler selected no token (end the chain with greedy or dist)");
        None
    };
    if let Some(t) = tok {
        llama_sampler_accept(smpl, t);
    }
    let c = &mut *ctx;
    c.cand = cand;
    let Some(tok) = tok else { return LLAMA_TOKEN_NULL };
    if let Some(ch) = chain(smpl) {
        ch.perf.t_sample_ms += t0.elapsed().as_secs_f64() * 1e3;
        ch.perf.n_sample += 1;
    }
    if let Some(t) = c.timing.as_mut() {
        t.samples += 1;
        t.layer_s += t0.elapsed().as_secs_f64();
    }
    tok
}

#[no_mangle]
pub unsafe extern "C" fn llama_perf_sampler(c: *const llama_sampler) -> llama_perf_sampler_data {
    chain(c).map_or_else(Default::default, |c| c.perf)
}

#[no_mangle]
pub unsafe extern "C" fn llama_perf_sampler_print(c: *const llama_sampler) {
    if let Some(c) = chain(c) {
        crate::log::log(crate::log::LEVEL_INFO, &format!("llama_perf_sampler_print: sampling time = {:.2} ms / {} runs", c.perf.t_sample_ms, c.perf.n_sample));
    }
}

#[no_mangle]
pub unsafe extern "C" fn llama_perf_sampler_reset(c: *mut llama_sampler) {
    if let Some(c) = chain(c) {
        c.perf = Default::default();
    }
}
