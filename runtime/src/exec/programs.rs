//! [`CpuBackend`]: the CPU schedule executor's half of a [`ProgramCache`]: every program on its
//! own [`ScheduleExecutor`], all on one set of weights and one [`SharedState`].

use anyhow::{Result, bail};
use mimo_compiler::{CompileOptions, Program};
use mimo_ir::graph::NodeKind;
use mimo_ir::interp::F32Weights;

use super::{ScheduleExecutor, SharedState};
use crate::engine::{Backend, ProgramCache};

/// Programs on the CPU schedule executor, sharing weights and state.
pub struct CpuBackend {
    weights: F32Weights,
    state: Option<SharedState>,
}

impl CpuBackend {
    pub fn new(weights: F32Weights) -> Self {
        CpuBackend {
            weights,
            state: None,
        }
    }

    /// A cache of programs on `weights`, compiled with `options` when first needed.
    pub fn cache<K>(weights: F32Weights, options: CompileOptions) -> ProgramCache<K, Self>
    where
        K: Eq + std::hash::Hash + Clone + std::fmt::Debug,
    {
        ProgramCache::new(CpuBackend::new(weights), options)
    }
}

impl Backend for CpuBackend {
    type Loaded = ScheduleExecutor;
    type Image = ();

    /// An executor for `program` on the shared state (the first program lays it out), after
    /// checking that the weights hold every weight it declares, with its shape: a mismatch is
    /// named here rather than as a missing operand in the middle of a step.
    fn load(&mut self, program: Program, _: Option<&()>) -> Result<ScheduleExecutor> {
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

    fn reset<'a>(&mut self, _: impl Iterator<Item = &'a mut ScheduleExecutor>) -> Result<()> {
        if let Some(s) = &self.state {
            s.clear();
        }
        Ok(())
    }

    fn for_draft(&self) -> Self {
        CpuBackend::new(self.weights.clone())
    }

    fn describe(&self, workers: usize) -> String {
        format!("cpu schedule executor ({workers} workers)")
    }

    fn place(&self) -> String {
        "the cpu schedule executor".into()
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
        let mut programs = CpuBackend::cache(weights, options);
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

        let mut empty = CpuBackend::cache::<usize>(F32Weights::default(), options);
        let err = empty
            .get(&1, || Ok(decode_graph(&spec, 1, 16)?))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains(
                "loading `qwen3_moe_t1` (1) on the cpu schedule executor: graph `qwen3_moe_t1` \
                 reads weight `lm_head`, which the loaded weights lack"
            ),
            "{err:#}"
        );
        let bigger = ModelSpec {
            vocab_size: 120,
            ..spec.clone()
        };
        let mut other = CpuBackend::cache::<usize>(
            F32Weights::from_store(&random_weights(&bigger, 1).unwrap()),
            options,
        );
        let err = other
            .get(&1, || Ok(decode_graph(&spec, 1, 16)?))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("reads weight `lm_head` as [97, 64], but it is [120, 64]"),
            "{err:#}"
        );
    }
}
