//! Issue 19's sharding arithmetic on the CPU: the plan partitions heads, KV
//! heads, the FFN and the vocabulary exactly; split quantized matrices,
//! multiplied and reduced by hand, equal the whole product; and a whole
//! attention + FFN block and the LM head computed rank by rank (each rank
//! only its shard, one sum after wo and one after down, a gather or a
//! distributed argmax for the logits) equal the block computed whole; and
//! the whole reference pass of real models computed rank by rank
//! (`ShardedReference`) equals the whole pass.

mod common;

use rocmforge::quant::{dequantize_vec, GgmlType};
use rocmforge::shard::{split_cols, split_rows, Dims, ShardPlan};
use rocmforge::twin::random_tensor;

/// Published shapes: Qwen2.5-0.5B, a Llama-2-7B, and issue 19's 70B twin.
const QWEN: Dims = Dims {
    n_head: 14,
    n_head_kv: 2,
    head_dim: 64,
    head_dim_v: 64,
    n_ff: 4864,
    n_vocab: 151_936,
};
const L7B: Dims = Dims {
    n_head: 32,
    n_head_kv: 32,
    head_dim: 128,
    head_dim_v: 128,
    n_ff: 11_008,
    n_vocab: 32_000,
};
const L70B: Dims = Dims {
    n_head: 64,
    n_head_kv: 8,
    head_dim: 128,
    head_dim_v: 128,
    n_ff: 28_672,
    n_vocab: 32_000,
};

/// The ranges partition 0..n in order.
fn partitions(ranges: &[std::ops::Range<usize>], n: usize) -> bool {
    ranges.first().is_some_and(|r| r.start == 0)
        && ranges.windows(2).all(|w| w[0].end == w[1].start)
        && ranges.last().is_some_and(|r| r.end == n)
}

#[test]
fn plans_partition_heads_ffn_and_vocabulary() {
    for (name, d, wo_block, down_block, ok_ranks, bad_ranks) in [
        (
            "qwen2.5-0.5b",
            QWEN,
            32,
            256,
            vec![1, 2, 14],
            vec![3, 4, 7, 28],
        ),
        (
            "llama-7b",
            L7B,
            32,
            32,
            vec![1, 2, 4, 8, 16, 32],
            vec![3, 5, 64],
        ),
        (
            "llama-70b",
            L70B,
            32,
            256,
            vec![1, 2, 4, 8, 16, 32, 64],
            vec![3, 6, 128],
        ),
    ] {
        for r in ok_ranks {
            let p = ShardPlan::new(d, r, wo_block, down_block)
                .unwrap_or_else(|e| panic!("{name} over {r}: {e}"));
            assert_eq!(p.ranks.len(), r);
            let heads: Vec<_> = p.ranks.iter().map(|s| s.heads.clone()).collect();
            let ffn: Vec<_> = p.ranks.iter().map(|s| s.ffn.clone()).collect();
            let vocab: Vec<_> = p.ranks.iter().map(|s| s.vocab.clone()).collect();
            assert!(
                partitions(&heads, d.n_head) && heads.iter().all(|h| h.len() == d.n_head / r),
                "{name}/{r}: heads {heads:?}"
            );
            assert!(
                partitions(&ffn, d.n_ff)
                    && ffn
                        .iter()
                        .all(|f| f.start % down_block == 0 && !f.is_empty()),
                "{name}/{r}: ffn {ffn:?}"
            );
            // as even as whole blocks allow
            let (lo, hi) = (
                ffn.iter().map(|f| f.len()).min().unwrap(),
                ffn.iter().map(|f| f.len()).max().unwrap(),
            );
            assert!(hi - lo <= down_block, "{name}/{r}: ffn shares {lo}..{hi}");
            assert!(partitions(&vocab, d.n_vocab), "{name}/{r}: vocab {vocab:?}");
            assert_eq!(p.kv_replicated, d.n_head_kv < r);
            let group = d.n_head / d.n_head_kv;
            for s in &p.ranks {
                // every query head finds its KV head among the rank's own
                for h in s.heads.clone() {
                    assert!(
                        s.kv_heads.contains(&(h / group)),
                        "{name}/{r}: head {h} reads KV head {} outside {:?}",
                        h / group,
                        s.kv_heads
                    );
                    assert_eq!(s.kv_of(&d, h), h / group - s.kv_heads.start);
                }
                assert_eq!(s.o_cols(&d).len() % wo_block, 0);
                assert_eq!(s.q_rows(&d).len(), s.heads.len() * d.head_dim);
                assert_eq!(s.k_rows(&d).len(), s.kv_heads.len() * d.head_dim);
            }
            if p.kv_replicated {
                // each KV head kept by r / n_head_kv ranks
                for kv in 0..d.n_head_kv {
                    assert_eq!(
                        p.ranks.iter().filter(|s| s.kv_heads.contains(&kv)).count(),
                        r / d.n_head_kv,
                        "{name}/{r}: copies of KV head {kv}"
                    );
                }
            } else {
                let kv: Vec<_> = p.ranks.iter().map(|s| s.kv_heads.clone()).collect();
                assert!(partitions(&kv, d.n_head_kv), "{name}/{r}: kv {kv:?}");
            }
        }
        for r in bad_ranks {
            let e = ShardPlan::new(d, r, wo_block, down_block)
                .expect_err(&format!("{name} over {r} ranks should not split"));
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{r} ranks")),
                "{name}/{r}: the error does not say why: {msg}"
            );
        }
    }
    // wo's columns per rank must be whole blocks: 7 heads of 64 = 448 values are not whole blocks of 256
    let e = ShardPlan::new(QWEN, 2, 256, 256).unwrap_err().to_string();
    assert!(
        e.contains("448 columns of the attention output") && e.contains("blocks of 256"),
        "{e}"
    );
    assert!(ShardPlan::new(QWEN, 0, 32, 32).is_err());
    // query heads that do not group evenly over the KV heads are refused
    assert!(ShardPlan::new(Dims { n_head_kv: 4, ..QWEN }, 2, 32, 32).is_err());
}

fn rng(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// y = W x for W (rows, cols) row-major, in f64.
fn matvec(w: &[f32], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            w[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b)
                .sum()
        })
        .collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn split_quantized_matrices_multiply_and_reduce_to_the_whole() {
    use GgmlType::*;
    for ty in [F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
        let bs = ty.block_size();
        let (rows, cols) = (40, 4 * bs.max(32));
        let w = random_tensor(ty, rows * cols, 1.0, 7).unwrap();
        let whole = dequantize_vec(ty, &w).unwrap();
        let mut r = rng(11);
        let x: Vec<f64> = (0..cols).map(|_| r()).collect();
        let y = matvec(&whole, rows, cols, &x);
        for n in [1, 2, 4] {
            // column-parallel: each rank's rows; their outputs side by side are the whole
            let mut cat = Vec::new();
            for k in 0..n {
                let part = split_rows(&w, ty, cols, k * rows / n..(k + 1) * rows / n).unwrap();
                let d = dequantize_vec(ty, part).unwrap();
                cat.extend(matvec(
                    &d,
                    part.len() / ty.row_bytes(cols as u64).unwrap() as usize,
                    cols,
                    &x,
                ));
            }
            assert_eq!(cat, y, "{ty}: {n} row shards");
            // row-parallel: each rank's block-aligned columns times its part of x; the sum is the whole
            let blocks = cols / bs;
            let mut sum = vec![0f64; rows];
            for k in 0..n {
                let c = (k * blocks / n) * bs..((k + 1) * blocks / n) * bs;
                let part = split_cols(&w, ty, cols, c.clone()).unwrap();
                let d = dequantize_vec(ty, &part).unwrap();
                for (s, v) in sum.iter_mut().zip(matvec(&d, rows, c.len(), &x[c])) {
                    *s += v;
                }
            }
            assert!(
                rel(&sum, &y) < 1e-12,
                "{ty}: {n} column shards: rel {:e}",
                rel(&sum, &y)
            );
        }
        if bs > 1 {
            assert!(
                split_cols(&w, ty, cols, 1..bs + 1).is_err(),
                "{ty}: a split inside a block must be refused"
            );
        }
        assert!(split_rows(&w, ty, cols, 0..rows + 1).is_err());
    }
}

/// A decoder block (GQA attention over `t` causal positions, then a gated
/// SiLU FFN, residuals) and the LM head, f64, from f32 weights.
struct Block {
    d: Dims,
    n_embd: usize,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    wg: Vec<f32>,
    wu: Vec<f32>,
    wd: Vec<f32>,
    head: Vec<f32>,
}

/// Rows `r` of a row-major (.., cols) f32 matrix.
fn rows_of(w: &[f32], cols: usize, r: std::ops::Range<usize>) -> Vec<f32> {
    w[r.start * cols..r.end * cols].to_vec()
}

/// Columns `c` of a row-major (rows, cols) f32 matrix.
fn cols_of(w: &[f32], cols: usize, c: std::ops::Range<usize>) -> Vec<f32> {
    w.chunks_exact(cols)
        .flat_map(|row| row[c.clone()].to_vec())
        .collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

impl Block {
    fn new(d: Dims, n_embd: usize) -> Block {
        let mut r = rng(3);
        let mut m = |n: usize, s: f64| (0..n).map(|_| (r() * s) as f32).collect::<Vec<f32>>();
        let (q, k, v) = (
            d.n_head * d.head_dim,
            d.n_head_kv * d.head_dim,
            d.n_head_kv * d.head_dim_v,
        );
        let s = 1.0 / (n_embd as f64).sqrt();
        Block {
            d,
            n_embd,
            wq: m(q * n_embd, s),
            wk: m(k * n_embd, s),
            wv: m(v * n_embd, s),
            wo: m(n_embd * d.n_head * d.head_dim_v, s),
            wg: m(d.n_ff * n_embd, s),
            wu: m(d.n_ff * n_embd, s),
            wd: m(n_embd * d.n_ff, 1.0 / (d.n_ff as f64).sqrt()),
            head: m(d.n_vocab * n_embd, s),
        }
    }

    /// One rank's share of the block for positions xs (t, n_embd): its
    /// heads' attention through its columns of wo, and its FFN range
    /// through its columns of down; the two partial sums (before the
    /// all-reduces). The whole block is the plan of one rank.
    fn rank(
        &self,
        s: &rocmforge::shard::RankShard,
        xs: &[Vec<f64>],
        attn_in: Option<&[Vec<f64>]>,
    ) -> Vec<Vec<f64>> {
        let (d, e) = (&self.d, self.n_embd);
        let (hd, hdv) = (d.head_dim, d.head_dim_v);
        if let Some(h) = attn_in {
            // FFN of the post-attention residual h
            let (g, u) = (
                rows_of(&self.wg, e, s.ffn.clone()),
                rows_of(&self.wu, e, s.ffn.clone()),
            );
            let dn = cols_of(&self.wd, d.n_ff, s.ffn.clone());
            return h
                .iter()
                .map(|x| {
                    let (gv, uv) = (matvec(&g, s.ffn.len(), e, x), matvec(&u, s.ffn.len(), e, x));
                    let a: Vec<f64> = gv.iter().zip(&uv).map(|(&a, &b)| silu(a) * b).collect();
                    matvec(&dn, e, s.ffn.len(), &a)
                })
                .collect();
        }
        let wq = rows_of(&self.wq, e, s.q_rows(d));
        let wk = rows_of(&self.wk, e, s.k_rows(d));
        let wv = rows_of(&self.wv, e, s.v_rows(d));
        let wo = cols_of(&self.wo, d.n_head * hdv, s.o_cols(d));
        let q: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| matvec(&wq, s.q_rows(d).len(), e, x))
            .collect();
        let k: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| matvec(&wk, s.k_rows(d).len(), e, x))
            .collect();
        let v: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| matvec(&wv, s.v_rows(d).len(), e, x))
            .collect();
        (0..xs.len())
            .map(|t| {
                let mut att = vec![0f64; s.heads.len() * hdv];
                for (i, h) in s.heads.clone().enumerate() {
                    let kv = s.kv_of(d, h);
                    let qh = &q[t][i * hd..(i + 1) * hd];
                    let sc: Vec<f64> = (0..=t)
                        .map(|p| {
                            qh.iter()
                                .zip(&k[p][kv * hd..(kv + 1) * hd])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    for (p, x) in sc.iter().enumerate() {
                        let w = (x - m).exp() / z;
                        for j in 0..hdv {
                            att[i * hdv + j] += w * v[p][kv * hdv + j];
                        }
                    }
                }
                matvec(&wo, e, s.heads.len() * hdv, &att)
            })
            .collect()
    }

    /// The block over `ranks` ranks: attention partials summed (the first
    /// all-reduce) into the residual, FFN partials summed (the second),
    /// then the LM head's vocabulary shards: the logits gathered, and the
    /// greedy token by a distributed argmax.
    fn run(&self, plan: &ShardPlan, xs: &[Vec<f64>]) -> (Vec<Vec<f64>>, Vec<usize>) {
        let e = self.n_embd;
        let reduce = |parts: Vec<Vec<Vec<f64>>>, base: &[Vec<f64>]| -> Vec<Vec<f64>> {
            base.iter()
                .enumerate()
                .map(|(t, b)| {
                    (0..e)
                        .map(|j| b[j] + parts.iter().map(|p| p[t][j]).sum::<f64>())
                        .collect()
                })
                .collect()
        };
        let h = reduce(
            plan.ranks.iter().map(|s| self.rank(s, xs, None)).collect(),
            xs,
        );
        let out = reduce(
            plan.ranks
                .iter()
                .map(|s| self.rank(s, xs, Some(&h)))
                .collect(),
            &h,
        );
        let mut logits = vec![Vec::new(); xs.len()];
        let mut best = vec![(f64::MIN, 0usize); xs.len()];
        for s in &plan.ranks {
            let w = rows_of(&self.head, e, s.vocab.clone());
            for (t, x) in out.iter().enumerate() {
                let l = matvec(&w, s.vocab.len(), e, x);
                // the rank's best (value, global id); the reduce keeps the larger, the lower id at a tie
                let (i, &v) =
                    l.iter()
                        .enumerate()
                        .fold((0, &f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
                if v > best[t].0 {
                    best[t] = (v, s.vocab.start + i);
                }
                logits[t].extend(l);
            }
        }
        (logits, best.iter().map(|b| b.1).collect())
    }
}

#[test]
fn a_block_computed_rank_by_rank_equals_the_whole() {
    // 8 query heads over 2 KV heads: 1 and 2 ranks split the KV heads, 4 and 8 replicate them
    let d = Dims {
        n_head: 8,
        n_head_kv: 2,
        head_dim: 16,
        head_dim_v: 8,
        n_ff: 256,
        n_vocab: 300,
    };
    let b = Block::new(d, 64);
    let mut r = rng(5);
    let xs: Vec<Vec<f64>> = (0..5).map(|_| (0..64).map(|_| r()).collect()).collect();
    let whole = ShardPlan::new(d, 1, 8, 32).unwrap();
    let (want, want_ids) = b.run(&whole, &xs);
    for n in [2, 4, 8] {
        let plan = ShardPlan::new(d, n, 8, 32).unwrap();
        assert_eq!(plan.kv_replicated, n > 2);
        let (got, ids) = b.run(&plan, &xs);
        for t in 0..xs.len() {
            let e = rel(&got[t], &want[t]);
            assert!(e < 1e-12, "{n} ranks, position {t}: logits rel {e:e}");
        }
        let argmax: Vec<usize> = want
            .iter()
            .map(|l| {
                l.iter()
                    .enumerate()
                    .fold((0, f64::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
                    .0
            })
            .collect();
        assert_eq!(ids, argmax, "{n} ranks: the distributed argmax");
        assert_eq!(ids, want_ids);
    }
}

/// The plan of the real SmolLM2-135M (9 query heads over 3 KV heads, Q4_1
/// wo and down): 3 ranks split everything, 9 replicate nothing they cannot
/// (9 % 3 == 0), 2 and 4 do not divide the heads.
#[test]
fn the_plan_of_a_real_model() {
    use rocmforge::model::{LoadOptions, Model};
    let m = Model::load(
        common::model("SmolLM2-135M-Instruct.Q4_1.gguf"),
        LoadOptions {
            n_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let p = ShardPlan::for_model(&m.cfg, &m.weights, 3).unwrap();
    assert_eq!((p.dims.n_head, p.dims.n_head_kv), (9, 3));
    assert!(
        !p.kv_replicated
            && p.ranks
                .iter()
                .all(|s| s.heads.len() == 3 && s.kv_heads.len() == 1)
    );
    assert!(ShardPlan::for_model(&m.cfg, &m.weights, 9).is_ok_and(|p| p.kv_replicated));
    for n in [2, 4] {
        let e = ShardPlan::for_model(&m.cfg, &m.weights, n)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("9 query heads") && e.contains(&format!("{n} ranks")),
            "{e}"
        );
    }
}

/// The whole f32 reference pass and the same pass rank by rank
/// (`ShardedReference`: each rank's shards cut from the quantized matrices,
/// its own heads and KV-cache shard, a sum after wo and after down, the LM
/// head's slices gathered) on real models, teacher-forced over a prompt
/// and greedy steps: the logits agree to float summation order at every
/// step (exactly at one rank), and the distributed argmax is the whole one.
/// SmolLM2 splits its 3 KV heads over 3 ranks and replicates them over 9;
/// Gemma-3 replicates its one KV head over 2 and 4 ranks and has local
/// layers, QK-norm and post-norms (its 512-position window never cuts
/// these few positions); Qwen2.5 splits its 2 KV heads and its Q/K/V
/// biases over 2 ranks.
#[test]
fn a_real_model_computed_rank_by_rank_equals_the_whole() {
    use rocmforge::model::reference::{Reference, ShardedReference};
    use rocmforge::model::{LoadOptions, Model};
    for (name, ranks) in [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", &[1usize, 3, 9][..]),
        ("gemma-3-270m-q4_k_m.gguf", &[2, 4][..]),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", &[2][..]),
    ] {
        let m = Model::load(common::model(name), LoadOptions { n_threads: 1, ..Default::default() }).unwrap();
        let prompt = m.tokenizer.encode("The capital of France is", true, false);
        let steps = prompt.len() + 6;
        let mut whole = Reference::new(&m, steps).unwrap();
        // the whole pass's logits and its greedy continuation
        let (mut tokens, mut want, mut best) = (prompt.clone(), Vec::new(), Vec::new());
        for pos in 0..steps {
            let l = whole.forward(tokens[pos], pos).unwrap().to_vec();
            let top = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
            if pos + 1 >= tokens.len() {
                tokens.push(top);
            }
            want.push(l);
            best.push(top);
        }
        for &n in ranks {
            let mut sharded = ShardedReference::new(&m, steps, n).unwrap();
            assert_eq!(sharded.plan().ranks.len(), n);
            let mut worst = 0f64;
            for pos in 0..steps {
                let got: Vec<f64> = sharded.forward(tokens[pos], pos).unwrap().iter().map(|&v| v as f64).collect();
                let w: Vec<f64> = want[pos].iter().map(|&v| v as f64).collect();
                let r = rel(&got, &w);
                worst = worst.max(r);
                // one rank runs the same sums in the same order: equal
                assert!(if n == 1 { r == 0.0 } else { r <= 5e-5 }, "{name} over {n} ranks, position {pos}: rel L2 {r:.2e}");
                assert_eq!(sharded.argmax(), best[pos], "{name} over {n} ranks, position {pos}: the distributed argmax");
            }
            println!("{name} over {n} ranks: {steps} positions, worst rel L2 against the whole pass {worst:.1e}");
        }
    }
}
