//! mimo-runtime: everything between a model on disk and decode steps.
//!
//! - [`builtin`]: the built-in tiny default model (no download needed);
//! - [`checkpoint`]: memory-mapped safetensors checkpoints (single file or sharded), read as f32;
//! - [`import`]: Hugging Face tensor names onto the IR's weights, experts stacked and quantised;
//! - [`tokenizer`]: `tokenizer.json`, streaming detokenisation, end-of-sequence ids;
//! - [`model`]: a model path (HF directory or `model.toml`) to a [`LoadedModel`];
//! - [`error`]: [`LoadError`], one line that names the file, tensor or field at fault;
//! - [`exec`]: the CPU schedule executor, running a compiled program task by task, and its
//!   [`exec::CpuBackend`];
//! - [`engine`]: the [`engine::Engine`] step boundary, the CPU engines (the reference
//!   interpreter, and an artifact's programs on the schedule executor), and
//!   [`engine::ProgramCache`], a model's programs by shape on one device's [`engine::Backend`];
//! - [`sampling`]: greedy and seeded temperature / top-p sampling;
//! - [`session`]: a model path and a device choice to a ready engine;
//! - [`generate`]: autoregressive generation over any engine, streaming tokens;
//! - [`draft`], [`dflash`]: DFlash draft checkpoints and speculative decoding;
//! - [`cuda`]: the megakernel engine on an NVIDIA GPU (driver loaded at run time) or the
//!   emulator ([`emu`]).
//!
//! The HTTP server is the `mimo-server` crate (`runtime/server/`).

pub mod builtin;
pub mod checkpoint;
pub mod cuda;
pub mod device;
pub mod dflash;
pub mod draft;
pub mod emu;
pub mod engine;
pub mod error;
pub mod exec;
pub mod generate;
pub mod import;
pub mod model;
pub mod sampling;
pub mod session;
pub mod tokenizer;

pub use checkpoint::Checkpoint;
pub use error::LoadError;
pub use import::load_weights;
pub use model::{LoadedModel, ResolvedModel, load_model, resolve_model};
pub use tokenizer::{StreamDecoder, Tokenizer};
