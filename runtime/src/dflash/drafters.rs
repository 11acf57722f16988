//! The DFlash drafter: the draft model, on the reference interpreter or on compiled programs
//! ([`DraftRunner`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use anyhow::{Result, bail};
use mimo_ir::interp::{self, F32Weights, StateStore};
use mimo_ir::model::build::{LOGITS, POSITIONS, TOKEN_IDS};
use mimo_ir::model::dflash::graph::{ATTN_POSITIONS, CONTEXT, DRAFT_IDS, KV_POSITIONS};
use mimo_ir::model::dflash::{DraftSpec, draft_graph};
use mimo_ir::{Graph, ModelSpec, Tensor};

use super::{DraftContext, Drafter};
use crate::engine::{Backend, ProgramCache, ProgramRun, i32s};

/// Where a [`DFlashDrafter`] runs its draft graphs, keeping the draft's cache of context keys and
/// values (state `draft.layers.L.{k,v}_cache`) from one call to the next.
pub trait DraftRunner: Send {
    /// Runs the draft graph of `shape` (block tokens, new context rows), which `graph` builds
    /// when the runner has not seen the shape, on `inputs`; returns `outputs`.
    fn run(
        &mut self,
        shape: (usize, usize),
        graph: &dyn Fn() -> Result<Graph>,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>>;
    /// Empties the draft cache.
    fn reset(&mut self);
}

/// A draft's compiled programs by (block tokens, context rows) as a [`DraftRunner`], on the CPU
/// schedule executor ([`crate::exec::CpuBackend`]) or megakernels ([`crate::cuda::CudaBackend`]),
/// sharing the draft's cache.
pub struct CompiledRunner<B: Backend> {
    programs: ProgramCache<(usize, usize), B>,
}

impl<B: Backend> CompiledRunner<B> {
    /// A runner over `programs` (holding an artifact's, or none yet).
    pub fn on(programs: ProgramCache<(usize, usize), B>) -> Self {
        CompiledRunner { programs }
    }

    /// Adds a program compiled ahead of time for `shape` (its image made for it).
    pub fn insert(&mut self, shape: (usize, usize), program: mimo_compiler::Program) -> Result<()> {
        self.programs.insert(shape, program, None)
    }
}

impl<B: Backend> DraftRunner for CompiledRunner<B> {
    fn run(
        &mut self,
        shape: (usize, usize),
        graph: &dyn Fn() -> Result<Graph>,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        self.programs.get(&shape, graph)?.run_step(inputs, outputs)
    }

    fn reset(&mut self) {
        // A failure (a lost GPU context) is reported by the next step, as for the target.
        if let Err(e) = self.programs.reset() {
            tracing::warn!("resetting the draft on {}: {e:#}", self.programs.describe());
        }
    }
}

/// The reference interpreter as a [`DraftRunner`].
pub struct InterpreterRunner {
    /// The target's weights and the draft's, in one store (the draft reads `embed` and
    /// `lm_head`).
    weights: Arc<F32Weights>,
    state: StateStore,
    graphs: HashMap<(usize, usize), Graph>,
}

impl InterpreterRunner {
    pub fn new(weights: Arc<F32Weights>) -> Self {
        InterpreterRunner {
            weights,
            state: StateStore::new(),
            graphs: HashMap::new(),
        }
    }
}

impl DraftRunner for InterpreterRunner {
    fn run(
        &mut self,
        shape: (usize, usize),
        graph: &dyn Fn() -> Result<Graph>,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        let g = match self.graphs.entry(shape) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(graph()?),
        };
        let mut out = interp::run(g, &self.weights, &mut self.state, inputs)?;
        out.retain(|name, _| outputs.contains(&name.as_str()));
        Ok(out)
    }

    fn reset(&mut self) {
        self.state.clear();
    }
}

/// The DFlash draft model on a [`DraftRunner`].
///
/// Its graphs have fixed shapes (block tokens B, new context rows C), and a compiled program per
/// shape costs a compilation and an arena, so the drafter keeps the shapes few: it always drafts
/// a whole block of B, as the reference does, and returns the drafts asked for (a shorter block
/// only where a whole one would pass the end of the cache); and it feeds a prompt's context in
/// pieces of at most B rows, the last piece with the block. Context keys and values depend on
/// their own row alone, so the pieces fill the cache exactly as one pass would; the block passes
/// that go with the earlier pieces are thrown away (their block rows are rewritten by the last
/// one). So C is always in 1..=B, and a generation needs at most B programs.
pub struct DFlashDrafter {
    spec: DraftSpec,
    target: ModelSpec,
    runner: Box<dyn DraftRunner>,
    max_context: usize,
    block_size: usize,
}

impl DFlashDrafter {
    /// A drafter for `target` on the reference interpreter over `weights` (which must hold the
    /// draft's and the target's), drafting blocks of `block_size` (default: the draft's own)
    /// within `max_context` positions.
    pub fn new(
        spec: DraftSpec,
        target: &ModelSpec,
        weights: Arc<F32Weights>,
        max_context: usize,
        block_size: Option<usize>,
    ) -> Result<Self> {
        let runner = Box::new(InterpreterRunner::new(weights));
        Self::with_runner(spec, target, runner, max_context, block_size)
    }

    /// [`DFlashDrafter::new`] on another runner (compiled programs).
    pub fn with_runner(
        spec: DraftSpec,
        target: &ModelSpec,
        runner: Box<dyn DraftRunner>,
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
            runner,
            max_context,
            block_size,
        })
    }

    pub fn spec(&self) -> &DraftSpec {
        &self.spec
    }
}

impl Drafter for DFlashDrafter {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn capture_layers(&self) -> &[usize] {
        &self.spec.target_layer_ids
    }

    fn reset(&mut self) {
        self.runner.reset();
    }

    /// The drafted ids alone: the draft's logits (block x vocab, 9.7 MB at the Qwen3-30B-A3B
    /// vocabulary) stay where the draft program ran.
    fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>> {
        Ok(self.draft(ctx, false)?.0)
    }
}

impl DFlashDrafter {
    /// [`Drafter::propose`], with the draft's logits of every row of the drafted block,
    /// [block, vocab] row-major (row 0, after the committed token, proposes nothing).
    pub fn propose_with_logits(&mut self, ctx: &DraftContext<'_>) -> Result<(Vec<u32>, Vec<f32>)> {
        let (ids, logits) = self.draft(ctx, true)?;
        Ok((ids, logits.unwrap_or_default()))
    }

    /// The drafts of `ctx`, and the logits when `want_logits`.
    fn draft(
        &mut self,
        ctx: &DraftContext<'_>,
        want_logits: bool,
    ) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
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
        let (start, rows) = (ctx.tokens.len() - 1, ctx.features.len() / width);
        if ctx.count + 1 > self.block_size {
            bail!(
                "asked for {} drafts, more than a block of {} holds",
                ctx.count,
                self.block_size
            );
        }
        let block = if start + self.block_size <= self.max_context {
            self.block_size
        } else {
            ctx.count + 1
        };
        if rows > start || start + block > self.max_context {
            bail!(
                "a block at {start}..{} with {rows} context rows does not fit the draft's context of {}",
                start + block,
                self.max_context
            );
        }
        let mask = self.spec.mask_token_id as usize;
        let block_ids =
            i32s(std::iter::once(last as usize).chain(std::iter::repeat_n(mask, block - 1)));
        let block_positions = i32s(start..start + block);
        let attn_positions = i32s(std::iter::repeat_n(start + block - 1, block));
        // Pieces of at most B rows; the first takes the remainder, so the last (the one whose
        // block is kept) is a whole B whenever the context is.
        let piece = self.block_size;
        let first = match rows % piece {
            0 => piece.min(rows),
            r => r,
        };
        let mut from = 0;
        let mut out = HashMap::new();
        while from < rows {
            let n = if from == 0 { first } else { piece };
            let context = Tensor::from_f32(
                [n, width],
                ctx.features[from * width..][..n * width].to_vec(),
            );
            let p0 = start - rows + from;
            let inputs = [
                (TOKEN_IDS, block_ids.clone()),
                (POSITIONS, block_positions.clone()),
                (CONTEXT, context),
                (KV_POSITIONS, i32s((p0..p0 + n).chain(start..start + block))),
                (ATTN_POSITIONS, attn_positions.clone()),
            ];
            let (spec, target, max_context) = (&self.spec, &self.target, self.max_context);
            let graph = || -> Result<Graph> {
                draft_graph(spec, target, block, n, max_context).map_err(|e| {
                    anyhow::anyhow!(
                        "building the draft graph (block {block}, {n} context rows): {e}"
                    )
                })
            };
            // Only the piece whose block is kept has outputs worth reading back.
            let outputs: &[&str] = match (from + n == rows, want_logits) {
                (false, _) => &[],
                (true, false) => &[DRAFT_IDS],
                (true, true) => &[DRAFT_IDS, LOGITS],
            };
            out = self.runner.run((block, n), &graph, &inputs, outputs)?;
            from += n;
        }
        let ids = out[DRAFT_IDS].i32()[1..=ctx.count]
            .iter()
            .map(|&t| t as u32)
            .collect();
        let logits = out.remove(LOGITS).map(|t| t.f32().to_vec());
        Ok((ids, logits))
    }
}
