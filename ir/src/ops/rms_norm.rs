//! RMSNorm over the last axis: `y = x * rsqrt(mean(x^2) + eps) * weight`, in f32.

use std::ops::Range;

use mimo_macros::op;

use crate::math::axis_region;
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{Tensor, TensorType};

/// Normalises every row (the last axis) of `x`; a [tokens, heads, head_dim] operand is normalised
/// per head, which is Qwen3's q/k norm.
#[op(name = "rms_norm", inputs(x, weight), outputs(y))]
pub struct RmsNorm {
    pub eps: f32,
}

impl Op for RmsNorm {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, w) = (&inputs[Self::X], &inputs[Self::WEIGHT]);
        if !(x.rank() == 2 || x.rank() == 3) || x.dtype.is_int() {
            return Err(format!("x must be a float tensor of rank 2 or 3, got {x}"));
        }
        if w.shape != [x.last_dim()] || w.dtype.is_int() {
            return Err(format!("weight must be float [{}], got {w}", x.last_dim()));
        }
        Ok(vec![TensorType::f32(x.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        let y = &io.outputs[Self::Y];
        y.shape[Self::tile_axis(y)]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let (x, y) = (&io.inputs[Self::X], &io.outputs[Self::Y]);
        let axis = Self::tile_axis(y);
        Access {
            writes: vec![(Self::Y, axis_region(y, axis, units.clone()))],
            reads: vec![
                (Self::X, axis_region(x, axis, units)),
                (Self::WEIGHT, whole(&io.inputs[Self::WEIGHT])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, w) = (inputs[Self::X], inputs[Self::WEIGHT].f32());
        let n = w.len();
        let shape = x.shape.clone();
        let (x, y) = (x.f32(), outputs[Self::Y].f32_mut());
        // Rows of a rank-3 operand are (token, head); the tile picks heads for every token.
        let (outer, tiled) = if shape.len() == 3 {
            (shape[0], shape[1])
        } else {
            (1, shape[0])
        };
        for o in 0..outer {
            for u in units.clone() {
                let at = (o * tiled + u) * n;
                let (xr, yr) = (&x[at..at + n], &mut y[at..at + n]);
                let mean_sq = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
                let inv = 1.0 / (mean_sq + self.eps).sqrt();
                for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                    *yv = wv * (xv * inv);
                }
            }
        }
    }

    fn recompute_in_consumers(&self) -> bool {
        true
    }
}

impl RmsNorm {
    /// Tiles split the tokens of a [tokens, hidden] operand and the heads of a
    /// [tokens, heads, head_dim] one, so a per-head norm fuses into per-head projections.
    fn tile_axis(y: &TensorType) -> usize {
        if y.rank() == 3 { 1 } else { 0 }
    }
}
