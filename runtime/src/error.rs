//! The one error type of loading: every variant names the file, tensor or field at fault, and
//! displays as a single line, because it is what a user sees when a model does not load.

use std::path::PathBuf;

use crate::import::config::ConfigError;
use mimo_ir::formats::{FormatError, WeightFormat};

/// Why a model, checkpoint or tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid safetensors file: {message}", file.display())]
    Safetensors { file: PathBuf, message: String },
    #[error("missing tensor `{name}` in {}{alternatives}", dir.display())]
    MissingTensor {
        name: String,
        dir: PathBuf,
        /// Other names that would have been accepted, as ` (or ...)`; empty when none.
        alternatives: String,
    },
    #[error("tensor `{name}` in {}: expected shape {expected:?}, found {found:?}", file.display())]
    Shape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` in {}: dtype {dtype} is not a float type mimo reads (expected F32, BF16 or F16)", file.display())]
    Dtype {
        name: String,
        file: PathBuf,
        dtype: String,
    },
    #[error("cannot store `{weight}` as {format}: {source}")]
    Format {
        weight: String,
        format: WeightFormat,
        #[source]
        source: FormatError,
    },
    #[error("{}: {message}", file.display())]
    Tokenizer { file: PathBuf, message: String },
    /// Anything else wrong with a file or directory, described in `message`.
    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(file: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        LoadError::Invalid {
            file: file.into(),
            message: message.to_string(),
        }
    }
}
