//! A drafter for tests whose acceptance is known in advance: every draft right, or every draft
//! wrong ([`ScriptedDrafter`]). Built for the crate's own tests and
//! with the `test-support` feature (which the workspace's end-to-end tests enable), never into
//! the binaries.

use anyhow::Result;

use super::{DraftContext, Drafter};

/// Proposes from a known continuation (the target's own greedy output): either that
/// continuation itself, so every block is accepted whole ([`ScriptedDrafter::replay`]), or at
/// every position another token, so no draft is ever accepted and every step commits the target's
/// bonus token alone ([`ScriptedDrafter::wrong`]).
pub struct ScriptedDrafter {
    /// Prompt and continuation, as the target will commit them.
    sequence: Vec<u32>,
    block_size: usize,
    /// `Some(vocab)`: propose the next id (mod vocab) instead of the continuation's.
    wrong_in: Option<usize>,
}

impl ScriptedDrafter {
    pub fn replay(sequence: Vec<u32>, block_size: usize) -> Self {
        ScriptedDrafter {
            sequence,
            block_size,
            wrong_in: None,
        }
    }

    pub fn wrong(sequence: Vec<u32>, vocab_size: usize, block_size: usize) -> Self {
        ScriptedDrafter {
            sequence,
            block_size,
            wrong_in: Some(vocab_size.max(1)),
        }
    }
}

impl Drafter for ScriptedDrafter {
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn capture_layers(&self) -> &[usize] {
        &[]
    }
    fn reset(&mut self) {}
    /// The next `count` tokens (0 past the sequence's end), or the ids after them.
    fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>> {
        let from = ctx.tokens.len();
        Ok((from..from + ctx.count)
            .map(|i| {
                let right = self.sequence.get(i).copied().unwrap_or(0);
                match self.wrong_in {
                    None => right,
                    Some(vocab) => ((right as usize + 1) % vocab) as u32,
                }
            })
            .collect())
    }
}
