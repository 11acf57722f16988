//! Scalar and vector helpers shared by the ops' reference implementations.

use std::ops::Range;

use crate::op::Region;
use crate::types::TensorType;

/// Dot product in f32 with eight independent partial sums: vectorises, and its rounding error
/// stays far below the 1e-4 tolerance of the parity tests.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// In-place numerically stable softmax.
pub fn softmax(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in xs.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in xs.iter_mut() {
        *x /= sum;
    }
}

/// Index of the largest element; the first one on ties (as `torch.argmax`).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// The region of `ty` made of the slices `rows` along axis 0 (every other axis whole).
pub fn rows_region(ty: &TensorType, rows: Range<usize>) -> Region {
    let mut region = vec![rows];
    region.extend(ty.shape.iter().skip(1).map(|&d| 0..d));
    region
}

/// The region of `ty` with axis `axis` restricted to `range` (every other axis whole).
pub fn axis_region(ty: &TensorType, axis: usize, range: Range<usize>) -> Region {
    ty.shape
        .iter()
        .enumerate()
        .map(|(a, &d)| if a == axis { range.clone() } else { 0..d })
        .collect()
}

/// A small, fast, seedable generator (SplitMix64): sampling and random test weights need
/// reproducibility, not cryptographic quality.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately normal (Irwin–Hall of four uniforms), mean 0 and standard deviation `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        let s: f64 = (0..4).map(|_| self.next_f64()).sum::<f64>() - 2.0;
        (s * (3.0f64).sqrt()) as f32 * std
    }
}
