//! A compiled model on the CPU schedule executor: the same tasks, events and memory plan as the
//! megakernel, one thread per worker queue.
//!
//! Plain decoding runs the one-token `decode` program, one token per step (prompts too). With
//! capture layers set (speculative decoding), steps run `verify` programs instead, which take a
//! block of tokens at once, return the captured features and accept a drafted block on the
//! "device" ([`Engine::verify_greedy`]). A step longer than the block (a prompt) runs in pieces
//! of at most a block, so the verify programs number at most one per length 1..=B; each is
//! compiled the first time its length occurs (the artifact's, of length B, is there already).

use anyhow::{Result, bail};
use mimo_compiler::{CompileOptions, Program};
use mimo_ir::interp::F32Weights;
use mimo_ir::model::build::{
    ACCEPTED, COMMITTED, FEATURES, LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph,
};
use mimo_ir::model::dflash::verify_graph;
use mimo_ir::{ModelSpec, Tensor};

use super::{Engine, StepOutput, Verified, check_step};
use crate::exec::{Programs, ScheduleExecutor};

/// Which compiled program of the target a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetProgram {
    /// [`decode_graph`] over one token: the artifact's `decode`.
    Decode,
    /// [`verify_graph`] over `tokens` tokens capturing `capture` (the artifact's `verify`).
    Verify { tokens: usize, capture: Vec<usize> },
}

/// An artifact's programs (and those compiled on demand) on the CPU schedule executor.
pub struct ScheduleEngine {
    spec: ModelSpec,
    programs: Programs<TargetProgram>,
    max_context: usize,
    capture: Vec<usize>,
    /// The most tokens one verify program takes.
    max_step_tokens: usize,
}

/// Verify blocks of DFlash drafts are 16 tokens at most (`-b16`); a longer step runs in pieces.
const DEFAULT_STEP_TOKENS: usize = 16;

fn i32s(values: impl Iterator<Item = usize>) -> Tensor {
    let v: Vec<i32> = values.map(|x| x as i32).collect();
    Tensor::from_i32([v.len()], v)
}

impl ScheduleEngine {
    /// An engine with no program yet: add an artifact's with [`ScheduleEngine::insert`]; the
    /// others are compiled with `options` when first needed.
    pub fn new(
        spec: ModelSpec,
        weights: F32Weights,
        max_context: usize,
        options: CompileOptions,
    ) -> Self {
        ScheduleEngine {
            spec,
            programs: Programs::new(weights, options),
            max_context,
            capture: Vec::new(),
            max_step_tokens: DEFAULT_STEP_TOKENS,
        }
    }

    /// Adds a program compiled ahead of time.
    pub fn insert(&mut self, which: TargetProgram, program: Program) -> Result<()> {
        self.programs.insert(which, program)
    }

    /// The most tokens one verify program takes (the block size: a block longer than this is not
    /// accepted on the device).
    pub fn set_max_step_tokens(&mut self, tokens: usize) {
        self.max_step_tokens = tokens.max(1);
    }

    fn program(&mut self, which: TargetProgram) -> Result<&mut ScheduleExecutor> {
        let (spec, ctx) = (&self.spec, self.max_context);
        self.programs.get(&which, || {
            Ok(match &which {
                TargetProgram::Decode => decode_graph(spec, 1, ctx)?,
                TargetProgram::Verify { tokens, capture } => {
                    verify_graph(spec, *tokens, ctx, capture)?
                }
            })
        })
    }

    fn verify_program(&mut self, tokens: usize) -> Result<&mut ScheduleExecutor> {
        let capture = self.capture.clone();
        self.program(TargetProgram::Verify { tokens, capture })
    }

    /// One token at a time through the decode program.
    fn decode(&mut self, tokens: &[u32], positions: &[usize], out: &mut StepOutput) -> Result<()> {
        let exec = self.program(TargetProgram::Decode)?;
        for (&t, &p) in tokens.iter().zip(positions) {
            let inputs = [
                (TOKEN_IDS, i32s(std::iter::once(t as usize))),
                (POSITIONS, i32s(std::iter::once(p))),
            ];
            let mut r = exec.run_step(&inputs, &[LOGITS, NEXT_IDS])?;
            out.next_ids.push(r[NEXT_IDS].i32()[0] as u32);
            if let (Some(all), Some(l)) = (&mut out.logits, r.remove(LOGITS)) {
                all.extend_from_slice(l.f32());
            }
        }
        Ok(())
    }
}

impl Engine for ScheduleEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn device(&self) -> String {
        format!(
            "cpu schedule executor ({} workers)",
            self.programs.workers()
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
        let mut features = Vec::new();
        let piece = self.max_step_tokens;
        for (t, p) in tokens.chunks(piece).zip(positions.chunks(piece)) {
            let inputs = [
                (TOKEN_IDS, i32s(t.iter().map(|&t| t as usize))),
                (POSITIONS, i32s(p.iter().copied())),
            ];
            let outputs: &[&str] = if want_logits {
                &[NEXT_IDS, FEATURES, LOGITS]
            } else {
                &[NEXT_IDS, FEATURES]
            };
            let r = self.verify_program(t.len())?.run_step(&inputs, outputs)?;
            out.next_ids
                .extend(r[NEXT_IDS].i32().iter().map(|&t| t as u32));
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
        let exec = self.verify_program(block.len())?;
        let r = exec.run_step(&inputs, &[ACCEPTED, COMMITTED])?;
        let accepted = r[ACCEPTED].i32()[0];
        let committed = r[COMMITTED].i32();
        // The program's word is final, but a broken one must not index past the block.
        let rows = match usize::try_from(accepted) {
            Ok(a) if a < block.len() && committed[..=a].iter().all(|&t| t >= 0) => a + 1,
            _ => bail!(
                "the verify program accepted {accepted} drafts of a block of {} (committed {committed:?})",
                block.len()
            ),
        };
        let committed = committed[..rows].iter().map(|&t| t as u32).collect();
        let read =
            |name: &str| -> Result<Vec<f32>> { Ok(exec.read_rows(name, 0..rows)?.f32().to_vec()) };
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
        self.programs.clear_state();
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
