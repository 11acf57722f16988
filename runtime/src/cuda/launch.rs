//! One compiled program on the GPU: its task tables, weights, arena, KV state and event
//! counters, and the launch of the persistent megakernel (`templates/megakernel.cu`) that runs one
//! step of it.
//!
//! **The launch contract** (`templates/megakernel.cu`): grid = the program's workers (one block
//! per SM, never more than can be co-resident: checked against the occupancy calculator, and the
//! launch is cooperative where the device supports it, so an over-large grid fails instead of
//! deadlocking), block = `MIMO_THREADS`, dynamic shared memory = `MIMO_SMEM_BYTES` after raising
//! the function's limit, one `KernelParams` by value. Both constants are read from the kernel
//! source itself, the ground truth for the binary that is loaded.
//!
//! **Steps.** Inputs go into the arena at the memory plan's places, the kernel runs, outputs and
//! the diagnostics block come back through pinned host memory, and one event marks the end of
//! the step. The host polls that event against its own deadline: a fault surfaces as the event's
//! error, and even a kernel that never returned becomes an error instead of a hang.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::sys::{CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PinnedHostSlice, PushKernelArg, result,
};
use cudarc::nvrtc::Ptx;
use mimo_compiler::Program;
use mimo_compiler::abi::{self, AbiTables, NONE, OpArgs};
use mimo_compiler::plan::{Buffer, Location};
use mimo_compiler::{artifact, nvrtc};
use mimo_ir::graph::NodeKind;
use mimo_ir::weights::WeightStore;
use mimo_ir::{Tensor, TensorData, TensorType};

use super::probe::{DeviceInfo, cubin_runs_on};
use super::shared::{DeviceContext, DeviceKv};
use super::{call, error_name, guarded};

/// The kernel's entry point (`templates/megakernel.cu`).
pub const KERNEL_NAME: &str = "mimo_megakernel";

/// abi.cuh `KernelParams`, byte for byte (96 bytes; checked against the header by a test).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelParams {
    pub tasks: u64,
    pub queue_start: u64,
    pub waits: u64,
    pub triggers: u64,
    pub ops: u64,
    pub weights: u64,
    pub arena: u64,
    pub state: u64,
    pub events: u64,
    pub diag: u64,
    pub wait_limit_ns: u64,
    pub step: u32,
    pub workers: u32,
}

// SAFETY: `KernelParams` is `repr(C)` and made of integers only, laid out exactly as abi.cuh's
// `KernelParams` (the test `kernel_params_match_abi_cuh` checks field order and size); it is
// passed by value as the kernel's only parameter.
unsafe impl DeviceRepr for KernelParams {}

/// abi.cuh `Diagnostics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub aborted: u32,
    pub worker: u32,
    pub task: u32,
    pub event: u32,
    pub observed: u32,
    pub expected: u32,
}

/// Words of the diagnostics block (6 used; 8 keeps the copy a whole 32 bytes).
const DIAG_WORDS: usize = 8;

impl Diagnostics {
    fn from_words(w: &[u32]) -> Self {
        Diagnostics {
            aborted: w[0],
            worker: w[1],
            task: w[2],
            event: w[3],
            observed: w[4],
            expected: w[5],
        }
    }
}

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

/// The kernel to run: the source (always; NVRTC compiles it when no CUBIN fits the device) and
/// a CUBIN with the architecture it was built for.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelImage {
    pub source: String,
    pub cubin: Option<(String, Vec<u8>)>,
}

impl KernelImage {
    /// An artifact's `kernel.cu` (refused when it does not hash to the manifest's
    /// `source_hash`) and its CUBIN, when there is one.
    pub fn from_artifact(art: &artifact::Artifact) -> Result<Self> {
        let k = &art.manifest.kernel;
        if k.abi_version != abi::ABI_VERSION {
            bail!(
                "{}: kernel ABI {} but this runtime speaks ABI {}: recompile it with mimo-compile",
                art.dir.display(),
                k.abi_version,
                abi::ABI_VERSION
            );
        }
        let path = art.dir.join(&k.source);
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if artifact::fnv1a(source.as_bytes()) != k.source_hash {
            bail!(
                "{}: does not match the manifest's source_hash (edited after compilation?): recompile with mimo-compile",
                path.display()
            );
        }
        let cubin = match &k.cubin {
            Some(name) => {
                let p = art.dir.join(name);
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                Some((art.manifest.arch.clone(), bytes))
            }
            None => None,
        };
        Ok(KernelImage { source, cubin })
    }

    /// `#define NAME value` of the generated header (the first definition in the source).
    pub fn define(&self, name: &str) -> Option<u64> {
        self.source.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("#define ")?.strip_prefix(name)?;
            rest.starts_with([' ', '\t'])
                .then(|| rest.split_whitespace().next()?.parse().ok())?
        })
    }

    /// Loads the kernel into `ctx`: the CUBIN when it was built for this device (and the driver
    /// accepts it), else `kernel.cu` compiled by NVRTC for the device. Returns the function and
    /// a note saying which.
    fn load(&self, ctx: &Arc<CudaContext>, device: &DeviceInfo) -> Result<(CudaFunction, String)> {
        let arch = device.arch();
        let mut why = String::new();
        if let Some((built_for, bytes)) = &self.cubin {
            if cubin_runs_on(built_for, device.compute_capability) {
                match load_function(ctx, bytes.clone()) {
                    Ok(f) => return Ok((f, format!("CUBIN for {built_for}"))),
                    Err(e) => why = format!(" (the {built_for} CUBIN did not load: {e})"),
                }
            } else {
                why = format!(" (the CUBIN is for {built_for})");
            }
        }
        let opts = nvrtc::CompileOptions {
            arch: arch.clone(),
            extra: vec![],
        };
        let cached = cache_path(&self.source, &opts);
        if let Some(path) = &cached
            && let Ok(bytes) = std::fs::read(path)
        {
            match load_function(ctx, bytes) {
                Ok(f) => return Ok((f, format!("kernel.cu for {arch} from {}", path.display()))),
                Err(e) => {
                    tracing::warn!("{}: unusable ({e:#}); recompiling", path.display());
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let started = Instant::now();
        let compiled = nvrtc::compile_cubin(&self.source, "kernel.cu", &opts)
            .map_err(|e| anyhow!("compiling kernel.cu for {arch}{why}: {e}"))?;
        if let Some(path) = &cached {
            store_in_cache(path, &compiled.cubin);
        }
        let f = load_function(ctx, compiled.cubin)
            .with_context(|| format!("loading the kernel NVRTC compiled for {arch}"))?;
        Ok((
            f,
            format!(
                "kernel.cu compiled by NVRTC for {arch} in {:.1} s{why}",
                started.elapsed().as_secs_f64()
            ),
        ))
    }
}

/// Where NVRTC's CUBIN of `source` under `opts` is cached: `$MIMO_KERNEL_CACHE` (`off` disables
/// the cache), else `$XDG_CACHE_HOME/mimo/kernels`, else `~/.cache/mimo/kernels`; the file is
/// named by a hash of the source and the NVRTC flags, so a changed kernel never hits a stale
/// entry. Compiling a full kernel takes NVRTC 10-20 s; a cached one loads in milliseconds.
fn cache_path(source: &str, opts: &nvrtc::CompileOptions) -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("MIMO_KERNEL_CACHE") {
        Some(d) if d == "off" => return None,
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            Some(d) => std::path::PathBuf::from(d).join("mimo/kernels"),
            None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache/mimo/kernels"),
        },
    };
    let key = artifact::fnv1a(format!("{source}\0{}", opts.nvrtc_flags().join(" ")).as_bytes());
    Some(dir.join(format!("{key}-{}.cubin", opts.arch)))
}

/// Writes a cache entry atomically (a temporary file renamed into place); failures only cost a
/// recompilation later, so they are logged, not returned.
fn store_in_cache(path: &std::path::Path, cubin: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, cubin))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("kernel cache {}: {e}", path.display());
    }
}

fn load_function(ctx: &Arc<CudaContext>, cubin: Vec<u8>) -> Result<CudaFunction> {
    let module = call("loading the kernel module (cuModuleLoadData)", || {
        ctx.load_module(Ptx::from_binary(cubin))
    })?;
    call(&format!("finding `{KERNEL_NAME}` in the module"), || {
        module.load_function(KERNEL_NAME)
    })
}

/// The words of the abi structs, in their C layout (every field 4 bytes).
fn task_words(t: &abi::Task) -> [u32; 8] {
    [
        t.kind,
        t.op,
        t.unit_begin,
        t.unit_end,
        t.wait_begin,
        t.wait_count,
        t.trigger_begin,
        t.trigger_count,
    ]
}

fn op_words(o: &OpArgs) -> Vec<u32> {
    let mut w = Vec::with_capacity(26);
    w.extend_from_slice(&o.values);
    w.extend_from_slice(&o.state);
    w.extend_from_slice(&o.weights);
    w.extend_from_slice(&o.dims);
    w.extend(o.fparams.iter().map(|f| f.to_bits()));
    w
}

/// Why waiting for a step failed.
enum WaitError {
    /// A driver error after the launch: the kernel faulted (the message names the error).
    Fault(String),
    /// The host's deadline passed with the kernel still running.
    Hang,
}

/// A graph input or output: where it lives in the arena and what it is.
#[derive(Debug, Clone)]
struct Port {
    name: String,
    loc: Location,
    ty: TensorType,
}

/// The persistent megakernel of one program, ready to run steps.
pub struct Megakernel {
    device: DeviceInfo,
    program: Program,
    tables: AbiTables,
    opts: LaunchOptions,
    kernel_note: String,
    threads: u32,
    smem: u32,
    workers: u32,
    cooperative: bool,
    /// The largest per-step count of any event (bounds the steps before counters overflow).
    max_per_step: u32,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// Steps since the event counters were zeroed.
    step: u32,
    /// Set when the CUDA context is lost (a fault or a hang): every later call fails with it.
    poisoned: Option<String>,

    // Declared before the context they live in, so they are dropped first.
    done: CudaEvent,
    host_diag: PinnedHostSlice<u32>,
    host_out: HashMap<String, PinnedHostSlice<u32>>,
    scratch: Option<CudaSlice<u32>>,
    serial_queues: Option<CudaSlice<u32>>,
    d_tasks: CudaSlice<u32>,
    d_queue_start: CudaSlice<u32>,
    d_waits: CudaSlice<u32>,
    d_triggers: CudaSlice<u32>,
    d_ops: CudaSlice<u32>,
    /// This program's `WeightRef` table, into the shared pool.
    weight_table: CudaSlice<u32>,
    arena: CudaSlice<u32>,
    events: CudaSlice<u32>,
    diag: CudaSlice<u32>,
    function: CudaFunction,
    /// The model's KV cache, shared with its other programs.
    kv: Arc<DeviceKv>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    shared: Arc<DeviceContext>,
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

    /// Copies `len` words of this program's arena at `from` into `dst`'s arena at `to`, in
    /// stream order (both programs run on one stream of one context): a value one program
    /// produced becomes another's input without the host.
    pub fn copy_arena_to(
        &self,
        from: usize,
        dst: &mut Megakernel,
        to: usize,
        len: usize,
    ) -> Result<()> {
        if !Arc::ptr_eq(&self.shared, &dst.shared) {
            bail!("an arena copy between programs of different CUDA contexts");
        }
        if from + len > self.arena.len() || to + len > dst.arena.len() {
            bail!("arena copy {from}+{len} -> {to}+{len} is out of bounds");
        }
        let src = self.arena.slice(from..from + len);
        let mut dst_range = dst.arena.slice_mut(to..to + len);
        call("copying between program arenas", || {
            self.stream.memcpy_dtod(&src, &mut dst_range)
        })
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

    /// Words `rows` of output `name` (a [tokens, ...] value), copied back after everything
    /// enqueued: the committed rows of a verified block, without the rejected ones.
    pub fn read_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> Result<Vec<u32>> {
        let port = self
            .outputs
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("`{}` has no output `{name}`", self.program.graph.name))?;
        let n = port.ty.shape.first().copied().unwrap_or(1).max(1);
        let width = port.loc.len / n;
        if rows.end > n {
            bail!("rows {rows:?} of `{name}`, which has {n}");
        }
        let loc = Location {
            buffer: Buffer::Arena,
            offset: port.loc.offset + rows.start * width,
            len: rows.len() * width,
        };
        self.read_arena(loc)
    }

    fn zero_counters(&mut self) -> Result<()> {
        call("zeroing the event counters", || {
            self.stream.memset_zeros(&mut self.events)
        })?;
        call("zeroing the diagnostics", || {
            self.stream.memset_zeros(&mut self.diag)
        })?;
        self.step = 0;
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(anyhow!(
                "the CUDA engine is unusable after an earlier failure: {why}"
            )),
            None => Ok(()),
        }
    }

    /// The location of a graph input or output by name.
    pub fn port(&self, name: &str, input: bool) -> Option<Location> {
        let list = if input { &self.inputs } else { &self.outputs };
        list.iter().find(|p| p.name == name).map(|p| p.loc)
    }

    /// Runs one step: writes `inputs` (by graph-input name; every input is required), launches,
    /// and returns the named graph `outputs`. An error names the program (a model runs several).
    pub fn run_step(
        &mut self,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        let result = self.run_step_unnamed(inputs, outputs);
        result.with_context(|| format!("running `{}` on the GPU", self.program.graph.name))
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
        for p in &wanted {
            if let Err(e) = self.enqueue_read(&p.name, p.loc) {
                // Most likely the launch's own asynchronous error: let the wait name it.
                self.synchronize()?;
                return Err(e);
            }
        }
        self.synchronize()?;
        wanted
            .iter()
            .map(|p| {
                let words = self.host_words(&p.name)?;
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

    /// Copies `words` into the arena at `offset` (asynchronously, in stream order).
    pub fn write_arena(&mut self, offset: usize, words: &[u32]) -> Result<()> {
        let range = offset..offset + words.len();
        if range.end > self.arena.len() {
            bail!("arena write {range:?} past its {} words", self.arena.len());
        }
        call("copying inputs to the device", || {
            self.stream
                .memcpy_htod(words, &mut self.arena.slice_mut(range))
        })
    }

    /// Uploads `words` into a device scratch table (for bench loops that feed steps on the
    /// device), replacing the previous one.
    pub fn stage_scratch(&mut self, words: &[u32]) -> Result<()> {
        let mut w = words.to_vec();
        w.push(0);
        self.scratch = Some(call("uploading a scratch table", || {
            self.stream.clone_htod(&w[..])
        })?);
        Ok(())
    }

    /// Copies `len` words from scratch word `from` to arena word `to`, in stream order.
    pub fn copy_scratch_to_arena(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let scratch = self.scratch.as_ref().context("no scratch table staged")?;
        if from + len > scratch.len() || to + len > self.arena.len() {
            bail!("scratch copy out of bounds");
        }
        let src = scratch.slice(from..from + len);
        call("copying scratch words to the arena", || {
            self.stream
                .memcpy_dtod(&src, &mut self.arena.slice_mut(to..to + len))
        })
    }

    /// Copies `len` arena words from `from` to `to` (non-overlapping), in stream order: how a
    /// step's output (the next token) becomes the next step's input without the host.
    pub fn copy_within_arena(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let n = self.arena.len();
        if from + len > n || to + len > n || (from < to + len && to < from + len) {
            bail!(
                "arena copy {from}..{} -> {to}..{} is out of bounds or overlaps",
                from + len,
                to + len
            );
        }
        let base = self.arena.device_ptr(&self.stream).0;
        call("binding the CUDA context", || self.ctx.bind_to_thread())?;
        call("copying within the arena", || {
            // SAFETY: both ranges lie inside the arena allocation (checked above) and do not
            // overlap; the copy is ordered on the stream every kernel launch uses.
            unsafe {
                result::memcpy_dtod_async(
                    base + 4 * to as u64,
                    base + 4 * from as u64,
                    4 * len,
                    self.stream.cu_stream(),
                )
            }
        })
    }

    /// The kernel parameters of step `step` with queue table `queue_start`.
    fn params(&self, queue_start: u64) -> KernelParams {
        let s = &self.stream;
        KernelParams {
            tasks: self.d_tasks.device_ptr(s).0,
            queue_start,
            waits: self.d_waits.device_ptr(s).0,
            triggers: self.d_triggers.device_ptr(s).0,
            ops: self.d_ops.device_ptr(s).0,
            weights: self.weight_table.device_ptr(s).0,
            arena: self.arena.device_ptr(s).0,
            state: self.kv.ptr(),
            events: self.events.device_ptr(s).0,
            diag: self.diag.device_ptr(s).0,
            wait_limit_ns: self.opts.wait_limit.as_nanos().min(u64::MAX as u128) as u64,
            step: self.step,
            workers: self.workers,
        }
    }

    /// Enqueues one launch with queue table `queue_start` (does not advance the step).
    fn launch(&self, queue_start: u64) -> Result<()> {
        let params = self.params(queue_start);
        let cfg = LaunchConfig {
            grid_dim: (self.workers, 1, 1),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: self.smem,
        };
        let what = format!(
            "launching the megakernel ({} blocks of {} threads, {} bytes of shared memory{})",
            self.workers,
            self.threads,
            self.smem,
            if self.cooperative {
                ", cooperative"
            } else {
                ""
            }
        );
        let mut builder = self.stream.launch_builder(&self.function);
        builder.arg(&params);
        call(&what, || {
            // SAFETY: the kernel's only parameter is one KernelParams by value; every pointer
            // in it is a live allocation owned by `self` and sized by the program's tables and
            // memory plan, which the kernel indexes only as abi.cuh documents; the grid fits
            // co-resident (checked in `new`); the dynamic shared memory was allowed above.
            unsafe {
                if self.cooperative {
                    builder.launch_cooperative(cfg)
                } else {
                    builder.launch(cfg)
                }
            }
            .map(|_| ())
        })
    }

    /// Enqueues one whole step (one launch) and advances the step counter.
    pub fn launch_step(&mut self) -> Result<()> {
        self.check_usable()?;
        self.guard_overflow()?;
        let q = self.d_queue_start.device_ptr(&self.stream).0;
        self.launch(q)?;
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
            words.push(0);
            self.serial_queues = Some(call("uploading the serial queue tables", || {
                self.stream.clone_htod(&words[..])
            })?);
        }
        let base = self
            .serial_queues
            .as_ref()
            .expect("built above")
            .device_ptr(&self.stream)
            .0;
        for (i, &id) in self.program.schedule.order.clone().iter().enumerate() {
            self.launch(base + (4 * i * w) as u64)?;
            self.wait_step(self.step, Some(id))?;
        }
        self.step += 1;
        Ok(())
    }

    /// Enqueues a copy of arena value `loc` into its pinned host buffer named `name`.
    fn enqueue_read(&mut self, name: &str, loc: Location) -> Result<()> {
        if loc.buffer != Buffer::Arena {
            bail!("`{name}` is not in the arena");
        }
        if !self.host_out.contains_key(name) {
            // SAFETY: plain page-locked memory, fully written by the copy below before any read.
            let buf = call("allocating pinned host memory", || unsafe {
                self.ctx.alloc_pinned_with_flags::<u32>(loc.len.max(1), 0)
            })?;
            self.host_out.insert(name.to_string(), buf);
        }
        let dst = self.host_out.get_mut(name).expect("inserted above");
        let src = self.arena.slice(loc.offset..loc.offset + loc.len);
        call(&format!("copying `{name}` to the host"), || {
            self.stream.memcpy_dtoh(&src, dst)
        })
    }

    /// The words the last step copied for output `name`.
    fn host_words(&self, name: &str) -> Result<Vec<u32>> {
        let buf = self.host_out.get(name).context("no such output buffer")?;
        let len = self
            .outputs
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.loc.len);
        Ok(call("reading pinned host memory", || buf.as_slice())?[..len].to_vec())
    }

    /// Reads any arena value (after a step): for tests and debugging.
    pub fn read_arena(&mut self, loc: Location) -> Result<Vec<u32>> {
        self.check_usable()?;
        if loc.buffer != Buffer::Arena || loc.offset + loc.len > self.arena.len() {
            bail!("{loc:?} is not an arena range");
        }
        let src = self.arena.slice(loc.offset..loc.offset + loc.len);
        let v = call("copying an arena value to the host", || {
            self.stream.clone_dtoh(&src)
        })?;
        self.synchronize()?;
        Ok(v)
    }

    /// Waits for everything enqueued, then checks the diagnostics: the one place where device
    /// failures become errors.
    pub fn synchronize(&mut self) -> Result<()> {
        self.wait_step(self.step.saturating_sub(1), None)
    }

    /// Waits for the stream; `step` and `serial_task` only name what ran in messages. Any driver
    /// error from here on is an asynchronous error of the work enqueued (a fault): the context is
    /// lost, so the engine remembers it and refuses further work.
    fn wait_step(&mut self, step: u32, serial_task: Option<usize>) -> Result<()> {
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

    /// A new CUDA event that records time (for benchmarks).
    pub fn timing_event(&self) -> Result<CudaEvent> {
        call("creating a CUDA event", || {
            self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        })
    }

    /// Records `event` in stream order.
    pub fn record(&self, event: &CudaEvent) -> Result<()> {
        call("recording a CUDA event", || event.record(&self.stream))
    }

    /// Milliseconds between two recorded events (both must have completed).
    pub fn elapsed_ms(start: &CudaEvent, end: &CudaEvent) -> Result<f64> {
        Ok(f64::from(call("reading CUDA event times", || {
            start.elapsed_ms(end)
        })?))
    }

    /// The device's copy bandwidth in GB/s, counting bytes read plus bytes written: a large
    /// device-to-device copy timed with events (after a warm-up copy).
    pub fn copy_bandwidth_gbs(&mut self) -> Result<f64> {
        self.check_usable()?;
        let (free, _) = call("reading the free device memory", || self.ctx.mem_get_info())?;
        let bytes = (1usize << 30).min(free / 4).max(1 << 20);
        let src = call("allocating a copy buffer", || {
            self.stream.alloc_zeros::<u8>(bytes)
        })?;
        let mut dst = call("allocating a copy buffer", || {
            self.stream.alloc_zeros::<u8>(bytes)
        })?;
        let copy = |dst: &mut CudaSlice<u8>| {
            call("copying device memory", || {
                self.stream.memcpy_dtod(&src, dst)
            })
        };
        copy(&mut dst)?;
        let (start, end) = (self.timing_event()?, self.timing_event()?);
        let reps = 20;
        self.record(&start)?;
        for _ in 0..reps {
            copy(&mut dst)?;
        }
        self.record(&end)?;
        let ms = Self::elapsed_ms(&start, &end)?;
        Ok(2.0 * bytes as f64 * reps as f64 / (ms / 1e3) / 1e9)
    }
}

/// Checks that `program` can run on `device` with `image` (before anything is uploaded):
/// workers within the SMs, the kernel generated for the program's token count, its shared
/// memory within the device's. Returns the kernel's threads and dynamic shared memory.
fn check_launchable(
    device: &DeviceInfo,
    program: &Program,
    image: &KernelImage,
) -> Result<(u32, u32)> {
    let workers = program.schedule.queues.len();
    if workers > device.sm_count {
        bail!(
            "the program has {workers} workers but {} has {} SMs: recompile with --workers {}",
            device.describe(),
            device.sm_count,
            device.sm_count
        );
    }
    let (threads, smem) = kernel_launch_shape(program, image)?;
    if smem as usize + 160 > device.max_shared_per_block {
        bail!(
            "the kernel needs {smem} bytes of shared memory per block; {} allows {}",
            device.describe(),
            device.max_shared_per_block
        );
    }
    Ok((threads, smem))
}

/// The kernel's `MIMO_THREADS` and `MIMO_SMEM_BYTES`, after checking that it was generated for
/// `program`'s tokens per step (`MIMO_TOKENS`: every token count needs its own kernel).
pub fn kernel_launch_shape(program: &Program, image: &KernelImage) -> Result<(u32, u32)> {
    let define = |name: &str| {
        image
            .define(name)
            .and_then(|v| u32::try_from(v).ok())
            .with_context(|| format!("kernel.cu does not define {name}"))
    };
    let (threads, smem, tokens) = (
        define("MIMO_THREADS")?,
        define("MIMO_SMEM_BYTES")?,
        define("MIMO_TOKENS")?,
    );
    let inputs = ports(program, true)?;
    if let Some(p) = inputs.first()
        && p.ty.shape.first().copied() != Some(tokens as usize)
    {
        bail!(
            "kernel.cu was generated for {tokens} tokens per step, `{}` takes {:?}: recompile",
            program.graph.name,
            p.ty.shape
        );
    }
    Ok((threads, smem))
}

/// The program's graph inputs (`inputs = true`) or outputs with their arena places.
fn ports(program: &Program, inputs: bool) -> Result<Vec<Port>> {
    let g = &program.graph;
    let values: Vec<(String, mimo_ir::graph::Value)> = if inputs {
        g.nodes_of(|k| matches!(k, NodeKind::Input))
            .map(|(idx, n)| {
                (
                    n.name.clone(),
                    mimo_ir::graph::Value {
                        node: idx,
                        output: 0,
                    },
                )
            })
            .collect()
    } else {
        g.outputs().to_vec()
    };
    values
        .into_iter()
        .map(|(name, v)| {
            let loc = program
                .memory
                .location(v)
                .filter(|l| l.buffer == Buffer::Arena)
                .with_context(|| format!("the memory plan has no arena place for `{name}`"))?;
            Ok(Port {
                name,
                loc,
                ty: g.value_type(v).clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names of `struct NAME { ... };` in abi.cuh, in order.
    fn c_fields(name: &str) -> Vec<String> {
        let header = include_str!("../../../templates/common/abi.cuh");
        let start = header
            .find(&format!("struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name} not in abi.cuh"));
        let body = &header[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
        body.lines()
            .map(|l| l.split("//").next().unwrap().trim())
            .filter(|l| l.ends_with(';'))
            .map(|l| {
                let decl = l.trim_end_matches(';');
                let last = decl.split_whitespace().last().unwrap();
                last.trim_start_matches('*')
                    .split('[')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn kernel_params_match_abi_cuh() {
        assert_eq!(
            c_fields("KernelParams"),
            [
                "tasks",
                "queue_start",
                "waits",
                "triggers",
                "ops",
                "weights",
                "arena",
                "state",
                "events",
                "diag",
                "wait_limit_ns",
                "step",
                "workers"
            ]
        );
        assert_eq!(std::mem::size_of::<KernelParams>(), 96);
        assert_eq!(std::mem::offset_of!(KernelParams, wait_limit_ns), 80);
        assert_eq!(std::mem::offset_of!(KernelParams, step), 88);
        assert_eq!(std::mem::offset_of!(KernelParams, workers), 92);
        assert_eq!(
            c_fields("Diagnostics"),
            ["aborted", "worker", "task", "event", "observed", "expected"]
        );
        assert_eq!(
            c_fields("WeightRef"),
            ["data", "scales", "tensor_scale", "format", "rows", "cols"]
        );
        assert_eq!(
            c_fields("Task"),
            [
                "kind",
                "op",
                "unit_begin",
                "unit_end",
                "wait_begin",
                "wait_count",
                "trigger_begin",
                "trigger_count"
            ]
        );
        assert_eq!(
            c_fields("OpArgs"),
            ["values", "state", "weights", "dims", "fparams"]
        );
        let t = abi::Task {
            kind: 1,
            op: 2,
            unit_begin: 3,
            unit_end: 4,
            wait_begin: 5,
            wait_count: 6,
            trigger_begin: 7,
            trigger_count: 8,
        };
        assert_eq!(task_words(&t), [1, 2, 3, 4, 5, 6, 7, 8]);
        let o = OpArgs {
            values: [1; 8],
            state: [2; 2],
            weights: [3; 4],
            dims: [4; 8],
            fparams: [0.5; 4],
        };
        let w = op_words(&o);
        assert_eq!(w.len() * 4, std::mem::size_of::<OpArgs>());
        assert_eq!(&w[..8], &[1; 8]);
        assert_eq!(&w[8..10], &[2; 2]);
        assert_eq!(&w[10..14], &[3; 4]);
        assert_eq!(&w[14..22], &[4; 8]);
        assert_eq!(w[22], 0.5f32.to_bits());
    }

    #[test]
    fn kernel_defines_are_read_from_the_source() {
        let image = KernelImage {
            source: "// x\n#define MIMO_THREADS 256\n#define MIMO_SMEM_BYTES 49152 // bytes\n#define MIMO_SMEM_BYTES_X 1\n".into(),
            cubin: None,
        };
        assert_eq!(image.define("MIMO_THREADS"), Some(256));
        assert_eq!(image.define("MIMO_SMEM_BYTES"), Some(49152));
        assert_eq!(image.define("MIMO_TOKENS"), None);
    }

    #[test]
    fn launch_options_read_the_environment_defaults() {
        let o = LaunchOptions::default();
        assert!(o.wait_limit < o.host_timeout);
        assert!(o.cooperative && !o.serial);
    }
}
