//! Token embedding lookup: `y[t] = table[ids[t]]`.

use std::ops::Range;

use mimo_macros::op;

use crate::math::rows_region;
use crate::op::{Access, Cost, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// Gathers one row of the table per token id. Ids must lie inside the vocabulary (the runtime
/// checks prompts before they reach a graph).
#[op(name = "embedding", inputs(table, ids), outputs(y))]
pub struct Embedding {}

impl Op for Embedding {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (table, ids) = (&inputs[Self::TABLE], &inputs[Self::IDS]);
        if table.rank() != 2 || table.dtype.is_int() {
            return Err(format!(
                "table must be a float [vocab, hidden] matrix, got {table}"
            ));
        }
        if ids.rank() != 1 || ids.dtype != DType::I32 {
            return Err(format!("ids must be i32 [tokens], got {ids}"));
        }
        Ok(vec![TensorType::f32([ids.shape[0], table.shape[1]])])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[0]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, rows_region(&io.outputs[Self::Y], units.clone()))],
            reads: vec![
                (Self::IDS, vec![units]),
                (Self::TABLE, whole(&io.inputs[Self::TABLE])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (table, ids) = (inputs[Self::TABLE], inputs[Self::IDS].i32());
        let h = table.shape[1];
        let y = outputs[Self::Y].f32_mut();
        for t in units {
            let id = ids[t] as usize;
            y[t * h..(t + 1) * h].copy_from_slice(&table.f32()[id * h..(id + 1) * h]);
        }
    }

    /// The table is declared read whole (the ids are run-time values), but a tile reads one row
    /// per token.
    fn cost(&self, io: Io<'_>, units: Range<usize>) -> Cost {
        let table = &io.inputs[Self::TABLE];
        let rows = units.len() as f64;
        Cost {
            bytes: rows * table.shape[1] as f64 * (table.dtype.bytes_per_element() + 4.0)
                + rows * 4.0,
            flops: 0.0,
        }
    }
}
