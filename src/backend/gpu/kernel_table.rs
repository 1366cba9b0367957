//! GENERATED from `kernels/` by `tests/kernel_table.rs`: do not edit by hand.
//! Regenerate (and commit) with
//! `FORGE_UPDATE_KERNEL_TABLE=1 cargo test --release --test kernel_table`;
//! that test fails while this file and the kernels disagree.
//!
//! The kernels' integer constants (`#define NAME <decimal>`; not the
//! vendor-dependent ones: `WARP_SIZE`, `FORGE_*`, kernels/vendor.h's),
//! and every kernel of the module with the kind of each parameter, which
//! `Device::launch` checks every launch's arguments against.

/// `APM_K` in kernels/attention.cu.
pub const APM_K: usize = 64;

/// `APM_MAX_SPLITS` in kernels/attention.cu.
pub const APM_MAX_SPLITS: usize = 256;

/// `APM_MERGE` in kernels/attention.cu.
pub const APM_MERGE: usize = 256;

/// `APM_MERGE_W` in kernels/attention.cu.
pub const APM_MERGE_W: usize = 8;

/// `APM_MINB64` in kernels/attention.cu (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const APM_MINB64: usize = 4;

/// `APM_Q` in kernels/attention.cu.
pub const APM_Q: usize = 64;

/// `ATR_MIN` in kernels/attention.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const ATR_MIN: usize = 64;

/// `ATR_MINB` in kernels/attention.cu (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const ATR_MINB: usize = 4;

/// `ATR_U` in kernels/attention.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const ATR_U: usize = 8;

/// `ATR_WARPS` in kernels/attention.cu.
pub const ATR_WARPS: usize = 4;

/// `ATT_BT_SHARED` in kernels/attention.cu.
pub const ATT_BT_SHARED: usize = 128;

/// `ATT_DWARPS` in kernels/attention.cu (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const ATT_DWARPS: usize = 8;

/// `ATT_MAX_SPLITS` in kernels/attention.cu.
pub const ATT_MAX_SPLITS: usize = 64;

/// `ATT_WARPS` in kernels/attention.cu.
pub const ATT_WARPS: usize = 4;

/// `KV_BLOCK` in kernels/rope.cu.
pub const KV_BLOCK: usize = 16;

/// `MMF_BM32` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override it).
pub const MMF_BM32: usize = 128;

/// `MMF_BM64` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override it).
pub const MMF_BM64: usize = 128;

/// `MMF_KC` in kernels/mmf.cu.
pub const MMF_KC: usize = 8;

/// `MMF_MINB32` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMF_MINB32: usize = 2;

/// `MMF_MINB64` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMF_MINB64: usize = 1;

/// `MMF_MIN_PER` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMF_MIN_PER: usize = 4;

/// `MMF_STAGES32` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMF_STAGES32: usize = 3;

/// `MMF_STAGES64` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMF_STAGES64: usize = 3;

/// `MMF_WARPS32` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMF_WARPS32: usize = 8;

/// `MMF_WARPS64` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMF_WARPS64: usize = 8;

/// `MMF_WM32` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override it).
pub const MMF_WM32: usize = 32;

/// `MMF_WM64` in kernels/mmf.cu (the default: `#ifndef`-guarded, a compile option may override it).
pub const MMF_WM64: usize = 32;

/// `MMQ_EARLY` in kernels/mmq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMQ_EARLY: usize = 1;

/// `MMQ_KC` in kernels/mmq.cu (the default: `#ifndef`-guarded, a compile option may override it).
pub const MMQ_KC: usize = 32;

/// `MMQ_KC_SMALL` in kernels/mmq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMQ_KC_SMALL: usize = 64;

/// `MMQ_ROWS` in kernels/mmq.cu.
pub const MMQ_ROWS: usize = 16;

/// `MMQ_RT_LARGE` in kernels/mmq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMQ_RT_LARGE: usize = 1;

/// `MMQ_RT_SMALL` in kernels/mmq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMQ_RT_SMALL: usize = 1;

/// `MMQ_SMEM` in kernels/mmq.cu.
pub const MMQ_SMEM: usize = 46080;

/// `MMQ_STAGES` in kernels/mmq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMQ_STAGES: usize = 3;

/// `MMQ_WARPS` in kernels/mmq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMQ_WARPS: usize = 8;

/// `MMVQ_GLU_ROWS` in kernels/mmvq.cu (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const MMVQ_GLU_ROWS: usize = 2;

/// `MMVQ_MAXT` in kernels/mmvq.cu.
pub const MMVQ_MAXT: usize = 8;

/// `MMVQ_PREFETCH` in kernels/mmvq.cu (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const MMVQ_PREFETCH: usize = 1;

/// `MMVQ_PREP_BATCH` in kernels/mmvq.cu (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const MMVQ_PREP_BATCH: usize = 8;

/// `MMVQ_ROWS` in kernels/mmvq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMVQ_ROWS: usize = 4;

/// `MMVQ_STEP` in kernels/mmvq.cu (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMVQ_STEP: usize = 2;

/// `MMVQ_THREADS` in kernels/mmvq.cu.
pub const MMVQ_THREADS: usize = 128;

/// `MMVQ_WX_MAXCOLS` in kernels/mmvq.cu.
pub const MMVQ_WX_MAXCOLS: usize = 2048;

/// `MMVQ_XV` in kernels/iquant.h (the default: `#ifndef`-guarded, a compile option may override
/// it).
pub const MMVQ_XV: usize = 1;

/// `MMVQ_X_MAXCOLS` in kernels/mmvq.cu (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const MMVQ_X_MAXCOLS: usize = 8192;

/// `MMVQ_X_THREADS` in kernels/mmvq.cu.
pub const MMVQ_X_THREADS: usize = 256;

/// `MMV_MAXT` in kernels/matvec.cu.
pub const MMV_MAXT: usize = 8;

/// `MMV_ROWS` in kernels/matvec.cu.
pub const MMV_ROWS: usize = 16;

/// `MMV_THREADS` in kernels/matvec.cu.
pub const MMV_THREADS: usize = 256;

/// `Q4_0X8_PARTS` in kernels/iquant.h (the default: `#ifndef`-guarded, a compile option may
/// override it).
pub const Q4_0X8_PARTS: usize = 2;

/// `RMS_VEC` in kernels/norm.cu.
pub const RMS_VEC: usize = 8;

/// `TOPK1_THREADS` in kernels/sample.cu.
pub const TOPK1_THREADS: usize = 256;

/// `TOPK_MAX` in kernels/sample.cu.
pub const TOPK_MAX: usize = 256;

/// `TOPK_PARTS` in kernels/sample.cu.
pub const TOPK_PARTS: usize = 64;

/// `TOPK_PART_MIN` in kernels/sample.cu.
pub const TOPK_PART_MIN: usize = 2048;

/// `TOPK_THREADS` in kernels/sample.cu.
pub const TOPK_THREADS: usize = 512;

/// The kind of a kernel parameter: which [`super::runtime::Arg`] passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// A pointer (`T*`): `Arg::Ptr`.
    Ptr,
    /// `int`, `i32`, `u32`, `unsigned`: `Arg::I32`.
    I32,
    /// `float`: `Arg::F32`.
    F32,
    /// `u64`, `unsigned long long`: `Arg::U64`.
    U64,
}

use Param::*;

/// Every kernel of the module (255 in all; on every target: some exist only
/// on some, see `tests/kernel_table.rs`) with its parameters, sorted by name
/// (binary search).
pub const KERNELS: &[(&str, &[Param])] = &[
    (
        "attn_d128",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, I32, F32, I32, Ptr,
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, F32, F32,
        ],
    ),
    (
        "attn_d256",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, I32, F32, I32, Ptr,
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, F32, F32,
        ],
    ),
    (
        "attn_d64",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, I32, F32, I32, Ptr,
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, F32, F32,
        ],
    ),
    (
        "attn_dr128",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, F32, I32,
        ],
    ),
    (
        "attn_dr256",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, F32, I32,
        ],
    ),
    (
        "attn_dr64",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, F32, I32,
        ],
    ),
    (
        "attn_prefill",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, I32, I32, F32, I32,
        ],
    ),
    ("attn_prefill_merge", &[Ptr, Ptr, I32, I32, I32]),
    ("attn_prefill_merge_w", &[Ptr, Ptr, I32, I32, I32]),
    (
        "attn_prefill_mma128",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, F32, I32, I32,
        ],
    ),
    (
        "attn_prefill_mma64",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, F32, I32, I32,
        ],
    ),
    ("dequant_f16_bf16", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_f16", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_f32", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_iq4_nl", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_iq4_xs", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_mxfp4", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q2_k", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q3_k", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q4_0", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q4_0x8", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q4_1", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q4_k", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q5_0", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q5_0x4", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q5_1", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q5_k", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q6_k", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q8_0", &[Ptr, Ptr, I32, I32]),
    ("dequant_f16_q8_0x4", &[Ptr, Ptr, I32, I32]),
    ("f32_to_f16", &[Ptr, Ptr, U64]),
    ("f32_to_f16_split", &[Ptr, Ptr, Ptr, U64]),
    ("get_rows_bf16", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_f16", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_f32", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_iq4_nl", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_iq4_xs", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_mxfp4", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q2_k", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q3_k", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q4_0", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q4_0x8", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q4_1", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q4_k", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q5_0", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q5_0x4", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q5_1", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q5_k", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q6_k", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q8_0", &[Ptr, Ptr, Ptr, I32, F32]),
    ("get_rows_q8_0x4", &[Ptr, Ptr, Ptr, I32, F32]),
    ("glu", &[Ptr, Ptr, U64, I32]),
    ("matmul_bf16", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_f16", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_f32", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_iq4_nl", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_iq4_xs", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_mxfp4", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q2_k", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q3_k", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q4_0", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q4_0x8", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q4_1", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q4_k", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q5_0", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q5_0x4", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q5_1", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q5_k", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q6_k", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q8_0", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("matmul_q8_0x4", &[Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "matvec_bf16",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_f16",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_f32",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_iq4_nl",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_iq4_xs",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_mxfp4",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q2_k",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q3_k",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q4_0",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q4_0x8",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q4_1",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q4_k",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q5_0",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q5_0x4",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q5_1",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q5_k",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q6_k",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q8_0",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    (
        "matvec_q8_0x4",
        &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32, Ptr, F32],
    ),
    ("mmf_q4_0x8_32", &[Ptr, Ptr, Ptr, I32, I32, I32, I32, I32]),
    ("mmf_q4_0x8_64", &[Ptr, Ptr, Ptr, I32, I32, I32, I32, I32]),
    (
        "mmq_q4_0_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_0_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_0_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q4_0_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q4_0x8_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_0x8_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_0x8_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_0x8_8",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_1_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_1_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_1_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q4_1_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q4_k_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_k_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q4_k_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q4_k_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q5_0_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_0_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_0_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q5_0_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q5_0x4_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_0x4_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_0x4_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_0x4_8",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_1_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_1_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_1_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q5_1_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q5_k_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_k_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q5_k_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q5_k_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q6_k_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q6_k_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q6_k_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q6_k_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q8_0_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q8_0_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q8_0_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmq_q8_0_8", &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmq_q8_0x4_16",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q8_0x4_32",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q8_0x4_64",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmq_q8_0x4_8",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    ("mmvf_bf16", &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("mmvf_bf16_n", &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("mmvf_f16", &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("mmvf_f16_n", &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("mmvf_f32", &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    ("mmvf_f32_n", &[Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32]),
    (
        "mmvq_pair_q4_k_q5_k",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_pair_q4_k_q6_k",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_pair_q5_0_q8_0",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_pair_q5_0x4_q8_0x4",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_pair_q5_k_q6_k",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_0",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_0_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_0_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q4_0_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q4_0x8",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0x8_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0x8_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0x8_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_0x8_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_0x8_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0x8_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_0x8_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q4_0x8_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q4_1",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_1_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_1_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_1_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_1_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_1_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_1_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_1_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q4_1_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q4_k",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_k_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_k_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_k_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_k_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q4_k_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_k_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q4_k_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q4_k_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q5_0",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_0_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_0_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q5_0_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q5_0x4",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0x4_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0x4_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0x4_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_0x4_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_0x4_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0x4_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_0x4_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q5_0x4_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q5_1",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_1_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_1_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_1_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_1_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_1_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_1_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_1_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q5_1_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q5_k",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_k_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_k_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_k_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_k_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q5_k_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_k_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q5_k_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q5_k_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q6_k",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q6_k_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q6_k_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q6_k_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q6_k_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q6_k_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q6_k_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q6_k_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q6_k_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q8_0",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q8_0_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q8_0_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q8_0_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "mmvq_q8_0x4",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0x4_glu",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0x4_glu_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0x4_glu_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q8_0x4_glu_wx2",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    (
        "mmvq_q8_0x4_n",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0x4_w",
        &[Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32, I32],
    ),
    (
        "mmvq_q8_0x4_wx",
        &[Ptr, Ptr, Ptr, Ptr, F32, Ptr, I32, I32, I32],
    ),
    ("mmvq_q8_0x4_x", &[Ptr, Ptr, Ptr, I32, I32, I32]),
    (
        "qkv_post",
        &[
            Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, I32, I32, I32,
            I32, I32, I32, F32, F32,
        ],
    ),
    ("quant_act", &[Ptr, Ptr, F32, I32, Ptr, Ptr, Ptr, Ptr, I32]),
    ("rmsnorm", &[Ptr, Ptr, Ptr, I32, F32, I32]),
    ("rmsnorm_f16", &[Ptr, Ptr, Ptr, I32, F32]),
    ("rmsnorm_f16_split", &[Ptr, Ptr, Ptr, Ptr, I32, F32]),
    ("topk1_merge", &[Ptr, I32, I32, Ptr, Ptr, Ptr]),
    ("topk1_part", &[Ptr, I32, Ptr]),
    ("topk_rows", &[Ptr, I32, I32, Ptr, Ptr, Ptr]),
    ("zero_f32", &[Ptr, U64]),
];
