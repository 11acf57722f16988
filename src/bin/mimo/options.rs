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
    Auto,
    Cpu,
    Cuda,
}

impl From<Device> for DeviceChoice {
    fn from(d: Device) -> Self {
        match d {
            Device::Auto => DeviceChoice::Auto,
            Device::Cpu => DeviceChoice::Cpu,
            Device::Cuda => DeviceChoice::Cuda,
        }
    }
}

/// The draft to decode with, from `--draft` or the model.toml's `[speculative]`, and the block
/// size (`--block-size`, then the model.toml's); None without either.
pub fn speculative_choice(
    model: Option<&Path>,
    draft: Option<&Path>,
    block_size: Option<u64>,
) -> Result<Option<(PathBuf, Option<usize>)>> {
    let block = block_size.map(|b| b as usize);
    let toml = match model {
        Some(path) if !builtin::is_builtin(path) && !Artifact::is_artifact(path) => {
            resolve_model(path)
                .with_context(|| format!("loading {}", path.display()))?
                .model_toml
                .and_then(|t| t.speculative)
        }
        _ => None,
    };
    Ok(match (draft, toml) {
        (Some(draft), toml) => Some((
            draft.to_path_buf(),
            block.or(toml.and_then(|t| t.block_size)),
        )),
        (None, Some(t)) => Some((t.draft, block.or(t.block_size))),
        (None, None) if block.is_some() => {
            bail!("--block-size needs a draft: --draft PATH, or [speculative] in a model.toml")
        }
        (None, None) => None,
    })
}
