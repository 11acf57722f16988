//! [`Megakernel`]: one compiled program resident on a device (its task tables, `WeightRef`
//! table, arena, event counters and diagnostics block, each a [`DeviceBuffer`] of its
//! [`MemClass`], next to the weights and KV cache it shares with the model's other programs) and
//! its life: set-up with every check done before anything is uploaded, accessors, resets, and the
//! poisoned state after a lost context or a failed emulator check.
//!
//! The struct is the hub the sibling modules extend with `impl Megakernel` blocks of their own:
//! [`super::launch`] (steps), [`super::arena`] (the arena from the host), [`super::diagnose`]
//! (waiting and errors), [`super::timing`] (benchmarks). Its fields are therefore visible to
//! `cuda` (`pub(super)`), not beyond.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use mimo_compiler::Program;
use mimo_compiler::abi::{self, AbiTables, CStruct, Diagnostics};
use mimo_ir::weights::WeightStore;

use super::arena::{Port, ports};
use super::kernel::{KERNEL_NAME, KernelImage, check_launchable};
use super::launch::LaunchOptions;
use super::probe::DeviceInfo;
use super::shared::{DeviceContext, DeviceKv};
use crate::device::{Device, DeviceBuffer, LoadedKernel, MemClass, TaskBytes};

/// The persistent megakernel of one program, ready to run steps.
pub struct Megakernel {
    pub(super) dev: Arc<dyn Device>,
    pub(super) program: Program,
    pub(super) tables: AbiTables,
    pub(super) opts: LaunchOptions,
    pub(super) threads: u32,
    pub(super) smem: u32,
    pub(super) workers: u32,
    pub(super) cooperative: bool,
    /// The largest per-step count of any event (bounds the steps before counters overflow).
    pub(super) max_per_step: u32,
    pub(super) inputs: Vec<Port>,
    pub(super) outputs: Vec<Port>,
    /// Steps since the event counters were zeroed.
    pub(super) step: u32,
    /// Set when the device state is lost or unknown (a fault, a hang, a failed emulator check):
    /// every later call fails with it.
    pub(super) poisoned: Option<String>,

    pub(super) kernel: LoadedKernel,
    pub(super) scratch: Option<DeviceBuffer>,
    pub(super) serial_queues: Option<DeviceBuffer>,
    pub(super) d_tasks: DeviceBuffer,
    pub(super) d_queue_start: DeviceBuffer,
    pub(super) d_waits: DeviceBuffer,
    pub(super) d_triggers: DeviceBuffer,
    pub(super) d_ops: DeviceBuffer,
    /// This program's `WeightRef` table, into the shared pool.
    pub(super) weight_table: DeviceBuffer,
    pub(super) arena: DeviceBuffer,
    pub(super) events: DeviceBuffer,
    pub(super) diag: DeviceBuffer,
    /// The model's KV cache, shared with its other programs.
    pub(super) kv: Arc<DeviceKv>,
    pub(super) shared: Arc<DeviceContext>,
}

impl Megakernel {
    /// Puts `program` with `weights` on `device` and loads its kernel, with a weight upload of
    /// its own (one program alone; [`Megakernel::on`] adds a program to a shared one). Refuses a
    /// program with more workers than the device has SMs, or a kernel that cannot keep every
    /// worker resident.
    pub fn new(
        device: &Arc<dyn Device>,
        program: Program,
        weights: &WeightStore,
        image: &KernelImage,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let tables = abi::encode(&program).context("encoding the task tables")?;
        // The cheap checks first, before anything is uploaded.
        check_launchable(device.info(), &program, image)?;
        let shared = DeviceContext::new(device, weights, Some(&tables.weights))?;
        let kv = DeviceKv::for_program(&shared, &program, "model")?;
        Self::on(&shared, &kv, program, image, opts)
    }

    /// Adds `program` to `shared` (its device and weights) reading and writing the KV cache `kv`
    /// (refused unless the program lays its state out exactly as `kv` is).
    pub fn on(
        shared: &Arc<DeviceContext>,
        kv: &Arc<DeviceKv>,
        program: Program,
        image: &KernelImage,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let dev = shared.device().clone();
        let device = dev.info();
        let tables = abi::encode(&program).context("encoding the task tables")?;
        let workers = program.schedule.queues.len();
        let (threads, smem) = check_launchable(device, &program, image)?;
        kv.check(&program)?;
        let inputs = ports(&program, true)?;
        let outputs = ports(&program, false)?;
        let need_smem = smem as usize;
        let kernel = dev.load_kernel(image, KERNEL_NAME)?;
        let static_smem = kernel.static_smem;
        if need_smem + static_smem > device.max_shared_per_block {
            bail!(
                "the kernel needs {} bytes of shared memory per block ({need_smem} dynamic + {static_smem} static); {} allows {}",
                need_smem + static_smem,
                dev.describe(),
                device.max_shared_per_block
            );
        }
        dev.allow_dynamic_smem(&kernel, smem)?;
        let per_sm = dev.resident_blocks_per_sm(&kernel, threads, smem)?;
        if per_sm * device.sm_count < workers {
            bail!(
                "only {} blocks of the kernel ({threads} threads, {} registers each, {need_smem} bytes of shared memory) \
                 fit on {} at once, fewer than the program's {workers} workers: they could not all be resident",
                per_sm * device.sm_count,
                kernel.registers,
                dev.describe()
            );
        }

        let upload = |what: &str, words: Vec<u32>| {
            DeviceBuffer::from_words(&dev, &words, MemClass::Tables, what)
                .with_context(|| format!("uploading the {what}"))
        };
        let d_tasks = upload("task table", tables.task_words())?;
        let d_queue_start = upload("queue table", tables.queue_start.clone())?;
        let d_waits = upload("wait table", tables.wait_words())?;
        let d_triggers = upload("trigger table", tables.triggers.clone())?;
        let d_ops = upload("operand table", tables.op_words())?;

        let free = dev.free_memory()?;
        let needed = program.memory.arena_len * 4 + program.events.len() * 4;
        if needed > free {
            bail!(
                "`{}` needs {:.2} GB of device memory for its activations; {} has {:.2} GB free",
                program.graph.name,
                needed as f64 / 1e9,
                dev.describe(),
                free as f64 / 1e9
            );
        }
        let weight_table = shared.weights.table_for(&dev, &tables.weights)?;
        let words = |n: usize| n.max(1) * 4;
        let arena = DeviceBuffer::zeroed(
            &dev,
            words(program.memory.arena_len),
            MemClass::Activations,
            "arena",
        )?;
        let events = DeviceBuffer::zeroed(
            &dev,
            words(program.events.len()),
            MemClass::Sync,
            "event counters",
        )?;
        let diag = DeviceBuffer::zeroed(
            &dev,
            words(Diagnostics::WORDS),
            MemClass::Sync,
            "diagnostics",
        )?;
        dev.synchronize(opts.host_timeout)
            .map_err(|e| anyhow!("uploading the model: {e}"))?;

        let max_per_step = tables.waits.iter().map(|w| w.per_step).max().unwrap_or(1);
        Ok(Megakernel {
            cooperative: opts.cooperative && device.cooperative_launch,
            workers: workers as u32,
            program,
            tables,
            opts,
            threads,
            smem,
            max_per_step: max_per_step.max(1),
            inputs,
            outputs,
            step: 0,
            poisoned: None,
            kernel,
            scratch: None,
            serial_queues: None,
            d_tasks,
            d_queue_start,
            d_waits,
            d_triggers,
            d_ops,
            weight_table,
            arena,
            events,
            diag,
            kv: kv.clone(),
            dev,
            shared: shared.clone(),
        })
    }

    /// The device and weights this program runs on.
    pub fn shared(&self) -> &Arc<DeviceContext> {
        &self.shared
    }

    pub fn device(&self) -> &DeviceInfo {
        self.dev.info()
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// `bytes` (counted per kernel task index) summed per fused op, by op name, in the
    /// program's op order.
    pub fn bytes_by_op(&self, bytes: &TaskBytes) -> Vec<(String, [u64; 6])> {
        let mut per_op = vec![[0u64; 6]; self.program.ops.len()];
        for (index, row) in bytes.per_task.iter().enumerate() {
            let Some(&task) = self.tables.task_ids.get(index) else {
                continue;
            };
            let op = &mut per_op[self.program.tasks[task].op];
            op.iter_mut().zip(row).for_each(|(sum, b)| *sum += b);
        }
        self.program
            .ops
            .iter()
            .zip(per_op)
            .map(|(op, b)| (op.name.clone(), b))
            .collect()
    }

    /// How the kernel was obtained (the artifact's CUBIN, NVRTC, the emulator's build).
    pub fn kernel_note(&self) -> &str {
        &self.kernel.note
    }

    pub fn workers(&self) -> usize {
        self.workers as usize
    }

    /// Bytes of device memory the weights occupy.
    pub fn weight_bytes(&self) -> usize {
        self.shared.weight_bytes()
    }

    /// Steps since the last reset.
    pub fn step_count(&self) -> u32 {
        self.step
    }

    /// A new sequence: zero KV state, event counters, diagnostics and the step counter.
    pub fn reset(&mut self) -> Result<()> {
        self.check_usable()?;
        self.zero_counters()?;
        self.kv.zero()?;
        Ok(())
    }

    /// Zeroes the event counters, diagnostics and step counter, not the KV cache (which other
    /// programs share): how a model's programs start a new sequence together.
    pub fn reset_counters(&mut self) -> Result<()> {
        self.check_usable()?;
        self.zero_counters()
    }

    pub(super) fn zero_counters(&mut self) -> Result<()> {
        self.events.zero().context("zeroing the event counters")?;
        self.diag.zero().context("zeroing the diagnostics")?;
        self.step = 0;
        Ok(())
    }

    pub(super) fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(anyhow!(
                "the megakernel engine is unusable after an earlier failure: {why}"
            )),
            None => Ok(()),
        }
    }
}
