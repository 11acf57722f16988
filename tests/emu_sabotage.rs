//! The device emulator's checks bite on the real megakernel: each test breaks the generated
//! kernel or its schedule in one way a kernel developer could, and the emulator must report it
//! (or, for a wrong MMA lane mapping, which no memory check can see, the step must fail parity
//! with the interpreter), while the same kernel unbroken passes.
//!
//! - a deleted event wait: reported as a race between the two tasks;
//! - one lane of the MMA accumulator fragment mapped to the wrong row: logits far from the
//!   interpreter's;
//! - an activation read through the non-coherent path (`ld.global.nc`): flagged;
//! - an out-of-bounds read: flagged, naming the allocation.
//!
//! These are emulator tests whatever `MIMO_GPU_TESTS` says (a GPU checks none of this).

mod common;

use std::sync::Arc;

use common::emulator;
use common::parity::rel_l2;

use mimo_compiler::{Program, codegen};
use mimo_ir::formats::WeightFormat;
use mimo_ir::interp::{self, F32Weights, StateStore};
use mimo_ir::model::build::{LOGITS, POSITIONS, TOKEN_IDS, decode_graph};
use mimo_ir::weights::WeightStore;
use mimo_ir::{Architecture, ModelSpec, Tensor};
use mimo_runtime::cuda::{self, KernelImage, LaunchOptions, Megakernel};
use mimo_runtime::device::Device;

const CONTEXT: usize = 32;
const WORKERS: usize = 4;

/// The tiny Qwen3-MoE model (MXFP4 experts), its random weights, and its decode program and
/// kernel made from `templates`.
fn tiny(templates: &[(&str, &str)]) -> (ModelSpec, WeightStore, Program, KernelImage) {
    let mut spec = ModelSpec::tiny(Architecture::Qwen3Moe);
    spec.formats.experts = WeightFormat::Mxfp4;
    let weights = mimo_ir::model::random::random_weights(&spec, 9).unwrap();
    let (program, _) = cuda::compile_in_memory(&spec, CONTEXT, WORKERS).unwrap();
    // The kernel generated from `templates` (the built-in ones, or a sabotaged copy).
    let header = codegen::generated_header(&spec, &program);
    let image = KernelImage {
        source: codegen::kernel_source(templates, &header).unwrap(),
        cubin: None,
    };
    (spec, weights, program, image)
}

/// The templates with the first `from` in `file` replaced by `to` (which must be there).
fn sabotaged(file: &str, from: &str, to: &str) -> Vec<(&'static str, String)> {
    let out: Vec<(&'static str, String)> = codegen::TEMPLATES
        .iter()
        .map(|&(name, text)| {
            if name == file {
                assert!(text.contains(from), "`{from}` is not in {file}");
                (name, text.replacen(from, to, 1))
            } else {
                (name, text.to_string())
            }
        })
        .collect();
    assert!(out.iter().any(|(n, _)| *n == file), "no template {file}");
    out
}

fn as_refs<'a>(templates: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    templates.iter().map(|(n, t)| (*n, t.as_str())).collect()
}

fn step_inputs() -> [(&'static str, Tensor); 2] {
    [
        (TOKEN_IDS, Tensor::from_i32([1], vec![3])),
        (POSITIONS, Tensor::from_i32([1], vec![0])),
    ]
}

/// One decode step's logits on the emulator, or the error it reports.
fn run_step(
    dev: &Arc<dyn Device>,
    (_, weights, program, image): &(ModelSpec, WeightStore, Program, KernelImage),
) -> anyhow::Result<Vec<f32>> {
    let mut mk = Megakernel::new(
        dev,
        program.clone(),
        weights,
        image,
        LaunchOptions::default(),
    )?;
    let mut out = mk.run_step(&step_inputs(), &[LOGITS])?;
    Ok(out.remove(LOGITS).unwrap().f32().to_vec())
}

/// The same step on the reference interpreter.
fn reference_logits(spec: &ModelSpec, weights: &WeightStore) -> Vec<f32> {
    let graph = decode_graph(spec, 1, CONTEXT).unwrap();
    let w = F32Weights::from_store(weights);
    let out = interp::run(&graph, &w, &mut StateStore::new(), &step_inputs()).unwrap();
    out[LOGITS].f32().to_vec()
}

/// The report of a step that must fail, on one line.
fn failure(
    dev: &Arc<dyn Device>,
    model: &(ModelSpec, WeightStore, Program, KernelImage),
) -> String {
    let err = run_step(dev, model).expect_err("the sabotaged step must fail");
    let m = format!("{err:#}");
    eprintln!("reported: {m}");
    m
}

#[test]
fn the_unbroken_kernel_passes_and_matches_the_interpreter() {
    let Some(dev) = emulator("the_unbroken_kernel_passes_and_matches_the_interpreter") else {
        return;
    };
    let model = tiny(codegen::TEMPLATES);
    let got = run_step(&dev, &model).unwrap_or_else(|e| panic!("{e:#}"));
    let err = rel_l2(&got, &reference_logits(&model.0, &model.1));
    assert!(err < 5e-2, "logits relative L2 error {err}");
}

#[test]
fn a_deleted_wait_is_reported_as_a_race() {
    let Some(dev) = emulator("a_deleted_wait_is_reported_as_a_race") else {
        return;
    };
    let mut model = tiny(codegen::TEMPLATES);
    let program = &mut model.2;
    let worker_of = |task: usize| {
        program
            .schedule
            .queues
            .iter()
            .position(|q| q.contains(&task))
            .unwrap()
    };
    // A task with one wait, for an event only other workers' tasks trigger: without the wait
    // nothing orders it after the tasks whose outputs it reads.
    let victim = (0..program.tasks.len())
        .find(|&id| {
            let t = &program.tasks[id];
            t.waits.len() == 1
                && program.events[t.waits[0]]
                    .producers
                    .iter()
                    .all(|&p| worker_of(p) != worker_of(id))
        })
        .expect("a task waiting on one event from other workers");
    let event = program.tasks[victim].waits.remove(0);
    let victim_op = program.ops[program.tasks[victim].op].name.clone();
    let producer_ops: Vec<String> = program.events[event]
        .producers
        .iter()
        .map(|&p| program.ops[program.tasks[p].op].name.clone())
        .collect();
    let m = failure(&dev, &model);
    assert!(m.contains("cross-block race"), "{m}");
    assert!(
        m.contains(&victim_op) || producer_ops.iter().any(|p| m.contains(p.as_str())),
        "{m}\n names neither `{victim_op}` (its wait deleted) nor its producers {producer_ops:?}"
    );
}

#[test]
fn a_wrong_lane_in_the_mma_fragment_fails_parity() {
    let Some(dev) = emulator("a_wrong_lane_in_the_mma_fragment_fails_parity") else {
        return;
    };
    // Lanes 0 and 4 swap their accumulator rows (output features 0 and 1 of every 16).
    let templates = sabotaged(
        "common/mma.cuh",
        "frag_row(u32 i) { return (lane_id() >> 2)",
        "frag_row(u32 i) { return ((lane_id() == 0u ? 4u : lane_id() == 4u ? 0u : lane_id()) >> 2)",
    );
    let model = tiny(&as_refs(&templates));
    let got = run_step(&dev, &model).unwrap_or_else(|e| panic!("{e:#}"));
    let err = rel_l2(&got, &reference_logits(&model.0, &model.1));
    eprintln!("logits relative L2 error {err:.3}");
    assert!(err > 0.2, "logits relative L2 error only {err}");
}

#[test]
fn an_activation_read_through_the_non_coherent_path_is_flagged() {
    let Some(dev) = emulator("an_activation_read_through_the_non_coherent_path_is_flagged") else {
        return;
    };
    // The residual stream (written earlier in the launch) read as if it were a weight.
    let templates = sabotaged(
        "ops/oproj_residual.cuh",
        "ld_act_f32(p->arena + a->residual + i)",
        "__uint_as_float(ld_weight_u32(p->arena + a->residual + i))",
    );
    let m = failure(&dev, &tiny(&as_refs(&templates)));
    assert!(m.contains("ld.global.nc") && m.contains("`arena`"), "{m}");
}

#[test]
fn an_out_of_bounds_read_is_flagged() {
    let Some(dev) = emulator("an_out_of_bounds_read_is_flagged") else {
        return;
    };
    // The embedding reads its token id one word before the arena.
    let templates = sabotaged(
        "ops/embed.cuh",
        "ld_act_i32(p.arena + a.ids + t)",
        "ld_act_i32(p.arena + a.ids + t - a.ids - t - 1u)",
    );
    let m = failure(&dev, &tiny(&as_refs(&templates)));
    assert!(
        m.contains("`embed_tokens`")
            && m.contains("reads 4 bytes")
            && m.contains("out of bounds (4 bytes before allocation `arena`"),
        "{m}"
    );
}
