//! Choosing the next token from logits without allocating: greedy,
//! temperature, top-k and top-p (nucleus), driven by a small seeded RNG.
//!
//! The RNG is xorshift64* (Marsaglia's xorshift with a multiplicative
//! output step, as described by Vigna, "An experimental exploration of
//! Marsaglia's xorshift generators, scrambled", 2016): 8 bytes of state,
//! the same stream for the same seed on every target.
//!
//! Sampling works on the logits slice in place (it becomes the kept
//! probabilities). Top-k finds the k-th largest logit with a fixed
//! [`MAX_TOP_K`]-entry buffer on the stack; top-p finds its probability
//! threshold by bisection over the whole vocabulary (O(vocab · 40)), so
//! neither needs a sort buffer. Ties at a threshold keep every tied token.

/// Largest `top_k` honoured (larger values are clamped).
pub const MAX_TOP_K: usize = 128;

/// xorshift64*: small, fast, deterministic; not cryptographic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator; every seed (0 included) gives a valid, distinct stream.
    pub fn new(seed: u64) -> Self {
        // One splitmix64 step spreads the seed and never yields 0 twice in a row.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self {
            state: if z == 0 { 0x2545_F491_4F6C_DD1D } else { z },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How to pick tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 (or below): greedy argmax; else logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` largest logits (0: off; at most [`MAX_TOP_K`]).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches
    /// `top_p` (1.0 or more: off).
    pub top_p: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A sampler: a config and its RNG state.
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: XorShift64,
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler seeded from `cfg.seed`.
    pub fn new(cfg: SamplerConfig) -> Self {
        Self {
            cfg,
            rng: XorShift64::new(cfg.seed),
        }
    }

    /// The next token; `logits` is overwritten (with the kept probabilities
    /// when sampling). An empty slice gives 0.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let c = self.cfg;
        if logits.is_empty() || c.temperature.is_nan() || c.temperature <= 0.0 || c.top_k == 1 {
            return argmax(logits);
        }
        let max = logits
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        let floor = if c.top_k > 0 {
            kth_largest(logits, c.top_k.min(MAX_TOP_K))
        } else {
            f32::NEG_INFINITY
        };
        let mut total = 0.0f64;
        for z in logits.iter_mut() {
            let p = if *z >= floor {
                libm::expf((*z - max) / c.temperature)
            } else {
                0.0
            };
            *z = if p.is_nan() { 0.0 } else { p };
            total += f64::from(*z);
        }
        if c.top_p < 1.0 && c.top_p > 0.0 && total > 0.0 {
            let tau = nucleus_threshold(logits, total, f64::from(c.top_p));
            total = 0.0;
            for p in logits.iter_mut() {
                if *p < tau {
                    *p = 0.0;
                }
                total += f64::from(*p);
            }
        }
        if total.is_nan() || total <= 0.0 {
            return argmax(logits);
        }
        let mut u = self.rng.next_f64() * total;
        let mut last = 0;
        for (i, &p) in logits.iter().enumerate() {
            if p > 0.0 {
                last = i;
                u -= f64::from(p);
                if u < 0.0 {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

/// The k-th largest value (k ≥ 1) through a sorted fixed-size buffer.
fn kth_largest(v: &[f32], k: usize) -> f32 {
    let mut top = [f32::NEG_INFINITY; MAX_TOP_K];
    let k = k.clamp(1, MAX_TOP_K);
    for &x in v {
        if x.is_nan() || x <= top[k - 1] {
            continue;
        }
        // Insert keeping top[..k] descending.
        let mut i = k - 1;
        while i > 0 && top[i - 1] < x {
            top[i] = top[i - 1];
            i -= 1;
        }
        top[i] = x;
    }
    top[k - 1]
}

/// The largest `tau` with `Σ_{p ≥ tau} p ≥ top_p · total`, by bisection.
fn nucleus_threshold(p: &[f32], total: f64, top_p: f64) -> f32 {
    let target = top_p * total;
    let mass_at =
        |tau: f32| -> f64 { p.iter().filter(|&&x| x >= tau).map(|&x| f64::from(x)).sum() };
    let (mut lo, mut hi) = (0.0f32, p.iter().copied().fold(0.0f32, f32::max));
    // Invariant: mass_at(lo) ≥ target; hi is the largest probability.
    if mass_at(hi) >= target {
        return hi;
    }
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if mass_at(mid) >= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&mut [0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, -1.0, -2.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            seed: 7,
            ..SamplerConfig::default()
        };
        let logits: [f32; 8] = [0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4, 0.8];
        let run = || {
            let mut s = Sampler::new(cfg);
            (0..50)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<std::vec::Vec<_>>()
        };
        assert_eq!(run(), run());
        // Not stuck on one token at temperature 1.
        let toks = run();
        assert!(toks.iter().any(|&t| t != toks[0]));
    }

    #[test]
    fn top_k_and_top_p_only_pick_kept_tokens() {
        let logits: [f32; 6] = [1.0, 5.0, 2.0, 4.9, -1.0, 0.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 2,
            seed: 3,
            ..SamplerConfig::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits.clone());
            assert!(t == 1 || t == 3, "top-k 2 picked {t}");
        }
        // p ≈ [.01, .50, .03, .45, .00, .00]: top-p 0.9 keeps tokens 1 and 3.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_p: 0.9,
            seed: 4,
            ..SamplerConfig::default()
        });
        let mut seen = [0usize; 6];
        for _ in 0..400 {
            seen[s.sample(&mut logits.clone()) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4] + seen[5], 0, "{seen:?}");
        assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = [0.25, 0.75] at temperature 1.
        let logits = [0.0f32, libm::logf(3.0)];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            seed: 11,
            ..SamplerConfig::default()
        });
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| s.sample(&mut logits.clone()) == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }
}
