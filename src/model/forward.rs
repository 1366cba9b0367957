//! The fast CPU forward pass: a batch of tokens through every layer at once
//! (prefill is matrix × matrix; decode is the same code with one token),
//! quantized weights multiplied with 16-bit quantized activations
//! (`backend::cpu::matmul`).

use rayon::prelude::*;

use super::arch::LayerKind;
use super::ops;
use super::Session;
use crate::backend::cpu::matmul::{matmul, SyncPtr};
use crate::error::Result;
use crate::quant;

/// Which logits an evaluation returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// The last position's: n_vocab floats.
    Last,
    /// Every position's: n_tokens × n_vocab floats.
    All,
}

pub(super) fn forward(s: &mut Session, tokens: &[u32], want: Logits) -> Result<Vec<f32>> {
    let model = s.model.clone();
    let (c, w, f, pool) = (&model.cfg, &model.weights, &model.file, &model.pool);
    let n = tokens.len();
    let pos0 = s.pos;
    let (dim, hd, hdv) = (c.n_embd, c.head_dim, c.head_dim_v);
    let (q_dim, kv_dim, v_dim) = (c.q_dim(), c.kv_dim(), c.v_dim());
    let group = c.n_head / c.n_head_kv;
    let mm = |m: &super::weights::Matrix, x: &[f32], out: &mut [f32]| matmul(pool, m, m.bytes(f), x, n, out);

    // x (n, dim): embedding rows
    let mut x = vec![0f32; n * dim];
    for (t, &tok) in tokens.iter().enumerate() {
        quant::dequantize(w.token_embd.ty, w.token_embd.row(f, tok as usize), &mut x[t * dim..(t + 1) * dim])?;
    }
    if c.arch.embed_scale_sqrt {
        let sc = (dim as f32).sqrt();
        x.iter_mut().for_each(|v| *v *= sc);
    }

    let mut xb = vec![0f32; n * dim];
    let mut q = vec![0f32; n * q_dim];
    let mut k = vec![0f32; n * kv_dim];
    let mut v = vec![0f32; n * v_dim];
    let mut att = vec![0f32; n * c.n_head * hdv];
    let mut branch = vec![0f32; n * dim];
    let mut g = vec![0f32; n * c.n_ff];
    let mut u = vec![0f32; n * c.n_ff];
    let tables_global: Vec<_> = (0..n).map(|t| ops::rope_table(pos0 + t, c.rope_base, c)).collect();
    let tables_local: Vec<_> = match c.layer_kinds.contains(&LayerKind::Local) {
        true => (0..n).map(|t| ops::rope_table(pos0 + t, c.rope_base_local, c)).collect(),
        false => Vec::new(),
    };

    for (il, l) in w.layers.iter().enumerate() {
        // ---- attention ----
        ops::rmsnorm_into(&mut xb, &x, &l.attn_norm, c.rms_eps);
        mm(&l.wq, &xb, &mut q);
        mm(&l.wk, &xb, &mut k);
        mm(&l.wv, &xb, &mut v);
        if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
            ops::add_rows(&mut q, bq);
            ops::add_rows(&mut k, bk);
            ops::add_rows(&mut v, bv);
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            ops::rmsnorm_rows(&mut q, qn, c.rms_eps);
            ops::rmsnorm_rows(&mut k, kn, c.rms_eps);
        }
        let local = c.layer_kinds[il] == LayerKind::Local;
        let tables = if local { &tables_local } else { &tables_global };
        for t in 0..n {
            ops::rope_row(&mut q[t * q_dim..(t + 1) * q_dim], hd, &tables[t], c.arch.rope);
            ops::rope_row(&mut k[t * kv_dim..(t + 1) * kv_dim], hd, &tables[t], c.arch.rope);
        }
        let kc = &mut s.k_cache[il * s.n_ctx * kv_dim..(il + 1) * s.n_ctx * kv_dim];
        kc[pos0 * kv_dim..(pos0 + n) * kv_dim].copy_from_slice(&k);
        let vc = &mut s.v_cache[il * s.n_ctx * v_dim..(il + 1) * s.n_ctx * v_dim];
        vc[pos0 * v_dim..(pos0 + n) * v_dim].copy_from_slice(&v);
        let (kc, vc) = (&*kc, &*vc);
        let window = if local { c.sliding_window } else { None };
        // one task per (token, head); GQA by indexing the shared K/V head
        let aptr = SyncPtr(att.as_mut_ptr());
        let q_ref = &q;
        let task = |job: usize| {
            let a = aptr;
            let (t, h) = (job / c.n_head, job % c.n_head);
            let p = pos0 + t;
            let first = window.map_or(0, |wnd| (p + 1).saturating_sub(wnd));
            let qh = &q_ref[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
            // SAFETY: each job writes its own (t, h) slice of att.
            let out = unsafe { std::slice::from_raw_parts_mut(a.0.add((t * c.n_head + h) * hdv), hdv) };
            ops::attend(qh, kc, vc, h / group, (hd, hdv, kv_dim, v_dim), first..=p, c.attn_scale, out);
        };
        if model.n_threads > 1 {
            pool.install(|| (0..n * c.n_head).into_par_iter().for_each(task));
        } else {
            (0..n * c.n_head).for_each(task);
        }
        mm(&l.wo, &att, &mut branch);
        if let Some(pn) = &l.post_attn_norm {
            ops::rmsnorm_rows(&mut branch, pn, c.rms_eps);
        }
        ops::add(&mut x, &branch);

        // ---- FFN ----
        ops::rmsnorm_into(&mut xb, &x, &l.ffn_norm, c.rms_eps);
        mm(&l.w_gate, &xb, &mut g);
        mm(&l.w_up, &xb, &mut u);
        ops::gated_act(&mut g, &u, c.arch.ffn_act);
        mm(&l.w_down, &g, &mut branch);
        if let Some(pn) = &l.post_ffn_norm {
            ops::rmsnorm_rows(&mut branch, pn, c.rms_eps);
        }
        ops::add(&mut x, &branch);
    }

    // ---- output ----
    let rows: &[f32] = match want {
        Logits::None => return Ok(Vec::new()),
        Logits::Last => &x[(n - 1) * dim..],
        Logits::All => &x,
    };
    let m = rows.len() / dim;
    let mut xn = rows.to_vec();
    ops::rmsnorm_rows(&mut xn, &w.output_norm, c.rms_eps);
    let mut logits = vec![0f32; m * c.n_vocab];
    matmul(pool, &w.output, w.output.bytes(f), &xn, m, &mut logits);
    Ok(logits)
}
