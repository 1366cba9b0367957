//! Weights regrouped at load for the AVX-512 VNNI matmul: tiles of 8 rows ×
//! 32 columns, so one `vpdpbusd` multiplies 4 columns of 8 rows (two column
//! groups per 512-bit vector) by an 8-byte broadcast of the activations.
//! Against the per-row kernels of `x86_a8` this takes a tile's products
//! from ~32 instructions per token to ~12, and the per-block scale work is
//! done once per 8 rows instead of once per row.
//!
//! Tile layout (bytes, in this order):
//! - the scales of the 8 rows: f16 for the legacy types (their scale is an
//!   f16 already), f32 for the k-quants (d × 6-bit scale, exact in f32):
//!   scale of elements 0–15, then of 16–31 (Q6_K only), then the minimum's
//!   coefficient (types with a minimum);
//! - the low 4 bits of the quants, 128 bytes: vector v (v = 0..4) holds
//!   columns 8v..8v+8 of each row, 8 bytes per row; byte k of 64-byte half c
//!   carries vector c in its low nibble and vector c + 2 in its high nibble;
//! - 5-bit types: one u64 per vector, bit k = bit 4 of byte k;
//!   6-bit (Q6_K): 64 bytes, byte k holding bits 4–5 of vector v's byte k
//!   at bits 2v, 2v+1; 8-bit (Q8_0): the 256 bytes instead of nibbles.
//!
//! Quants are stored unsigned (q + offset: 8 for Q4_0, 16 for Q5_0, 32 for
//! Q6_K, 128 for Q8_0); the kernel starts each block's integer sum at
//! −offset × Σx, so the result is the same integer the scalar definition
//! (`quant::dot::vec_dot_act`) computes.

use rayon::prelude::*;
use rayon::ThreadPool;

use crate::quant::ActRow;

use crate::quant::{kquants, GgmlType};

/// How a packed type stores its tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Quant width: 4, 5, 6 or 8.
    pub bits: u8,
    /// Added to the signed quants to make them unsigned.
    pub offset: i32,
    /// Scales as f16 (legacy types) rather than f32.
    pub half: bool,
    /// A second scale for columns 16–31 (16-value sub-blocks).
    pub split: bool,
    /// A minimum term (value = scale × q + min).
    pub min: bool,
}

impl Format {
    pub fn of(ty: GgmlType) -> Option<Format> {
        use GgmlType::*;
        let f = |bits, offset, half, split, min| Some(Format { bits, offset, half, split, min });
        match ty {
            Q4_0 => f(4, 8, true, false, false),
            Q4_1 => f(4, 0, true, false, true),
            Q5_0 => f(5, 16, true, false, false),
            Q5_1 => f(5, 0, true, false, true),
            Q8_0 => f(8, 128, true, false, false),
            Q4K => f(4, 0, false, false, true),
            Q5K => f(5, 0, false, false, true),
            Q6K => f(6, 32, false, true, false),
            _ => None,
        }
    }

    /// Bytes of one scale array (8 rows).
    pub fn scale_bytes(self) -> usize {
        if self.half {
            16
        } else {
            32
        }
    }

    pub fn n_scales(self) -> usize {
        1 + self.split as usize + self.min as usize
    }

    /// Bytes of quants after the scales.
    pub fn quant_bytes(self) -> usize {
        match self.bits {
            4 => 128,
            5 => 128 + 32,
            6 => 128 + 64,
            _ => 256,
        }
    }

    pub fn tile_bytes(self) -> usize {
        self.n_scales() * self.scale_bytes() + self.quant_bytes()
    }
}

/// A matrix in tiles: row group g's tiles (one per 32 columns) are
/// contiguous, at `g * (cols / 32) * tile_bytes`.
pub struct Packed {
    ty: GgmlType,
    format: Format,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Packed {
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    pub fn format(&self) -> Format {
        self.format
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of all tiles.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} {}x{}, {} bytes)", self.ty, self.rows, self.cols, self.data.len())
    }
}

/// One k-quant tile before it is written: 8 rows' unsigned quants of one
/// 32-column sub-block, their scales and minimum coefficients.
struct KTile {
    q: [[u8; 32]; 8],
    scale: [[f32; 2]; 8],
    min: [f32; 8],
}

/// Row `r` of a k-quant tile: sub-block `j` (32 columns) of super-block `b`.
/// Q4_K/Q5_K: value = d·sc_j·q − dmin·m_j (ggml's get_scale_min_k4);
/// Q6_K: value = d·sc·(q − 32) per 16 columns (the offset is the format's).
fn k_row(ty: GgmlType, b: &[u8], j: usize, r: usize, kt: &mut KTile) {
    let q = &mut kt.q[r];
    match ty {
        GgmlType::Q6K => {
            let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], f16_le(b, 208));
            let (half, run) = (j / 4, j % 4);
            for (e, v) in q.iter_mut().enumerate() {
                let byte = ql[half * 64 + e + (run & 1) * 32];
                let lo = if run < 2 { byte & 0x0F } else { byte >> 4 };
                *v = lo | ((qh[half * 32 + e] >> (2 * run)) & 3) << 4;
            }
            kt.scale[r] = [d * sc[2 * j] as i8 as f32, d * sc[2 * j + 1] as i8 as f32];
            kt.min[r] = 0.0;
        }
        _ => {
            let (d, dmin) = (f16_le(b, 0), f16_le(b, 2));
            let (sc, m) = kquants::scale_min_k4(j, &b[4..16]);
            let (qh, qs) = if ty == GgmlType::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for (e, v) in q.iter_mut().enumerate() {
                let byte = qs[j / 2 * 32 + e];
                *v = if j.is_multiple_of(2) { byte & 0x0F } else { byte >> 4 };
                if let Some(qh) = qh {
                    *v |= ((qh[e] >> j) & 1) << 4;
                }
            }
            kt.scale[r] = [d * sc as f32; 2];
            kt.min[r] = -(dmin * m as f32);
        }
    }
}

fn f16_le(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Write a k-quant tile (f32 scales).
fn write_k_tile(f: Format, kt: &KTile, t: &mut [u8]) {
    let mut o = 0;
    let mut put = |t: &mut [u8], v: f32| {
        t[o..o + 4].copy_from_slice(&v.to_le_bytes());
        o += 4;
    };
    for r in 0..8 {
        put(t, kt.scale[r][0]);
    }
    if f.split {
        for r in 0..8 {
            put(t, kt.scale[r][1]);
        }
    }
    if f.min {
        for r in 0..8 {
            put(t, kt.min[r]);
        }
    }
    let q = &mut t[f.n_scales() * f.scale_bytes()..];
    // nibble byte 8r + i of half c: column 8c + i (low), 16 + 8c + i (high)
    for c in 0..2 {
        for r in 0..8 {
            for i in 0..8 {
                q[64 * c + 8 * r + i] = (kt.q[r][8 * c + i] & 0x0F) | (kt.q[r][16 + 8 * c + i] & 0x0F) << 4;
            }
        }
    }
    // vector v, byte 8r + i: column 8v + i of row r
    if f.bits == 5 {
        for v in 0..4 {
            let mut m = 0u64;
            for r in 0..8 {
                for i in 0..8 {
                    m |= (((kt.q[r][8 * v + i] >> 4) & 1) as u64) << (8 * r + i);
                }
            }
            q[128 + 8 * v..136 + 8 * v].copy_from_slice(&m.to_le_bytes());
        }
    } else if f.bits == 6 {
        for r in 0..8 {
            for i in 0..8 {
                q[128 + 8 * r + i] = (0..4).fold(0u8, |h, v| h | ((kt.q[r][8 * v + i] >> 4) & 3) << (2 * v));
            }
        }
    }
}

/// The tile of 8 blocks of a legacy type (f16 scales), straight from the
/// file's blocks: it only moves bytes (the layout's readable definition is
/// [`Packed::dot_scalar`]; tests/cpu_packed.rs checks both through
/// [`pack`]). Q4/Q5 nibble byte 8r + j of half c is the block's own byte
/// 8c + j (low nibble: column 8c + j, high: column 16 + 8c + j).
fn legacy_tile(ty: GgmlType, f: Format, blocks: [&[u8]; 8], t: &mut [u8]) {
    use GgmlType::*;
    let (has_m, qh_at, qs_at) = match ty {
        Q4_0 => (false, None, 2),
        Q4_1 => (true, None, 4),
        Q5_0 => (false, Some(2), 6),
        Q5_1 => (true, Some(4), 8),
        _ => (false, None, 2), // Q8_0
    };
    for (r, b) in blocks.iter().enumerate() {
        t[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
        if has_m {
            t[16 + 2 * r..18 + 2 * r].copy_from_slice(&b[2..4]);
        }
    }
    let q = &mut t[f.n_scales() * f.scale_bytes()..];
    if ty == Q8_0 {
        for v in 0..4 {
            for (r, b) in blocks.iter().enumerate() {
                for j in 0..8 {
                    q[64 * v + 8 * r + j] = b[qs_at + 8 * v + j] ^ 0x80;
                }
            }
        }
        return;
    }
    for c in 0..2 {
        for (r, b) in blocks.iter().enumerate() {
            q[64 * c + 8 * r..64 * c + 8 * r + 8].copy_from_slice(&b[qs_at + 8 * c..qs_at + 8 * c + 8]);
        }
    }
    if let Some(at) = qh_at {
        for v in 0..4 {
            let m = blocks.iter().enumerate().fold(0u64, |m, (r, b)| {
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                m | (((qh >> (8 * v)) & 0xFF) as u64) << (8 * r)
            });
            q[128 + 8 * v..136 + 8 * v].copy_from_slice(&m.to_le_bytes());
        }
    }
}

/// `n` zero bytes, or None when the allocation fails.
fn zeroed_bytes(n: usize) -> Option<Vec<u8>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    // SAFETY: non-zero size; a non-NULL result is n zeroed bytes from the
    // global allocator with u8's alignment, as Vec::from_raw_parts needs.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}

/// Whether a matrix of this type and shape has a packed form: a packed
/// type, whole groups of 8 rows, and whole blocks of columns.
pub fn packable(ty: GgmlType, rows: usize, cols: usize) -> bool {
    Format::of(ty).is_some() && rows > 0 && rows.is_multiple_of(8) && cols > 0 && cols.is_multiple_of(ty.block_geometry().0)
}

/// Regroup a matrix (`rows` × `cols` of `ty`, `bytes` in the file's row
/// order) into tiles, or None when its type or shape has no packed form
/// (rows not a multiple of 8).
pub fn pack(pool: &ThreadPool, ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Option<Packed> {
    let f = Format::of(ty)?;
    let row_bytes = ty.row_bytes(cols as u64)? as usize;
    if !packable(ty, rows, cols) || bytes.len() != rows * row_bytes {
        return None;
    }
    let nb = cols / 32;
    let group_bytes = nb * f.tile_bytes();
    // zeroed pages straight from the allocator: no memset pass on one
    // thread before the parallel writes (it was a third of packing)
    let mut data = zeroed_bytes(rows / 8 * group_bytes)?;
    pool.install(|| {
        data.par_chunks_mut(group_bytes).enumerate().for_each(|(g, out)| {
            let (_, ts) = ty.block_geometry();
            let rows8: [&[u8]; 8] = std::array::from_fn(|r| &bytes[(g * 8 + r) * row_bytes..(g * 8 + r + 1) * row_bytes]);
            if f.half {
                for (b, t) in out.chunks_exact_mut(f.tile_bytes()).enumerate() {
                    legacy_tile(ty, f, std::array::from_fn(|r| &rows8[r][b * ts..(b + 1) * ts]), t);
                }
                return;
            }
            let mut kt = KTile { q: [[0; 32]; 8], scale: [[0.0; 2]; 8], min: [0.0; 8] };
            for (b, t) in out.chunks_exact_mut(f.tile_bytes()).enumerate() {
                let (sb, j) = (b / 8, b % 8);
                for (r, row) in rows8.iter().enumerate() {
                    k_row(ty, &row[sb * ts..(sb + 1) * ts], j, r, &mut kt);
                }
                write_k_tile(f, &kt, t);
            }
        })
    });
    Some(Packed { ty, format: f, rows, cols, data })
}

impl Packed {
    /// Row `r` · x, read back from the tiles by portable code: the readable
    /// definition of the tile layout, which the AVX-512 kernel must match
    /// (tests compare both with `quant::dot::vec_dot_act` on the original
    /// rows).
    pub fn dot_scalar(&self, r: usize, x: crate::quant::ActRow<i8>) -> f32 {
        let f = self.format;
        let (nb, tb) = (self.cols / 32, f.tile_bytes());
        let (g, rr) = (r / 8, r % 8);
        let mut acc = 0f32;
        for b in 0..nb {
            let t = &self.data[(g * nb + b) * tb..(g * nb + b + 1) * tb];
            let scale = |i: usize| {
                let o = i * f.scale_bytes();
                if f.half {
                    half::f16::from_le_bytes([t[o + 2 * rr], t[o + 2 * rr + 1]]).to_f32()
                } else {
                    f32::from_le_bytes(t[o + 4 * rr..o + 4 * rr + 4].try_into().unwrap())
                }
            };
            let q = &t[f.n_scales() * f.scale_bytes()..];
            // column j of this row: vector v = j / 8, byte k = 8 rr + j % 8
            let quant = |j: usize| -> i32 {
                let (v, k) = (j / 8, 8 * rr + j % 8);
                let u = match f.bits {
                    8 => q[64 * v + k],
                    _ => {
                        let nib = if v < 2 { q[64 * v + k] & 0x0F } else { q[64 * (v - 2) + k] >> 4 };
                        match f.bits {
                            5 => nib | (((u64::from_le_bytes(q[128 + 8 * v..136 + 8 * v].try_into().unwrap()) >> k) & 1) as u8) << 4,
                            6 => nib | ((q[128 + k] >> (2 * v)) & 3) << 4,
                            _ => nib,
                        }
                    }
                };
                u as i32 - f.offset
            };
            let xq = &x.q[b * 32..b * 32 + 32];
            let half_sum = |h: usize| (16 * h..16 * h + 16).map(|j| quant(j) * xq[j] as i32).sum::<i32>();
            let (s_lo, s_hi) = (scale(0), if f.split { scale(1) } else { scale(0) });
            acc += x.d[b] * (s_lo * half_sum(0) as f32 + s_hi * half_sum(1) as f32);
            if f.min {
                acc += scale(f.n_scales() - 1) * x.dsum[b];
            }
        }
        acc
    }
}

/// Whether the CPU backend packs weights on this machine: the AVX-512 VNNI
/// family is in use with 8-bit activations, and `FORGE_NO_PACK` is off.
pub fn wanted() -> bool {
    super::simd::Family::current() == super::simd::Family::Avx512Vnni && !super::simd::act16() && !crate::env_flag("FORGE_NO_PACK")
}

/// Pack every matrix of a model for the CPU (in parallel on `pool`). A
/// matrix without a packed form stays as it is. Fails only when memory for
/// the tiles cannot be had.
pub fn pack_model(pool: &ThreadPool, file: &crate::gguf::GgufFile, weights: &mut crate::model::weights::Weights) -> crate::error::Result<()> {
    for m in weights.matrices_mut() {
        if m.packed.is_some() || !packable(m.ty, m.rows, m.cols) {
            continue;
        }
        // a packable matrix of a loaded model fails to pack only when its
        // tiles cannot be allocated (its bytes were checked at load)
        match pack(pool, m.ty, m.rows, m.cols, m.bytes(file)) {
            Some(p) => m.packed = Some(std::sync::Arc::new(p)),
            None => return Err(crate::error::Error::OutOfMemory(format!("packing {} ({} x {} {}) for the CPU", m.name, m.rows, m.cols, m.ty))),
        }
    }
    Ok(())
}

/// Y (n × rows) = X (n × cols) · Wᵀ over a packed matrix, with 8-bit
/// activations `main` (one row per token) and, where given, their residual
/// rows `resid` (`quant::quantize_a8_split`; mostly zero blocks), whose
/// products are added: a token's output is main + residual, in that order.
/// Row groups are split among the pool. Panics where the CPU lacks AVX-512
/// VNNI (only [`wanted`] packs a model's weights) or the shapes disagree:
/// the kernel reads and writes through unchecked pointers.
pub fn matmul(pool: &ThreadPool, p: &Packed, main: &[ActRow<i8>], resid: Option<&super::matmul::Residual>, out: &mut [f32]) {
    assert!(super::simd::Family::Avx512Vnni.available(), "packed weights need AVX-512 VNNI, which this CPU lacks");
    let n = main.len();
    assert_eq!(out.len(), n * p.rows, "packed {}: output is not n x rows", p.ty);
    let (resid, chunks): (&[ActRow<i8>], &[super::matmul::BlockChunk]) = resid.map_or((&[], &[]), |r| (r.rows(), r.chunks()));
    assert!(resid.is_empty() || resid.len() == n, "packed {}: {} residual rows for {n} tokens", p.ty, resid.len());
    for x in main.iter().chain(resid) {
        let c = p.cols;
        assert!(
            x.q.len() == c && x.d.len() * 32 == c && x.sum.len() * 32 == c && x.dsum.len() * 32 == c && x.sum16.len() * 16 == c,
            "packed {}: an activation row is not {c} values",
            p.ty
        );
    }
    let nb = p.cols / 32;
    let group_bytes = nb * p.format.tile_bytes();
    let optr = super::matmul::SyncPtr(out.as_mut_ptr());
    const GROUPS_PER_TASK: usize = 2;
    let n_tasks = (p.rows / 8).div_ceil(GROUPS_PER_TASK);
    let body = |task: usize| {
        let o = optr;
        for g in task * GROUPS_PER_TASK..((task + 1) * GROUPS_PER_TASK).min(p.rows / 8) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY (both calls): `wanted()` (the only way a matrix gets
            // packed) checked AVX-512 F/BW/VL + VNNI; group g's tiles are in
            // `data`; every activation row has cols values; the block lists
            // are below nb; the writes (rows g*8..g*8+8 of the tokens, in
            // `out`, disjoint between tasks; or `sums`, 8 rows of stride 8)
            // are in bounds.
            unsafe {
                let tiles = p.data.as_ptr().add(g * group_bytes);
                for t0 in (0..n).step_by(8) {
                    let t1 = (t0 + 8).min(n);
                    super::x86_packed::group_rows(p.ty, tiles, nb, &main[t0..t1], o.0.add(t0 * p.rows + g * 8), p.rows);
                }
                if !resid.is_empty() {
                    super::x86_packed::group_residual(p.ty, tiles, chunks, resid, o.0.add(g * 8), p.rows);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (o, g, group_bytes, chunks);
        }
    };
    if pool.current_num_threads() <= 1 || n_tasks == 1 {
        (0..n_tasks).for_each(body);
    } else {
        pool.install(|| (0..n_tasks).into_par_iter().for_each(body));
    }
}
