//! From fused ops to tasks: tiles, the events between them, and where every value lives.
//!
//! - **Tiles.** A fused op's units are cut into at most `workers` tiles, each big enough to be
//!   worth a task (by the ops' cost), aligned to the op's quantum. A tile is one task.
//! - **Events.** A task reads regions of values other fused ops export; it waits for exactly the
//!   producer tasks whose written regions overlap them. Tasks needing the same set of producers
//!   share one event, whose counter every producer increments once per step.
//! - **Memory.** Exported values and the step's inputs live in one f32/i32 arena, the KV caches in
//!   a state buffer that persists across steps; an in-place result shares its operand's place.
//!   Nothing in the arena is reused within a step: a decode step's activations are a few MB, and
//!   without reuse no task can overwrite a value another task still reads.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use mimo_ir::graph::{Graph, NodeKind, Value};
use mimo_ir::op::{Cost, Io, Region, regions_overlap};
use mimo_ir::{Op, TensorType};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use crate::fuse::{FusedOp, UnitMap};
use crate::program::Program;

/// One tile of a fused op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Index of the fused op.
    pub op: usize,
    pub units: Range<usize>,
    /// Events to wait for before running.
    pub waits: Vec<usize>,
    /// Events to increment after running.
    pub triggers: Vec<usize>,
    /// Bytes and flops, by the ops' cost model.
    pub bytes: f64,
    pub flops: f64,
}

/// A counter that `producers` each increment once per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub producers: Vec<usize>,
}

/// Which buffer a value lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Buffer {
    /// Activations and step inputs: f32 and i32 elements, rewritten every step.
    Arena,
    /// KV caches: persists across steps (bf16 on the GPU).
    State,
}

/// Where one value lives: `len` elements from `offset` in `buffer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub buffer: Buffer,
    pub offset: usize,
    pub len: usize,
}

/// Every value that crosses a task boundary, and the sizes of the two buffers (in elements).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MemoryPlan {
    pub arena_len: usize,
    pub state_len: usize,
    /// `((node, result), location)`.
    pub values: Vec<((usize, usize), Location)>,
}

impl MemoryPlan {
    pub fn location(&self, v: Value) -> Option<Location> {
        self.values
            .iter()
            .find(|(k, _)| *k == (v.node.index(), v.output))
            .map(|(_, l)| *l)
    }
}

/// The KV state a program reads and writes, by name: every state node with its place, and the
/// state buffer's size. The programs that continue one sequence (a model's decode and verify
/// programs, a draft's program of each shape) share one state buffer, so they must agree on it
/// exactly: the memory plan lays the state out in graph order, so programs built by one model
/// builder for one cache size do.
#[derive(Debug, Clone, PartialEq)]
pub struct StateLayout {
    pub values: Vec<(String, Location)>,
    /// Elements of the state buffer.
    pub len: usize,
}

impl StateLayout {
    pub fn of(program: &Program) -> Self {
        let graph = &program.graph;
        let values = graph
            .nodes_of(|k| matches!(k, NodeKind::State))
            .filter_map(|(node, n)| {
                let loc = program.memory.location(Value { node, output: 0 })?;
                (loc.buffer == Buffer::State).then(|| (n.name.clone(), loc))
            })
            .collect();
        StateLayout {
            values,
            len: program.memory.state_len,
        }
    }

    /// Why a program whose state is laid out as `theirs` cannot share a buffer laid out as this
    /// one (it would silently read one cache as another), or `None` when it can.
    pub fn mismatch(&self, theirs: &StateLayout) -> Option<String> {
        let (t, o) = (&theirs.values, &self.values);
        match t.iter().zip(o).find(|(a, b)| a != b) {
            Some(((n, a), (m, b))) => Some(format!(
                "its `{n}` is {} words at {}, where the others have `{m}`, {} words at {}",
                a.len, a.offset, b.len, b.offset
            )),
            None if t.len() != o.len() => Some(format!(
                "it has {} state values, the others {}",
                t.len(),
                o.len()
            )),
            None if theirs.len != self.len => Some(format!(
                "its state is {} words, the others' {}",
                theirs.len, self.len
            )),
            None => None,
        }
    }
}

/// Elements are aligned to 64 (256 bytes for f32) so every value starts on a cache-line pair.
const ALIGN: usize = 64;

/// Places graph inputs and exported values in the arena, state in the state buffer.
pub fn plan_memory(graph: &Graph, ops: &[FusedOp]) -> MemoryPlan {
    let mut plan = MemoryPlan::default();
    let place = |plan: &mut MemoryPlan, key: (usize, usize), ty: &TensorType, buffer: Buffer| {
        let len = ty.numel();
        let end = match buffer {
            Buffer::Arena => &mut plan.arena_len,
            Buffer::State => &mut plan.state_len,
        };
        let offset = *end;
        *end += len.div_ceil(ALIGN) * ALIGN;
        plan.values.push((
            key,
            Location {
                buffer,
                offset,
                len,
            },
        ));
    };
    for (idx, node) in graph.nodes() {
        match node.kind {
            NodeKind::Input => place(&mut plan, (idx.index(), 0), &node.outputs[0], Buffer::Arena),
            NodeKind::State => place(&mut plan, (idx.index(), 0), &node.outputs[0], Buffer::State),
            _ => {}
        }
    }
    for op in ops {
        for &(node, output) in &op.exports {
            let idx = NodeIndex::new(node);
            let n = graph.node(idx);
            let aliased = n.op().and_then(|o| {
                o.in_place()
                    .iter()
                    .find(|(out, _)| *out == output)
                    .map(|(_, inp)| n.inputs[*inp])
            });
            match aliased.and_then(|v| plan.location(v)) {
                Some(loc) => plan.values.push(((node, output), loc)),
                None => place(&mut plan, (node, output), &n.outputs[output], Buffer::Arena),
            }
        }
    }
    plan
}

/// The operand and result types of op node `n`.
pub fn node_io(graph: &Graph, n: NodeIndex) -> (Vec<TensorType>, Vec<TensorType>) {
    let node = graph.node(n);
    (graph.operand_types(n), node.outputs.clone())
}

fn member_op(graph: &Graph, node: usize) -> &dyn Op {
    graph
        .node(NodeIndex::new(node))
        .op()
        .expect("fused members are op nodes")
        .as_ref()
}

fn member_units(graph: &Graph, node: usize) -> usize {
    let (i, o) = node_io(graph, NodeIndex::new(node));
    member_op(graph, node).work_units(Io {
        inputs: &i,
        outputs: &o,
    })
}

/// The cost of the task covering `tile` of `op`: tiled members over their share, whole members
/// in full (every task recomputes them).
pub fn tile_cost(graph: &Graph, op: &FusedOp, tile: &Range<usize>) -> Cost {
    let mut cost = Cost::default();
    for m in &op.members {
        let units = member_units(graph, m.node);
        if let Some(r) = m.map.member_units(tile, units) {
            let (i, o) = node_io(graph, NodeIndex::new(m.node));
            cost = cost
                + member_op(graph, m.node).cost(
                    Io {
                        inputs: &i,
                        outputs: &o,
                    },
                    r,
                );
        }
    }
    cost
}

/// Options of the tiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileOptions {
    pub workers: usize,
    /// A task should move at least this many bytes, or its fixed costs (waiting, launching the
    /// tile's loads) dominate.
    pub min_task_bytes: f64,
}

/// Cuts `op`'s units into tiles.
pub fn tiles(graph: &Graph, op: &FusedOp, opts: TileOptions) -> Vec<Range<usize>> {
    let q = op.quantum.max(1);
    let quanta = op.units.div_ceil(q);
    let total = tile_cost(graph, op, &(0..op.units)).bytes;
    let wanted = (total / opts.min_task_bytes).ceil().max(1.0) as usize;
    let count = wanted.min(opts.workers).min(quanta).max(1);
    let per = quanta.div_ceil(count) * q;
    (0..op.units)
        .step_by(per)
        .map(|s| s..(s + per).min(op.units))
        .collect()
}

/// Regions of exported values written by each task: `(node, result)` -> `[(task, region)]`.
type Writers = HashMap<(usize, usize), Vec<(usize, Region)>>;

/// Makes the tasks of every fused op and the events between them.
pub fn plan_tasks(graph: &Graph, ops: &[FusedOp], opts: TileOptions) -> (Vec<Task>, Vec<Event>) {
    let mut tasks: Vec<Task> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        for units in tiles(graph, op, opts) {
            let cost = tile_cost(graph, op, &units);
            tasks.push(Task {
                op: i,
                units,
                waits: vec![],
                triggers: vec![],
                bytes: cost.bytes,
                flops: cost.flops,
            });
        }
    }

    let mut writers: Writers = HashMap::new();
    for (t, task) in tasks.iter().enumerate() {
        let op = &ops[task.op];
        for m in &op.members {
            let Some(units) = tiled_units(graph, m.node, m.map, &task.units) else {
                continue;
            };
            let (i, o) = node_io(graph, NodeIndex::new(m.node));
            for (out, region) in member_op(graph, m.node)
                .access(
                    Io {
                        inputs: &i,
                        outputs: &o,
                    },
                    units,
                )
                .writes
            {
                if op.exports.contains(&(m.node, out)) {
                    writers.entry((m.node, out)).or_default().push((t, region));
                }
            }
        }
    }

    // For each task and producer op, the producer tasks it needs; identical sets share an event.
    let mut events: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
    for t in 0..tasks.len() {
        let mut needs: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (value, region) in external_reads(graph, &ops[tasks[t].op], &tasks[t].units) {
            for (producer, written) in writers.get(&value).into_iter().flatten() {
                if *producer != t && regions_overlap(&region, written) {
                    needs
                        .entry(tasks[*producer].op)
                        .or_default()
                        .push(*producer);
                }
            }
        }
        for (_, mut producers) in needs {
            producers.sort_unstable();
            producers.dedup();
            let next = events.len();
            let e = *events.entry(producers).or_insert(next);
            tasks[t].waits.push(e);
        }
    }
    let mut event_list = vec![Event { producers: vec![] }; events.len()];
    for (producers, e) in events {
        for &p in &producers {
            tasks[p].triggers.push(e);
        }
        event_list[e] = Event { producers };
    }
    for task in &mut tasks {
        task.waits.sort_unstable();
        task.triggers.sort_unstable();
    }
    (tasks, event_list)
}

/// The member units a tiled member computes for a tile; `None` for whole members (they run in
/// tile-local memory and export nothing) and for members the tile does not reach.
fn tiled_units(
    graph: &Graph,
    node: usize,
    map: UnitMap,
    tile: &Range<usize>,
) -> Option<Range<usize>> {
    match map {
        UnitMap::Whole => None,
        map => map.member_units(tile, member_units(graph, node)),
    }
}

/// The regions of values produced outside `op` that the tile `units` reads.
pub fn external_reads(
    graph: &Graph,
    op: &FusedOp,
    units: &Range<usize>,
) -> Vec<((usize, usize), Region)> {
    let inside = |node: usize| op.member(node).is_some();
    let mut reads = Vec::new();
    for m in &op.members {
        let Some(r) = m.map.member_units(units, member_units(graph, m.node)) else {
            continue;
        };
        let idx = NodeIndex::new(m.node);
        let (i, o) = node_io(graph, idx);
        for (slot, region) in member_op(graph, m.node)
            .access(
                Io {
                    inputs: &i,
                    outputs: &o,
                },
                r,
            )
            .reads
        {
            let v = graph.node(idx).inputs[slot];
            let producer = graph.node(v.node);
            if matches!(producer.kind, NodeKind::Op(_)) && !inside(v.node.index()) {
                reads.push(((v.node.index(), v.output), region));
            }
        }
    }
    reads
}

#[cfg(test)]
mod tests {
    use mimo_ir::model::decode_graph;
    use mimo_ir::model::dflash::verify_graph;
    use mimo_ir::{Architecture, ModelSpec};

    use super::*;
    use crate::{CompileOptions, Machine, compile};

    fn layout(graph: Graph) -> StateLayout {
        let opts = CompileOptions::for_machine(Machine {
            workers: 2,
            ..Machine::h100()
        });
        StateLayout::of(&compile(&graph, &opts).unwrap())
    }

    #[test]
    fn every_target_program_shares_one_state_layout_and_other_sizes_are_refused() {
        let spec = ModelSpec::tiny(Architecture::Qwen3Moe);
        let ours = layout(decode_graph(&spec, 1, 16).unwrap());
        let verify = layout(verify_graph(&spec, 4, 16, &[0]).unwrap());
        assert_eq!(ours.mismatch(&verify), None);
        let longer = layout(decode_graph(&spec, 1, 32).unwrap());
        let why = ours.mismatch(&longer).unwrap();
        assert!(why.contains("v_cache` is 1536 words at 0"), "{why}");
        let mut bigger = ours.clone();
        bigger.len += 1;
        assert_eq!(
            ours.mismatch(&bigger).unwrap(),
            format!(
                "its state is {} words, the others' {}",
                ours.len + 1,
                ours.len
            )
        );
        bigger.values.pop();
        assert!(ours.mismatch(&bigger).unwrap().starts_with("it has"));
    }
}
