//! The greedy token from the chunks' maxima of `argmax_partial`: the largest value, the lowest
//! vocabulary index on ties (as a single `argmax` over the whole row).

use std::ops::Range;

use mimo_macros::op;

use crate::math::rows_region;
use crate::op::{Access, Io, Op, expect_arity};
use crate::{DType, Tensor, TensorType};

#[op(name = "argmax_combine", inputs(values, ids), outputs(next))]
pub struct ArgmaxCombine {}

impl Op for ArgmaxCombine {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (v, i) = (&inputs[Self::VALUES], &inputs[Self::IDS]);
        if v.rank() != 2 || v.dtype.is_int() || i.shape != v.shape || i.dtype != DType::I32 {
            return Err(format!(
                "values must be float [tokens, chunks] and ids i32 of the same shape, got {v} and {i}"
            ));
        }
        Ok(vec![TensorType::new([v.shape[0]], DType::I32)])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::NEXT].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::NEXT, vec![units.clone()])],
            reads: vec![
                (
                    Self::VALUES,
                    rows_region(&io.inputs[Self::VALUES], units.clone()),
                ),
                (Self::IDS, rows_region(&io.inputs[Self::IDS], units)),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (v, ids) = (inputs[Self::VALUES], inputs[Self::IDS].i32());
        let chunks = v.shape[1];
        for t in units {
            let row = &v.f32()[t * chunks..(t + 1) * chunks];
            // Chunks are in vocabulary order and each holds its first maximum, so the first
            // chunk with the largest value holds the row's first maximum.
            let best = crate::math::argmax(row);
            outputs[Self::NEXT].i32_mut()[t] = ids[t * chunks + best];
        }
    }
}
