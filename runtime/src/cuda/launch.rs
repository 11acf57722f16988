//! One step of a [`Megakernel`]: inputs in, the launch of the persistent megakernel
//! (`templates/megakernel.cu`), outputs back; and [`LaunchOptions`], how steps are launched and
//! how long anything may wait. The program's residence on the device is [`super::megakernel`];
//! the arena copies [`super::arena`]; waiting and errors [`super::diagnose`].
//!
//! **The launch contract** (`templates/megakernel.cu`): grid = the program's workers (one block
//! per SM, never more than can be co-resident: checked against the occupancy calculator, and the
//! launch is cooperative where the device supports it, so an over-large grid fails instead of
//! deadlocking), block = `MIMO_THREADS`, dynamic shared memory = `MIMO_SMEM_BYTES` after raising
//! the function's limit, one `KernelParams` by value. Both constants are read from the kernel
//! source itself, the ground truth for the binary that is loaded.
//!
//! **Steps.** Inputs go into the arena at the memory plan's places, the kernel runs, the host
//! waits for it against its own deadline ([`crate::device::Device::synchronize`]: a fault surfaces
//! as the wait's error, and even a kernel that never returned becomes an error instead of a
//! hang), and only then are the diagnostics block and the outputs read back.
//!
//! **Events and the step counter.** Event counters are monotonic (a task waits for
//! `per_step * (step + 1)`), and at every step boundary each counter is exactly
//! `per_step * step`; so zeroing them together with the step counter is legal at any boundary.
//! [`Megakernel::reset`] does that (and zeroes the KV state, so a kernel bug reading past the
//! context reads zeros deterministically), and so does the host when the next step's counts would
//! overflow 32 bits. After a wait gave up the counters are inconsistent, so the same reset runs
//! before the error is returned, leaving the engine usable.
//!
//! **Serial mode** (`LaunchOptions::serial`, `MIMO_CUDA_SERIAL=1`): every task runs in a launch
//! of its own, in the schedule's topological order, each followed by a synchronisation. Slow, but
//! a fault then names its task, which a fault in one persistent launch cannot (the context is lost
//! before anything can be read back).
//!
//! This module also re-exports what it held before it was split (the kernel image, the ABI
//! structs, [`Megakernel`]), so `cuda::launch::...` paths keep working.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mimo_ir::{Tensor, TensorData};

use super::arena::Port;
use super::megakernel::Megakernel;
use crate::device::{DeviceBuffer, DeviceFailure, LaunchShape, MemClass};
use mimo_compiler::abi::KernelParams;

/// How steps are launched and how long anything may wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaunchOptions {
    /// A device-side wait longer than this gives up and the step fails naming its task. A whole
    /// step takes milliseconds; a wait this long only happens when an event is never triggered.
    pub wait_limit: Duration,
    /// The host's own deadline for one step (beyond the device's bounded waits).
    pub host_timeout: Duration,
    /// Launch cooperatively (the driver refuses a grid that cannot be co-resident) when the
    /// device supports it; otherwise the occupancy check alone guards co-residency.
    pub cooperative: bool,
    /// One launch per task (see the module docs).
    pub serial: bool,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            wait_limit: Duration::from_secs(1),
            host_timeout: Duration::from_secs(30),
            cooperative: true,
            serial: false,
        }
    }
}

impl LaunchOptions {
    /// The defaults, with `MIMO_WAIT_LIMIT_MS=N` and `MIMO_CUDA_SERIAL=1` applied.
    pub fn from_env() -> Self {
        let mut o = LaunchOptions::default();
        if let Some(ms) = std::env::var("MIMO_WAIT_LIMIT_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
        {
            o.wait_limit = Duration::from_millis(ms);
            o.host_timeout = o.host_timeout.max(o.wait_limit * 4);
        }
        o.serial = std::env::var("MIMO_CUDA_SERIAL").is_ok_and(|v| v == "1");
        o
    }
}

impl Megakernel {
    /// Runs one step: writes `inputs` (by graph-input name; every input is required), launches,
    /// and returns the named graph `outputs`. An error names the program (a model runs several).
    pub fn run_step(
        &mut self,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        let result = self.run_step_unnamed(inputs, outputs);
        result.with_context(|| {
            format!(
                "running `{}` on {}",
                self.program.graph.name,
                self.dev.kind().place()
            )
        })
    }

    fn run_step_unnamed(
        &mut self,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        self.check_usable()?;
        for port in self.inputs.clone() {
            let (_, t) = inputs
                .iter()
                .find(|(n, _)| *n == port.name)
                .with_context(|| format!("missing input `{}`", port.name))?;
            if t.shape != port.ty.shape || t.is_i32() != port.ty.dtype.is_int() {
                bail!(
                    "input `{}`: expected {}, got shape {:?}",
                    port.name,
                    port.ty,
                    t.shape
                );
            }
            let words: Vec<u32> = match &t.data {
                TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
                TensorData::I32(v) => v.iter().map(|&x| x as u32).collect(),
            };
            self.write_arena(port.loc.offset, &words)?;
        }
        let wanted: Vec<Port> = outputs
            .iter()
            .map(|name| {
                self.outputs
                    .iter()
                    .find(|p| p.name == *name)
                    .cloned()
                    .with_context(|| format!("the program has no output `{name}`"))
            })
            .collect::<Result<_>>()?;
        if self.opts.serial {
            self.launch_serial()?;
        } else {
            self.launch_step()?;
        }
        // Outputs are read only after the deadline-bounded wait, so a hung kernel is an error.
        self.synchronize()?;
        wanted
            .iter()
            .map(|p| {
                let words = self.read_back(&p.name, p.loc)?;
                let data = if p.ty.dtype.is_int() {
                    TensorData::I32(words.iter().map(|&w| w as i32).collect())
                } else {
                    TensorData::F32(words.iter().map(|&w| f32::from_bits(w)).collect())
                };
                Ok((
                    p.name.clone(),
                    Tensor {
                        shape: p.ty.shape.clone(),
                        data,
                    },
                ))
            })
            .collect()
    }

    /// The kernel parameters of step `step` with queue table `queue_start`.
    fn params(&self, queue_start: u64) -> KernelParams {
        KernelParams {
            tasks: self.d_tasks.ptr(),
            queue_start,
            waits: self.d_waits.ptr(),
            triggers: self.d_triggers.ptr(),
            ops: self.d_ops.ptr(),
            weights: self.weight_table.ptr(),
            arena: self.arena.ptr(),
            state: self.kv.ptr(),
            events: self.events.ptr(),
            diag: self.diag.ptr(),
            wait_limit_ns: self.opts.wait_limit.as_nanos().min(u64::MAX as u128) as u64,
            step: self.step,
            workers: self.workers,
        }
    }

    /// Enqueues one launch with queue table `queue_start` (does not advance the step); a
    /// failure the device reports at launch (an emulator check) becomes an error like a wait's.
    fn launch(&mut self, queue_start: u64, serial_task: Option<usize>) -> Result<()> {
        let params = self.params(queue_start);
        let shape = LaunchShape {
            blocks: self.workers,
            threads: self.threads,
            dynamic_smem: self.smem,
            cooperative: self.cooperative,
        };
        // The contract `Device::launch` asks of its caller: every pointer in `params` is a live
        // allocation owned by `self` (or its shared context) and sized by the program's tables
        // and memory plan, which the kernel indexes only as abi.cuh documents; the grid fits
        // co-resident and the dynamic shared memory limit was raised to `smem` (both in
        // `Megakernel::on`, megakernel.rs).
        match self.dev.launch(&self.kernel, shape, &params.to_bytes()) {
            Ok(()) => Ok(()),
            Err(DeviceFailure::Other(e)) => bail!(
                "launching the megakernel ({} blocks of {} threads, {} bytes of shared memory{}) failed: {e}",
                self.workers,
                self.threads,
                self.smem,
                if self.cooperative {
                    ", cooperative"
                } else {
                    ""
                }
            ),
            Err(failure) => Err(self.failed(failure, self.step, serial_task)),
        }
    }

    /// Enqueues one whole step (one launch) and advances the step counter.
    pub fn launch_step(&mut self) -> Result<()> {
        self.check_usable()?;
        self.guard_overflow()?;
        let q = self.d_queue_start.ptr();
        self.launch(q, None)?;
        self.step += 1;
        Ok(())
    }

    /// Zeroes the counters when the next step's expected counts would not fit in 32 bits.
    fn guard_overflow(&mut self) -> Result<()> {
        if u64::from(self.step + 2) * u64::from(self.max_per_step) >= u64::from(u32::MAX) {
            self.zero_counters()?;
        }
        Ok(())
    }

    /// One step as one launch per task in topological order, each checked before the next.
    fn launch_serial(&mut self) -> Result<()> {
        self.guard_overflow()?;
        let w = self.workers as usize + 1;
        if self.serial_queues.is_none() {
            // Launch i runs task order[i] alone: its worker's range is [k, k+1), every other
            // worker's is empty.
            let index_of: HashMap<usize, usize> = self
                .tables
                .task_ids
                .iter()
                .enumerate()
                .map(|(k, &id)| (id, k))
                .collect();
            let mut words = Vec::with_capacity(self.tables.tasks.len() * w + 1);
            for &id in &self.program.schedule.order {
                let k = index_of[&id] as u32;
                let worker = self.tables.queue_start[1..]
                    .iter()
                    .position(|&end| k < end)
                    .unwrap_or(0);
                words.extend((0..w).map(|j| if j <= worker { k } else { k + 1 }));
            }
            self.serial_queues = Some(DeviceBuffer::from_words(
                &self.dev,
                &words,
                MemClass::Tables,
                "serial queue tables",
            )?);
        }
        let base = self.serial_queues.as_ref().map_or(0, DeviceBuffer::ptr);
        for (i, &id) in self.program.schedule.order.clone().iter().enumerate() {
            self.launch(base + (4 * i * w) as u64, Some(id))?;
            self.wait_step(self.step, Some(id))?;
        }
        self.step += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_options_read_the_environment_defaults() {
        let o = LaunchOptions::default();
        assert!(o.wait_limit < o.host_timeout);
        assert!(o.cooperative && !o.serial);
    }
}
