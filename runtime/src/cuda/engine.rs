//! [`CudaEngine`]: a model's programs on the GPU behind the [`Engine`] trait, as
//! [`crate::engine::ScheduleEngine`] runs them on the CPU.
//!
//! Plain decoding runs the one-token `decode` program, one launch per token (prompts too),
//! greedy ids from the kernel's own argmax, logits copied back only when asked for. With capture
//! layers set (DFlash), steps run `verify` programs (a block of up to B tokens per launch,
//! capturing the drafter's target layers), and [`Engine::verify_greedy`] accepts a drafted block
//! with the program's own `accept` op: the host reads back only the acceptance, the committed
//! tokens and the committed rows' features (and logits when asked for). Every program shares the
//! one device KV cache and weight upload ([`super::shared`]); those an artifact lacks are compiled
//! on first use ([`CudaPrograms`]).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use mimo_compiler::artifact::Artifact;
use mimo_compiler::{CompileOptions, Machine, Program, abi, codegen, compile};
use mimo_ir::graph::NodeKind;
use mimo_ir::model::build::{
    ACCEPTED, COMMITTED, FEATURES, LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph,
};
use mimo_ir::model::dflash::verify_graph;
use mimo_ir::weights::WeightStore;
use mimo_ir::{Graph, ModelSpec, Tensor};

use super::launch::LaunchOptions;
use super::megakernel::Megakernel;
use super::probe::DeviceInfo;
use super::programs::{CudaPrograms, KernelSource};
use super::shared::DeviceContext;
use crate::engine::{Engine, StepOutput, TargetProgram, Verified, check_step};

pub use super::kernel::KernelImage;

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

/// A model's compiled programs running on a GPU.
pub struct CudaEngine {
    spec: ModelSpec,
    programs: CudaPrograms<TargetProgram>,
    max_context: usize,
    capture: Vec<usize>,
    /// The most tokens one verify program takes (the drafter's block).
    max_step_tokens: usize,
}

/// Verify blocks of DFlash drafts are 16 tokens at most (`-b16`); a longer step runs in pieces.
const DEFAULT_STEP_TOKENS: usize = 16;

fn i32s(values: impl Iterator<Item = usize>) -> Tensor {
    let v: Vec<i32> = values.map(|x| x as i32).collect();
    Tensor::from_i32([v.len()], v)
}

/// Checks a verify program's acceptance against its block (the program's word is final, but a
/// broken one must not make the host index past the block): the number of committed rows.
pub fn committed_rows(accepted: i32, committed: &[i32], block: usize) -> Result<usize> {
    match usize::try_from(accepted) {
        Ok(a) if a < block && a < committed.len() && committed[..=a].iter().all(|&t| t >= 0) => {
            Ok(a + 1)
        }
        _ => bail!(
            "the verify program accepted {accepted} drafts of a block of {block} (committed {committed:?})"
        ),
    }
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
    /// Uploads `program` (a decode graph of `spec`) with `weights` to `device`. The programs it
    /// compiles later (verify blocks) are scheduled for the same machine, their kernels made from
    /// `image` with its generated header swapped.
    pub fn new(
        device: &DeviceInfo,
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
        shared: std::sync::Arc<DeviceContext>,
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
        let mut programs = CudaPrograms::new(spec.clone(), shared, "target", options, source, opts);
        programs.insert(TargetProgram::Decode, program, Some(image))?;
        let kernel = programs.loaded(&TargetProgram::Decode).expect("inserted");
        for (name, input) in [(TOKEN_IDS, true), (POSITIONS, true), (NEXT_IDS, false)] {
            if kernel.port(name, input).is_none() {
                bail!("the program is not a decode graph: it has no `{name}`");
            }
        }
        Ok(CudaEngine {
            spec,
            programs,
            max_context,
            capture: Vec::new(),
            max_step_tokens: DEFAULT_STEP_TOKENS,
        })
    }

    /// Adds a verify program compiled ahead of time (an artifact's), with its kernel when there
    /// is one (else generated like those compiled on demand).
    pub fn insert(
        &mut self,
        which: TargetProgram,
        program: Program,
        image: Option<&KernelImage>,
    ) -> Result<()> {
        self.programs.insert(which, program, image)
    }

    /// The most tokens one verify program takes (the block size: a longer block is not accepted
    /// on the device).
    pub fn set_max_step_tokens(&mut self, tokens: usize) {
        self.max_step_tokens = tokens.max(1);
    }

    /// The context, stream and weights the programs run on (a drafter's programs join them).
    pub fn shared(&self) -> &std::sync::Arc<DeviceContext> {
        self.programs.shared()
    }

    fn verify_program(&mut self, tokens: usize) -> Result<&mut Megakernel> {
        let which = TargetProgram::Verify {
            tokens,
            capture: self.capture.clone(),
        };
        let (spec, ctx, capture) = (&self.spec, self.max_context, &self.capture);
        self.programs
            .get(&which, || Ok(verify_graph(spec, tokens, ctx, capture)?))
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

    /// The decode program's megakernel.
    pub fn kernel(&mut self) -> &mut Megakernel {
        self.programs
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
        if context >= self.max_context {
            bail!(
                "--context {context} needs a KV cache of {} positions; this program has {}",
                context + 1,
                self.max_context
            );
        }
        let vocab = self.spec.vocab_size;
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

impl CudaEngine {
    /// One token at a time through the decode program.
    fn decode(&mut self, tokens: &[u32], positions: &[usize], out: &mut StepOutput) -> Result<()> {
        let vocab = self.spec.vocab_size;
        let wanted: &[&str] = if out.logits.is_some() {
            &[NEXT_IDS, LOGITS]
        } else {
            &[NEXT_IDS]
        };
        let kernel = self.kernel();
        for (&t, &p) in tokens.iter().zip(positions) {
            let inputs = [
                (TOKEN_IDS, i32s(std::iter::once(t as usize))),
                (POSITIONS, i32s(std::iter::once(p))),
            ];
            let mut r = kernel.run_step(&inputs, wanted)?;
            out.next_ids.push(token_id(r[NEXT_IDS].i32()[0], vocab)?);
            if let (Some(all), Some(l)) = (&mut out.logits, r.remove(LOGITS)) {
                all.extend_from_slice(l.f32());
            }
        }
        Ok(())
    }
}

/// A token id the kernel returned, checked against the vocabulary.
fn token_id(id: i32, vocab: usize) -> Result<u32> {
    match usize::try_from(id) {
        Ok(t) if t < vocab => Ok(t as u32),
        _ => bail!(
            "the kernel returned token id {id}, outside the vocabulary of {vocab} (a kernel bug)"
        ),
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
        let shared = self.programs.shared().clone();
        let mut programs = self.programs_note();
        if !programs.is_empty() {
            programs = format!("; {programs}");
        }
        format!(
            "{} megakernel ({} workers{programs})",
            shared.device().describe(),
            self.workers(),
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
            features: None,
        };
        if self.capture.is_empty() {
            self.decode(tokens, positions, &mut out)?;
            return Ok(out);
        }
        let vocab = self.spec.vocab_size;
        let mut features = Vec::new();
        let piece = self.max_step_tokens;
        let outputs: &[&str] = if want_logits {
            &[NEXT_IDS, FEATURES, LOGITS]
        } else {
            &[NEXT_IDS, FEATURES]
        };
        for (t, p) in tokens.chunks(piece).zip(positions.chunks(piece)) {
            let inputs = [
                (TOKEN_IDS, i32s(t.iter().map(|&t| t as usize))),
                (POSITIONS, i32s(p.iter().copied())),
            ];
            let r = self.verify_program(t.len())?.run_step(&inputs, outputs)?;
            for &id in r[NEXT_IDS].i32() {
                out.next_ids.push(token_id(id, vocab)?);
            }
            features.extend_from_slice(r[FEATURES].f32());
            if let (Some(all), Some(l)) = (&mut out.logits, r.get(LOGITS)) {
                all.extend_from_slice(l.f32());
            }
        }
        out.features = Some(features);
        Ok(out)
    }

    fn verify_greedy(
        &mut self,
        block: &[u32],
        positions: &[usize],
        want_logits: bool,
    ) -> Result<Option<Verified>> {
        if block.len() > self.max_step_tokens {
            return Ok(None);
        }
        check_step(&self.spec, self.max_context, block, positions)?;
        let inputs = [
            (TOKEN_IDS, i32s(block.iter().map(|&t| t as usize))),
            (POSITIONS, i32s(positions.iter().copied())),
        ];
        let capturing = !self.capture.is_empty();
        let vocab = self.spec.vocab_size;
        let kernel = self.verify_program(block.len())?;
        // The acceptance and the committed ids only: a few words, one synchronisation.
        let r = kernel.run_step(&inputs, &[ACCEPTED, COMMITTED])?;
        let committed = r[COMMITTED].i32();
        let rows = committed_rows(r[ACCEPTED].i32()[0], committed, block.len())?;
        let committed = committed[..rows]
            .iter()
            .map(|&t| token_id(t, vocab))
            .collect::<Result<_>>()?;
        // Then only the committed rows of the features (and logits) come back; the rejected
        // rows' never leave the device.
        let mut read = |name: &str| -> Result<Vec<f32>> {
            Ok(kernel
                .read_rows(name, 0..rows)?
                .into_iter()
                .map(f32::from_bits)
                .collect())
        };
        Ok(Some(Verified {
            accepted: rows - 1,
            committed,
            features: if capturing {
                Some(read(FEATURES)?)
            } else {
                None
            },
            logits: if want_logits {
                Some(read(LOGITS)?)
            } else {
                None
            },
        }))
    }

    fn reset(&mut self) {
        // A failure here (a lost context) is remembered by the kernel and reported by the next
        // step, since `reset` cannot return it.
        if let Err(e) = self.programs.reset() {
            tracing::warn!("resetting the CUDA engine: {e:#}");
        }
    }

    fn set_capture_layers(&mut self, layers: &[usize]) -> Result<()> {
        if let Some(&bad) = layers.iter().find(|&&l| l >= self.spec.num_layers) {
            bail!(
                "cannot capture the features of layer {bad}: the model has {} layers",
                self.spec.num_layers
            );
        }
        self.capture = layers.to_vec();
        Ok(())
    }
}

impl CudaEngine {
    fn workers(&self) -> usize {
        self.programs.machine().workers.max(1)
    }

    /// How the loaded kernels were obtained (the decode program's).
    fn programs_note(&self) -> String {
        self.programs
            .note(&TargetProgram::Decode)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_is_checked_against_the_block() {
        assert_eq!(committed_rows(0, &[5, -1, -1], 3).unwrap(), 1);
        assert_eq!(committed_rows(2, &[5, 6, 7], 3).unwrap(), 3);
        for (accepted, committed) in [(3, &[5, 6, 7][..]), (-1, &[5, 6, 7]), (1, &[5, -1, 7])] {
            let err = committed_rows(accepted, committed, 3).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("accepted {accepted} drafts of a block of 3")),
                "{err}"
            );
        }
        assert_eq!(token_id(7, 8).unwrap(), 7);
        assert!(token_id(8, 8).is_err() && token_id(-1, 8).is_err());
    }
}
