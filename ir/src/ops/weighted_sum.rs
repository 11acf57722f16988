//! Combines the routed experts' outputs: `y[t] = sum_j weights[t, j] * x[t, j]`.

use std::ops::Range;

use mimo_macros::op;

use crate::math::rows_region;
use crate::op::{Access, Io, Op, expect_arity};
use crate::{Tensor, TensorType};

#[op(name = "weighted_sum", inputs(x, weights), outputs(y), template = "weighted_sum")]
pub struct WeightedSum {}

impl Op for WeightedSum {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, w) = (&inputs[Self::X], &inputs[Self::WEIGHTS]);
        if x.rank() != 3 || x.dtype.is_int() {
            return Err(format!("x must be float [tokens, k, hidden], got {x}"));
        }
        if w.shape != x.shape[..2] || w.dtype.is_int() {
            return Err(format!("weights must be float {:?}, got {w}", &x.shape[..2]));
        }
        Ok(vec![TensorType::f32([x.shape[0], x.shape[2]])])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, rows_region(&io.outputs[Self::Y], units.clone()))],
            reads: vec![
                (Self::X, rows_region(&io.inputs[Self::X], units.clone())),
                (Self::WEIGHTS, rows_region(&io.inputs[Self::WEIGHTS], units)),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, w) = (inputs[Self::X], inputs[Self::WEIGHTS].f32());
        let (k, h) = (x.shape[1], x.shape[2]);
        let (x, y) = (x.f32(), outputs[Self::Y].f32_mut());
        for t in units {
            let out = &mut y[t * h..(t + 1) * h];
            out.fill(0.0);
            for j in 0..k {
                let wj = w[t * k + j];
                for (o, v) in out.iter_mut().zip(&x[(t * k + j) * h..][..h]) {
                    *o += wj * v;
                }
            }
        }
    }
}
