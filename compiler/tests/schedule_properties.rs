//! Properties of compiled programs on random small models:
//! - every element a task reads from another task's output is written only by tasks it waits
//!   for (checked element by element, independently of how the events were derived), and every
//!   element of every exported value is written by exactly one task;
//! - the schedule completes on 1 to 8 workers under random interleavings, step after step, with
//!   counters that are never reset.

use std::collections::{BTreeSet, HashMap};

use mimo_compiler::plan::{external_reads, node_io};
use mimo_compiler::schedule::dependencies;
use mimo_compiler::{CompileOptions, Machine, Program, compile};
use mimo_ir::formats::WeightFormat;
use mimo_ir::math::Rng;
use mimo_ir::model::decode_graph;
use mimo_ir::op::{Io, Region};
use mimo_ir::{Architecture, ModelSpec, WeightFormats};
use petgraph::graph::NodeIndex;
use proptest::prelude::*;

fn arb_spec() -> impl Strategy<Value = ModelSpec> {
    (
        prop_oneof![Just(Architecture::Qwen3Moe), Just(Architecture::Mixtral)],
        1usize..=3,                                  // layers
        prop_oneof![Just(1usize), Just(2), Just(4)], // kv heads
        1usize..=3,                                  // gqa group
        prop_oneof![Just(8usize), Just(16)],         // head dim
        2usize..=6,                                  // experts
        20usize..=90,                                // vocab
        any::<bool>(),
    )
        .prop_map(
            |(architecture, layers, kv, group, hd, experts, vocab, norm)| ModelSpec {
                hybrid: None,
                architecture,
                vocab_size: vocab,
                hidden_size: 32,
                num_layers: layers,
                num_heads: kv * group,
                num_kv_heads: kv,
                head_dim: hd,
                num_experts: experts,
                experts_per_token: 1 + experts / 3,
                expert_intermediate_size: 32,
                norm_topk_prob: norm,
                rope_theta: 1e4,
                rms_norm_eps: 1e-6,
                max_position_embeddings: 64,
                tie_word_embeddings: false,
                formats: WeightFormats {
                    experts: WeightFormat::F32,
                    dense: WeightFormat::F32,
                },
            },
        )
}

fn elements(shape: &[usize], region: &Region) -> Vec<usize> {
    let mut out = Vec::new();
    let mut idx: Vec<usize> = region.iter().map(|r| r.start).collect();
    if region.iter().any(|r| r.is_empty()) {
        return out;
    }
    loop {
        out.push(idx.iter().zip(shape).fold(0, |a, (i, d)| a * d + i));
        let mut axis = shape.len();
        loop {
            if axis == 0 {
                return out;
            }
            axis -= 1;
            idx[axis] += 1;
            if idx[axis] < region[axis].end {
                break;
            }
            idx[axis] = region[axis].start;
        }
    }
}

/// `(node, result)` -> element -> the tasks writing it.
fn writers(p: &Program) -> HashMap<(usize, usize), HashMap<usize, Vec<usize>>> {
    let mut map: HashMap<(usize, usize), HashMap<usize, Vec<usize>>> = HashMap::new();
    for (t, task) in p.tasks.iter().enumerate() {
        let op = &p.ops[task.op];
        for m in &op.members {
            if m.map == mimo_compiler::fuse::UnitMap::Whole {
                continue;
            }
            let idx = NodeIndex::new(m.node);
            let (i, o) = node_io(&p.graph, idx);
            let fop = p.graph.node(idx).op().unwrap();
            let io = Io {
                inputs: &i,
                outputs: &o,
            };
            let Some(units) = m.map.member_units(&task.units, fop.work_units(io)) else {
                continue;
            };
            for (out, region) in fop.access(io, units).writes {
                if op.exports.contains(&(m.node, out)) {
                    for e in elements(&o[out].shape, &region) {
                        map.entry((m.node, out))
                            .or_default()
                            .entry(e)
                            .or_default()
                            .push(t);
                    }
                }
            }
        }
    }
    map
}

/// The first read not covered by a wait, or element not written exactly once.
fn check_events(p: &Program) -> Result<(), String> {
    let deps = dependencies(&p.tasks, &p.events);
    let writers = writers(p);
    for (value, per_element) in &writers {
        let ty = &p.graph.node(NodeIndex::new(value.0)).outputs[value.1];
        if per_element.len() != ty.numel() {
            return Err(format!(
                "{value:?}: {} of {} elements written",
                per_element.len(),
                ty.numel()
            ));
        }
        if let Some((e, ts)) = per_element.iter().find(|(_, ts)| ts.len() != 1) {
            return Err(format!("{value:?}[{e}] written by tasks {ts:?}"));
        }
    }
    for (t, task) in p.tasks.iter().enumerate() {
        let waited: BTreeSet<usize> = deps[t].iter().copied().collect();
        for (value, region) in external_reads(&p.graph, &p.ops[task.op], &task.units) {
            let shape = &p.graph.node(NodeIndex::new(value.0)).outputs[value.1].shape;
            let per_element = writers
                .get(&value)
                .ok_or_else(|| format!("task {t} reads {value:?}, which no task exports"))?;
            for e in elements(shape, &region) {
                let w = per_element[&e][0];
                if w != t && !waited.contains(&w) {
                    return Err(format!(
                        "task {t} reads {value:?}[{e}] written by task {w} without waiting for it"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Runs `steps` steps with workers taking turns at random; an error on a deadlock.
fn interleave(p: &Program, steps: u32, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut counts = vec![0u32; p.events.len()];
    for step in 0..steps {
        let mut next = vec![0usize; p.schedule.queues.len()];
        loop {
            let runnable: Vec<usize> = (0..next.len())
                .filter(|&w| {
                    p.schedule.queues[w].get(next[w]).is_some_and(|&t| {
                        p.tasks[t]
                            .waits
                            .iter()
                            .all(|&e| counts[e] >= p.events[e].producers.len() as u32 * (step + 1))
                    })
                })
                .collect();
            if runnable.is_empty() {
                if (0..next.len()).any(|w| next[w] < p.schedule.queues[w].len()) {
                    return Err(format!("deadlock at step {step}: queue positions {next:?}"));
                }
                break;
            }
            let w = runnable[(rng.next_u64() % runnable.len() as u64) as usize];
            let t = p.schedule.queues[w][next[w]];
            for &e in &p.tasks[t].triggers {
                counts[e] += 1;
            }
            next[w] += 1;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn events_cover_every_read(spec in arb_spec(), workers in 1usize..=8, tokens in 1usize..=3, min_bytes in 64.0f64..4096.0) {
        let graph = decode_graph(&spec, tokens, 12).unwrap();
        let opts = CompileOptions { min_task_bytes: min_bytes, ..CompileOptions::for_machine(Machine { workers, ..Machine::h100() }) };
        let p = compile(&graph, &opts).unwrap();
        prop_assert_eq!(check_events(&p), Ok(()));
    }

    #[test]
    fn schedules_complete_under_any_interleaving(spec in arb_spec(), workers in 1usize..=8, seed in any::<u64>(), splits in 1usize..=4) {
        let graph = decode_graph(&spec, 1, 12).unwrap();
        let opts = CompileOptions {
            min_task_bytes: 256.0,
            attention_splits: Some(splits),
            ..CompileOptions::for_machine(Machine { workers, ..Machine::h100() })
        };
        let p = compile(&graph, &opts).unwrap();
        for i in 0..5 {
            prop_assert_eq!(interleave(&p, 3, seed.wrapping_add(i)), Ok(()));
        }
    }
}

#[test]
fn the_simulator_finds_a_deadlock() {
    // A queue order that is not topological: the consumer first on the only worker.
    let spec = ModelSpec {
        num_layers: 1,
        ..arb_spec_fixed()
    };
    let graph = decode_graph(&spec, 1, 8).unwrap();
    let mut p = compile(
        &graph,
        &CompileOptions::for_machine(Machine {
            workers: 1,
            ..Machine::h100()
        }),
    )
    .unwrap();
    p.schedule.queues[0].reverse();
    let err = interleave(&p, 1, 1).unwrap_err();
    assert!(err.contains("deadlock"), "{err}");
}

fn arb_spec_fixed() -> ModelSpec {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    arb_spec()
        .new_tree(&mut TestRunner::deterministic())
        .unwrap()
        .current()
}

#[test]
fn the_coverage_check_finds_a_missing_wait() {
    let graph = decode_graph(&arb_spec_fixed(), 1, 8).unwrap();
    let mut p = compile(
        &graph,
        &CompileOptions::for_machine(Machine {
            workers: 4,
            ..Machine::h100()
        }),
    )
    .unwrap();
    assert_eq!(check_events(&p), Ok(()));
    let victim = p.tasks.iter().position(|t| !t.waits.is_empty()).unwrap();
    p.tasks[victim].waits.pop();
    let err = check_events(&p).unwrap_err();
    assert!(err.contains("without waiting"), "{err}");
}
