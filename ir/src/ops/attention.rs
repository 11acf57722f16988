//! Causal grouped-query attention of the new tokens over the KV cache.

use std::ops::Range;

use mimo_macros::op;
use rayon::prelude::*;

use crate::math::{axis_region, dot, softmax, softmax_with_sink};
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// Query `t` (at absolute position `positions[t]`) attends to the cache rows
/// [`context_rows`]`(positions[t], window)`; query head `h` reads KV head `h / (heads /
/// kv_heads)`. Softmax in f32. Values may be narrower than queries and keys (MiMo-V2: 128 of
/// 192): the result has the values' head dim. With `sinks` (f32 `[heads]`, MiMo-V2's sliding
/// layers, gpt-oss), head `h`'s softmax has one more column of logit `sinks[h]` (not scaled),
/// which joins the denominator and is then dropped.
#[op(
    name = "attention",
    inputs(q, k_cache, v_cache, positions, sinks?),
    outputs(y)
)]
pub struct Attention {
    pub scale: f32,
    /// Sliding-window attention: how many rows a query sees, itself included (transformers'
    /// `sliding_window`); 0 for all of `0..=position`.
    #[serde(default)]
    pub window: usize,
}

/// The cache rows a query at `position` attends to: `0..=position`, or with a sliding `window`
/// (> 0) only the last `window` of them.
pub fn context_rows(position: usize, window: usize) -> Range<usize> {
    let end = position + 1;
    match window {
        0 => 0..end,
        w => end.saturating_sub(w)..end,
    }
}

/// The operands every attention op takes: q [tokens, heads, head_dim], the K cache [context,
/// kv_heads dividing heads, head_dim], the V cache [context, kv_heads, v_head_dim], positions i32
/// `[tokens]`.
pub fn check_attention_operands(
    q: &TensorType,
    k: &TensorType,
    v: &TensorType,
    pos: &TensorType,
) -> Result<(), String> {
    check_qkv(q, k, v)?;
    if pos.dtype != DType::I32 || pos.shape != [q.shape[0]] {
        return Err(format!("positions must be i32 [{}], got {pos}", q.shape[0]));
    }
    Ok(())
}

/// The optional sinks operand: one float logit per query head.
pub fn check_sinks(sinks: Option<&TensorType>, heads: usize) -> Result<(), String> {
    match sinks {
        Some(s) if s.dtype.is_int() || s.shape != [heads] => {
            Err(format!("sinks must be float [{heads}], got {s}"))
        }
        _ => Ok(()),
    }
}

fn check_qkv(q: &TensorType, k: &TensorType, v: &TensorType) -> Result<(), String> {
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
    if v.rank() != 3 || v.shape[..2] != k.shape[..2] || v.shape[2] == 0 {
        return Err(format!(
            "v_cache must be [{}, {}, v_head_dim], got {v}",
            k.shape[0], k.shape[1]
        ));
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
        check_sinks(inputs.get(Self::SINKS), q.shape[1])?;
        let dv = inputs[Self::V_CACHE].shape[2];
        Ok(vec![TensorType::f32([q.shape[0], q.shape[1], dv])])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let group = io.inputs[Self::Q].shape[1] / io.inputs[Self::K_CACHE].shape[1];
        let kv_heads = units.start / group..units.end.div_ceil(group);
        let mut reads = vec![
            (Self::Q, axis_region(&io.inputs[Self::Q], 1, units.clone())),
            (
                Self::K_CACHE,
                axis_region(&io.inputs[Self::K_CACHE], 1, kv_heads.clone()),
            ),
            (
                Self::V_CACHE,
                axis_region(&io.inputs[Self::V_CACHE], 1, kv_heads),
            ),
            (Self::POSITIONS, whole(&io.inputs[Self::POSITIONS])),
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
        let (q, k, v) = (
            inputs[Self::Q],
            inputs[Self::K_CACHE].f32(),
            inputs[Self::V_CACHE].f32(),
        );
        let pos = inputs[Self::POSITIONS].i32();
        let sinks = inputs.get(Self::SINKS).map(|s| s.f32());
        let (t_len, heads, hd) = (q.shape[0], q.shape[1], q.shape[2]);
        let kvh = inputs[Self::K_CACHE].shape[1];
        let dv = inputs[Self::V_CACHE].shape[2];
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
                let rows = context_rows(pos[t] as usize, self.window);
                let mut scores: Vec<f32> = rows
                    .clone()
                    .map(|j| dot(qv, &k[(j * kvh + kv) * hd..][..hd]) * self.scale)
                    .collect();
                match sinks {
                    Some(sinks) => softmax_with_sink(&mut scores, sinks[h]),
                    None => softmax(&mut scores),
                }
                let mut out = vec![0.0f32; dv];
                for (j, p) in rows.zip(&scores) {
                    for (o, x) in out.iter_mut().zip(&v[(j * kvh + kv) * dv..][..dv]) {
                        *o += p * x;
                    }
                }
                out
            })
            .collect();
        let y = outputs[Self::Y].f32_mut();
        for (&(t, h), r) in pairs.iter().zip(results) {
            y[(t * heads + h) * dv..][..dv].copy_from_slice(&r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::Rng;

    /// One attention op of `window` over `k` [ctx, 2, 4] and `v` [ctx, 2, dv] for 4 query heads.
    fn attend(window: usize, q: &Tensor, k: &Tensor, v: &Tensor, positions: &[i32]) -> Tensor {
        let op = Attention { scale: 0.5, window };
        let pos = Tensor::from_i32([positions.len()], positions.to_vec());
        crate::op::tests::run_reference(&op, &[q, k, v, &pos], 0..4).remove(0)
    }

    fn random(shape: [usize; 3], rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|_| rng.normal(1.0)).collect())
    }

    /// Rows `rows` of a cache.
    fn rows_of(t: &Tensor, rows: Range<usize>) -> Tensor {
        let row = t.shape[1] * t.shape[2];
        let data = t.f32()[rows.start * row..rows.end * row].to_vec();
        Tensor::from_f32([rows.len(), t.shape[1], t.shape[2]], data)
    }

    #[test]
    fn a_sliding_window_sees_the_query_and_the_rows_before_it() {
        assert_eq!(context_rows(5, 0), 0..6);
        assert_eq!(context_rows(5, 3), 3..6);
        assert_eq!(context_rows(1, 4), 0..2);
        assert_eq!(context_rows(0, 1), 0..1);
        let mut rng = Rng::new(7);
        let (q, k, v) = (
            random([1, 4, 4], &mut rng),
            random([9, 2, 4], &mut rng),
            random([9, 2, 3], &mut rng),
        );
        // The result has the values' head dim.
        assert_eq!(attend(0, &q, &k, &v, &[6]).shape, [1, 4, 3]);
        // A window of one: the query's own row, whatever the scores.
        let own = attend(1, &q, &k, &v, &[6]);
        for h in 0..4 {
            let kv = h / 2;
            assert_eq!(&own.f32()[h * 3..][..3], &v.f32()[(6 * 2 + kv) * 3..][..3]);
        }
        // A window at least as long as the context is the whole causal context.
        assert_eq!(attend(7, &q, &k, &v, &[6]), attend(0, &q, &k, &v, &[6]));
        // A window of 3 at position 6: the full attention of a cache holding rows 4..=6 only.
        let windowed = attend(3, &q, &k, &v, &[6]);
        let cut = attend(0, &q, &rows_of(&k, 4..7), &rows_of(&v, 4..7), &[2]);
        for (a, b) in windowed.f32().iter().zip(cut.f32()) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn values_must_share_the_keys_rows_and_heads() {
        let op = Attention {
            scale: 1.0,
            window: 0,
        };
        let err = op
            .infer(&[
                TensorType::f32([1, 4, 8]),
                TensorType::f32([6, 2, 8]),
                TensorType::f32([6, 1, 8]),
                TensorType::i32([1]),
            ])
            .unwrap_err();
        assert_eq!(err, "v_cache must be [6, 2, v_head_dim], got f32[6, 1, 8]");
    }
}
