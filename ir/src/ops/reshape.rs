//! Reinterprets a value's shape (row-major order unchanged). Free on the GPU: fusion folds it away.

use std::ops::Range;

use mimo_macros::op;

use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{Tensor, TensorType};

#[op(name = "reshape", inputs(x), outputs(y))]
pub struct Reshape {
    pub shape: Vec<usize>,
}

impl Op for Reshape {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let x = &inputs[Self::X];
        if self.shape.iter().product::<usize>() != x.numel() {
            return Err(format!("cannot reshape {x} to {:?}", self.shape));
        }
        Ok(vec![TensorType::new(self.shape.clone(), x.dtype)])
    }

    fn work_units(&self, _io: Io<'_>) -> usize {
        1
    }

    fn access(&self, io: Io<'_>, _units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, whole(&io.outputs[Self::Y]))],
            reads: vec![(Self::X, whole(&io.inputs[Self::X]))],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], _units: Range<usize>) {
        let shape = outputs[Self::Y].shape.clone();
        outputs[Self::Y] = Tensor {
            shape,
            data: inputs[Self::X].data.clone(),
        };
    }

    fn recompute_in_consumers(&self) -> bool {
        true
    }
}
