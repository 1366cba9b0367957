//! Logits → next token: penalties over a recent window, then greedy or
//! temperature sampling with top-k, top-p and min-p, from a seedable RNG
//! (same seed, same logits ⇒ same tokens).

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Sampler settings. `temperature <= 0` means greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = off).
    pub top_p: f32,
    /// Drop tokens below min_p × p(most likely) (0.0 = off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative) of recent tokens (1.0 = off).
    pub repeat_penalty: f32,
    /// Subtract count × this from the logits of recent tokens (0.0 = off).
    pub frequency_penalty: f32,
    /// Subtract this once from the logits of recent tokens (0.0 = off).
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at (0 = none).
    pub penalty_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0x5EED,
        }
    }
}

impl SamplerParams {
    pub fn greedy() -> Self {
        SamplerParams { temperature: 0.0, ..Default::default() }
    }
}

/// SplitMix64 → xoshiro256**: small, fast, reproducible everywhere.
#[derive(Debug, Clone)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplerParams,
    rng: Rng,
    /// Recent tokens, for the penalties (oldest first).
    recent: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng, recent: Vec::new() }
    }

    /// Forget the history and restart the RNG from the seed.
    pub fn reset(&mut self) {
        self.rng = Rng::new(self.params.seed);
        self.recent.clear();
    }

    /// Record a token (prompt or generated) for the penalties.
    pub fn accept(&mut self, token: u32) {
        if self.params.penalty_last_n == 0 {
            return;
        }
        self.recent.push(token);
        if self.recent.len() > self.params.penalty_last_n {
            let cut = self.recent.len() - self.params.penalty_last_n;
            self.recent.drain(..cut);
        }
    }

    /// Pick the next token from `logits` (modified in place by penalties).
    /// Logits must be finite or -inf (a masked token), with at least one
    /// finite: NaN, +inf or all -inf is an error, never a silent token 0.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32> {
        check_logits(logits)?;
        Ok(self.pick(logits))
    }

    fn pick(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        if !self.recent.is_empty() && (p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0) {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in &self.recent {
                *counts.entry(t).or_default() += 1;
            }
            for (&t, &c) in &counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    if p.repeat_penalty != 1.0 {
                        *l = if *l > 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
                    }
                    *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        // candidates sorted by logit, best first (ties: lower id first)
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        cand.sort_by(by_logit);
        // softmax with temperature
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| ((l - max) / p.temperature).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().position(|&x| x < floor).unwrap_or(keep).max(1));
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &x) in probs[..keep].iter().enumerate() {
                acc += x;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = probs[..keep].iter().sum();
        let r = self.rng.next_f32() * total;
        let mut acc = 0.0;
        for i in 0..keep {
            acc += probs[i];
            if r < acc {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// The sampler's precondition on its input: no NaN, no +inf, and at least
/// one finite value. One pass that vectorizes (a min/max and a NaN count).
pub fn check_logits(x: &[f32]) -> Result<()> {
    if x.is_empty() {
        return Err(Error::InvalidArgument("no logits to sample from".into()));
    }
    let (mut nan, mut pinf, mut finite) = (0usize, 0usize, 0usize);
    for &v in x {
        nan += v.is_nan() as usize;
        pinf += (v == f32::INFINITY) as usize;
        finite += v.is_finite() as usize;
    }
    if nan + pinf > 0 || finite == 0 {
        return Err(Error::InvalidArgument(format!(
            "logits are not samplable: {nan} NaN, {pinf} +inf and {finite} finite of {} (NaN or +inf means a broken model or buffer; -inf masks a token, but one must stay finite)",
            x.len()
        )));
    }
    Ok(())
}

/// Index of the largest logit (the first on ties; NaN is never chosen, and
/// all-NaN gives 0). Two passes that vectorize, the maximum and then the
/// first index holding it: ~10× the one-pass loop's speed over a 152k vocab,
/// which a greedy decode step pays once per token.
pub fn argmax(x: &[f32]) -> u32 {
    const L: usize = 32;
    let mut m = [f32::NEG_INFINITY; L];
    for ch in x.chunks_exact(L) {
        for j in 0..L {
            m[j] = if ch[j] > m[j] { ch[j] } else { m[j] };
        }
    }
    let mut best = f32::NEG_INFINITY;
    for &v in m.iter().chain(x.chunks_exact(L).remainder()) {
        if v > best {
            best = v;
        }
    }
    // no early exit inside a chunk, so the comparison vectorizes
    for (c, ch) in x.chunks(L).enumerate() {
        if ch.iter().fold(false, |hit, &v| hit | (v == best)) {
            return (c * L + ch.iter().position(|&v| v == best).unwrap_or(0)) as u32;
        }
    }
    0
}
