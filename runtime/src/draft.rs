//! Loading a DFlash draft checkpoint: its `config.json` (see
//! [`crate::import::draft_config::draft_spec_from_hf_config`]) and its safetensors, mapped onto the
//! IR's `draft.*` names ([`mimo_ir::model::dflash`]). The draft has no embedding and no lm_head;
//! it is checked against the target it will run with before any tensor is read.

use std::path::{Path, PathBuf};

use mimo_ir::ModelSpec;
use mimo_ir::model::dflash::{DraftSpec, draft_weights};
use mimo_ir::weights::{Weight, WeightStore};
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, float_format};
use crate::error::LoadError;

/// A draft ready to run next to its target.
#[derive(Debug)]
pub struct LoadedDraft {
    pub spec: DraftSpec,
    /// The draft's own weights, under their `draft.*` names, in `spec.format`.
    pub weights: WeightStore,
    /// The directory it was loaded from.
    pub dir: PathBuf,
}

/// The draft at `path` (a directory with `config.json` and safetensors, or its `config.json`)
/// for `target`, its tensors checked by name, shape and dtype but not read: what a compiler
/// needs.
pub fn resolve_draft(path: &Path, target: &ModelSpec) -> Result<(DraftSpec, PathBuf), LoadError> {
    let (spec, dir, _) = open_draft(path, target)?;
    Ok((spec, dir))
}

fn open_draft(
    path: &Path,
    target: &ModelSpec,
) -> Result<(DraftSpec, PathBuf, Checkpoint), LoadError> {
    let dir = if path.file_name().is_some_and(|n| n == "config.json") {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    };
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| LoadError::Io {
        path: config.clone(),
        source: e,
    })?;
    let mut spec = crate::import::draft_config::draft_spec_from_hf_config(&text, &config)?;
    spec.check_target(target)
        .map_err(|m| LoadError::invalid(&config, format!("does not fit the target model: {m}")))?;
    let ckpt = Checkpoint::open(&dir)?;
    // As for the target: the tensors' dtype is the truth, the config only declares it.
    if let Some(format) = ckpt.float_format() {
        spec.format = format;
    }
    for w in &draft_weights(&spec) {
        let name = &w.checkpoint_name;
        let Some((dtype, shape)) = ckpt.info(name) else {
            return Err(LoadError::MissingTensor {
                name: name.clone(),
                dir: dir.clone(),
                alternatives: String::new(),
            });
        };
        if shape != w.shape.as_slice() {
            return Err(LoadError::Shape {
                name: name.clone(),
                file: ckpt.file_of(name).to_path_buf(),
                expected: w.shape.clone(),
                found: shape.to_vec(),
            });
        }
        if float_format(dtype).is_none() {
            return Err(LoadError::Dtype {
                name: name.clone(),
                file: ckpt.file_of(name).to_path_buf(),
                dtype: format!("{dtype:?}"),
            });
        }
    }
    Ok((spec, dir, ckpt))
}

/// Loads the draft at `path` (see [`resolve_draft`]) for `target`.
pub fn load_draft(path: &Path, target: &ModelSpec) -> Result<LoadedDraft, LoadError> {
    let (spec, dir, ckpt) = open_draft(path, target)?;
    let infos = draft_weights(&spec);
    let format = spec.format;
    let converted: Vec<(String, Weight)> = infos
        .into_par_iter()
        .map(|w| {
            let (_, values) = ckpt.read_f32(&w.checkpoint_name)?;
            let weight =
                Weight::from_f32(w.shape, &values, format).map_err(|source| LoadError::Format {
                    weight: w.name.clone(),
                    format,
                    source,
                })?;
            Ok((w.name, weight))
        })
        .collect::<Result<_, LoadError>>()?;
    let mut weights = WeightStore::new();
    for (name, w) in converted {
        weights.insert(name, w);
    }
    Ok(LoadedDraft { spec, weights, dir })
}
