//! Element-wise and per-row steps of the fast CPU forward pass. Batched over
//! rows; the reference pass (`reference.rs`) keeps its own plain versions so
//! the oracle does not share code with what it checks.

use super::arch::{FfnAct, RopeStyle};
use super::config::Config;
use super::reference::rope_angle;

/// Each `dim`-row of x: x / sqrt(mean(x²) + eps) * w, in place.
pub fn rmsnorm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let dim = w.len();
    for row in x.chunks_mut(dim) {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let s = 1.0 / (ss + eps).sqrt();
        row.iter_mut().zip(w).for_each(|(v, &wi)| *v = *v * s * wi);
    }
}

/// out = rmsnorm(x) row by row.
pub fn rmsnorm_into(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    out.copy_from_slice(x);
    rmsnorm_rows(out, w, eps);
}

pub fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
    }
}

pub fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// g = act(g) * u, element-wise.
pub fn gated_act(g: &mut [f32], u: &[f32], act: FfnAct) {
    match act {
        FfnAct::Silu => g.iter_mut().zip(u).for_each(|(a, &b)| *a = *a / (1.0 + (-*a).exp()) * b),
        FfnAct::GeluTanh => g.iter_mut().zip(u).for_each(|(a, &b)| {
            let x = *a;
            *a = 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh()) * b
        }),
    }
}

/// Precomputed (cos, sin) for one position: `rope_dim / 2` pairs.
pub fn rope_table(pos: usize, base: f32, c: &Config) -> Vec<(f32, f32)> {
    (0..c.rope_dim / 2).map(|i| rope_angle(pos, i, c.rope_dim, base, c.rope_scaling)).collect()
}

/// Rotate every `head_dim` head in `row` with the table for its position.
pub fn rope_row(row: &mut [f32], head_dim: usize, table: &[(f32, f32)], style: RopeStyle) {
    let half = table.len();
    for head in row.chunks_mut(head_dim) {
        for (i, &(cos, sin)) in table.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // 8 independent accumulators: lets the compiler vectorise, fixed order.
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += ca[k] * cb[k];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// out += w * v
pub fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
    out.iter_mut().zip(v).for_each(|(o, &x)| *o += w * x);
}

/// One query head's causal attention: softmax(scale · q·K[j]) over the
/// positions `keys`, times V[j]. `kc`/`vc` hold rows of `kv_dim`/`v_dim`
/// floats per slot of the paged KV cache, position j of this sequence at
/// slot `blocks[j / BLOCK] * BLOCK + j % BLOCK`; the head reads K/V head
/// `kvh` (GQA by indexing). `dims` = (head_dim, head_dim_v, kv_dim, v_dim).
#[allow(clippy::too_many_arguments)]
pub fn attend(q: &[f32], kc: &[f32], vc: &[f32], blocks: &[u32], kvh: usize, dims: (usize, usize, usize, usize), keys: std::ops::RangeInclusive<usize>, scale: f32, out: &mut [f32]) {
    use crate::kv::BLOCK;
    let (hd, hdv, kv_dim, v_dim) = dims;
    let slot = |j: usize| blocks[j / BLOCK] as usize * BLOCK + j % BLOCK;
    let mut scores: Vec<f32> = keys.clone().map(|j| dot(q, &kc[slot(j) * kv_dim + kvh * hd..][..hd]) * scale).collect();
    softmax(&mut scores);
    out.fill(0.0);
    for (j, &sc) in keys.zip(&scores) {
        axpy(out, sc, &vc[slot(j) * v_dim + kvh * hdv..][..hdv]);
    }
}
