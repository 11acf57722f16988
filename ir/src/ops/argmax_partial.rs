//! Greedy choice in parts: the largest logit of each chunk of the vocabulary, so the argmax can
//! be the epilogue of the lm_head tiles that computed the chunk.

use std::ops::Range;

use mimo_macros::op;

use crate::math::{argmax, axis_region};
use crate::op::{Access, Io, Op, expect_arity};
use crate::{DType, Tensor, TensorType};

/// Unit `c` covers logits `c*chunk .. min((c+1)*chunk, vocab)`; results: the chunk's largest
/// logit (f32 [tokens, chunks]) and its vocabulary index (i32 [tokens, chunks]), the first on ties.
#[op(name = "argmax_partial", inputs(logits), outputs(values, ids))]
pub struct ArgmaxPartial {
    pub chunk: usize,
}

impl Op for ArgmaxPartial {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let l = &inputs[Self::LOGITS];
        if l.rank() != 2 || l.dtype.is_int() || l.shape[1] == 0 {
            return Err(format!("logits must be float [tokens, vocab], got {l}"));
        }
        if self.chunk == 0 {
            return Err("chunk must be at least 1".into());
        }
        let chunks = l.shape[1].div_ceil(self.chunk);
        Ok(vec![
            TensorType::f32([l.shape[0], chunks]),
            TensorType::new([l.shape[0], chunks], DType::I32),
        ])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::VALUES].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        let vocab = io.inputs[Self::LOGITS].shape[1];
        let cols = units.start * self.chunk..(units.end * self.chunk).min(vocab);
        Access {
            writes: vec![
                (
                    Self::VALUES,
                    axis_region(&io.outputs[Self::VALUES], 1, units.clone()),
                ),
                (Self::IDS, axis_region(&io.outputs[Self::IDS], 1, units)),
            ],
            reads: vec![(Self::LOGITS, axis_region(&io.inputs[Self::LOGITS], 1, cols))],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let l = inputs[Self::LOGITS];
        let (tokens, vocab) = (l.shape[0], l.shape[1]);
        let chunks = outputs[Self::VALUES].shape[1];
        for t in 0..tokens {
            let row = &l.f32()[t * vocab..(t + 1) * vocab];
            for c in units.clone() {
                let start = c * self.chunk;
                let part = &row[start..(start + self.chunk).min(vocab)];
                let best = argmax(part);
                outputs[Self::VALUES].f32_mut()[t * chunks + c] = part[best];
                outputs[Self::IDS].i32_mut()[t * chunks + c] = (start + best) as i32;
            }
        }
    }

    fn fuse_as_epilogue(&self) -> bool {
        true
    }
}
