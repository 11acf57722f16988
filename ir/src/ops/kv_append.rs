//! Writes the new tokens' keys or values into a KV cache at their positions, in place.

use std::ops::Range;

use mimo_macros::op;

use crate::math::{axis_region, matmul_operand};
use crate::op::{Access, Cost, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// `cache[positions[t], h, :] = new[t, h, :]`. Tiles split the KV heads: the rows written depend
/// on run-time positions, the heads do not, so per-head tiles are provably disjoint.
#[op(name = "kv_append", inputs(cache, new, positions), outputs(cache_out))]
pub struct KvAppend {}

impl Op for KvAppend {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (cache, new, pos) = (
            &inputs[Self::CACHE],
            &inputs[Self::NEW],
            &inputs[Self::POSITIONS],
        );
        if cache.rank() != 3 || cache.dtype.is_int() {
            return Err(format!(
                "cache must be float [context, kv_heads, head_dim], got {cache}"
            ));
        }
        if new.rank() != 3 || new.shape[1..] != cache.shape[1..] {
            return Err(format!(
                "new must be [tokens, {}, {}], got {new}",
                cache.shape[1], cache.shape[2]
            ));
        }
        if pos.dtype != DType::I32 || pos.shape != [new.shape[0]] {
            return Err(format!(
                "positions must be i32 [{}], got {pos}",
                new.shape[0]
            ));
        }
        Ok(vec![cache.clone()])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::CACHE_OUT].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(
                Self::CACHE_OUT,
                axis_region(&io.outputs[Self::CACHE_OUT], 1, units.clone()),
            )],
            reads: vec![
                (Self::NEW, axis_region(&io.inputs[Self::NEW], 1, units)),
                (Self::POSITIONS, whole(&io.inputs[Self::POSITIONS])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (new, pos) = (inputs[Self::NEW], inputs[Self::POSITIONS].i32());
        // Keys and values are matmul operands of attention: bf16 in the twin, as in the kernel.
        let rows = matmul_operand(new.f32());
        let (kvh, hd) = (new.shape[1], new.shape[2]);
        let cache = outputs[Self::CACHE_OUT].f32_mut();
        for (t, &p) in pos.iter().enumerate() {
            for h in units.clone() {
                let src = (t * kvh + h) * hd;
                let dst = (p as usize * kvh + h) * hd;
                cache[dst..dst + hd].copy_from_slice(&rows[src..src + hd]);
            }
        }
    }

    fn in_place(&self) -> &'static [(usize, usize)] {
        &[(Self::CACHE_OUT, Self::CACHE)]
    }

    /// The write region spans the whole context (positions are run-time values), but a tile
    /// writes one row per token and head.
    fn cost(&self, io: Io<'_>, units: Range<usize>) -> Cost {
        let (cache, new) = (&io.outputs[Self::CACHE_OUT], &io.inputs[Self::NEW]);
        let rows = (new.shape[0] * units.len()) as f64;
        let hd = cache.shape[2] as f64;
        Cost {
            bytes: rows * hd * (4.0 + cache.dtype.bytes_per_element()),
            flops: 0.0,
        }
    }
}
