//! Elementwise sum of two values of one shape (the residual connections). Tiles split the last
//! axis, so a residual add fuses as the epilogue of the projection that feeds it.

use std::ops::Range;

use mimo_macros::op;

use crate::op::{Access, Io, Op, column_indices, columns_access, expect_arity};
use crate::{Tensor, TensorType};

#[op(name = "add", inputs(a, b), outputs(y))]
pub struct Add {}

impl Op for Add {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (a, b) = (&inputs[Self::A], &inputs[Self::B]);
        if a.shape != b.shape || a.dtype.is_int() || b.dtype.is_int() || a.rank() == 0 {
            return Err(format!(
                "operands must be float tensors of one shape, got {a} and {b}"
            ));
        }
        Ok(vec![TensorType::f32(a.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].last_dim()
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        columns_access(io, Self::Y, &[Self::A, Self::B], units)
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let cols = inputs[Self::A].shape.last().copied().unwrap_or(1);
        let (x, z) = (inputs[Self::A].f32(), inputs[Self::B].f32());
        let y = outputs[Self::Y].f32_mut();
        for i in column_indices(y.len(), cols, units) {
            y[i] = x[i] + z[i];
        }
    }

    fn fuse_as_epilogue(&self) -> bool {
        true
    }
}
