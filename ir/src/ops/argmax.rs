//! Greedy token choice: the index of the largest logit per row (the first on ties).

use std::ops::Range;

use mimo_macros::op;

use crate::math::{argmax, rows_region};
use crate::op::{Access, Io, Op, expect_arity};
use crate::{DType, Tensor, TensorType};

#[op(name = "argmax", inputs(logits), outputs(ids))]
pub struct Argmax {}

impl Op for Argmax {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let l = &inputs[Self::LOGITS];
        if l.rank() != 2 || l.dtype.is_int() || l.shape[1] == 0 {
            return Err(format!("logits must be float [tokens, vocab], got {l}"));
        }
        Ok(vec![TensorType::new([l.shape[0]], DType::I32)])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::IDS].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::IDS, vec![units.clone()])],
            reads: vec![(Self::LOGITS, rows_region(&io.inputs[Self::LOGITS], units))],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let l = inputs[Self::LOGITS];
        let v = l.shape[1];
        for t in units {
            outputs[Self::IDS].i32_mut()[t] = argmax(&l.f32()[t * v..(t + 1) * v]) as i32;
        }
    }
}
