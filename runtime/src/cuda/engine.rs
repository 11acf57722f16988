//! [`CudaEngine`]: a model's programs on a device (a GPU, or the emulator) behind the
//! [`Engine`] trait: the
//! [`ProgramEngine`] the CPU schedule executor runs too, over megakernels ([`CudaBackend`]).
//! Every program shares the one device KV cache and weight upload ([`super::shared`]); those an
//! artifact lacks are compiled on first use. Also here: the decode benchmark, and compiling a
//! model without an artifact directory.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mimo_compiler::artifact::Artifact;
use mimo_compiler::{CompileOptions, Machine, Program, abi, compile};
use mimo_ir::graph::NodeKind;
use mimo_ir::model::build::{NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph};
use mimo_ir::weights::WeightStore;
use mimo_ir::{Graph, ModelSpec};

use super::launch::LaunchOptions;
use super::megakernel::Megakernel;
use super::programs::{CudaBackend, KernelSource};
use super::shared::DeviceContext;
use crate::device::{Device, TaskBytes};
use crate::engine::{Engine, ProgramCache, ProgramEngine, TargetProgram};

pub use super::kernel::KernelImage;

/// Compiles `spec`'s decode graph for `workers` workers and a cache of `max_context` positions,
/// without an artifact directory: the program and its kernel source (NVRTC compiles it for the
/// device when the engine loads it), generated from the built-in templates.
pub fn compile_in_memory(
    spec: &ModelSpec,
    max_context: usize,
    workers: usize,
) -> Result<(Program, KernelImage)> {
    let graph = decode_graph(spec, 1, max_context).context("building the decode graph")?;
    let opts = CompileOptions::for_machine(Machine {
        workers: workers.max(1),
        ..Machine::h100()
    });
    compile_graph(spec, &graph, &opts)
}

/// Compiles any graph whose ops have templates (a decode graph, or a few ops of one for
/// testing) into a program and its kernel source; `spec` sizes the kernel's compile-time limits
/// (largest head_dim, top-k, experts, reduction length).
pub fn compile_graph(
    spec: &ModelSpec,
    graph: &Graph,
    opts: &CompileOptions,
) -> Result<(Program, KernelImage)> {
    let program = compile(graph, opts).context("compiling the graph")?;
    abi::encode(&program).context("encoding the task tables")?;
    let image = KernelSource::Templates.image(spec, &program)?;
    Ok((program, image))
}

/// A model's compiled programs running on a device (a GPU, or the emulator).
pub type CudaEngine = ProgramEngine<CudaBackend>;

/// What [`CudaEngine::bench_decode`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeTiming {
    /// Each timed step's kernel time (device time marks around each launch), ms.
    pub step_ms: Vec<f64>,
    /// The whole timed run over its steps, ms: kernel time plus the gaps between launches (the
    /// next token is fed back on the device, so the host is not in the loop).
    pub stream_ms_per_step: f64,
    /// Steps through [`Engine::step`] (host feeds the token, waits for the id), wall clock, ms.
    pub host_ms_per_step: f64,
    /// What the timed steps read, per task and memory class, where the device counts it (the
    /// emulator): divide by `launches` for one step's bytes.
    pub read_bytes: Option<TaskBytes>,
}

impl CudaEngine {
    /// Uploads `program` (a decode graph of `spec`) with `weights` to `device` (a GPU or the
    /// emulator). The programs it
    /// compiles later (verify blocks) are scheduled for the same machine, their kernels made from
    /// `image` with its generated header swapped.
    pub fn new(
        device: &Arc<dyn Device>,
        spec: ModelSpec,
        program: Program,
        weights: &WeightStore,
        image: &KernelImage,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let shared = DeviceContext::new(device, weights, None)?;
        let source = KernelSource::from_kernel(&spec, &program, image);
        let options = CompileOptions::for_machine(program.machine);
        Self::on(shared, spec, program, image, source, options, opts)
    }

    /// [`CudaEngine::new`] on a context that holds the weights already (shared with a
    /// drafter's programs), programs compiled later with `options` and kernels from `source`.
    pub fn on(
        shared: Arc<DeviceContext>,
        spec: ModelSpec,
        program: Program,
        image: &KernelImage,
        source: KernelSource,
        options: CompileOptions,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let max_context = program
            .graph
            .nodes_of(|k| matches!(k, NodeKind::State))
            .map(|(_, n)| n.outputs[0].shape[0])
            .min()
            .context("the program has no KV cache")?;
        let backend = CudaBackend::new(spec.clone(), shared, "target", source, opts);
        let mut programs = ProgramCache::new(backend, options);
        programs.insert(TargetProgram::Decode, program, Some(image))?;
        let kernel = programs.loaded(&TargetProgram::Decode).expect("inserted");
        for (name, input) in [(TOKEN_IDS, true), (POSITIONS, true), (NEXT_IDS, false)] {
            if kernel.port(name, input).is_none() {
                bail!("the program is not a decode graph: it has no `{name}`");
            }
        }
        Ok(ProgramEngine::with_programs(spec, programs, max_context))
    }

    /// An engine for `spec` without an artifact (tests, benchmarks): `store` uploaded, the
    /// decode program compiled with `options`, every kernel generated from the built-in
    /// templates.
    pub fn from_spec(
        device: &Arc<dyn Device>,
        spec: ModelSpec,
        store: &WeightStore,
        max_context: usize,
        options: CompileOptions,
    ) -> Result<Self> {
        let source = KernelSource::Templates;
        let graph = decode_graph(&spec, 1, max_context).context("building the decode graph")?;
        let decode = compile(&graph, &options).context("compiling the decode graph")?;
        let image = source.image(&spec, &decode)?;
        let shared = DeviceContext::new(device, store, None)?;
        let launch = LaunchOptions::from_env();
        Self::on(shared, spec, decode, &image, source, options, launch)
    }

    /// Adds a verify program compiled ahead of time (an artifact's), with its kernel when there
    /// is one (else generated like those compiled on demand).
    pub fn insert(
        &mut self,
        which: TargetProgram,
        program: Program,
        image: Option<&KernelImage>,
    ) -> Result<()> {
        self.programs_mut().insert(which, program, image)
    }

    /// The device and weights the programs run on (a drafter's programs join them).
    pub fn shared(&self) -> &Arc<DeviceContext> {
        self.programs().backend().shared()
    }

    /// An artifact's decode program and kernel, with `weights` of the model it was compiled for.
    pub fn from_artifact(
        device: &Arc<dyn Device>,
        art: &Artifact,
        weights: &WeightStore,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let program = art
            .program("decode")
            .with_context(|| format!("{}: no `decode` graph", art.dir.display()))?
            .clone();
        let image = KernelImage::from_artifact(art)?;
        Self::new(
            device,
            art.manifest.model.spec.clone(),
            program,
            weights,
            &image,
            opts,
        )
    }

    /// The decode program's megakernel.
    pub fn kernel(&mut self) -> &mut Megakernel {
        self.programs_mut()
            .loaded(&TargetProgram::Decode)
            .expect("the decode program is loaded by the constructor")
    }

    /// Decode timing at context `context`: the cache is filled with `context` positions (steps
    /// enqueued back to back, the tokens a fixed pseudo-random sequence), then `warmup` and
    /// `steps` timed steps all decode at position `context` (attending over `context + 1` rows,
    /// each step's greedy id fed back on the device as the next token), then a few steps through
    /// [`Engine::step`] for the host-side latency.
    pub fn bench_decode(
        &mut self,
        context: usize,
        steps: usize,
        warmup: usize,
    ) -> Result<DecodeTiming> {
        let max_context = self.max_context();
        if context >= max_context {
            bail!(
                "--context {context} needs a KV cache of {} positions; this program has {max_context}",
                context + 1,
            );
        }
        let vocab = self.spec().vocab_size;
        let tok_at = |p: usize| ((p * 7919 + 13) % vocab) as u32;
        let k = self.kernel();
        let (tok, pos, next) = (
            k.port(TOKEN_IDS, true).context("token_ids")?.offset,
            k.port(POSITIONS, true).context("positions")?.offset,
            k.port(NEXT_IDS, false).context("next_ids")?.offset,
        );
        k.reset()?;
        // Scratch: positions 0..=context, then the fill tokens.
        let mut scratch: Vec<u32> = (0..=context as u32).collect();
        scratch.extend((0..context).map(tok_at));
        k.stage_scratch(&scratch)?;
        let tokens_at = context + 1;
        for p in 0..context {
            k.copy_scratch_to_arena(p, pos, 1)?;
            k.copy_scratch_to_arena(tokens_at + p, tok, 1)?;
            k.launch_step()?;
            if p % 256 == 255 {
                k.synchronize()?;
            }
        }
        k.write_arena(tok, &[tok_at(context)])?;
        k.copy_scratch_to_arena(context, pos, 1)?;
        for _ in 0..warmup {
            k.launch_step()?;
            k.copy_within_arena(next, tok, 1)?;
        }
        k.synchronize()?;
        // Marks made and dropped here leave the device's timing events ready for reuse, so the
        // timed loop below creates none between its launches.
        drop(
            (0..2 * steps)
                .map(|_| k.time_mark())
                .collect::<Result<Vec<_>>>()?,
        );
        // Counters restart here, so they hold the timed steps alone (all at position `context`).
        drop(k.dev.take_task_bytes());
        let mut marks = Vec::with_capacity(2 * steps);
        for _ in 0..steps {
            marks.push(k.time_mark()?);
            k.launch_step()?;
            marks.push(k.time_mark()?);
            k.copy_within_arena(next, tok, 1)?;
        }
        k.synchronize()?;
        let read_bytes = k.dev.take_task_bytes();
        let mut step_ms = Vec::with_capacity(steps);
        for i in 0..steps {
            step_ms.push(k.elapsed_ms(&marks[2 * i], &marks[2 * i + 1])?);
        }
        let stream_ms_per_step = if steps > 0 {
            k.elapsed_ms(&marks[0], &marks[2 * steps - 1])? / steps as f64
        } else {
            0.0
        };
        // Host-driven steps, as generation runs them (position `context` again).
        let host_steps = steps.clamp(1, 32);
        let started = Instant::now();
        let mut t = tok_at(context);
        for _ in 0..host_steps {
            t = self.step(&[t], &[context], false)?.next_ids[0];
        }
        let host_ms_per_step = started.elapsed().as_secs_f64() * 1e3 / host_steps as f64;
        Ok(DecodeTiming {
            step_ms,
            stream_ms_per_step,
            host_ms_per_step,
            read_bytes,
        })
    }
}
