//! RMSNorm over the last axis: `y = x * rsqrt(mean(x^2) + eps) * weight`, in f32.

use std::ops::Range;

use mimo_macros::op;

use crate::math::rows_region;
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{Tensor, TensorType};

/// Normalises every row (the last axis) of `x`; a [tokens, heads, head_dim] operand is normalised
/// per head, which is Qwen3's q/k norm.
#[op(name = "rms_norm", inputs(x, weight), outputs(y), template = "rms_norm")]
pub struct RmsNorm {
    pub eps: f32,
}

impl Op for RmsNorm {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, w) = (&inputs[Self::X], &inputs[Self::WEIGHT]);
        if x.rank() < 2 || x.dtype.is_int() {
            return Err(format!("x must be a float tensor of rank >= 2, got {x}"));
        }
        if w.shape != [x.last_dim()] || w.dtype.is_int() {
            return Err(format!("weight must be float [{}], got {w}", x.last_dim()));
        }
        Ok(vec![TensorType::f32(x.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, rows_region(&io.outputs[Self::Y], units.clone()))],
            reads: vec![(Self::X, rows_region(&io.inputs[Self::X], units)), (Self::WEIGHT, whole(&io.inputs[Self::WEIGHT]))],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, w) = (inputs[Self::X].f32(), inputs[Self::WEIGHT].f32());
        let n = w.len();
        let per_unit = x.len() / inputs[Self::X].shape[0];
        let y = outputs[Self::Y].f32_mut();
        let span = units.start * per_unit..units.end * per_unit;
        for (xr, yr) in x[span.clone()].chunks_exact(n).zip(y[span].chunks_exact_mut(n)) {
            let mean_sq = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
            let inv = 1.0 / (mean_sq + self.eps).sqrt();
            for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                *yv = wv * (xv * inv);
            }
        }
    }
}
