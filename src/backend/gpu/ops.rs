//! Op launchers: each checks its shape preconditions, picks the kernel
//! variant and launches it on the caller's stream (the middle and outer
//! layers of ggml's kernel/launcher/entry split; the kernels are in
//! `kernels/`). Nothing here synchronizes.

use super::memory::Buffer;
use super::runtime::{Arg, DevPtr, GemmF16, GpuRuntime, LaunchDims, Stream};
use super::decode::{self, Input, Product, Target};
use super::Device;
use crate::error::{Error, Result};
use crate::model::arch::{FfnAct, RopeStyle};
use crate::quant::GgmlType;

/// Kernel-name suffix for a weight type the GPU kernels compute with.
pub fn type_suffix(ty: GgmlType) -> Option<&'static str> {
    use GgmlType::*;
    Some(match ty {
        F32 => "f32",
        F16 => "f16",
        BF16 => "bf16",
        Q4_0 => "q4_0",
        Q4_1 => "q4_1",
        Q5_0 => "q5_0",
        Q5_1 => "q5_1",
        Q8_0 => "q8_0",
        Q2K => "q2_k",
        Q3K => "q3_k",
        Q4K => "q4_k",
        Q5K => "q5_k",
        Q6K => "q6_k",
        Iq4Nl => "iq4_nl",
        Iq4Xs => "iq4_xs",
        Mxfp4 => "mxfp4",
        _ => return None,
    })
}

/// A weight matrix on the device, still in its GGUF type: `rows` rows of
/// `cols` values, `row_bytes` apart; `packed`: its blocks regrouped as
/// [`pack_rows`] does (same size; q4_0, q5_0, q8_0).
#[derive(Debug, Clone, Copy)]
pub struct DevMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub ptr: DevPtr,
    pub packed: bool,
    /// A resident f16 copy of the matrix (rows × cols, row-major), or 0:
    /// the vendor-BLAS path multiplies it with no dequantization per step
    /// (see [`f16_min_rows`]).
    pub f16: DevPtr,
}

impl DevMatrix {
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols as u64).unwrap_or(0) as usize
    }
    pub(super) fn suffix(&self) -> Result<&'static str> {
        if self.packed {
            return packed_suffix(self.ty).ok_or_else(|| Error::Unsupported(format!("{} has no regrouped device layout", self.ty)));
        }
        type_suffix(self.ty).ok_or_else(|| Error::UnsupportedType { what: format!("{} on the GPU backends", self.ty) })
    }
}

/// The device layouts of [`pack_rows`]: per type, the kernel-name suffix,
/// the blocks of one regrouped span, and the sizes of a block's fields in
/// order (d, then qh for q5_0, then the quant bytes), each of which becomes
/// one run of the span.
struct PackLayout {
    suffix: &'static str,
    blocks: usize,
    fields: &'static [usize],
}

fn pack_layout(ty: GgmlType) -> Option<PackLayout> {
    match ty {
        GgmlType::Q4_0 => Some(PackLayout { suffix: "q4_0x8", blocks: 8, fields: &[2, 16] }),
        GgmlType::Q5_0 => Some(PackLayout { suffix: "q5_0x4", blocks: 4, fields: &[2, 4, 16] }),
        GgmlType::Q8_0 => Some(PackLayout { suffix: "q8_0x4", blocks: 4, fields: &[2, 32] }),
        _ => None,
    }
}

impl PackLayout {
    fn span_bytes(&self) -> usize {
        self.blocks * self.fields.iter().sum::<usize>()
    }
}

/// Kernel-name suffix of a type in the device layout of [`pack_rows`].
fn packed_suffix(ty: GgmlType) -> Option<&'static str> {
    pack_layout(ty).map(|l| l.suffix)
}

/// Whether matrices of this type and width get the device layout of
/// [`pack_rows`]: rows of whole spans (q4_0: 256-value multiples; q5_0 and
/// q8_0: 128-value multiples).
pub fn packs(ty: GgmlType, cols: usize) -> bool {
    pack_layout(ty).is_some_and(|l| cols % (32 * l.blocks) == 0)
}

/// Blocks regrouped for the device so the decode kernels' loads are aligned
/// words and contiguous across a warp (GGUF's 18-, 22- and 34-byte blocks
/// only allow 2-byte loads); same size. `src` holds whole rows that
/// [`packs`] takes; `dst` is as long. Each span of blocks becomes one run
/// per block field: their d (f16), for q5_0 their qh words, then their
/// quant bytes:
/// - q4_0 (`TQ4_0X8` in kernels/quant.h): spans of 8 blocks (144 bytes);
/// - q5_0 (`TQ5_0X4`): spans of 4 (88 bytes), the qh bits regrouped (bit
///   8j + k of the new word = bit 4k + j of the GGUF one: the high bits of 4
///   consecutive values then sit one per byte);
/// - q8_0 (`TQ8_0X4`): spans of 4 (136 bytes).
pub fn pack_rows(ty: GgmlType, src: &[u8], dst: &mut [u8]) {
    let l = pack_layout(ty).expect("pack_rows: a type packs() takes");
    let (span, bb) = (l.span_bytes(), l.span_bytes() / l.blocks);
    debug_assert!(src.len() % span == 0 && dst.len() == src.len());
    for (s, d) in src.chunks_exact(span).zip(dst.chunks_exact_mut(span)) {
        for j in 0..l.blocks {
            let (mut run, mut off) = (0, 0);
            for &f in l.fields {
                let (from, to) = (&s[bb * j + off..bb * j + off + f], &mut d[run + f * j..run + f * (j + 1)]);
                if ty == GgmlType::Q5_0 && f == 4 {
                    let qh = u32::from_le_bytes([from[0], from[1], from[2], from[3]]);
                    let h = (0..32).fold(0u32, |h, v| h | ((qh >> v) & 1) << (8 * (v % 4) + v / 4));
                    to.copy_from_slice(&h.to_le_bytes());
                } else {
                    to.copy_from_slice(from);
                }
                run += l.blocks * f;
                off += f;
            }
        }
    }
}

/// Copy a matrix's GGUF bytes (whole rows of `cols` values of `ty`) to the
/// device at `dst`: regrouped by [`pack_rows`] when `pack` and [`packs`]
/// allow (on the host, in parallel, synchronizing `s` before the copy is
/// freed), else as they are. Returns whether it packed.
pub fn put_matrix(rt: &dyn GpuRuntime, s: Stream, dst: DevPtr, ty: GgmlType, cols: usize, bytes: &[u8], pack: bool) -> Result<bool> {
    let span = match pack_layout(ty) {
        Some(l) if pack && packs(ty, cols) => l.span_bytes(),
        _ => {
            rt.htod(s, dst, bytes)?;
            return Ok(false);
        }
    };
    let mut out = vec![0u8; bytes.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
    let chunk = bytes.len().div_ceil(threads * span).max(1) * span;
    std::thread::scope(|sc| {
        for (a, b) in bytes.chunks(chunk).zip(out.chunks_mut(chunk)) {
            sc.spawn(move || pack_rows(ty, a, b));
        }
    });
    rt.htod(s, dst, &out)?;
    rt.stream_sync(s)?;
    Ok(true)
}

/// Where a matrix product's result goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Store,
    /// y += W x (residual add fused into the product).
    Add,
}

pub(super) fn act_code(act: FfnAct) -> i32 {
    match act {
        FfnAct::Silu => 2,
        FfnAct::GeluTanh => 3,
    }
}

/// Most tokens the decode kernels (matvec, mmvq) take at once.
pub const MMV_MAXT: usize = decode::MAXT;

/// Shared memory every device gives a block without asking.
const SHARED_LIMIT: usize = 48 * 1024;

fn ceil(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}

fn check(w: &DevMatrix) -> Result<()> {
    if !decode::whole_groups(w.ty, w.cols) {
        return Err(Error::Unsupported(format!("GPU matrix products need rows of whole 32-value groups; got {} columns of {}", w.cols, w.ty)));
    }
    Ok(())
}

/// Whether the older matvec kernel takes this product (few tokens, x fits
/// shared memory).
pub fn matvec_fits(dev: &Device, ty: GgmlType, cols: usize, nt: usize) -> bool {
    decode::staged_fits(dev.rt.info(), ty, cols, nt)
}

/// Launch the variant of class `input` that [`decode::choose`] gives W.
fn decode_product(dev: &Device, s: Stream, input: Input, w: &DevMatrix, nt: usize, x: decode::X, t: Target) -> Result<()> {
    let norm = matches!(x, decode::X::F32 { norm: Some(_), .. });
    let p = Product::of(w, nt, t.glu.is_some(), norm)?;
    let Some(v) = decode::choose(dev.rt.info(), input, &p) else {
        return Err(Error::InvalidArgument(format!("no {input:?} decode kernel takes {} {}x{} for {nt} tokens{}", w.ty, w.rows, w.cols, if norm { " with a norm" } else { "" })));
    };
    decode::launch(dev, s, v, w, x, t)
}

/// y (nt, rows) = / += W x, x (nt, cols); or, with `glu = Some((w2, act))`,
/// y = act(W x) * (W2 x). With `norm = Some((weight, eps))` (one token
/// only) x is RMS-normalized first, inside the kernel. Needs [`matvec_fits`].
#[allow(clippy::too_many_arguments)]
pub fn matvec(dev: &Device, s: Stream, w: &DevMatrix, glu: Option<(&DevMatrix, FfnAct)>, x: DevPtr, y: DevPtr, nt: usize, out: Out, norm: Option<(DevPtr, f32)>) -> Result<()> {
    decode_product(dev, s, Input::Staged, w, nt, decode::X::F32 { x, norm, nt }, Target { y, out, glu })
}

/// Whether [`matvec_q`] takes this type (integer `mmvq_*` kernels, or f32
/// products on the f32 copy for float types).
pub fn decode_kernel(ty: GgmlType) -> Option<&'static str> {
    decode::family(ty)
}

/// Device scratch for activations prepared by [`quantize_act`]: up to
/// [`MMV_MAXT`] tokens of up to `max_cols` values.
pub struct ActBuf {
    buf: Buffer,
    max_cols: usize,
    max_nt: usize,
}

impl ActBuf {
    /// Room for the decode products' [`MMV_MAXT`] tokens.
    pub fn new(pool: &std::sync::Arc<super::memory::MemPool>, max_cols: usize) -> Result<ActBuf> {
        Self::with_tokens(pool, max_cols, MMV_MAXT)
    }

    /// Room for `max_nt` tokens of up to `max_cols` values.
    pub fn with_tokens(pool: &std::sync::Arc<super::memory::MemPool>, max_cols: usize, max_nt: usize) -> Result<ActBuf> {
        let max_cols = max_cols.div_ceil(32) * 32;
        Ok(ActBuf { buf: pool.alloc(Self::bytes(max_cols, max_nt), "quantized activations")?, max_cols, max_nt })
    }

    fn bytes(max_cols: usize, max_nt: usize) -> usize {
        // per token and value: 2 bytes of planes + 4 of f32; per group: d and d * sum
        max_nt * max_cols * (2 + 4) + 2 * max_nt * (max_cols / 32) * 4 + Self::overread(max_cols, max_nt)
    }

    /// Bytes past the regions so that the `mmq_*` kernels' x prefetch may
    /// read a stage's groups past a row's last (kernels/mmq.cu, `PX`: up to
    /// a stage less one, 64 bytes of planes a token each, never used)
    /// inside the buffer: what the regions after the planes (per token and
    /// group 8 bytes of scales and 128 of f32 copy) do not already cover.
    fn overread(max_cols: usize, max_nt: usize) -> usize {
        use super::kernel_table::{MMQ_KC, MMQ_KC_SMALL};
        let stage = kernel_define("MMQ_KC_SMALL", MMQ_KC_SMALL).max(kernel_define("MMQ_KC", MMQ_KC));
        (stage * max_nt * 64).saturating_sub(max_nt * (max_cols / 32) * 136)
    }

    /// Where `nt` tokens of `cols` values go in this buffer, with their f32
    /// copy at `f` (0: this buffer's own).
    pub fn layout(&self, cols: usize, nt: usize, f: DevPtr) -> Result<ActQ> {
        if nt == 0 || nt > self.max_nt || cols % 32 != 0 || cols > self.max_cols {
            return Err(Error::InvalidArgument(format!("activations of {nt} tokens of {cols} values (at most {} of {}, whole groups of 32)", self.max_nt, self.max_cols)));
        }
        let q = self.buf.ptr;
        let d = q + (self.max_nt * self.max_cols * 2) as u64;
        let s = d + (self.max_nt * (self.max_cols / 32) * 4) as u64;
        let own = s + (self.max_nt * (self.max_cols / 32) * 4) as u64;
        Ok(ActQ { q, d, s, f: if f == 0 { own } else { f }, cols, nt, group_major: false })
    }
}

/// Activations of `nt` tokens of `cols` values as prepared by
/// [`quantize_act`] (layout in kernels/mmvq.cu), for [`matvec_q`].
#[derive(Debug, Clone, Copy)]
pub struct ActQ {
    q: DevPtr,
    d: DevPtr,
    s: DevPtr,
    f: DevPtr,
    cols: usize,
    nt: usize,
    /// The layout of the `mmq_*` products ([`quantize_act_mmq`]): each
    /// group's tokens side by side; else each token's groups.
    group_major: bool,
}

/// Prepare x (nt, cols) for the decode products: 15-bit integers per 32
/// values in two byte planes for the integer kernels, and a f32 copy for the
/// float ones. With `norm = Some((weight, eps))` x is RMS-normalized first.
/// One call serves every product that reads this x.
pub fn quantize_act(dev: &Device, s: Stream, buf: &ActBuf, x: DevPtr, cols: usize, nt: usize, norm: Option<(DevPtr, f32)>) -> Result<ActQ> {
    let a = buf.layout(cols, nt, 0)?;
    quant_act(dev, s, x, norm, &a)?;
    Ok(a)
}

/// [`quantize_act`] in the group-major layout the `mmq_*` products read
/// ([`matmul_q`]; kernels/mmq.cu).
pub fn quantize_act_mmq(dev: &Device, s: Stream, buf: &ActBuf, x: DevPtr, cols: usize, nt: usize, norm: Option<(DevPtr, f32)>) -> Result<ActQ> {
    let a = ActQ { group_major: true, ..buf.layout(cols, nt, 0)? };
    quant_act(dev, s, x, norm, &a)?;
    Ok(a)
}

fn quant_act(dev: &Device, s: Stream, x: DevPtr, norm: Option<(DevPtr, f32)>, a: &ActQ) -> Result<()> {
    let (nw, eps) = norm.unwrap_or((0, 0.0));
    let dims = LaunchDims { grid: (ceil(a.cols, 256), a.nt as u32, 1), block: 256, shared: 0 };
    let args = [Arg::Ptr(x), Arg::Ptr(nw), Arg::F32(eps), Arg::I32(a.cols as i32), Arg::Ptr(a.q), Arg::Ptr(a.d), Arg::Ptr(a.s), Arg::Ptr(a.f), Arg::I32(a.group_major as i32)];
    dev.launch(s, "quant_act", dims, &args)
}

impl ActQ {
    /// Device addresses of the planes, group scales d, d * sums, and f32 copy.
    pub fn ptrs(&self) -> [DevPtr; 4] {
        [self.q, self.d, self.s, self.f]
    }
    /// Tokens.
    pub fn nt(&self) -> usize {
        self.nt
    }
}

/// y (nt, rows) = / += W x for x prepared by [`quantize_act`]; or, with
/// `glu = Some((w2, act))`, y = act(W x) * (W2 x). Needs [`decode_kernel`].
pub fn matvec_q(dev: &Device, s: Stream, w: &DevMatrix, glu: Option<(&DevMatrix, FfnAct)>, a: &ActQ, y: DevPtr, out: Out) -> Result<()> {
    if w.cols != a.cols || a.group_major {
        return Err(Error::InvalidArgument(format!("matvec_q: {} with {} columns for activations of {} (token-major: quantize_act)", w.ty, w.cols, a.cols)));
    }
    decode_product(dev, s, Input::Prepared, w, a.nt, decode::X::Prepared(a), Target { y, out, glu })
}

/// y (nt, rows) = / += W x on tensor cores for x prepared by
/// [`quantize_act_mmq`] (2 ..= [`decode::MMQ_MAX`] tokens; see
/// [`decode::mmq_fits`]).
pub fn matmul_q(dev: &Device, s: Stream, w: &DevMatrix, a: &ActQ, y: DevPtr, out: Out) -> Result<()> {
    let p = Product::of(w, a.nt, false, false)?;
    if w.cols != a.cols || !a.group_major || !decode::mmq_fits(dev.rt.info(), &p) {
        return Err(Error::InvalidArgument(format!("matmul_q: {} ({}) {}x{} for {} tokens of {} values", w.ty, p.suffix, w.rows, w.cols, a.nt, a.cols)));
    }
    let (name, per_block) = decode::mmq_kernel(p.suffix, a.nt);
    use super::kernel_table::{MMQ_ROWS, MMQ_RT_LARGE, MMQ_RT_SMALL, MMQ_WARPS};
    let rt = if per_block <= 16 { kernel_define("MMQ_RT_SMALL", MMQ_RT_SMALL) } else { kernel_define("MMQ_RT_LARGE", MMQ_RT_LARGE) };
    let warps = kernel_define("MMQ_WARPS", MMQ_WARPS);
    let dims = LaunchDims { grid: (ceil(w.rows, MMQ_ROWS * rt), ceil(a.nt, per_block), 1), block: (warps * 32) as u32, shared: 0 };
    dev.launch(
        s,
        &name,
        dims,
        &[
            Arg::Ptr(w.ptr), Arg::Ptr(a.q), Arg::Ptr(a.d), Arg::Ptr(a.s), Arg::Ptr(y), Arg::I32(w.rows as i32), Arg::I32(w.cols as i32),
            Arg::I32(a.nt as i32), Arg::I32((out == Out::Add) as i32),
        ],
    )
}

/// A kernel constant: `default` (kernel_table's), or the value a
/// `-DNAME=value` in `FORGE_NVRTC_OPTS` gives it (experiments; the
/// constant must be `#ifndef`-guarded in kernels/).
pub(crate) fn kernel_define(name: &str, default: usize) -> usize {
    static OPTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    define_in(OPTS.get_or_init(|| std::env::var("FORGE_NVRTC_OPTS").unwrap_or_default()), name, default)
}

/// [`kernel_define`] of compiler options `opts`: the last `-DNAME=v`,
/// `-D NAME=v` or `--define-macro=NAME=v`.
fn define_in(opts: &str, name: &str, default: usize) -> usize {
    let words: Vec<&str> = opts.split_whitespace().collect();
    let defs = words.iter().enumerate().filter_map(|(i, w)| match w.strip_prefix("-D") {
        Some("") => words.get(i + 1).copied(),
        Some(d) => Some(d),
        None => w.strip_prefix("--define-macro="),
    });
    defs.filter_map(|d| d.strip_prefix(name)?.strip_prefix('=')?.parse().ok()).last().unwrap_or(default)
}

/// The k largest of each of `rows` rows of x (rows, n) f32, largest first
/// (ties: the lower index), into ids (rows, k) i32 and vals (rows, k) f32,
/// and each row's log-sum-exp into lse (rows) f32 (kernels/sample.cu).
/// `scratch`: [`topk_scratch_bytes`]`(rows)` bytes of device memory, which
/// top-1 uses to spread each row over many blocks.
#[allow(clippy::too_many_arguments)]
pub fn topk(dev: &Device, s: Stream, x: DevPtr, rows: usize, n: usize, k: usize, ids: DevPtr, vals: DevPtr, lse: DevPtr, scratch: DevPtr) -> Result<()> {
    use super::kernel_table::{TOPK1_THREADS, TOPK_MAX, TOPK_THREADS};
    if k == 0 || k > TOPK_MAX || k > n || rows == 0 {
        return Err(Error::InvalidArgument(format!("topk: {k} of {n} values in {rows} rows (k at most {TOPK_MAX})")));
    }
    if k == 1 {
        let parts = topk1_parts(n);
        let dims = LaunchDims { grid: (rows as u32, parts as u32, 1), block: TOPK1_THREADS as u32, shared: 0 };
        dev.launch(s, "topk1_part", dims, &[Arg::Ptr(x), Arg::I32(n as i32), Arg::Ptr(scratch)])?;
        let dims = LaunchDims { grid: (ceil(rows, 64), 1, 1), block: 64, shared: 0 };
        return dev.launch(s, "topk1_merge", dims, &[Arg::Ptr(scratch), Arg::I32(rows as i32), Arg::I32(parts as i32), Arg::Ptr(ids), Arg::Ptr(vals), Arg::Ptr(lse)]);
    }
    let dims = LaunchDims { grid: (rows as u32, 1, 1), block: TOPK_THREADS as u32, shared: 0 };
    dev.launch(s, "topk_rows", dims, &[Arg::Ptr(x), Arg::I32(n as i32), Arg::I32(k as i32), Arg::Ptr(ids), Arg::Ptr(vals), Arg::Ptr(lse)])
}

/// Blocks per row of the two-pass top-1: one per TOPK_PART_MIN values, at
/// most TOPK_PARTS.
fn topk1_parts(n: usize) -> usize {
    use super::kernel_table::{TOPK_PARTS, TOPK_PART_MIN};
    n.div_ceil(TOPK_PART_MIN).clamp(1, TOPK_PARTS)
}

/// Device scratch [`topk`] needs for `rows` rows.
pub fn topk_scratch_bytes(rows: usize) -> usize {
    rows * super::kernel_table::TOPK_PARTS * 16
}

/// Whether [`matvec_x`] takes W (a gated pair when `gated`, after an RMS
/// norm when `norm`): a `Raw` row of [`decode::VARIANTS`].
pub fn matvec_x_fits(w: &DevMatrix, gated: bool, norm: bool, info: &super::runtime::DeviceInfo) -> bool {
    Product::of(w, 1, gated, norm).is_ok_and(|p| decode::choose(info, Input::Raw, &p).is_some())
}

/// One token: y = / += W x, or y = act(W x) * (W2 x) with `glu`, for x in
/// f32, RMS-normalized first with `norm = Some((weight, eps))`; the kernel
/// prepares x itself (no [`quantize_act`]). Needs [`matvec_x_fits`].
#[allow(clippy::too_many_arguments)]
pub fn matvec_x(dev: &Device, s: Stream, w: &DevMatrix, glu: Option<(&DevMatrix, FfnAct)>, x: DevPtr, norm: Option<(DevPtr, f32)>, y: DevPtr, out: Out) -> Result<()> {
    decode_product(dev, s, Input::Raw, w, 1, decode::X::F32 { x, norm, nt: 1 }, Target { y, out, glu })
}

/// Rows per warp of a short-row [`matvec_x`]: 2 where the table picks
/// `_glu_wx2`, else 1.
pub fn wx_rows_per_warp(dev: &Device, w: &DevMatrix, gated: bool) -> usize {
    let two = Product::of(w, 1, gated, false).ok().and_then(|p| decode::choose(dev.rt.info(), Input::Raw, &p)).is_some_and(|v| v.tail == "_glu_wx2");
    if two { 2 } else { 1 }
}

/// Whether [`matvec_x_pair`] takes a and b (no norm).
pub fn matvec_x_pair_fits(a: &DevMatrix, b: &DevMatrix, info: &super::runtime::DeviceInfo) -> bool {
    matches!((Product::of(a, 1, false, false), Product::of(b, 1, false, false)), (Ok(pa), Ok(pb)) if decode::pair_fits(info, &pa, &pb))
}

/// One token, two products of one x in one launch: see [`decode::launch_pair`].
#[allow(clippy::too_many_arguments)]
pub fn matvec_x_pair(dev: &Device, s: Stream, a: &DevMatrix, b: &DevMatrix, x: DevPtr, norm: Option<(DevPtr, f32)>, ya: DevPtr, yb: DevPtr) -> Result<()> {
    decode::launch_pair(dev, s, a, b, x, norm, ya, yb)
}

/// Device scratch for the vendor-BLAS path: a slab of W in f16 and X in f16
/// (`x16_elems` values), with room for X's low halves when the products
/// take activations in two halves (`x16lo`, as large as `x16`; see [`X16`]).
pub struct GemmScratch {
    pub w16: Buffer,
    pub w16_elems: usize,
    pub x16: Buffer,
    pub x16_elems: usize,
    pub x16lo: Option<Buffer>,
}

/// X prepared for the vendor BLAS by [`x_to_f16`]: its f16 values `hi`
/// and, where the scratch has room for them, its low halves `lo` (0 when
/// none): x ≈ hi + lo / 2048 to about 22 bits (`split_h` in
/// kernels/vendor.h). With `lo` every product is two GEMMs over the same
/// f16 weights (the second with alpha 1/2048): twice the work for
/// activations about as precise as f32's, so that a model with F16 weights
/// multiplies as the CPU does (FORGE_F16_SPLIT=1, [`f16_split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X16 {
    pub hi: DevPtr,
    pub lo: DevPtr,
}

/// `F16_SPLIT_SCALE` in kernels/vendor.h: the low halves' scale.
pub const F16_SPLIT_SCALE: f32 = 2048.0;

/// Whether the vendor-BLAS products take activations in two f16 halves
/// ([`X16`]): `FORGE_F16_SPLIT=1` (read once; off by default: the
/// products' input is then f16 alone, 11 bits, as llama.cpp's).
pub fn f16_split() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::env_flag("FORGE_F16_SPLIT"))
}

/// Which path a many-token product took (benchmarks report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulPath {
    Matvec,
    Blas,
    Tiled,
}

/// The fewest rows for which a matrix with a resident f16 copy is
/// multiplied by the vendor BLAS rather than the decode kernels
/// (`FORGE_F16_MIN_ROWS`, at least 2; default 9: up to 8 rows the decode
/// kernels' several-token forms read the quantized weights, above that
/// BLAS on the f16 copy wins by 2–4×; docs/PERFORMANCE.md).
pub fn f16_min_rows() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    env_rows(&N, "FORGE_F16_MIN_ROWS", 9)
}

/// A row threshold from the environment (read once; at least 2).
fn env_rows(cell: &'static std::sync::OnceLock<usize>, name: &str, default: usize) -> usize {
    *cell.get_or_init(|| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default).max(2))
}

/// [`f16_min_rows`] for wide matrices (at least [`F16_WIDE_COLS`] columns),
/// whose several-token decode kernels are compute-bound sooner
/// (`FORGE_F16_MIN_ROWS_WIDE`, default 4). Where the tensor-core products
/// take 2 ..= 16 rows ([`decode::mmq_rows`]) they come first.
pub fn f16_min_rows_wide() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    env_rows(&N, "FORGE_F16_MIN_ROWS_WIDE", 4)
}

/// Columns from which a matrix counts as wide for [`f16_min_rows_wide`].
pub const F16_WIDE_COLS: usize = 2048;

/// Whether `nt` rows of W go to the vendor BLAS over its resident f16 copy.
pub fn resident_gemm(dev: &Device, w: &DevMatrix, nt: usize, scratch: Option<&GemmScratch>) -> bool {
    let min = if w.cols >= F16_WIDE_COLS { f16_min_rows_wide() } else { f16_min_rows() };
    w.f16 != 0 && nt >= min && dev.rt.has_blas() && scratch.is_some_and(|sc| sc.x16_elems >= nt * w.cols)
}

/// Prepare x (nt, cols) f32 as the f16 input of [`gemm_resident`] in
/// `scratch` (RMS-normalized first with `norm = Some((weight, eps))`), once
/// for every product that reads it, split in two halves where the scratch
/// has room for them ([`X16`]). Needs [`resident_gemm`] for them.
pub fn x_to_f16(dev: &Device, s: Stream, x: DevPtr, nt: usize, cols: usize, norm: Option<(DevPtr, f32)>, scratch: &GemmScratch) -> Result<X16> {
    let n = nt * cols;
    if scratch.x16_elems < n {
        return Err(Error::InvalidArgument(format!("x_to_f16: {nt} x {cols} values, scratch for {}", scratch.x16_elems)));
    }
    if let Some(lo) = &scratch.x16lo {
        if lo.bytes < n * 2 {
            return Err(Error::InvalidArgument(format!("x_to_f16: {nt} x {cols} values, room for {} low halves", lo.bytes / 2)));
        }
        let (hi, lo) = (scratch.x16.ptr, lo.ptr);
        match norm {
            Some((w, eps)) => {
                let dims = LaunchDims { grid: (nt as u32, 1, 1), block: 256, shared: 0 };
                dev.launch(s, "rmsnorm_f16_split", dims, &[Arg::Ptr(x), Arg::Ptr(w), Arg::Ptr(hi), Arg::Ptr(lo), Arg::I32(cols as i32), Arg::F32(eps)])?
            }
            None => dev.launch(s, "f32_to_f16_split", grid_stride(n), &[Arg::Ptr(x), Arg::Ptr(hi), Arg::Ptr(lo), Arg::U64(n as u64)])?,
        }
        return Ok(X16 { hi, lo });
    }
    match norm {
        Some((w, eps)) => {
            let dims = LaunchDims { grid: (nt as u32, 1, 1), block: 256, shared: 0 };
            dev.launch(s, "rmsnorm_f16", dims, &[Arg::Ptr(x), Arg::Ptr(w), Arg::Ptr(scratch.x16.ptr), Arg::I32(cols as i32), Arg::F32(eps)])?
        }
        None => dev.launch(s, "f32_to_f16", grid_stride(n.div_ceil(4)), &[Arg::Ptr(x), Arg::Ptr(scratch.x16.ptr), Arg::U64(n as u64)])?,
    }
    Ok(X16 { hi: scratch.x16.ptr, lo: 0 })
}

/// y (nt, rows) = / += X Wᵀ by the vendor BLAS over W's resident f16 copy,
/// X prepared by [`x_to_f16`]; for the token counts of [`mmf_rows`], by
/// [`matmul_mmf`] on W's quantized form where it fits (not for X in two
/// halves: mmf takes f16 alone).
pub fn gemm_resident(dev: &Device, s: Stream, w: &DevMatrix, x16: X16, y: DevPtr, nt: usize, out: Out) -> Result<()> {
    check(w)?;
    if x16.lo == 0 && mmf_rows().contains(&nt) && mmf_fits(dev.rt.info(), w, nt) {
        return matmul_mmf(dev, s, w, x16.hi, y, nt, out);
    }
    if w.f16 == 0 {
        return Err(Error::InvalidArgument(format!("gemm_resident: {} has no resident f16 copy", w.ty)));
    }
    gemm_x16(dev, s, w.f16, w.rows, w.cols, x16, y, w.rows, nt, out)
}

/// y (nt, ldc) = / += X Aᵀ for A (m, k) f16 at `a`: one GEMM, and a second
/// with alpha 1/[`F16_SPLIT_SCALE`] over X's low halves when it has them.
#[allow(clippy::too_many_arguments)]
fn gemm_x16(dev: &Device, s: Stream, a: DevPtr, m: usize, k: usize, x16: X16, y: DevPtr, ldc: usize, nt: usize, out: Out) -> Result<()> {
    let beta = if out == Out::Add { 1.0 } else { 0.0 };
    dev.rt.gemm_f16(s, &GemmF16 { m, n: nt, k, a, b: x16.hi, c: y, ldc, alpha: 1.0, beta })?;
    if x16.lo != 0 {
        dev.rt.gemm_f16(s, &GemmF16 { m, n: nt, k, a, b: x16.lo, c: y, ldc, alpha: 1.0 / F16_SPLIT_SCALE, beta: 1.0 })?;
    }
    Ok(())
}

/// The token counts for which [`gemm_resident`] multiplies the quantized
/// weights by `mmf_*` instead of their f16 copy by the vendor BLAS: by
/// default 17 ..= 32 (docs/PERFORMANCE.md). `FORGE_MMF=a-b` sets the
/// range, `FORGE_MMF=0` turns it off.
pub fn mmf_rows() -> std::ops::RangeInclusive<usize> {
    static R: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let &(a, b) = R.get_or_init(|| mmf_range(std::env::var("FORGE_MMF").ok().as_deref()));
    a..=b
}

/// [`mmf_rows`] of a `FORGE_MMF` value.
fn mmf_range(v: Option<&str>) -> (usize, usize) {
    const DEFAULT: (usize, usize) = (17, 32);
    match v {
        None | Some("") | Some("1") | Some("on") => DEFAULT,
        Some("0") | Some("off") => (1, 0),
        Some(r) => r.split_once('-').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))).unwrap_or(DEFAULT),
    }
}

/// Bytes of a q4_0x8 row's stage of 8 groups (`MF<TQ4_0X8>::SPAN` in
/// kernels/mmf.cu).
const MMF_SPAN_Q4_0X8: usize = 144;

/// Whether `mmf_*` takes W for `nt` tokens: NVIDIA sm_80+, q4_0 in its
/// regrouped layout (rows of whole 256-value spans), and the stages fit
/// a block's shared memory.
pub fn mmf_fits(info: &super::runtime::DeviceInfo, w: &DevMatrix, nt: usize) -> bool {
    decode::has_mmq(info) && w.packed && w.ty == GgmlType::Q4_0 && w.cols % 256 == 0 && nt >= 1 && mmf_shared(nt) <= info.max_shared
}

/// Tokens per block of `mmf_*` for `nt` tokens.
fn mmf_block_tokens(nt: usize) -> usize {
    if nt <= 32 { 32 } else { 64 }
}

/// The shape of an `mmf_*` block for `nt` tokens: (rows, warps, a warp's
/// rows, stages) (`MMF_BM32`, `MMF_WARPS32`, `MMF_WM32`, `MMF_STAGES32` or
/// the same for 64 in kernels/mmf.cu).
fn mmf_block(nt: usize) -> (usize, usize, usize, usize) {
    use super::kernel_table::*;
    if mmf_block_tokens(nt) == 32 {
        (kernel_define("MMF_BM32", MMF_BM32), kernel_define("MMF_WARPS32", MMF_WARPS32), kernel_define("MMF_WM32", MMF_WM32), kernel_define("MMF_STAGES32", MMF_STAGES32))
    } else {
        (kernel_define("MMF_BM64", MMF_BM64), kernel_define("MMF_WARPS64", MMF_WARPS64), kernel_define("MMF_WM64", MMF_WM64), kernel_define("MMF_STAGES64", MMF_STAGES64))
    }
}

/// Dynamic shared memory of an `mmf_*` launch: its stages of weights and
/// x, or where more, the place its warps' sums meet at the end
/// (`MMFShape` in kernels/mmf.cu).
fn mmf_shared(nt: usize) -> usize {
    use super::kernel_table::MMF_KC;
    let (bm, warps, wm, stages) = mmf_block(nt);
    let bn = mmf_block_tokens(nt);
    let wk = warps / (bm / wm.max(1)).max(1);
    let stage = bm * MMF_SPAN_Q4_0X8 + bn * (MMF_KC * 64 + 16);
    (stages * stage).max(if wk > 1 { wk * bn * (bm + 4) * 4 } else { 0 })
}

/// y (nt, rows) = / += X Wᵀ with W quantized (see [`mmf_fits`]) and X f16
/// from [`x_to_f16`], on f16 tensor cores (kernels/mmf.cu). Where the
/// row and token tiles make too few blocks to fill the device the columns
/// are split too, and the parts are added into y (zeroed first for a
/// store), so those sums are not reproducible bit for bit.
pub fn matmul_mmf(dev: &Device, s: Stream, w: &DevMatrix, x16: DevPtr, y: DevPtr, nt: usize, out: Out) -> Result<()> {
    let info = dev.rt.info();
    if !mmf_fits(info, w, nt) {
        return Err(Error::InvalidArgument(format!("matmul_mmf: {} {}x{} ({}) for {nt} tokens", w.ty, w.rows, w.cols, if w.packed { "regrouped" } else { "gguf layout" })));
    }
    let bt = mmf_block_tokens(nt);
    let (per, ks) = mmf_plan(info, w, nt);
    if ks > 1 && out == Out::Store {
        let n = nt * w.rows;
        if crate::env_flag("FORGE_MMF_MEMSET") {
            dev.rt.memset(s, y, 0, n * 4)?;
        } else {
            dev.launch(s, "zero_f32", grid_stride(n), &[Arg::Ptr(y), Arg::U64(n as u64)])?;
        }
    }
    let (bm, warps, _, _) = mmf_block(nt);
    let dims = LaunchDims { grid: (ceil(w.rows, bm), ceil(nt, bt), ks as u32), block: (warps * 32) as u32, shared: mmf_shared(nt) as u32 };
    dev.launch(
        s,
        &format!("mmf_q4_0x8_{bt}"),
        dims,
        &[Arg::Ptr(w.ptr), Arg::Ptr(x16), Arg::Ptr(y), Arg::I32(w.rows as i32), Arg::I32(w.cols as i32), Arg::I32(nt as i32), Arg::I32((out == Out::Add) as i32), Arg::I32(per as i32)],
    )
}

/// The column split of [`matmul_mmf`] of W for `nt` tokens: (stages per
/// part, parts).
fn mmf_plan(info: &super::runtime::DeviceInfo, w: &DevMatrix, nt: usize) -> (usize, usize) {
    use super::kernel_table::{MMF_KC, MMF_MIN_PER};
    let blocks = w.rows.div_ceil(mmf_block(nt).0) * nt.div_ceil(mmf_block_tokens(nt));
    // blocks a multiprocessor holds by their shared memory (228 KiB an SM
    // where a block may have 227)
    let per_sm = ((info.max_shared + 1024) / mmf_shared(nt).max(1)).max(1);
    mmf_split(w.cols / (32 * MMF_KC), blocks, per_sm * info.multiprocessors as usize, kernel_define("MMF_MIN_PER", MMF_MIN_PER))
}

/// How many column parts [`matmul_mmf`] splits W's product for `nt`
/// tokens into (tests and benchmarks report it).
pub fn mmf_parts(info: &super::runtime::DeviceInfo, w: &DevMatrix, nt: usize) -> usize {
    mmf_plan(info, w, nt).1
}

/// The column split of `stages` stages over `blocks` row × token tiles on
/// `slots` blocks at once: (stages per part, parts). Each part keeps at
/// least `min_per` stages (its copies and mmas overlap over them), and the
/// count minimizes an estimate of the time: whole waves of blocks, each as
/// long as its part plus two stages (the pipeline's start and the sums'
/// meeting in y).
fn mmf_split(stages: usize, blocks: usize, slots: usize, min_per: usize) -> (usize, usize) {
    let most = (stages / min_per.max(1)).max(1);
    let cost = |p: usize| (p * blocks).div_ceil(slots.max(1)) * (stages.div_ceil(p) + 2);
    let p = (1..=most).min_by_key(|&p| (cost(p), p)).unwrap_or(1);
    let per = stages.div_ceil(p);
    (per, stages.div_ceil(per))
}

/// y (nt, rows) = / += X Wᵀ for any number of tokens: the vendor BLAS over
/// W's resident f16 copy when it has one (and `nt` ≥ [`f16_min_rows`]),
/// else the matvec kernel for few tokens, else the vendor BLAS on W
/// dequantized to f16 in slabs (when loaded and `scratch` is given), else
/// the portable tiled kernel.
pub fn matmul(dev: &Device, s: Stream, w: &DevMatrix, x: DevPtr, y: DevPtr, nt: usize, out: Out, scratch: Option<&GemmScratch>) -> Result<MatmulPath> {
    check(w)?;
    if let Some(sc) = scratch.filter(|_| resident_gemm(dev, w, nt, scratch)) {
        let x16 = x_to_f16(dev, s, x, nt, w.cols, None, sc)?;
        gemm_resident(dev, s, w, x16, y, nt, out)?;
        return Ok(MatmulPath::Blas);
    }
    if matvec_fits(dev, w.ty, w.cols, nt) {
        matvec(dev, s, w, None, x, y, nt, out, None)?;
        return Ok(MatmulPath::Matvec);
    }
    let sfx = w.suffix()?;
    if let Some(sc) = scratch.filter(|sc| dev.rt.has_blas() && sc.x16_elems >= nt * w.cols && sc.w16_elems >= w.cols) {
        let x16 = x_to_f16(dev, s, x, nt, w.cols, None, sc)?;
        let slab = (sc.w16_elems / w.cols).min(w.rows);
        let rb = w.row_bytes();
        let mut r0 = 0;
        while r0 < w.rows {
            let m = slab.min(w.rows - r0);
            let slab_w = DevMatrix { rows: m, ptr: w.ptr + (r0 * rb) as u64, ..*w };
            dequant_to_f16(dev, s, &slab_w, sc.w16.ptr)?;
            gemm_x16(dev, s, sc.w16.ptr, m, w.cols, x16, y + (r0 * 4) as u64, w.rows, nt, out)?;
            r0 += m;
        }
        return Ok(MatmulPath::Blas);
    }
    let dims = LaunchDims { grid: (ceil(w.rows, 64), ceil(nt, 64), 1), block: 256, shared: 0 };
    let mode = if out == Out::Add { 1 } else { 0 };
    dev.launch(s, &format!("matmul_{sfx}"), dims, &[Arg::Ptr(w.ptr), Arg::Ptr(x), Arg::Ptr(y), Arg::I32(w.rows as i32), Arg::I32(w.cols as i32), Arg::I32(nt as i32), Arg::I32(mode)])?;
    Ok(MatmulPath::Tiled)
}

/// Write W's f16 copy to `out` (rows × cols f16): the dequantization the
/// slab path does per step, done once.
pub fn dequant_to_f16(dev: &Device, s: Stream, w: &DevMatrix, out: DevPtr) -> Result<()> {
    check(w)?;
    let sfx = w.suffix()?;
    dev.launch(s, &format!("dequant_f16_{sfx}"), grid_stride(w.rows * w.cols / 32), &[Arg::Ptr(w.ptr), Arg::Ptr(out), Arg::I32(w.rows as i32), Arg::I32(w.cols as i32)])
}

fn grid_stride(n: usize) -> LaunchDims {
    LaunchDims { grid: (ceil(n, 256).clamp(1, 65535), 1, 1), block: 256, shared: 0 }
}

/// g = act(g) * u over n values.
pub fn glu(dev: &Device, s: Stream, g: DevPtr, u: DevPtr, n: usize, act: FfnAct) -> Result<()> {
    dev.launch(s, "glu", grid_stride(n), &[Arg::Ptr(g), Arg::Ptr(u), Arg::U64(n as u64), Arg::I32(act_code(act))])
}

/// out (n, cols) = scale * W[ids[t]] for the n token ids at `ids` (device i32).
pub fn get_rows(dev: &Device, s: Stream, w: &DevMatrix, ids: DevPtr, out: DevPtr, n: usize, scale: f32) -> Result<()> {
    check(w)?;
    let dims = LaunchDims { grid: (n as u32, 1, 1), block: 128, shared: 0 };
    dev.launch(s, &format!("get_rows_{}", w.suffix()?), dims, &[Arg::Ptr(w.ptr), Arg::Ptr(ids), Arg::Ptr(out), Arg::I32(w.cols as i32), Arg::F32(scale)])
}

/// y (rows, dim) = (add ? y : 0) + rmsnorm(x) * w; y may be x when not adding.
pub fn rmsnorm(dev: &Device, s: Stream, x: DevPtr, w: DevPtr, y: DevPtr, rows: usize, dim: usize, eps: f32, add: bool) -> Result<()> {
    let dims = LaunchDims { grid: (rows as u32, 1, 1), block: 256, shared: 0 };
    dev.launch(s, "rmsnorm", dims, &[Arg::Ptr(x), Arg::Ptr(w), Arg::Ptr(y), Arg::I32(dim as i32), Arg::F32(eps), Arg::I32(add as i32)])
}

/// Shapes and options of [`qkv_post`].
#[derive(Debug, Clone, Copy)]
pub struct QkvPost {
    pub n: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub hd: usize,
    pub hdv: usize,
    pub rope_dim: usize,
    pub rope: RopeStyle,
    pub mscale: f32,
    pub eps: f32,
}

/// The kernels' `neox` argument: 1 for NeoX pairs (i, i + rope_dim / 2), 0 for adjacent pairs.
fn neox_code(r: RopeStyle) -> i32 {
    matches!(r, RopeStyle::Neox) as i32
}

/// Buffers of [`qkv_post`]; optional ones are 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct QkvBufs {
    pub q: DevPtr,
    pub k: DevPtr,
    pub v: DevPtr,
    pub bq: DevPtr,
    pub bk: DevPtr,
    pub bv: DevPtr,
    pub q_norm: DevPtr,
    pub k_norm: DevPtr,
    pub k_cache: DevPtr,
    pub v_cache: DevPtr,
    pub at: KvRows,
    pub freq: DevPtr,
}

/// Where the rows of a step sit in the paged KV cache (kernels/rope.cu,
/// `kv_slot`): `pos`, each row's position in its sequence (i32, one per
/// row; a negative one marks a padding row, which writes nothing); `tab`,
/// each row's offset into `bt` (i32 per row; 0 = every row at offset 0);
/// `bt`, the block tables ([`crate::kv::BLOCK`] positions per entry; 0 =
/// a contiguous cache, slot = position).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvRows {
    pub pos: DevPtr,
    pub tab: DevPtr,
    pub bt: DevPtr,
}

impl KvRows {
    /// The same rows from row `r` on (`bytes` = 4 per row).
    pub fn from_row(&self, r: usize) -> KvRows {
        let off = |p: DevPtr| if p == 0 { 0 } else { p + 4 * r as u64 };
        KvRows { pos: off(self.pos), tab: off(self.tab), bt: self.bt }
    }
}

/// Bias, per-head norm and RoPE on Q and K, and the f16 store of K/V at
/// the rows' positions (`at`).
pub fn qkv_post(dev: &Device, s: Stream, p: &QkvPost, b: &QkvBufs) -> Result<()> {
    if p.hd > 512 || p.hdv > 512 || p.rope_dim > p.hd {
        return Err(Error::Unsupported(format!("GPU attention supports head sizes up to 512 (got {}/{})", p.hd, p.hdv)));
    }
    // 128 threads: head_prep's RoPE pass takes a pair per thread (hd <= 256)
    let dims = LaunchDims { grid: ((p.n_head + p.n_head_kv) as u32, p.n as u32, 1), block: 128, shared: 0 };
    let neox = neox_code(p.rope);
    dev.launch(
        s,
        "qkv_post",
        dims,
        &[
            Arg::Ptr(b.q), Arg::Ptr(b.k), Arg::Ptr(b.v), Arg::Ptr(b.bq), Arg::Ptr(b.bk), Arg::Ptr(b.bv),
            Arg::Ptr(b.q_norm), Arg::Ptr(b.k_norm), Arg::Ptr(b.k_cache), Arg::Ptr(b.v_cache), Arg::Ptr(b.at.pos),
            Arg::Ptr(b.at.tab), Arg::Ptr(b.at.bt), Arg::Ptr(b.freq),
            Arg::I32(p.n_head as i32), Arg::I32(p.n_head_kv as i32), Arg::I32(p.hd as i32), Arg::I32(p.hdv as i32),
            Arg::I32(p.rope_dim as i32), Arg::I32(neox), Arg::F32(p.mscale), Arg::F32(p.eps),
        ],
    )
}

/// 0: not yet read from the environment, 1: on, 2: off.
static PREFILL_MMA: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether prefill attention takes the tensor-core kernel
/// (`attn_prefill_mma64/128`, which exists where kernels/vendor.h defines
/// HAS_MMA_F16: NVIDIA sm_80 and later). FORGE_NO_MMA=1 or
/// [`set_prefill_mma`]`(false)` keeps the CUDA-core kernel everywhere.
fn prefill_mma(dev: &Device) -> bool {
    use std::sync::atomic::Ordering;
    let mut on = PREFILL_MMA.load(Ordering::Relaxed);
    if on == 0 {
        on = if crate::env_flag("FORGE_NO_MMA") { 2 } else { 1 };
        PREFILL_MMA.store(on, Ordering::Relaxed);
    }
    let info = dev.rt.info();
    let sm = info.arch.strip_prefix("sm_").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    on == 1 && info.backend == "cuda" && sm >= 80
}

/// Turn the tensor-core prefill attention on or off for this process (tests
/// compare both kernels; see `prefill_mma`).
pub fn set_prefill_mma(on: bool) {
    PREFILL_MMA.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// Shapes of [`attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub hd: usize,
    pub hdv: usize,
    /// Sliding window in positions; 0 = none.
    pub window: usize,
    pub scale: f32,
    /// Key splits; 1 writes `out` directly. Decode rows: flash-decoding
    /// (at most `ATT_MAX_SPLITS`). A prefill run on the tensor-core kernel:
    /// splits of its key tiles, merged by a second launch (at most
    /// [`APM_MAX_SPLITS`]; see [`prefill_splits`]). The CUDA-core prefill
    /// kernel does not split and ignores it.
    pub splits: usize,
    /// The rows are of several sequences (or not at consecutive
    /// positions): the decode kernel takes them all, one query each.
    pub mixed: bool,
    /// One row through the tensor-core kernel instead of the decode kernel
    /// (long contexts: the query's heads of one KV head share an mma tile
    /// and the keys are split `splits` ways; see [`mma_attention`]). Not
    /// with `fused`.
    pub flash: bool,
}

/// Causal attention of n queries at the positions `at` gives, over the
/// (paged) cache: each query sees its sequence's keys up to its position.
/// Several queries of one sequence at consecutive positions take the
/// tensor-core prefill kernel (NVIDIA sm_80+, head sizes 64 and 128; see
/// `prefill_mma`) or else the tiled prefill kernel (when its tiles fit in
/// shared memory); one query, or queries of several sequences
/// ([`AttnShape::mixed`]), the split-K decode kernel. When splits > 1,
/// `part` needs n * n_head * splits * (2 + hdv) floats and `counters`
/// n * n_head i32 that are zero (the kernel leaves them zero). With
/// `prep` (from [`ActBuf::layout`] with f = `out`), `out` also comes
/// prepared for [`matvec_q`]: the decode kernel writes it as it goes,
/// saving a [`quantize_act`]. With `fused` (one token only), q is the raw
/// projection and the decode kernel does [`qkv_post`]'s work itself (bias,
/// QK-norm, RoPE, and the f16 store of K/V at its slot into kc/vc, which must
/// be `fused`'s caches), saving that launch.
#[allow(clippy::too_many_arguments)]
pub fn attention(dev: &Device, s: Stream, a: &AttnShape, q: DevPtr, kc: DevPtr, vc: DevPtr, out: DevPtr, part: DevPtr, counters: DevPtr, at: KvRows, prep: Option<&ActQ>, fused: Option<(&QkvPost, &QkvBufs)>) -> Result<()> {
    if let Some((p, b)) = fused {
        if a.n != 1 || p.n != 1 || b.q != q || b.k_cache != kc || b.v_cache != vc || b.at != at || p.hd != a.hd || p.hdv != a.hdv || p.rope_dim > p.hd {
            return Err(Error::InvalidArgument("attention: the fused qkv_post takes one token and the same buffers".into()));
        }
    }
    if let Some(p) = prep {
        if p.f != out || p.cols != a.n_head * a.hdv || p.nt != a.n || a.hdv % 32 != 0 {
            return Err(Error::InvalidArgument("attention: prepared output must describe `out`".into()));
        }
    }
    if a.hd % 8 != 0 || a.hdv > 256 || a.hdv % 8 != 0 || a.n_head % a.n_head_kv != 0 || a.splits == 0 {
        return Err(Error::Unsupported(format!("GPU attention: head size {} must be a multiple of 8, value size {} a multiple of 8 and at most 256", a.hd, a.hdv)));
    }
    let warp = dev.rt.info().warp_size as usize;
    let block = (ATT_WARPS * warp) as u32;
    if a.flash && (a.n != 1 || fused.is_some() || a.mixed || !mma_attention(dev, a.hd, a.hdv)) {
        return Err(Error::InvalidArgument("attention: the tensor-core kernel for one row takes one sequence, unfused, head size 64 or 128".into()));
    }
    if (a.n > 1 || a.flash) && !a.mixed && mma_attention(dev, a.hd, a.hdv) {
        // tensor cores: 64 rows per block of 4 warps, two staged key tiles
        // of K and V in dynamic shared memory; `splits` key splits merged by
        // attn_prefill_merge_w or attn_prefill_merge. A query's heads of one KV head share the mma
        // rows (packed) where that takes fewer blocks (decode, short runs).
        if a.splits > APM_MAX_SPLITS {
            return Err(Error::InvalidArgument(format!("attention: {} prefill key splits (at most {APM_MAX_SPLITS})", a.splits)));
        }
        let (heads, g) = mma_attention_rows(a);
        let shared = mma_attention_shared(a.hd);
        let dims = LaunchDims { grid: (heads as u32, ceil(a.n * g, 64), a.splits as u32), block: 128, shared: shared as u32 };
        dev.launch(
            s,
            &format!("attn_prefill_mma{}", a.hd),
            dims,
            &[
                Arg::Ptr(q), Arg::Ptr(kc), Arg::Ptr(vc), Arg::Ptr(out), Arg::Ptr(part), Arg::Ptr(at.pos), Arg::Ptr(at.tab), Arg::Ptr(at.bt),
                Arg::I32(a.n as i32), Arg::I32(a.n_head as i32),
                Arg::I32(a.n_head_kv as i32), Arg::I32(a.window as i32), Arg::F32(a.scale), Arg::I32(a.splits as i32), Arg::I32(g as i32),
            ],
        )?;
        if a.splits > 1 {
            // a warp a row for a few splits (a prefill chunk's many rows),
            // a block a row for many (one row at a long context)
            let rows = a.n * a.n_head;
            let args = [Arg::Ptr(part), Arg::Ptr(out), Arg::I32(rows as i32), Arg::I32(a.splits as i32), Arg::I32(a.hdv as i32)];
            if a.splits <= warp {
                let per = super::kernel_table::APM_MERGE_W;
                let dims = LaunchDims { grid: (ceil(rows, per), 1, 1), block: (per * warp) as u32, shared: 0 };
                dev.launch(s, "attn_prefill_merge_w", dims, &args)?;
            } else {
                let dims = LaunchDims { grid: (rows as u32, 1, 1), block: super::kernel_table::APM_MERGE as u32, shared: 0 };
                dev.launch(s, "attn_prefill_merge", dims, &args)?;
            }
        }
        return prep.map_or(Ok(()), |p| quant_act(dev, s, out, None, p));
    }
    if a.n > 1 && !a.mixed {
        let qw = if a.hd <= 128 { 4 } else { 2 };
        let qb = qw * ATT_WARPS;
        let shared = warp * (a.hd / 2 + 1) * 4 + warp * a.hdv * 2 + qb * a.hd * 4;
        if shared <= SHARED_LIMIT {
            let dims = LaunchDims { grid: (a.n_head as u32, ceil(a.n, qb), 1), block, shared: shared as u32 };
            dev.launch(
                s,
                "attn_prefill",
                dims,
                &[
                    Arg::Ptr(q), Arg::Ptr(kc), Arg::Ptr(vc), Arg::Ptr(out), Arg::Ptr(at.pos), Arg::Ptr(at.tab), Arg::Ptr(at.bt),
                    Arg::I32(a.n as i32),
                    Arg::I32(a.n_head as i32), Arg::I32(a.n_head_kv as i32), Arg::I32(a.hd as i32), Arg::I32(a.hdv as i32),
                    Arg::I32(a.window as i32), Arg::F32(a.scale), Arg::I32(qw as i32),
                ],
            )?;
            return prep.map_or(Ok(()), |p| quant_act(dev, s, out, None, p));
        }
    }
    if a.splits > MAX_SPLITS {
        return Err(Error::InvalidArgument(format!("attention: {} key splits (at most {MAX_SPLITS})", a.splits)));
    }
    if a.mixed && fused.is_none() && attn_rows(dev, a.hd, a.hdv) {
        // decode rows of several sequences: a warp per row, head and split
        let dims = LaunchDims { grid: (ceil(a.n * a.n_head * a.splits, ATR_WARPS), 1, 1), block: (ATR_WARPS * warp) as u32, shared: 0 };
        dev.launch(
            s,
            &format!("attn_dr{}", a.hd),
            dims,
            &[
                Arg::Ptr(q), Arg::Ptr(kc), Arg::Ptr(vc), Arg::Ptr(out), Arg::Ptr(part), Arg::Ptr(counters), Arg::Ptr(at.pos),
                Arg::Ptr(at.tab), Arg::Ptr(at.bt),
                Arg::I32(a.n as i32), Arg::I32(a.n_head as i32), Arg::I32(a.n_head_kv as i32), Arg::I32(a.window as i32), Arg::F32(a.scale),
                Arg::I32(a.splits as i32),
            ],
        )?;
        return prep.map_or(Ok(()), |p| quant_act(dev, s, out, None, p));
    }
    // the decode kernel for the smallest value-size bucket that holds hdv
    let d = [64, 128, 256].into_iter().find(|&d| d >= a.hdv && d >= warp).unwrap_or(256);
    let dwarps = kernel_define("ATT_DWARPS", ATT_DWARPS);
    let shared = (a.hd + dwarps * (2 + a.hdv) + if fused.is_some() { a.hd + a.hdv } else { 0 }) * 4;
    let dims = LaunchDims { grid: (a.n_head as u32, a.n as u32, a.splits as u32), block: (dwarps * warp) as u32, shared: shared as u32 };
    // unfused: null pointers (the kernel's test) and unused numbers
    let fb = fused.map_or(QkvBufs::default(), |(_, b)| *b);
    let (rope_dim, neox, mscale, eps) = fused.map_or((0, 0, 0.0, 0.0), |(p, _)| (p.rope_dim as i32, neox_code(p.rope), p.mscale, p.eps));
    dev.launch(
        s,
        &format!("attn_d{d}"),
        dims,
        &[
            Arg::Ptr(q), Arg::Ptr(kc), Arg::Ptr(vc), Arg::Ptr(out), Arg::Ptr(part), Arg::Ptr(counters), Arg::Ptr(at.pos),
            Arg::Ptr(at.tab), Arg::Ptr(at.bt),
            Arg::I32(a.n_head as i32), Arg::I32(a.n_head_kv as i32), Arg::I32(a.hd as i32), Arg::I32(a.hdv as i32),
            Arg::I32(a.window as i32), Arg::F32(a.scale), Arg::I32(a.splits as i32),
            Arg::Ptr(prep.map_or(0, |p| p.q)), Arg::Ptr(prep.map_or(0, |p| p.d)), Arg::Ptr(prep.map_or(0, |p| p.s)),
            Arg::Ptr(fb.k), Arg::Ptr(fb.v), Arg::Ptr(fb.bq), Arg::Ptr(fb.bk), Arg::Ptr(fb.bv), Arg::Ptr(fb.q_norm), Arg::Ptr(fb.k_norm),
            Arg::Ptr(fb.freq), Arg::I32(rope_dim), Arg::I32(neox), Arg::F32(mscale), Arg::F32(eps),
        ],
    )
}

use super::kernel_table::{ATR_WARPS, ATT_DWARPS, ATT_MAX_SPLITS as MAX_SPLITS, ATT_WARPS};

/// 0: not yet read from the environment, 1: on, 2: off, 3: on, also for
/// one decode row.
static ATTN_ROWS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether decode rows of several sequences ([`AttnShape::mixed`], not
/// fused; a prepared output comes from a `quant_act` after it) take
/// `attn_dr64/128/256` (one warp per row, head and key split) rather than
/// `attn_d*` (a block each): head sizes hd = hdv of 64, 128 or 256. FORGE_ATTN_ROWS=0 or [`set_attn_rows`]`(false)` keeps
/// `attn_d*`.
pub fn attn_rows(dev: &Device, hd: usize, hdv: usize) -> bool {
    let on = attn_rows_mode();
    on != 2 && hd == hdv && matches!(hd, 64 | 128 | 256) && hd / 8 <= dev.rt.info().warp_size as usize
}

fn attn_rows_mode() -> u8 {
    use std::sync::atomic::Ordering;
    let mut on = ATTN_ROWS.load(Ordering::Relaxed);
    if on == 0 {
        on = match std::env::var("FORGE_ATTN_ROWS").as_deref() {
            Ok("0") => 2,
            Ok("2") => 3,
            _ => 1,
        };
        ATTN_ROWS.store(on, Ordering::Relaxed);
    }
    on
}

/// Whether one decode row (a single sequence's step below the tensor-core
/// threshold) also takes `attn_dr*`, unfused, instead of `attn_d*` fused
/// with `qkv_post`: FORGE_ATTN_ROWS=2 (A/B runs; off by default).
pub fn attn_rows_one(dev: &Device, hd: usize, hdv: usize) -> bool {
    attn_rows_mode() == 3 && attn_rows(dev, hd, hdv)
}

/// Turn `attn_dr*` on or off for this process (tests compare both
/// kernels; see [`attn_rows`]); returns the setting it replaced, for
/// [`restore_attn_rows`].
pub fn set_attn_rows(on: bool) -> u8 {
    let was = attn_rows_mode();
    ATTN_ROWS.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
    was
}

/// Put back a setting [`set_attn_rows`] returned.
pub fn restore_attn_rows(was: u8) {
    ATTN_ROWS.store(was, std::sync::atomic::Ordering::Relaxed);
}

/// Warps (`attn_dr*`) or, for `attn_d*`, blocks of `ATT_DWARPS` warps per
/// multiprocessor that [`mixed_splits`] aims a step's key splits at.
pub const MIXED_FILL: [usize; 2] = [16, 2];

/// Key splits for `n` decode rows of several sequences, at most `max`
/// ([`mixed_max_splits`] of the context): enough to fill the device, fewer as
/// rows grow, so n · n_head · splits ≤ [`MIXED_FILL`]\[0\] · SMs + n · n_head.
/// The kernels use min(splits, ceil(keys / ATR_MIN or ATT_CHUNK)) at each step.
pub fn mixed_splits(dev: &Device, n: usize, n_head: usize, hd: usize, hdv: usize, max: usize) -> usize {
    let sms = dev.rt.info().multiprocessors as usize;
    split_count(MIXED_FILL[if attn_rows(dev, hd, hdv) { 0 } else { 1 }] * sms, n * n_head, max)
}

/// Splits of `items` (rows × heads) that make about `target` work items,
/// at least 1 and at most `max`: items · splits ≤ target + items.
fn split_count(target: usize, items: usize, max: usize) -> usize {
    target.div_ceil(items.max(1)).clamp(1, max.max(1))
}

/// Key splits for decode at context size `n_ctx`: the most the kernel may
/// use, one per `ATT_CHUNK` keys (a tile per warp: `ATT_DWARPS` · 32 on
/// NVIDIA and wave32, twice that on wave64, where half of these are spare)
/// up to [`MAX_SPLITS`]. A captured graph keeps this count for every
/// position; the kernel uses min(splits, ceil(keys / ATT_CHUNK)) of them at
/// each step, the others exit at once.
pub fn decode_splits(n_ctx: usize) -> usize {
    let chunk = kernel_define("ATT_CHUNK", kernel_define("ATT_DWARPS", ATT_DWARPS) * 32).max(1);
    n_ctx.div_ceil(chunk).clamp(1, MAX_SPLITS)
}

/// The most key splits [`mixed_splits`] may give a step of several decode
/// rows at context size `n_ctx`: one per 128 keys, up to [`MAX_SPLITS`]
/// (`attn_dr*` takes at least `ATR_MIN` keys a split; tying this cap to
/// [`decode_splits`]' 256 keys cost the 7B twin 13% at B = 8).
pub fn mixed_max_splits(n_ctx: usize) -> usize {
    n_ctx.div_ceil(128).clamp(1, MAX_SPLITS)
}

/// Most key splits of a tensor-core attention launch.
pub use super::kernel_table::APM_MAX_SPLITS;

/// Whether [`attention`] has the tensor-core kernel for these head sizes
/// here (NVIDIA sm_80+, hd = hdv of 64 or 128; see `prefill_mma`).
pub fn mma_attention(dev: &Device, hd: usize, hdv: usize) -> bool {
    hd == hdv && matches!(hd, 64 | 128) && prefill_mma(dev)
}

/// The tensor-core attention kernel's grid x and rows per query: (n_head,
/// 1), or (n_head_kv, n_head / n_head_kv) when a query's heads of one KV
/// head packed into one mma tile take fewer blocks (decode, short runs).
fn mma_attention_rows(a: &AttnShape) -> (usize, usize) {
    let group = a.n_head / a.n_head_kv;
    match group > 1 && a.n_head_kv * (a.n * group).div_ceil(64) < a.n_head * a.n.div_ceil(64) {
        true => (a.n_head_kv, group),
        false => (a.n_head, 1),
    }
}

/// Key splits for the prefill run `a` (splits ignored) whose longest row
/// sees `keys` keys, with room for `room` splits of partials: 1 where the
/// tensor-core kernel does not run (the CUDA-core kernel does not split),
/// else [`prefill_splits`] of its blocks and of the blocks the device holds.
pub fn prefill_attention_splits(dev: &Device, a: &AttnShape, keys: usize, room: usize) -> usize {
    if !mma_attention(dev, a.hd, a.hdv) {
        return 1;
    }
    let (heads, g) = mma_attention_rows(a);
    let info = dev.rt.info();
    let slots = info.multiprocessors as usize * mma_attention_blocks_per_sm(&info.arch, a.hd);
    prefill_splits(heads * (a.n * g).div_ceil(64), keys, slots, room)
}

/// Key splits for a tensor-core attention launch of `blocks` blocks
/// (before splitting) whose longest row sees `keys` keys, on a device that
/// holds `slots` of its blocks at once, with room for `room` splits of
/// partials. Each split is at least 8 tiles of 64 keys (short contexts keep
/// one pass and no merge), at most [`APM_MAX_SPLITS`]; among those, the
/// count with the least estimated time: waves × (tiles per split + 2), plus
/// 5 tiles' worth for the merge. Whole waves matter: the blocks of a run at
/// depth all take about as long, so 560 blocks on 528 slots take two block
/// times where 448 take one. `FORGE_PREFILL_SPLITS=k` fixes k (1 = never
/// split).
pub fn prefill_splits(blocks: usize, keys: usize, slots: usize, room: usize) -> usize {
    static FIXED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let fixed = *FIXED.get_or_init(|| std::env::var("FORGE_PREFILL_SPLITS").ok().and_then(|v| v.parse().ok()));
    let tiles = keys.div_ceil(64).max(1);
    let most = (tiles / 8).min(room).clamp(1, APM_MAX_SPLITS);
    if let Some(k) = fixed {
        return k.min(room).clamp(1, APM_MAX_SPLITS);
    }
    let cost = |s: usize| (s * blocks).div_ceil(slots.max(1)) * (tiles.div_ceil(s) + 2) + if s > 1 { 5 } else { 0 };
    (1..=most).min_by_key(|&s| (cost(s), s)).unwrap_or(1)
}

/// Blocks of the tensor-core attention kernel an SM holds at once, for
/// [`prefill_splits`]: its registers (`attn_prefill_mma64` is held to 128
/// a thread by `APM_MINB64`, a compile option may change it;
/// `attn_prefill_mma128` takes about 180) and its shared memory (two
/// staged tiles of K and V, 36 / 68 KB a block) against the SM's: about
/// 100 KB on sm_86 / sm_87 / sm_89, 164 KB or more on sm_80 and sm_90.
fn mma_attention_blocks_per_sm(arch: &str, hd: usize) -> usize {
    let regs = if hd <= 64 { kernel_define("APM_MINB64", super::kernel_table::APM_MINB64) } else { 2 };
    let sm_shared = if matches!(arch, "sm_86" | "sm_87" | "sm_89") { 100 << 10 } else { 164 << 10 };
    regs.min(sm_shared / mma_attention_shared(hd)).max(1)
}

/// Dynamic shared memory of an `attn_prefill_mma*` block: two buffers of
/// a 64-key tile of K and of V, rows of hd / 2 + 4 words (kernels/attention.cu).
fn mma_attention_shared(hd: usize) -> usize {
    4 * super::kernel_table::APM_K * (hd / 2 + 4) * 4
}

#[cfg(test)]
mod tests {
    /// The `mmq_*` x prefetch reads up to a stage less one of groups past a
    /// row's last (kernels/mmq.cu, `PX`), unclamped: for every token count
    /// and width an `ActBuf` takes, the furthest such read of the planes
    /// and of the scales stays inside its allocation.
    #[test]
    fn act_buf_covers_the_mmq_prefetch() {
        use super::super::kernel_table::{MMQ_KC, MMQ_KC_SMALL};
        use super::ActBuf;
        let stage = MMQ_KC_SMALL.max(MMQ_KC);
        for max_cols in [32, 64, 256, 896, 1024, 1920, 4096, 11008, 18944] {
            for max_nt in [1, 2, 8, 16, 64] {
                let total = ActBuf::bytes(max_cols, max_nt);
                let ng_max = max_cols / 32;
                let d_base = max_nt * max_cols * 2;
                for cols in [32, max_cols / 2 / 32 * 32, max_cols].into_iter().filter(|&c| c >= 32) {
                    let ng = cols / 32;
                    for nt in 1..=max_nt {
                        // group ng - 1 + stage - 1 of the last token: 8 words of 8 bytes, and its d
                        let last = (ng - 1 + stage - 1) * nt + nt - 1;
                        assert!((last + 1) * 64 <= total, "planes: {cols} x {nt} of {max_cols} x {max_nt}");
                        assert!(d_base + (last + 1) * 4 <= total, "scales: {cols} x {nt} of {max_cols} x {max_nt}");
                        // the d * sum region starts after the d region
                        assert!(d_base + max_nt * ng_max * 4 + (last + 1) * 4 <= total);
                    }
                }
            }
        }
    }

    /// The partials buffer (`forward::part_rows`) holds f · SMs + rows ·
    /// heads rows for a mixed decode step: `split_count` never asks for more,
    /// nor for 0 splits or more than the most the kernels take.
    #[test]
    fn mixed_splits_stay_within_the_partials() {
        use super::split_count;
        for sms in [1, 60, 132, 304] {
            for fill in super::MIXED_FILL {
                for n_head in [1, 8, 14, 32, 64] {
                    for n in 1..=256 {
                        for max in [1, 2, 5, 32, 64] {
                            let items = n * n_head;
                            let s = split_count(fill * sms, items, max);
                            assert!(s >= 1 && s <= max, "{s} splits for max {max}");
                            assert!(items * s <= fill * sms + items, "{items} items x {s} splits > {fill} x {sms} SMs + {items}");
                        }
                    }
                }
            }
        }
        // few rows take many splits, many rows one
        assert_eq!(split_count(16 * 132, 8 * 32, 64), 9);
        assert_eq!(split_count(16 * 132, 64 * 32, 64), 2);
        assert_eq!(split_count(16 * 132, 128 * 32, 64), 1);
    }

    #[test]
    fn split_caps_follow_their_kernels() {
        // attn_d*: one split per ATT_CHUNK (8 warps of 32 keys) keys, unless
        // FORGE_NVRTC_OPTS changes the kernel's constants (A/B runs)
        if std::env::var("FORGE_NVRTC_OPTS").map_or(true, |o| o.trim().is_empty()) {
            assert_eq!(super::decode_splits(256), 1);
            assert_eq!(super::decode_splits(257), 2);
            assert!(super::decode_splits(300) < super::mixed_max_splits(300));
        }
        assert_eq!(super::decode_splits(1), 1);
        assert_eq!(super::decode_splits(1 << 20), super::MAX_SPLITS);
        // several rows (attn_dr*): one per 128 keys, whatever the one-row chunk
        for (n_ctx, want) in [(1, 1), (128, 1), (129, 2), (256, 2), (300, 3), (4096, 32), (1 << 20, 64)] {
            assert_eq!(super::mixed_max_splits(n_ctx), want, "n_ctx {n_ctx}");
        }
    }

    /// The launch reads the constants a compile option gave the kernels,
    /// whichever way the option is spelled (a mismatch would launch fewer
    /// warps than the kernel reduces over).
    #[test]
    fn compile_option_defines_are_read_back() {
        use super::define_in;
        assert_eq!(define_in("", "MMQ_WARPS", 8), 8);
        assert_eq!(define_in("-DMMQ_WARPS=4", "MMQ_WARPS", 8), 4);
        assert_eq!(define_in("--maxrregcount=64 -D MMQ_WARPS=2 -DMMQ_KC=64", "MMQ_WARPS", 8), 2);
        assert_eq!(define_in("--define-macro=MMQ_WARPS=16", "MMQ_WARPS", 8), 16);
        assert_eq!(define_in("-DMMQ_WARPS=4 -DMMQ_WARPS=2", "MMQ_WARPS", 8), 2);
        // another constant whose name starts the same is not this one
        assert_eq!(define_in("-DMMQ_WARPS_X=4", "MMQ_WARPS", 8), 8);
        assert_eq!(define_in("-DMMQ_KC=16", "MMQ_WARPS", 8), 8);
    }

    /// FORGE_MMF: the default range, a range, or off; a malformed value
    /// keeps the default.
    #[test]
    fn mmf_range_from_the_environment_value() {
        use super::mmf_range;
        assert_eq!(mmf_range(None), (17, 32));
        assert_eq!(mmf_range(Some("9-256")), (9, 256));
        assert_eq!(mmf_range(Some("0")), (1, 0));
        assert_eq!(mmf_range(Some("off")), (1, 0));
        assert_eq!(mmf_range(Some("x-2")), (17, 32));
    }

    /// Prefill key splits: whole waves of blocks at long contexts, none for
    /// short ones, never more than the partials hold.
    #[test]
    fn mma_attention_blocks_by_registers_and_shared_memory() {
        use super::mma_attention_blocks_per_sm as blocks;
        // sm_90: registers decide (128 a thread for D = 64, ~180 for 128)
        assert_eq!(blocks("sm_90", 64), 4);
        assert_eq!(blocks("sm_90", 128), 2);
        assert_eq!(blocks("sm_80", 64), 4);
        // ~100 KB of shared memory an SM: 36 KB / 68 KB blocks
        assert_eq!(blocks("sm_86", 64), 2);
        assert_eq!(blocks("sm_89", 128), 1);
    }

    #[test]
    fn prefill_splits_fill_whole_waves() {
        use super::prefill_splits;
        let room = usize::MAX;
        // Qwen's chunk of 512 at 16k: 8 x 14 = 112 blocks on 132 x 4
        // slots; 4 splits are one wave (448 blocks of 64 tiles), 5 would be
        // two; 9 (1,008 blocks, 2 waves of 29 tiles) is the cheapest
        assert_eq!(prefill_splits(112, 16384, 528, room), 9);
        // the 7B's 32 heads (256 blocks on 132 x 2 slots): one wave
        assert_eq!(prefill_splits(256, 16384, 264, room), 1);
        // pp512 from empty: 8 key tiles, no split
        assert_eq!(prefill_splits(112, 512, 528, room), 1);
        // 4,096 keys: 64 tiles
        assert_eq!(prefill_splits(112, 4096, 528, room), 4);
        // the partials hold only 3 splits
        assert_eq!(prefill_splits(112, 16384, 528, 3), 3);
        assert_eq!(prefill_splits(112, 16384, 528, 0), 1);
        // whatever the shape: within bounds
        for blocks in [1, 7, 112, 600] {
            for keys in [1, 64, 700, 5000, 100_000] {
                let s = prefill_splits(blocks, keys, 528, 40);
                assert!((1..=40).contains(&s) && (s == 1 || keys.div_ceil(64) / 8 >= s), "{blocks} {keys}: {s}");
            }
        }
    }

    /// The column split fills the device in whole waves, keeps at least
    /// `min_per` stages a part where the columns have them, and covers every
    /// stage exactly (the kernel's last part takes the rest).
    #[test]
    fn mmf_split_covers_the_columns() {
        use super::mmf_split;
        // the 7B's 4096 x 4096 at 32 tokens in blocks of 128 rows: 32 tiles
        // on 132 slots, 4 parts of 4 stages (one wave)
        assert_eq!(mmf_split(16, 32, 132, 4), (4, 4));
        // its 11008 x 4096: 86 tiles; 3 parts of 6 stages in two waves
        // (16 vs 18 stages' time)
        assert_eq!(mmf_split(16, 86, 132, 4), (6, 3));
        // enough tiles (the 49152-row output): no split
        assert_eq!(mmf_split(16, 384, 132, 4), (16, 1));
        // its 4096 x 11008 (43 stages): 4 parts of 11 (128 blocks)
        assert_eq!(mmf_split(43, 32, 132, 4), (11, 4));
        // 16 tiles of 2 stages on 264 slots, parts of 1 stage allowed: 16 parts
        assert_eq!(mmf_split(16, 16, 264, 1), (1, 16));
        // too few stages for two parts of min_per
        assert_eq!(mmf_split(7, 8, 132, 4), (7, 1));
        assert_eq!(mmf_split(1, 1, 264, 4), (1, 1));
        for stages in 1..60 {
            for blocks in [1, 7, 32, 86, 300] {
                for min_per in [1, 4] {
                    let (per, parts) = mmf_split(stages, blocks, 132, min_per);
                    assert!(per >= 1 && per * parts >= stages && per * (parts - 1) < stages, "{stages} stages, {blocks} blocks: {per} x {parts}");
                    assert!(per >= min_per.min(stages), "{stages} stages, {blocks} blocks: parts of {per} stages");
                }
            }
        }
    }
}
