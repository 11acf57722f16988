//! The compiled programs of one model by shape, each on its own [`ScheduleExecutor`], all
//! continuing one sequence in one [`SharedState`].
//!
//! Programs are compiled only for fixed shapes, but a speculative step's shapes vary: a verify
//! block is shorter at the end of the output, and the draft's new context rows number 1 to B. The
//! few shapes that occur are compiled the first time they are needed (an artifact's programs are
//! added up front) and kept, so each is compiled once per process.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

use anyhow::{Context, Result, bail};
use mimo_compiler::{CompileOptions, Program, compile};
use mimo_ir::Graph;
use mimo_ir::graph::NodeKind;
use mimo_ir::interp::F32Weights;

use super::{ScheduleExecutor, SharedState};

/// Executors by key (a shape), on shared weights and state.
pub struct Programs<K> {
    weights: F32Weights,
    options: CompileOptions,
    state: Option<SharedState>,
    execs: HashMap<K, ScheduleExecutor>,
}

impl<K: Eq + Hash + Clone + Debug> Programs<K> {
    /// No program yet; those compiled here use `options` (an artifact's machine, so that every
    /// program of a model is scheduled for the same workers).
    pub fn new(weights: F32Weights, options: CompileOptions) -> Self {
        Programs {
            weights,
            options,
            state: None,
            execs: HashMap::new(),
        }
    }

    /// Adds a program compiled ahead of time (an artifact's) under `key`.
    pub fn insert(&mut self, key: K, program: Program) -> Result<()> {
        let exec = self.executor(program)?;
        self.execs.insert(key, exec);
        Ok(())
    }

    /// The executor of `key`, compiling the graph `build` makes the first time.
    pub fn get(
        &mut self,
        key: &K,
        build: impl FnOnce() -> Result<Graph>,
    ) -> Result<&mut ScheduleExecutor> {
        if !self.execs.contains_key(key) {
            let graph = build()?;
            let started = std::time::Instant::now();
            let program = compile(&graph, &self.options)
                .with_context(|| format!("compiling `{}` for {key:?}", graph.name))?;
            tracing::debug!(
                "compiled `{}` ({} tasks) in {:.3} s",
                graph.name,
                program.tasks.len(),
                started.elapsed().as_secs_f64()
            );
            let exec = self.executor(program)?;
            self.execs.insert(key.clone(), exec);
        }
        Ok(self.execs.get_mut(key).expect("inserted above"))
    }

    /// Worker threads per step.
    pub fn workers(&self) -> usize {
        self.options.machine.workers.max(1)
    }

    /// Zeroes the shared state: a new sequence.
    pub fn clear_state(&self) {
        if let Some(s) = &self.state {
            s.clear();
        }
    }

    /// An executor for `program` on the shared state (the first program lays it out), after
    /// checking that the weights hold every weight it declares, with its shape: a mismatch is
    /// named here rather than as a missing operand in the middle of a step.
    fn executor(&mut self, program: Program) -> Result<ScheduleExecutor> {
        let graph = &program.graph;
        for (_, node) in graph.nodes_of(|k| matches!(k, NodeKind::Weight)) {
            let Some(w) = self.weights.get(&node.name) else {
                bail!(
                    "graph `{}` reads weight `{}`, which the loaded weights lack",
                    graph.name,
                    node.name
                );
            };
            if w.shape != node.outputs[0].shape {
                bail!(
                    "graph `{}` reads weight `{}` as {:?}, but it is {:?}",
                    graph.name,
                    node.name,
                    node.outputs[0].shape,
                    w.shape
                );
            }
        }
        let state = self
            .state
            .get_or_insert_with(|| SharedState::for_program(&program))
            .clone();
        Ok(ScheduleExecutor::with_state(
            program,
            self.weights.clone(),
            state,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use mimo_compiler::Machine;
    use mimo_ir::model::decode_graph;
    use mimo_ir::model::random::random_weights;
    use mimo_ir::{Architecture, ModelSpec};

    use super::*;

    #[test]
    fn refuses_programs_that_do_not_fit_the_weights_or_the_state() {
        let spec = ModelSpec::tiny(Architecture::Qwen3Moe);
        let weights = F32Weights::from_store(&random_weights(&spec, 1).unwrap());
        let options = CompileOptions::for_machine(Machine {
            workers: 2,
            ..Machine::h100()
        });
        let mut programs = Programs::new(weights, options);
        programs
            .get(&(1, 16), || Ok(decode_graph(&spec, 1, 16)?))
            .unwrap();
        // A two-token program shares the one-token program's caches; a longer cache does not.
        programs
            .get(&(2, 16), || Ok(decode_graph(&spec, 2, 16)?))
            .unwrap();
        let err = programs
            .get(&(1, 32), || Ok(decode_graph(&spec, 1, 32)?))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains(
                "lays out its KV state unlike the programs it would share it with: \
                 its `layers.1.v_cache` is 1536 words at 0, where the others have \
                 `layers.1.v_cache`, 768 words at 0"
            ),
            "{err:#}"
        );

        let mut empty = Programs::<usize>::new(F32Weights::default(), options);
        let err = empty
            .get(&1, || Ok(decode_graph(&spec, 1, 16)?))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains(
                "graph `qwen3_moe_t1` reads weight `lm_head`, which the loaded weights lack"
            ),
            "{err}"
        );
        let bigger = ModelSpec {
            vocab_size: 120,
            ..spec.clone()
        };
        let mut other = Programs::<usize>::new(
            F32Weights::from_store(&random_weights(&bigger, 1).unwrap()),
            options,
        );
        let err = other
            .get(&1, || Ok(decode_graph(&spec, 1, 16)?))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("reads weight `lm_head` as [97, 64], but it is [120, 64]"),
            "{err}"
        );
    }
}
