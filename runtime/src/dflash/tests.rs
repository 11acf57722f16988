//! Lossless speculative decoding on the reference path: 256 new tokens equal plain decoding with
//! a random-weight DFlash draft, a drafter that is always right, one that is always wrong and one
//! that is right for a varying number of tokens, greedy and sampled. The target is a small random
//! Qwen3-MoE with 1024 positions (the built-in model runs in `tests/dflash.rs`, through the CLI).

use std::ops::ControlFlow;
use std::sync::Arc;

use mimo_ir::ModelSpec;
use mimo_ir::formats::WeightFormat;
use mimo_ir::interp::F32Weights;
use mimo_ir::model::dflash::{DraftSpec, random_draft_weights};
use mimo_ir::model::random::random_weights;

use super::*;
use crate::engine::CpuEngine;
use crate::generate::generate;

pub(super) const NEW: usize = 256;
pub(super) const BLOCK: usize = 16;
pub(super) const CONTEXT: usize = 1024;

pub(super) fn target_spec() -> ModelSpec {
    small_pair(128, CONTEXT, BLOCK, WeightFormat::F32).0
}

/// A two-layer DFlash draft reading target layers 0 and 2.
pub(super) fn draft_spec() -> DraftSpec {
    small_pair(128, CONTEXT, BLOCK, WeightFormat::F32).1
}

/// The random target's weights and a random DFlash draft's, in one store.
pub(super) fn weights() -> F32Weights {
    let mut store = random_weights(&target_spec(), 3).unwrap();
    for (name, w) in random_draft_weights(&draft_spec(), 17).unwrap().iter() {
        store.insert(name, w.clone());
    }
    F32Weights::from_store(&store)
}

/// The target and a random DFlash draft on one weight store.
fn pair() -> (CpuEngine, DFlashDrafter) {
    let (spec, draft) = (target_spec(), draft_spec());
    let weights = Arc::new(weights());
    let engine = CpuEngine::with_shared_weights(spec.clone(), weights.clone(), CONTEXT);
    let drafter = DFlashDrafter::new(draft, &spec, weights, CONTEXT, None).unwrap();
    (engine, drafter)
}

/// Right for 0, 1, ..., B - 1 tokens in successive blocks, then wrong: every acceptance length
/// occurs.
struct PartlyRight {
    sequence: Vec<u32>,
    calls: u64,
}

impl Drafter for PartlyRight {
    fn block_size(&self) -> usize {
        BLOCK
    }
    fn capture_layers(&self) -> &[usize] {
        &[]
    }
    fn reset(&mut self) {
        self.calls = 0;
    }
    fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>> {
        let right = self.calls as usize % BLOCK;
        self.calls += 1;
        let from = ctx.tokens.len();
        Ok((0..ctx.count)
            .map(|i| {
                let t = self.sequence.get(from + i).copied().unwrap_or(0);
                if i < right { t } else { (t + 1) % 128 }
            })
            .collect())
    }
}

fn request(sampling: SamplingParams, want_logits: bool) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: vec![12, 40, 7, 99, 64, 3, 88],
        max_new_tokens: NEW,
        sampling,
        stop_ids: Vec::new(),
        want_logits,
    }
}

fn plain_sequence(req: &GenerateRequest, output: &[u32]) -> Vec<u32> {
    let mut s = req.prompt_ids.clone();
    s.extend(output);
    s
}

pub(super) fn go(_: u32) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn spec_run(
    engine: &mut CpuEngine,
    drafter: &mut dyn Drafter,
    req: &GenerateRequest,
) -> SpecOutput {
    speculative_generate(engine, drafter, req, go).unwrap()
}

/// Plain decoding with [`sample_at`]: one target step per token.
pub(super) fn positional_reference(engine: &mut dyn Engine, req: &GenerateRequest) -> Vec<u32> {
    engine.reset();
    let mut tokens = req.prompt_ids.clone();
    let (mut fed, vocab) = (0, engine.spec().vocab_size);
    while tokens.len() < req.prompt_ids.len() + req.max_new_tokens {
        let positions: Vec<usize> = (fed..tokens.len()).collect();
        let step = engine.step(&tokens[fed..], &positions, true).unwrap();
        let logits = step.logits.unwrap();
        let last = &logits[(positions.len() - 1) * vocab..][..vocab];
        fed = tokens.len();
        tokens.push(sample_at(req.sampling, fed, last));
    }
    tokens[req.prompt_ids.len()..].to_vec()
}

#[test]
fn greedy_speculation_is_lossless_with_any_drafter() {
    let (mut engine, mut dflash) = pair();
    let req = request(SamplingParams::default(), true);
    let plain = generate(&mut engine, &req, go).unwrap();
    assert_eq!(plain.output_ids.len(), NEW);
    let distinct: std::collections::BTreeSet<_> = plain.output_ids.iter().collect();
    assert!(
        distinct.len() > 20,
        "a degenerate test model: {:?}",
        plain.output_ids
    );
    let mut sequence = req.prompt_ids.clone();
    sequence.extend(&plain.output_ids);
    let vocab = engine.spec().vocab_size;

    // (a) A random-weight DFlash draft: whatever it proposes, the output is the target's.
    let out = spec_run(&mut engine, &mut dflash, &req);
    assert_eq!(out.generation.output_ids, plain.output_ids);
    assert_eq!(
        out.generation.logits, plain.logits,
        "the chosen-from logits differ"
    );
    assert_eq!(out.accept_lengths.iter().sum::<usize>(), NEW - 1);
    assert!(out.accept_lengths.iter().all(|&a| (1..=BLOCK).contains(&a)));

    // (b) The known continuation: every block is accepted whole (the last one is cut at 256).
    let mut replay = ScriptedDrafter::replay(sequence.clone(), BLOCK);
    let out = spec_run(&mut engine, &mut replay, &req);
    assert_eq!(out.generation.output_ids, plain.output_ids);
    let (last, full) = out.accept_lengths.split_last().unwrap();
    assert!(full.iter().all(|&a| a == BLOCK), "{:?}", out.accept_lengths);
    assert_eq!(full.len() * BLOCK + last, NEW - 1);
    assert_eq!(
        out.mean_accept(),
        (NEW - 1) as f64 / out.accept_lengths.len() as f64
    );

    // (c) Always wrong: one token (the bonus) per step.
    let mut wrong = ScriptedDrafter::wrong(sequence, vocab, BLOCK);
    let out = spec_run(&mut engine, &mut wrong, &req);
    assert_eq!(out.generation.output_ids, plain.output_ids);
    assert_eq!(out.accept_lengths, vec![1; NEW - 1]);

    // (d) Right for 0 to B - 1 tokens: every acceptance length, and still the same output.
    let mut partly = PartlyRight {
        sequence: plain_sequence(&req, &plain.output_ids),
        calls: 0,
    };
    let out = spec_run(&mut engine, &mut partly, &req);
    assert_eq!(out.generation.output_ids, plain.output_ids);
    for a in 1..=BLOCK {
        assert!(
            out.accept_lengths.contains(&a),
            "no step committed {a}: {:?}",
            out.accept_lengths
        );
    }

    // Capturing stops with the speculative call: plain decoding runs as before.
    let again = generate(&mut engine, &req, go).unwrap();
    assert_eq!(again.output_ids, plain.output_ids);
}

#[test]
fn sampling_follows_the_target_alone_and_is_seeded() {
    let (mut engine, mut dflash) = pair();
    let sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: 5,
    };
    let req = request(sampling, false);
    let reference = positional_reference(&mut engine, &req);
    let out = spec_run(&mut engine, &mut dflash, &req);
    assert_eq!(out.generation.output_ids, reference);
    let mut sequence = req.prompt_ids.clone();
    sequence.extend(&reference);
    let mut replay = ScriptedDrafter::replay(sequence, BLOCK);
    let out = spec_run(&mut engine, &mut replay, &req);
    assert_eq!(out.generation.output_ids, reference);
    assert!(
        out.accept_lengths[..out.accept_lengths.len() - 1]
            .iter()
            .all(|&a| a == BLOCK)
    );
    let other = GenerateRequest {
        sampling: SamplingParams {
            seed: 6,
            ..sampling
        },
        ..req
    };
    assert_ne!(
        spec_run(&mut engine, &mut dflash, &other)
            .generation
            .output_ids,
        reference
    );
}

#[test]
fn stops_at_a_stop_token_or_when_the_caller_says() {
    let (mut engine, _) = pair();
    let mut req = request(SamplingParams::default(), false);
    req.max_new_tokens = 40;
    let plain = generate(&mut engine, &req, go).unwrap().output_ids;
    let mut sequence = req.prompt_ids.clone();
    sequence.extend(&plain);
    // A stop token in the middle of a fully accepted block ends the output right after it.
    let stop = plain[20];
    let first = plain.iter().position(|&t| t == stop).unwrap();
    let mut replay = ScriptedDrafter::replay(sequence, 8);
    let stopping = GenerateRequest {
        stop_ids: vec![stop],
        ..req.clone()
    };
    let out = speculative_generate(&mut engine, &mut replay, &stopping, go).unwrap();
    assert_eq!(out.generation.output_ids, plain[..=first]);
    assert_eq!(out.generation.finish_reason, FinishReason::Stop);
    let mut seen = 0;
    let out = speculative_generate(&mut engine, &mut replay, &req, |_| {
        seen += 1;
        if seen == 11 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(out.generation.output_ids, plain[..11]);
    assert_eq!(out.generation.finish_reason, FinishReason::Cancelled);
}

#[test]
fn block_of_one_is_plain_decoding_and_bad_requests_are_refused() {
    let (mut engine, _) = pair();
    let mut req = request(SamplingParams::default(), false);
    req.max_new_tokens = 12;
    let plain = generate(&mut engine, &req, go).unwrap().output_ids;
    let mut one = ScriptedDrafter::wrong(Vec::new(), 128, 1);
    let out = speculative_generate(&mut engine, &mut one, &req, go).unwrap();
    assert_eq!(out.generation.output_ids, plain);
    req.max_new_tokens = 5000;
    let err = speculative_generate(&mut engine, &mut one, &req, go).unwrap_err();
    assert!(
        err.to_string().contains("exceeds the context of 1024"),
        "{err}"
    );

    /// Proposes an id past the vocabulary.
    struct Bad;
    impl Drafter for Bad {
        fn block_size(&self) -> usize {
            4
        }
        fn capture_layers(&self) -> &[usize] {
            &[]
        }
        fn reset(&mut self) {}
        fn propose(&mut self, ctx: &DraftContext<'_>) -> Result<Vec<u32>> {
            Ok(vec![100_000; ctx.count])
        }
    }
    req.max_new_tokens = 8;
    let err = speculative_generate(&mut engine, &mut Bad, &req, go).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}
