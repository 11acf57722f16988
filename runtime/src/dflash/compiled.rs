//! DFlash on compiled programs, on either side of the device boundary: the target's verify
//! programs on a [`ProgramEngine`] (which accepts greedy blocks with the program's own `accept`
//! op), the draft's on a [`CompiledRunner`] over the same backend, device and weights
//! ([`ProgramCache::for_draft`](crate::engine::ProgramCache::for_draft)), each model with its own
//! KV state. [`pair`] starts both without an artifact (tests, benchmarks); an artifact's are
//! opened here on the CPU schedule executor and in [`super::cuda`] on the GPU.

use std::path::Path;

use anyhow::Result;
use mimo_ir::interp::F32Weights;
use mimo_ir::model::dflash::DraftSpec;

use super::artifact::SpeculativeArtifact;
use super::{CompiledRunner, DFlashDrafter, Drafter};
use crate::engine::{Backend, Engine, ProgramEngine};
use crate::session::{Session, schedule_engine};

/// `engine` with a DFlash drafter for `draft` on the same device: the engine's weights hold both
/// models; every program is compiled with the engine's options when first needed.
pub fn pair<B: Backend + 'static>(
    engine: ProgramEngine<B>,
    draft: DraftSpec,
    block_size: Option<usize>,
) -> Result<(ProgramEngine<B>, DFlashDrafter)> {
    let runner = CompiledRunner::on(engine.programs().for_draft());
    join(engine, runner, draft, block_size)
}

/// `engine` with a DFlash drafter for `draft` on `runner` (the draft's programs on the engine's
/// device), the engine's verify steps as long as the drafter's blocks.
pub(super) fn join<B: Backend + 'static>(
    mut engine: ProgramEngine<B>,
    runner: CompiledRunner<B>,
    draft: DraftSpec,
    block_size: Option<usize>,
) -> Result<(ProgramEngine<B>, DFlashDrafter)> {
    let drafter = DFlashDrafter::with_runner(
        draft,
        engine.spec(),
        Box::new(runner),
        engine.max_context(),
        block_size,
    )?;
    engine.set_max_step_tokens(drafter.block_size());
    Ok((engine, drafter))
}

/// Speculative decoding of an artifact on the CPU schedule executor: its `decode` and `verify`
/// programs for the target, its `draft` program for the draft at `draft` (when the artifact was
/// compiled for that draft: refused when the draft changed since).
pub(super) fn open_artifact(
    dir: &Path,
    draft: &Path,
    block_size: Option<usize>,
    notes: Vec<String>,
) -> Result<(Session, DFlashDrafter)> {
    let opened = SpeculativeArtifact::open(dir, draft, block_size)?;
    let weights = F32Weights::from_store(&opened.model.weights);
    let engine = schedule_engine(&opened.art, opened.model.spec.clone(), weights)?;
    opened.start(engine, notes)
}

#[cfg(test)]
mod tests;
