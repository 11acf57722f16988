//! DFlash acceptance: the longest prefix of the drafted block that the target agrees with, plus
//! the target's own next token (the bonus). It runs on the device so that a whole speculative
//! step can stay there; the host only reads how many tokens were committed.

use std::ops::Range;

use mimo_macros::op;

use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// `block` i32 `[B]` is what the target verified: the last committed token, then B - 1 drafts.
/// `posterior` i32 `[B]` is the target's token after each block token (its argmax, or its sample
/// at temperature > 0). Draft `i + 1` is accepted while it equals `posterior[i]` for every
/// earlier `i` too; with `a` accepted, the committed tokens are `posterior[0..=a]` (the accepted
/// drafts, which equal the posterior, then the bonus `posterior[a]`).
///
/// Results: `accepted` i32 `[1]` = `a` (0 ..= B - 1), and `committed` i32 `[B]` = `posterior[0..=a]`
/// followed by -1. One tile: B is a block of 8 or 16 tokens.
#[op(
    name = "accept",
    inputs(block, posterior),
    outputs(accepted, committed)
)]
pub struct Accept {}

impl Accept {
    /// The number of accepted drafts: the length of the longest run of `i` from 0 with
    /// `block[i + 1] == posterior[i]`.
    pub fn accepted(block: &[i32], posterior: &[i32]) -> usize {
        block
            .iter()
            .skip(1)
            .zip(posterior)
            .take_while(|(d, p)| d == p)
            .count()
    }
}

impl Op for Accept {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (block, post) = (&inputs[Self::BLOCK], &inputs[Self::POSTERIOR]);
        if block.rank() != 1 || block.dtype != DType::I32 || block.shape[0] == 0 {
            return Err(format!("block must be i32 [tokens], got {block}"));
        }
        if post.dtype != DType::I32 || post.shape != block.shape {
            return Err(format!(
                "posterior must be i32 {:?}, got {post}",
                block.shape
            ));
        }
        Ok(vec![
            TensorType::i32([1]),
            TensorType::i32(block.shape.clone()),
        ])
    }

    fn work_units(&self, _io: Io<'_>) -> usize {
        1
    }

    fn access(&self, io: Io<'_>, _units: Range<usize>) -> Access {
        Access {
            writes: vec![
                (Self::ACCEPTED, whole(&io.outputs[Self::ACCEPTED])),
                (Self::COMMITTED, whole(&io.outputs[Self::COMMITTED])),
            ],
            reads: vec![
                (Self::BLOCK, whole(&io.inputs[Self::BLOCK])),
                (Self::POSTERIOR, whole(&io.inputs[Self::POSTERIOR])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], _units: Range<usize>) {
        let (block, post) = (inputs[Self::BLOCK].i32(), inputs[Self::POSTERIOR].i32());
        let a = Self::accepted(block, post);
        outputs[Self::ACCEPTED].i32_mut()[0] = a as i32;
        for (i, c) in outputs[Self::COMMITTED].i32_mut().iter_mut().enumerate() {
            *c = if i <= a { post[i] } else { -1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(block: &[i32], post: &[i32]) -> (i32, Vec<i32>) {
        let n = block.len();
        let mut out = vec![
            Tensor::zeros(&TensorType::i32([1])),
            Tensor::zeros(&TensorType::i32([n])),
        ];
        let (b, p) = (
            Tensor::from_i32([n], block.to_vec()),
            Tensor::from_i32([n], post.to_vec()),
        );
        Accept {}.reference(&[&b, &p], &mut out, 0..1);
        (out[0].i32()[0], out[1].i32().to_vec())
    }

    #[test]
    fn longest_matching_prefix_plus_the_bonus() {
        // Drafts 7, 8 match the target's 7, 8; draft 1 does not (the target says 9).
        assert_eq!(run(&[5, 7, 8, 1], &[7, 8, 9, 4]), (2, vec![7, 8, 9, -1]));
        // Nothing matches: only the bonus.
        assert_eq!(run(&[5, 1, 8, 9], &[7, 8, 9, 4]), (0, vec![7, -1, -1, -1]));
        // Everything matches: B - 1 drafts and the bonus after the last one.
        assert_eq!(run(&[5, 7, 8, 9], &[7, 8, 9, 4]), (3, vec![7, 8, 9, 4]));
        // A later match after a mismatch does not count.
        assert_eq!(run(&[5, 0, 8, 9], &[7, 8, 9, 4]), (0, vec![7, -1, -1, -1]));
        // A block of one token is a plain decode step.
        assert_eq!(run(&[5], &[7]), (0, vec![7]));
    }

    #[test]
    fn refuses_mismatched_operands() {
        let err = Accept {}
            .infer(&[TensorType::i32([4]), TensorType::i32([3])])
            .unwrap_err();
        assert!(err.contains("posterior must be i32 [4]"), "{err}");
        assert!(
            Accept {}
                .infer(&[TensorType::f32([4]), TensorType::i32([4])])
                .is_err()
        );
    }
}
