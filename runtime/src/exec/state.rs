//! The KV state one sequence keeps across steps, shared by every program that continues it.
//!
//! A target runs several programs over one sequence (the one-token decode program, the verify
//! programs of each block length, the prefill pieces), and a DFlash draft one program per number
//! of context rows. Each has its own arena and event counters, but they must all read and write
//! the same caches, as the interpreter's [`mimo_ir::interp::StateStore`] does by name. The memory
//! plan lays the state out in graph order, so programs built from one model builder with one
//! cache size agree on it; [`SharedState::check`] makes sure (by [`StateLayout`]) before a program joins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mimo_compiler::Program;
use mimo_compiler::plan::StateLayout;

use super::ExecError;

/// A state buffer and its layout, cheap to clone: clones share the words.
#[derive(Clone)]
pub struct SharedState {
    layout: Arc<StateLayout>,
    words: Arc<[AtomicU32]>,
}

impl SharedState {
    /// A zeroed state buffer laid out as `program` places its state.
    pub fn for_program(program: &Program) -> Self {
        SharedState {
            layout: Arc::new(StateLayout::of(program)),
            words: (0..program.memory.state_len)
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }

    /// Refuses a program whose state is not exactly this buffer's (other caches, other sizes).
    pub fn check(&self, program: &Program) -> Result<(), ExecError> {
        match self.layout.mismatch(&StateLayout::of(program)) {
            None => Ok(()),
            Some(detail) => Err(ExecError::StateLayout {
                graph: program.graph.name.clone(),
                detail,
            }),
        }
    }

    /// Zeroes every word: a new sequence.
    pub fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn words(&self) -> &[AtomicU32] {
        &self.words
    }
}
