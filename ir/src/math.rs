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

thread_local! {
    static BF16_OPERANDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the reference computing as a bf16 tensor-core kernel does: the activations
/// entering a matmul (`linear`, `expert_linear`) and the rows stored into a KV cache rounded to
/// bf16 (round to nearest even), the products accumulated in f32. Applies to the ops run on this
/// thread. The f32 reference is the oracle; this twin measures how far bf16 rounding alone moves
/// a model's logits, the noise floor a device's parity test is held to.
pub fn with_bf16_operands<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16_OPERANDS.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(BF16_OPERANDS.with(|m| m.replace(true)));
    f()
}

/// `x` rounded to the nearest bf16 (ties to even), as `cvt.rn.bf16` does.
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// `xs` as a matmul operand: rounded to bf16 inside [`with_bf16_operands`], unchanged otherwise.
pub fn matmul_operand(xs: &[f32]) -> std::borrow::Cow<'_, [f32]> {
    if BF16_OPERANDS.with(|m| m.get()) {
        std::borrow::Cow::Owned(xs.iter().map(|&x| round_bf16(x)).collect())
    } else {
        std::borrow::Cow::Borrowed(xs)
    }
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

/// [`softmax`] with one more column, `sink`, in the denominator only (an attention sink: a
/// learned logit per head that takes probability away from every row and is then dropped).
pub fn softmax_with_sink(xs: &mut [f32], sink: f32) {
    let max = xs.iter().copied().fold(sink, f32::max);
    let mut sum = (sink - max).exp();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_operands_round_to_nearest_even_only_inside_the_scope() {
        // 1 + 2^-8 is halfway between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
        let xs = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -3.0e-3];
        assert_eq!(&*matmul_operand(&xs), &xs[..]);
        let rounded = with_bf16_operands(|| matmul_operand(&xs).into_owned());
        assert_eq!(rounded[0], 1.0);
        assert_eq!(rounded[1], 1.0 + 2.0 * 2f32.powi(-7));
        assert_eq!(rounded[2], half::bf16::from_f32(-3.0e-3).to_f32());
        assert_ne!(rounded[2], xs[2]);
        assert_eq!(
            &*matmul_operand(&xs),
            &xs[..],
            "the scope restores f32 operands"
        );
    }
}
