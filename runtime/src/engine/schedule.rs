//! A compiled model on the CPU schedule executor: the same tasks, events and memory plan as the
//! megakernel, one thread per worker queue ([`ProgramEngine`] over [`CpuBackend`]).

use std::collections::HashMap;
use std::ops::Range;

use anyhow::Result;
use mimo_compiler::{CompileOptions, Program};
use mimo_ir::interp::F32Weights;
use mimo_ir::{ModelSpec, Tensor};

use super::program::{ProgramEngine, ProgramRun, TargetProgram};
use crate::exec::{CpuBackend, ScheduleExecutor};

/// An artifact's programs (and those compiled on demand) on the CPU schedule executor.
pub type ScheduleEngine = ProgramEngine<CpuBackend>;

impl ScheduleEngine {
    /// An engine with no program yet: add an artifact's with [`ScheduleEngine::insert`]; the
    /// others are compiled with `options` when first needed.
    pub fn new(
        spec: ModelSpec,
        weights: F32Weights,
        max_context: usize,
        options: CompileOptions,
    ) -> Self {
        ProgramEngine::with_programs(spec, CpuBackend::cache(weights, options), max_context)
    }

    /// Adds a program compiled ahead of time.
    pub fn insert(&mut self, which: TargetProgram, program: Program) -> Result<()> {
        self.programs_mut().insert(which, program, None)
    }
}

impl ProgramRun for ScheduleExecutor {
    fn run_step(
        &mut self,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        Ok(ScheduleExecutor::run_step(self, inputs, outputs)?)
    }

    fn read_f32_rows(&mut self, name: &str, rows: Range<usize>) -> Result<Vec<f32>> {
        Ok(self.read_rows(name, rows)?.f32().to_vec())
    }
}
