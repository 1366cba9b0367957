//! llama.cpp-compatible token samplers.
//!
//! This module re-implements the CPU samplers of llama.cpp (`src/llama-sampler.cpp` of the tree
//! vendored by llama-cpp-python 0.3.36) with the same observable behaviour: the same candidate
//! order (including the order of *tied* logits, because the libstdc++ `std::sort` /
//! `std::partial_sort` algorithms and llama.cpp's bucket partial sort are ported as-is), the same
//! `size` / `selected` / `sorted` updates, the same `f32`/`f64` arithmetic, and the same random
//! draws: `std::mt19937` plus libstdc++'s `generate_canonical`, `uniform_real_distribution` and
//! `discrete_distribution`, so that a seeded sampler picks the same tokens as llama.cpp.
//!
//! The samplers operate on a [`Cur`], a safe view of `llama_token_data_array`. They are meant to
//! be wrapped into the C sampler ABI (`struct llama_sampler` + `llama_sampler_i`) elsewhere; the
//! constructor functions mirror the `llama_sampler_init_*` functions of `llama.h`, including the
//! fact that parameter values which make a sampler a no-op yield an "empty" sampler whose name is
//! the original name prefixed with `?` (e.g. `top_k(0).name() == "?top-k"`).
//!
//! Not implemented here: the grammar samplers and `infill` (they need a vocabulary / grammar
//! engine), and llama.cpp's backend (GPU graph) sampling paths.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// `LLAMA_DEFAULT_SEED`: passing it as a seed means "draw a random seed".
pub const LLAMA_DEFAULT_SEED: u32 = 0xFFFF_FFFF;
/// `LLAMA_TOKEN_NULL`.
pub const LLAMA_TOKEN_NULL: i32 = -1;

/// One candidate token; same layout as `llama_token_data`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct TokenData {
    pub id: i32,
    pub logit: f32,
    pub p: f32,
}

/// A view of llama_token_data_array: the candidates data[..size] (a sampler may reorder them and
/// shrink size, never grow it), the index of the selected one (-1: none), whether sorted by logit,
/// descending.
///
/// Note on XTC: llama.cpp's XTC sampler drops the most probable candidates by advancing the
/// array's `data` pointer (`cur_p->data += n`). The Rust port does the same to `data` (it becomes
/// a sub-slice starting `n` elements later), so a C wrapper must write the pointer back, e.g.
/// `arr.data = base.add(cur.offset_from(base))`, in addition to `size`, `selected` and `sorted`.
pub struct Cur<'a> {
    pub data: &'a mut [TokenData],
    pub size: usize,
    pub selected: i64,
    pub sorted: bool,
}

impl<'a> Cur<'a> {
    /// All of `data` as candidates, nothing selected, not sorted.
    pub fn new(data: &'a mut [TokenData]) -> Self {
        let size = data.len();
        Cur { data, size, selected: -1, sorted: false }
    }

    /// Number of candidates (`size`, clamped to the length of `data`).
    pub fn len(&self) -> usize {
        self.size.min(self.data.len())
    }

    /// Whether there are no candidates.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The candidates `data[..size]`.
    pub fn candidates(&self) -> &[TokenData] {
        &self.data[..self.len()]
    }

    /// The id of the selected candidate, if `selected` is a valid index.
    pub fn selected_token(&self) -> Option<i32> {
        let i = usize::try_from(self.selected).ok()?;
        self.candidates().get(i).map(|t| t.id)
    }

    /// How many elements `data` now starts after `base` (the pointer the view was created from);
    /// non-zero only after XTC moved the start of the array.
    pub fn offset_from(&self, base: *const TokenData) -> usize {
        let delta = (self.data.as_ptr() as usize).wrapping_sub(base as usize);
        delta / std::mem::size_of::<TokenData>()
    }

    fn cands(&mut self) -> &mut [TokenData] {
        let n = self.len();
        &mut self.data[..n]
    }

    /// `cur_p->data += k; cur_p->size -= k;`
    fn advance(&mut self, k: usize) {
        let n = self.len();
        let k = k.min(n);
        let data = std::mem::take(&mut self.data);
        self.data = &mut data[k..];
        self.size = n - k;
    }
}

/// A llama.cpp sampler (the `llama_sampler_i` interface, minus `free`).
pub trait Sampler: Send {
    /// llama.cpp's name ("greedy", "dist", "top-k", ..., or "?top-k" etc. for no-op samplers).
    fn name(&self) -> &'static str;
    /// Informs the sampler that `token` was sampled (`llama_sampler_accept`).
    fn accept(&mut self, _token: i32) {}
    /// Transforms the candidates and/or selects one (`llama_sampler_apply`).
    fn apply(&mut self, cur: &mut Cur);
    /// Resets the internal state (`llama_sampler_reset`).
    fn reset(&mut self) {}
    /// A copy including the current state (`llama_sampler_clone`).
    fn clone_box(&self) -> Box<dyn Sampler>;
    /// The seed a seeded sampler uses (LLAMA_DEFAULT_SEED resolved to the one drawn); None otherwise.
    ///
    /// Mirrors `llama_sampler_get_seed`: only `dist`, `mirostat`, `mirostat-v2` and chains report a
    /// seed (XTC and adaptive-p have one but llama.cpp does not report it).
    fn seed(&self) -> Option<u32> {
        None
    }
}

impl Clone for Box<dyn Sampler> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// `llama_sampler_get_seed`: the seed, or `LLAMA_DEFAULT_SEED` for samplers without one.
pub fn get_seed(s: &dyn Sampler) -> u32 {
    s.seed().unwrap_or(LLAMA_DEFAULT_SEED)
}

/// Runs `s` over the logits of one output the way `llama_sampler_sample` does on the CPU path
/// (candidates `{id: i, logit: logits[i], p: 0}`, unsorted), then accepts the selected token.
/// Returns `None` (where llama.cpp aborts) when the sampler selected nothing valid.
pub fn sample_logits(s: &mut dyn Sampler, logits: &[f32]) -> Option<i32> {
    let mut buf: Vec<TokenData> = logits
        .iter()
        .enumerate()
        .map(|(i, &logit)| TokenData { id: i as i32, logit, p: 0.0 })
        .collect();
    let mut cur = Cur::new(&mut buf);
    s.apply(&mut cur);
    let token = cur.selected_token()?;
    s.accept(token);
    Some(token)
}

// ---------------------------------------------------------------------------------------------
// C/C++ numeric helpers
// ---------------------------------------------------------------------------------------------

/// `std::max(a, b)` for floats: `(a < b) ? b : a`.
fn cxx_max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// `std::clamp(v, lo, hi)`.
fn cxx_clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if hi < v {
        hi
    } else {
        v
    }
}

/// `(int) x` as compiled for x86-64 (`cvttss2si`): truncation, and INT_MIN for NaN and values
/// out of range (C leaves those undefined; this is what llama.cpp does on x86-64).
fn cvtt_f32_i32(x: f32) -> i32 {
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

// ---------------------------------------------------------------------------------------------
// Random numbers: std::mt19937 and libstdc++'s distributions
// ---------------------------------------------------------------------------------------------

/// `std::mt19937` (32-bit Mersenne Twister, MT19937 with the standard seeding).
#[derive(Clone)]
pub struct Mt19937 {
    mt: [u32; 624],
    idx: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    /// `std::mt19937(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut r = Mt19937 { mt: [0; 624], idx: Self::N };
        r.seed(seed);
        r
    }

    /// `rng.seed(seed)`.
    pub fn seed(&mut self, seed: u32) {
        self.mt[0] = seed;
        for i in 1..Self::N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.idx = Self::N;
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..Self::N {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % Self::N] & LOWER);
            let mut v = self.mt[(i + Self::M) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            self.mt[i] = v;
        }
        self.idx = 0;
    }

    /// `rng()`: the next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= Self::N {
            self.twist();
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `rng.discard(n)`.
    pub fn discard(&mut self, n: u64) {
        for _ in 0..n {
            self.next_u32();
        }
    }
}

/// libstdc++ `std::generate_canonical<double, 53>(mt19937)`: two 32-bit draws,
/// `(x0 + x1 * 2^32) / 2^64` in double arithmetic, and `nextafter(1, 0)` if that rounds to 1.
pub fn generate_canonical_f64(rng: &mut Mt19937) -> f64 {
    const R: f64 = 4_294_967_296.0;
    let mut sum = 0.0f64;
    let mut tmp = 1.0f64;
    for _ in 0..2 {
        sum += rng.next_u32() as f64 * tmp;
        tmp *= R;
    }
    let ret = sum / tmp;
    if ret >= 1.0 {
        f64::from_bits(1.0f64.to_bits() - 1)
    } else {
        ret
    }
}

/// libstdc++ `std::generate_canonical<float, 24>(mt19937)`: one 32-bit draw, `float(x) / 2^32`,
/// and `nextafter(1.f, 0.f)` if that rounds to 1.
pub fn generate_canonical_f32(rng: &mut Mt19937) -> f32 {
    let ret = rng.next_u32() as f32 / 4_294_967_296.0f32;
    if ret >= 1.0 {
        f32::from_bits(1.0f32.to_bits() - 1)
    } else {
        ret
    }
}

/// `std::uniform_real_distribution<double>(0, 1)(rng)` (libstdc++).
pub fn uniform_f64(rng: &mut Mt19937) -> f64 {
    generate_canonical_f64(rng) * (1.0 - 0.0) + 0.0
}

/// `std::uniform_real_distribution<float>(0, 1)(rng)` (libstdc++).
pub fn uniform_f32(rng: &mut Mt19937) -> f32 {
    generate_canonical_f32(rng) * (1.0 - 0.0) + 0.0
}

/// `std::discrete_distribution<int>(w.begin(), w.end())(rng)` (libstdc++): fewer than two weights
/// give 0 without drawing; otherwise the weights are normalised in double, accumulated, the last
/// cumulative value forced to 1, and `lower_bound` of one canonical double is returned.
pub fn discrete_distribution(weights: impl IntoIterator<Item = f32>, rng: &mut Mt19937) -> usize {
    let w: Vec<f64> = weights.into_iter().map(f64::from).collect();
    if w.len() < 2 {
        return 0;
    }
    let sum = w.iter().fold(0.0f64, |s, &x| s + x);
    let mut cp = Vec::with_capacity(w.len());
    let mut acc = 0.0f64;
    for (i, &x) in w.iter().enumerate() {
        let q = x / sum;
        acc = if i == 0 { q } else { acc + q };
        cp.push(acc);
    }
    let n = cp.len();
    cp[n - 1] = 1.0;
    let p = generate_canonical_f64(rng);
    // std::lower_bound, as libstdc++ implements it
    let mut first = 0usize;
    let mut len = n;
    while len > 0 {
        let half = len >> 1;
        let mid = first + half;
        if cp[mid] < p {
            first = mid + 1;
            len = len - half - 1;
        } else {
            len = half;
        }
    }
    first.min(n - 1)
}

fn sample_discrete(cands: &[TokenData], rng: &mut Mt19937) -> usize {
    discrete_distribution(cands.iter().map(|t| t.p), rng)
}

/// llama.cpp's `get_rng_seed`: `LLAMA_DEFAULT_SEED` is replaced by a random seed.
fn get_rng_seed(seed: u32) -> u32 {
    if seed != LLAMA_DEFAULT_SEED {
        return seed;
    }
    // std only: RandomState keys come from the OS RNG; mix in the clock as llama.cpp does when
    // std::random_device is not a true RNG.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    let x = h.finish();
    (x ^ (x >> 32)) as u32
}

// ---------------------------------------------------------------------------------------------
// Sorting: ports of libstdc++'s std::sort / std::partial_sort, so that ties end up in the same
// order as in llama.cpp built with GCC. Bounds are guarded so that an inconsistent comparator can
// never index out of range (for a strict weak order the guards never trigger).
// ---------------------------------------------------------------------------------------------

mod stl {
    const S_THRESHOLD: usize = 16;

    /// `std::sort(v.begin(), v.end(), less)` (introsort as in libstdc++).
    pub(super) fn sort<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) {
        if v.is_empty() {
            return;
        }
        let depth = 2 * lg(v.len());
        introsort_loop(v, depth, less);
        final_insertion_sort(v, less);
    }

    /// `std::partial_sort(v.begin(), v.begin() + middle, v.end(), less)` (heap select + heap sort).
    pub(super) fn partial_sort<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], middle: usize, less: &mut F) {
        let middle = middle.min(v.len());
        if middle == 0 {
            return;
        }
        heap_select(v, middle, less);
        sort_heap(&mut v[..middle], less);
    }

    fn lg(n: usize) -> usize {
        (usize::BITS - 1 - n.leading_zeros()) as usize
    }

    fn introsort_loop<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], mut depth: usize, less: &mut F) {
        let mut last = v.len();
        while last > S_THRESHOLD {
            if depth == 0 {
                partial_sort(&mut v[..last], last, less);
                return;
            }
            depth -= 1;
            let cut = unguarded_partition_pivot(&mut v[..last], less);
            if cut == 0 || cut >= last {
                // only reachable with an inconsistent comparator; avoid looping forever
                partial_sort(&mut v[..last], last, less);
                return;
            }
            introsort_loop(&mut v[cut..last], depth, less);
            last = cut;
        }
    }

    fn move_median_to_first<T: Copy, F: FnMut(&T, &T) -> bool>(
        v: &mut [T],
        result: usize,
        a: usize,
        b: usize,
        c: usize,
        less: &mut F,
    ) {
        let (va, vb, vc) = (v[a], v[b], v[c]);
        let pick = if less(&va, &vb) {
            if less(&vb, &vc) {
                b
            } else if less(&va, &vc) {
                c
            } else {
                a
            }
        } else if less(&va, &vc) {
            a
        } else if less(&vb, &vc) {
            c
        } else {
            b
        };
        v.swap(result, pick);
    }

    fn unguarded_partition_pivot<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) -> usize {
        let len = v.len();
        let mid = len / 2;
        move_median_to_first(v, 0, 1, mid, len - 1, less);
        unguarded_partition(v, 1, len, 0, less)
    }

    fn unguarded_partition<T: Copy, F: FnMut(&T, &T) -> bool>(
        v: &mut [T],
        mut first: usize,
        mut last: usize,
        pivot: usize,
        less: &mut F,
    ) -> usize {
        loop {
            while first < v.len() && less(&v[first], &v[pivot]) {
                first += 1;
            }
            last = last.saturating_sub(1);
            while last > 0 && less(&v[pivot], &v[last]) {
                last -= 1;
            }
            if first >= last {
                return first;
            }
            v.swap(first, last);
            first += 1;
        }
    }

    fn final_insertion_sort<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) {
        if v.len() > S_THRESHOLD {
            insertion_sort(&mut v[..S_THRESHOLD], less);
            for i in S_THRESHOLD..v.len() {
                unguarded_linear_insert(v, i, less);
            }
        } else {
            insertion_sort(v, less);
        }
    }

    fn insertion_sort<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) {
        for i in 1..v.len() {
            if less(&v[i], &v[0]) {
                let val = v[i];
                v.copy_within(0..i, 1);
                v[0] = val;
            } else {
                unguarded_linear_insert(v, i, less);
            }
        }
    }

    fn unguarded_linear_insert<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], last: usize, less: &mut F) {
        let val = v[last];
        let mut hole = last;
        while hole > 0 && less(&val, &v[hole - 1]) {
            v[hole] = v[hole - 1];
            hole -= 1;
        }
        v[hole] = val;
    }

    fn heap_select<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], middle: usize, less: &mut F) {
        make_heap(&mut v[..middle], less);
        for i in middle..v.len() {
            if less(&v[i], &v[0]) {
                pop_heap(v, middle, i, less);
            }
        }
    }

    fn make_heap<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) {
        let len = v.len() as isize;
        if len < 2 {
            return;
        }
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[parent as usize];
            adjust_heap(v, parent, len, value, less);
            if parent == 0 {
                return;
            }
            parent -= 1;
        }
    }

    fn sort_heap<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) {
        let mut last = v.len();
        while last > 1 {
            last -= 1;
            pop_heap(v, last, last, less);
        }
    }

    /// `__pop_heap(first, first + last, first + result)`.
    fn pop_heap<T: Copy, F: FnMut(&T, &T) -> bool>(v: &mut [T], last: usize, result: usize, less: &mut F) {
        let value = v[result];
        v[result] = v[0];
        adjust_heap(v, 0, last as isize, value, less);
    }

    fn adjust_heap<T: Copy, F: FnMut(&T, &T) -> bool>(
        v: &mut [T],
        mut hole: isize,
        len: isize,
        value: T,
        less: &mut F,
    ) {
        let top = hole;
        let mut second = hole;
        while second < (len - 1) / 2 {
            second = 2 * (second + 1);
            if less(&v[second as usize], &v[(second - 1) as usize]) {
                second -= 1;
            }
            v[hole as usize] = v[second as usize];
            hole = second;
        }
        if (len & 1) == 0 && second == (len - 2) / 2 {
            second = 2 * (second + 1);
            v[hole as usize] = v[(second - 1) as usize];
            hole = second - 1;
        }
        // __push_heap
        while hole > top {
            let parent = (hole - 1) / 2;
            if !less(&v[parent as usize], &value) {
                break;
            }
            v[hole as usize] = v[parent as usize];
            hole = parent;
        }
        v[hole as usize] = value;
    }
}

fn greater_logit(a: &TokenData, b: &TokenData) -> bool {
    a.logit > b.logit
}

/// llama.cpp's `llama_token_data_array_partial_sort`: distributes the candidates into 128 logit
/// buckets over [-10, 10], keeps the top buckets holding at least `npartial` candidates, sorts
/// those, and writes them to `res` (whose first `npartial` entries are then the top candidates,
/// sorted descending).
fn partial_sort_buckets(data: &[TokenData], npartial: usize, res: &mut Vec<TokenData>) {
    const NBUCKETS: usize = 128;
    let bucket_low = -10.0f32;
    let bucket_high = 10.0f32;
    let bucket_scale = NBUCKETS as f32 / (bucket_high - bucket_low);
    let bucket_inter = -bucket_low * bucket_scale;

    let mut bucket_idx: Vec<u8> = Vec::with_capacity(data.len());
    let mut histo = [0usize; NBUCKETS];
    for t in data {
        let ib = cvtt_f32_i32(bucket_scale * t.logit + bucket_inter).clamp(0, NBUCKETS as i32 - 1) as usize;
        bucket_idx.push(ib as u8);
        histo[ib] += 1;
    }
    let mut nhave = 0usize;
    let mut ib = NBUCKETS - 1;
    loop {
        nhave += histo[ib];
        if nhave >= npartial || ib == 0 {
            break;
        }
        ib -= 1;
    }

    res.clear();
    res.resize(nhave, TokenData { id: 0, logit: 0.0, p: 0.0 });
    let mut slots = [0usize; NBUCKETS];
    let mut off = 0usize;
    for j in (ib..NBUCKETS).rev() {
        slots[j] = off;
        off += histo[j];
    }
    for (t, &j) in data.iter().zip(bucket_idx.iter()) {
        let j = j as usize;
        if j >= ib {
            res[slots[j]] = *t;
            slots[j] += 1;
        }
    }

    let mut ptr = 0usize;
    let mut ndone = 0usize;
    for j in (ib + 1..NBUCKETS).rev() {
        stl::sort(&mut res[ptr..ptr + histo[j]], &mut greater_logit);
        ptr += histo[j];
        ndone += histo[j];
    }
    let middle = npartial.saturating_sub(ndone);
    stl::partial_sort(&mut res[ptr..ptr + histo[ib]], middle, &mut greater_logit);
}

/// llama.cpp's `llama_token_data_array_partial_sort_inplace`: keeps the top `npartial` candidates,
/// sorted by logit descending; sets `size` and `sorted`.
fn partial_sort_inplace(cur: &mut Cur, npartial: usize) {
    let n = cur.len();
    let np = npartial.min(n);
    if np <= 128 {
        stl::partial_sort(&mut cur.data[..n], np, &mut greater_logit);
    } else {
        let mut tmp = Vec::new();
        partial_sort_buckets(&cur.data[..n], np, &mut tmp);
        cur.data[..np].copy_from_slice(&tmp[..np]);
    }
    cur.size = np;
    cur.sorted = true;
}

/// llama.cpp's `llama_sampler_softmax_impl`. On empty candidates llama.cpp aborts; this returns.
fn softmax_impl(cur: &mut Cur, do_sort: bool) {
    let n = cur.len();
    if n == 0 {
        return;
    }
    if do_sort && !cur.sorted {
        partial_sort_inplace(cur, n);
    }
    let sorted = cur.sorted;
    let d = cur.cands();
    let mut max_l = d[0].logit;
    if !sorted {
        for t in &d[1..] {
            max_l = cxx_max(max_l, t.logit);
        }
    }
    let mut cum_sum = 0.0f32;
    for t in d.iter_mut() {
        let p = (t.logit - max_l).exp();
        t.p = p;
        cum_sum += p;
    }
    for t in d.iter_mut() {
        t.p /= cum_sum;
    }
}

/// Softmax with llama.cpp's semantics: sorts the candidates by logit (descending) unless already
/// sorted, then fills `p` with `exp(logit - max) / sum` (computed in `f32`). No-op when empty.
pub fn softmax(cur: &mut Cur) {
    softmax_impl(cur, true);
}

/// llama.cpp's `llama_sampler_temp_impl`.
fn temp_impl(cur: &mut Cur, temp: f32) {
    let d = cur.cands();
    if d.is_empty() {
        return;
    }
    if temp <= 0.0 {
        let mut max_i = 0usize;
        let mut max_l = d[0].logit;
        for i in 1..d.len() {
            if d[i].logit > max_l {
                d[max_i].logit = f32::NEG_INFINITY;
                max_i = i;
                max_l = d[i].logit;
            } else {
                d[i].logit = f32::NEG_INFINITY;
            }
        }
        return;
    }
    for t in d.iter_mut() {
        t.logit /= temp;
    }
}

/// llama.cpp's `llama_sampler_top_k_impl`.
fn top_k_impl(cur: &mut Cur, k: i32) {
    if k <= 0 {
        return;
    }
    let k = (k as usize).min(cur.len());
    if !cur.sorted {
        partial_sort_inplace(cur, k);
    }
    cur.size = k;
}

/// A sampler that does nothing, which llama.cpp returns for parameter values that disable a
/// sampler; its name is `?` + the sampler's name.
#[derive(Clone)]
struct Empty {
    name: &'static str,
}

impl Sampler for Empty {
    fn name(&self) -> &'static str {
        self.name
    }
    fn apply(&mut self, _cur: &mut Cur) {}
    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

fn empty(name: &'static str) -> Box<dyn Sampler> {
    Box::new(Empty { name })
}

// ---------------------------------------------------------------------------------------------
// Chain
// ---------------------------------------------------------------------------------------------

/// `llama_sampler_chain`: applies its samplers in order, forwards `accept`/`reset` to all of them,
/// and counts accepted tokens (and, unless `no_perf`, time spent) for `llama_perf_sampler`.
pub struct Chain {
    samplers: Vec<Box<dyn Sampler>>,
    no_perf: bool,
    t_sample_us: u64,
    n_sample: i32,
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// `llama_sampler_chain_init(llama_sampler_chain_default_params())` (`no_perf = true`).
    pub fn new() -> Self {
        Self::with_no_perf(true)
    }

    /// `llama_sampler_chain_init({ no_perf })`.
    pub fn with_no_perf(no_perf: bool) -> Self {
        Chain { samplers: Vec::new(), no_perf, t_sample_us: 0, n_sample: 0 }
    }

    /// `llama_sampler_chain_add`: appends a sampler (the chain owns it).
    pub fn add(&mut self, s: Box<dyn Sampler>) {
        self.samplers.push(s);
    }

    /// `llama_sampler_chain_n`.
    pub fn len(&self) -> usize {
        self.samplers.len()
    }

    /// Whether the chain has no samplers.
    pub fn is_empty(&self) -> bool {
        self.samplers.is_empty()
    }

    /// `llama_sampler_chain_get(chain, i)` for `i >= 0`; `None` when out of range.
    pub fn get(&self, i: usize) -> Option<&dyn Sampler> {
        self.samplers.get(i).map(|b| b.as_ref())
    }

    /// Mutable access to the `i`-th sampler.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut (dyn Sampler + 'static)> {
        self.samplers.get_mut(i).map(|b| b.as_mut())
    }

    /// `llama_sampler_chain_remove`: takes the `i`-th sampler out of the chain (the chain no longer
    /// owns it); `None` when out of range (where llama.cpp returns NULL).
    pub fn remove(&mut self, i: usize) -> Option<Box<dyn Sampler>> {
        if i < self.samplers.len() {
            Some(self.samplers.remove(i))
        } else {
            None
        }
    }

    /// `llama_perf_sampler`: (`t_sample_ms`, `n_sample`).
    pub fn perf(&self) -> (f64, i32) {
        (1e-3 * self.t_sample_us as f64, self.n_sample.max(0))
    }

    /// `llama_perf_sampler_reset`.
    pub fn perf_reset(&mut self) {
        self.t_sample_us = 0;
        self.n_sample = 0;
    }

    fn timer(&self) -> Option<Instant> {
        if self.no_perf {
            None
        } else {
            Some(Instant::now())
        }
    }

    fn add_time(&mut self, t0: Option<Instant>) {
        if let Some(t0) = t0 {
            self.t_sample_us = self.t_sample_us.saturating_add(t0.elapsed().as_micros() as u64);
        }
    }
}

impl Sampler for Chain {
    fn name(&self) -> &'static str {
        "chain"
    }

    fn accept(&mut self, token: i32) {
        let t0 = self.timer();
        for s in &mut self.samplers {
            s.accept(token);
        }
        self.n_sample = self.n_sample.wrapping_add(1);
        self.add_time(t0);
    }

    fn apply(&mut self, cur: &mut Cur) {
        let t0 = self.timer();
        for s in &mut self.samplers {
            s.apply(cur);
        }
        self.add_time(t0);
    }

    fn reset(&mut self) {
        for s in &mut self.samplers {
            s.reset();
        }
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }

    /// The seed of the last sampler (from the end) that reports one other than
    /// `LLAMA_DEFAULT_SEED`.
    fn seed(&self) -> Option<u32> {
        self.samplers.iter().rev().filter_map(|s| s.seed()).find(|&s| s != LLAMA_DEFAULT_SEED)
    }
}

impl Clone for Chain {
    /// Clones every sampler with its state; the perf counters start from zero, as in llama.cpp.
    fn clone(&self) -> Self {
        Chain {
            samplers: self.samplers.iter().map(|s| s.clone_box()).collect(),
            no_perf: self.no_perf,
            t_sample_us: 0,
            n_sample: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// greedy
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Greedy;

impl Sampler for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }
    fn apply(&mut self, cur: &mut Cur) {
        let d = cur.candidates();
        if d.is_empty() {
            // llama.cpp sets selected = 0 even here (an invalid index); -1 is the safe equivalent
            cur.selected = -1;
            return;
        }
        let mut sel = 0usize;
        for i in 1..d.len() {
            if d[i].logit > d[sel].logit {
                sel = i;
            }
        }
        cur.selected = sel as i64;
    }
    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_greedy`: selects the first candidate with the highest logit; does not
/// reorder or change anything else.
pub fn greedy() -> Box<dyn Sampler> {
    Box::new(Greedy)
}

// ---------------------------------------------------------------------------------------------
// dist
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Dist {
    seed: u32,
    seed_cur: u32,
    rng: Mt19937,
}

impl Sampler for Dist {
    fn name(&self) -> &'static str {
        "dist"
    }

    fn apply(&mut self, cur: &mut Cur) {
        let n = cur.len();
        if n == 0 {
            cur.selected = -1;
            return;
        }
        cur.selected = 0;
        if n == 1 {
            // one draw per output, as llama.cpp does to stay aligned with backend sampling
            uniform_f64(&mut self.rng);
            cur.data[0].p = 1.0;
            return;
        }
        let sorted = cur.sorted;
        let d = &mut cur.data[..n];
        let mut max_l = d[0].logit;
        if !sorted {
            for t in &d[1..] {
                max_l = cxx_max(max_l, t.logit);
            }
        }
        let mut sum_cum = 0.0f64;
        for t in d.iter_mut() {
            let p = (t.logit - max_l).exp();
            t.p = p;
            sum_cum += p as f64;
        }
        let rnd = uniform_f64(&mut self.rng);
        let mut sum_run = 0.0f64;
        let sum_tgt = sum_cum * rnd;
        let mut found = None;
        for (i, t) in d.iter_mut().enumerate() {
            if found.is_none() {
                sum_run += t.p as f64;
                if sum_run >= sum_tgt {
                    found = Some(i);
                }
            }
            t.p = (t.p as f64 / sum_cum) as f32;
        }
        cur.selected = found.unwrap_or(n - 1) as i64;
    }

    fn reset(&mut self) {
        self.seed_cur = get_rng_seed(self.seed);
        self.rng.seed(self.seed_cur);
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }

    fn seed(&self) -> Option<u32> {
        Some(self.seed_cur)
    }
}

/// `llama_sampler_init_dist(seed)`: computes the softmax of the candidates (without sorting) into
/// `p` and selects one at random with those probabilities, using `std::mt19937(seed)` and one
/// `uniform_real_distribution<double>` draw per call (also for a single candidate). With
/// `LLAMA_DEFAULT_SEED` a random seed is used (see [`Sampler::seed`]).
pub fn dist(seed: u32) -> Box<dyn Sampler> {
    let seed_cur = get_rng_seed(seed);
    Box::new(Dist { seed, seed_cur, rng: Mt19937::new(seed_cur) })
}

// ---------------------------------------------------------------------------------------------
// top-k, top-p, min-p, typical
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct TopK {
    k: i32,
}

impl Sampler for TopK {
    fn name(&self) -> &'static str {
        "top-k"
    }
    fn apply(&mut self, cur: &mut Cur) {
        top_k_impl(cur, self.k);
    }
    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_top_k(k)`: keeps the `k` candidates with the highest logits, sorted
/// descending (if the input was already sorted it is just truncated). `k <= 0` is a no-op
/// (`"?top-k"`).
pub fn top_k(k: i32) -> Box<dyn Sampler> {
    if k <= 0 {
        return empty("?top-k");
    }
    Box::new(TopK { k })
}

struct TopP {
    p: f32,
    min_keep: usize,
    buf_sort: Vec<TokenData>,
}

impl Sampler for TopP {
    fn name(&self) -> &'static str {
        "top-p"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if self.p >= 1.0 {
            return;
        }
        let n = cur.len();
        if n == 0 {
            return; // llama.cpp asserts in softmax here
        }
        softmax_impl(cur, false);

        let mut k = n;
        // unsorted and large: sort only the top 256 first, into a side buffer
        let use_buf = !cur.sorted && n > 1024;
        if use_buf {
            k = 256.min(n);
            partial_sort_buckets(&cur.data[..n], k, &mut self.buf_sort);
        } else if !cur.sorted {
            partial_sort_inplace(cur, k);
        }

        let mut cum_sum = 0.0f32;
        let mut last_idx = n;
        for i in 0..n {
            cum_sum += if use_buf { self.buf_sort[i].p } else { cur.data[i].p };
            if cum_sum >= self.p && i + 1 >= self.min_keep {
                last_idx = i + 1;
                break;
            }
            if use_buf && i == k - 1 {
                k = n;
                partial_sort_buckets(&cur.data[..n], k, &mut self.buf_sort);
            }
        }

        if use_buf {
            cur.data[..last_idx].copy_from_slice(&self.buf_sort[..last_idx]);
            cur.sorted = true;
        }
        cur.size = last_idx;
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(TopP { p: self.p, min_keep: self.min_keep, buf_sort: Vec::new() })
    }
}

/// `llama_sampler_init_top_p(p, min_keep)`: nucleus sampling. Computes `p` (softmax), sorts, and
/// keeps the shortest prefix whose cumulative probability is `>= p` and whose length is
/// `>= min_keep`. Leaves the candidates sorted. `p >= 1` is a no-op (`"?top-p"`).
pub fn top_p(p: f32, min_keep: usize) -> Box<dyn Sampler> {
    if p >= 1.0 {
        return empty("?top-p");
    }
    Box::new(TopP { p, min_keep, buf_sort: Vec::new() })
}

#[derive(Clone)]
struct MinP {
    p: f32,
    min_keep: usize,
}

impl Sampler for MinP {
    fn name(&self) -> &'static str {
        "min-p"
    }

    fn apply(&mut self, cur: &mut Cur) {
        let n = cur.len();
        if self.p <= 0.0 || n == 0 {
            return;
        }
        let mut applied = false;
        if !cur.sorted {
            let d = &cur.data[..n];
            let mut max_logit = -f32::MAX;
            for t in d {
                max_logit = cxx_max(max_logit, t.logit);
            }
            let min_logit = max_logit + self.p.ln();
            let filtered: Vec<TokenData> = d.iter().filter(|t| t.logit >= min_logit).copied().collect();
            if !filtered.is_empty() && filtered.len() >= self.min_keep {
                cur.data[..filtered.len()].copy_from_slice(&filtered);
                cur.size = filtered.len();
                applied = true;
            }
        }
        if !applied {
            if !cur.sorted {
                partial_sort_inplace(cur, n);
            }
            let d = cur.candidates();
            let min_logit = d[0].logit + self.p.ln();
            let mut i = 1usize;
            while i < d.len() {
                if d[i].logit < min_logit && i >= self.min_keep {
                    break;
                }
                i += 1;
            }
            cur.size = i;
        }
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_min_p(p, min_keep)`: keeps the candidates whose probability is at least
/// `p` times the top probability (`logit >= max_logit + ln p`), but at least `min_keep` of them.
/// Unsorted input is filtered in place, keeping the order; if that leaves fewer than `min_keep`
/// (or none), the candidates are sorted and a prefix kept. `p <= 0` is a no-op (`"?min-p"`).
pub fn min_p(p: f32, min_keep: usize) -> Box<dyn Sampler> {
    if p <= 0.0 {
        return empty("?min-p");
    }
    Box::new(MinP { p, min_keep })
}

#[derive(Clone)]
struct Typical {
    p: f32,
    min_keep: usize,
}

impl Sampler for Typical {
    fn name(&self) -> &'static str {
        "typical"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if self.p >= 1.0 || cur.is_empty() {
            return;
        }
        softmax_impl(cur, true);
        let d = cur.candidates();
        let n = d.len();
        let mut entropy = 0.0f32;
        for t in d {
            entropy += -t.p * t.p.ln();
        }
        let scores: Vec<f32> = d.iter().map(|t| (-t.p.ln() - entropy).abs()).collect();
        let mut indices: Vec<usize> = (0..n).collect();
        stl::sort(&mut indices, &mut |a: &usize, b: &usize| scores[*a] < scores[*b]);

        let mut cum_sum = 0.0f32;
        let mut last_idx = n;
        for (i, &idx) in indices.iter().enumerate() {
            cum_sum += d[idx].p;
            if cum_sum > self.p && (self.min_keep == 0 || i + 1 >= self.min_keep) {
                last_idx = i + 1;
                break;
            }
        }
        let kept: Vec<TokenData> = indices[..last_idx].iter().map(|&i| d[i]).collect();
        cur.data[..last_idx].copy_from_slice(&kept);
        cur.size = last_idx;
        cur.sorted = false;
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_typical(p, min_keep)`: locally typical sampling. Computes `p` (softmax,
/// sorted), orders the candidates by `|-ln p - entropy|` ascending and keeps the shortest prefix of
/// that order whose cumulative probability exceeds `p` (at least `min_keep`). The result is in
/// that order, not sorted by logit. `p >= 1` is a no-op (`"?typical"`).
pub fn typical(p: f32, min_keep: usize) -> Box<dyn Sampler> {
    if p >= 1.0 {
        return empty("?typical");
    }
    Box::new(Typical { p, min_keep })
}

// ---------------------------------------------------------------------------------------------
// temp, temp-ext
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Temp {
    temp: f32,
}

impl Sampler for Temp {
    fn name(&self) -> &'static str {
        "temp"
    }
    fn apply(&mut self, cur: &mut Cur) {
        temp_impl(cur, self.temp);
    }
    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_temp(t)`: divides the logits by `t`. For `t <= 0` the first highest logit
/// is kept and every other logit becomes `-inf`. `t == 1` is a no-op (`"?temp"`).
pub fn temp(t: f32) -> Box<dyn Sampler> {
    if t == 1.0 {
        return empty("?temp");
    }
    Box::new(Temp { temp: t })
}

#[derive(Clone)]
struct TempExt {
    temp: f32,
    delta: f32,
    exponent: f32,
}

impl Sampler for TempExt {
    fn name(&self) -> &'static str {
        "temp-ext"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if self.delta > 0.0 {
            let min_temp = cxx_max(0.0, self.temp - self.delta);
            let max_temp = self.temp + self.delta;
            let n = cur.len();
            if n <= 1 {
                return;
            }
            let max_entropy = -(1.0f32 / n as f32).ln();
            softmax_impl(cur, true);
            let mut entropy = 0.0f32;
            for t in cur.candidates() {
                if t.p > 0.0 {
                    entropy -= t.p * t.p.ln();
                }
            }
            let normalized_entropy = entropy / max_entropy;
            let dyn_temp = min_temp + (max_temp - min_temp) * normalized_entropy.powf(self.exponent);
            temp_impl(cur, dyn_temp);

            let d = cur.cands();
            let max_l = d[0].logit as f64;
            let mut cum_sum = 0.0f64;
            for t in d.iter_mut() {
                let p = (t.logit as f64 - max_l).exp();
                t.p = p as f32;
                cum_sum += p;
            }
            for t in d.iter_mut() {
                t.p = (t.p as f64 / cum_sum) as f32;
            }
        } else {
            temp_impl(cur, self.temp);
        }
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_temp_ext(t, delta, exponent)`: dynamic temperature. With `delta > 0` the
/// temperature is `max(0, t - delta) + 2 delta * (H / H_max)^exponent` where `H` is the entropy of
/// the (sorted) softmax; the candidates end up sorted with `p` filled (computed in `f64`).
/// With `delta <= 0` it behaves like [`temp`]. `t == 1 && delta <= 0` is a no-op (`"?temp-ext"`).
pub fn temp_ext(t: f32, delta: f32, exponent: f32) -> Box<dyn Sampler> {
    if t == 1.0 && delta <= 0.0 {
        return empty("?temp-ext");
    }
    Box::new(TempExt { temp: t, delta, exponent })
}

// ---------------------------------------------------------------------------------------------
// xtc
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Xtc {
    probability: f32,
    threshold: f32,
    min_keep: usize,
    seed: u32,
    seed_cur: u32,
    rng: Mt19937,
}

impl Sampler for Xtc {
    fn name(&self) -> &'static str {
        "xtc"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if self.probability <= 0.0 || self.threshold > 0.5 || cur.len() < 2 {
            return;
        }
        let chance = uniform_f32(&mut self.rng);
        if chance > self.probability {
            return;
        }
        softmax_impl(cur, true);
        let d = cur.candidates();
        let mut pos_last = 0usize;
        for (i, t) in d.iter().enumerate() {
            if t.p >= self.threshold {
                pos_last = i;
            } else {
                break;
            }
        }
        if d.len() - pos_last >= self.min_keep && pos_last > 0 {
            cur.advance(pos_last);
        }
    }

    fn reset(&mut self) {
        self.seed_cur = get_rng_seed(self.seed);
        self.rng.seed(self.seed_cur);
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        // llama.cpp re-resolves the seed for the clone and copies the RNG state
        let mut c = self.clone();
        c.seed_cur = get_rng_seed(self.seed);
        Box::new(c)
    }
}

/// `llama_sampler_init_xtc(p, t, min_keep, seed)`: "exclude top choices". With probability `p`
/// (one `uniform_real_distribution<float>` draw per call with at least two candidates) it
/// computes the sorted softmax and removes all but the last of the leading candidates whose
/// probability is `>= t`, if at least `min_keep` candidates remain. The removal advances
/// `cur.data` (see [`Cur`]). `p <= 0 || t > 0.5` is a no-op (`"?xtc"`).
pub fn xtc(p: f32, t: f32, min_keep: usize, seed: u32) -> Box<dyn Sampler> {
    if p <= 0.0 || t > 0.5 {
        return empty("?xtc");
    }
    let seed_cur = get_rng_seed(seed);
    Box::new(Xtc { probability: p, threshold: t, min_keep, seed, seed_cur, rng: Mt19937::new(seed_cur) })
}

// ---------------------------------------------------------------------------------------------
// top-n-sigma
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct TopNSigma {
    n: f32,
}

impl Sampler for TopNSigma {
    fn name(&self) -> &'static str {
        "top-n-sigma"
    }

    fn apply(&mut self, cur: &mut Cur) {
        let d = cur.cands();
        if self.n <= 0.0 || d.len() <= 1 {
            return;
        }
        let mut max = d[0].logit;
        let mut logits_sum = 0.0f32;
        let mut valid = 0usize;
        for t in d.iter() {
            if t.logit != f32::NEG_INFINITY {
                max = cxx_max(max, t.logit);
                logits_sum += t.logit;
                valid += 1;
            }
        }
        let mean = if valid > 0 { logits_sum / valid as f32 } else { 0.0 };
        let mut acc = 0.0f32;
        for t in d.iter() {
            if t.logit != f32::NEG_INFINITY {
                let x = (t.logit - mean) as f64;
                acc = (acc as f64 + x * x) as f32;
            }
        }
        let std = if valid > 0 { (acc / valid as f32).sqrt() } else { 0.0 };
        for t in d.iter_mut() {
            if t.logit < max - (self.n * std) {
                t.logit = f32::NEG_INFINITY;
            }
        }
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_top_n_sigma(n)`: sets to `-inf` every logit below `max - n * sigma`, where
/// the mean and standard deviation are over the finite (non `-inf`) logits. Does not reorder.
/// `n <= 0` is a no-op (`"?top-n-sigma"`).
pub fn top_n_sigma(n: f32) -> Box<dyn Sampler> {
    if n <= 0.0 {
        return empty("?top-n-sigma");
    }
    Box::new(TopNSigma { n })
}

// ---------------------------------------------------------------------------------------------
// mirostat, mirostat-v2
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Mirostat {
    n_vocab: i32,
    seed: u32,
    seed_cur: u32,
    tau: f32,
    eta: f32,
    m: i32,
    mu: f32,
    rng: Mt19937,
}

impl Sampler for Mirostat {
    fn name(&self) -> &'static str {
        "mirostat"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if cur.is_empty() {
            cur.selected = -1; // llama.cpp asserts here
            return;
        }
        softmax_impl(cur, true);
        let d = cur.candidates();
        let n = d.len();

        // estimate s_hat from the most probable m tokens
        let m_lim = if self.m >= 1 { (self.m - 1) as usize } else { usize::MAX };
        let mut sum_ti_bi = 0.0f32;
        let mut sum_ti_sq = 0.0f32;
        let mut i = 0usize;
        while i < m_lim && i < n - 1 {
            let t_i = ((i + 2) as f32 / (i + 1) as f32).ln();
            let b_i = (d[i].p / d[i + 1].p).ln();
            sum_ti_bi += t_i * b_i;
            sum_ti_sq += t_i * t_i;
            i += 1;
        }
        let s_hat = sum_ti_bi / sum_ti_sq;

        // k from the estimated s_hat and the target surprise
        let epsilon_hat = s_hat - 1.0;
        let k = ((epsilon_hat * 2.0f32.powf(self.mu)) / (1.0 - (self.n_vocab as f32).powf(-epsilon_hat)))
            .powf(1.0 / s_hat);

        top_k_impl(cur, cvtt_f32_i32(k).max(1));
        softmax_impl(cur, true);

        let idx = sample_discrete(cur.candidates(), &mut self.rng);
        cur.selected = idx as i64;

        let observed_surprise = -cur.candidates()[idx].p.log2();
        let e = observed_surprise - self.tau;
        self.mu -= self.eta * e;
    }

    fn reset(&mut self) {
        self.mu = 2.0 * self.tau;
        self.seed_cur = get_rng_seed(self.seed);
        self.rng.seed(self.seed_cur);
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        // llama.cpp's clone copies mu and the RNG but re-resolves seed_cur
        let mut c = self.clone();
        c.seed_cur = get_rng_seed(self.seed);
        Box::new(c)
    }

    fn seed(&self) -> Option<u32> {
        Some(self.seed_cur)
    }
}

/// `llama_sampler_init_mirostat(n_vocab, seed, tau, eta, m)`: Mirostat 1.0. Estimates the Zipf
/// exponent from the top `m` probabilities, derives `k` from it and `mu` (initially `2 tau`),
/// keeps the top `k`, and selects with `std::discrete_distribution`; then updates
/// `mu -= eta * (surprise - tau)`. `m <= 0` uses all candidates for the estimate.
pub fn mirostat(n_vocab: i32, seed: u32, tau: f32, eta: f32, m: i32) -> Box<dyn Sampler> {
    let seed_cur = get_rng_seed(seed);
    Box::new(Mirostat { n_vocab, seed, seed_cur, tau, eta, m, mu: 2.0 * tau, rng: Mt19937::new(seed_cur) })
}

#[derive(Clone)]
struct MirostatV2 {
    seed: u32,
    seed_cur: u32,
    tau: f32,
    eta: f32,
    mu: f32,
    rng: Mt19937,
}

impl Sampler for MirostatV2 {
    fn name(&self) -> &'static str {
        "mirostat-v2"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if cur.is_empty() {
            cur.selected = -1; // llama.cpp asserts here
            return;
        }
        softmax_impl(cur, true);
        let mu = self.mu;
        let keep = cur.candidates().iter().position(|t| -t.p.log2() > mu).unwrap_or(cur.len());
        cur.size = keep.max(1);
        softmax_impl(cur, true);

        let idx = sample_discrete(cur.candidates(), &mut self.rng);
        cur.selected = idx as i64;

        let observed_surprise = -cur.candidates()[idx].p.log2();
        let e = observed_surprise - self.tau;
        self.mu -= self.eta * e;
    }

    fn reset(&mut self) {
        self.mu = 2.0 * self.tau;
        self.seed_cur = get_rng_seed(self.seed);
        self.rng.seed(self.seed_cur);
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        let mut c = self.clone();
        c.seed_cur = get_rng_seed(self.seed);
        Box::new(c)
    }

    fn seed(&self) -> Option<u32> {
        Some(self.seed_cur)
    }
}

/// `llama_sampler_init_mirostat_v2(seed, tau, eta)`: Mirostat 2.0. Keeps the (sorted) candidates
/// whose surprise `-log2 p` is at most `mu` (at least one), renormalises, selects with
/// `std::discrete_distribution`, and updates `mu -= eta * (surprise - tau)`.
pub fn mirostat_v2(seed: u32, tau: f32, eta: f32) -> Box<dyn Sampler> {
    let seed_cur = get_rng_seed(seed);
    Box::new(MirostatV2 { seed, seed_cur, tau, eta, mu: 2.0 * tau, rng: Mt19937::new(seed_cur) })
}

// ---------------------------------------------------------------------------------------------
// penalties
// ---------------------------------------------------------------------------------------------

/// The last `cap` tokens (llama.cpp's `ring_buffer`, allocated lazily).
#[derive(Clone)]
struct Ring {
    cap: usize,
    buf: VecDeque<i32>,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Ring { cap, buf: VecDeque::new() }
    }
    fn len(&self) -> usize {
        self.buf.len()
    }
    fn push_back(&mut self, t: i32) {
        if self.cap == 0 {
            return;
        }
        if self.buf.len() == self.cap {
            self.buf.pop_front();
        }
        self.buf.push_back(t);
    }
    fn front(&self) -> Option<i32> {
        self.buf.front().copied()
    }
    /// The `i`-th most recent token (0 = last).
    fn rat(&self, i: usize) -> i32 {
        self.buf[self.buf.len() - 1 - i]
    }
    fn clear(&mut self) {
        self.buf.clear();
    }
}

#[derive(Clone)]
struct Penalties {
    penalty_last_n: i32,
    penalty_repeat: f32,
    penalty_freq: f32,
    penalty_present: f32,
    prev: Ring,
    token_count: HashMap<i32, i32>,
}

impl Penalties {
    fn is_disabled(last_n: i32, repeat: f32, freq: f32, present: f32) -> bool {
        last_n == 0 || (repeat == 1.0 && freq == 0.0 && present == 0.0)
    }
}

impl Sampler for Penalties {
    fn name(&self) -> &'static str {
        "penalties"
    }

    fn accept(&mut self, token: i32) {
        if self.penalty_last_n == 0 {
            return;
        }
        *self.token_count.entry(token).or_insert(0) += 1;
        let full = self.prev.len() >= self.penalty_last_n as usize;
        if let Some(old) = self.prev.front().filter(|_| full) {
            let c = self.token_count.entry(old).or_insert(0);
            *c -= 1;
            if *c == 0 {
                self.token_count.remove(&old);
            }
        }
        self.prev.push_back(token);
    }

    fn apply(&mut self, cur: &mut Cur) {
        if Self::is_disabled(self.penalty_last_n, self.penalty_repeat, self.penalty_freq, self.penalty_present) {
            return;
        }
        for t in cur.cands() {
            let Some(&count) = self.token_count.get(&t.id) else { continue };
            if t.logit <= 0.0 {
                t.logit *= self.penalty_repeat;
            } else {
                t.logit /= self.penalty_repeat;
            }
            t.logit -= count as f32 * self.penalty_freq + (if count > 0 { 1.0 } else { 0.0 }) * self.penalty_present;
        }
        cur.sorted = false;
    }

    fn reset(&mut self) {
        self.prev.clear();
        self.token_count.clear();
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

/// `llama_sampler_init_penalties(n_vocab, penalty_last_n, penalty_repeat, penalty_freq,
/// penalty_present)`: for every candidate that occurs `c > 0` times among the last
/// `penalty_last_n` accepted tokens, divides a positive logit by (or multiplies a non-positive one
/// by) `penalty_repeat`, then subtracts `c * penalty_freq + penalty_present`; marks the candidates
/// unsorted. A negative `penalty_last_n` counts as 0; `penalty_last_n == 0`, or
/// `repeat == 1 && freq == 0 && present == 0`, is a no-op (`"?penalties"`). `n_vocab` is unused on
/// the CPU path.
pub fn penalties(
    n_vocab: i32,
    penalty_last_n: i32,
    penalty_repeat: f32,
    penalty_freq: f32,
    penalty_present: f32,
) -> Box<dyn Sampler> {
    let penalty_last_n = penalty_last_n.max(0);
    if Penalties::is_disabled(penalty_last_n, penalty_repeat, penalty_freq, penalty_present) {
        return empty("?penalties");
    }
    let _ = n_vocab;
    Box::new(Penalties {
        penalty_last_n,
        penalty_repeat,
        penalty_freq,
        penalty_present,
        prev: Ring::new(penalty_last_n as usize),
        token_count: HashMap::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// logit-bias
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct LogitBias {
    n_vocab: i32,
    biases: Vec<(i32, f32)>,
    to_search: Vec<(i32, f32)>,
}

impl Sampler for LogitBias {
    fn name(&self) -> &'static str {
        "logit-bias"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if self.biases.is_empty() {
            return;
        }
        self.to_search.clear();
        let d = cur.cands();
        // candidates still at their vocabulary position (index == id)
        for &(token, bias) in &self.biases {
            match usize::try_from(token) {
                Ok(i) if i < d.len() && d[i].id == token => d[i].logit += bias,
                _ => self.to_search.push((token, bias)),
            }
        }
        if self.to_search.is_empty() {
            return;
        }
        for t in d.iter_mut() {
            if let Some(&(_, bias)) = self.to_search.iter().find(|lb| lb.0 == t.id) {
                t.logit += bias;
            }
        }
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(LogitBias { n_vocab: self.n_vocab, biases: self.biases.clone(), to_search: Vec::new() })
    }
}

/// `llama_sampler_init_logit_bias(n_vocab, n_logit_bias, logit_bias)`: adds `bias` to the logit
/// of each listed token present among the candidates (a token listed twice gets both biases if it
/// sits at index == id, otherwise only the first). An empty list is a no-op (`"?logit-bias"`).
pub fn logit_bias(n_vocab: i32, biases: &[(i32, f32)]) -> Box<dyn Sampler> {
    if biases.is_empty() {
        return empty("?logit-bias");
    }
    Box::new(LogitBias { n_vocab, biases: biases.to_vec(), to_search: Vec::new() })
}

// ---------------------------------------------------------------------------------------------
// DRY
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Dry {
    multiplier: f32,
    base: f32,
    allowed_length: i32,
    penalty_last_n: i32,
    /// head token -> tails (the rest of a restart sequence; empty for single-token breakers)
    breakers: HashMap<i32, Vec<Vec<i32>>>,
    repeat_count: Vec<i32>,
    max_token_repeat: HashMap<i32, i32>,
    last_tokens: Ring,
}

impl Dry {
    fn enabled(multiplier: f32, base: f32, penalty_last_n: i32) -> bool {
        multiplier != 0.0 && base >= 1.0 && penalty_last_n != 0
    }

    fn new(multiplier: f32, base: f32, allowed_length: i32, penalty_last_n: i32) -> Self {
        Dry {
            multiplier,
            base,
            allowed_length,
            penalty_last_n,
            breakers: HashMap::new(),
            repeat_count: Vec::new(),
            max_token_repeat: HashMap::new(),
            last_tokens: Ring::new(penalty_last_n.max(0) as usize),
        }
    }
}

impl Sampler for Dry {
    fn name(&self) -> &'static str {
        "dry"
    }

    fn accept(&mut self, token: i32) {
        if !Self::enabled(self.multiplier, self.base, self.penalty_last_n) {
            return;
        }
        self.last_tokens.push_back(token);
    }

    fn apply(&mut self, cur: &mut Cur) {
        if !Self::enabled(self.multiplier, self.base, self.penalty_last_n) {
            return;
        }
        let lt = &self.last_tokens;
        let last_n_repeat = (lt.len().min(i32::MAX as usize) as i32).min(self.penalty_last_n);
        if last_n_repeat <= self.allowed_length {
            return;
        }
        let nrep = last_n_repeat as usize;
        if nrep == 0 {
            // only with allowed_length < 0: llama.cpp runs through without penalising anything
            cur.sorted = false;
            return;
        }
        self.repeat_count.clear();
        self.repeat_count.resize(nrep, 0);
        self.max_token_repeat.clear();

        // Step 1: the most recent restart sequence limits the repetition length.
        let mut rep_limit = last_n_repeat;
        for i in 0..nrep {
            let Some(tails) = self.breakers.get(&lt.rat(i)) else { continue };
            let mut longest_match: i64 = -1;
            for tail in tails {
                let seq_len = tail.len();
                if (seq_len as i64) > longest_match && seq_len <= i {
                    let matched = (0..seq_len).all(|off| tail[off] == lt.rat(i - off - 1));
                    if matched {
                        longest_match = seq_len as i64;
                    }
                }
            }
            if longest_match >= 0 {
                rep_limit = i as i32 - longest_match as i32;
                break;
            }
        }
        if rep_limit < self.allowed_length {
            return;
        }

        // Step 2: Z-algorithm over the reversed context: for every position, the length of the
        // suffix of the context that also ends there (capped at rep_limit).
        {
            let rc = &mut self.repeat_count;
            let last = nrep - 1;
            let mut rt = 0usize;
            let mut lt_ = 0usize;
            for k in 1..nrep {
                if k > rt {
                    let mut n = 0usize;
                    while n + k < nrep && lt.rat(n) == lt.rat(n + k) {
                        n += 1;
                    }
                    rc[last - k] = (n as i32).min(rep_limit);
                    if n > 0 {
                        lt_ = k;
                        rt = k + n - 1;
                    }
                } else {
                    let p = k - lt_;
                    let right_part_len = (rt - k + 1) as i32;
                    if rc[last - p] < right_part_len {
                        rc[last - k] = rc[last - p].min(rep_limit);
                    } else {
                        let mut i = rt + 1;
                        while i < nrep && lt.rat(i) == lt.rat(i - k) {
                            i += 1;
                        }
                        rc[last - k] = ((i - k) as i32).min(rep_limit);
                        lt_ = k;
                        rt = i - 1;
                    }
                }
            }
        }

        // Step 3: the token following each repeat would extend it.
        for i in 0..nrep - 1 {
            let repeat_len = self.repeat_count[i];
            if repeat_len >= self.allowed_length {
                let token = lt.rat(nrep - 2 - i);
                let e = self.max_token_repeat.entry(token).or_insert(repeat_len);
                if *e < repeat_len {
                    *e = repeat_len;
                }
            }
        }

        // Step 4: penalties, with the exponent clamped to avoid float overflow.
        const FLOAT_MAX_LOG: f32 = 88.722_84;
        let max_exponent = if self.base > 1.000_001 { cvtt_f32_i32(FLOAT_MAX_LOG / self.base.ln()) } else { 0 };
        for t in cur.cands() {
            let Some(&max_repeat) = self.max_token_repeat.get(&t.id) else { continue };
            let single_token_breaker =
                self.breakers.get(&t.id).is_some_and(|tails| tails.iter().any(|tail| tail.is_empty()));
            if single_token_breaker {
                continue;
            }
            let mut repeat_exp = max_repeat.wrapping_sub(self.allowed_length);
            if max_exponent > 0 && repeat_exp > max_exponent {
                repeat_exp = max_exponent;
            }
            let penalty = (self.multiplier as f64 * (self.base as f64).powf(repeat_exp as f64)) as f32;
            t.logit -= penalty;
        }
        cur.sorted = false;
    }

    fn reset(&mut self) {
        self.last_tokens.clear();
        self.repeat_count.clear();
        self.max_token_repeat.clear();
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        Box::new(self.clone())
    }
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// llama.cpp's `get_overlapping_token_sequences`: every token whose text contains `s` is a
/// single-token restart sequence; every token whose text *ends* with a proper prefix of `s` (at
/// any position where that prefix starts) is the head of a restart sequence whose tail is the
/// tokenization of the rest of `s`, capped at `max_tail_len` tokens.
fn overlapping_token_sequences(
    pieces: &[Vec<u8>],
    s: &[u8],
    out: &mut HashMap<i32, Vec<Vec<i32>>>,
    max_tail_len: usize,
    tokenize: &mut dyn FnMut(&[u8]) -> Option<Vec<i32>>,
) {
    if s.is_empty() {
        return;
    }
    for (id, word) in pieces.iter().enumerate() {
        let id = id as i32;
        if contains_bytes(word, s) {
            out.entry(id).or_default().push(Vec::new());
            continue;
        }
        for pos in 0..word.len() {
            if word[pos] != s[0] {
                continue;
            }
            let mut i = 1usize;
            let mut matched = true;
            while i < s.len() && pos + i < word.len() {
                if word[pos + i] != s[i] {
                    matched = false;
                    break;
                }
                i += 1;
            }
            if !matched {
                continue;
            }
            let Some(mut tail) = tokenize(&s[i..]) else { continue };
            tail.truncate(max_tail_len);
            let tails = out.entry(id).or_default();
            if !tails.contains(&tail) {
                tails.push(tail);
            }
        }
    }
}

/// Greedy longest-match tokenization over the piece texts (lowest id wins among equal pieces);
/// `None` if some byte cannot be covered by any piece.
fn greedy_tokenize(pieces: &[Vec<u8>]) -> impl FnMut(&[u8]) -> Option<Vec<i32>> + '_ {
    let mut by_text: HashMap<&[u8], i32> = HashMap::new();
    let mut max_len = 0usize;
    for (id, p) in pieces.iter().enumerate() {
        if !p.is_empty() {
            by_text.entry(p.as_slice()).or_insert(id as i32);
            max_len = max_len.max(p.len());
        }
    }
    move |text: &[u8]| {
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < text.len() {
            let longest = (1..=max_len.min(text.len() - pos))
                .rev()
                .find_map(|l| by_text.get(&text[pos..pos + l]).map(|&id| (l, id)));
            let (l, id) = longest?;
            out.push(id);
            pos += l;
        }
        Some(out)
    }
}

#[allow(clippy::too_many_arguments)]
fn dry_impl<S: AsRef<[u8]>>(
    token_pieces: &[Vec<u8>],
    tokenize: &mut dyn FnMut(&[u8]) -> Option<Vec<i32>>,
    multiplier: f32,
    base: f32,
    allowed_length: i32,
    penalty_last_n: i32,
    seq_breakers: &[S],
) -> Box<dyn Sampler> {
    const MAX_CHAR_LEN: usize = 40;
    const MAX_SEQ_LEN: usize = 20;
    let penalty_last_n = penalty_last_n.max(0);
    if !Dry::enabled(multiplier, base, penalty_last_n) {
        return empty("?dry");
    }
    let mut d = Dry::new(multiplier, base, allowed_length, penalty_last_n);
    for b in seq_breakers {
        let b = b.as_ref();
        // a C string ends at its first NUL
        let b = &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())];
        if b.is_empty() {
            continue;
        }
        let b = &b[..b.len().min(MAX_CHAR_LEN)];
        overlapping_token_sequences(token_pieces, b, &mut d.breakers, MAX_SEQ_LEN, tokenize);
    }
    Box::new(d)
}

/// `llama_sampler_init_dry(vocab, multiplier, base, allowed_length, penalty_last_n, breakers)`:
/// "Don't Repeat Yourself". For each candidate that would extend a sequence already repeated in
/// the last `penalty_last_n` accepted tokens by `len >= allowed_length`, subtracts
/// `multiplier * base^(len - allowed_length)` from its logit; repetitions do not extend across a
/// sequence breaker. A negative `penalty_last_n` counts as 0 (llama.h has no "-1 = context size"
/// here); `multiplier == 0 || base < 1 || penalty_last_n == 0` is a no-op (`"?dry"`).
///
/// `token_pieces[id]` must be the text llama.cpp's `vocab.detokenize({id}, /*special=*/true)`
/// gives for the single token `id` (i.e. `llama_token_to_piece(.., special = true)` with the
/// leading space removed when the vocab adds a space prefix). A breaker is at most 40 bytes.
/// Tokens whose text contains a breaker become single-token breakers exactly as in llama.cpp.
/// Tokens whose text ends with the beginning of a breaker become the head of a multi-token restart
/// sequence; llama.cpp tokenizes the rest of the breaker with the real tokenizer, which is not
/// available here, so this function uses a greedy longest-match over the piece texts instead (and
/// drops a tail that cannot be covered). Use [`dry_with_tokenizer`] to supply the real tokenizer.
pub fn dry<S: AsRef<[u8]>>(
    token_pieces: &[Vec<u8>],
    multiplier: f32,
    base: f32,
    allowed_length: i32,
    penalty_last_n: i32,
    seq_breakers: &[S],
) -> Box<dyn Sampler> {
    let mut tok = greedy_tokenize(token_pieces);
    dry_impl(token_pieces, &mut tok, multiplier, base, allowed_length, penalty_last_n, seq_breakers)
}

/// Like [`dry`], with `tokenize(text)` standing in for llama.cpp's
/// `vocab.tokenize(text, /*add_special=*/false, /*parse_special=*/false)` when building the tails
/// of multi-token restart sequences; with the model's real tokenizer the result is exactly
/// llama.cpp's.
#[allow(clippy::too_many_arguments)]
pub fn dry_with_tokenizer<S: AsRef<[u8]>>(
    token_pieces: &[Vec<u8>],
    tokenize: &mut dyn FnMut(&[u8]) -> Vec<i32>,
    multiplier: f32,
    base: f32,
    allowed_length: i32,
    penalty_last_n: i32,
    seq_breakers: &[S],
) -> Box<dyn Sampler> {
    let mut tok = |text: &[u8]| Some(tokenize(text));
    dry_impl(token_pieces, &mut tok, multiplier, base, allowed_length, penalty_last_n, seq_breakers)
}

/// `llama_sampler_init_dry_testing`: DRY with the sequence breakers given directly as token
/// sequences (head = first token, tail = the rest); empty sequences are skipped.
pub fn dry_testing(
    multiplier: f32,
    base: f32,
    allowed_length: i32,
    penalty_last_n: i32,
    seq_breakers: &[Vec<i32>],
) -> Box<dyn Sampler> {
    let penalty_last_n = penalty_last_n.max(0);
    if !Dry::enabled(multiplier, base, penalty_last_n) {
        return empty("?dry");
    }
    let mut d = Dry::new(multiplier, base, allowed_length, penalty_last_n);
    for b in seq_breakers {
        if let Some((&head, tail)) = b.split_first() {
            d.breakers.entry(head).or_default().push(tail.to_vec());
        }
    }
    Box::new(d)
}

// ---------------------------------------------------------------------------------------------
// adaptive-p
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct AdaptiveP {
    target: f32,
    decay: f32,
    seed: u32,
    seed_cur: u32,
    rng: Mt19937,
    weighted_sum: f32,
    total_weight: f32,
    original_probs: Vec<f32>,
    pending_token_id: i32,
    pending_token_idx: i32,
}

const DISTRIBUTION_WIDTH: f32 = 0.3;
const PEAK_LOGIT_VALUE: f32 = 5.0;
const SHARPNESS: f32 = 10.0;

impl Sampler for AdaptiveP {
    fn name(&self) -> &'static str {
        "adaptive-p"
    }

    fn apply(&mut self, cur: &mut Cur) {
        if cur.is_empty() {
            cur.selected = -1; // llama.cpp asserts here
            return;
        }
        softmax_impl(cur, false);
        if self.target < 0.0 {
            cur.selected = sample_discrete(cur.candidates(), &mut self.rng) as i64;
            return;
        }
        self.original_probs.clear();
        self.original_probs.extend(cur.candidates().iter().map(|t| t.p));

        let target = cxx_clamp(self.target, 0.0, 1.0);
        let adapted_target = cxx_clamp(
            if self.total_weight == 0.0 { target } else { 2.0 * target - (self.weighted_sum / self.total_weight) },
            0.0,
            1.0,
        );
        let inv_width = 1.0f32 / DISTRIBUTION_WIDTH;
        for t in cur.cands() {
            if t.logit == f32::NEG_INFINITY {
                continue;
            }
            let dist = ((t.p - adapted_target) * inv_width).abs();
            t.logit = PEAK_LOGIT_VALUE - SHARPNESS * dist * dist / (1.0 + dist);
        }
        softmax_impl(cur, false);
        let idx = sample_discrete(cur.candidates(), &mut self.rng);
        cur.selected = idx as i64;
        self.pending_token_id = cur.candidates()[idx].id;
        self.pending_token_idx = idx as i32;
    }

    fn accept(&mut self, token: i32) {
        if self.pending_token_id == token {
            let p = usize::try_from(self.pending_token_idx).ok().and_then(|i| self.original_probs.get(i).copied());
            if let Some(p) = p {
                self.weighted_sum = p + self.decay * self.weighted_sum;
                self.total_weight = 1.0 + self.decay * self.total_weight;
            }
        }
        self.pending_token_id = LLAMA_TOKEN_NULL;
        self.pending_token_idx = -1;
    }

    fn reset(&mut self) {
        self.weighted_sum = self.target / (1.0 - self.decay);
        self.total_weight = 1.0 / (1.0 - self.decay);
        self.pending_token_id = LLAMA_TOKEN_NULL;
        self.pending_token_idx = -1;
        self.seed_cur = get_rng_seed(self.seed);
        self.rng.seed(self.seed_cur);
    }

    fn clone_box(&self) -> Box<dyn Sampler> {
        // as in llama.cpp: a fresh sampler (fresh RNG from the seed) with the EMA and pending token
        // copied; original_probs is not copied
        let seed_cur = get_rng_seed(self.seed);
        Box::new(AdaptiveP {
            seed_cur,
            rng: Mt19937::new(seed_cur),
            original_probs: Vec::new(),
            ..self.clone()
        })
    }
}

/// `llama_sampler_init_adaptive_p(target, decay, seed)`: reshapes the distribution to favour
/// tokens whose probability is near an adapted target (`2 target - EMA of the selected tokens'
/// original probabilities`), then selects with `std::discrete_distribution`. A negative target
/// just samples from the softmax. `decay` is clamped to [0, 0.99]. Must end a chain.
pub fn adaptive_p(target: f32, decay: f32, seed: u32) -> Box<dyn Sampler> {
    let seed_cur = get_rng_seed(seed);
    let decay = cxx_clamp(decay, 0.0, 0.99);
    Box::new(AdaptiveP {
        target,
        decay,
        seed,
        seed_cur,
        rng: Mt19937::new(seed_cur),
        weighted_sum: target / (1.0 - decay),
        total_weight: 1.0 / (1.0 - decay),
        original_probs: Vec::new(),
        pending_token_id: LLAMA_TOKEN_NULL,
        pending_token_idx: -1,
    })
}

#[cfg(test)]
mod tests {
    //! Expected values come from llama.cpp itself: the cases of `tests/test-sampling.cpp`, and
    //! lines printed by a small C++ program linked against the `libllama.so` built from the same
    //! vendored tree (GCC 12 / libstdc++, x86-64), pasted verbatim.

    use super::*;

    // ----- helpers -------------------------------------------------------------------------

    /// `sampler_tester` of test-sampling.cpp: owns the buffer, keeps the array state between
    /// samplers (including XTC's moved start).
    struct Tester {
        buf: Vec<TokenData>,
        off: usize,
        size: usize,
        selected: i64,
        sorted: bool,
    }

    impl Tester {
        fn from_probs(probs: &[f32]) -> Self {
            let buf: Vec<TokenData> =
                probs.iter().enumerate().map(|(i, &p)| TokenData { id: i as i32, logit: p.ln(), p }).collect();
            let size = buf.len();
            Tester { buf, off: 0, size, selected: -1, sorted: false }
        }

        fn from_vocab(n: usize) -> Self {
            let buf: Vec<TokenData> =
                (0..n).map(|i| TokenData { id: i as i32, logit: (i as f32).ln(), p: 0.0 }).collect();
            Tester { buf, off: 0, size: n, selected: -1, sorted: false }
        }

        fn apply(&mut self, mut s: Box<dyn Sampler>) {
            let base = self.buf.as_ptr();
            let mut cur =
                Cur { data: &mut self.buf[self.off..], size: self.size, selected: self.selected, sorted: self.sorted };
            s.apply(&mut cur);
            let (off, size, selected, sorted) = (cur.offset_from(base), cur.size, cur.selected, cur.sorted);
            self.off = off;
            self.size = size;
            self.selected = selected;
            self.sorted = sorted;
        }

        fn cands(&self) -> &[TokenData] {
            &self.buf[self.off..self.off + self.size]
        }

        fn check(&self, expected: &[f32]) {
            assert_eq!(self.size, expected.len(), "size; got {:?}", self.cands());
            for (t, e) in self.cands().iter().zip(expected) {
                assert!((t.p - e).abs() < 1e-5, "p {} vs expected {}; all: {:?}", t.p, e, self.cands());
            }
        }
    }

    fn make_from(logits: &[f32]) -> Vec<TokenData> {
        logits.iter().enumerate().map(|(i, &logit)| TokenData { id: i as i32, logit, p: 0.0 }).collect()
    }

    /// `gen_logit` of the oracle program.
    fn make(n: usize) -> Vec<TokenData> {
        let l: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
        make_from(&l)
    }

    /// Many tied logits.
    fn tie(n: usize, m: usize) -> Vec<TokenData> {
        let l: Vec<f32> = (0..n).map(|i| ((i * 7) % m) as f32).collect();
        make_from(&l)
    }

    fn dump_line(tag: &str, cur: &Cur, off: usize) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for t in cur.candidates() {
            let bytes = [t.id.to_le_bytes(), t.logit.to_bits().to_le_bytes(), t.p.to_bits().to_le_bytes()];
            for b in bytes.iter().flatten() {
                h ^= *b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        let ids: String = cur.candidates().iter().take(12).map(|t| format!("{}, ", t.id)).collect();
        format!(
            "{tag}: size={} selected={} sorted={} off={off} hash=0x{h:016x} ids=[{ids}]",
            cur.len(),
            cur.selected,
            cur.sorted as i32
        )
    }

    /// Applies `s` once to `v` and compares with the oracle's line (ids, logits and p bit-exact
    /// through the hash).
    fn one(mut s: Box<dyn Sampler>, mut v: Vec<TokenData>, expected: &str) {
        let tag = expected.split(": size=").next().unwrap();
        let base = v.as_ptr();
        let mut cur = Cur::new(&mut v);
        s.apply(&mut cur);
        let off = cur.offset_from(base);
        assert_eq!(dump_line(tag, &cur, off), expected);
    }

    /// `seq` of the oracle: `steps` times a fresh `make(n_vocab)`, apply, (accept).
    fn seq(s: &mut dyn Sampler, n_vocab: usize, steps: usize, accept: bool) -> Vec<i32> {
        (0..steps)
            .map(|_| {
                let mut v = make(n_vocab);
                let mut cur = Cur::new(&mut v);
                s.apply(&mut cur);
                let id = cur.selected_token().expect("a token is selected");
                if accept {
                    s.accept(id);
                }
                id
            })
            .collect()
    }

    fn apply_once(s: &mut dyn Sampler, v: &mut [TokenData]) -> (usize, i64, bool) {
        let mut cur = Cur::new(v);
        s.apply(&mut cur);
        (cur.size, cur.selected, cur.sorted)
    }

    // ----- RNG ---------------------------------------------------------------------------------

    #[test]
    fn mt19937_known_outputs() {
        let mut r = Mt19937::new(5489);
        let first: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        assert_eq!(first, [3499211612, 581869302, 3890346734, 3586334585, 545404204]);
        // the C++ standard's check: the 10000th output of a default-constructed mt19937
        let mut r = Mt19937::new(5489);
        r.discard(9999);
        assert_eq!(r.next_u32(), 4123659995);
    }

    #[test]
    fn libstdcxx_distributions() {
        let mut r = Mt19937::new(1234);
        let bits: Vec<u64> = (0..6).map(|_| uniform_f64(&mut r).to_bits()).collect();
        assert_eq!(
            bits,
            [
                0x3fdfd9b8b4cc41db,
                0x3fea2bbb86b3e851,
                0x3fe3966bae8e01de,
                0x3fe8aefaff3921a8,
                0x3feb8a9b5638f590,
                0x3fc3481274a2e451
            ]
        );
        let mut r = Mt19937::new(0);
        let bits: Vec<u32> = (0..6).map(|_| uniform_f32(&mut r).to_bits()).collect();
        assert_eq!(bits, [0x3f0c7f0b, 0x3f17c4aa, 0x3f3716a6, 0x3f5821cd, 0x3f1a4eb3, 0x3f5ba253]);

        let mut r = Mt19937::new(42);
        let w = [0.1f32, 0.0, 0.25, 0.15, 0.5];
        let picks: Vec<usize> = (0..20).map(|_| discrete_distribution(w, &mut r)).collect();
        assert_eq!(picks, [4, 2, 4, 4, 3, 0, 3, 2, 2, 4, 0, 4, 4, 0, 4, 4, 4, 0, 0, 4]);

        // fewer than two weights: 0, and no draw
        let mut a = Mt19937::new(7);
        let mut b = Mt19937::new(7);
        assert_eq!(discrete_distribution([0.3f32], &mut a), 0);
        assert_eq!(discrete_distribution(std::iter::empty::<f32>(), &mut a), 0);
        assert_eq!(a.next_u32(), b.next_u32());
    }

    #[test]
    fn canonical_never_reaches_one() {
        // A state whose next two outputs are 0xFFFFFFFF would give (2^64 - 1) / 2^64 -> rounds
        // to 1.0 in double; libstdc++ returns nextafter(1, 0). Check the clamp directly.
        let below_one = f64::from_bits(1.0f64.to_bits() - 1);
        let sum = 4_294_967_295.0f64 + 4_294_967_295.0f64 * 4_294_967_296.0;
        assert_eq!(sum / 18_446_744_073_709_551_616.0, 1.0);
        assert!(below_one < 1.0);
        let mut r = Mt19937::new(99);
        for _ in 0..10_000 {
            let x = generate_canonical_f64(&mut r);
            assert!((0.0..1.0).contains(&x));
            let y = generate_canonical_f32(&mut r);
            assert!((0.0..1.0).contains(&y));
        }
    }

    // ----- dist --------------------------------------------------------------------------------

    const DIST1234: [i64; 32] = [
        3, 4, 4, 4, 4, 2, 2, 4, 2, 1, 0, 3, 3, 4, 1, 1, 3, 0, 2, 2, 4, 4, 4, 1, 3, 3, 4, 4, 3, 3, 4, 4,
    ];

    #[test]
    fn dist_1234_matches_llama_cpp() {
        let probs = [0.05f32, 0.1, 0.15, 0.2, 0.5];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();

        // 1. by hand: llama.cpp's unnormalised softmax in f32, summed in f64, one
        //    uniform_real_distribution<double> draw = generate_canonical<double,53> = two mt19937
        //    outputs, first index whose running sum reaches rnd * sum.
        let max_l = logits.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = logits.iter().map(|l| (l - max_l).exp()).collect();
        let sum: f64 = e.iter().map(|&x| x as f64).sum();
        let mut mt = Mt19937::new(1234);
        let by_hand: Vec<i64> = (0..32)
            .map(|_| {
                let x0 = mt.next_u32() as f64;
                let x1 = mt.next_u32() as f64;
                let rnd = (x0 + x1 * 4294967296.0) / 18446744073709551616.0;
                let tgt = sum * rnd;
                let mut run = 0.0f64;
                e.iter().position(|&p| {
                    run += p as f64;
                    run >= tgt
                })
                .unwrap() as i64
            })
            .collect();
        // 2. what llama.cpp printed for the same seed and probabilities
        assert_eq!(by_hand, DIST1234);

        // 3. the sampler
        let mut s = dist(1234);
        assert_eq!(s.name(), "dist");
        assert_eq!(s.seed(), Some(1234));
        let got: Vec<i64> = (0..32).map(|_| apply_once(s.as_mut(), &mut make_from(&logits)).1).collect();
        assert_eq!(got, DIST1234);

        // reset replays the sequence
        s.reset();
        let got: Vec<i64> = (0..8).map(|_| apply_once(s.as_mut(), &mut make_from(&logits)).1).collect();
        assert_eq!(got, DIST1234[..8]);

        // p is the normalised softmax, order untouched, bit-exact
        one(
            dist(1234),
            make_from(&logits),
            "dist1234 one: size=5 selected=3 sorted=0 off=0 hash=0x4e556db80ce1d430 ids=[0, 1, 2, 3, 4, ]",
        );
        one(
            dist(3),
            vec![TokenData { id: 5, logit: 3.0, p: 0.0 }],
            "dist single: size=1 selected=0 sorted=0 off=0 hash=0xdd1af51328c702ed ids=[5, ]",
        );
    }

    #[test]
    fn dist_777_large_vocab() {
        let mut s = dist(777);
        assert_eq!(
            seq(s.as_mut(), 2000, 16, true),
            [1297, 408, 1274, 496, 1136, 1235, 1519, 1767, 778, 692, 778, 1042, 778, 1940, 1877, 791]
        );
    }

    #[test]
    fn dist_clone_continues_and_default_seed_is_random() {
        let mut a = dist(5);
        for _ in 0..3 {
            apply_once(a.as_mut(), &mut make(100));
        }
        let mut b = a.clone_box();
        let sa = seq(a.as_mut(), 100, 10, false);
        let sb = seq(b.as_mut(), 100, 10, false);
        assert_eq!(sa, sb);

        let r1 = dist(LLAMA_DEFAULT_SEED);
        let r2 = dist(LLAMA_DEFAULT_SEED);
        assert!(r1.seed().is_some());
        // two random seeds (32 bits each) colliding would be a 1 in 4e9 event
        assert_ne!(r1.seed(), r2.seed());
        // the resolved seed is what get_seed reports, and the clone keeps it
        assert_eq!(r1.clone_box().seed(), r1.seed());
    }

    /// test_dist_singleton_rng: a single candidate still consumes one draw.
    #[test]
    fn dist_singleton_rng() {
        let mut singleton = dist(4242);
        let mut control = dist(4242);
        let mut one_c = make_from(&[0.0]);
        let mut two_c = make_from(&[0.0, 0.0]);
        apply_once(singleton.as_mut(), &mut one_c);
        apply_once(control.as_mut(), &mut two_c);
        assert_eq!(one_c[0].p, 1.0);
        let logits = vec![0.0f32; 256];
        for _ in 0..4 {
            let a = apply_once(singleton.as_mut(), &mut make_from(&logits)).1;
            let b = apply_once(control.as_mut(), &mut make_from(&logits)).1;
            assert_eq!(a, b);
        }
    }

    // ----- test-sampling.cpp ports ------------------------------------------------------------

    fn t_temp(probs: &[f32], expected: &[f32], t: f32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(temp(t));
        ts.apply(dist(0));
        ts.check(expected);
    }

    fn t_temp_ext(probs: &[f32], expected: &[f32], t: f32, delta: f32, exponent: f32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(temp_ext(t, delta, exponent));
        ts.apply(dist(0));
        ts.check(expected);
    }

    fn t_top_k(probs: &[f32], expected: &[f32], k: i32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(top_k(k));
        ts.apply(dist(0));
        ts.check(expected);
    }

    fn t_top_p(probs: &[f32], expected: &[f32], p: f32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(top_p(p, 0));
        ts.apply(dist(0));
        ts.check(expected);
    }

    fn t_min_p(probs: &[f32], expected: &[f32], p: f32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(min_p(p, 0));
        ts.apply(dist(0));
        ts.check(expected);
    }

    fn t_xtc(probs: &[f32], expected: &[f32], p: f32, t: f32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(xtc(p, t, 0, 0));
        ts.check(expected);
    }

    fn t_typical(probs: &[f32], expected: &[f32], p: f32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(typical(p, 0));
        ts.check(expected);
    }

    fn t_penalties(probs: &[f32], last: &[i32], expected: &[f32], repeat: f32, freq: f32, present: f32) {
        assert_eq!(probs.len(), expected.len());
        let mut ts = Tester::from_probs(probs);
        let mut s = penalties(probs.len() as i32, last.len() as i32, repeat, freq, present);
        for &t in last {
            s.accept(t);
        }
        ts.apply(s);
        ts.apply(dist(0));
        ts.check(expected);
    }

    #[allow(clippy::too_many_arguments)]
    fn t_dry(
        probs: &[f32],
        last: &[i32],
        expected: &[f32],
        mult: f32,
        base: f32,
        allowed: i32,
        last_n: i32,
        breakers: &[Vec<i32>],
    ) {
        assert_eq!(probs.len(), expected.len());
        let mut ts = Tester::from_probs(probs);
        let mut s = dry_testing(mult, base, allowed, last_n, breakers);
        for &t in last {
            s.accept(t);
        }
        ts.apply(s);
        ts.apply(dist(0));
        ts.check(expected);
    }

    fn t_top_n_sigma(probs: &[f32], expected: &[f32], n: i32) {
        let mut ts = Tester::from_probs(probs);
        ts.apply(top_n_sigma(n as f32));
        ts.apply(dist(0));
        ts.check(expected);
    }

    const P4: [f32; 4] = [0.1, 0.2, 0.3, 0.4];

    #[test]
    fn test_sampling_temp() {
        t_temp(&P4, &[0.1, 0.2, 0.3, 0.4], 1.0);
        t_temp(&P4, &[0.0, 0.0, 0.0, 1.0], 0.0);
        t_temp_ext(&P4, &[0.1, 0.2, 0.3, 0.4], 1.0, 0.0, 1.0);
        t_temp_ext(&P4, &[0.0, 0.0, 0.0, 1.0], 0.0, 0.0, 1.0);
    }

    #[test]
    fn test_sampling_top_k() {
        t_top_k(&P4, &[1.0], 1);
        t_top_k(&P4, &[0.44444, 0.33333, 0.22222], 3);
        t_top_k(&P4, &[0.4, 0.3, 0.2, 0.1], 4);
        t_top_k(&P4, &[0.1, 0.2, 0.3, 0.4], 0);
    }

    #[test]
    fn test_sampling_top_p() {
        t_top_p(&P4, &[1.0], 0.0);
        t_top_p(&P4, &[0.571429, 0.428571], 0.7);
        t_top_p(&P4, &[0.44444, 0.33333, 0.22222], 0.8);
        t_top_p(&P4, &[0.1, 0.2, 0.3, 0.4], 1.0);
    }

    #[test]
    fn test_sampling_min_p() {
        t_min_p(&P4, &[0.1 / 1.0, 0.2 / 1.0, 0.3 / 1.0, 0.4 / 1.0], 0.00);
        t_min_p(&P4, &[0.1 / 1.0, 0.2 / 1.0, 0.3 / 1.0, 0.4 / 1.0], 0.24);
        t_min_p(&P4, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9], 0.26);
        t_min_p(&P4, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9], 0.49);
        t_min_p(&P4, &[0.3 / 0.7, 0.4 / 0.7], 0.51);
        t_min_p(&P4, &[0.3 / 0.7, 0.4 / 0.7], 0.74);
        t_min_p(&P4, &[0.4 / 0.4], 0.76);
        t_min_p(&P4, &[0.4 / 0.4], 1.00);
        t_min_p(&P4, &[0.4 / 0.4], 1.05);
    }

    #[test]
    fn test_sampling_xtc() {
        let p = [0.4f32, 0.3, 0.2, 0.1];
        // XTC should
        t_xtc(&p, &[0.1], 0.99, 0.09);
        t_xtc(&p, &[0.2, 0.1], 0.99, 0.19);
        t_xtc(&p, &[0.3, 0.2, 0.1], 0.99, 0.29);
        // XTC should not
        t_xtc(&p, &[0.4, 0.3, 0.2, 0.1], 0.99, 0.39);
    }

    #[test]
    fn test_sampling_typical() {
        t_typical(&[0.97, 0.01, 0.01, 0.01], &[0.97], 0.5);
        t_typical(&[0.4, 0.2, 0.2, 0.2], &[0.2, 0.2, 0.2], 0.5);
    }

    #[test]
    fn test_sampling_penalties() {
        let p = [0.2f32; 5];
        t_penalties(&p, &[0], &[0.0, 0.25, 0.25, 0.25, 0.25], 50.0, 0.0, 0.0);
        t_penalties(&p, &[0, 1, 2], &[0.0, 0.0, 0.0, 0.5, 0.5], 50.0, 0.0, 0.0);
        t_penalties(&p, &[0, 1, 2, 0, 0], &[0.0, 0.0, 0.0, 0.5, 0.5], 50.0, 0.0, 0.0);

        t_penalties(&p, &[0], &[0.000011, 0.249997, 0.249997, 0.249997, 0.249997], 1.0, 5.0, 5.0);
        t_penalties(&p, &[0, 1, 2], &[0.000023, 0.000023, 0.000023, 0.499966, 0.499966], 1.0, 5.0, 5.0);
        t_penalties(&p, &[0, 1, 2, 0, 0], &[0.000000, 0.000023, 0.000023, 0.499977, 0.499977], 1.0, 5.0, 5.0);
    }

    #[test]
    fn test_sampling_dry() {
        let q = [0.25f32; 4];
        let f = [0.2f32; 5];
        t_dry(&q, &[0, 1], &[0.25, 0.25, 0.25, 0.25], 1.0, 1.1, 2, 4, &[]);
        t_dry(&q, &[0, 1, 2, 0, 1], &[0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, &[]);
        t_dry(&f, &[0, 1, 3, 4, 0, 1], &[0.2, 0.2, 0.2, 0.2, 0.2], 1.0, 1.1, 2, 6, &[vec![3]]);
        t_dry(&f, &[0, 1, 2, 0, 1], &[0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1, 2, 5, &[]);
        t_dry(&f, &[0, 1, 2, 3, 4, 0, 1], &[0.2, 0.2, 0.2, 0.2, 0.2], 1.0, 1.1, 4, 7, &[]);
    }

    #[test]
    fn test_sampling_top_n_sigma() {
        t_top_n_sigma(&P4, &[0.0, 0.0, 0.428571, 0.571429], 1);
        // top_n_sigma == 0 is a no-op (PR#13345)
        t_top_n_sigma(&P4, &[0.1, 0.2, 0.3, 0.4], 0);
        t_top_n_sigma(&P4, &[0.1, 0.2, 0.3, 0.4], 3);
    }

    /// test_sampler_queue of test-sampling.cpp.
    fn sampler_queue(n_vocab: usize, samplers: &str, top_k_: i32, top_p_: f32, min_p_: f32) {
        let mut ts = Tester::from_vocab(n_vocab);
        let nv = n_vocab as i32;
        let mut min_token_id: i32 = 0;
        let max_token_id: i32 = nv - 1;

        for s in samplers.chars() {
            match s {
                'k' => ts.apply(top_k(top_k_)),
                'p' => ts.apply(top_p(top_p_, 1)),
                'm' => ts.apply(min_p(min_p_, 1)),
                _ => unreachable!(),
            }
            ts.apply(dist(0));

            let size = ts.size as i32;
            let c = ts.cands();
            if s == 'k' {
                let expected_size = size.min(top_k_);
                min_token_id = min_token_id.max(nv - top_k_);
                assert_eq!(size, expected_size);
                assert_eq!(c[0].id, max_token_id);
                assert_eq!(c[expected_size as usize - 1].id, min_token_id);
            } else if s == 'p' {
                let softmax_divisor = nv * (nv - 1) / 2 - min_token_id * (min_token_id - 1) / 2;
                let target = (top_p_ * softmax_divisor as f32).ceil() as i32;
                min_token_id = nv;
                let mut expected_size = 0;
                let mut cumsum = 0;
                loop {
                    min_token_id -= 1;
                    expected_size += 1;
                    cumsum += min_token_id;
                    if cumsum >= target {
                        break;
                    }
                }
                // token 0 has p == 0
                if min_token_id == 1 {
                    min_token_id -= 1;
                    expected_size += 1;
                }
                assert_eq!(size, expected_size, "{samplers} p");
                assert!(!ts.sorted || c[0].id == max_token_id);
                assert!(!ts.sorted || c[expected_size as usize - 1].id == min_token_id);
            } else {
                let mut expected_size = ((1.0f32 - min_p_) * n_vocab as f32).ceil() as i32;
                expected_size = expected_size.max(1);
                expected_size = expected_size.min(size);
                min_token_id = (min_p_ * n_vocab as f32).floor() as i32;
                min_token_id = min_token_id.max(1);
                min_token_id = min_token_id.max(nv - size);
                min_token_id = min_token_id.min(nv - 1);
                assert_eq!(size, expected_size, "{samplers} m");
                assert!(!ts.sorted || c[0].id == max_token_id);
                assert!(!ts.sorted || c[expected_size as usize - 1].id == min_token_id);
            }
        }
    }

    #[test]
    fn test_sampling_sampler_queue() {
        sampler_queue(10000, "k", 10000, 1.0, 1.0);
        sampler_queue(10000, "k", 1, 1.0, 1.0);
        sampler_queue(10000, "p", 10000, 1.0, 1.0);
        sampler_queue(10000, "p", 10000, 0.0, 1.0);
        sampler_queue(10000, "m", 10000, 1.0, 1.0);
        sampler_queue(10000, "m", 10000, 1.0, 1e-12);

        sampler_queue(10000, "k", 100, 1.0000, 1.0);
        sampler_queue(10000, "p", 10000, 0.0003, 1.0);
        sampler_queue(10000, "p", 10000, 0.8000, 1.0);
        sampler_queue(10000, "m", 10000, 1.0000, 9997.9 / 9999.0);
        sampler_queue(10000, "m", 10000, 1.0000, 0.1);

        sampler_queue(10000, "kp", 100, 0.8, 0.1);
        sampler_queue(10000, "km", 100, 0.8, 0.1);
        sampler_queue(10000, "pk", 100, 0.8, 0.1);
        sampler_queue(10000, "pm", 100, 0.8, 0.1);
        sampler_queue(10000, "mk", 100, 0.8, 0.1);
        sampler_queue(10000, "mp", 100, 0.8, 9997.9 / 9999.0);
        sampler_queue(10000, "mp", 100, 0.8, 0.1);

        sampler_queue(10000, "kpm", 100, 0.8, 0.1);
        sampler_queue(10000, "kmp", 100, 0.8, 0.1);
        sampler_queue(10000, "pkm", 100, 0.8, 0.1);
        sampler_queue(10000, "pmk", 100, 0.8, 0.1);
        sampler_queue(10000, "mkp", 100, 0.8, 0.1);
        sampler_queue(10000, "mpk", 100, 0.8, 0.1);
    }

    // ----- oracle: single samplers, bit-exact ----------------------------------------------

    #[test]
    fn oracle_single_samplers() {
        one(temp_ext(0.8, 0.5, 1.0), make(50), "temp_ext dyn: size=50 selected=-1 sorted=1 off=0 hash=0x8d494ab1830beb2e ids=[25, 13, 38, 1, 26, 14, 39, 2, 27, 15, 40, 3, ]");
        one(temp_ext(1.0, 2.0, 2.0), make(50), "temp_ext dyn exp2: size=50 selected=-1 sorted=1 off=0 hash=0xf720d69c1c129c78 ids=[25, 13, 38, 1, 26, 14, 39, 2, 27, 15, 40, 3, ]");
        one(top_n_sigma(1.5), make(50), "top_n_sigma 1.5: size=50 selected=-1 sorted=0 off=0 hash=0xe8f02e102df3704a ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");
        one(typical(0.3, 3), make(50), "typical 0.3 mk3: size=4 selected=-1 sorted=0 off=0 hash=0xcd89a0371222ff72 ids=[26, 14, 1, 39, ]");
        one(typical(0.9, 1), make(50), "typical 0.9: size=12 selected=-1 sorted=0 off=0 hash=0x3ba856b9597e9e64 ids=[26, 14, 1, 39, 38, 2, 13, 27, 25, 15, 40, 3, ]");
        one(top_p(0.5, 1), make(3000), "top_p big: size=208 selected=-1 sorted=1 off=0 hash=0x478d3e8d2a84d453 ids=[1321, 321, 2321, 1642, 2642, 642, 2963, 1963, 963, 2284, 284, 1284, ]");
        one(top_p(0.05, 600), make(3000), "top_p big mk: size=600 selected=-1 sorted=1 off=0 hash=0xd50f455ea6a75d1b ids=[1321, 321, 2321, 1642, 2642, 642, 2963, 1963, 963, 2284, 284, 1284, ]");
        one(top_p(0.999, 1), make(3000), "top_p big 0.999: size=2059 selected=-1 sorted=1 off=0 hash=0xcd8e04d75a9318d7 ids=[1321, 321, 2321, 1642, 2642, 642, 2963, 1963, 963, 2284, 284, 1284, ]");
        one(min_p(0.3, 1), make(50), "min_p 0.3: size=6 selected=-1 sorted=0 off=0 hash=0x1aeb8c9d76d9c68b ids=[1, 13, 14, 25, 26, 38, ]");
        one(min_p(0.9, 5), make(50), "min_p 0.9 mk5: size=5 selected=-1 sorted=1 off=0 hash=0x900e9d27d3622328 ids=[25, 13, 38, 1, 26, ]");
        one(top_k(200), make(3000), "top_k 200 of 3000: size=200 selected=-1 sorted=1 off=0 hash=0xd752b7bce53d72e6 ids=[1321, 321, 2321, 1642, 2642, 642, 2963, 1963, 963, 2284, 284, 1284, ]");
        one(temp(0.0), make(20), "temp 0: size=20 selected=-1 sorted=0 off=0 hash=0x0d66239fbd8956d7 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");
        one(temp(0.5), make(20), "temp 0.5: size=20 selected=-1 sorted=0 off=0 hash=0x2b4b6065ca1efd2e ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");
        one(greedy(), make(20), "greedy: size=20 selected=13 sorted=0 off=0 hash=0x0d0a14a2c92aa37f ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");
        one(
            logit_bias(20, &[(3, 100.0), (7, -5.0), (25, 1.0), (-1, 3.0)]),
            make(20),
            "logit_bias: size=20 selected=-1 sorted=0 off=0 hash=0xd7afc2a7bdcf50f6 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]",
        );
        let mut s = penalties(20, 4, 1.5, 0.25, 0.5);
        for t in [1, 2, 3, 3, 4, 5, 3] {
            s.accept(t);
        }
        one(s, make(20), "penalties: size=20 selected=-1 sorted=0 off=0 hash=0x8699aad1b6d95ad4 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");
    }

    #[test]
    fn oracle_dry() {
        let br = vec![vec![7, 8], vec![9], vec![10, 11, 12]];
        type Case<'a> = (f32, f32, i32, i32, &'a [Vec<i32>], Vec<i32>, &'a str);
        let cases: [Case; 5] = [
            (0.8, 1.75, 2, 32, &br, vec![1, 2, 3, 4, 1, 2, 3, 5, 6, 1, 2, 3, 4, 1, 2],
             "dry a: size=20 selected=-1 sorted=0 off=0 hash=0xacd7d7679d944227 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]"),
            (0.8, 1.75, 2, 32, &br, vec![1, 2, 3, 4, 1, 2, 3, 7, 8, 1, 2, 3, 4, 1, 2],
             "dry b: size=20 selected=-1 sorted=0 off=0 hash=0xacd7d7679d944227 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]"),
            (0.8, 1.75, 1, 32, &br, vec![1, 2, 3, 4, 1, 2, 3, 10, 11, 12, 1, 2, 3, 4, 1, 2, 3],
             "dry c: size=20 selected=-1 sorted=0 off=0 hash=0x0d7bd16fe81f7d28 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]"),
            (1.0, 3.0, 1, 8, &[vec![9]], (0..40).map(|t| 1 + (t % 3)).collect(),
             "dry d: size=20 selected=-1 sorted=0 off=0 hash=0x71ccda0bb7192073 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]"),
            (1.0, 1.0, 0, 6, &[vec![9]], (0..10).map(|t| 1 + (t % 2)).collect(),
             "dry e: size=20 selected=-1 sorted=0 off=0 hash=0xbea7ef5b74fbbc87 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]"),
        ];
        for (mult, base, allowed, last_n, breakers, hist, expected) in cases {
            let mut s = dry_testing(mult, base, allowed, last_n, breakers);
            for t in hist {
                s.accept(t);
            }
            one(s, make(20), expected);
        }
    }

    #[test]
    fn oracle_ties() {
        one(top_k(5), tie(300, 10), "tie top_k 5 of 300: size=5 selected=-1 sorted=1 off=0 hash=0xbe19662aa28f3c51 ids=[27, 17, 37, 47, 7, ]");
        one(top_k(150), tie(1000, 10), "tie top_k 150 of 1000: size=150 selected=-1 sorted=1 off=0 hash=0x6469b695c8b6ecce ids=[627, 747, 737, 727, 717, 707, 697, 687, 677, 667, 657, 647, ]");
        one(top_p(0.95, 1), tie(100, 10), "tie top_p 100: size=30 selected=-1 sorted=1 off=0 hash=0x8f90a29e40b06447 ids=[17, 37, 57, 27, 87, 77, 47, 97, 67, 7, 34, 94, ]");
        one(top_p(0.95, 1), tie(1000, 10), "tie top_p 1000: size=300 selected=-1 sorted=1 off=0 hash=0x79228ff6e9be1b8d ids=[627, 747, 737, 727, 717, 707, 697, 687, 677, 667, 657, 647, ]");
        one(top_p(0.95, 1), tie(3000, 10), "tie top_p 3000: size=900 selected=-1 sorted=1 off=0 hash=0xb8f92082788bc6dc ids=[1967, 2057, 2047, 2037, 2027, 2017, 2007, 1997, 1987, 1977, 2067, 1957, ]");
        one(top_p(0.2, 1), tie(3000, 10), "tie top_p 3000 small: size=95 selected=-1 sorted=1 off=0 hash=0xfaa78543259a273e ids=[1587, 1907, 947, 1427, 2227, 787, 1747, 467, 2067, 1107, 1347, 2387, ]");
        one(typical(0.5, 1), tie(100, 7), "tie typical 100: size=51 selected=-1 sorted=0 off=0 hash=0x5586f287194f4249 ids=[33, 39, 79, 3, 77, 37, 75, 17, 73, 35, 71, 7, ]");
        one(typical(0.9, 1), tie(40, 3), "tie typical 40: size=26 selected=-1 sorted=0 off=0 hash=0xed2979c2fa1b6a97 ids=[8, 32, 14, 5, 17, 11, 23, 20, 29, 26, 2, 38, ]");
        one(min_p(0.5, 150), tie(200, 10), "tie min_p 200: size=150 selected=-1 sorted=1 off=0 hash=0x53c063d83c93b4a3 ids=[107, 197, 187, 177, 167, 157, 147, 137, 127, 117, 7, 97, ]");
        one(temp(0.0), tie(30, 10), "tie temp0: size=30 selected=-1 sorted=0 off=0 hash=0x2d454ce3cd51524e ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");
        one(greedy(), tie(30, 10), "tie greedy: size=30 selected=7 sorted=0 off=0 hash=0x83a4f4b63af9280d ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");
        one(xtc(1.0, 0.001, 1, 3), tie(200, 10), "tie xtc: size=121 selected=-1 sorted=1 off=79 hash=0x7bc32dd5ad67ce44 ids=[18, 105, 195, 185, 175, 165, 155, 145, 135, 125, 115, 5, ]");
        one(temp_ext(1.0, 0.5, 1.0), tie(200, 10), "tie temp_ext: size=200 selected=-1 sorted=1 off=0 hash=0x72860532a2daa5ad ids=[107, 197, 187, 177, 167, 157, 147, 137, 127, 117, 7, 97, ]");
        one(mirostat(200, 11, 3.0, 0.1, 100), tie(200, 10), "tie mirostat: size=1 selected=0 sorted=1 off=0 hash=0x0985f92398b3268c ids=[107, ]");
        one(mirostat_v2(11, 3.0, 0.1), tie(200, 10), "tie mirostat_v2: size=20 selected=1 sorted=1 off=0 hash=0x2972a52a4a2f42c5 ids=[107, 197, 187, 177, 167, 157, 147, 137, 127, 117, 7, 97, ]");
        one(top_n_sigma(1.0), tie(200, 10), "tie top_n_sigma: size=200 selected=-1 sorted=0 off=0 hash=0xb131d35245cd1965 ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ]");

        let big: Vec<f32> = (0..5000).map(|i| ((i * 13) % 37) as f32 / 3.0 - 6.0).collect();
        one(top_k(500), make_from(&big), "tie big top_k 500: size=500 selected=-1 sorted=1 off=0 hash=0x933237dddff088c3 ids=[3458, 3162, 3199, 3236, 3273, 3310, 3347, 3384, 3421, 3125, 3495, 3532, ]");
        one(top_p(0.9, 1), make_from(&big), "tie big top_p: size=935 selected=-1 sorted=1 off=0 hash=0xe9e22433b57852bf ids=[3458, 3162, 3199, 3236, 3273, 3310, 3347, 3384, 3421, 3125, 3495, 3532, ]");
        one(typical(0.8, 1), make_from(&big), "tie big typical: size=780 selected=-1 sorted=0 off=0 hash=0xcde801cf6fcdae46 ids=[4693, 4989, 4952, 4915, 4878, 4841, 4804, 4767, 4397, 4101, 4656, 4619, ]");
        one(min_p(0.2, 1), make_from(&big), "tie big min_p: size=675 selected=-1 sorted=0 off=0 hash=0xb66cde237c4c52bd ids=[11, 14, 17, 31, 34, 48, 51, 54, 68, 71, 85, 88, ]");
        let wide: Vec<f32> = (0..700).map(|i| ((i * 31) % 101) as f32 * 0.37 - 20.0).collect();
        one(top_k(300), make_from(&wide), "wide top_k 300: size=300 selected=-1 sorted=1 off=0 hash=0x01782739f365d8ec ids=[215, 13, 114, 417, 316, 619, 518, 329, 26, 228, 430, 127, ]");
        one(typical(0.6, 1), make_from(&wide), "wide typical: size=30 selected=-1 sorted=0 off=0 hash=0x5756b88f2a9b67e3 ids=[342, 39, 544, 443, 140, 241, 645, 557, 355, 658, 52, 254, ]");

        let mut c = Chain::new();
        c.add(top_k(20));
        c.add(dist(8));
        let got: Vec<i32> = (0..16)
            .map(|_| {
                let mut v = tie(300, 10);
                let mut cur = Cur::new(&mut v);
                c.apply(&mut cur);
                cur.selected_token().unwrap()
            })
            .collect();
        assert_eq!(got, [57, 67, 187, 197, 117, 167, 47, 117, 137, 107, 147, 177, 117, 197, 57, 187]);
    }

    // ----- oracle: stateful samplers and chains ----------------------------------------------

    fn miro_seq(s: &mut dyn Sampler, steps: usize) -> Vec<(i32, usize)> {
        (0..steps)
            .map(|_| {
                let mut v = make(1000);
                let mut cur = Cur::new(&mut v);
                s.apply(&mut cur);
                (cur.selected_token().unwrap(), cur.size)
            })
            .collect()
    }

    #[test]
    fn oracle_mirostat() {
        let mut s = mirostat(1000, 42, 5.0, 0.1, 100);
        assert_eq!(
            miro_seq(s.as_mut(), 24),
            [(39, 608), (321, 2), (471, 683), (642, 2), (260, 886), (963, 23), (62, 55), (926, 19), (247, 64), (815, 24), (642, 42), (704, 35), (704, 25), (321, 34), (482, 42), (889, 15), (519, 73), (321, 11), (642, 123), (531, 22), (778, 50), (321, 22), (939, 61), (642, 8)]
        );
        let mut s = mirostat_v2(42, 3.0, 0.2);
        assert_eq!(
            miro_seq(s.as_mut(), 24),
            [(321, 1), (321, 1), (630, 39), (321, 5), (852, 15), (321, 1), (704, 43), (284, 9), (321, 6), (926, 13), (321, 3), (963, 23), (963, 4), (321, 17), (963, 4), (457, 18), (321, 1), (321, 41), (173, 13), (642, 2), (457, 29), (321, 3), (321, 23), (963, 4)]
        );
        // k overflows int: llama.cpp (x86-64) ends up with k = 1
        let mut s = mirostat(1000, 42, 40.0, 0.1, 100);
        assert_eq!(miro_seq(s.as_mut(), 4), [(321, 1), (321, 1), (321, 1), (321, 1)]);
        // m = 0: every candidate is used for the estimate
        let mut s = mirostat(1000, 42, 5.0, 0.1, 0);
        assert_eq!(miro_seq(s.as_mut(), 4), [(397, 507), (642, 11), (519, 53), (852, 21)]);

        // reset restores mu and the RNG; clone copies both
        let mut s = mirostat(1000, 42, 5.0, 0.1, 100);
        let a = miro_seq(s.as_mut(), 5);
        s.reset();
        assert_eq!(miro_seq(s.as_mut(), 5), a);
        let mut c = s.clone_box();
        assert_eq!(miro_seq(s.as_mut(), 5), miro_seq(c.as_mut(), 5));
        let mut s = mirostat_v2(42, 3.0, 0.2);
        miro_seq(s.as_mut(), 3);
        let mut c = s.clone_box();
        assert_eq!(miro_seq(s.as_mut(), 5), miro_seq(c.as_mut(), 5));
    }

    #[test]
    fn oracle_xtc_sequence() {
        let mut s = xtc(0.5, 0.1, 1, 1234);
        let lg = [0.35f32.ln(), 0.25f32.ln(), 0.2f32.ln(), 0.12f32.ln(), 0.08f32.ln()];
        let got: Vec<(usize, i32)> = (0..16)
            .map(|_| {
                let mut v = make_from(&lg);
                let mut cur = Cur::new(&mut v);
                s.apply(&mut cur);
                (cur.size, cur.data[0].id)
            })
            .collect();
        assert_eq!(
            got,
            [(2, 3), (2, 3), (5, 0), (5, 0), (2, 3), (5, 0), (5, 0), (5, 0), (5, 0), (5, 0), (2, 3), (2, 3), (2, 3), (2, 3), (5, 0), (5, 0)]
        );
        // XTC reports no seed, like llama_sampler_get_seed
        assert_eq!(s.seed(), None);
    }

    fn chain1() -> Chain {
        let mut c = Chain::new();
        c.add(penalties(2000, 64, 1.3, 0.1, 0.2));
        c.add(top_k(40));
        c.add(top_p(0.9, 1));
        c.add(min_p(0.05, 1));
        c.add(temp(0.8));
        c.add(dist(4321));
        c
    }

    #[test]
    fn oracle_chains() {
        let mut c = chain1();
        assert_eq!(
            seq(&mut c, 2000, 24, true),
            [1963, 1494, 1284, 815, 136, 1136, 1778, 852, 568, 1321, 531, 926, 1568, 1704, 1099, 383, 420, 284, 889, 25, 1642, 963, 1852, 99]
        );
        assert_eq!(c.seed(), Some(4321));
        assert_eq!(get_seed(&c), 4321);
        assert_eq!(c.len(), 6);
        let names: Vec<&str> = (0..c.len()).map(|i| c.get(i).unwrap().name()).collect();
        assert_eq!(names, ["penalties", "top-k", "top-p", "min-p", "temp", "dist"]);
        assert_eq!(c.name(), "chain");

        let mut c2 = c.clone();
        assert_eq!(seq(&mut c, 2000, 6, true), [309, 1951, 741, 210, 1815, 1605]);
        assert_eq!(seq(&mut c2, 2000, 6, true), [309, 1951, 741, 210, 1815, 1605]);
        c.reset();
        assert_eq!(seq(&mut c, 2000, 6, true), [1963, 1494, 1284, 815, 136, 1136]);

        let mut c = Chain::new();
        c.add(top_n_sigma(1.5));
        c.add(typical(0.7, 2));
        c.add(temp_ext(0.9, 0.5, 1.2));
        c.add(xtc(0.6, 0.05, 1, 99));
        c.add(dist(5));
        assert_eq!(
            seq(&mut c, 1500, 24, true),
            [926, 891, 914, 1077, 889, 198, 1272, 87, 3, 323, 26, 286, 1062, 471, 531, 99, 852, 1027, 371, 87, 261, 642, 210, 249]
        );
    }

    #[test]
    fn oracle_adaptive_p() {
        let mut s = adaptive_p(0.3, 0.9, 5);
        assert_eq!(s.name(), "adaptive-p");
        assert_eq!(
            seq(s.as_mut(), 200, 16, true),
            [11, 167, 73, 197, 18, 80, 71, 99, 198, 162, 131, 164, 50, 153, 23, 41]
        );
        let mut s = adaptive_p(-1.0, 0.9, 5);
        assert_eq!(seq(s.as_mut(), 200, 8, true), [13, 173, 75, 198, 15, 87, 75, 99]);
        // reset: same sequence again
        let mut s = adaptive_p(0.3, 0.9, 5);
        let a = seq(s.as_mut(), 200, 6, true);
        s.reset();
        assert_eq!(seq(s.as_mut(), 200, 6, true), a);
    }

    #[test]
    fn names_and_seeds() {
        let cases: Vec<(Box<dyn Sampler>, &str, u32)> = vec![
            (top_k(0), "?top-k", LLAMA_DEFAULT_SEED),
            (top_p(1.0, 1), "?top-p", LLAMA_DEFAULT_SEED),
            (min_p(0.0, 1), "?min-p", LLAMA_DEFAULT_SEED),
            (typical(1.0, 1), "?typical", LLAMA_DEFAULT_SEED),
            (temp(1.0), "?temp", LLAMA_DEFAULT_SEED),
            (temp_ext(1.0, 0.0, 1.0), "?temp-ext", LLAMA_DEFAULT_SEED),
            (xtc(0.0, 0.1, 1, 1), "?xtc", LLAMA_DEFAULT_SEED),
            (top_n_sigma(0.0), "?top-n-sigma", LLAMA_DEFAULT_SEED),
            (penalties(10, 0, 1.1, 0.0, 0.0), "?penalties", LLAMA_DEFAULT_SEED),
            (logit_bias(10, &[]), "?logit-bias", LLAMA_DEFAULT_SEED),
            (greedy(), "greedy", LLAMA_DEFAULT_SEED),
            (dist(1), "dist", 1),
            (mirostat(10, 1, 5.0, 0.1, 100), "mirostat", 1),
            (mirostat_v2(1, 5.0, 0.1), "mirostat-v2", 1),
            (top_k(3), "top-k", LLAMA_DEFAULT_SEED),
            (adaptive_p(0.5, 0.9, 1), "adaptive-p", LLAMA_DEFAULT_SEED),
            // not printed by the oracle, names from llama-sampler.cpp
            (top_p(0.5, 1), "top-p", LLAMA_DEFAULT_SEED),
            (min_p(0.5, 1), "min-p", LLAMA_DEFAULT_SEED),
            (typical(0.5, 1), "typical", LLAMA_DEFAULT_SEED),
            (temp(0.5), "temp", LLAMA_DEFAULT_SEED),
            (temp_ext(0.5, 0.0, 1.0), "temp-ext", LLAMA_DEFAULT_SEED),
            (xtc(0.5, 0.1, 1, 1), "xtc", LLAMA_DEFAULT_SEED),
            (top_n_sigma(1.0), "top-n-sigma", LLAMA_DEFAULT_SEED),
            (penalties(10, 64, 1.1, 0.0, 0.0), "penalties", LLAMA_DEFAULT_SEED),
            (penalties(10, -1, 1.1, 0.0, 0.0), "?penalties", LLAMA_DEFAULT_SEED),
            (logit_bias(10, &[(1, 1.0)]), "logit-bias", LLAMA_DEFAULT_SEED),
            (dry_testing(1.0, 1.5, 2, 64, &[]), "dry", LLAMA_DEFAULT_SEED),
            (dry_testing(0.0, 1.5, 2, 64, &[]), "?dry", LLAMA_DEFAULT_SEED),
            (dry_testing(1.0, 0.5, 2, 64, &[]), "?dry", LLAMA_DEFAULT_SEED),
            (dry_testing(1.0, 1.5, 2, -1, &[]), "?dry", LLAMA_DEFAULT_SEED),
            (Box::new(Chain::new()), "chain", LLAMA_DEFAULT_SEED),
        ];
        for (s, name, seed) in cases {
            assert_eq!(s.name(), name);
            assert_eq!(get_seed(s.as_ref()), seed, "{name}");
            let c = s.clone_box();
            assert_eq!(c.name(), name);
        }
    }

    // ----- chain API ----------------------------------------------------------------------------

    #[test]
    fn chain_api() {
        let mut c = Chain::default();
        assert!(c.is_empty());
        assert!(c.get(0).is_none());
        assert!(c.remove(0).is_none());
        c.add(top_k(10));
        c.add(temp(0.5));
        c.add(dist(3));
        assert_eq!(c.len(), 3);
        let removed = c.remove(1).unwrap();
        assert_eq!(removed.name(), "temp");
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(1).unwrap().name(), "dist");
        assert!(c.get(2).is_none());
        assert!(c.get_mut(0).is_some());

        // nested chains; the seed comes from the last seeded sampler
        let mut outer = Chain::with_no_perf(false);
        outer.add(dist(11));
        outer.add(Box::new(c));
        assert_eq!(outer.seed(), Some(3));
        let tok = sample_logits(&mut outer, &[0.0, 1.0, 5.0, 2.0]).unwrap();
        assert!((0..4).contains(&tok));
        assert_eq!(outer.perf().1, 1);
        outer.perf_reset();
        assert_eq!(outer.perf().1, 0);

        // an empty chain selects nothing
        let mut e = Chain::new();
        assert_eq!(sample_logits(&mut e, &[1.0, 2.0]), None);
        assert_eq!(e.seed(), None);
    }

    #[test]
    fn softmax_sorts_and_normalises() {
        let mut v = make_from(&[1.0, 3.0, 2.0, f32::NEG_INFINITY]);
        let mut cur = Cur::new(&mut v);
        softmax(&mut cur);
        assert!(cur.sorted);
        let ids: Vec<i32> = cur.candidates().iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 2, 0, 3]);
        let sum: f32 = cur.candidates().iter().map(|t| t.p).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert_eq!(cur.candidates()[3].p, 0.0);
        let e = [1.0f32, (-1.0f32).exp(), (-2.0f32).exp()];
        let z: f32 = e.iter().sum();
        assert!((cur.candidates()[0].p - 1.0 / z).abs() < 1e-7);

        // already sorted: untouched order, max taken from the first element
        let mut v = make_from(&[0.0, 5.0]);
        let mut cur = Cur { data: &mut v, size: 2, selected: -1, sorted: true };
        softmax(&mut cur);
        assert_eq!(cur.candidates()[0].id, 0);

        let mut v: Vec<TokenData> = Vec::new();
        softmax(&mut Cur::new(&mut v));
    }

    // ----- DRY from piece texts -------------------------------------------------------------

    #[test]
    fn dry_breakers_from_pieces() {
        let pieces: Vec<Vec<u8>> = ["hello", "\n", "foo\nbar", "as", "sis", "tant", ":", "assis", "x", "q\u{e9}"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let mut map = HashMap::new();
        let mut tok = greedy_tokenize(&pieces);
        overlapping_token_sequences(&pieces, b"\n", &mut map, 20, &mut tok);
        overlapping_token_sequences(&pieces, b"assistant:", &mut map, 20, &mut tok);
        let mut keys: Vec<_> = map.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, [1, 2, 3, 7]);
        assert_eq!(map[&1], [Vec::<i32>::new()]);
        assert_eq!(map[&2], [Vec::<i32>::new()]);
        assert_eq!(map[&3], [vec![4, 5, 6]]); // "as" + "sis" "tant" ":"
        assert_eq!(map[&7], [vec![5, 6]]); // "assis" + "tant" ":"

        // a tail that the pieces cannot cover is dropped
        let mut map = HashMap::new();
        overlapping_token_sequences(&pieces, b"asz", &mut map, 20, &mut tok);
        assert!(map.is_empty());
        // tails are capped at max_tail_len tokens
        let mut map = HashMap::new();
        overlapping_token_sequences(&pieces, b"assistant:", &mut map, 2, &mut tok);
        assert_eq!(map[&3], [vec![4, 5]]);

        // the sampler built from pieces behaves like the token-level one
        let hist = [0, 8, 0, 8, 3, 4, 5, 6, 0, 8, 0];
        let mut a = dry(&pieces, 1.0, 1.5, 1, 32, &["\n", "assistant:"]);
        let mut b = dry_testing(1.0, 1.5, 1, 32, &[vec![1], vec![2], vec![3, 4, 5, 6], vec![7, 5, 6]]);
        let mut real_tok = |t: &[u8]| {
            let mut g = greedy_tokenize(&pieces);
            g(t).unwrap()
        };
        let mut c = dry_with_tokenizer(&pieces, &mut real_tok, 1.0, 1.5, 1, 32, &["\n", "assistant:"]);
        for &t in &hist {
            a.accept(t);
            b.accept(t);
            c.accept(t);
        }
        let mut va = make(10);
        let mut vb = make(10);
        let mut vc = make(10);
        apply_once(a.as_mut(), &mut va);
        apply_once(b.as_mut(), &mut vb);
        apply_once(c.as_mut(), &mut vc);
        assert_eq!(va, vb);
        assert_eq!(va, vc);
        assert_ne!(va, make(10), "a penalty was applied");

        // breakers are byte strings cut at NUL and at 40 bytes; empty ones are skipped
        let s = dry(&pieces, 1.0, 1.5, 1, 32, &["", "\0abc", &"y".repeat(100)]);
        assert_eq!(s.name(), "dry");
    }

    #[test]
    fn dry_reset_and_clone() {
        let mut s = dry_testing(1.0, 1.1, 2, 5, &[]);
        for t in [0, 1, 2, 0, 1] {
            s.accept(t);
        }
        let mut c = s.clone_box();
        let mut v1 = make_from(&[0.0; 4]);
        let mut v2 = make_from(&[0.0; 4]);
        apply_once(s.as_mut(), &mut v1);
        apply_once(c.as_mut(), &mut v2);
        assert_eq!(v1, v2);
        assert!(v1[2].logit < 0.0);
        s.reset();
        let mut v3 = make_from(&[0.0; 4]);
        apply_once(s.as_mut(), &mut v3);
        assert_eq!(v3, make_from(&[0.0; 4]));
    }

    #[test]
    fn penalties_window_and_reset() {
        let mut s = penalties(10, 2, 2.0, 0.0, 0.0);
        for t in [1, 2, 3] {
            s.accept(t);
        }
        // only the last two (2, 3) count
        let mut v = make_from(&[1.0, 1.0, 1.0, 1.0, -1.0]);
        apply_once(s.as_mut(), &mut v);
        let l: Vec<f32> = v.iter().map(|t| t.logit).collect();
        assert_eq!(l, [1.0, 1.0, 0.5, 0.5, -1.0]);
        let mut c = s.clone_box();
        s.reset();
        let mut v = make_from(&[1.0; 4]);
        apply_once(s.as_mut(), &mut v);
        assert!(v.iter().all(|t| t.logit == 1.0));
        let mut v = make_from(&[1.0; 4]);
        apply_once(c.as_mut(), &mut v);
        assert_eq!(v[3].logit, 0.5);
    }

    #[test]
    fn logit_bias_shuffled_candidates() {
        let mut s = logit_bias(10, &[(2, 1.0), (7, -2.0), (2, 0.5)]);
        // candidates not at their vocab positions: searched
        let mut v = vec![
            TokenData { id: 7, logit: 0.0, p: 0.0 },
            TokenData { id: 2, logit: 0.0, p: 0.0 },
            TokenData { id: 5, logit: 0.0, p: 0.0 },
        ];
        apply_once(s.as_mut(), &mut v);
        assert_eq!(v[0].logit, -2.0);
        assert_eq!(v[1].logit, 1.0); // only the first listed bias when searching
        assert_eq!(v[2].logit, 0.0);
        // at index == id both apply
        let mut v = make_from(&[0.0; 4]);
        apply_once(s.as_mut(), &mut v);
        assert_eq!(v[2].logit, 1.5);
    }

    // ----- edge cases: no panics --------------------------------------------------------------

    fn all_samplers() -> Vec<Box<dyn Sampler>> {
        let pieces: Vec<Vec<u8>> = vec![b"a".to_vec(), b"\n".to_vec(), b"ab".to_vec()];
        vec![
            greedy(),
            dist(1),
            dist(LLAMA_DEFAULT_SEED),
            top_k(1),
            top_k(i32::MAX),
            top_k(-5),
            top_p(0.0, 0),
            top_p(0.5, usize::MAX),
            top_p(-1.0, 1),
            top_p(f32::INFINITY, 1),
            min_p(0.5, 0),
            min_p(2.0, usize::MAX),
            min_p(f32::INFINITY, 1),
            typical(0.0, 0),
            typical(0.5, usize::MAX),
            typical(-3.0, 1),
            temp(0.0),
            temp(-1.0),
            temp(1e-30),
            temp(f32::INFINITY),
            temp_ext(0.0, 0.0, 1.0),
            temp_ext(0.5, 1.0, 0.0),
            temp_ext(0.5, 10.0, -2.0),
            temp_ext(0.0, 0.5, 1.0),
            xtc(1.0, 0.0, 0, 5),
            xtc(1.0, 0.5, usize::MAX, 5),
            xtc(1.0, -1.0, 1, 5),
            top_n_sigma(1.0),
            top_n_sigma(f32::INFINITY),
            mirostat(0, 1, 5.0, 0.1, 100),
            mirostat(-5, 1, 0.0, 1.0, i32::MIN),
            mirostat(100, 1, 1e30, 1e30, 1),
            mirostat_v2(1, 5.0, 0.1),
            mirostat_v2(1, -5.0, 100.0),
            penalties(0, 3, 0.0, 1.0, 1.0),
            penalties(10, i32::MAX, 1.5, 0.0, 0.0),
            logit_bias(0, &[(i32::MIN, 1.0), (i32::MAX, -1.0), (0, f32::NEG_INFINITY)]),
            dry(&pieces, 1.0, 1.5, 2, 64, &["\n", "ab", "abc"]),
            dry_testing(1.0, 1.5, i32::MIN, 64, &[vec![], vec![1, 2]]),
            dry_testing(1.0, 1.5, -3, i32::MAX, &[vec![0]]),
            dry_testing(5.0, 1e30, 0, 4, &[]),
            dry_testing(1.0, 1.000_000_1, i32::MAX, 4, &[]),
            adaptive_p(0.5, 0.9, 1),
            adaptive_p(2.0, -1.0, 1),
            adaptive_p(-1.0, 5.0, LLAMA_DEFAULT_SEED),
            Box::new(Chain::new()),
        ]
    }

    #[test]
    fn edge_cases_do_not_panic() {
        let inputs: Vec<Vec<f32>> = vec![
            vec![],
            vec![0.5],
            vec![1.0, 1.0],
            vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY],
            vec![f32::NEG_INFINITY; 3],
            vec![1e30, -1e30, 0.0, 3.0],
            vec![f32::INFINITY, 0.0, 1.0],
            (0..300).map(|i| (i % 5) as f32).collect(),
            (0..1500).map(|i| ((i * 37) % 101) as f32 * 0.5 - 25.0).collect(),
            vec![2.0; 2000],
        ];
        for mut s in all_samplers() {
            let name = s.name();
            for round in 0..3 {
                for logits in &inputs {
                    let mut v = make_from(logits);
                    let mut cur = Cur::new(&mut v);
                    s.apply(&mut cur);
                    assert!(cur.size <= logits.len(), "{name}: size grew");
                    assert!(cur.selected >= -1 && cur.selected < cur.size.max(1) as i64, "{name}: bad selected");
                    if let Some(t) = cur.selected_token() {
                        s.accept(t);
                    } else {
                        s.accept(round);
                    }
                    // size larger than the buffer is clamped, never indexed
                    let mut v = make_from(logits);
                    let mut cur = Cur { data: &mut v, size: logits.len() + 5, selected: -1, sorted: round == 1 };
                    s.apply(&mut cur);
                }
                let mut c = s.clone_box();
                c.reset();
                let mut v = make(64);
                c.apply(&mut Cur::new(&mut v));
                s.reset();
            }
        }
    }

    #[test]
    fn greedy_and_selection_edge_cases() {
        let mut g = greedy();
        let mut v: Vec<TokenData> = Vec::new();
        assert_eq!(apply_once(g.as_mut(), &mut v).1, -1);
        let mut d = dist(1);
        assert_eq!(apply_once(d.as_mut(), &mut v).1, -1);
        let mut v = make_from(&[f32::NEG_INFINITY, 2.0, 2.0]);
        assert_eq!(apply_once(g.as_mut(), &mut v).1, 1);

        // top-k on already sorted input just truncates
        let mut v = make_from(&[0.0, 5.0, 1.0]);
        let mut cur = Cur { data: &mut v, size: 3, selected: -1, sorted: true };
        top_k(2).apply(&mut cur);
        assert_eq!(cur.size, 2);
        assert_eq!(cur.candidates()[0].id, 0);

        // temp 0 keeps only the first maximum
        let mut v = make_from(&[1.0, 3.0, 3.0, 2.0]);
        apply_once(temp(0.0).as_mut(), &mut v);
        let l: Vec<f32> = v.iter().map(|t| t.logit).collect();
        assert_eq!(l, [f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
    }

    #[test]
    fn stl_sort_matches_a_reference_order() {
        // the ports must sort correctly (values), whatever the tie order
        let mut r = Mt19937::new(3);
        for n in [0usize, 1, 2, 3, 15, 16, 17, 100, 1000, 5000] {
            let v: Vec<u32> = (0..n).map(|_| r.next_u32() % 50).collect();
            let mut a = v.clone();
            stl::sort(&mut a, &mut |x: &u32, y: &u32| x < y);
            let mut b = v.clone();
            b.sort();
            assert_eq!(a, b);
            for k in [0, 1.min(n), n / 2, n] {
                let mut c = v.clone();
                stl::partial_sort(&mut c, k, &mut |x: &u32, y: &u32| x < y);
                assert_eq!(c[..k], b[..k]);
                let mut rest = c.clone();
                rest.sort();
                assert_eq!(rest, b, "partial_sort permutes");
            }
        }
    }
}
