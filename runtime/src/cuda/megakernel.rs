//! [`Megakernel`]: one compiled program resident on the GPU (its task tables, `WeightRef`
//! table, arena, event counters and diagnostics block, next to the weights and KV cache it shares
//! with the model's other programs) and its life: set-up with every check done before anything
//! is uploaded, accessors, resets, and the poisoned state after a lost context.
//!
//! The struct is the hub the sibling modules extend with `impl Megakernel` blocks of their own:
//! [`super::launch`] (steps), [`super::arena`] (the arena from the host), [`super::diagnose`]
//! (waiting and errors), [`super::timing`] (benchmarks). Its fields are therefore visible to
//! `cuda` (`pub(super)`), not beyond.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, PinnedHostSlice,
};
use mimo_compiler::Program;
use mimo_compiler::abi::{self, AbiTables};
use mimo_ir::weights::WeightStore;

use super::abi_layout::{DIAG_WORDS, op_words, task_words};
use super::arena::{Port, ports};
use super::call;
use super::kernel::{KernelImage, check_launchable};
use super::launch::LaunchOptions;
use super::probe::DeviceInfo;
use super::shared::{DeviceContext, DeviceKv};

/// The persistent megakernel of one program, ready to run steps.
pub struct Megakernel {
    pub(super) device: DeviceInfo,
    pub(super) program: Program,
    pub(super) tables: AbiTables,
    pub(super) opts: LaunchOptions,
    kernel_note: String,
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
    /// Set when the CUDA context is lost (a fault or a hang): every later call fails with it.
    pub(super) poisoned: Option<String>,

    // Declared before the context they live in, so they are dropped first.
    pub(super) done: CudaEvent,
    pub(super) host_diag: PinnedHostSlice<u32>,
    pub(super) host_out: HashMap<String, PinnedHostSlice<u32>>,
    pub(super) scratch: Option<CudaSlice<u32>>,
    pub(super) serial_queues: Option<CudaSlice<u32>>,
    pub(super) d_tasks: CudaSlice<u32>,
    pub(super) d_queue_start: CudaSlice<u32>,
    pub(super) d_waits: CudaSlice<u32>,
    pub(super) d_triggers: CudaSlice<u32>,
    pub(super) d_ops: CudaSlice<u32>,
    /// This program's `WeightRef` table, into the shared pool.
    pub(super) weight_table: CudaSlice<u32>,
    pub(super) arena: CudaSlice<u32>,
    pub(super) events: CudaSlice<u32>,
    pub(super) diag: CudaSlice<u32>,
    pub(super) function: CudaFunction,
    /// The model's KV cache, shared with its other programs.
    pub(super) kv: Arc<DeviceKv>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) ctx: Arc<CudaContext>,
    pub(super) shared: Arc<DeviceContext>,
}

impl Megakernel {
    /// Puts `program` with `weights` on `device` and loads its kernel, in a context of its own
    /// (one program alone; [`Megakernel::on`] adds a program to a shared one). Refuses a program
    /// with more workers than the device has SMs, or a kernel that cannot keep every worker
    /// resident.
    pub fn new(
        device: &DeviceInfo,
        program: Program,
        weights: &WeightStore,
        image: &KernelImage,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let tables = abi::encode(&program).context("encoding the task tables")?;
        // The cheap checks first, before anything is uploaded.
        check_launchable(device, &program, image)?;
        let shared = DeviceContext::new(device, weights, Some(&tables.weights))?;
        let kv = DeviceKv::for_program(&shared, &program, "model")?;
        Self::on(&shared, &kv, program, image, opts)
    }

    /// Adds `program` to `shared` (its context, stream and weights) reading and writing the KV
    /// cache `kv` (refused unless the program lays its state out exactly as `kv` is).
    pub fn on(
        shared: &Arc<DeviceContext>,
        kv: &Arc<DeviceKv>,
        program: Program,
        image: &KernelImage,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let device = &shared.device;
        let tables = abi::encode(&program).context("encoding the task tables")?;
        let workers = program.schedule.queues.len();
        let (threads, smem) = check_launchable(device, &program, image)?;
        kv.check(&program)?;
        let inputs = ports(&program, true)?;
        let outputs = ports(&program, false)?;
        let need_smem = smem as usize;
        let (ctx, stream) = (shared.ctx.clone(), shared.stream.clone());
        call("binding the CUDA context", || ctx.bind_to_thread())?;
        let (function, kernel_note) = image.load(&ctx, device)?;
        let static_smem = call("reading the kernel's shared memory", || {
            function.shared_size_bytes()
        })?
        .max(0) as usize;
        if need_smem + static_smem > device.max_shared_per_block {
            bail!(
                "the kernel needs {} bytes of shared memory per block ({need_smem} dynamic + {static_smem} static); {} allows {}",
                need_smem + static_smem,
                device.describe(),
                device.max_shared_per_block
            );
        }
        call("raising the kernel's dynamic shared memory limit", || {
            function.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
        })?;
        let per_sm = call("computing the kernel's occupancy", || {
            function.occupancy_max_active_blocks_per_multiprocessor(threads, need_smem, None)
        })? as usize;
        if per_sm * device.sm_count < workers {
            let regs = function.num_regs().unwrap_or(-1);
            bail!(
                "only {} blocks of the kernel ({threads} threads, {regs} registers each, {need_smem} bytes of shared memory) \
                 fit on {} at once, fewer than the program's {workers} workers: they could not all be resident",
                per_sm * device.sm_count,
                device.describe()
            );
        }

        let upload = |what: &str, mut words: Vec<u32>| -> Result<CudaSlice<u32>> {
            words.push(0); // never an empty allocation
            call(&format!("uploading the {what}"), || {
                stream.clone_htod(&words[..])
            })
        };
        let d_tasks = upload(
            "task table",
            tables.tasks.iter().flat_map(task_words).collect(),
        )?;
        let d_queue_start = upload("queue table", tables.queue_start.clone())?;
        let d_waits = upload(
            "wait table",
            tables
                .waits
                .iter()
                .flat_map(|w| [w.event, w.per_step])
                .collect(),
        )?;
        let d_triggers = upload("trigger table", tables.triggers.clone())?;
        let d_ops = upload(
            "operand table",
            tables.ops.iter().flat_map(op_words).collect(),
        )?;

        let (free, _) = call("reading the free device memory", || ctx.mem_get_info())?;
        let needed = program.memory.arena_len * 4 + program.events.len() * 4;
        if needed > free {
            bail!(
                "`{}` needs {:.2} GB of device memory for its activations; {} has {:.2} GB free",
                program.graph.name,
                needed as f64 / 1e9,
                device.describe(),
                free as f64 / 1e9
            );
        }
        let weight_table = shared.weights.table_for(&stream, &tables.weights)?;
        let zeros32 = |what: &str, n: usize| {
            call(&format!("allocating the {what}"), || {
                stream.alloc_zeros::<u32>(n.max(1))
            })
        };
        let arena = zeros32("arena", program.memory.arena_len)?;
        let events = zeros32("event counters", program.events.len())?;
        let diag = zeros32("diagnostics block", DIAG_WORDS)?;
        // SAFETY: plain page-locked memory (no write-combining: the host reads it), fully
        // written by a device copy before every read.
        let host_diag = call("allocating pinned host memory", || unsafe {
            ctx.alloc_pinned_with_flags::<u32>(DIAG_WORDS, 0)
        })?;
        let done = call("creating a CUDA event", || ctx.new_event(None))?;
        call("uploading the model", || stream.synchronize())?;

        let max_per_step = tables.waits.iter().map(|w| w.per_step).max().unwrap_or(1);
        Ok(Megakernel {
            device: device.clone(),
            cooperative: opts.cooperative && device.cooperative_launch,
            workers: workers as u32,
            program,
            tables,
            opts,
            kernel_note,
            threads,
            smem,
            max_per_step: max_per_step.max(1),
            inputs,
            outputs,
            step: 0,
            poisoned: None,
            done,
            host_diag,
            host_out: HashMap::new(),
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
            function,
            stream,
            ctx,
            shared: shared.clone(),
        })
    }

    /// The context, stream and weights this program runs on.
    pub fn shared(&self) -> &Arc<DeviceContext> {
        &self.shared
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// How the kernel was obtained (the artifact's CUBIN, or NVRTC).
    pub fn kernel_note(&self) -> &str {
        &self.kernel_note
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
        self.kv.zero(&self.stream)?;
        Ok(())
    }

    /// Zeroes the event counters, diagnostics and step counter, not the KV cache (which other
    /// programs share): how a model's programs start a new sequence together.
    pub fn reset_counters(&mut self) -> Result<()> {
        self.check_usable()?;
        self.zero_counters()
    }

    pub(super) fn zero_counters(&mut self) -> Result<()> {
        call("zeroing the event counters", || {
            self.stream.memset_zeros(&mut self.events)
        })?;
        call("zeroing the diagnostics", || {
            self.stream.memset_zeros(&mut self.diag)
        })?;
        self.step = 0;
        Ok(())
    }

    pub(super) fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(anyhow!(
                "the CUDA engine is unusable after an earlier failure: {why}"
            )),
            None => Ok(()),
        }
    }
}
