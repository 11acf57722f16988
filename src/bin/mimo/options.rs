//! Flags that several subcommands share: the device, and the speculative-decoding draft.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use mimo_compiler::artifact::Artifact;
use mimo_runtime::builtin;
use mimo_runtime::model::resolve_model;
use mimo_runtime::session::DeviceChoice;

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// An NVIDIA GPU when one is usable, else the CPU.
    Auto,
    /// The CPU (the reference interpreter, or the schedule executor for an artifact).
    Cpu,
    /// An NVIDIA GPU (an error without one).
    Cuda,
    /// the device emulator: runs the generated CUDA kernel on the CPU with memory and race
    /// checks; a correctness tool, slow
    Emu,
}

impl From<Device> for DeviceChoice {
    fn from(d: Device) -> Self {
        match d {
            Device::Auto => DeviceChoice::Auto,
            Device::Cpu => DeviceChoice::Cpu,
            Device::Cuda => DeviceChoice::Cuda,
            Device::Emu => DeviceChoice::Emu,
        }
    }
}

/// The draft to decode with, from `--draft`, the model.toml's `[speculative]` or the draft an
/// artifact was compiled for, and the block size (`--block-size`, then the model.toml's or the
/// artifact's); None without any.
pub fn speculative_choice(
    model: Option<&Path>,
    draft: Option<&Path>,
    block_size: Option<u64>,
) -> Result<Option<(PathBuf, Option<usize>)>> {
    let block = block_size.map(|b| b as usize);
    let configured = match model {
        Some(path) if Artifact::is_artifact(path) => Artifact::manifest(path)?
            .draft
            .map(|d| (d.source, Some(d.block_size))),
        Some(path) if !builtin::is_builtin(path) => resolve_model(path)
            .with_context(|| format!("loading {}", path.display()))?
            .model_toml
            .and_then(|t| t.speculative)
            .map(|s| (s.draft, s.block_size)),
        _ => None,
    };
    Ok(match (draft, configured) {
        (Some(draft), configured) => Some((
            draft.to_path_buf(),
            block.or(configured.and_then(|(_, b)| b)),
        )),
        (None, Some((draft, b))) => Some((draft, block.or(b))),
        (None, None) if block.is_some() => {
            bail!("--block-size needs a draft: --draft PATH, or [speculative] in a model.toml")
        }
        (None, None) => None,
    })
}
