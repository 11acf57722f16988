//! Merges the partial results of `attention_partial` into each head's attention output.

use std::ops::Range;

use mimo_macros::op;

use super::attention::check_sinks;
use crate::math::axis_region;
use crate::op::{Access, Io, Op, expect_arity};
use crate::{Tensor, TensorType};

/// `y = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s` with `M = max_s m_s`, per token and
/// head. Tiles split the heads. With `sinks` (f32 `[heads]`, see [`super::Attention`]),
/// `M` also covers `sinks[h]` and the denominator gains `exp(sinks[h] - M)`.
#[op(name = "attention_combine", inputs(acc, ml, sinks?), outputs(y))]
pub struct AttentionCombine {}

impl Op for AttentionCombine {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (acc, ml) = (&inputs[Self::ACC], &inputs[Self::ML]);
        if acc.rank() != 4 || acc.dtype.is_int() {
            return Err(format!(
                "acc must be float [tokens, heads, splits, head_dim], got {acc}"
            ));
        }
        if ml.rank() != 4
            || ml.shape[..3] != acc.shape[..3]
            || ml.shape[3] != 2
            || ml.dtype.is_int()
        {
            return Err(format!(
                "ml must be float [{}, {}, {}, 2], got {ml}",
                acc.shape[0], acc.shape[1], acc.shape[2]
            ));
        }
        check_sinks(inputs.get(Self::SINKS), acc.shape[1])?;
        Ok(vec![TensorType::f32([
            acc.shape[0],
            acc.shape[1],
            acc.shape[3],
        ])])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let mut reads = vec![
            (
                Self::ACC,
                axis_region(&io.inputs[Self::ACC], 1, units.clone()),
            ),
            (
                Self::ML,
                axis_region(&io.inputs[Self::ML], 1, units.clone()),
            ),
        ];
        if io.inputs.len() > Self::SINKS {
            reads.push((Self::SINKS, vec![units.clone()]));
        }
        Access {
            writes: vec![(Self::Y, axis_region(&io.outputs[Self::Y], 1, units))],
            reads,
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (acc, ml) = (inputs[Self::ACC], inputs[Self::ML].f32());
        let sinks = inputs.get(Self::SINKS).map(|s| s.f32());
        let (tokens, heads, splits, hd) = (acc.shape[0], acc.shape[1], acc.shape[2], acc.shape[3]);
        let (acc, y) = (acc.f32(), outputs[Self::Y].f32_mut());
        for t in 0..tokens {
            for h in units.clone() {
                let base = (t * heads + h) * splits;
                let sink = sinks.map(|s| s[h]);
                let m = (0..splits)
                    .map(|s| ml[(base + s) * 2])
                    .fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
                let out = &mut y[(t * heads + h) * hd..][..hd];
                out.fill(0.0);
                let mut l = sink.map_or(0.0, |s| (s - m).exp());
                for s in 0..splits {
                    let (ms, ls) = (ml[(base + s) * 2], ml[(base + s) * 2 + 1]);
                    if ls == 0.0 {
                        continue; // an empty part (m = -inf) adds nothing
                    }
                    let w = (ms - m).exp();
                    l += w * ls;
                    for (o, a) in out.iter_mut().zip(&acc[(base + s) * hd..][..hd]) {
                        *o += w * a;
                    }
                }
                out.iter_mut().for_each(|o| *o /= l);
            }
        }
    }

    fn recompute_in_consumers(&self) -> bool {
        true
    }
}
