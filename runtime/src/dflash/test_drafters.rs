//! What speculative-decoding tests share: a small target and DFlash draft ([`small_pair`]), and
//! a drafter whose acceptance is known in advance: every draft right, or every draft wrong
//! ([`ScriptedDrafter`]). Built for the crate's own tests and with the `test-support` feature
//! (which the workspace's end-to-end tests enable), never into the binaries.

use anyhow::Result;
use mimo_ir::formats::WeightFormat;
use mimo_ir::model::dflash::DraftSpec;
use mimo_ir::{Architecture, ModelSpec, WeightFormats};

use super::{DraftContext, Drafter};

/// A small speculative pair: a 3-layer Qwen3-MoE target (`vocab` tokens, a cache of `context`,
/// weights in `format`) and a 2-layer DFlash draft for it reading target layers 0 and 2, blocks
/// of `block`, the last token id as its mask.
pub fn small_pair(
    vocab: usize,
    context: usize,
    block: usize,
    format: WeightFormat,
) -> (ModelSpec, DraftSpec) {
    let target = ModelSpec {
        hybrid: None,
        architecture: Architecture::Qwen3Moe,
        vocab_size: vocab,
        hidden_size: 64,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        num_experts: 4,
        experts_per_token: 2,
        expert_intermediate_size: 64,
        norm_topk_prob: true,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        max_position_embeddings: context,
        tie_word_embeddings: false,
        formats: WeightFormats {
            experts: format,
            dense: format,
        },
    };
    let draft = DraftSpec {
        hidden_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        intermediate_size: 96,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        max_position_embeddings: context,
        block_size: block,
        target_layer_ids: vec![0, 2],
        mask_token_id: (vocab - 1) as u32,
        num_target_layers: Some(3),
        format: WeightFormat::Bf16,
    };
    (target, draft)
}

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
