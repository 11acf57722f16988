//! The compiled DFlash path against its oracles: the draft and verify programs on the schedule
//! executor against the reference interpreter's graphs, and 256 greedy tokens of compiled
//! speculative decoding against plain decoding, with a random DFlash draft, a drafter that is
//! always right and one that is always wrong (the random target of `dflash/tests.rs`).

use std::collections::HashMap;

use mimo_compiler::{CompileOptions, Machine};
use mimo_ir::interp::{self, StateStore};
use mimo_ir::math::Rng;
use mimo_ir::model::build::{
    ACCEPTED, COMMITTED, FEATURES, LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS,
};
use mimo_ir::model::dflash::graph::{ATTN_POSITIONS, CONTEXT, DRAFT_IDS, KV_POSITIONS};
use mimo_ir::model::dflash::{draft_graph, verify_graph};
use mimo_ir::{Graph, Tensor};

use super::super::tests::{
    BLOCK, CONTEXT as MAX_CONTEXT, NEW, draft_spec, go, positional_reference, target_spec, weights,
};
use super::*;
use crate::dflash::{ScriptedDrafter, speculative_generate};
use crate::engine::{CpuEngine, Engine, StepOutput, Verified};
use crate::engine::{ProgramCache, ScheduleEngine};
use crate::exec::CpuBackend;
use crate::generate::{GenerateRequest, generate};
use crate::sampling::SamplingParams;

/// Small tiles on three workers: many tasks and events per step, to stress the schedule.
fn fine_grained() -> CompileOptions {
    let machine = Machine {
        workers: 3,
        ..Machine::h100()
    };
    CompileOptions {
        min_task_bytes: 512.0,
        ..CompileOptions::for_machine(machine)
    }
}

fn ints(v: impl IntoIterator<Item = usize>) -> Tensor {
    let v: Vec<i32> = v.into_iter().map(|x| x as i32).collect();
    Tensor::from_i32([v.len()], v)
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let num: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f32 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

/// Runs `graph` on the interpreter and its compiled program (cached by `key`) on the same
/// inputs, each keeping its own state across calls.
struct Both<K> {
    weights: mimo_ir::interp::F32Weights,
    state: StateStore,
    programs: ProgramCache<K, CpuBackend>,
}

impl<K: Eq + std::hash::Hash + Clone + std::fmt::Debug> Both<K> {
    fn new() -> Self {
        let weights = weights();
        Both {
            programs: CpuBackend::cache(weights.clone(), fine_grained()),
            weights,
            state: StateStore::new(),
        }
    }

    fn run(
        &mut self,
        key: K,
        graph: Graph,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
        let want = interp::run(&graph, &self.weights, &mut self.state, inputs).unwrap();
        let exec = self.programs.get(&key, || Ok(graph)).unwrap();
        let got = exec.run_step(inputs, outputs).unwrap();
        (got, want)
    }
}

#[test]
fn compiled_draft_program_matches_the_reference_draft_graph() {
    let (target, draft) = (target_spec(), draft_spec());
    let mut both = Both::new();
    let mut rng = Rng::new(11);
    let width = draft.feature_dim();
    // A prompt's B context rows, then 5 and 1 committed rows: the cache carries over.
    let mut start = 0;
    for (pass, rows) in [BLOCK, 5, 1].into_iter().enumerate() {
        start += rows;
        let features: Vec<f32> = (0..rows * width).map(|_| rng.normal(1.0)).collect();
        let mask = draft.mask_token_id as usize;
        let first = 3 + 11 * pass;
        let inputs = [
            (
                TOKEN_IDS,
                ints(std::iter::once(first).chain(std::iter::repeat_n(mask, BLOCK - 1))),
            ),
            (POSITIONS, ints(start..start + BLOCK)),
            (CONTEXT, Tensor::from_f32([rows, width], features)),
            (
                KV_POSITIONS,
                ints((start - rows..start).chain(start..start + BLOCK)),
            ),
            (
                ATTN_POSITIONS,
                ints(std::iter::repeat_n(start + BLOCK - 1, BLOCK)),
            ),
        ];
        let graph = draft_graph(&draft, &target, BLOCK, rows, MAX_CONTEXT).unwrap();
        let (got, want) = both.run((BLOCK, rows), graph, &inputs, &[LOGITS, DRAFT_IDS]);
        let err = rel_err(got[LOGITS].f32(), want[LOGITS].f32());
        assert!(
            err < 1e-5,
            "pass {pass} ({rows} rows): logits rel err {err}"
        );
        assert_eq!(got[DRAFT_IDS], want[DRAFT_IDS], "pass {pass}");
    }
}

#[test]
fn compiled_verify_program_matches_the_reference_verify_graph() {
    let (target, draft) = (target_spec(), draft_spec());
    let capture = draft.target_layer_ids.clone();
    let mut both = Both::new();
    let outputs = [NEXT_IDS, FEATURES, ACCEPTED, COMMITTED];
    let mut check = |block: &[u32], start: usize| {
        let inputs = [
            (TOKEN_IDS, ints(block.iter().map(|&t| t as usize))),
            (POSITIONS, ints(start..start + block.len())),
        ];
        let graph = verify_graph(&target, block.len(), MAX_CONTEXT, &capture).unwrap();
        let (got, want) = both.run(block.len(), graph, &inputs, &outputs);
        for name in [NEXT_IDS, ACCEPTED, COMMITTED] {
            assert_eq!(got[name], want[name], "{name} of {block:?} at {start}");
        }
        let err = rel_err(got[FEATURES].f32(), want[FEATURES].f32());
        assert!(err < 1e-5, "features of {block:?}: rel err {err}");
        let next: Vec<u32> = want[NEXT_IDS].i32().iter().map(|&t| t as u32).collect();
        (want[ACCEPTED].i32()[0] as usize, next)
    };
    // A prompt block, then blocks at the next positions whose drafts are made right one more at
    // a time (each run rewrites the rows of the one before, as after a rejection).
    let prompt = [12u32, 40, 7, 99, 64, 3, 88, 5, 17, 96, 31, 2, 77, 45, 60, 9];
    let (_, next) = check(&prompt, 0);
    let mut block = vec![next[BLOCK - 1]; BLOCK];
    for i in 1..BLOCK {
        block[i] = (block[i - 1] + 1) % 128;
    }
    let mut accepted = 0;
    for k in 0..7 {
        let (a, next) = check(&block, BLOCK);
        accepted = a;
        block[k + 1] = next[k];
    }
    assert!(
        accepted >= 6,
        "drafts made right were not accepted: {accepted}"
    );
    // A shorter block (the end of an output) is its own program.
    check(&block[..5], BLOCK);
}

fn request(want_logits: bool) -> GenerateRequest {
    GenerateRequest {
        // Longer than two blocks: the prompt's verify step and the draft's first context run
        // in pieces.
        prompt_ids: (0..37).map(|i| (i * 37 + 5) % 127).collect(),
        max_new_tokens: NEW,
        sampling: SamplingParams::default(),
        stop_ids: Vec::new(),
        want_logits,
    }
}

/// The target's engine, counting the blocks it accepted on its device.
struct Counting {
    inner: ScheduleEngine,
    on_device: usize,
}

impl Engine for Counting {
    fn spec(&self) -> &mimo_ir::ModelSpec {
        self.inner.spec()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn device(&self) -> String {
        self.inner.device()
    }
    fn step(&mut self, tokens: &[u32], positions: &[usize], logits: bool) -> Result<StepOutput> {
        self.inner.step(tokens, positions, logits)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn set_capture_layers(&mut self, layers: &[usize]) -> Result<()> {
        self.inner.set_capture_layers(layers)
    }
    fn verify_greedy(
        &mut self,
        block: &[u32],
        positions: &[usize],
        logits: bool,
    ) -> Result<Option<Verified>> {
        let v = self.inner.verify_greedy(block, positions, logits)?;
        self.on_device += usize::from(v.is_some());
        Ok(v)
    }
}

fn compiled() -> (Counting, DFlashDrafter) {
    let options = CompileOptions::for_machine(Machine {
        workers: 2,
        ..Machine::h100()
    });
    let engine = ScheduleEngine::new(target_spec(), weights(), MAX_CONTEXT, options);
    let (engine, dflash) = pair(engine, draft_spec(), None).unwrap();
    let engine = Counting {
        inner: engine,
        on_device: 0,
    };
    (engine, dflash)
}

#[test]
fn compiled_greedy_speculation_is_lossless_for_256_tokens() {
    let (mut engine, mut dflash) = compiled();
    let req = request(true);
    let plain = generate(&mut engine, &req, go).unwrap();
    assert_eq!(plain.output_ids.len(), NEW);
    // The executor's plain decoding is the interpreter's.
    let mut reference = CpuEngine::new(target_spec(), weights(), MAX_CONTEXT);
    let oracle = generate(&mut reference, &request(false), go).unwrap();
    assert_eq!(plain.output_ids, oracle.output_ids);
    let mut sequence = req.prompt_ids.clone();
    sequence.extend(&plain.output_ids);

    // (a) A random-weight DFlash draft on compiled programs; the verify programs accept.
    let out = speculative_generate(&mut engine, &mut dflash, &req, go).unwrap();
    assert_eq!(out.generation.output_ids, plain.output_ids);
    assert_eq!(engine.on_device, out.accept_lengths.len());
    assert_eq!(out.accept_lengths.iter().sum::<usize>(), NEW - 1);
    assert!(out.accept_lengths.iter().all(|&a| (1..=BLOCK).contains(&a)));
    assert_eq!(out.generation.logits.len(), NEW);
    for (i, (got, want)) in out.generation.logits.iter().zip(&plain.logits).enumerate() {
        let err = rel_err(got, want);
        assert!(err < 1e-5, "token {i}: logits rel err {err}");
    }

    // (b) The known continuation: every block is accepted whole (the last one is cut at 256).
    let req = request(false);
    let mut replay = ScriptedDrafter::replay(sequence.clone(), BLOCK);
    let out = speculative_generate(&mut engine, &mut replay, &req, go).unwrap();
    assert_eq!(out.generation.output_ids, plain.output_ids);
    let (last, full) = out.accept_lengths.split_last().unwrap();
    assert!(full.iter().all(|&a| a == BLOCK), "{:?}", out.accept_lengths);
    assert_eq!(full.len() * BLOCK + last, NEW - 1);

    // (c) Always wrong: the bonus token alone, every step.
    let vocab = engine.spec().vocab_size;
    let mut wrong = ScriptedDrafter::wrong(sequence, vocab, BLOCK);
    let out = speculative_generate(&mut engine, &mut wrong, &req, go).unwrap();
    assert_eq!(out.generation.output_ids, plain.output_ids);
    assert_eq!(out.accept_lengths, vec![1; NEW - 1]);
}

#[test]
fn compiled_sampling_follows_the_target_alone() {
    let (mut engine, mut dflash) = compiled();
    let req = GenerateRequest {
        max_new_tokens: 48,
        sampling: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            seed: 5,
        },
        ..request(false)
    };
    let mut reference = CpuEngine::new(target_spec(), weights(), MAX_CONTEXT);
    let want = positional_reference(&mut reference, &req);
    let out = speculative_generate(&mut engine, &mut dflash, &req, go).unwrap();
    assert_eq!(out.generation.output_ids, want);
    // Sampled blocks are accepted on the host, from the logits read back.
    assert_eq!(engine.on_device, 0);
}
