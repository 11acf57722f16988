//! [`CudaEngine`]: a decode program on the GPU behind the [`Engine`] trait, one kernel launch per
//! token (the program is compiled for T = 1, so a prompt runs one step per token, like the CPU
//! schedule executor), greedy ids from the kernel's own argmax, logits copied back only when
//! asked for.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use mimo_compiler::artifact::Artifact;
use mimo_compiler::{CompileOptions, Machine, Program, abi, codegen, compile};
use mimo_ir::graph::NodeKind;
use mimo_ir::model::build::{LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph};
use mimo_ir::weights::WeightStore;
use mimo_ir::{Graph, ModelSpec, Tensor};

use super::launch::{LaunchOptions, Megakernel};
use super::probe::DeviceInfo;
use crate::engine::{Engine, StepOutput, check_step};

pub use super::launch::KernelImage;

/// Compiles `spec`'s decode graph for `workers` workers and a cache of `max_context` positions,
/// without an artifact directory: the program and its kernel source (NVRTC compiles it for the
/// device when the engine loads it). `templates` are the files of `templates/` (`mimo::TEMPLATES`
/// in the `mimo` package, which embeds them).
pub fn compile_in_memory(
    spec: &ModelSpec,
    max_context: usize,
    workers: usize,
    templates: &[(&str, &str)],
) -> Result<(Program, KernelImage)> {
    let graph = decode_graph(spec, 1, max_context).context("building the decode graph")?;
    let opts = CompileOptions::for_machine(Machine {
        workers: workers.max(1),
        ..Machine::h100()
    });
    compile_graph(spec, &graph, &opts, templates)
}

/// Compiles any graph whose ops have templates (a decode graph, or a few ops of one for
/// testing) into a program and its kernel source; `spec` sizes the kernel's compile-time limits
/// (largest head_dim, top-k, experts, reduction length).
pub fn compile_graph(
    spec: &ModelSpec,
    graph: &Graph,
    opts: &CompileOptions,
    templates: &[(&str, &str)],
) -> Result<(Program, KernelImage)> {
    let program = compile(graph, opts).context("compiling the graph")?;
    abi::encode(&program).context("encoding the task tables")?;
    let source = codegen::kernel_source(templates, &codegen::generated_header(spec, &program))
        .context("generating kernel.cu")?;
    Ok((
        program,
        KernelImage {
            source,
            cubin: None,
        },
    ))
}

/// A compiled decode program running on a GPU.
pub struct CudaEngine {
    spec: ModelSpec,
    kernel: Megakernel,
    max_context: usize,
}

/// What [`CudaEngine::bench_decode`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeTiming {
    /// Each timed step's kernel time (CUDA events around each launch), ms.
    pub step_ms: Vec<f64>,
    /// The whole timed run over its steps, ms: kernel time plus the gaps between launches (the
    /// next token is fed back on the device, so the host is not in the loop).
    pub stream_ms_per_step: f64,
    /// Steps through [`Engine::step`] (host feeds the token, waits for the id), wall clock, ms.
    pub host_ms_per_step: f64,
}

impl CudaEngine {
    /// Uploads `program` (a decode graph of `spec`) with `weights` to `device`.
    pub fn new(
        device: &DeviceInfo,
        spec: ModelSpec,
        program: Program,
        weights: &WeightStore,
        image: &KernelImage,
        opts: LaunchOptions,
    ) -> Result<Self> {
        let max_context = program
            .graph
            .nodes_of(|k| matches!(k, NodeKind::State))
            .map(|(_, n)| n.outputs[0].shape[0])
            .min()
            .context("the program has no KV cache")?;
        let kernel = Megakernel::new(device, program, weights, image, opts)?;
        for (name, input) in [(TOKEN_IDS, true), (POSITIONS, true), (NEXT_IDS, false)] {
            if kernel.port(name, input).is_none() {
                bail!("the program is not a decode graph: it has no `{name}`");
            }
        }
        Ok(CudaEngine {
            spec,
            kernel,
            max_context,
        })
    }

    /// An artifact's decode program and kernel, with `weights` of the model it was compiled for.
    pub fn from_artifact(
        device: &DeviceInfo,
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

    pub fn kernel(&mut self) -> &mut Megakernel {
        &mut self.kernel
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
        if context >= self.max_context {
            bail!(
                "--context {context} needs a KV cache of {} positions; this program has {}",
                context + 1,
                self.max_context
            );
        }
        let vocab = self.spec.vocab_size;
        let tok_at = |p: usize| ((p * 7919 + 13) % vocab) as u32;
        let k = &mut self.kernel;
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
        let events: Vec<_> = (0..2 * steps.max(1))
            .map(|_| k.timing_event())
            .collect::<Result<_>>()?;
        for i in 0..steps {
            k.record(&events[2 * i])?;
            k.launch_step()?;
            k.record(&events[2 * i + 1])?;
            k.copy_within_arena(next, tok, 1)?;
        }
        k.synchronize()?;
        let mut step_ms = Vec::with_capacity(steps);
        for i in 0..steps {
            step_ms.push(Megakernel::elapsed_ms(&events[2 * i], &events[2 * i + 1])?);
        }
        let stream_ms_per_step = if steps > 0 {
            Megakernel::elapsed_ms(&events[0], &events[2 * steps - 1])? / steps as f64
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
        })
    }
}

impl Engine for CudaEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn device(&self) -> String {
        format!(
            "{} megakernel ({} workers; {})",
            self.kernel.device().describe(),
            self.kernel.workers(),
            self.kernel.kernel_note()
        )
    }

    fn step(
        &mut self,
        tokens: &[u32],
        positions: &[usize],
        want_logits: bool,
    ) -> Result<StepOutput> {
        check_step(&self.spec, self.max_context, tokens, positions)?;
        let mut out = StepOutput {
            logits: want_logits.then(Vec::new),
            next_ids: Vec::with_capacity(tokens.len()),
            ..StepOutput::default()
        };
        let wanted: &[&str] = if want_logits {
            &[NEXT_IDS, LOGITS]
        } else {
            &[NEXT_IDS]
        };
        for (&t, &p) in tokens.iter().zip(positions) {
            let inputs = [
                (TOKEN_IDS, Tensor::from_i32([1], vec![t as i32])),
                (POSITIONS, Tensor::from_i32([1], vec![p as i32])),
            ];
            let mut r = self.kernel.run_step(&inputs, wanted)?;
            let id = r[NEXT_IDS].i32()[0];
            if id < 0 || id as usize >= self.spec.vocab_size {
                bail!(
                    "the kernel returned token id {id}, outside the vocabulary of {} (a kernel bug)",
                    self.spec.vocab_size
                );
            }
            out.next_ids.push(id as u32);
            if let (Some(all), Some(l)) = (&mut out.logits, r.remove(LOGITS)) {
                all.extend_from_slice(l.f32());
            }
        }
        Ok(out)
    }

    fn reset(&mut self) {
        // A failure here (a lost context) is remembered by the kernel and reported by the next
        // step, since `reset` cannot return it.
        if let Err(e) = self.kernel.reset() {
            tracing::warn!("resetting the CUDA engine: {e:#}");
        }
    }
}
