//! Rotary position embedding, NeoX "rotate_half" style: dims i and i + hd/2 form a pair.

use std::ops::Range;

use mimo_macros::op;

use crate::math::axis_region;
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// Rotates every head of `x` [tokens, heads, head_dim] by its token's absolute position. Tiles
/// split the heads.
#[op(name = "rope", inputs(x, positions), outputs(y))]
pub struct Rope {
    pub theta: f64,
}

impl Rope {
    /// `inv_freq[i] = theta^(-2i/hd)`, computed in f32 the way transformers does, so that the
    /// angles (and hence the logits) agree with it to the last bits that matter.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        (0..head_dim / 2)
            .map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect()
    }
}

impl Op for Rope {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, pos) = (&inputs[Self::X], &inputs[Self::POSITIONS]);
        if x.rank() != 3 || x.dtype.is_int() || x.shape[2] % 2 != 0 {
            return Err(format!(
                "x must be float [tokens, heads, even head_dim], got {x}"
            ));
        }
        if pos.dtype != DType::I32 || pos.shape != [x.shape[0]] {
            return Err(format!("positions must be i32 [{}], got {pos}", x.shape[0]));
        }
        if !(self.theta.is_finite() && self.theta > 0.0) {
            return Err(format!("theta must be positive, got {}", self.theta));
        }
        Ok(vec![TensorType::f32(x.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, axis_region(&io.outputs[Self::Y], 1, units.clone()))],
            reads: vec![
                (Self::X, axis_region(&io.inputs[Self::X], 1, units)),
                (Self::POSITIONS, whole(&io.inputs[Self::POSITIONS])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, pos) = (inputs[Self::X], inputs[Self::POSITIONS].i32());
        let (tokens, heads, hd) = (x.shape[0], x.shape[1], x.shape[2]);
        let half = hd / 2;
        let inv_freq = self.inv_freq(hd);
        let (x, y) = (x.f32(), outputs[Self::Y].f32_mut());
        for (t, &p) in pos.iter().enumerate().take(tokens) {
            let angles: Vec<(f32, f32)> =
                inv_freq.iter().map(|f| (p as f32 * f).sin_cos()).collect();
            for h in units.clone() {
                let base = (t * heads + h) * hd;
                for (i, &(sin, cos)) in angles.iter().enumerate() {
                    let (a, b) = (x[base + i], x[base + i + half]);
                    y[base + i] = a * cos - b * sin;
                    y[base + i + half] = b * cos + a * sin;
                }
            }
        }
    }

    fn recompute_in_consumers(&self) -> bool {
        true
    }
}
