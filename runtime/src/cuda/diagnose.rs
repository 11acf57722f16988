//! Where device failures become errors: waiting for a step against the host's own deadline
//! ([`crate::device::Device::synchronize`]), and turning what went wrong
//! ([`DeviceFailure`]) into one line that names it.
//!
//! - a **fault** (a driver error after the launch) loses the CUDA context, so the engine is
//!   poisoned and refuses further work; in serial mode (`MIMO_CUDA_SERIAL=1`, one launch per
//!   task) the message names the faulting task, otherwise it suggests serial mode;
//! - a **hang** (the host's deadline passes with the kernel still running) poisons it too;
//! - a failed emulator **check** (out of bounds, a race, ...) names the step, the worker and the
//!   task the failing block was running, and poisons the engine: the device state is unknown;
//! - an **abort** (a device-side wait gave up, or a task could not run with the kernel's limits)
//!   leaves the abi.cuh `Diagnostics` block, decoded here into the task, the event, its counts
//!   and the tasks that should have triggered it; the counters are reset so the engine stays
//!   usable.

use anyhow::{Context, Result, anyhow, bail};
use mimo_compiler::abi::NONE;

use super::megakernel::Megakernel;
use crate::device::DeviceFailure;
use mimo_compiler::abi::{CStruct, Diagnostics};

impl Megakernel {
    /// Waits for everything enqueued, then checks the diagnostics: the one place where device
    /// failures become errors.
    pub fn synchronize(&mut self) -> Result<()> {
        self.wait_step(self.step.saturating_sub(1), None)
    }

    /// Waits for the device within the host's deadline; `step` and `serial_task` only name what
    /// ran in messages. A failure from here on is one of the work enqueued: the engine remembers
    /// it and refuses further work. Then reads the diagnostics block.
    pub(super) fn wait_step(&mut self, step: u32, serial_task: Option<usize>) -> Result<()> {
        self.check_usable()?;
        if let Err(failure) = self.dev.synchronize(self.opts.host_timeout) {
            return Err(self.failed(failure, step, serial_task));
        }
        let d = Diagnostics::from_words(
            &self
                .diag
                .read_words(0, Diagnostics::WORDS)
                .context("reading the diagnostics")?,
        );
        if d.aborted != 0 {
            let message = self.diagnose(d, step);
            // The counters are inconsistent after an abort: start over from zero so the engine
            // stays usable (the caller decides whether the sequence goes on).
            self.zero_counters()?;
            self.dev
                .synchronize(self.opts.host_timeout)
                .map_err(|e| anyhow!("resetting after an aborted step: {e}"))?;
            bail!(message);
        }
        Ok(())
    }

    /// The error for `failure` during `step` (in serial mode, of `serial_task`'s launch), the
    /// engine poisoned: after a fault or a hang the context is lost, after a failed emulator
    /// check the device state is unknown.
    pub(super) fn failed(
        &mut self,
        failure: DeviceFailure,
        step: u32,
        serial_task: Option<usize>,
    ) -> anyhow::Error {
        let why = match failure {
            DeviceFailure::Fault(e) => {
                let at = match serial_task {
                    Some(id) => format!(" in {}", self.describe_task(id)),
                    None => String::new(),
                };
                format!(
                    "GPU fault{at} during step {step}: {e}; the CUDA context is lost (restart the process{})",
                    if serial_task.is_none() {
                        "; MIMO_CUDA_SERIAL=1 runs one task per launch and names the faulting task"
                    } else {
                        ""
                    }
                )
            }
            DeviceFailure::Hang => {
                tracing::error!(
                    "step {step}: no completion after {:?}",
                    self.opts.host_timeout
                );
                format!(
                    "step {step} did not finish within {:?}: the kernel is still running on {} (a device-side hang)",
                    self.opts.host_timeout,
                    self.dev.describe()
                )
            }
            DeviceFailure::Check {
                worker,
                task,
                message,
            } => match task {
                Some(t) => format!(
                    "step {step}: worker {worker}: {}: {message}",
                    self.describe_task_index(t)
                ),
                None => format!("step {step}: worker {worker}: {message}"),
            },
            DeviceFailure::Other(e) => format!("step {step}: {e}"),
        };
        self.poisoned = Some(why.clone());
        anyhow!(why)
    }

    /// A kernel task index (into the ABI task table) as [`Megakernel::describe_task`] names it.
    fn describe_task_index(&self, index: u32) -> String {
        self.tables.task_ids.get(index as usize).map_or_else(
            || format!("kernel task index {index}"),
            |&id| self.describe_task(id),
        )
    }

    /// `task 12 (`layers.0.q_proj` norm_matmul, units 0..64)`.
    fn describe_task(&self, id: usize) -> String {
        match self.program.tasks.get(id) {
            Some(t) => {
                let op = &self.program.ops[t.op];
                format!(
                    "task {id} (`{}` {:?}, units {}..{})",
                    op.name, op.kind, t.units.start, t.units.end
                )
            }
            None => format!("task {id} (not in the program)"),
        }
    }

    /// One line naming the task (and, for a wait, the event and who should have triggered it).
    fn diagnose(&self, d: Diagnostics, step: u32) -> String {
        let task = self.describe_task_index(d.task);
        if d.event == NONE {
            let what = if d.observed == 1 {
                "its shapes exceed a MIMO_MAX_* limit the kernel was generated with (or its kind is unknown)".to_string()
            } else {
                format!(
                    "it needs {} bytes of shared memory, the kernel was generated with {}",
                    d.observed, d.expected
                )
            };
            return format!(
                "step {step}: worker {}: {task} cannot run: {what}; regenerate the kernel",
                d.worker
            );
        }
        let producers = self
            .program
            .events
            .get(d.event as usize)
            .map(|e| {
                let mut names: Vec<String> = e
                    .producers
                    .iter()
                    .take(3)
                    .map(|&p| self.describe_task(p))
                    .collect();
                if e.producers.len() > 3 {
                    names.push(format!("{} more", e.producers.len() - 3));
                }
                names.join(", ")
            })
            .unwrap_or_default();
        format!(
            "step {step}: worker {}: {task} waited more than {:?} for event {} (count {}, expected {}); \
             its producers: {producers}",
            d.worker, self.opts.wait_limit, d.event, d.observed, d.expected
        )
    }
}
