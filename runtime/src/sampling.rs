//! Choosing the next token from logits: greedy at temperature 0, otherwise seeded sampling with
//! temperature and nucleus (top-p) filtering.

use mimo_ir::math::Rng;

/// Sampling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 keeps all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Chooses tokens from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            rng: Rng::new(params.seed),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return mimo_ir::math::argmax(logits) as u32;
        }
        let inv_t = 1.0 / self.params.temperature as f64;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, ((l as f64 - max) * inv_t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Nucleus: the shortest prefix (by descending probability) whose mass reaches top_p.
        let cutoff = self.params.top_p.clamp(0.0, 1.0) as f64 * total;
        let mut kept = 0.0;
        let mut len = 0;
        for p in &probs {
            kept += p.1;
            len += 1;
            if kept >= cutoff {
                break;
            }
        }
        let mut r = self.rng.next_f64() * kept;
        for &(i, p) in &probs[..len] {
            if r < p {
                return i as u32;
            }
            r -= p;
        }
        probs[len - 1].0 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let draws = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params });
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let d = draws(7);
        assert!(!d.contains(&2), "a token of probability 0 was drawn");
        let ones = d.iter().filter(|&&t| t == 1).count() as f64 / d.len() as f64;
        assert!(
            (ones - 0.75).abs() < 0.03,
            "token 1 drawn {ones}, expected 0.75"
        );
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities 0.6, 0.3, 0.1: top_p 0.5 keeps the first token alone.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
        });
        assert!((0..500).all(|_| s.sample(&logits) == 0));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.85,
            seed: 1,
        });
        let d: Vec<u32> = (0..2000).map(|_| s.sample(&logits)).collect();
        assert!(d.contains(&1) && !d.contains(&2));
    }
}
