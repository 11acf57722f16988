//! The drafters: the DFlash draft model on the reference interpreter, and two test drafters whose
//! acceptance is known in advance (every draft right, every draft wrong).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mimo_ir::interp::{self, F32Weights, StateStore};
use mimo_ir::model::build::{LOGITS, POSITIONS, TOKEN_IDS};
use mimo_ir::model::dflash::graph::{ATTN_POSITIONS, CONTEXT, DRAFT_IDS, KV_POSITIONS};
use mimo_ir::model::dflash::{DraftSpec, draft_graph};
use mimo_ir::{Graph, ModelSpec, Tensor};

use super::{DraftContext, Drafter};

/// The DFlash draft model, run by the reference interpreter with its own cache of context keys
/// and values (state `draft.layers.L.{k,v}_cache`).
pub struct DFlashDrafter {
    spec: DraftSpec,
    target: ModelSpec,
    /// The target's weights and the draft's, in one store (the draft reads `embed` and
    /// `lm_head`).
    weights: Arc<F32Weights>,
    state: StateStore,
    max_context: usize,
    block_size: usize,
    /// Graphs by (block length, new context rows): the prompt's rows once, then 1 to B.
    graphs: HashMap<(usize, usize), Graph>,
}

impl DFlashDrafter {
    /// A drafter for `target` on `weights` (which must hold the draft's and the target's),
    /// drafting blocks of `block_size` (default: the draft's own) within `max_context` positions.
    pub fn new(
        spec: DraftSpec,
        target: &ModelSpec,
        weights: Arc<F32Weights>,
        max_context: usize,
        block_size: Option<usize>,
    ) -> Result<Self> {
        spec.check_target(target)
            .map_err(|m| anyhow::anyhow!("the draft does not fit the target model: {m}"))?;
        let block_size = block_size.unwrap_or(spec.block_size);
        if block_size == 0 {
            bail!("the block size must be at least 1");
        }
        Ok(DFlashDrafter {
            spec,
            target: target.clone(),
            weights,
            state: StateStore::new(),
            max_context,
            block_size,
            graphs: HashMap::new(),
        })
    }

    pub fn spec(&self) -> &DraftSpec {
        &self.spec
    }
}

fn i32s(values: impl Iterator<Item = usize>) -> Tensor {
    let v: Vec<i32> = values.map(|x| x as i32).collect();
    Tensor::from_i32([v.len()], v)
}

impl Drafter for DFlashDrafter {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn capture_layers(&self) -> &[usize] {
        &self.spec.target_layer_ids
    }

    fn reset(&mut self) {
        self.state.clear();
    }

    fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>> {
        Ok(self.propose_with_logits(ctx)?.0)
    }
}

impl DFlashDrafter {
    /// [`Drafter::propose`], with the draft's logits of every block row, [B, vocab] row-major
    /// (row 0, after the committed token, proposes nothing).
    pub fn propose_with_logits(&mut self, ctx: &DraftContext<'_>) -> Result<(Vec<u32>, Vec<f32>)> {
        let width = self.spec.feature_dim();
        let Some(&last) = ctx.tokens.last() else {
            bail!("the drafter needs at least one committed token");
        };
        if ctx.features.is_empty() || !ctx.features.len().is_multiple_of(width) {
            bail!(
                "the draft needs whole rows of {width} context features, got {} values",
                ctx.features.len()
            );
        }
        let (start, rows, block) = (
            ctx.tokens.len() - 1,
            ctx.features.len() / width,
            ctx.count + 1,
        );
        if rows > start || start + block > self.max_context {
            bail!(
                "a block at {start}..{} with {rows} context rows does not fit the draft's context of {}",
                start + block,
                self.max_context
            );
        }
        let key = (block, rows);
        if !self.graphs.contains_key(&key) {
            let g = draft_graph(&self.spec, &self.target, block, rows, self.max_context)
                .with_context(|| {
                    format!("building the draft graph (block {block}, {rows} context rows)")
                })?;
            self.graphs.insert(key, g);
        }
        let mask = self.spec.mask_token_id as usize;
        let inputs = [
            (
                TOKEN_IDS,
                i32s(std::iter::once(last as usize).chain(std::iter::repeat_n(mask, ctx.count))),
            ),
            (POSITIONS, i32s(start..start + block)),
            (
                CONTEXT,
                Tensor::from_f32([rows, width], ctx.features.to_vec()),
            ),
            (KV_POSITIONS, i32s(start - rows..start + block)),
            (
                ATTN_POSITIONS,
                i32s(std::iter::repeat_n(start + block - 1, block)),
            ),
        ];
        let mut out = interp::run(&self.graphs[&key], &self.weights, &mut self.state, &inputs)?;
        let ids = out[DRAFT_IDS].i32()[1..]
            .iter()
            .map(|&t| t as u32)
            .collect();
        let logits = out
            .remove(LOGITS)
            .map(|t| t.f32().to_vec())
            .unwrap_or_default();
        Ok((ids, logits))
    }
}

/// Proposes a known continuation: with the target's own greedy output, every block is accepted
/// whole.
pub struct ReplayDrafter {
    /// Prompt and continuation, as the target will commit them.
    sequence: Vec<u32>,
    block_size: usize,
}

impl ReplayDrafter {
    pub fn new(sequence: Vec<u32>, block_size: usize) -> Self {
        ReplayDrafter {
            sequence,
            block_size,
        }
    }
}

impl Drafter for ReplayDrafter {
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn capture_layers(&self) -> &[usize] {
        &[]
    }
    fn reset(&mut self) {}
    /// The next `count` tokens of the sequence (0 past its end).
    fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>> {
        let from = ctx.tokens.len();
        Ok((from..from + ctx.count)
            .map(|i| self.sequence.get(i).copied().unwrap_or(0))
            .collect())
    }
}

/// Proposes, at every position, a token other than the known continuation's, so no draft is ever
/// accepted and every step commits the target's bonus token alone.
pub struct WrongDrafter {
    sequence: Vec<u32>,
    vocab_size: usize,
    block_size: usize,
}

impl WrongDrafter {
    pub fn new(sequence: Vec<u32>, vocab_size: usize, block_size: usize) -> Self {
        WrongDrafter {
            sequence,
            vocab_size,
            block_size,
        }
    }
}

impl Drafter for WrongDrafter {
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn capture_layers(&self) -> &[usize] {
        &[]
    }
    fn reset(&mut self) {}
    fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>> {
        let from = ctx.tokens.len();
        Ok((from..from + ctx.count)
            .map(|i| {
                let right = self.sequence.get(i).copied().unwrap_or(0) as usize;
                ((right + 1) % self.vocab_size.max(1)) as u32
            })
            .collect())
    }
}
