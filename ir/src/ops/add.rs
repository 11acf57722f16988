//! Elementwise sum of two values of one shape (the residual connections).

use std::ops::Range;

use mimo_macros::op;

use crate::math::rows_region;
use crate::op::{Access, Io, Op, expect_arity};
use crate::{Tensor, TensorType};

#[op(name = "add", inputs(a, b), outputs(y), template = "add")]
pub struct Add {}

impl Op for Add {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (a, b) = (&inputs[Self::A], &inputs[Self::B]);
        if a.shape != b.shape || a.dtype.is_int() || b.dtype.is_int() || a.rank() == 0 {
            return Err(format!("operands must be float tensors of one shape, got {a} and {b}"));
        }
        Ok(vec![TensorType::f32(a.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let region = rows_region(&io.outputs[Self::Y], units);
        Access { writes: vec![(Self::Y, region.clone())], reads: vec![(Self::A, region.clone()), (Self::B, region)] }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let row = inputs[Self::A].numel() / inputs[Self::A].shape[0];
        let span = units.start * row..units.end * row;
        let (a, b) = (&inputs[Self::A].f32()[span.clone()], &inputs[Self::B].f32()[span.clone()]);
        for ((y, x), z) in outputs[Self::Y].f32_mut()[span].iter_mut().zip(a).zip(b) {
            *y = x + z;
        }
    }
}
