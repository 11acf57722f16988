//! Causal grouped-query attention of the new tokens over the KV cache.

use std::ops::Range;

use mimo_macros::op;
use rayon::prelude::*;

use crate::math::{axis_region, dot, softmax};
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// Query `t` (at absolute position `positions[t]`) attends to cache rows `0..=positions[t]`;
/// query head `h` reads KV head `h / (heads / kv_heads)`. Softmax in f32.
#[op(name = "attention", inputs(q, k_cache, v_cache, positions), outputs(y))]
pub struct Attention {
    pub scale: f32,
}

/// The operands every attention op takes: q [tokens, heads, head_dim], K and V caches
/// [context, kv_heads dividing heads, head_dim], positions i32 `[tokens]`.
pub fn check_attention_operands(
    q: &TensorType,
    k: &TensorType,
    v: &TensorType,
    pos: &TensorType,
) -> Result<(), String> {
    if q.rank() != 3 || q.dtype.is_int() {
        return Err(format!(
            "q must be float [tokens, heads, head_dim], got {q}"
        ));
    }
    if k.rank() != 3
        || k.shape[2] != q.shape[2]
        || k.shape[1] == 0
        || !q.shape[1].is_multiple_of(k.shape[1])
    {
        return Err(format!(
            "k_cache must be [context, kv_heads dividing {}, {}], got {k}",
            q.shape[1], q.shape[2]
        ));
    }
    if v.shape != k.shape {
        return Err(format!(
            "v_cache must have k_cache's shape {:?}, got {v}",
            k.shape
        ));
    }
    if pos.dtype != DType::I32 || pos.shape != [q.shape[0]] {
        return Err(format!("positions must be i32 [{}], got {pos}", q.shape[0]));
    }
    Ok(())
}

impl Op for Attention {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let q = &inputs[Self::Q];
        check_attention_operands(
            q,
            &inputs[Self::K_CACHE],
            &inputs[Self::V_CACHE],
            &inputs[Self::POSITIONS],
        )?;
        Ok(vec![TensorType::f32(q.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let group = io.inputs[Self::Q].shape[1] / io.inputs[Self::K_CACHE].shape[1];
        let kv_heads = units.start / group..units.end.div_ceil(group);
        Access {
            writes: vec![(Self::Y, axis_region(&io.outputs[Self::Y], 1, units.clone()))],
            reads: vec![
                (Self::Q, axis_region(&io.inputs[Self::Q], 1, units)),
                (
                    Self::K_CACHE,
                    axis_region(&io.inputs[Self::K_CACHE], 1, kv_heads.clone()),
                ),
                (
                    Self::V_CACHE,
                    axis_region(&io.inputs[Self::V_CACHE], 1, kv_heads),
                ),
                (Self::POSITIONS, whole(&io.inputs[Self::POSITIONS])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (q, k, v) = (
            inputs[Self::Q],
            inputs[Self::K_CACHE].f32(),
            inputs[Self::V_CACHE].f32(),
        );
        let pos = inputs[Self::POSITIONS].i32();
        let (t_len, heads, hd) = (q.shape[0], q.shape[1], q.shape[2]);
        let kvh = inputs[Self::K_CACHE].shape[1];
        let group = heads / kvh;
        let q = q.f32();
        // One [hd] result per (token, head) of the tile, computed in parallel.
        let pairs: Vec<(usize, usize)> = (0..t_len)
            .flat_map(|t| units.clone().map(move |h| (t, h)))
            .collect();
        let results: Vec<Vec<f32>> = pairs
            .par_iter()
            .map(|&(t, h)| {
                let kv = h / group;
                let qv = &q[(t * heads + h) * hd..][..hd];
                let len = pos[t] as usize + 1;
                let mut scores: Vec<f32> = (0..len)
                    .map(|j| dot(qv, &k[(j * kvh + kv) * hd..][..hd]) * self.scale)
                    .collect();
                softmax(&mut scores);
                let mut out = vec![0.0f32; hd];
                for (j, p) in scores.iter().enumerate() {
                    for (o, x) in out.iter_mut().zip(&v[(j * kvh + kv) * hd..][..hd]) {
                        *o += p * x;
                    }
                }
                out
            })
            .collect();
        let y = outputs[Self::Y].f32_mut();
        for (&(t, h), r) in pairs.iter().zip(results) {
            y[(t * heads + h) * hd..][..hd].copy_from_slice(&r);
        }
    }
}
