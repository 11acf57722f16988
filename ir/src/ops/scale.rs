//! A value times a constant: MiMo-V2 scales its attention values by `attention_value_scale`
//! before they enter the KV cache. Tiles split the last axis, like the other elementwise ops; a
//! prologue its consumers recompute, as the other cheap per-element ops are.

use std::ops::Range;

use mimo_macros::op;

use crate::op::{Access, Io, Op, column_indices, columns_access, expect_arity};
use crate::{Tensor, TensorType};

/// `y = factor * x`, in f32.
#[op(name = "scale", inputs(x), outputs(y))]
pub struct Scale {
    pub factor: f32,
}

impl Op for Scale {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let x = &inputs[Self::X];
        if x.dtype.is_int() || x.rank() == 0 {
            return Err(format!("x must be a float tensor, got {x}"));
        }
        if !self.factor.is_finite() {
            return Err(format!("factor must be finite, got {}", self.factor));
        }
        Ok(vec![TensorType::f32(x.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].last_dim()
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        columns_access(io, Self::Y, &[Self::X], units)
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let cols = inputs[Self::X].shape.last().copied().unwrap_or(1);
        let x = inputs[Self::X].f32();
        let y = outputs[Self::Y].f32_mut();
        for i in column_indices(y.len(), cols, units) {
            y[i] = self.factor * x[i];
        }
    }

    /// One multiply per element: the value cache's append applies it as it stores (`v_scale`).
    fn recompute_in_consumers(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphBuilder;
    use crate::interp::F32Weights;
    use crate::op::tests::check_graph_tiling;

    #[test]
    fn multiplies_every_element_and_tiles_as_it_declares() {
        let mut b = GraphBuilder::new("scale");
        let x = b.input("x", TensorType::f32([3, 2, 4])).unwrap();
        let y = b.op1("scaled", Scale { factor: 0.707 }, &[x]).unwrap();
        b.output("y", y).unwrap();
        let graph = b.finish().unwrap();
        let data: Vec<f32> = (0..24).map(|i| i as f32 - 11.5).collect();
        let inputs = [("x", Tensor::from_f32([3, 2, 4], data.clone()))];
        let out = crate::interp::run(
            &graph,
            &F32Weights::default(),
            &mut Default::default(),
            &inputs,
        )
        .unwrap();
        let want: Vec<f32> = data.iter().map(|v| 0.707 * v).collect();
        assert_eq!(out["y"].f32(), want);
        check_graph_tiling(&graph, &F32Weights::default(), &inputs);
        let err = Scale { factor: f32::NAN }
            .infer(&[TensorType::f32([2])])
            .unwrap_err();
        assert_eq!(err, "factor must be finite, got NaN");
    }
}
