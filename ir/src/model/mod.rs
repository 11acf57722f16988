//! Model descriptions and the decode-graph builders.

pub mod build;
pub mod dflash;
pub mod names;
pub mod random;
pub mod spec;

pub use build::decode_graph;
pub use spec::{Architecture, AttentionSpec, HybridSpec, Mlp, ModelSpec, WeightFormats};
