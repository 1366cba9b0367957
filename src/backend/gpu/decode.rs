//! What runs for a matrix product of a few tokens: one table.
//!
//! Every decode-product kernel of `kernels/mmvq.cu` and `kernels/matvec.cu`
//! is one row of [`VARIANTS`]: its name (prefix, weight-type suffix, tail),
//! how it takes x, its block shape, its fit predicate and its argument
//! layout. [`choose`] picks the first row of a class whose predicate holds;
//! [`plan`] picks the class for the products that read one x (the ladder
//! `GpuSession::project` follows). Both are pure functions of the shapes
//! and the [`DeviceInfo`], so "what runs for this matrix" is answered (and
//! tested, `tests` below) without a GPU. [`launch`] is the one place that
//! builds a decode product's grid and arguments.

use super::ops::{act_code, kernel_define, ActQ, DevMatrix, Out};
use super::runtime::{Arg, DevPtr, DeviceInfo, LaunchDims, Stream};
use super::Device;
use crate::error::{Error, Result};
use crate::model::arch::FfnAct;
use crate::quant::GgmlType;

use super::kernel_table as k;

/// Most tokens the decode kernels take at once.
pub const MAXT: usize = k::MMVQ_MAXT;
const _: () = assert!(k::MMVQ_MAXT == k::MMV_MAXT, "mmvq and matvec take the same token counts");
/// Threads of the mmvq/mmvf blocks.
const MMVQ_THREADS: u32 = k::MMVQ_THREADS as u32;
/// The long-row `_x` block and its widest row.
const X_THREADS: u32 = k::MMVQ_X_THREADS as u32;
fn x_maxcols() -> usize {
    kernel_define("MMVQ_X_MAXCOLS", k::MMVQ_X_MAXCOLS)
}
/// Most bytes of x (f32) the blocks of one long-row `_x` product read in
/// all, each block preparing the whole x again (a launcher's choice: 8 MiB;
/// `FORGE_X_REREAD_MB` for experiments).
fn x_reread_limit() -> usize {
    static MB: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MB.get_or_init(|| std::env::var("FORGE_X_REREAD_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(8)) << 20
}
/// Rows shorter than this take the one-row-per-warp forms.
const SHORT_COLS: usize = k::MMVQ_WX_MAXCOLS;
/// The most rows a short-row `_wx` product takes unless it also fits the
/// long-row rule (each block prepares x again: fine for the layers'
/// matrices, not for a 151936-row output matrix; a launcher's choice).
const SHORT_ROWS: usize = 16384;
/// The older matvec kernel: rows per block and threads.
const MMV_ROWS: usize = k::MMV_ROWS;
const MMV_THREADS: usize = k::MMV_THREADS;

/// How a product's kernel takes x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// f32 x, prepared by the kernel itself (RMSNorm fused): one token.
    Raw,
    /// x as [`super::ops::quantize_act`] prepared it (planes, or its f32 copy).
    Prepared,
    /// f32 x into the older matvec kernel (staged in shared memory).
    Staged,
}

/// The decode-kernel family of a weight type: integer dot products on
/// prepared planes (`mmvq`), f32 products on the f32 copy (`mmvf`), or
/// none (only the staged matvec kernel takes it).
pub fn family(ty: GgmlType) -> Option<&'static str> {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K => Some("mmvq"),
        F32 | F16 | BF16 => Some("mmvf"),
        _ => None,
    }
}

/// A product as the planner sees it: W's shape and type, and how it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    pub ty: GgmlType,
    /// W's kernel-name suffix (regrouped layouts have their own).
    pub suffix: &'static str,
    pub rows: usize,
    pub cols: usize,
    /// Tokens.
    pub nt: usize,
    /// A gated pair: y = act(W x) * (W2 x).
    pub gated: bool,
    /// x is RMS-normalized inside the kernel.
    pub norm: bool,
}

impl Product {
    pub fn of(w: &DevMatrix, nt: usize, gated: bool, norm: bool) -> Result<Product> {
        Ok(Product { ty: w.ty, suffix: w.suffix()?, rows: w.rows, cols: w.cols, nt, gated, norm })
    }
    /// A type with integer decode kernels (`mmvq_*`).
    fn int(&self) -> bool {
        family(self.ty) == Some("mmvq")
    }
    /// A float type with f32-activation decode kernels (`mmvf_*`).
    fn float(&self) -> bool {
        family(self.ty) == Some("mmvf")
    }
    fn one(&self) -> bool {
        self.nt == 1
    }
    fn short(&self) -> bool {
        self.cols < SHORT_COLS
    }
    /// The long-row rule of the `_x` kernels: a plain product (no pair, no
    /// norm) of rows of at most 8192 values in few enough blocks of 4 rows
    /// that their reads of x stay under 8 MiB (Qwen2.5-0.5B's 896 × 4864
    /// down matrix, not the 7B's 4096 × 11008).
    fn long_fits(&self) -> bool {
        !self.gated && !self.norm && self.cols <= x_maxcols() && self.rows.div_ceil(4) * self.cols * 4 <= x_reread_limit()
    }
    /// What every kernel-prepared (`Raw`) form needs.
    fn raw(&self) -> bool {
        self.one() && self.int() && self.cols % 32 == 0 && ((self.short() && self.rows <= SHORT_ROWS) || self.long_fits())
    }
}

/// A kernel's parameter list (kernels/mmvq.cu, matvec.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Params {
    /// (W, W2, xq, xd, xs, y, rows, cols, nt, mode)
    Planes,
    /// (W, W2, xf, y, rows, cols, nt, mode)
    F32Copy,
    /// (W, W2, x, nw, eps, y, rows, cols, mode)
    RawNorm,
    /// (W, x, y, rows, cols, mode)
    RawPlain,
    /// (W, W2, x, y, rows, cols, nt, mode, nw, eps)
    Staged,
}

impl Params {
    /// The parameter kinds, as `launch` builds them.
    #[cfg(test)]
    fn kinds(self) -> Vec<super::kernel_table::Param> {
        use super::kernel_table::Param::{F32, I32, Ptr};
        match self {
            Params::Planes => vec![Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
            Params::F32Copy => vec![Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
            Params::RawNorm => vec![Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
            Params::RawPlain => vec![Ptr, Ptr, Ptr, I32, I32, I32],
            Params::Staged => vec![Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
        }
    }
}

/// One decode-product kernel.
pub struct Variant {
    /// Kernel name: prefix, the weight's suffix, tail.
    pub prefix: &'static str,
    pub tail: &'static str,
    pub input: Input,
    /// W's rows per block, given the warps of a 128-thread block.
    rows_per_block: fn(&DeviceInfo) -> usize,
    threads: u32,
    fits: fn(&Product, &DeviceInfo) -> bool,
    params: Params,
}

impl Variant {
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}{}", self.prefix, self.tail)
    }
}

fn warps(info: &DeviceInfo) -> usize {
    MMVQ_THREADS as usize / info.warp_size as usize
}

/// Two rows per warp for a gated pair of many short rows: each block
/// prepares x again, and Qwen2.5-0.5B's 4864-row gate/up spend more of
/// their instructions on that than on the weights; only with rows enough
/// for 4 blocks per multiprocessor even so.
fn two_rows_per_warp(p: &Product, info: &DeviceInfo) -> bool {
    p.gated && p.short() && p.rows.div_ceil(2 * warps(info)) >= 4 * info.multiprocessors as usize
}

/// Dynamic shared memory of the matvec kernel: x (padded) and, for
/// quantized types, two staging chunks per warp (`Stage<T>` in matvec.cu).
pub fn matvec_shared(info: &DeviceInfo, ty: GgmlType, cols: usize, nt: usize) -> usize {
    let (blk, bytes) = ty.block_geometry();
    let warp = info.warp_size as usize;
    let staged = blk != 32 || bytes % 16 != 0;
    let pitch = ((warp * 32 / blk) * bytes).div_ceil(16) * 16;
    (nt * (cols / 32) * 33 * 4).div_ceil(16) * 16 + if staged { (MMV_THREADS / warp) * 2 * pitch } else { 0 }
}

/// Whether rows of `cols` values of `ty` are whole 32-value groups and whole
/// blocks of their type: what every GPU matrix product needs.
pub fn whole_groups(ty: GgmlType, cols: usize) -> bool {
    cols % 32 == 0 && cols % ty.block_size() as usize == 0
}

/// Whether the older matvec kernel takes `nt` tokens of `cols` values of
/// `ty`: few tokens, and x fits the block's shared memory.
pub fn staged_fits(info: &DeviceInfo, ty: GgmlType, cols: usize, nt: usize) -> bool {
    nt <= MAXT && matvec_shared(info, ty, cols, nt) <= info.max_shared
}

/// Every decode-product kernel, each class (`input`) in order of preference.
pub static VARIANTS: &[Variant] = &[
    // ---- Raw: one token, x in f32, the kernel prepares it (norm fused) ----
    // long rows (>= 2048 values), 4 rows per block of 256 threads
    Variant { prefix: "mmvq_", tail: "_x", input: Input::Raw, rows_per_block: |_| 4, threads: X_THREADS, params: Params::RawPlain,
              fits: |p, _| p.raw() && !p.short() },
    // short rows, one row per warp; gated pairs of many rows two per warp
    Variant { prefix: "mmvq_", tail: "_glu_wx2", input: Input::Raw, rows_per_block: |i| 2 * warps(i), threads: MMVQ_THREADS, params: Params::RawNorm,
              fits: |p, i| p.raw() && p.short() && two_rows_per_warp(p, i) },
    Variant { prefix: "mmvq_", tail: "_glu_wx", input: Input::Raw, rows_per_block: warps, threads: MMVQ_THREADS, params: Params::RawNorm,
              fits: |p, _| p.raw() && p.short() && p.gated },
    Variant { prefix: "mmvq_", tail: "_wx", input: Input::Raw, rows_per_block: warps, threads: MMVQ_THREADS, params: Params::RawNorm,
              fits: |p, _| p.raw() && p.short() && !p.gated },
    // ---- Prepared: x from quantize_act, up to MAXT tokens ----
    // one token, integer: one row per warp for short rows, else 4 rows (2 gated) per block
    Variant { prefix: "mmvq_", tail: "_glu_w", input: Input::Prepared, rows_per_block: warps, threads: MMVQ_THREADS, params: Params::Planes,
              fits: |p, _| p.one() && p.int() && p.gated && p.short() },
    Variant { prefix: "mmvq_", tail: "_glu", input: Input::Prepared, rows_per_block: |_| kernel_define("MMVQ_GLU_ROWS", k::MMVQ_GLU_ROWS), threads: MMVQ_THREADS, params: Params::Planes,
              fits: |p, _| p.one() && p.int() && p.gated },
    Variant { prefix: "mmvq_", tail: "_w", input: Input::Prepared, rows_per_block: warps, threads: MMVQ_THREADS, params: Params::Planes,
              fits: |p, _| p.one() && p.int() && p.short() },
    Variant { prefix: "mmvq_", tail: "", input: Input::Prepared, rows_per_block: |_| kernel_define("MMVQ_ROWS", k::MMVQ_ROWS), threads: MMVQ_THREADS, params: Params::Planes,
              fits: |p, _| p.one() && p.int() },
    // one token, float weights on the f32 copy: 2 rows per block
    Variant { prefix: "mmvf_", tail: "", input: Input::Prepared, rows_per_block: |_| 2, threads: MMVQ_THREADS, params: Params::F32Copy,
              fits: |p, _| p.one() && p.float() },
    // 2..=MAXT tokens: one row per block
    Variant { prefix: "mmvq_", tail: "_n", input: Input::Prepared, rows_per_block: |_| 1, threads: MMVQ_THREADS, params: Params::Planes,
              fits: |p, _| p.nt <= MAXT && p.int() },
    Variant { prefix: "mmvf_", tail: "_n", input: Input::Prepared, rows_per_block: |_| 1, threads: MMVQ_THREADS, params: Params::F32Copy,
              fits: |p, _| p.nt <= MAXT && p.float() },
    // ---- Staged: the older matvec kernel, any type, x in shared memory ----
    Variant { prefix: "matvec_", tail: "", input: Input::Staged, rows_per_block: |_| MMV_ROWS, threads: MMV_THREADS as u32, params: Params::Staged,
              fits: |p, i| (!p.norm || p.one()) && staged_fits(i, p.ty, p.cols, p.nt) },
];

/// The first variant of class `input` that takes `p`.
pub fn choose(info: &DeviceInfo, input: Input, p: &Product) -> Option<&'static Variant> {
    if p.nt == 0 || !whole_groups(p.ty, p.cols) {
        return None;
    }
    VARIANTS.iter().find(|v| v.input == input && (v.fits)(p, info))
}

/// The type pairs with a `mmvq_pair_<a>_<b>` kernel (kernels/mmvq.cu), as
/// device suffixes: Q|K and V of the common k-quant mixes.
const PAIRS: [(&str, &str); 5] = [("q5_0x4", "q8_0x4"), ("q5_0", "q8_0"), ("q4_k", "q6_k"), ("q5_k", "q6_k"), ("q4_k", "q5_k")];

/// Whether one `mmvq_pair` launch takes two plain short-row `Raw` products
/// of the same x.
pub fn pair_fits(info: &DeviceInfo, a: &Product, b: &Product) -> bool {
    let short_wx = |p: &Product| choose(info, Input::Raw, p).is_some_and(|v| v.tail == "_wx");
    !a.gated && !b.gated && a.cols == b.cols && short_wx(a) && short_wx(b) && PAIRS.contains(&(a.suffix, b.suffix))
}

/// How the products that read one x run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Two products in one `mmvq_pair` launch.
    Pair,
    /// Each product prepares x itself (one token).
    Raw,
    /// x prepared once by `quantize_act` (norm fused), or already prepared.
    Prepared,
    /// The older matvec kernel per product (norm fused, one token).
    Staged,
    /// 2 ..= [`MMQ_MAX`] tokens on tensor cores ([`mmq_rows`]): x prepared once by
    /// `quantize_act` (norm fused), each product by `mmq_*` (gated pairs
    /// as two products and the glu kernel).
    Mmq,
    /// Prefill: a separate norm, then BLAS or the tiled kernel.
    Gemm,
}

/// Most tokens the `mmq_*` kernels take in one product; more go through
/// [`Plan::Gemm`].
pub const MMQ_MAX: usize = 256;

/// Weight layouts (kernel-name suffixes) with `mmq_*` kernels (kernels/mmq.cu).
pub const MMQ_SUFFIXES: [&str; 11] = ["q4_0", "q4_0x8", "q4_1", "q5_0", "q5_0x4", "q5_1", "q8_0", "q8_0x4", "q4_k", "q5_k", "q6_k"];

/// Whether the device has the `mmq_*` kernels: NVIDIA sm_80 and later,
/// where kernels/vendor.h defines HAS_MMA_F16.
pub fn has_mmq(info: &DeviceInfo) -> bool {
    let sm = info.arch.strip_prefix("sm_").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    info.backend == "cuda" && sm >= 80
}

/// The token counts for which [`plan`] takes the `mmq_*` products: by
/// default 2 ..= 16, where the staged kernels beat the decode kernels'
/// several-token forms and the f16 BLAS on both twins (17 and more rows go
/// to BLAS; docs/PERFORMANCE.md). `FORGE_MMQ=1`:
/// 2 ..= [`MMQ_MAX`]; `FORGE_MMQ=0`: never.
pub fn mmq_rows() -> std::ops::RangeInclusive<usize> {
    static R: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let &(a, b) = R.get_or_init(|| match std::env::var("FORGE_MMQ").ok().as_deref() {
        Some("1") | Some("on") | Some("true") => (2, MMQ_MAX),
        Some("0") | Some("off") | Some("false") => (1, 0),
        _ => (2, 16),
    });
    a..=b
}

/// Whether [`plan`] takes the `mmq_*` products for `nt` tokens on this
/// device (see [`mmq_rows`]).
pub fn mmq_wanted(info: &DeviceInfo, nt: usize) -> bool {
    has_mmq(info) && mmq_rows().contains(&nt)
}

/// Whether `mmq_*` takes product `p` (its W and, when gated, its partner
/// of the same layout).
pub fn mmq_fits(info: &DeviceInfo, p: &Product) -> bool {
    has_mmq(info) && (2..=MMQ_MAX).contains(&p.nt) && p.cols % 32 == 0 && MMQ_SUFFIXES.contains(&p.suffix)
}

/// The `mmq_*` kernel for `nt` tokens: its name and tokens per block.
pub fn mmq_kernel(suffix: &str, nt: usize) -> (String, usize) {
    let per_block = match nt {
        0..=8 => 8,
        9..=16 => 16,
        17..=32 => 32,
        _ => 64,
    };
    (format!("mmq_{suffix}_{per_block}"), per_block)
}

/// The ladder `GpuSession::project` follows for products of one x of `n`
/// tokens; `prepared`: x comes already prepared (no norm then); `stores`:
/// whether every product stores (a pair cannot add). Every product's gated
/// partner has its type (else no fused form takes it).
pub fn plan(info: &DeviceInfo, prods: &[Product], prepared: bool, stores: bool, same_types: bool) -> Plan {
    plan_with(info, prods, prepared, stores, same_types, mmq_wanted(info, prods.first().map_or(0, |p| p.nt)))
}

/// [`plan`], with the `mmq_*` products on or off.
pub fn plan_with(info: &DeviceInfo, prods: &[Product], prepared: bool, stores: bool, same_types: bool, mmq: bool) -> Plan {
    let n = prods.first().map_or(0, |p| p.nt);
    let every = |input| same_types && prods.iter().all(|p| choose(info, input, p).is_some());
    if n == 1 && !prepared && every(Input::Raw) {
        if let [a, b] = prods {
            if stores && pair_fits(info, a, b) {
                return Plan::Pair;
            }
        }
        return Plan::Raw;
    }
    if mmq && n >= 2 && same_types && prods.iter().all(|p| mmq_fits(info, p)) {
        return Plan::Mmq;
    }
    let unnormed: Vec<Product> = prods.iter().map(|p| Product { norm: false, ..*p }).collect();
    if n <= MAXT && same_types && unnormed.iter().all(|p| choose(info, Input::Prepared, p).is_some()) {
        return Plan::Prepared;
    }
    if n == 1 && every(Input::Staged) {
        return Plan::Staged;
    }
    Plan::Gemm
}

/// The output of a product: where y goes, how (store or add), and the
/// gated partner with its activation.
pub struct Target<'a> {
    pub y: DevPtr,
    pub out: Out,
    pub glu: Option<(&'a DevMatrix, FfnAct)>,
}

/// x as the chosen variant's class takes it.
pub enum X<'a> {
    /// f32 x of `nt` tokens, RMS-normalized in the kernel with `norm`
    /// (Raw: one token; Staged: a norm with one token only).
    F32 { x: DevPtr, norm: Option<(DevPtr, f32)>, nt: usize },
    Prepared(&'a ActQ),
}

/// Launch variant `v` for W. The kernel's name, grid and arguments are
/// built here and nowhere else.
pub fn launch(dev: &Device, s: Stream, v: &Variant, w: &DevMatrix, x: X, t: Target) -> Result<()> {
    let nt = match &x {
        X::Prepared(a) => a.nt(),
        X::F32 { nt, .. } => *nt,
    };
    let (w2, mode) = match t.glu {
        Some((w2, act)) => {
            if w2.ty != w.ty || w2.rows != w.rows || w2.cols != w.cols || w2.packed != w.packed {
                return Err(Error::InvalidArgument("a gated pair must share type, shape and layout".into()));
            }
            (w2.ptr, act_code(act))
        }
        None => (0, if t.out == Out::Add { 1 } else { 0 }),
    };
    let info = dev.rt.info();
    let shared = if v.params == Params::Staged { matvec_shared(info, w.ty, w.cols, nt) as u32 } else { 0 };
    let dims = LaunchDims { grid: (w.rows.div_ceil((v.rows_per_block)(info)) as u32, 1, 1), block: v.threads, shared };
    let (rows, cols, nt_a, mode) = (Arg::I32(w.rows as i32), Arg::I32(w.cols as i32), Arg::I32(nt as i32), Arg::I32(mode));
    let (p, w2p, y) = (Arg::Ptr(w.ptr), Arg::Ptr(w2), Arg::Ptr(t.y));
    let mismatch = || Error::InvalidArgument(format!("{}: x given in the wrong form", v.name(w.suffix().unwrap_or("?"))));
    let args: Vec<Arg> = match (v.params, &x) {
        (Params::Planes, X::Prepared(a)) => {
            let [q, d, sc, _] = a.ptrs();
            vec![p, w2p, Arg::Ptr(q), Arg::Ptr(d), Arg::Ptr(sc), y, rows, cols, nt_a, mode]
        }
        (Params::F32Copy, X::Prepared(a)) => vec![p, w2p, Arg::Ptr(a.ptrs()[3]), y, rows, cols, nt_a, mode],
        (Params::RawNorm, &X::F32 { x, norm, .. }) => {
            let (nw, eps) = norm.unwrap_or((0, 0.0));
            vec![p, w2p, Arg::Ptr(x), Arg::Ptr(nw), Arg::F32(eps), y, rows, cols, mode]
        }
        (Params::RawPlain, &X::F32 { x, norm: None, .. }) if t.glu.is_none() => vec![p, Arg::Ptr(x), y, rows, cols, mode],
        (Params::Staged, &X::F32 { x, norm, .. }) => {
            let (nw, eps) = norm.unwrap_or((0, 0.0));
            vec![p, w2p, Arg::Ptr(x), y, rows, cols, nt_a, mode, Arg::Ptr(nw), Arg::F32(eps)]
        }
        _ => return Err(mismatch()),
    };
    dev.launch(s, &v.name(w.suffix()?), dims, &args)
}

/// One token, two plain products of one x in one launch: ya = A x, yb = B
/// x (x RMS-normalized first with `norm`), as two `_wx` launches would
/// give them, bit for bit. Needs [`pair_fits`].
#[allow(clippy::too_many_arguments)]
pub fn launch_pair(dev: &Device, s: Stream, a: &DevMatrix, b: &DevMatrix, x: DevPtr, norm: Option<(DevPtr, f32)>, ya: DevPtr, yb: DevPtr) -> Result<()> {
    let (pa, pb) = (Product::of(a, 1, false, norm.is_some())?, Product::of(b, 1, false, norm.is_some())?);
    if !pair_fits(dev.rt.info(), &pa, &pb) {
        return Err(Error::InvalidArgument(format!("no pair kernel for {} {}x{} and {} {}x{}", a.ty, a.rows, a.cols, b.ty, b.rows, b.cols)));
    }
    let (nw, eps) = norm.unwrap_or((0, 0.0));
    let w = warps(dev.rt.info());
    let dims = LaunchDims { grid: (a.rows.div_ceil(w) as u32 + b.rows.div_ceil(w) as u32, 1, 1), block: MMVQ_THREADS, shared: 0 };
    let args = [
        Arg::Ptr(a.ptr), Arg::Ptr(b.ptr), Arg::Ptr(x), Arg::Ptr(nw), Arg::F32(eps), Arg::Ptr(ya), Arg::Ptr(yb),
        Arg::I32(a.rows as i32), Arg::I32(b.rows as i32), Arg::I32(a.cols as i32),
    ];
    dev.launch(s, &format!("mmvq_pair_{}_{}", pa.suffix, pb.suffix), dims, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> DeviceInfo {
        DeviceInfo {
            backend: "cuda", index: 0, name: "test".into(), arch: "sm_90".into(), driver_version: 0,
            multiprocessors: 132, warp_size: 32, max_shared: 227 * 1024,
        }
    }

    fn prod(ty: GgmlType, suffix: &'static str, rows: usize, cols: usize, nt: usize, gated: bool, norm: bool) -> Product {
        Product { ty, suffix, rows, cols, nt, gated, norm }
    }

    fn kernel(info: &DeviceInfo, input: Input, p: &Product) -> Option<String> {
        choose(info, input, p).map(|v| v.name(p.suffix))
    }

    /// What runs for Qwen2.5-0.5B Q4_K_M's matrices on an H100 at one token
    /// and at four: the choices the ladder of ops.rs made before the table.
    /// Its 896-wide rows are not whole 256-value super-blocks, so those
    /// matrices are q5_0 (Q|K, gate, up) and q8_0 (V, output) in the
    /// regrouped device layouts; down (4864 wide) is q6_k.
    /// Every layout `mmq_fits` names has its four kernels in the table.
    #[test]
    fn mmq_kernels_exist() {
        for s in MMQ_SUFFIXES {
            for nt in [2, 16, 32, 256] {
                let (name, _) = mmq_kernel(s, nt);
                assert!(super::super::kernel_table::KERNELS.iter().any(|k| k.0 == name), "{name} not in kernels/");
            }
        }
    }

    #[test]
    fn qwen_decode_kernels() {
        use GgmlType::*;
        let i = h100();
        let q = prod(Q5_0, "q5_0x4", 896 + 128, 896, 1, false, true);
        let v = prod(Q8_0, "q8_0x4", 128, 896, 1, false, true);
        let gate = prod(Q5_0, "q5_0x4", 4864, 896, 1, true, true);
        let down = prod(Q6K, "q6_k", 896, 4864, 1, false, false);
        let head = prod(Q8_0, "q8_0x4", 151936, 896, 1, false, true);
        assert_eq!(kernel(&i, Input::Raw, &q).as_deref(), Some("mmvq_q5_0x4_wx"));
        // 4864 rows / 8 per block = 608 blocks >= 4 * 132
        assert_eq!(kernel(&i, Input::Raw, &gate).as_deref(), Some("mmvq_q5_0x4_glu_wx2"));
        assert_eq!(kernel(&i, Input::Raw, &down).as_deref(), Some("mmvq_q6_k_x"));
        assert_eq!(kernel(&i, Input::Raw, &head), None, "the output matrix takes quantize_act once");
        assert_eq!(kernel(&i, Input::Prepared, &Product { norm: false, ..head }).as_deref(), Some("mmvq_q8_0x4_w"));
        assert!(pair_fits(&i, &q, &v));
        assert_eq!(plan(&i, &[q, v], false, true, true), Plan::Pair);
        assert_eq!(plan(&i, &[q, v], false, false, true), Plan::Raw, "a pair cannot add");
        assert_eq!(plan(&i, &[gate], false, true, true), Plan::Raw);
        assert_eq!(plan(&i, &[head], false, true, true), Plan::Prepared);
        // four tokens: the tensor-core products, or where there are none
        // (before sm_80, AMD) the _n forms
        let g4 = Product { nt: 4, norm: false, ..gate };
        assert_eq!(kernel(&i, Input::Prepared, &g4).as_deref(), Some("mmvq_q5_0x4_n"));
        assert_eq!(plan_with(&i, &[Product { nt: 4, ..gate }], false, true, true, true), Plan::Mmq);
        assert_eq!(plan_with(&i, &[Product { nt: 4, ..gate }], false, true, true, false), Plan::Prepared);
        let sm75 = DeviceInfo { arch: "sm_75".into(), ..h100() };
        assert_eq!(plan_with(&sm75, &[Product { nt: 4, ..gate }], false, true, true, true), Plan::Prepared);
        assert_eq!(plan_with(&sm75, &[Product { nt: 9, ..gate }], false, true, true, true), Plan::Gemm);
        // up to MMQ_MAX tokens on tensor cores, more: prefill
        assert_eq!(plan_with(&i, &[Product { nt: MMQ_MAX, ..down }], false, true, true, true), Plan::Mmq);
        assert_eq!(plan_with(&i, &[Product { nt: MMQ_MAX + 1, ..gate }], false, true, true, true), Plan::Gemm);
        assert_eq!(plan_with(&i, &[Product { nt: 9, ..gate }], false, true, true, false), Plan::Gemm);
        assert_eq!(mmq_kernel("q6_k", 7), ("mmq_q6_k_8".to_string(), 8));
        assert_eq!(mmq_kernel("q6_k", 33), ("mmq_q6_k_64".to_string(), 64));
        // fewer multiprocessors: 608 blocks is enough for 1 row per warp only
        let big = DeviceInfo { multiprocessors: 200, ..h100() };
        assert_eq!(kernel(&big, Input::Raw, &gate).as_deref(), Some("mmvq_q5_0x4_glu_wx"));
        // a k-quant model with 256-multiple rows: Q|K and V of a Q4_K_M mix
        let (qk, v6) = (prod(Q4K, "q4_k", 2560, 2048, 1, false, true), prod(Q6K, "q6_k", 512, 1024, 1, false, true));
        assert_eq!(kernel(&i, Input::Raw, &qk), None, "2048-wide rows with a norm: no Raw form");
        let (qk, v6) = (Product { cols: 1024, ..qk }, Product { cols: 1024, ..v6 });
        assert_eq!(plan(&i, &[qk, v6], false, true, true), Plan::Pair);
        assert_eq!(plan(&i, &[v6, qk], false, true, true), Plan::Raw, "no q6_k + q4_k pair kernel");
    }

    /// The long-row rule: 4096 × 11008 (the 7B's down) reads x 88 MB over
    /// its blocks and takes quantize_act instead; rows of 8192+ never.
    #[test]
    fn long_rows() {
        use GgmlType::*;
        let i = h100();
        let down7b = prod(Q4_0, "q4_0x8", 4096, 11008, 1, false, false);
        assert_eq!(kernel(&i, Input::Raw, &down7b), None);
        assert_eq!(kernel(&i, Input::Prepared, &down7b).as_deref(), Some("mmvq_q4_0x8"));
        let gated_long = prod(Q4K, "q4_k", 1024, 4096, 1, true, false);
        assert_eq!(kernel(&i, Input::Raw, &gated_long), None, "no long-row pair form");
        assert_eq!(kernel(&i, Input::Prepared, &gated_long).as_deref(), Some("mmvq_q4_k_glu"));
        // short rows, too many for _wx, small enough for the long rule
        let tall = prod(Q4K, "q4_k", 20000, 256, 1, false, false);
        assert_eq!(kernel(&i, Input::Raw, &tall).as_deref(), Some("mmvq_q4_k_wx"));
        assert_eq!(kernel(&i, Input::Raw, &Product { norm: true, ..tall }), None);
    }

    /// Types without integer kernels: floats on the f32 copy, the rest on
    /// the older matvec kernel (one token, norm fused), else prefill.
    #[test]
    fn other_types() {
        use GgmlType::*;
        let i = h100();
        let f16 = prod(F16, "f16", 1024, 1024, 1, false, true);
        assert_eq!(kernel(&i, Input::Raw, &f16), None);
        assert_eq!(kernel(&i, Input::Prepared, &f16).as_deref(), Some("mmvf_f16"));
        assert_eq!(kernel(&i, Input::Prepared, &Product { nt: 3, ..f16 }).as_deref(), Some("mmvf_f16_n"));
        assert_eq!(plan(&i, &[f16], false, true, true), Plan::Prepared);
        let q3 = prod(Q3K, "q3_k", 1024, 1024, 1, false, true);
        assert_eq!(kernel(&i, Input::Prepared, &q3), None);
        assert_eq!(kernel(&i, Input::Staged, &q3).as_deref(), Some("matvec_q3_k"));
        assert_eq!(plan(&i, &[q3], false, true, true), Plan::Staged);
        assert_eq!(plan(&i, &[Product { nt: 2, ..q3 }], false, true, true), Plan::Gemm, "the staged norm takes one token");
        assert_eq!(plan(&i, &[q3, f16], false, true, false), Plan::Gemm, "a gated partner of another type");
        // the staged kernel needs its x in shared memory
        let wide = prod(Q3K, "q3_k", 64, 65536, 8, false, false);
        assert_eq!(kernel(&i, Input::Staged, &wide), None);
        // half a 32-value group: nothing
        assert_eq!(kernel(&i, Input::Prepared, &prod(Q4_0, "q4_0", 8, 48, 1, false, false)), None);
    }

    /// Every row's name exists for every type it could be chosen for, and
    /// the arguments `launch` builds for it are the kernel's parameters in
    /// number and kind (the generated table of kernels/mmvq.cu, matvec.cu).
    #[test]
    fn variant_names_are_kernels() {
        use GgmlType::*;
        let i = h100();
        let types = [(F32, "f32"), (F16, "f16"), (Q4_0, "q4_0"), (Q4_0, "q4_0x8"), (Q5_0, "q5_0x4"), (Q8_0, "q8_0x4"), (Q4K, "q4_k"), (Q6K, "q6_k"), (Q3K, "q3_k"), (Iq4Xs, "iq4_xs")];
        let mut seen = 0;
        for (ty, sfx) in types {
            for (rows, cols) in [(64, 256), (4864, 896), (896, 4864), (5000, 256)] {
                for nt in [1, 4] {
                    for gated in [false, true] {
                        for norm in [false, true] {
                            for input in [Input::Raw, Input::Prepared, Input::Staged] {
                                let p = prod(ty, sfx, rows, cols, nt, gated, norm);
                                if let Some(v) = choose(&i, input, &p) {
                                    // the kernel exists, and launch's argument layout is its parameter list
                                    let name = v.name(sfx);
                                    let sig = super::super::signature(&name).unwrap_or_else(|e| panic!("{e}"));
                                    assert_eq!(v.params.kinds(), sig, "{name}: launch builds {:?}", v.params);
                                    seen += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(seen > 100);
        use super::super::kernel_table::Param as P;
        for (a, b) in PAIRS {
            let sig = super::super::signature(&format!("mmvq_pair_{a}_{b}")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(sig, [P::Ptr, P::Ptr, P::Ptr, P::Ptr, P::F32, P::Ptr, P::Ptr, P::I32, P::I32, P::I32], "launch_pair's arguments");
        }
    }
}
