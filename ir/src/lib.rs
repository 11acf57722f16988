//! mimo-ir: the tile-level IR of mimo.
//!
//! - [`formats`]: number formats (bf16, f16, fp8 e4m3, e8m0, fp4 e2m1, MXFP4, NVFP4);
//! - [`model`]: model descriptions ([`ModelSpec`]) and the decode-graph builders;
//! - [`weights`]: weight tensors in their storage formats.

pub mod formats;
pub mod model;
pub mod weights;

pub use model::{Architecture, ModelSpec, WeightFormats};
pub mod graph;
pub mod interp;
pub mod math;
pub mod op;
pub mod ops;
pub mod tensor;
pub mod types;

// Lets the code that `#[op]` generates name this crate as `::mimo_ir` from inside it too.
extern crate self as mimo_ir;

pub use graph::{Graph, GraphBuilder, GraphError, Node, NodeKind, Value};
pub use op::{Access, Cost, Io, Op, OpDecl, Region};
pub use tensor::{Tensor, TensorData};
pub use types::{DType, TensorType};
