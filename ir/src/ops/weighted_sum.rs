//! Combines the routed experts' outputs: `y[t] = sum_j weights[t, j] * x[t, j]`. Tiles split the
//! hidden axis, so the combine fuses into the down projection's tiles.

use std::ops::Range;

use mimo_macros::op;

use crate::math::axis_region;
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{Tensor, TensorType};

#[op(name = "weighted_sum", inputs(x, weights), outputs(y))]
pub struct WeightedSum {}

impl Op for WeightedSum {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, w) = (&inputs[Self::X], &inputs[Self::WEIGHTS]);
        if x.rank() != 3 || x.dtype.is_int() {
            return Err(format!("x must be float [tokens, k, hidden], got {x}"));
        }
        if w.shape != x.shape[..2] || w.dtype.is_int() {
            return Err(format!(
                "weights must be float {:?}, got {w}",
                &x.shape[..2]
            ));
        }
        Ok(vec![TensorType::f32([x.shape[0], x.shape[2]])])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, axis_region(&io.outputs[Self::Y], 1, units.clone()))],
            reads: vec![
                (Self::X, axis_region(&io.inputs[Self::X], 2, units)),
                (Self::WEIGHTS, whole(&io.inputs[Self::WEIGHTS])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, w) = (inputs[Self::X], inputs[Self::WEIGHTS].f32());
        let (tokens, k, h) = (x.shape[0], x.shape[1], x.shape[2]);
        let (x, y) = (x.f32(), outputs[Self::Y].f32_mut());
        for t in 0..tokens {
            for c in units.clone() {
                // Slots in order, as the GPU's epilogue adds them.
                y[t * h + c] = (0..k).map(|j| w[t * k + j] * x[(t * k + j) * h + c]).sum();
            }
        }
    }

    fn fuse_as_epilogue(&self) -> bool {
        true
    }
}
