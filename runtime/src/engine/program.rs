//! [`ProgramEngine`]: a model's compiled programs behind the [`Engine`] trait, on whichever
//! device runs them ([`ProgramCache`] over a [`Backend`]: the CPU schedule executor, or
//! megakernels on a GPU).
//!
//! Plain decoding runs the one-token `decode` program, one token per step (prompts too), greedy
//! ids from the program's own argmax, logits read back only when asked for. With capture layers
//! set (speculative decoding), steps run `verify` programs instead, which take a block of tokens
//! at once and return the captured features; [`Engine::verify_greedy`] accepts a drafted block
//! with the program's own `accept` op, so only the acceptance, the committed tokens and the
//! committed rows' features (and logits) are read back. A step longer than the block (a prompt)
//! runs in pieces of at most a block, so the verify programs number at most one per length
//! 1..=B; each is compiled the first time its length occurs (an artifact's are there already).

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{Result, bail};
use mimo_ir::model::build::{
    ACCEPTED, COMMITTED, FEATURES, LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph,
};
use mimo_ir::model::dflash::verify_graph;
use mimo_ir::{ModelSpec, Tensor};

use super::{
    Backend, Engine, ProgramCache, StepOutput, Verified, check_capture_layers, check_step, i32s,
};

/// Which compiled program of the target a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetProgram {
    /// [`decode_graph`] over one token: the artifact's `decode`.
    Decode,
    /// [`verify_graph`] over `tokens` tokens capturing `capture` (the artifact's `verify`).
    Verify { tokens: usize, capture: Vec<usize> },
}

/// One compiled program, loaded where it runs, keeping its place in the model's KV state.
pub trait ProgramRun {
    /// Runs one step on `inputs`; returns the graph outputs named in `outputs`.
    fn run_step(
        &mut self,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>>;
    /// Rows `rows` of the f32 output `name` of the last step, row-major: a part of an output
    /// read without the rest.
    fn read_f32_rows(&mut self, name: &str, rows: Range<usize>) -> Result<Vec<f32>>;
}

/// A compiled model on the programs of backend `B`: [`super::ScheduleEngine`] on the CPU,
/// [`crate::cuda::CudaEngine`] on a GPU.
pub struct ProgramEngine<B: Backend> {
    spec: ModelSpec,
    programs: ProgramCache<TargetProgram, B>,
    max_context: usize,
    capture: Vec<usize>,
    /// The most tokens one verify program takes (the drafter's block).
    max_step_tokens: usize,
}

/// Verify blocks of DFlash drafts are 16 tokens at most (`-b16`); a longer step runs in pieces.
const DEFAULT_STEP_TOKENS: usize = 16;

/// A token id a program returned, checked against the vocabulary.
pub fn token_id(id: i32, vocab: usize) -> Result<u32> {
    match usize::try_from(id) {
        Ok(t) if t < vocab => Ok(t as u32),
        _ => bail!(
            "the program returned token id {id}, outside the vocabulary of {vocab} (a compiler or kernel bug)"
        ),
    }
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

impl<B: Backend> ProgramEngine<B> {
    /// An engine over `programs` (holding an artifact's, or none yet), whose KV cache holds
    /// `max_context` positions.
    pub fn with_programs(
        spec: ModelSpec,
        programs: ProgramCache<TargetProgram, B>,
        max_context: usize,
    ) -> Self {
        ProgramEngine {
            spec,
            programs,
            max_context,
            capture: Vec::new(),
            max_step_tokens: DEFAULT_STEP_TOKENS,
        }
    }

    /// The most tokens one verify program takes (the block size: a block longer than this is not
    /// accepted on the device).
    pub fn set_max_step_tokens(&mut self, tokens: usize) {
        self.max_step_tokens = tokens.max(1);
    }

    /// The programs.
    pub fn programs(&self) -> &ProgramCache<TargetProgram, B> {
        &self.programs
    }

    /// The programs, to add one or reach one.
    pub fn programs_mut(&mut self) -> &mut ProgramCache<TargetProgram, B> {
        &mut self.programs
    }

    fn decode_program(&mut self) -> Result<&mut B::Loaded> {
        let (spec, ctx) = (&self.spec, self.max_context);
        self.programs
            .get(&TargetProgram::Decode, || Ok(decode_graph(spec, 1, ctx)?))
    }

    fn verify_program(&mut self, tokens: usize) -> Result<&mut B::Loaded> {
        let which = TargetProgram::Verify {
            tokens,
            capture: self.capture.clone(),
        };
        let (spec, ctx, capture) = (&self.spec, self.max_context, &self.capture);
        self.programs
            .get(&which, || Ok(verify_graph(spec, tokens, ctx, capture)?))
    }

    /// One token at a time through the decode program.
    fn decode(&mut self, tokens: &[u32], positions: &[usize], out: &mut StepOutput) -> Result<()> {
        let vocab = self.spec.vocab_size;
        let wanted: &[&str] = if out.logits.is_some() {
            &[NEXT_IDS, LOGITS]
        } else {
            &[NEXT_IDS]
        };
        let program = self.decode_program()?;
        for (&t, &p) in tokens.iter().zip(positions) {
            let inputs = [
                (TOKEN_IDS, i32s(std::iter::once(t as usize))),
                (POSITIONS, i32s(std::iter::once(p))),
            ];
            let mut r = program.run_step(&inputs, wanted)?;
            out.next_ids.push(token_id(r[NEXT_IDS].i32()[0], vocab)?);
            if let (Some(all), Some(l)) = (&mut out.logits, r.remove(LOGITS)) {
                all.extend_from_slice(l.f32());
            }
        }
        Ok(())
    }

    /// Tokens in pieces of at most a block through the verify programs, with features.
    fn verify_pieces(
        &mut self,
        tokens: &[u32],
        positions: &[usize],
        out: &mut StepOutput,
    ) -> Result<()> {
        let vocab = self.spec.vocab_size;
        let outputs: &[&str] = if out.logits.is_some() {
            &[NEXT_IDS, FEATURES, LOGITS]
        } else {
            &[NEXT_IDS, FEATURES]
        };
        let mut features = Vec::new();
        let piece = self.max_step_tokens;
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
        Ok(())
    }
}

impl<B: Backend> Engine for ProgramEngine<B> {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn device(&self) -> String {
        self.programs.describe()
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
        } else {
            self.verify_pieces(tokens, positions, &mut out)?;
        }
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
        let program = self.verify_program(block.len())?;
        // The acceptance and the committed ids only: a few words.
        let r = program.run_step(&inputs, &[ACCEPTED, COMMITTED])?;
        let committed = r[COMMITTED].i32();
        let rows = committed_rows(r[ACCEPTED].i32()[0], committed, block.len())?;
        let committed = committed[..rows]
            .iter()
            .map(|&t| token_id(t, vocab))
            .collect::<Result<_>>()?;
        // Then only the committed rows of the features (and logits): the rejected rows' stay
        // where the program ran.
        let features = match capturing {
            true => Some(program.read_f32_rows(FEATURES, 0..rows)?),
            false => None,
        };
        let logits = match want_logits {
            true => Some(program.read_f32_rows(LOGITS, 0..rows)?),
            false => None,
        };
        Ok(Some(Verified {
            accepted: rows - 1,
            committed,
            features,
            logits,
        }))
    }

    fn reset(&mut self) {
        // A failure here (a lost GPU context) is remembered where the programs run and reported
        // by the next step, since `reset` cannot return it.
        if let Err(e) = self.programs.reset() {
            tracing::warn!("resetting {}: {e:#}", self.programs.describe());
        }
    }

    fn set_capture_layers(&mut self, layers: &[usize]) -> Result<()> {
        check_capture_layers(&self.spec, layers)?;
        self.capture = layers.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_and_token_ids_are_checked() {
        assert_eq!(committed_rows(0, &[5, -1, -1], 3).unwrap(), 1);
        assert_eq!(committed_rows(2, &[5, 6, 7], 3).unwrap(), 3);
        for (accepted, committed) in [
            (3, &[5, 6, 7][..]),
            (-1, &[5, 6, 7]),
            (1, &[5, -1, 7]),
            (2, &[5, 6]),
        ] {
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
