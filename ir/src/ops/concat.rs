//! Joins two values along one axis: `y = [a | b]`. DFlash needs it twice: the target layers'
//! hidden states side by side on the feature axis (the verify graph's `features`), and the
//! draft's context rows stacked above the block's rows (so one projection reads its weight once
//! for both).

use std::ops::Range;

use mimo_macros::op;

use crate::math::axis_region;
use crate::op::{Access, Io, Op, expect_arity};
use crate::{Tensor, TensorType};

/// Every axis but `axis` must agree. Tiles split the last axis of the result: a tile copies its
/// columns of every row, so it reads the same columns of both operands (joining along an earlier
/// axis) or the columns of the one operand they come from (joining along the last axis).
#[op(name = "concat", inputs(a, b), outputs(y))]
pub struct Concat {
    pub axis: usize,
}

impl Op for Concat {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (a, b) = (&inputs[Self::A], &inputs[Self::B]);
        if a.dtype.is_int() || b.dtype.is_int() || a.rank() != b.rank() || self.axis >= a.rank() {
            return Err(format!(
                "operands must be float tensors of one rank above {}, got {a} and {b}",
                self.axis
            ));
        }
        let agree = (0..a.rank()).all(|i| i == self.axis || a.shape[i] == b.shape[i]);
        if !agree {
            return Err(format!(
                "operands must agree on every axis but {}, got {a} and {b}",
                self.axis
            ));
        }
        let mut shape = a.shape.clone();
        shape[self.axis] += b.shape[self.axis];
        Ok(vec![TensorType::f32(shape)])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].last_dim()
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let (a, b, y) = (
            &io.inputs[Self::A],
            &io.inputs[Self::B],
            &io.outputs[Self::Y],
        );
        let last = y.rank() - 1;
        let mut reads = Vec::new();
        if self.axis == last {
            let n = a.last_dim();
            let in_a = units.start.min(n)..units.end.min(n);
            let in_b = units.start.max(n) - n..units.end.max(n) - n;
            if !in_a.is_empty() {
                reads.push((Self::A, axis_region(a, last, in_a)));
            }
            if !in_b.is_empty() {
                reads.push((Self::B, axis_region(b, last, in_b)));
            }
        } else {
            reads.push((Self::A, axis_region(a, last, units.clone())));
            reads.push((Self::B, axis_region(b, last, units.clone())));
        }
        Access {
            writes: vec![(Self::Y, axis_region(y, last, units))],
            reads,
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (a, b) = (inputs[Self::A], inputs[Self::B]);
        // Row-major: everything from `axis` on is one contiguous chunk per index of the axes
        // before it, so the result interleaves one chunk of `a` with one chunk of `b`.
        let outer: usize = a.shape[..self.axis].iter().product();
        let chunk_a: usize = a.shape[self.axis..].iter().product();
        let chunk_b: usize = b.shape[self.axis..].iter().product();
        let cols = outputs[Self::Y].shape.last().copied().unwrap_or(1);
        let (a, b) = (a.f32(), b.f32());
        let y = outputs[Self::Y].f32_mut();
        for o in 0..outer {
            let dst = o * (chunk_a + chunk_b);
            let parts = [
                (&a[o * chunk_a..][..chunk_a], dst),
                (&b[o * chunk_b..][..chunk_b], dst + chunk_a),
            ];
            for (src, at) in parts {
                for (i, &v) in src.iter().enumerate() {
                    if units.contains(&((at + i) % cols)) {
                        y[at + i] = v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(axis: usize, a: Tensor, b: Tensor) -> Tensor {
        let op = Concat { axis };
        let types: Vec<TensorType> = [&a, &b]
            .iter()
            .map(|t| TensorType::f32(t.shape.clone()))
            .collect();
        let out = op.infer(&types).unwrap();
        let mut y = vec![Tensor::zeros(&out[0])];
        let units = op.work_units(Io {
            inputs: &types,
            outputs: &out,
        });
        op.reference(&[&a, &b], &mut y, 0..units);
        y.remove(0)
    }

    #[test]
    fn joins_rows_and_columns() {
        let a = Tensor::from_f32([2, 2], vec![1., 2., 3., 4.]);
        let b = Tensor::from_f32([1, 2], vec![5., 6.]);
        assert_eq!(run(0, a.clone(), b).f32(), [1., 2., 3., 4., 5., 6.]);
        let c = Tensor::from_f32([2, 1], vec![7., 8.]);
        assert_eq!(run(1, a, c).f32(), [1., 2., 7., 3., 4., 8.]);
    }

    #[test]
    fn refuses_operands_that_disagree() {
        let op = Concat { axis: 1 };
        let err = op
            .infer(&[TensorType::f32([2, 3]), TensorType::f32([3, 3])])
            .unwrap_err();
        assert!(err.contains("agree on every axis but 1"), "{err}");
        let err = Concat { axis: 2 }
            .infer(&[TensorType::f32([2, 3]), TensorType::f32([2, 3])])
            .unwrap_err();
        assert!(err.contains("one rank above 2"), "{err}");
    }
}
