//! DFlash on compiled programs and the CPU schedule executor: the target's verify programs run
//! on a [`ScheduleEngine`] (which accepts greedy blocks with the program's own `accept` op), the
//! draft's programs on a [`ScheduleRunner`]. Both start from an artifact's programs, when it has
//! them, and compile the other shapes they meet on first use.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use mimo_compiler::CompileOptions;
use mimo_compiler::Program;
use mimo_compiler::artifact::draft_hash;
use mimo_ir::interp::F32Weights;
use mimo_ir::model::dflash::DraftSpec;
use mimo_ir::{Graph, ModelSpec, Tensor};

use super::{DFlashDrafter, DraftRunner, Drafter};
use crate::draft::load_draft;
use crate::engine::{Engine, ScheduleEngine};
use crate::exec::Programs;
use crate::session::{Session, artifact_compile_options, load_artifact_model, schedule_engine};

/// Draft programs by (block tokens, context rows) on the CPU schedule executor, sharing the
/// draft's cache.
pub struct ScheduleRunner {
    programs: Programs<(usize, usize)>,
}

impl ScheduleRunner {
    /// `weights` must hold the draft's and the target's `embed` and `lm_head`.
    pub fn new(weights: F32Weights, options: CompileOptions) -> Self {
        ScheduleRunner {
            programs: Programs::new(weights, options),
        }
    }

    /// Adds a program compiled ahead of time for `shape`.
    pub fn insert(&mut self, shape: (usize, usize), program: Program) -> Result<()> {
        self.programs.insert(shape, program)
    }
}

impl DraftRunner for ScheduleRunner {
    fn run(
        &mut self,
        shape: (usize, usize),
        graph: &dyn Fn() -> Result<Graph>,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        Ok(self
            .programs
            .get(&shape, graph)?
            .run_step(inputs, outputs)?)
    }

    fn reset(&mut self) {
        self.programs.clear_state();
    }
}

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
    let runner = ScheduleRunner::new(weights.clone(), options);
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
    mut notes: Vec<String>,
) -> Result<(Session, DFlashDrafter)> {
    let (art, model) = load_artifact_model(dir)?;
    let loaded = load_draft(draft, &model.spec)
        .with_context(|| format!("loading the draft {}", draft.display()))?;
    let compiled_for = art.manifest.draft.as_ref();
    if let Some(entry) = compiled_for
        && draft_hash(&loaded.spec) != entry.config_hash
    {
        bail!(
            "{}: stale artifact: its draft programs were compiled for {} (config hash {}), but the draft {} hashes {}; run mimo-compile again",
            dir.display(),
            entry.source.display(),
            entry.config_hash,
            loaded.dir.display(),
            draft_hash(&loaded.spec)
        );
    }
    let mut store = model.weights;
    for (name, w) in loaded.weights.iter() {
        store.insert(name, w.clone());
    }
    let weights = F32Weights::from_store(&store);
    let block_size = block_size.or(compiled_for.map(|d| d.block_size));
    let max_context = art.manifest.model.max_context;
    let mut runner = ScheduleRunner::new(weights.clone(), artifact_compile_options(&art)?);
    for g in &art.manifest.graphs {
        if let (Some(rows), Some(program)) = (g.context_rows, art.program(&g.name)) {
            runner
                .insert((g.tokens, rows), program.clone())
                .with_context(|| format!("{}: graph `{}`", dir.display(), g.name))?;
        }
    }
    let drafter = DFlashDrafter::with_runner(
        loaded.spec,
        &model.spec,
        Box::new(runner),
        max_context,
        block_size,
    )?;
    let mut engine = schedule_engine(&art, model.spec, weights)?;
    engine.set_max_step_tokens(drafter.block_size());
    notes.push(format!(
        "speculative decoding of {} with the DFlash draft {} (block of {}) on the {}",
        dir.display(),
        loaded.dir.display(),
        drafter.block_size(),
        engine.device()
    ));
    let session = Session {
        engine: Box::new(engine),
        tokenizer: model.tokenizer,
        eos_token_ids: model.eos_token_ids,
        name: dir.display().to_string(),
        notes,
    };
    Ok((session, drafter))
}

#[cfg(test)]
mod tests;
