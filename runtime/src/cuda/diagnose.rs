//! Where device failures become errors: waiting for a step against the host's own deadline,
//! and turning what went wrong into one line that names it.
//!
//! - a **fault** (a driver error after the launch) loses the CUDA context, so the engine is
//!   poisoned and refuses further work; in serial mode (`MIMO_CUDA_SERIAL=1`, one launch per
//!   task) the message names the faulting task, otherwise it suggests serial mode;
//! - a **hang** (the host's deadline passes with the kernel still running) poisons it too;
//! - an **abort** (a device-side wait gave up, or a task could not run with the kernel's limits)
//!   leaves the abi.cuh `Diagnostics` block, decoded here into the task, the event, its counts
//!   and the tasks that should have triggered it; the counters are reset so the engine stays
//!   usable.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use mimo_compiler::abi::NONE;

use super::abi_layout::Diagnostics;
use super::megakernel::Megakernel;
use super::{call, error_name, guarded};

/// Why waiting for a step failed.
enum WaitError {
    /// A driver error after the launch: the kernel faulted (the message names the error).
    Fault(String),
    /// The host's deadline passed with the kernel still running.
    Hang,
}

impl Megakernel {
    /// Waits for everything enqueued, then checks the diagnostics: the one place where device
    /// failures become errors.
    pub fn synchronize(&mut self) -> Result<()> {
        self.wait_step(self.step.saturating_sub(1), None)
    }

    /// Waits for the stream; `step` and `serial_task` only name what ran in messages. Any driver
    /// error from here on is an asynchronous error of the work enqueued (a fault): the context is
    /// lost, so the engine remembers it and refuses further work.
    pub(super) fn wait_step(&mut self, step: u32, serial_task: Option<usize>) -> Result<()> {
        self.check_usable()?;
        match self.wait_for_stream(step) {
            Ok(()) => {}
            Err(WaitError::Fault(e)) => {
                let at = match serial_task {
                    Some(id) => format!(" in {}", self.describe_task(id)),
                    None => String::new(),
                };
                let why = format!(
                    "GPU fault{at} during step {step}: {e}; the CUDA context is lost (restart the process{})",
                    if serial_task.is_none() {
                        "; MIMO_CUDA_SERIAL=1 runs one task per launch and names the faulting task"
                    } else {
                        ""
                    }
                );
                self.poisoned = Some(why.clone());
                bail!(why);
            }
            Err(WaitError::Hang) => {
                let why = format!(
                    "step {step} did not finish within {:?}: the kernel is still running on {} (a device-side hang)",
                    self.opts.host_timeout,
                    self.device.describe()
                );
                self.poisoned = Some(why.clone());
                bail!(why);
            }
        }
        let d = Diagnostics::from_words(
            guarded("reading the diagnostics", || self.host_diag.as_slice())?
                .map_err(|e| anyhow!("reading the diagnostics failed: {}", error_name(e)))?,
        );
        if d.aborted != 0 {
            let message = self.diagnose(d, step);
            // The counters are inconsistent after an abort: start over from zero so the engine
            // stays usable (the caller decides whether the sequence goes on).
            self.zero_counters()?;
            call("resetting after an aborted step", || {
                self.stream.synchronize()
            })?;
            bail!(message);
        }
        Ok(())
    }

    /// Copies the diagnostics back behind the enqueued work and polls until all of it is done,
    /// within the host's deadline.
    fn wait_for_stream(&mut self, step: u32) -> Result<(), WaitError> {
        let fault = |what: &str, r: Result<Result<(), cudarc::driver::DriverError>>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WaitError::Fault(format!("{what}: {}", error_name(e)))),
            Err(panic) => Err(WaitError::Fault(format!("{what}: {panic}"))),
        };
        // Event queries are made on whichever thread steps the engine (a server moves it).
        fault(
            "binding the CUDA context",
            guarded("binding", || self.ctx.bind_to_thread()),
        )?;
        fault(
            "copying the diagnostics",
            guarded("copying", || {
                self.stream.memcpy_dtoh(&self.diag, &mut self.host_diag)
            }),
        )?;
        fault(
            "recording the end of the step",
            guarded("recording", || self.done.record(&self.stream)),
        )?;
        let started = Instant::now();
        let mut polls = 0u32;
        loop {
            match guarded("polling", || self.done.try_is_complete()) {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => return Err(WaitError::Fault(error_name(e))),
                Err(panic) => return Err(WaitError::Fault(panic.to_string())),
            }
            if started.elapsed() > self.opts.host_timeout {
                tracing::error!(
                    "step {step}: no completion after {:?}",
                    self.opts.host_timeout
                );
                return Err(WaitError::Hang);
            }
            polls += 1;
            if polls < 2000 {
                std::hint::spin_loop();
            } else if polls < 20_000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
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
        let task = self.tables.task_ids.get(d.task as usize).map_or_else(
            || format!("kernel task index {}", d.task),
            |&id| self.describe_task(id),
        );
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
