//! Tensor parallelism's arithmetic (issue 19): which part of a decoder's
//! weights, and of its KV cache, each of R ranks holds, Megatron-style.
//!
//! - **Column-parallel** (the output split): Q, K, V, gate and up. Rank r
//!   keeps the rows of its query heads (and their biases), of its KV heads,
//!   and of its range of the FFN. Its attention runs on its own heads with
//!   no communication, and its gated FFN on its own range.
//! - **Row-parallel** (the input split): the attention output (wo) and down.
//!   Rank r keeps the columns that meet its heads' outputs and its FFN
//!   range, so its product is a partial sum of the whole: one all-reduce
//!   after each of the two adds them up.
//! - **KV heads** are split with the query heads when there are at least as
//!   many as ranks; with fewer, every rank keeps the one KV head its query
//!   heads share (replicated: R / n_head_kv ranks hold each).
//! - **The LM head** is split by vocabulary rows (a gather of logits, or a
//!   distributed argmax / top-k); the embedding is replicated.
//!
//! A row-parallel split must fall on quantization-block boundaries of the
//! matrix (its columns are stored in blocks of 32 or 256 values), so the
//! plan takes the block sizes of wo and down. Nothing here talks to a
//! device: the GPU backend uploads each rank's [`split_rows`] /
//! [`split_cols`] and runs the collectives.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::Config;
use crate::quant::GgmlType;

/// The shapes the plan needs (a [`Config`]'s, or a test's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub head_dim_v: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
}

impl Dims {
    pub fn of(c: &Config) -> Dims {
        Dims {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            head_dim_v: c.head_dim_v,
            n_ff: c.n_ff,
            n_vocab: c.n_vocab,
        }
    }
}

/// What rank `rank` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankShard {
    pub rank: usize,
    /// Its query heads.
    pub heads: Range<usize>,
    /// The KV heads it keeps (its shard of the paged KV cache).
    pub kv_heads: Range<usize>,
    /// Its rows of gate and up, and columns of down.
    pub ffn: Range<usize>,
    /// Its rows of the LM head.
    pub vocab: Range<usize>,
}

/// How a decoder splits over `ranks.len()` ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub dims: Dims,
    pub ranks: Vec<RankShard>,
    /// Fewer KV heads than ranks: each rank keeps a copy of its one.
    pub kv_replicated: bool,
}

impl ShardPlan {
    /// The plan for `n_ranks` ranks; `wo_block` and `down_block` are the
    /// quantization block sizes of those matrices' columns
    /// ([`GgmlType::block_size`]). Errors (Unsupported) name what does not
    /// divide: query heads by ranks, ranks by KV heads (or KV heads by
    /// ranks), a rank's share of wo's or down's columns by its block.
    pub fn new(d: Dims, n_ranks: usize, wo_block: usize, down_block: usize) -> Result<ShardPlan> {
        if n_ranks == 0 {
            return Err(Error::InvalidArgument(
                "tensor parallelism over 0 ranks".into(),
            ));
        }
        if d.n_head_kv == 0
            || !d.n_head.is_multiple_of(d.n_head_kv)
            || wo_block == 0
            || down_block == 0
        {
            return Err(Error::InvalidArgument(format!(
                "shapes {d:?}, blocks {wo_block} and {down_block}"
            )));
        }
        if !d.n_head.is_multiple_of(n_ranks) {
            return Err(Error::Unsupported(format!(
                "{} query heads do not split over {n_ranks} ranks",
                d.n_head
            )));
        }
        let kv_replicated = d.n_head_kv < n_ranks;
        if (!kv_replicated && !d.n_head_kv.is_multiple_of(n_ranks))
            || (kv_replicated && !n_ranks.is_multiple_of(d.n_head_kv))
        {
            return Err(Error::Unsupported(format!(
                "{} KV heads do not split over, or replicate evenly across, {n_ranks} ranks",
                d.n_head_kv
            )));
        }
        let hr = d.n_head / n_ranks;
        if !(hr * d.head_dim_v).is_multiple_of(wo_block) {
            return Err(Error::Unsupported(format!(
                "a rank's {hr} heads are {} columns of the attention output, not whole blocks of {wo_block} values: {n_ranks} ranks cannot split it",
                hr * d.head_dim_v
            )));
        }
        if !d.n_ff.is_multiple_of(down_block) || d.n_ff / down_block < n_ranks {
            return Err(Error::Unsupported(format!("the FFN's {} columns of down are not {n_ranks} or more whole blocks of {down_block}", d.n_ff)));
        }
        let group = d.n_head / d.n_head_kv; // query heads per KV head
        let blocks = d.n_ff / down_block;
        let ranks = (0..n_ranks)
            .map(|r| {
                let heads = r * hr..(r + 1) * hr;
                let kv_heads = if kv_replicated {
                    // the rank's query heads all read one KV head
                    let kv = heads.start / group;
                    kv..kv + 1
                } else {
                    let kr = d.n_head_kv / n_ranks;
                    r * kr..(r + 1) * kr
                };
                // whole blocks of down's columns, as even as they go
                let ffn =
                    (r * blocks / n_ranks) * down_block..((r + 1) * blocks / n_ranks) * down_block;
                let vocab = r * d.n_vocab / n_ranks..(r + 1) * d.n_vocab / n_ranks;
                RankShard {
                    rank: r,
                    heads,
                    kv_heads,
                    ffn,
                    vocab,
                }
            })
            .collect();
        Ok(ShardPlan {
            dims: d,
            ranks,
            kv_replicated,
        })
    }

    /// The plan for a loaded model's weights on GPUs: the block sizes of
    /// its layers' wo and down (the coarsest over the layers), and at
    /// least 32, the group the GPU products take whole (float types too).
    pub fn for_model(
        c: &Config,
        w: &crate::model::weights::Weights,
        n_ranks: usize,
    ) -> Result<ShardPlan> {
        let block = |f: fn(&crate::model::weights::LayerWeights) -> GgmlType| {
            w.layers
                .iter()
                .map(|l| f(l).block_size())
                .max()
                .unwrap_or(1)
                .max(32)
        };
        ShardPlan::new(
            Dims::of(c),
            n_ranks,
            block(|l| l.wo.ty),
            block(|l| l.w_down.ty),
        )
    }
}

impl RankShard {
    /// Its rows of wq (and of bq).
    pub fn q_rows(&self, d: &Dims) -> Range<usize> {
        self.heads.start * d.head_dim..self.heads.end * d.head_dim
    }
    /// Its rows of wk (and of bk), and of its K cache's row.
    pub fn k_rows(&self, d: &Dims) -> Range<usize> {
        self.kv_heads.start * d.head_dim..self.kv_heads.end * d.head_dim
    }
    /// Its rows of wv (and of bv), and of its V cache's row.
    pub fn v_rows(&self, d: &Dims) -> Range<usize> {
        self.kv_heads.start * d.head_dim_v..self.kv_heads.end * d.head_dim_v
    }
    /// Its columns of wo (its heads' outputs).
    pub fn o_cols(&self, d: &Dims) -> Range<usize> {
        self.heads.start * d.head_dim_v..self.heads.end * d.head_dim_v
    }
    /// The index, among its own KV heads, that its query head `h` (a global
    /// index in `heads`) reads.
    pub fn kv_of(&self, d: &Dims, h: usize) -> usize {
        debug_assert!(self.heads.contains(&h));
        h / (d.n_head / d.n_head_kv) - self.kv_heads.start
    }
}

fn row_bytes(ty: GgmlType, cols: usize) -> Result<usize> {
    ty.row_bytes(cols as u64)
        .and_then(|b| usize::try_from(b).ok())
        .filter(|&b| b > 0)
        .ok_or_else(|| Error::InvalidArgument(format!("{ty}: {cols} columns are not whole blocks")))
}

/// Rows `r` of a (rows, cols) matrix of type `ty` stored row after row
/// (`bytes`): a column-parallel shard.
pub fn split_rows(bytes: &[u8], ty: GgmlType, cols: usize, r: Range<usize>) -> Result<&[u8]> {
    let rb = row_bytes(ty, cols)?;
    if r.start > r.end || r.end.checked_mul(rb).is_none_or(|end| end > bytes.len()) {
        return Err(Error::InvalidArgument(format!(
            "rows {r:?} of a {ty} matrix of {} rows",
            bytes.len() / rb
        )));
    }
    Ok(&bytes[r.start * rb..r.end * rb])
}

/// Columns `c` of every row of a (rows, cols) matrix of type `ty`: a
/// row-parallel shard, (rows, c.len()) in the same type. `c` must fall on
/// block boundaries.
pub fn split_cols(bytes: &[u8], ty: GgmlType, cols: usize, c: Range<usize>) -> Result<Vec<u8>> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let rb = row_bytes(ty, cols)?;
    if !c.start.is_multiple_of(bs)
        || !c.end.is_multiple_of(bs)
        || c.start > c.end
        || c.end > cols
        || !bytes.len().is_multiple_of(rb)
    {
        return Err(Error::InvalidArgument(format!(
            "columns {c:?} of a {ty} matrix of {cols} columns: not whole blocks of {bs}"
        )));
    }
    let (b0, b1) = (c.start / bs * ts, c.end / bs * ts);
    Ok(bytes
        .chunks_exact(rb)
        .flat_map(|row| &row[b0..b1])
        .copied()
        .collect())
}
