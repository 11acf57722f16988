//! DFlash speculative decoding over any [`Engine`] that captures hidden features
//! (DFlash, arXiv 2602.06036; the loop follows `dflash_generate` of z-lab/dflash
//! `dflash/model.py`).
//!
//! One step: the drafter proposes B - 1 tokens after the last committed one; the target verifies
//! the block `[last, drafts...]` in one step (causal, after its cache), which also captures the
//! features of the drafter's target layers; the [`Accept`] op keeps the longest prefix of drafts
//! that equal the target's own choices, plus the target's next token (the bonus). The target's
//! cache needs no explicit rollback: it is indexed by position, and the next block overwrites the
//! rejected rows before anything reads them. The features of the committed rows become the
//! drafter's next context.
//!
//! Lossless: every committed token is the one the target would have chosen given the committed
//! prefix. At temperature 0 that is its argmax, so the output equals plain greedy decoding token
//! for token. At temperature > 0 the target samples at every block position (the target-only
//! chain rule: a draft is accepted while it equals the target's sample), and each sample's
//! randomness is keyed by its absolute position ([`sample_at`]), so a seed gives the same tokens
//! however the positions are grouped into blocks, and the same as [`sample_at`] one token at a
//! time.
//!
//! Where the engine can accept on its device ([`Engine::verify_greedy`], the compiled programs
//! on the schedule executor), greedy steps do: the verify program's own `accept` op decides, and
//! the host reads only how many drafts it accepted, the committed tokens and their rows'
//! features. Sampling, and engines without it, accept on the host with the same op.

mod artifact;
mod compiled;
mod cuda;
mod drafters;
#[cfg(any(test, feature = "test-support"))]
mod test_drafters;
#[cfg(test)]
mod tests;

pub use compiled::pair;
pub use drafters::{CompiledRunner, DFlashDrafter, DraftRunner, InterpreterRunner};
#[cfg(any(test, feature = "test-support"))]
pub use test_drafters::{ScriptedDrafter, small_pair};

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mimo_compiler::artifact::Artifact;
use mimo_ir::interp::F32Weights;
use mimo_ir::op::Op;
use mimo_ir::ops::Accept;
use mimo_ir::{Tensor, TensorType};

use crate::builtin;
use crate::draft::load_draft;
use crate::engine::{CpuEngine, Engine};
use crate::generate::{FinishReason, GenerateOutput, GenerateRequest};
use crate::model::{LoadedModel, load_model};
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{DeviceChoice, Session, interpreter_only, select_device};

/// What a drafter sees when asked for a block.
#[derive(Debug, Clone, Copy)]
pub struct DraftContext<'a> {
    /// Every committed token: the prompt, then the output so far. The last one opens the block,
    /// at position `start = tokens.len() - 1`; the target has not processed it yet.
    pub tokens: &'a [u32],
    /// The target's captured features of the positions committed since the previous proposal
    /// (`start - rows .. start`; the whole prompt the first time), row-major [rows, width].
    pub features: &'a [f32],
    /// How many tokens to propose (the block's length minus one).
    pub count: usize,
}

/// Proposes the tokens of a block; the target decides what is kept.
pub trait Drafter {
    /// Tokens per verified block, the last committed token included.
    fn block_size(&self) -> usize;
    /// The target layers whose features [`DraftContext::features`] must hold (none: the drafter
    /// does not look at the target).
    fn capture_layers(&self) -> &[usize];
    /// Forgets every context: a new sequence starts.
    fn reset(&mut self);
    /// Exactly `ctx.count` token ids.
    fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>>;
}

/// The result of one speculative generation.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecOutput {
    /// The new tokens, their logits (when asked for), the finish reason and the timings, as for
    /// plain generation (decode time counts drafting and verification).
    pub generation: GenerateOutput,
    /// Tokens committed by each verification step (accepted drafts plus the bonus).
    pub accept_lengths: Vec<usize>,
}

impl SpecOutput {
    /// Mean tokens per verification step (DFlash's tau); 0 with no step.
    pub fn mean_accept(&self) -> f64 {
        match self.accept_lengths.len() {
            0 => 0.0,
            n => self.accept_lengths.iter().sum::<usize>() as f64 / n as f64,
        }
    }
}

/// The token chosen from `logits` for absolute position `position`: the argmax at temperature 0,
/// otherwise a sample whose randomness depends only on the seed and the position.
pub fn sample_at(params: SamplingParams, position: usize, logits: &[f32]) -> u32 {
    let seed = params
        .seed
        .wrapping_add((position as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Sampler::new(SamplingParams { seed, ..params }).sample(logits)
}

/// The [`Accept`] op on a verified block and the target's choices: the accepted draft count and
/// the committed tokens.
fn accept(block: &[u32], posterior: &[u32]) -> (usize, Vec<u32>) {
    let n = block.len();
    let ints = |v: &[u32]| Tensor::from_i32([n], v.iter().map(|&t| t as i32).collect());
    let (b, p) = (ints(block), ints(posterior));
    let mut out = vec![
        Tensor::zeros(&TensorType::i32([1])),
        Tensor::zeros(&TensorType::i32([n])),
    ];
    Accept {}.reference(&[&b, &p], &mut out, 0..1);
    let accepted = out[Accept::ACCEPTED].i32()[0] as usize;
    let committed = out[Accept::COMMITTED].i32()[..=accepted]
        .iter()
        .map(|&t| t as u32)
        .collect();
    (accepted, committed)
}

/// Generates from `req.prompt_ids` with `drafter` proposing and `target` verifying, calling
/// `on_token` with every committed token. Both are reset first; the target captures features for
/// the drafter during the call and stops capturing afterwards.
pub fn speculative_generate(
    target: &mut dyn Engine,
    drafter: &mut dyn Drafter,
    req: &GenerateRequest,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<SpecOutput> {
    let n = req.prompt_ids.len();
    if n == 0 {
        bail!("the prompt is empty: give at least one token");
    }
    let needed = n + req.max_new_tokens;
    if needed > target.max_context() {
        bail!(
            "prompt ({n} tokens) + max_new_tokens ({}) = {needed} exceeds the context of {} tokens",
            req.max_new_tokens,
            target.max_context()
        );
    }
    if drafter.block_size() == 0 {
        bail!("the block size must be at least 1");
    }
    target.set_capture_layers(drafter.capture_layers())?;
    target.reset();
    drafter.reset();
    let result = Speculation {
        target: &mut *target,
        drafter,
        req,
        out: SpecOutput {
            generation: GenerateOutput {
                output_ids: Vec::new(),
                logits: Vec::new(),
                finish_reason: FinishReason::Length,
                prefill_seconds: 0.0,
                decode_seconds: 0.0,
            },
            accept_lengths: Vec::new(),
        },
        tokens: req.prompt_ids.clone(),
    }
    .run(on_token);
    target.set_capture_layers(&[])?;
    result
}

/// One speculative generation in progress.
struct Speculation<'a> {
    target: &'a mut dyn Engine,
    drafter: &'a mut dyn Drafter,
    req: &'a GenerateRequest,
    out: SpecOutput,
    /// Prompt and committed output.
    tokens: Vec<u32>,
}

impl Speculation<'_> {
    fn run(mut self, mut on_token: impl FnMut(u32) -> ControlFlow<()>) -> Result<SpecOutput> {
        if self.req.max_new_tokens == 0 {
            return Ok(self.out);
        }
        let started = Instant::now();
        let prompt = self.tokens.clone();
        let (committed, mut features) = self.verify(&prompt, 0, true)?;
        self.out.generation.prefill_seconds = started.elapsed().as_secs_f64();
        if !self.commit(&committed, &mut on_token) {
            return Ok(self.out);
        }
        let width = self.drafter.capture_layers().len() * self.target.spec().hidden_size;
        let block_size = self.drafter.block_size();
        loop {
            let remaining = self.req.max_new_tokens - self.out.generation.output_ids.len();
            let started = Instant::now();
            let start = self.tokens.len() - 1;
            let size = block_size.min(remaining + 1);
            let mut block = vec![self.tokens[start]];
            if size > 1 {
                let ctx = DraftContext {
                    tokens: &self.tokens,
                    features: &features,
                    count: size - 1,
                };
                let drafts = self.drafter.propose(&ctx)?;
                self.check_drafts(&drafts, size - 1)?;
                block.extend(drafts);
            }
            let (mut committed, all_features) = self.verify_block(&block, start)?;
            committed.truncate(remaining);
            self.out.accept_lengths.push(committed.len());
            features = all_features;
            features.truncate(committed.len() * width);
            self.out.generation.decode_seconds += started.elapsed().as_secs_f64();
            if !self.commit(&committed, &mut on_token) {
                return Ok(self.out);
            }
        }
    }

    /// Runs the target over `block` at positions `start..` and returns the tokens it commits
    /// with the captured features of every row. For the prompt (`prefill`) that is the choice
    /// after its last token; for a drafted block, what [`Accept`] keeps.
    fn verify(
        &mut self,
        block: &[u32],
        start: usize,
        prefill: bool,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let sampling = self.req.sampling;
        let need_logits = self.req.want_logits || !sampling.is_greedy();
        let positions: Vec<usize> = (start..start + block.len()).collect();
        let step = self.target.step(block, &positions, need_logits)?;
        let (vocab, size) = (self.target.spec().vocab_size, block.len());
        let rows = if prefill { size - 1..size } else { 0..size };
        let posterior: Vec<u32> = rows
            .clone()
            .map(|i| match &step.logits {
                Some(logits) => sample_at(sampling, start + i + 1, &logits[i * vocab..][..vocab]),
                None => step.next_ids[i],
            })
            .collect();
        let committed = if prefill {
            posterior
        } else {
            accept(block, &posterior).1
        };
        if self.req.want_logits
            && let Some(logits) = &step.logits
        {
            for i in rows.take(committed.len()) {
                self.out
                    .generation
                    .logits
                    .push(logits[i * vocab..][..vocab].to_vec());
            }
        }
        let width = self.drafter.capture_layers().len() * self.target.spec().hidden_size;
        let features = match step.features {
            Some(f) if f.len() == block.len() * width => f,
            None if width == 0 => Vec::new(),
            _ => bail!(
                "{}: the step did not return the features of layers {:?}",
                self.target.device(),
                self.drafter.capture_layers()
            ),
        };
        Ok((committed, features))
    }

    /// Verifies a drafted block: on the engine's device when it accepts there and decoding is
    /// greedy, otherwise through [`Speculation::verify`].
    fn verify_block(&mut self, block: &[u32], start: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        if !self.req.sampling.is_greedy() {
            return self.verify(block, start, false);
        }
        let positions: Vec<usize> = (start..start + block.len()).collect();
        let want_logits = self.req.want_logits;
        let Some(v) = self.target.verify_greedy(block, &positions, want_logits)? else {
            return self.verify(block, start, false);
        };
        let (vocab, rows) = (self.target.spec().vocab_size, v.committed.len());
        if let Some(logits) = &v.logits {
            let out = &mut self.out.generation.logits;
            out.extend(logits.chunks(vocab).take(rows).map(<[f32]>::to_vec));
        }
        let width = self.drafter.capture_layers().len() * self.target.spec().hidden_size;
        let features = match v.features {
            Some(f) if f.len() == rows * width => f,
            None if width == 0 => Vec::new(),
            _ => bail!(
                "{}: the verify step did not return the features of layers {:?} for its {rows} committed rows",
                self.target.device(),
                self.drafter.capture_layers()
            ),
        };
        Ok((v.committed, features))
    }

    fn check_drafts(&self, drafts: &[u32], count: usize) -> Result<()> {
        if drafts.len() != count {
            bail!("the drafter proposed {} tokens, not {count}", drafts.len());
        }
        let vocab = self.target.spec().vocab_size;
        if let Some(bad) = drafts.iter().find(|&&t| t as usize >= vocab) {
            bail!("the drafter proposed token {bad}, outside the vocabulary of {vocab}");
        }
        Ok(())
    }

    /// Appends `committed` to the output and streams it; false once generation is over (a stop
    /// token, the length, or the callback).
    fn commit(
        &mut self,
        committed: &[u32],
        on_token: &mut impl FnMut(u32) -> ControlFlow<()>,
    ) -> bool {
        let out = &mut self.out.generation;
        let mut going = true;
        for &t in committed {
            out.output_ids.push(t);
            self.tokens.push(t);
            if on_token(t).is_break() {
                out.finish_reason = FinishReason::Cancelled;
                going = false;
            } else if self.req.stop_ids.contains(&t) {
                out.finish_reason = FinishReason::Stop;
                going = false;
            }
            if !going {
                break;
            }
        }
        // Logits of rows past a stop or the cancel point belong to no output token.
        out.logits.truncate(out.output_ids.len());
        going && out.output_ids.len() < self.req.max_new_tokens
    }
}

/// A target and a DFlash drafter, sharing one weight store (the drafter reads the target's
/// `embed` and `lm_head`): on the reference engine for a model directory or model.toml; for a
/// compiled artifact on the GPU megakernel when one is usable (`--device auto` falls back to the
/// CPU schedule executor, with a note, when none is or it cannot take the model). `block_size`
/// overrides the draft's own (and the artifact's).
pub fn open_speculative(
    model: Option<&Path>,
    draft: &Path,
    block_size: Option<usize>,
    device: DeviceChoice,
) -> Result<(Session, DFlashDrafter)> {
    let mut notes = Vec::new();
    let (loaded, name) = match model {
        Some(path) if Artifact::is_artifact(path) => {
            if let Some(dev) = select_device(device, &mut notes)? {
                match cuda::open_artifact(path, draft, block_size, &dev, notes.clone()) {
                    Ok(pair) => return Ok(pair),
                    Err(e) if device != DeviceChoice::Auto => {
                        return Err(e.context(format!(
                            "opening {} with its draft on {}",
                            path.display(),
                            dev.describe()
                        )));
                    }
                    Err(e) => notes.push(format!(
                        "the CUDA engine could not take {} ({e:#}); running on the CPU schedule executor",
                        path.display()
                    )),
                }
            }
            return compiled::open_artifact(path, draft, block_size, notes);
        }
        Some(path) if !builtin::is_builtin(path) => {
            let name = path.display().to_string();
            interpreter_only(device, &name, &mut notes)?;
            (
                load_model(path, &|_, _| {})
                    .with_context(|| format!("loading {}", path.display()))?,
                name,
            )
        }
        _ => {
            interpreter_only(device, builtin::NAME, &mut notes)?;
            (builtin::load()?, builtin::NAME.to_string())
        }
    };
    let LoadedModel {
        spec,
        mut weights,
        tokenizer,
        eos_token_ids,
        ..
    } = loaded;
    let draft = load_draft(draft, &spec)
        .with_context(|| format!("loading the draft {}", draft.display()))?;
    for (name, w) in draft.weights.iter() {
        weights.insert(name, w.clone());
    }
    let ctx = spec.max_position_embeddings.min(4096);
    let weights = Arc::new(F32Weights::from_store(&weights));
    let drafter = DFlashDrafter::new(draft.spec, &spec, weights.clone(), ctx, block_size)?;
    notes.push(format!(
        "speculative decoding with the DFlash draft {} (block of {})",
        draft.dir.display(),
        drafter.block_size()
    ));
    let engine = CpuEngine::with_shared_weights(spec, weights, ctx);
    let session = Session {
        engine: Box::new(engine),
        tokenizer,
        eos_token_ids,
        name,
        notes,
    };
    Ok((session, drafter))
}
