//! Loading a runnable model from what a user points at: a Hugging Face directory, or a
//! `model.toml` that names one (and may choose storage formats and a drafter).

use std::path::{Path, PathBuf};

use crate::import::config::{
    ModelSource, ModelToml, Quantization, Speculative, spec_from_hf_config,
};
use mimo_ir::weights::WeightStore;
use mimo_ir::{ModelSpec, WeightFormats};

use crate::checkpoint::Checkpoint;
use crate::error::LoadError;
use crate::import::load_weights;
use crate::tokenizer::{Tokenizer, eos_token_ids};

/// A model ready for an engine: its description, its weights in their storage formats, and what
/// generation needs around them.
#[derive(Debug)]
pub struct LoadedModel {
    pub spec: ModelSpec,
    pub weights: WeightStore,
    /// `None` when the directory has no `tokenizer.json` (ids in, ids out).
    pub tokenizer: Option<Tokenizer>,
    pub eos_token_ids: Vec<u32>,
    /// The path the model was loaded from, as given.
    pub source: PathBuf,
    /// The `model.toml`'s `[speculative]` table, if it had one.
    pub speculative: Option<Speculative>,
}

/// What a model path resolves to, before any weight is read.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The model, with `formats` already final (checkpoint dtype, then `[quantization]`).
    pub spec: ModelSpec,
    /// The Hugging Face directory; `None` for an inline `model.toml`, which has no weights.
    pub hf_dir: Option<PathBuf>,
    pub model_toml: Option<ModelToml>,
}

/// Resolves `path` (a Hugging Face directory, its `config.json`, a `model.toml`, or a directory
/// holding only a `model.toml`) to a spec. This is all the compiler needs; it reads no weights.
pub fn resolve_model(path: &Path) -> Result<ResolvedModel, LoadError> {
    let (hf_dir, model_toml) = if path.is_dir() {
        if path.join("config.json").is_file() || !path.join("model.toml").is_file() {
            (path.to_path_buf(), None)
        } else {
            return resolve_toml(ModelToml::load(&path.join("model.toml"))?);
        }
    } else if path.file_name().is_some_and(|n| n == "config.json") {
        (path.parent().unwrap_or(Path::new(".")).to_path_buf(), None)
    } else {
        return resolve_toml(ModelToml::load(path)?);
    };
    resolve_hf(hf_dir, Quantization::default(), model_toml)
}

fn resolve_toml(toml: ModelToml) -> Result<ResolvedModel, LoadError> {
    match &toml.model {
        ModelSource::Inline(spec) => {
            let mut spec = ModelSpec::clone(spec);
            spec.formats = toml.quantization.apply(spec.formats);
            Ok(ResolvedModel {
                spec,
                hf_dir: None,
                model_toml: Some(toml),
            })
        }
        ModelSource::HfDir(dir) => resolve_hf(dir.clone(), toml.quantization, Some(toml.clone())),
    }
}

fn resolve_hf(
    dir: PathBuf,
    quantization: Quantization,
    model_toml: Option<ModelToml>,
) -> Result<ResolvedModel, LoadError> {
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| LoadError::io(&config, e))?;
    let mut spec = spec_from_hf_config(&text, &config)?;
    // The checkpoint's dtype is what its tensors are actually stored in; the config's `dtype` only
    // declares it (and is absent from old configs). Opening maps the files and reads headers only.
    let ckpt = Checkpoint::open(&dir).ok();
    if let Some(format) = ckpt.as_ref().and_then(|c| c.float_format()) {
        if format != spec.formats.dense {
            tracing::debug!(
                "{}: config dtype {} but tensors are stored as {format}",
                config.display(),
                spec.formats.dense
            );
        }
        spec.formats = WeightFormats {
            experts: format,
            dense: format,
        };
    }
    // Experts stored pre-quantised (U8 codes + E8M0 `weight_scale`) are MXFP4, whatever the
    // dtype of the dense tensors.
    if ckpt.as_ref().is_some_and(crate::import::has_mxfp4_experts) {
        spec.formats.experts = mimo_ir::formats::WeightFormat::Mxfp4;
    }
    spec.formats = quantization.apply(spec.formats);
    Ok(ResolvedModel {
        spec,
        hf_dir: Some(dir),
        model_toml,
    })
}

/// Loads the model at `path` (see [`resolve_model`]) with its weights, tokenizer and
/// end-of-sequence ids. `progress(done, total)` counts weights, on the calling thread.
pub fn load_model(path: &Path, progress: &dyn Fn(usize, usize)) -> Result<LoadedModel, LoadError> {
    let resolved = resolve_model(path)?;
    let speculative = resolved
        .model_toml
        .as_ref()
        .and_then(|t| t.speculative.clone());
    let Some(dir) = resolved.hf_dir else {
        let file = resolved
            .model_toml
            .map_or_else(|| path.to_path_buf(), |t| t.file);
        return Err(LoadError::invalid(
            file,
            "model.toml describes an architecture only; it can be compiled but has no weights to run",
        ));
    };
    let spec = resolved.spec;
    let ckpt = Checkpoint::open(&dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        // Ids past the embedding would index out of bounds in every engine.
        if tokenizer.vocab_size() > spec.vocab_size {
            return Err(LoadError::invalid(
                &tokenizer_path,
                format!(
                    "{} tokens, more than the model's vocab_size {}",
                    tokenizer.vocab_size(),
                    spec.vocab_size
                ),
            ));
        }
        Some(tokenizer)
    } else {
        tracing::warn!(
            "{}: no tokenizer.json; text in and out is unavailable",
            dir.display()
        );
        None
    };
    let eos_token_ids = eos_token_ids(&dir, tokenizer.as_ref())?;
    let weights = load_weights(&spec, &ckpt, progress)?;
    Ok(LoadedModel {
        spec,
        weights,
        tokenizer,
        eos_token_ids,
        source: path.to_path_buf(),
        speculative,
    })
}

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod tests;
