//! Element-wise and per-row steps of the fast CPU forward pass. Batched over
//! rows; the reference pass (`reference.rs`) keeps its own plain versions so
//! the oracle does not share code with what it checks.

use super::arch::{FfnAct, RopeStyle};
use super::config::RopeFreqs;
use super::reference::rope_cos_sin;

crate::avx2_multiversion! {
/// Each `dim`-row of x: x / sqrt(mean(x²) + eps) * w, in place.
pub fn rmsnorm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let dim = w.len();
    for row in x.chunks_mut(dim) {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let s = 1.0 / (ss + eps).sqrt();
        row.iter_mut().zip(w).for_each(|(v, &wi)| *v = *v * s * wi);
    }
}
}

crate::avx2_multiversion! {
/// out = rmsnorm(x) row by row.
pub fn rmsnorm_into(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    out.copy_from_slice(x);
    rmsnorm_rows(out, w, eps);
}
}

crate::avx2_multiversion! {
/// Each `dim`-row of x: (x - mean) / sqrt(var + eps) * w + b, in place
/// (LayerNorm with bias, as ggml_norm then mul and add; the encoders').
pub fn layernorm_rows(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let dim = w.len();
    for row in x.chunks_mut(dim) {
        let mean = row.iter().sum::<f32>() / dim as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let var = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let s = 1.0 / (var + eps).sqrt();
        row.iter_mut().zip(w).zip(b).for_each(|((v, &wi), &bi)| *v = *v * s * wi + bi);
    }
}
}

pub fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
    }
}

pub fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

crate::avx2_multiversion! {
/// g = act(g) * u, element-wise.
pub fn gated_act(g: &mut [f32], u: &[f32], act: FfnAct) {
    match act {
        FfnAct::Silu => g.iter_mut().zip(u).for_each(|(a, &b)| *a = *a / (1.0 + exp_fast(-*a)) * b),
        FfnAct::GeluTanh => g.iter_mut().zip(u).for_each(|(a, &b)| {
            let x = *a;
            // tanh(y) = 1 - 2 / (e^2y + 1): ±1 at the ends, as e^2y → ∞ or 0
            let e = exp_fast(2.0 * 0.797_884_6 * (x + 0.044715 * x * x * x));
            *a = 0.5 * x * (2.0 - 2.0 / (e + 1.0)) * b
        }),
    }
}
}

/// e^x within 5e-7 relative for -87 ≤ x ≤ 88.7 (saturating outside), in straight-line
/// arithmetic the compiler vectorizes (libm's expf/tanhf are calls, ~10% of
/// a Gemma prefill): x = n·ln2 + r, e^r by a degree-6 polynomial, 2^n
/// through the exponent bits.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.7);
    // n = round(x / ln2) by the 1.5·2^23 trick (round half to even)
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_41 + r * (0.008_333_452 + r * 0.001_394_2)))));
    // 2^n, split in two halves so n up to 128 stays a normal number
    let h = (n * 0.5) as i32;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((n as i32 - h + 127) as u32) << 23);
    p * s1 * s2
}

/// Precomputed (cos, sin) for one position: `rope_dim / 2` pairs.
pub fn rope_table(pos: usize, freqs: &RopeFreqs) -> Vec<(f32, f32)> {
    freqs.freq.iter().map(|&f| rope_cos_sin(pos, f, freqs.mscale)).collect()
}

/// Turn cached keys by `delta` positions (a context shift): RoPE at `p`
/// followed by a turn of `delta` is RoPE at `p + delta`. `rows` are f16
/// bits, `kv_dim` values each (heads of `head_dim` back to back); `freqs`
/// are the layer's per-pair frequencies, as the forward pass rotates with
/// ([`crate::model::Config::rope_freqs`]). The magnitude (YaRN,
/// LongRoPE) was applied once when the key was written, so the turn leaves
/// the length alone (unlike [`rope_table`]).
pub fn rotate_keys(rows: &mut [u16], kv_dim: usize, head_dim: usize, style: RopeStyle, delta: i64, freqs: &RopeFreqs) {
    let table: Vec<(f32, f32)> = freqs
        .freq
        .iter()
        .map(|&f| {
            let th = delta as f64 * f as f64;
            (th.cos() as f32, th.sin() as f32)
        })
        .collect();
    let mut x = vec![0f32; kv_dim];
    for row in rows.chunks_exact_mut(kv_dim) {
        x.iter_mut().zip(row.iter()).for_each(|(d, &h)| *d = half::f16::from_bits(h).to_f32());
        rope_row(&mut x, head_dim, &table, style);
        row.iter_mut().zip(&x).for_each(|(d, &v)| *d = half::f16::from_f32(v).to_bits());
    }
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

#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    x.iter_mut().for_each(|v| *v = exp_fast(*v - max));
    let sum: f32 = x.iter().sum();
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

crate::avx2_multiversion! {
/// [`dot`] compiled for AVX2 and FMA where the CPU has them (same sums).
pub fn dot_simd(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b)
}
}

#[inline(always)]
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
#[inline(always)]
pub fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
    out.iter_mut().zip(v).for_each(|(o, &x)| *o += w * x);
}

/// Where the row of K/V head `kvh` for cache slot `slot` starts in one
/// layer's cache of `n_kv` heads of `width` values each: blocks of
/// [`crate::kv::BLOCK`] slots, and inside a block each head's rows
/// contiguous. Attention reads one head's rows: whole cache lines in
/// order, not a third of each row of all heads.
#[inline]
pub fn kv_row(slot: usize, kvh: usize, n_kv: usize, width: usize) -> usize {
    use crate::kv::BLOCK;
    ((slot / BLOCK * n_kv + kvh) * BLOCK + slot % BLOCK) * width
}

/// Causal attention for `g` query heads that share K/V head `kvh` (a GQA
/// group; g = 1 is one head): softmax(scale · q·K[j]) over the positions
/// `keys`, times V[j]. `q` holds the g heads back to back, `out` their g
/// outputs. `kc`/`vc` are one layer of the paged KV cache in f16, laid out
/// by [`kv_row`] (kv_dim / head_dim heads), position j of this sequence at
/// slot `blocks[j / BLOCK] * BLOCK + j % BLOCK`. `dims` = (head_dim,
/// head_dim_v, kv_dim, v_dim). Each K/V row is read and widened once for the group, and
/// the g dot products are independent chains; each head's arithmetic is the
/// same as with g = 1, so the grouping changes no result.
#[allow(clippy::too_many_arguments)]
pub fn attend(q: &[f32], g: usize, kc: &[u16], vc: &[u16], blocks: &[u32], kvh: usize, dims: (usize, usize, usize, usize), keys: std::ops::RangeInclusive<usize>, scale: f32, out: &mut [f32]) {
    let (hd, hdv, kv_dim, v_dim) = dims;
    assert!(q.len() >= g * hd && out.len() >= g * hdv && (kvh + 1) * hd <= kv_dim && (kvh + 1) * hdv <= v_dim && kv_dim % hd == 0 && v_dim % hdv == 0, "attention shapes");
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::simd::avx2_available() && hd % 8 == 0 && hdv % 8 == 0 {
        // SAFETY: the CPU has AVX2, FMA and F16C; the shapes were checked
        // above, and the slots index `kc`/`vc` (checked slices below).
        return unsafe { attend_f16c(q, g, kc, vc, blocks, kvh, dims, keys, scale, out) };
    }
    attend_portable(q, g, kc, vc, blocks, kvh, dims, keys, scale, out)
}




#[allow(clippy::too_many_arguments)]
fn attend_portable(q: &[f32], g: usize, kc: &[u16], vc: &[u16], blocks: &[u32], kvh: usize, dims: (usize, usize, usize, usize), keys: std::ops::RangeInclusive<usize>, scale: f32, out: &mut [f32]) {
    use crate::kv::BLOCK;
    let (hd, hdv, kv_dim, v_dim) = dims;
    let n = keys.end() + 1 - keys.start();
    let mut scores = vec![0f32; g * n];
    let mut row = vec![0f32; hd.max(hdv)];
    let out = &mut out[..g * hdv];
    for (i, j) in keys.clone().enumerate() {
        let s = blocks[j / BLOCK] as usize * BLOCK + j % BLOCK;
        f16_to_f32(&mut row[..hd], &kc[kv_row(s, kvh, kv_dim / hd, hd)..][..hd]);
        for h in 0..g {
            scores[h * n + i] = dot(&q[h * hd..(h + 1) * hd], &row[..hd]) * scale;
        }
    }
    for h in 0..g {
        softmax(&mut scores[h * n..(h + 1) * n]);
    }
    out.fill(0.0);
    for (i, j) in keys.enumerate() {
        let s = blocks[j / BLOCK] as usize * BLOCK + j % BLOCK;
        f16_to_f32(&mut row[..hdv], &vc[kv_row(s, kvh, v_dim / hdv, hdv)..][..hdv]);
        for h in 0..g {
            axpy(&mut out[h * hdv..(h + 1) * hdv], scores[h * n + i], &row[..hdv]);
        }
    }
}

/// [`attend`] with AVX2, FMA and F16C, one head at a time: scores for 8
/// positions per pass (8 accumulators, one transposing reduction), then the
/// head's output, 64 columns at a time, held in registers over all
/// positions. Rows are read as f16 and widened in registers; the group's
/// later heads find them in the cache.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_f16c(q: &[f32], g: usize, kc: &[u16], vc: &[u16], blocks: &[u32], kvh: usize, dims: (usize, usize, usize, usize), keys: std::ops::RangeInclusive<usize>, scale: f32, out: &mut [f32]) {
    use crate::kv::BLOCK;
    use std::arch::x86_64::*;
    let (hd, hdv, kv_dim, v_dim) = dims;
    // element offsets of this K/V head's rows, position by position, each
    // checked (without overflow) to lie inside the cache: the loads below
    // are unchecked
    let offsets = |dim: usize, width: usize, len: usize| -> Vec<usize> {
        keys.clone()
            .map(|j| {
                // kv_row, checked
                let n_kv = dim / width;
                let o = (blocks[j / BLOCK] as usize)
                    .checked_mul(n_kv)
                    .and_then(|b| b.checked_add(kvh))
                    .and_then(|b| b.checked_mul(BLOCK))
                    .and_then(|r| r.checked_add(j % BLOCK))
                    .and_then(|r| r.checked_mul(width));
                match o {
                    Some(o) if o.checked_add(width).is_some_and(|e| e <= len) => o,
                    _ => panic!("position {j}: a slot beyond the KV cache"),
                }
            })
            .collect()
    };
    let (koff, voff) = (offsets(kv_dim, hd, kc.len()), offsets(v_dim, hdv, vc.len()));
    let n = koff.len();
    let (kp, vp) = (kc.as_ptr(), vc.as_ptr());
    // a macro, not a closure: a closure would not get the target features
    macro_rules! ld {
        ($p:expr) => {
            _mm256_cvtph_ps(_mm_loadu_si128($p as *const __m128i))
        };
    }
    let mut scores = vec![0f32; n];
    for h in 0..g {
        let qh = q.as_ptr().add(h * hd);
        // ---- scores: 8 positions per pass ----
        let mut i = 0;
        while i < n {
            let m = (n - i).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..hd).step_by(8) {
                let qv = _mm256_loadu_ps(qh.add(c));
                for (r, a) in acc.iter_mut().enumerate().take(m) {
                    *a = _mm256_fmadd_ps(qv, ld!(kp.add(*koff.get_unchecked(i + r) + c)), *a);
                }
            }
            // transpose-reduce: lane r of the result is Σ acc[r]
            let t0 = _mm256_hadd_ps(acc[0], acc[1]);
            let t1 = _mm256_hadd_ps(acc[2], acc[3]);
            let t2 = _mm256_hadd_ps(acc[4], acc[5]);
            let t3 = _mm256_hadd_ps(acc[6], acc[7]);
            let u0 = _mm256_hadd_ps(t0, t1);
            let u1 = _mm256_hadd_ps(t2, t3);
            let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
            let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
            let sums = _mm256_mul_ps(_mm256_add_ps(lo, hi), _mm256_set1_ps(scale));
            let mut tmp = [0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), sums);
            scores[i..i + m].copy_from_slice(&tmp[..m]);
            i += m;
        }
        softmax(&mut scores);
        // ---- output: 64 columns at a time in registers ----
        let o = out.as_mut_ptr().add(h * hdv);
        for c0 in (0..hdv).step_by(64) {
            let w8 = (hdv - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (i, &off) in voff.iter().enumerate() {
                let w = _mm256_set1_ps(*scores.get_unchecked(i));
                let v = vp.add(off + c0);
                for (k, a) in acc.iter_mut().enumerate().take(w8) {
                    *a = _mm256_fmadd_ps(w, ld!(v.add(8 * k)), *a);
                }
            }
            for (k, a) in acc.iter().enumerate().take(w8) {
                _mm256_storeu_ps(o.add(c0 + 8 * k), *a);
            }
        }
    }
}

/// f32 → f16 bits, rounding to nearest even (F16C where the CPU has it;
/// the same results as `half`'s conversion otherwise).
pub fn to_f16(out: &mut [u16], x: &[f32]) {
    assert_eq!(out.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::simd::avx2_available() {
        // SAFETY: the CPU has AVX2 and F16C; the lengths are equal.
        return unsafe { to_f16_f16c(out, x) };
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = half::f16::from_f32(v).to_bits();
    }
}

/// f16 bits → f32 (exact).
pub fn f16_to_f32(out: &mut [f32], x: &[u16]) {
    assert_eq!(out.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::simd::avx2_available() {
        // SAFETY: the CPU has AVX2 and F16C; the lengths are equal.
        return unsafe { f16_to_f32_f16c(out, x) };
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = half::f16::from_bits(v).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn to_f16_f16c(out: &mut [u16], x: &[f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.as_ptr().add(i)));
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
        i += 8;
    }
    for j in i..n {
        out[j] = half::f16::from_f32(x[j]).to_bits();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_to_f32_f16c(out: &mut [f32], x: &[u16]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        let f = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), f);
        i += 8;
    }
    for j in i..n {
        out[j] = half::f16::from_bits(x[j]).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::exp_fast;

    /// Both attention paths (AVX2 where the CPU has it, and the portable
    /// one) against f64 on GQA groups, head sizes that are not multiples of
    /// 64, windows, and a block table out of order.
    #[test]
    fn attention_paths_match_f64() {
        use crate::kv::BLOCK;
        let mut seed = 7u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32 - 0.5) * 2.0
        };
        for &(g, kvh_n, hd, hdv, len, first) in &[(3usize, 3usize, 64usize, 64usize, 40usize, 0usize), (4, 2, 80, 80, 37, 5), (1, 1, 72, 72, 17, 0), (7, 2, 128, 128, 50, 20), (2, 1, 256, 256, 33, 0)] {
            let (kv_dim, v_dim) = (kvh_n * hd, kvh_n * hdv);
            let nblk = len.div_ceil(BLOCK);
            let blocks: Vec<u32> = (0..nblk as u32).rev().collect();
            let rows = nblk * BLOCK;
            let bits = |n: usize, r: &mut dyn FnMut() -> f32| -> Vec<u16> { (0..n).map(|_| half::f16::from_f32(r()).to_bits()).collect() };
            let (kc, vc) = (bits(rows * kv_dim, &mut rnd), bits(rows * v_dim, &mut rnd));
            let q: Vec<f32> = (0..g * hd).map(|_| rnd()).collect();
            let kvh = kvh_n - 1;
            let scale = 1.0 / (hd as f32).sqrt();
            let at = |c: &[u16], j: usize, d: usize, w: usize, i: usize| half::f16::from_bits(c[super::kv_row(blocks[j / BLOCK] as usize * BLOCK + j % BLOCK, kvh, d / w, w) + i]).to_f64();
            let mut want = vec![0f64; g * hdv];
            for h in 0..g {
                let s: Vec<f64> = (first..len).map(|j| (0..hd).map(|i| q[h * hd + i] as f64 * at(&kc, j, kv_dim, hd, i)).sum::<f64>() * scale as f64).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hdv {
                    want[h * hdv + i] = (first..len).zip(&e).map(|(j, w)| w / z * at(&vc, j, v_dim, hdv, i)).sum();
                }
            }
            for portable in [false, true] {
                let mut out = vec![f32::NAN; g * hdv];
                let dims = (hd, hdv, kv_dim, v_dim);
                if portable {
                    super::attend_portable(&q, g, &kc, &vc, &blocks, kvh, dims, first..=len - 1, scale, &mut out);
                } else {
                    super::attend(&q, g, &kc, &vc, &blocks, kvh, dims, first..=len - 1, scale, &mut out);
                }
                for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                    assert!((o as f64 - w).abs() <= 1e-5, "g {g} hd {hd} portable {portable} value {i}: {o} vs {w}");
                }
            }
        }
    }

    #[test]
    fn exp_fast_matches_std() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_fast(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 5e-7, "exp_fast relative error {worst:e}");
        assert!((exp_fast(-200.0) / (-87f32).exp() - 1.0).abs() < 5e-7);
        assert!(exp_fast(100.0) > 1e38);
        assert_eq!(exp_fast(0.0), 1.0);
    }
}
