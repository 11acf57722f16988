//! The SwiGLU gate: `silu(gate) * up`.

use std::ops::Range;

use mimo_macros::op;

use crate::math::{rows_region, silu};
use crate::op::{Access, Io, Op, expect_arity};
use crate::{Tensor, TensorType};

#[op(name = "silu_mul", inputs(gate, up), outputs(y), template = "silu_mul")]
pub struct SiluMul {}

impl Op for SiluMul {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (g, u) = (&inputs[Self::GATE], &inputs[Self::UP]);
        if g.shape != u.shape || g.dtype.is_int() || u.dtype.is_int() || g.rank() == 0 {
            return Err(format!("gate and up must be float tensors of one shape, got {g} and {u}"));
        }
        Ok(vec![TensorType::f32(g.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let region = rows_region(&io.outputs[Self::Y], units);
        Access { writes: vec![(Self::Y, region.clone())], reads: vec![(Self::GATE, region.clone()), (Self::UP, region)] }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let row = inputs[Self::GATE].numel() / inputs[Self::GATE].shape[0];
        let span = units.start * row..units.end * row;
        let (g, u) = (&inputs[Self::GATE].f32()[span.clone()], &inputs[Self::UP].f32()[span.clone()]);
        for ((y, &gv), &uv) in outputs[Self::Y].f32_mut()[span].iter_mut().zip(g).zip(u) {
            *y = silu(gv) * uv;
        }
    }
}
