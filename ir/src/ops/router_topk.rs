//! MoE router: softmax over the experts in f32, the top-k, optionally renormalised.

use std::ops::Range;

use mimo_macros::op;

use crate::math::{rows_region, softmax};
use crate::op::{Access, Io, Op, expect_arity};
use crate::{DType, Tensor, TensorType};

/// From router logits [tokens, experts] to the chosen experts (i32 [tokens, k], by descending
/// weight, the lower index first on ties) and their weights (f32 [tokens, k]). With `normalize`
/// the k weights are divided by their sum (Mixtral; Qwen3-MoE when `norm_topk_prob`).
#[op(name = "router_topk", inputs(logits), outputs(ids, weights))]
pub struct RouterTopK {
    pub k: usize,
    pub normalize: bool,
}

impl Op for RouterTopK {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let logits = &inputs[Self::LOGITS];
        if logits.rank() != 2 || logits.dtype.is_int() {
            return Err(format!(
                "logits must be float [tokens, experts], got {logits}"
            ));
        }
        if self.k == 0 || self.k > logits.shape[1] {
            return Err(format!("k = {} must be in 1..={}", self.k, logits.shape[1]));
        }
        let t = logits.shape[0];
        Ok(vec![
            TensorType::new([t, self.k], DType::I32),
            TensorType::f32([t, self.k]),
        ])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.inputs[Self::LOGITS].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![
                (
                    Self::IDS,
                    rows_region(&io.outputs[Self::IDS], units.clone()),
                ),
                (
                    Self::WEIGHTS,
                    rows_region(&io.outputs[Self::WEIGHTS], units.clone()),
                ),
            ],
            reads: vec![(Self::LOGITS, rows_region(&io.inputs[Self::LOGITS], units))],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let logits = inputs[Self::LOGITS];
        let e = logits.shape[1];
        let k = self.k;
        for t in units {
            let mut probs = logits.f32()[t * e..(t + 1) * e].to_vec();
            softmax(&mut probs);
            let mut order: Vec<usize> = (0..e).collect();
            // Stable sort: equal probabilities keep the lower expert first.
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let chosen = &order[..k];
            let sum: f32 = chosen.iter().map(|&i| probs[i]).sum();
            for (j, &i) in chosen.iter().enumerate() {
                outputs[Self::IDS].i32_mut()[t * k + j] = i as i32;
                outputs[Self::WEIGHTS].f32_mut()[t * k + j] = if self.normalize {
                    probs[i] / sum
                } else {
                    probs[i]
                };
            }
        }
    }

    fn recompute_in_consumers(&self) -> bool {
        true
    }
}
