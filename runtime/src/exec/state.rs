//! The KV state one sequence keeps across steps, shared by every program that continues it.
//!
//! A target runs several programs over one sequence (the one-token decode program, the verify
//! programs of each block length, the prefill pieces), and a DFlash draft one program per number
//! of context rows. Each has its own arena and event counters, but they must all read and write
//! the same caches, as the interpreter's [`mimo_ir::interp::StateStore`] does by name. The memory
//! plan lays the state out in graph order, so programs built from one model builder with one
//! cache size agree on it; [`SharedState::check`] makes sure, by name, before a program joins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mimo_compiler::Program;
use mimo_compiler::plan::{Buffer, Location};
use mimo_ir::graph::{NodeKind, Value};

use super::ExecError;

/// A state buffer and its layout (state name, place), cheap to clone: clones share the words.
#[derive(Clone)]
pub struct SharedState {
    layout: Arc<Vec<(String, Location)>>,
    words: Arc<[AtomicU32]>,
}

impl SharedState {
    /// A zeroed state buffer laid out as `program` places its state.
    pub fn for_program(program: &Program) -> Self {
        SharedState {
            layout: Arc::new(layout(program)),
            words: (0..program.memory.state_len)
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }

    /// Refuses a program whose state is not exactly this buffer's (other caches, other sizes):
    /// sharing it would silently read one cache as another.
    pub fn check(&self, program: &Program) -> Result<(), ExecError> {
        let theirs = layout(program);
        let ours = &*self.layout;
        let detail = match theirs.iter().zip(ours).find(|(a, b)| a != b) {
            Some(((n, a), (m, b))) => format!(
                "its `{n}` is {} words at {}, where the others have `{m}`, {} words at {}",
                a.len, a.offset, b.len, b.offset
            ),
            None if theirs.len() != ours.len() => format!(
                "it has {} state values, the others {}",
                theirs.len(),
                ours.len()
            ),
            None if program.memory.state_len != self.words.len() => format!(
                "its state is {} words, the others' {}",
                program.memory.state_len,
                self.words.len()
            ),
            None => return Ok(()),
        };
        Err(ExecError::StateLayout {
            graph: program.graph.name.clone(),
            detail,
        })
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

/// Every state node of `program` with its place, in graph order.
pub(crate) fn layout(program: &Program) -> Vec<(String, Location)> {
    let graph = &program.graph;
    graph
        .nodes_of(|k| matches!(k, NodeKind::State))
        .filter_map(|(idx, node)| {
            let loc = program.memory.location(Value {
                node: idx,
                output: 0,
            })?;
            (loc.buffer == Buffer::State).then(|| (node.name.clone(), loc))
        })
        .collect()
}
