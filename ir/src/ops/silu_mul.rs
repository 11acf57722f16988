//! The SwiGLU gate: `silu(gate) * up`. Tiles split the last axis, like the projections feeding it.

use std::ops::Range;

use mimo_macros::op;

use crate::math::silu;
use crate::op::{Access, Io, Op, column_indices, columns_access, expect_arity};
use crate::{Tensor, TensorType};

#[op(name = "silu_mul", inputs(gate, up), outputs(y))]
pub struct SiluMul {}

impl Op for SiluMul {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (g, u) = (&inputs[Self::GATE], &inputs[Self::UP]);
        if g.shape != u.shape || g.dtype.is_int() || u.dtype.is_int() || g.rank() == 0 {
            return Err(format!(
                "gate and up must be float tensors of one shape, got {g} and {u}"
            ));
        }
        Ok(vec![TensorType::f32(g.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].last_dim()
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        columns_access(io, Self::Y, &[Self::GATE, Self::UP], units)
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let cols = inputs[Self::GATE].shape.last().copied().unwrap_or(1);
        let (x, z) = (inputs[Self::GATE].f32(), inputs[Self::UP].f32());
        let y = outputs[Self::Y].f32_mut();
        for i in column_indices(y.len(), cols, units) {
            y[i] = silu(x[i]) * z[i];
        }
    }

    fn fuse_as_epilogue(&self) -> bool {
        true
    }
}
