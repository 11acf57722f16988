//! MoE router: expert scores in f32 (softmax, or MiMo-V2's sigmoid), the top-k, optionally
//! renormalised and scaled.

use std::ops::Range;

use mimo_macros::op;

use serde::{Deserialize, Serialize};

use crate::math::{rows_region, softmax};
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// From router logits [tokens, experts] to the chosen experts (i32 [tokens, k], by descending
/// selection score, the lower index first on ties) and their weights (f32 [tokens, k]).
///
/// The scores are `scoring` of the logits. The selection score is the score plus
/// `selection_bias` (f32 `[experts]`, MiMo-V2's `e_score_correction_bias`) when given; the
/// weights are the chosen experts' scores without it. With `normalize` the k weights are divided
/// by their sum (Mixtral; Qwen3-MoE and MiMo-V2 when `norm_topk_prob`; for sigmoid scores plus
/// 1e-20, as transformers does); then multiplied by `scale` (MiMo-V2's `routed_scaling_factor`).
#[op(
    name = "router_topk",
    inputs(logits, selection_bias?),
    outputs(ids, weights)
)]
pub struct RouterTopK {
    pub k: usize,
    pub normalize: bool,
    #[serde(default)]
    pub scoring: RouterScoring,
    #[serde(default = "unit_scale")]
    pub scale: f32,
}

/// How router logits become expert scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterScoring {
    /// A softmax over the experts (Qwen3-MoE, Mixtral).
    #[default]
    Softmax,
    /// Each expert's own sigmoid (MiMo-V2, DeepSeek-V3).
    Sigmoid,
}

fn unit_scale() -> f32 {
    1.0
}

impl RouterTopK {
    /// The router of Qwen3-MoE and Mixtral: softmax scores, no bias, no scale.
    pub fn softmax(k: usize, normalize: bool) -> RouterTopK {
        RouterTopK {
            k,
            normalize,
            scoring: RouterScoring::Softmax,
            scale: 1.0,
        }
    }
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
        if let Some(bias) = inputs.get(Self::SELECTION_BIAS)
            && (bias.dtype.is_int() || bias.shape != [logits.shape[1]])
        {
            return Err(format!(
                "selection_bias must be float [{}], got {bias}",
                logits.shape[1]
            ));
        }
        if !self.scale.is_finite() || self.scale <= 0.0 {
            return Err(format!("scale must be positive, got {}", self.scale));
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
            reads: [(Self::LOGITS, rows_region(&io.inputs[Self::LOGITS], units))]
                .into_iter()
                .chain(
                    io.inputs
                        .get(Self::SELECTION_BIAS)
                        .map(|b| (Self::SELECTION_BIAS, whole(b))),
                )
                .collect(),
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let logits = inputs[Self::LOGITS];
        let bias = inputs.get(Self::SELECTION_BIAS).map(|b| b.f32());
        let e = logits.shape[1];
        let k = self.k;
        for t in units {
            let mut scores = logits.f32()[t * e..(t + 1) * e].to_vec();
            match self.scoring {
                RouterScoring::Softmax => softmax(&mut scores),
                RouterScoring::Sigmoid => scores
                    .iter_mut()
                    .for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
            }
            let choice: Vec<f32> = match bias {
                Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                None => scores.clone(),
            };
            let mut order: Vec<usize> = (0..e).collect();
            // Stable sort: equal scores keep the lower expert first.
            order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]));
            let chosen = &order[..k];
            let mut sum: f32 = chosen.iter().map(|&i| scores[i]).sum();
            if self.scoring == RouterScoring::Sigmoid {
                sum += 1e-20;
            }
            for (j, &i) in chosen.iter().enumerate() {
                let w = if self.normalize {
                    scores[i] / sum
                } else {
                    scores[i]
                };
                outputs[Self::IDS].i32_mut()[t * k + j] = i as i32;
                outputs[Self::WEIGHTS].f32_mut()[t * k + j] = w * self.scale;
            }
        }
    }

    fn recompute_in_consumers(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(op: &RouterTopK, logits: &[f32], bias: Option<&[f32]>) -> (Vec<i32>, Vec<f32>) {
        let e = logits.len();
        let logits = Tensor::from_f32([1, e], logits.to_vec());
        let bias = bias.map(|b| Tensor::from_f32([e], b.to_vec()));
        let mut inputs = vec![&logits];
        inputs.extend(bias.as_ref());
        let out = crate::op::tests::run_reference(op, &inputs, 0..1);
        (out[0].i32().to_vec(), out[1].f32().to_vec())
    }

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    /// MiMo-V2's router: the bias moves the choice, not the weights; the weights are the
    /// chosen sigmoid scores, renormalised, times the scale.
    #[test]
    fn the_selection_bias_chooses_and_the_scores_weigh() {
        let logits = [2.0, 0.5, 1.0, -1.0];
        let bias = [0.0, 3.0, 0.0, 0.0];
        let op = RouterTopK {
            k: 2,
            normalize: false,
            scoring: RouterScoring::Sigmoid,
            scale: 2.5,
        };
        let (ids, w) = route(&op, &logits, None);
        assert_eq!(ids, [0, 2]);
        assert_eq!(w, [sigmoid(2.0) * 2.5, sigmoid(1.0) * 2.5]);
        let (ids, w) = route(&op, &logits, Some(&bias));
        assert_eq!(ids, [1, 0]);
        assert_eq!(w, [sigmoid(0.5) * 2.5, sigmoid(2.0) * 2.5]);
        let normalized = RouterTopK {
            normalize: true,
            ..op.clone()
        };
        let (_, w) = route(&normalized, &logits, Some(&bias));
        let sum = sigmoid(0.5) + sigmoid(2.0) + 1e-20;
        assert_eq!(w, [sigmoid(0.5) / sum * 2.5, sigmoid(2.0) / sum * 2.5]);
        let err = op
            .infer(&[TensorType::f32([1, 4]), TensorType::f32([3])])
            .unwrap_err();
        assert_eq!(err, "selection_bias must be float [4], got f32[3]");
    }
}
