//! Linear projection without bias: `y = x @ weight^T`, weight stored `[out, in]` like nn.Linear.

use std::ops::Range;

use mimo_macros::op;
use rayon::prelude::*;

use crate::math::{axis_region, dot, matmul_operand};
use crate::op::{Access, Cost, Io, Op, expect_arity, whole};
use crate::{Tensor, TensorType};

/// The tiles split the output features, so each tile streams its own rows of the weight.
#[op(name = "linear", inputs(x, weight), outputs(y))]
pub struct Linear {}

impl Op for Linear {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, w) = (&inputs[Self::X], &inputs[Self::WEIGHT]);
        if x.rank() != 2 || x.dtype.is_int() {
            return Err(format!("x must be float [tokens, in], got {x}"));
        }
        if w.rank() != 2 || w.dtype.is_int() || w.shape[1] != x.shape[1] {
            return Err(format!(
                "weight must be float [out, {}], got {w}",
                x.shape[1]
            ));
        }
        Ok(vec![TensorType::f32([x.shape[0], w.shape[0]])])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, axis_region(&io.outputs[Self::Y], 1, units.clone()))],
            reads: vec![
                (Self::X, whole(&io.inputs[Self::X])),
                (
                    Self::WEIGHT,
                    axis_region(&io.inputs[Self::WEIGHT], 0, units),
                ),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, w) = (inputs[Self::X], inputs[Self::WEIGHT].f32());
        let (t, k) = (x.shape[0], x.shape[1]);
        let n_out = outputs[Self::Y].shape[1];
        let x = matmul_operand(x.f32());
        let x = &x[..];
        // Column-major partial result [n][t], computed in parallel over output features.
        let cols: Vec<f32> = units
            .clone()
            .into_par_iter()
            .flat_map_iter(|n| {
                let row = &w[n * k..(n + 1) * k];
                (0..t).map(move |ti| dot(&x[ti * k..(ti + 1) * k], row))
            })
            .collect();
        let y = outputs[Self::Y].f32_mut();
        for (j, n) in units.enumerate() {
            for ti in 0..t {
                y[ti * n_out + n] = cols[j * t + ti];
            }
        }
    }

    fn cost(&self, io: Io<'_>, units: Range<usize>) -> Cost {
        let (x, w) = (&io.inputs[Self::X], &io.inputs[Self::WEIGHT]);
        let (t, k, n) = (x.shape[0] as f64, x.shape[1] as f64, units.len() as f64);
        Cost {
            bytes: n * k * w.dtype.bytes_per_element() + t * k * 4.0 + t * n * 4.0,
            flops: 2.0 * t * k * n,
        }
    }
}
