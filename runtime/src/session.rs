//! Opening a model for generation: a path (or none, for the built-in model) and a device choice
//! become an [`Engine`] with its tokenizer and stop tokens. `mimo generate` and `mimo serve` start
//! here.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use mimo_compiler::artifact::{self, Artifact};
use mimo_compiler::{CompileOptions, Program};
use mimo_ir::ModelSpec;
use mimo_ir::interp::F32Weights;

use crate::builtin;
use crate::cuda;
use crate::device::{Device, DeviceKind};
use crate::emu::{EmuDevice, EmuOptions};
use crate::engine::{CpuEngine, Engine, ScheduleEngine, TargetProgram};
use crate::model::{LoadedModel, load_model};
use crate::tokenizer::Tokenizer;

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when one is usable, otherwise the CPU (with a note).
    Auto,
    Cpu,
    Cuda,
    /// The device emulator: the generated CUDA kernel run on the CPU with memory and race
    /// checks (a correctness tool, slow).
    Emu,
}

impl DeviceChoice {
    /// The `--device` value it stands for.
    pub fn flag(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => DeviceKind::Cuda.flag(),
            DeviceChoice::Emu => DeviceKind::Emulator.flag(),
        }
    }
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
    match model {
        Some(path) if Artifact::is_artifact(path) => {
            let dev = select_device(device, &mut notes)?;
            open_artifact(path, dev, device, notes)
        }
        Some(path) if !builtin::is_builtin(path) => {
            interpreter_only(device, &path.display().to_string(), &mut notes)?;
            let loaded = load_model(path, &|_, _| {})
                .with_context(|| format!("loading {}", path.display()))?;
            Ok(interpreter_session(
                loaded,
                path.display().to_string(),
                max_context,
                notes,
            ))
        }
        _ => {
            interpreter_only(device, builtin::NAME, &mut notes)?;
            Ok(interpreter_session(
                builtin::load()?,
                builtin::NAME.to_string(),
                max_context,
                notes,
            ))
        }
    }
}

/// The device to run a compiled program on: `None` for the CPU (with `--device auto`, a note
/// says why), an error when `--device cuda` finds no usable GPU or `--device emu` cannot start
/// the emulator. Opening a GPU creates its context, so this is called only where one will run.
pub fn select_device(
    device: DeviceChoice,
    notes: &mut Vec<String>,
) -> Result<Option<Arc<dyn Device>>> {
    match device {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Emu => EmuDevice::new(EmuOptions::from_env())
            .map(Some)
            .map_err(|e| anyhow!("--device emu: {e:#}")),
        DeviceChoice::Auto | DeviceChoice::Cuda => {
            let Some(info) = probe_gpu(device, notes)? else {
                return Ok(None);
            };
            match cuda::CudaDevice::open(&info) {
                Ok(dev) => Ok(Some(dev)),
                Err(e) if device == DeviceChoice::Cuda => {
                    bail!(
                        "--device cuda: {} is not usable: {e:#}; use --device cpu",
                        info.describe()
                    )
                }
                Err(e) => {
                    notes.push(format!(
                        "running on the CPU: {} could not be opened ({e:#})",
                        info.describe()
                    ));
                    Ok(None)
                }
            }
        }
    }
}

/// The GPU `--device auto` or `--device cuda` finds, probed without opening it: `None` for the
/// CPU (with `auto`, a note says why), an error when `cuda` finds none usable.
fn probe_gpu(device: DeviceChoice, notes: &mut Vec<String>) -> Result<Option<cuda::DeviceInfo>> {
    if !matches!(device, DeviceChoice::Auto | DeviceChoice::Cuda) {
        return Ok(None);
    }
    match cuda::probe(0) {
        Ok(info) => Ok(Some(info)),
        Err(reason) if device == DeviceChoice::Cuda => {
            bail!("--device cuda: no usable CUDA GPU: {reason}; use --device cpu")
        }
        Err(reason) => {
            notes.push(format!("running on the CPU: {reason}"));
            Ok(None)
        }
    }
}

/// The devices run compiled artifacts only: the kernel source comes from `mimo-compile` (the
/// templates it is generated from are embedded in the `mimo` binaries, not in this library), so a
/// model directory or model.toml runs on the reference interpreter: an error with `--device
/// cuda` (where a GPU is usable) or `--device emu`, a note with `--device auto` (where one is).
pub(crate) fn interpreter_only(
    device: DeviceChoice,
    model: &str,
    notes: &mut Vec<String>,
) -> Result<()> {
    let refused = |flag: &str| {
        anyhow!(
            "--device {flag} runs compiled artifacts: compile {model} with `mimo-compile {model} -o DIR` and pass --model DIR"
        )
    };
    match device {
        DeviceChoice::Cpu => Ok(()),
        DeviceChoice::Emu => Err(refused("emu")),
        DeviceChoice::Auto | DeviceChoice::Cuda => {
            if probe_gpu(device, notes)?.is_none() {
                return Ok(());
            }
            if device == DeviceChoice::Cuda {
                return Err(refused("cuda"));
            }
            notes.push(format!(
                "running {model} on the CPU reference interpreter: the GPU runs compiled artifacts (`mimo-compile {model} -o DIR`, then --model DIR)"
            ));
            Ok(())
        }
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

/// An artifact and the model it was compiled from, whose weights it runs with; refused when
/// that model changed since (its config hashes differently).
pub(crate) fn load_artifact_model(dir: &Path) -> Result<(Artifact, LoadedModel)> {
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
    Ok((art, model))
}

/// How programs an artifact lacks are compiled: for the machine its own were.
pub(crate) fn artifact_compile_options(art: &Artifact) -> Result<CompileOptions> {
    let program = art
        .program("decode")
        .with_context(|| format!("{}: no `decode` graph", art.dir.display()))?;
    Ok(CompileOptions::for_machine(program.machine))
}

/// The artifact's target programs: `decode`, and `verify` when it has one (an error where the
/// manifest names a program the artifact lacks).
pub(crate) fn artifact_target_programs(
    art: &Artifact,
) -> impl Iterator<Item = Result<(TargetProgram, &str, &Program)>> {
    art.manifest.graphs.iter().filter_map(|g| {
        let which = match (g.name.as_str(), &g.capture_layers) {
            ("decode", None) => TargetProgram::Decode,
            ("verify", Some(capture)) => TargetProgram::Verify {
                tokens: g.tokens,
                capture: capture.clone(),
            },
            _ => return None,
        };
        let program = art
            .program(&g.name)
            .with_context(|| format!("{}: no `{}` graph", art.dir.display(), g.name));
        Some(program.map(|p| (which, g.name.as_str(), p)))
    })
}

/// The artifact's target programs ([`artifact_target_programs`]) on the CPU schedule executor.
pub(crate) fn schedule_engine(
    art: &Artifact,
    spec: ModelSpec,
    weights: F32Weights,
) -> Result<ScheduleEngine> {
    let options = artifact_compile_options(art)?;
    let mut engine = ScheduleEngine::new(spec, weights, art.manifest.model.max_context, options);
    for target in artifact_target_programs(art) {
        let (which, name, program) = target?;
        engine
            .insert(which, program.clone())
            .with_context(|| format!("{}: graph `{name}`", art.dir.display()))?;
    }
    Ok(engine)
}

/// An artifact runs on the megakernel when a device is usable (a GPU, or the emulator when asked
/// for), else on the CPU schedule executor, with the weights of the model it was compiled from
/// (refused when that model no longer matches). With `--device auto` a GPU that fails to take the
/// model leaves the CPU, with a note.
fn open_artifact(
    dir: &Path,
    dev: Option<Arc<dyn Device>>,
    device: DeviceChoice,
    mut notes: Vec<String>,
) -> Result<Session> {
    let (art, model) = load_artifact_model(dir)?;
    if let Some(dev) = &dev {
        match cuda::CudaEngine::from_artifact(
            dev,
            &art,
            &model.weights,
            cuda::LaunchOptions::from_env(),
        ) {
            Ok(engine) => {
                notes.push(format!("running on {}", engine.device()));
                return Ok(Session {
                    engine: Box::new(engine),
                    tokenizer: model.tokenizer,
                    eos_token_ids: model.eos_token_ids,
                    name: dir.display().to_string(),
                    notes,
                });
            }
            Err(e) if device != DeviceChoice::Auto => {
                return Err(e.context(format!("opening {} on {}", dir.display(), dev.describe())));
            }
            Err(e) => notes.push(format!(
                "the CUDA engine could not take {} ({e:#}); running on the CPU schedule executor",
                dir.display()
            )),
        }
    }
    let weights = F32Weights::from_store(&model.weights);
    let engine = schedule_engine(&art, model.spec, weights)?;
    Ok(Session {
        engine: Box::new(engine),
        tokenizer: model.tokenizer,
        eos_token_ids: model.eos_token_ids,
        name: dir.display().to_string(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulator_and_the_cpu_choices_need_no_gpu() {
        let mut notes = Vec::new();
        let err = interpreter_only(DeviceChoice::Emu, "m.toml", &mut notes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--device emu runs compiled artifacts: compile m.toml with `mimo-compile m.toml -o DIR` and pass --model DIR"
        );
        interpreter_only(DeviceChoice::Cpu, "m.toml", &mut notes).unwrap();
        assert!(
            select_device(DeviceChoice::Cpu, &mut notes)
                .unwrap()
                .is_none()
        );
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(DeviceChoice::Emu.flag(), "emu");
    }
}
