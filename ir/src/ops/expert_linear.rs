//! Routed-expert projection: each token's input through the weight of each expert it was routed to.

use std::ops::Range;

use mimo_macros::op;
use rayon::prelude::*;

use crate::math::{axis_region, dot, matmul_operand};
use crate::op::{Access, Cost, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// `y[t, j] = weight[ids[t, j]] @ x[t(, j)]` with `weight` the stacked experts [experts, out, in].
/// `x` is [tokens, in] (one input shared by the k routed experts: gate and up) or
/// [tokens, k, in] (one input per routed expert: down). Tiles split the output features.
#[op(name = "expert_linear", inputs(x, ids, weight), outputs(y))]
pub struct ExpertLinear {}

impl Op for ExpertLinear {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, ids, w) = (&inputs[Self::X], &inputs[Self::IDS], &inputs[Self::WEIGHT]);
        if ids.rank() != 2 || ids.dtype != DType::I32 {
            return Err(format!("ids must be i32 [tokens, k], got {ids}"));
        }
        let (t, k) = (ids.shape[0], ids.shape[1]);
        let x_ok = match x.rank() {
            2 => x.shape[0] == t,
            3 => x.shape[..2] == [t, k],
            _ => false,
        };
        if !x_ok || x.dtype.is_int() {
            return Err(format!(
                "x must be float [{t}, in] or [{t}, {k}, in], got {x}"
            ));
        }
        if w.rank() != 3 || w.dtype.is_int() || w.shape[2] != x.last_dim() {
            return Err(format!(
                "weight must be float [experts, out, {}], got {w}",
                x.last_dim()
            ));
        }
        Ok(vec![TensorType::f32([t, k, w.shape[1]])])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[2]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, axis_region(&io.outputs[Self::Y], 2, units.clone()))],
            reads: vec![
                (Self::X, whole(&io.inputs[Self::X])),
                (Self::IDS, whole(&io.inputs[Self::IDS])),
                (
                    Self::WEIGHT,
                    axis_region(&io.inputs[Self::WEIGHT], 1, units),
                ),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, ids, w) = (
            inputs[Self::X],
            inputs[Self::IDS].i32(),
            inputs[Self::WEIGHT],
        );
        let (n_out, k_in) = (w.shape[1], w.shape[2]);
        let k = inputs[Self::IDS].shape[1];
        let shared_input = x.shape.len() == 2;
        let x = matmul_operand(x.f32());
        let (x, w) = (&x[..], w.f32());
        let y = outputs[Self::Y].f32_mut();
        // One slot per (token, routed expert): the [units] slice of its output row.
        let slots: Vec<Vec<f32>> = (0..ids.len())
            .into_par_iter()
            .map(|slot| {
                let xrow = if shared_input { slot / k } else { slot };
                let xv = &x[xrow * k_in..][..k_in];
                let expert = &w[ids[slot] as usize * n_out * k_in..][..n_out * k_in];
                units
                    .clone()
                    .map(|n| dot(xv, &expert[n * k_in..][..k_in]))
                    .collect()
            })
            .collect();
        for (slot, vals) in slots.into_iter().enumerate() {
            y[slot * n_out + units.start..slot * n_out + units.end].copy_from_slice(&vals);
        }
    }

    /// Only the routed experts' rows are read: at most `tokens * k` distinct experts, and never
    /// more than there are experts.
    fn cost(&self, io: Io<'_>, units: Range<usize>) -> Cost {
        let (x, ids, w) = (
            &io.inputs[Self::X],
            &io.inputs[Self::IDS],
            &io.inputs[Self::WEIGHT],
        );
        let slots = ids.numel() as f64;
        let experts = slots.min(w.shape[0] as f64);
        let (k_in, n) = (w.shape[2] as f64, units.len() as f64);
        Cost {
            bytes: experts * n * k_in * w.dtype.bytes_per_element()
                + x.numel() as f64 * 4.0
                + slots * n * 4.0,
            flops: 2.0 * slots * n * k_in,
        }
    }
}
