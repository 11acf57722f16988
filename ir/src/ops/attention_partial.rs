//! Split-K attention ("flash decoding"): each KV head's context is cut into `splits` parts at run
//! time, and every part yields an unnormalised partial result that `attention_combine` merges.

use std::ops::Range;

use mimo_macros::op;

use super::attention::{check_attention_operands, context_rows};
use crate::math::{axis_region, dot};
use crate::op::{Access, Cost, Io, Op, expect_arity, whole};
use crate::{Tensor, TensorType};

/// For query `t` the context is [`context_rows`]`(positions[t], window)` (`L` rows from `r0`);
/// split `s` covers rows `r0 + s*L/splits .. r0 + (s+1)*L/splits`, so the parts stay balanced at
/// every length while the number of tiles is fixed at compile time. Unit `u` is KV head
/// `u / splits`, split `u % splits`, and serves the `heads / kv_heads` query heads of that KV
/// head (which then read K and V once).
///
/// Results: `acc` [tokens, heads, splits, v_head_dim] = `sum_j exp(s_j - m) v_j` and `ml`
/// [tokens, heads, splits, 2] = (`m` = the part's largest score, `l` = `sum_j exp(s_j - m)`);
/// an empty part has `m = -inf`, `l = 0`.
#[op(
    name = "attention_partial",
    inputs(q, k_cache, v_cache, positions),
    outputs(acc, ml)
)]
pub struct AttentionPartial {
    pub scale: f32,
    pub splits: usize,
    /// As [`super::Attention::window`]: 0 for the whole causal context.
    #[serde(default)]
    pub window: usize,
}

impl AttentionPartial {
    /// The rows split `s` covers for a query at `position`.
    pub fn split_rows(&self, position: usize, s: usize) -> Range<usize> {
        let rows = context_rows(position, self.window);
        let len = rows.len();
        rows.start + s * len / self.splits..rows.start + (s + 1) * len / self.splits
    }

    fn group(io: Io<'_>) -> usize {
        io.inputs[Self::Q].shape[1] / io.inputs[Self::K_CACHE].shape[1]
    }
}

impl Op for AttentionPartial {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let q = &inputs[Self::Q];
        check_attention_operands(
            q,
            &inputs[Self::K_CACHE],
            &inputs[Self::V_CACHE],
            &inputs[Self::POSITIONS],
        )?;
        if self.splits == 0 {
            return Err("splits must be at least 1".into());
        }
        let (t, h, d) = (q.shape[0], q.shape[1], inputs[Self::V_CACHE].shape[2]);
        Ok(vec![
            TensorType::f32([t, h, self.splits, d]),
            TensorType::f32([t, h, self.splits, 2]),
        ])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.inputs[Self::K_CACHE].shape[1] * self.splits
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let g = Self::group(io);
        let mut access = Access {
            writes: Vec::new(),
            reads: vec![(Self::POSITIONS, whole(&io.inputs[Self::POSITIONS]))],
        };
        // One box per KV head the tile touches: its query heads, and its run of splits.
        let (first, last) = (units.start / self.splits, (units.end - 1) / self.splits);
        for kvh in first..=last {
            let s0 = if kvh == first {
                units.start % self.splits
            } else {
                0
            };
            let s1 = if kvh == last {
                (units.end - 1) % self.splits + 1
            } else {
                self.splits
            };
            for (out, ty) in [
                (Self::ACC, &io.outputs[Self::ACC]),
                (Self::ML, &io.outputs[Self::ML]),
            ] {
                let mut region = whole(ty);
                region[1] = kvh * g..(kvh + 1) * g;
                region[2] = s0..s1;
                access.writes.push((out, region));
            }
            access.reads.push((
                Self::Q,
                axis_region(&io.inputs[Self::Q], 1, kvh * g..(kvh + 1) * g),
            ));
            access.reads.push((
                Self::K_CACHE,
                axis_region(&io.inputs[Self::K_CACHE], 1, kvh..kvh + 1),
            ));
            access.reads.push((
                Self::V_CACHE,
                axis_region(&io.inputs[Self::V_CACHE], 1, kvh..kvh + 1),
            ));
        }
        access
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (q, k, v) = (
            inputs[Self::Q],
            inputs[Self::K_CACHE].f32(),
            inputs[Self::V_CACHE].f32(),
        );
        let pos = inputs[Self::POSITIONS].i32();
        let (tokens, heads, hd) = (q.shape[0], q.shape[1], q.shape[2]);
        let kvh_n = inputs[Self::K_CACHE].shape[1];
        let dv = inputs[Self::V_CACHE].shape[2];
        let g = heads / kvh_n;
        let q = q.f32();
        let splits = self.splits;
        let (acc_out, ml_out) = outputs.split_at_mut(Self::ML);
        let (acc, ml) = (acc_out[Self::ACC].f32_mut(), ml_out[0].f32_mut());
        for u in units {
            let (kvh, s) = (u / splits, u % splits);
            for t in 0..tokens {
                let rows = self.split_rows(pos[t] as usize, s);
                for h in kvh * g..(kvh + 1) * g {
                    let qv = &q[(t * heads + h) * hd..][..hd];
                    let scores: Vec<f32> = rows
                        .clone()
                        .map(|j| dot(qv, &k[(j * kvh_n + kvh) * hd..][..hd]) * self.scale)
                        .collect();
                    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let slot = (t * heads + h) * splits + s;
                    let out = &mut acc[slot * dv..][..dv];
                    out.fill(0.0);
                    let mut l = 0.0;
                    for (j, sc) in rows.clone().zip(&scores) {
                        let p = (sc - m).exp();
                        l += p;
                        for (o, x) in out.iter_mut().zip(&v[(j * kvh_n + kvh) * dv..][..dv]) {
                            *o += p * x;
                        }
                    }
                    ml[slot * 2] = m;
                    ml[slot * 2 + 1] = l;
                }
            }
        }
    }

    fn cost(&self, io: Io<'_>, units: Range<usize>) -> Cost {
        // Each unit reads its share of the cache rows of one KV head: 1/splits of the context
        // (counted at full context or window, the worst case), keys and values.
        let k = &io.inputs[Self::K_CACHE];
        let rows = match self.window {
            0 => k.shape[0],
            w => w.min(k.shape[0]),
        };
        let (ctx, hd) = (rows as f64, k.shape[2] as f64);
        let t = io.inputs[Self::Q].shape[0] as f64;
        let g = Self::group(io) as f64;
        let n = units.len() as f64;
        Cost {
            bytes: n
                * (2.0 * ctx / self.splits as f64 * hd * k.dtype.bytes_per_element()
                    + t * g * hd * 8.0),
            flops: n * t * g * 4.0 * ctx / self.splits as f64 * hd,
        }
    }
}
