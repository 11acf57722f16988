//! DFlash on the GPU: the target's programs on a [`CudaEngine`] (verify blocks accepted by the
//! program's own `accept` op), the draft's programs on a [`CudaRunner`] behind the same
//! [`DFlashDrafter`] the CPU paths use, both in one CUDA context over one weight upload (the
//! draft reads the target's `embed` and `lm_head`), each model with its own device KV cache.
//!
//! The features of the committed rows reach the draft through the host: the verify program's
//! `features` and the draft program's `context` live in different arenas, each laid out by its
//! own memory plan, and the drafter decides how the rows are split into draft programs (pieces of
//! at most B rows), so the [`crate::dflash::Drafter`] interface carries them as host rows. That is
//! `(accepted + 1) x len(capture layers) x hidden` floats per step, read with the acceptance.
//! [`crate::cuda::Megakernel::copy_arena_to`] is the device-to-device copy a direct hand-over
//! will use.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use mimo_compiler::artifact::draft_hash;
use mimo_compiler::{CompileOptions, Program};
use mimo_ir::model::build::decode_graph;
use mimo_ir::model::dflash::DraftSpec;
use mimo_ir::weights::WeightStore;
use mimo_ir::{Graph, ModelSpec, Tensor};

use super::{DFlashDrafter, DraftRunner, Drafter};
use crate::cuda::{self, CudaEngine, CudaPrograms, KernelImage, KernelSource, LaunchOptions};
use crate::draft::load_draft;
use crate::engine::{Engine, TargetProgram};
use crate::session::{Session, artifact_compile_options, load_artifact_model};

/// Draft programs by (block tokens, context rows) on the GPU, sharing the draft's device cache.
pub struct CudaRunner {
    programs: CudaPrograms<(usize, usize)>,
}

impl CudaRunner {
    pub fn new(programs: CudaPrograms<(usize, usize)>) -> Self {
        CudaRunner { programs }
    }

    /// Adds a program compiled ahead of time for `shape`.
    pub fn insert(&mut self, shape: (usize, usize), program: Program) -> Result<()> {
        self.programs.insert(shape, program, None)
    }
}

impl DraftRunner for CudaRunner {
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
        if let Err(e) = self.programs.reset() {
            tracing::warn!("resetting the CUDA draft: {e:#}");
        }
    }
}

/// Speculative decoding of an artifact on the GPU: its `decode`, `verify` and `draft` programs
/// (the others compiled on first use, their kernels the artifact's `kernel.cu` with the
/// generated header swapped), the weights of the target and the draft uploaded once.
pub(super) fn open_artifact(
    dir: &Path,
    draft: &Path,
    block_size: Option<usize>,
    info: &cuda::DeviceInfo,
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
            "{}: stale artifact: its draft programs were compiled for another draft (config hash {}, {} hashes {}); run mimo-compile again",
            dir.display(),
            entry.config_hash,
            loaded.dir.display(),
            draft_hash(&loaded.spec)
        );
    }
    let mut store = model.weights;
    for (name, w) in loaded.weights.iter() {
        store.insert(name, w.clone());
    }
    let options: CompileOptions = artifact_compile_options(&art)?;
    let launch = LaunchOptions::from_env();
    let decode = art
        .program("decode")
        .with_context(|| format!("{}: no `decode` graph", dir.display()))?
        .clone();
    let image = KernelImage::from_artifact(&art)?;
    let source = KernelSource::from_kernel(&model.spec, &decode, &image);
    let shared = cuda::DeviceContext::new(info, &store, None)?;
    let mut engine = CudaEngine::on(
        shared.clone(),
        model.spec.clone(),
        decode,
        &image,
        source.clone(),
        options,
        launch,
    )?;
    let programs = CudaPrograms::new(model.spec.clone(), shared, "draft", options, source, launch);
    let mut runner = CudaRunner::new(programs);
    for g in &art.manifest.graphs {
        let Some(program) = art.program(&g.name) else {
            continue;
        };
        let added = match (g.context_rows, g.name.as_str(), &g.capture_layers) {
            (Some(rows), _, _) => runner.insert((g.tokens, rows), program.clone()),
            (None, "verify", Some(capture)) => engine.insert(
                TargetProgram::Verify {
                    tokens: g.tokens,
                    capture: capture.clone(),
                },
                program.clone(),
                None,
            ),
            _ => Ok(()),
        };
        added.with_context(|| format!("{}: graph `{}` on the GPU", dir.display(), g.name))?;
    }
    let max_context = art.manifest.model.max_context;
    let block_size = block_size.or(compiled_for.map(|d| d.block_size));
    let drafter = DFlashDrafter::with_runner(
        loaded.spec,
        &model.spec,
        Box::new(runner),
        max_context,
        block_size,
    )?;
    engine.set_max_step_tokens(drafter.block_size());
    notes.push(format!(
        "speculative decoding of {} with the DFlash draft {} (block of {}) on {}",
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

/// A target and a DFlash drafter on the GPU without an artifact (tests, benchmarks): `store`
/// holds both models' weights (uploaded once); every program is compiled for `options` when first
/// needed, its kernel generated from `templates` (`mimo::TEMPLATES`).
// Eight plain inputs of one constructor; a builder would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn cuda_pair(
    info: &cuda::DeviceInfo,
    target: ModelSpec,
    draft: DraftSpec,
    store: &WeightStore,
    max_context: usize,
    block_size: Option<usize>,
    options: CompileOptions,
    templates: &'static [(&'static str, &'static str)],
) -> Result<(CudaEngine, DFlashDrafter)> {
    let launch = LaunchOptions::from_env();
    let source = KernelSource::Templates(templates);
    let graph = decode_graph(&target, 1, max_context).context("building the decode graph")?;
    let decode = mimo_compiler::compile(&graph, &options).context("compiling the decode graph")?;
    let image = source.image(&target, &decode)?;
    let shared = cuda::DeviceContext::new(info, store, None)?;
    let mut engine = CudaEngine::on(
        shared.clone(),
        target.clone(),
        decode,
        &image,
        source.clone(),
        options,
        launch,
    )?;
    let programs = CudaPrograms::new(target.clone(), shared, "draft", options, source, launch);
    let drafter = DFlashDrafter::with_runner(
        draft,
        &target,
        Box::new(CudaRunner::new(programs)),
        max_context,
        block_size,
    )?;
    engine.set_max_step_tokens(drafter.block_size());
    Ok((engine, drafter))
}
