//! mimo-compiler: fuse, tile, schedule and generate the persistent CUDA megakernel.
//!
//! The passes, in order: [`fuse::rewrite`] and [`fuse::fuse`] (ops into fused ops),
//! [`plan`] (tiles into tasks, events between them, the memory plan), [`schedule`] (per-worker
//! task queues by a cost model). [`program::compile`] runs them all; its [`program::Program`] is
//! what an artifact stores and every backend executes. [`report`] counts what a step costs;
//! [`artifact`] writes and reads the artifact directory; [`nvrtc`] compiles the kernel source and
//! [`resources`] reads ptxas's and cuobjdump's resource reports.

// `#[derive(CStruct)]` names `::mimo_compiler::abi::CStruct`, here as in the runtime.
extern crate self as mimo_compiler;

pub mod abi;
pub mod artifact;
pub mod codegen;
pub mod fuse;
pub mod kinds;
pub mod nvrtc;
pub mod plan;
pub mod program;
pub mod report;
pub mod resources;
pub mod schedule;

pub use program::{CompileError, CompileOptions, Program, compile};
pub use schedule::Machine;
