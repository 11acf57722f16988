//! Autoregressive generation over any [`Engine`]: prefill the prompt in one step, then one decode
//! step per new token, streaming each token to a callback.

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::engine::Engine;
use crate::sampling::{Sampler, SamplingParams};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after any of these tokens (it is kept in the output).
    pub stop_ids: Vec<u32>,
    /// Keep the full-vocabulary logits each new token was chosen from.
    pub want_logits: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// A stop token was generated.
    Stop,
    /// The callback asked to stop (a client went away, a stop string matched).
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// New tokens only.
    pub output_ids: Vec<u32>,
    /// For each new token, the logits it was chosen from (when asked for).
    pub logits: Vec<Vec<f32>>,
    pub finish_reason: FinishReason,
    /// Time of the prompt step (which also yields the first new token).
    pub prefill_seconds: f64,
    /// Time of the decode steps (every new token after the first).
    pub decode_seconds: f64,
}

impl GenerateOutput {
    /// Decode speed: tokens produced by decode steps per second of decode steps. With a single
    /// new token there are no decode steps, and the prompt step's rate is reported instead.
    pub fn tokens_per_second(&self) -> f64 {
        let decoded = self.output_ids.len().saturating_sub(1);
        if decoded > 0 && self.decode_seconds > 0.0 {
            decoded as f64 / self.decode_seconds
        } else if self.prefill_seconds > 0.0 {
            self.output_ids.len() as f64 / self.prefill_seconds
        } else {
            0.0
        }
    }
}

/// Generates from `req.prompt_ids`, calling `on_token` with every new token as soon as it exists.
/// The engine's cache is reset first.
pub fn generate(
    engine: &mut dyn Engine,
    req: &GenerateRequest,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<GenerateOutput> {
    let n = req.prompt_ids.len();
    if n == 0 {
        bail!("the prompt is empty: give at least one token");
    }
    let needed = n + req.max_new_tokens;
    if needed > engine.max_context() {
        bail!(
            "prompt ({n} tokens) + max_new_tokens ({}) = {needed} exceeds the context of {} tokens",
            req.max_new_tokens,
            engine.max_context()
        );
    }
    let mut out = GenerateOutput {
        output_ids: Vec::new(),
        logits: Vec::new(),
        finish_reason: FinishReason::Length,
        prefill_seconds: 0.0,
        decode_seconds: 0.0,
    };
    if req.max_new_tokens == 0 {
        return Ok(out);
    }
    engine.reset();
    let mut sampler = Sampler::new(req.sampling);
    let need_logits = req.want_logits || !req.sampling.is_greedy();
    let vocab = engine.spec().vocab_size;

    let mut tokens = req.prompt_ids.clone();
    let mut positions: Vec<usize> = (0..n).collect();
    loop {
        let started = Instant::now();
        let step = engine.step(&tokens, &positions, need_logits)?;
        let elapsed = started.elapsed().as_secs_f64();
        if out.output_ids.is_empty() {
            out.prefill_seconds = elapsed;
        } else {
            out.decode_seconds += elapsed;
        }
        let last = tokens.len() - 1;
        let next = match &step.logits {
            Some(logits) => {
                let row = &logits[last * vocab..(last + 1) * vocab];
                if req.want_logits {
                    out.logits.push(row.to_vec());
                }
                sampler.sample(row)
            }
            None => step.next_ids[last],
        };
        out.output_ids.push(next);
        if on_token(next).is_break() {
            out.finish_reason = FinishReason::Cancelled;
            break;
        }
        if req.stop_ids.contains(&next) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        if out.output_ids.len() == req.max_new_tokens {
            break;
        }
        let pos = positions[last] + 1;
        tokens = vec![next];
        positions = vec![pos];
    }
    Ok(out)
}
