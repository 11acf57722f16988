//! mimo-compiler: fuse, tile, schedule and generate the persistent CUDA megakernel.
//!
//! The passes, in order: [`fuse::rewrite`] and [`fuse::fuse`] (ops into fused ops),
//! [`plan`] (tiles into tasks, events between them, the memory plan), [`schedule`] (per-worker
//! task queues by a cost model). [`program::compile`] runs them all; its [`program::Program`] is
//! what an artifact stores and every backend executes.

pub mod fuse;
pub mod plan;
pub mod program;
pub mod schedule;

pub use program::{CompileError, CompileOptions, Program, compile};
pub use schedule::Machine;
