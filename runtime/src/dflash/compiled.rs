//! DFlash on compiled programs and the CPU schedule executor: the target's verify programs run
//! on a [`ScheduleEngine`] (which accepts greedy blocks with the program's own `accept` op), the
//! draft's programs on a [`CompiledRunner`] over [`CpuBackend`]. Both start from an artifact's programs, when it has
//! them, and compile the other shapes they meet on first use.

use std::path::Path;

use anyhow::Result;
use mimo_compiler::CompileOptions;
use mimo_ir::ModelSpec;
use mimo_ir::interp::F32Weights;
use mimo_ir::model::dflash::DraftSpec;

use super::artifact::SpeculativeArtifact;
use super::{CompiledRunner, DFlashDrafter, Drafter};
use crate::engine::ScheduleEngine;
use crate::exec::CpuBackend;
use crate::session::{Session, artifact_compile_options, schedule_engine};

/// A target on the schedule executor and a DFlash drafter on compiled programs, over one weight
/// store holding both models; every program is compiled with `options` when first needed.
pub fn compiled_pair(
    target: ModelSpec,
    draft: DraftSpec,
    weights: F32Weights,
    max_context: usize,
    block_size: Option<usize>,
    options: CompileOptions,
) -> Result<(ScheduleEngine, DFlashDrafter)> {
    let runner = CompiledRunner::on(CpuBackend::cache(weights.clone(), options));
    let drafter =
        DFlashDrafter::with_runner(draft, &target, Box::new(runner), max_context, block_size)?;
    let mut engine = ScheduleEngine::new(target, weights, max_context, options);
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
    let options = artifact_compile_options(&opened.art)?;
    let drafter = opened.drafter(CpuBackend::cache(weights.clone(), options))?;
    let mut engine = schedule_engine(&opened.art, opened.model.spec.clone(), weights)?;
    engine.set_max_step_tokens(drafter.block_size());
    Ok(opened.session(Box::new(engine), drafter, notes))
}

#[cfg(test)]
mod tests;
