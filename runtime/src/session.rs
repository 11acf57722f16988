//! Opening a model for generation: a path (or none, for the built-in model) and a device choice
//! become an [`Engine`] with its tokenizer and stop tokens. `mimo generate` and `mimo serve` start
//! here.

use std::path::Path;

use anyhow::{Context, Result, bail};
use mimo_compiler::artifact::{self, Artifact};
use mimo_ir::interp::F32Weights;

use crate::builtin;
use crate::engine::{CpuEngine, Engine, ScheduleEngine};
use crate::exec::ScheduleExecutor;
use crate::model::{LoadedModel, load_model};
use crate::tokenizer::Tokenizer;

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when one is usable, otherwise the CPU (with a note).
    Auto,
    Cpu,
    Cuda,
}

/// An engine ready to generate, with what generation needs around it.
pub struct Session {
    pub engine: Box<dyn Engine>,
    pub tokenizer: Option<Tokenizer>,
    pub eos_token_ids: Vec<u32>,
    /// How the model is named (its path, or the built-in model's name).
    pub name: String,
    /// Things the user should know (which device was chosen and why).
    pub notes: Vec<String>,
}

/// Opens `model` (None: the built-in model), a Hugging Face directory, a model.toml or a compiled
/// artifact, on `device`. `max_context` bounds the KV cache of interpreter engines (an artifact
/// has its own); `None` takes the model's maximum, at most 4096.
pub fn open_session(
    model: Option<&Path>,
    device: DeviceChoice,
    max_context: Option<usize>,
) -> Result<Session> {
    let mut notes = Vec::new();
    if device == DeviceChoice::Cuda {
        bail!("--device cuda: this build of mimo has no CUDA engine yet; use --device cpu");
    }
    if device == DeviceChoice::Auto {
        notes.push("running on the CPU (no CUDA engine in this build)".to_string());
    }
    match model {
        Some(path) if Artifact::is_artifact(path) => open_artifact(path, notes),
        Some(path) if !builtin::is_builtin(path) => {
            let loaded = load_model(path, &|_, _| {})
                .with_context(|| format!("loading {}", path.display()))?;
            Ok(interpreter_session(
                loaded,
                path.display().to_string(),
                max_context,
                notes,
            ))
        }
        _ => Ok(interpreter_session(
            builtin::load()?,
            builtin::NAME.to_string(),
            max_context,
            notes,
        )),
    }
}

fn interpreter_session(
    model: LoadedModel,
    name: String,
    max_context: Option<usize>,
    notes: Vec<String>,
) -> Session {
    let LoadedModel {
        spec,
        weights,
        tokenizer,
        eos_token_ids,
        ..
    } = model;
    let ctx = max_context
        .unwrap_or(4096)
        .min(spec.max_position_embeddings);
    let engine = CpuEngine::new(spec, F32Weights::from_store(&weights), ctx);
    Session {
        engine: Box::new(engine),
        tokenizer,
        eos_token_ids,
        name,
        notes,
    }
}

/// An artifact runs on the CPU schedule executor, with the weights of the model it was compiled
/// from (refused when that model no longer matches).
fn open_artifact(dir: &Path, notes: Vec<String>) -> Result<Session> {
    let art = Artifact::open(dir)?;
    let source = art.manifest.model.source.clone().with_context(|| {
        format!(
            "{}: compiled from an architecture-only model.toml, so it has no weights to run",
            dir.display()
        )
    })?;
    let model = load_model(&source, &|_, _| {})
        .with_context(|| format!("loading {} (the artifact's model)", source.display()))?;
    if artifact::config_hash(&model.spec) != art.manifest.model.config_hash {
        bail!(
            "{}: stale artifact: {} changed since it was compiled (config hash differs); run mimo-compile again",
            dir.display(),
            source.display()
        );
    }
    let program = art
        .program("decode")
        .with_context(|| format!("{}: no `decode` graph", dir.display()))?
        .clone();
    let exec = ScheduleExecutor::new(program, F32Weights::from_store(&model.weights))?;
    let engine = ScheduleEngine::new(model.spec, exec, art.manifest.model.max_context);
    Ok(Session {
        engine: Box::new(engine),
        tokenizer: model.tokenizer,
        eos_token_ids: model.eos_token_ids,
        name: dir.display().to_string(),
        notes,
    })
}
