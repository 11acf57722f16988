//! Fusion: primitive IR ops become fused ops, each one device function over tiles.
//!
//! Two steps. [`rewrite`] replaces ops that cannot be tiled across the machine as they stand with
//! equivalent split forms (`attention` -> split-K partials + combine, `argmax` -> per-chunk
//! partials + combine). [`fuse`] then groups the ops: every group has one unit space (its tiles
//! are ranges of it), and each member either maps its own units onto it ([`UnitMap::Tiled`]) or is
//! recomputed whole by every tile ([`UnitMap::Whole`], for cheap pure ops such as norms and top-k).
//!
//! Nothing here is model-specific: a tail op ([`mimo_ir::Op::fuse_as_epilogue`]) joins its
//! producer's group when a unit map exists under which every tile computes what it then reads,
//! which is checked with the ops' own declared regions ([`mimo_ir::Op::access`]). Sibling ops of one kind reading one input (the q, k
//! and v projections; the gate and up experts) share a group over their concatenated units.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use mimo_ir::Op;
use mimo_ir::graph::{Graph, GraphBuilder, GraphError, NodeKind, Value};
use mimo_ir::op::{Io, Region};
use mimo_ir::ops::{
    ArgmaxCombine, ArgmaxPartial, Attention, AttentionCombine, AttentionPartial, SiluMul,
};
use petgraph::graph::NodeIndex;

pub use crate::kinds::FusedKind;
use crate::kinds::{OpTypes, classify};
use serde::{Deserialize, Serialize};

/// Choices the rewrite makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteOptions {
    /// Parts each KV head's context is split into.
    pub attention_splits: usize,
    /// Vocabulary entries per argmax chunk (also the lm_head's tile alignment).
    pub argmax_chunk: usize,
}

/// Replaces `attention` and `argmax` with their split forms; every other node is copied.
pub fn rewrite(graph: &Graph, opts: RewriteOptions) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::new(graph.name.clone());
    let mut map: HashMap<Value, Value> = HashMap::new();
    for &idx in graph.topo_order() {
        let node = graph.node(idx);
        let inputs: Vec<Value> = node.inputs.iter().map(|v| map[v]).collect();
        let results = match &node.kind {
            NodeKind::Input => vec![b.input(&node.name, node.outputs[0].clone())?],
            NodeKind::Weight => vec![b.weight(&node.name, node.outputs[0].clone())?],
            NodeKind::State => vec![b.state(&node.name, node.outputs[0].clone())?],
            NodeKind::Op(op) => {
                if let Some(att) = op.as_any().downcast_ref::<Attention>() {
                    let split = AttentionPartial {
                        scale: att.scale,
                        splits: opts.attention_splits,
                        window: att.window,
                    };
                    let (operands, sinks) = inputs.split_at(Attention::SINKS.min(inputs.len()));
                    let parts = b.op(&format!("{}.partial", node.name), split, operands)?;
                    b.op(
                        &node.name,
                        AttentionCombine {},
                        &[&parts[..], sinks].concat(),
                    )?
                } else if op.as_any().is::<mimo_ir::ops::Argmax>() {
                    let chunk = opts
                        .argmax_chunk
                        .min(graph.value_type(node.inputs[0]).last_dim())
                        .max(1);
                    let parts = b.op(
                        &format!("{}.partial", node.name),
                        ArgmaxPartial { chunk },
                        &inputs,
                    )?;
                    b.op(&node.name, ArgmaxCombine {}, &parts)?
                } else {
                    b.op_arc(&node.name, op.clone(), &inputs)?
                }
            }
        };
        for (output, r) in results.into_iter().enumerate() {
            map.insert(Value { node: idx, output }, r);
        }
    }
    for (name, v) in graph.outputs() {
        b.output(name, map[v])?;
    }
    b.finish()
}

/// How a member's work units follow its group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitMap {
    /// Every tile computes the member whole (into tile-local memory).
    Whole,
    /// Group units `offset .. offset + len` are the member's; group unit `offset + u` covers
    /// member units `floor(u * num / den) .. ceil((u + 1) * num / den)`.
    Tiled {
        offset: usize,
        len: usize,
        num: usize,
        den: usize,
    },
}

impl UnitMap {
    fn same(len: usize) -> Self {
        UnitMap::Tiled {
            offset: 0,
            len,
            num: 1,
            den: 1,
        }
    }

    /// The member units a group tile covers, or `None` when the member has no part in it.
    pub fn member_units(&self, tile: &Range<usize>, member_units: usize) -> Option<Range<usize>> {
        match *self {
            UnitMap::Whole => Some(0..member_units),
            UnitMap::Tiled {
                offset,
                len,
                num,
                den,
            } => {
                let (a, b) = (tile.start.max(offset), tile.end.min(offset + len));
                if a >= b {
                    return None;
                }
                let start = (a - offset) * num / den;
                let end = ((b - offset) * num).div_ceil(den).min(member_units);
                (start < end).then_some(start..end)
            }
        }
    }
}

/// One member of a fused op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node index in the (rewritten) graph.
    pub node: usize,
    pub map: UnitMap,
}

/// A fused op: its members in execution order, its unit space, and the values it writes to memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusedOp {
    pub name: String,
    pub kind: FusedKind,
    pub members: Vec<Member>,
    pub units: usize,
    /// Tiles start at multiples of this.
    pub quantum: usize,
    /// `(node, result)` of every value consumers outside the group (or the caller) read.
    pub exports: Vec<(usize, usize)>,
}

impl FusedOp {
    /// The member that is `node`, if any.
    pub fn member(&self, node: usize) -> Option<&Member> {
        self.members.iter().find(|m| m.node == node)
    }
}

/// An error in fusion: a graph the passes cannot group.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("fusing `{node}`: {message}")]
pub struct FuseError {
    pub node: String,
    pub message: String,
}

fn op_of(graph: &Graph, n: NodeIndex) -> Option<&dyn Op> {
    graph.node(n).op().map(|op| op.as_ref())
}

fn units_of(graph: &Graph, n: NodeIndex) -> usize {
    let inputs = graph.operand_types(n);
    let op = op_of(graph, n).expect("an op node");
    op.work_units(Io {
        inputs: &inputs,
        outputs: &graph.node(n).outputs,
    })
}

/// Recomputed by every consumer: cheap, pure, and not a graph result.
fn is_prologue(graph: &Graph, n: NodeIndex) -> bool {
    op_of(graph, n).is_some_and(|op| op.recompute_in_consumers() && op.in_place().is_empty())
        && !graph.outputs().iter().any(|(_, v)| v.node == n)
}

/// A group under construction.
struct Group {
    anchor: NodeIndex,
    tiled: Vec<(NodeIndex, UnitMap)>,
    units: usize,
    quantum: usize,
    /// Groups whose results the members read (directly or through prologues).
    reads: BTreeSet<usize>,
}

/// Groups the ops of `graph` (already [`rewrite`]n) into fused ops.
pub fn fuse(graph: &Graph) -> Result<Vec<FusedOp>, FuseError> {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<NodeIndex, usize> = HashMap::new();
    for &n in graph.topo_order() {
        if op_of(graph, n).is_none() || is_prologue(graph, n) {
            continue;
        }
        let direct = direct_deps(graph, n, &group_of);
        let epilogue = op_of(graph, n).is_some_and(|op| op.fuse_as_epilogue());
        let joined = epilogue
            .then(|| try_epilogue(graph, n, &direct, &group_of, &mut groups))
            .flatten()
            .or_else(|| try_sibling(graph, n, &direct, &mut groups));
        let g = match joined {
            Some(g) => g,
            None => {
                let units = units_of(graph, n);
                let tiled = vec![(n, UnitMap::same(units))];
                groups.push(Group {
                    anchor: n,
                    tiled,
                    units,
                    quantum: 1,
                    reads: BTreeSet::new(),
                });
                groups.len() - 1
            }
        };
        groups[g]
            .reads
            .extend(direct.into_iter().filter(|&d| d != g));
        group_of.insert(n, g);
    }
    groups.iter().map(|g| finish_group(graph, g)).collect()
}

/// The groups whose results `n` reads, directly or through prologue chains.
fn direct_deps(
    graph: &Graph,
    n: NodeIndex,
    group_of: &HashMap<NodeIndex, usize>,
) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<NodeIndex> = graph.node(n).inputs.iter().map(|v| v.node).collect();
    while let Some(p) = stack.pop() {
        if let Some(&g) = group_of.get(&p) {
            out.insert(g);
        } else if is_prologue(graph, p) {
            stack.extend(graph.node(p).inputs.iter().map(|v| v.node));
        }
    }
    out
}

/// Whether group `from` reads, transitively, a result of group `target`.
fn depends_on(groups: &[Group], from: usize, target: usize) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(g) = todo.pop() {
        if g == target {
            return true;
        }
        if seen.insert(g) {
            todo.extend(groups[g].reads.iter().copied());
        }
    }
    false
}

/// Joins `n` to the group of one of its producers as an epilogue, when legal.
fn try_epilogue(
    graph: &Graph,
    n: NodeIndex,
    direct: &BTreeSet<usize>,
    group_of: &HashMap<NodeIndex, usize>,
    groups: &mut [Group],
) -> Option<usize> {
    let candidates: BTreeSet<usize> = graph
        .node(n)
        .inputs
        .iter()
        .filter_map(|v| group_of.get(&v.node).copied())
        .collect();
    for g in candidates {
        // Every other group `n` reads must not itself depend on `g`, or the two would wait on
        // each other; and no prologue of `n` may read a tiled result of `g` (a tile has only its part).
        let cyclic = direct.iter().any(|&d| d != g && depends_on(groups, d, g));
        if cyclic || prologue_reads_group(graph, n, g, group_of) {
            continue;
        }
        let units = units_of(graph, n);
        for map in candidate_maps(groups[g].units, units) {
            if let Some(quantum) = contained(graph, n, map, &groups[g], group_of, g) {
                // An epilogue must not take the group's parallelism away: a reduction over the
                // whole group (the final argmax) would leave it a single tile.
                if quantum > groups[g].quantum && quantum * 2 > groups[g].units {
                    continue;
                }
                let grp = &mut groups[g];
                grp.quantum = lcm(grp.quantum, quantum);
                grp.tiled.push((n, map));
                return Some(g);
            }
        }
    }
    None
}

/// Merges `n` into a group whose anchor is the same kind of op reading the same input.
fn try_sibling(
    graph: &Graph,
    n: NodeIndex,
    direct: &BTreeSet<usize>,
    groups: &mut [Group],
) -> Option<usize> {
    let op = op_of(graph, n)?;
    let is_linear = op.as_any().is::<mimo_ir::ops::Linear>();
    let shared = |a: NodeIndex| {
        let mine: BTreeSet<Value> = data_inputs(graph, n);
        data_inputs(graph, a).iter().any(|v| mine.contains(v))
    };
    let units = units_of(graph, n);
    for g in 0..groups.len() {
        let anchor_op = op_of(graph, groups[g].anchor)?;
        // `n` must not read (even transitively) the group it would join.
        if anchor_op.as_any().type_id() != op.as_any().type_id()
            || direct.iter().any(|&d| depends_on(groups, d, g))
            || !shared(groups[g].anchor)
        {
            continue;
        }
        let paired = is_linear && gate_up_pair(graph, groups[g].anchor, n);
        let grp = &mut groups[g];
        // Projections concatenate their outputs, except the gate and up projections of a dense
        // SwiGLU, which share their units so that the `silu_mul` reading both can join as an
        // epilogue (every tile computes both halves of its features); other ops must have the
        // same units.
        let map = if paired {
            if units != grp.units || grp.tiled.len() != 1 {
                continue;
            }
            UnitMap::same(units)
        } else if is_linear {
            let map = UnitMap::Tiled {
                offset: grp.units,
                len: units,
                num: 1,
                den: 1,
            };
            grp.units += units;
            map
        } else if units == grp.units {
            UnitMap::same(units)
        } else {
            continue;
        };
        grp.tiled.push((n, map));
        return Some(g);
    }
    None
}

/// Whether linears `a` and `b` are the gate and up operands (in either order) of one `silu_mul`.
fn gate_up_pair(graph: &Graph, a: NodeIndex, b: NodeIndex) -> bool {
    graph.consumers(a).any(|(c, _)| {
        let node = graph.node(c);
        node.op().is_some_and(|op| op.as_any().is::<SiluMul>()) && {
            let (gate, up) = (node.inputs[SiluMul::GATE], node.inputs[SiluMul::UP]);
            let pair = [gate, up].map(|v| (v.node, v.output));
            pair == [(a, 0), (b, 0)] || pair == [(b, 0), (a, 0)]
        }
    })
}

/// Non-weight values `n` reads, looking through prologue ops to the values they start from.
fn data_inputs(graph: &Graph, n: NodeIndex) -> BTreeSet<Value> {
    let mut out = BTreeSet::new();
    for v in &graph.node(n).inputs {
        match &graph.node(v.node).kind {
            NodeKind::Weight => {}
            NodeKind::Op(_) if is_prologue(graph, v.node) => {
                out.insert(*v);
                out.extend(data_inputs(graph, v.node));
            }
            _ => {
                out.insert(*v);
            }
        }
    }
    out
}

fn prologue_reads_group(
    graph: &Graph,
    n: NodeIndex,
    g: usize,
    group_of: &HashMap<NodeIndex, usize>,
) -> bool {
    let mut stack: Vec<NodeIndex> = graph
        .node(n)
        .inputs
        .iter()
        .map(|v| v.node)
        .filter(|&p| is_prologue(graph, p))
        .collect();
    while let Some(p) = stack.pop() {
        for v in &graph.node(p).inputs {
            if group_of.get(&v.node) == Some(&g) {
                return true;
            }
            if is_prologue(graph, v.node) {
                stack.push(v.node);
            }
        }
    }
    false
}

/// Maps under which a member of `member_units` could follow a group of `group_units`: the same
/// units, or whole chunks of group units per member unit (e.g. vocabulary entries per argmax chunk).
fn candidate_maps(group_units: usize, member_units: usize) -> Vec<UnitMap> {
    let mut maps = Vec::new();
    if member_units == group_units {
        maps.push(UnitMap::same(group_units));
    } else if member_units < group_units && member_units > 0 {
        let lo = group_units.div_ceil(member_units);
        for den in lo..lo.saturating_mul(2).min(lo + 4096) {
            if group_units.div_ceil(den) == member_units {
                maps.push(UnitMap::Tiled {
                    offset: 0,
                    len: group_units,
                    num: 1,
                    den,
                });
            } else if group_units.div_ceil(den) < member_units {
                break;
            }
        }
    }
    maps
}

/// Whether, under `map`, every tile of group `g` computes (in its tiled members) everything `n`
/// reads from them. Returns the tile alignment the map needs.
fn contained(
    graph: &Graph,
    n: NodeIndex,
    map: UnitMap,
    grp: &Group,
    group_of: &HashMap<NodeIndex, usize>,
    g: usize,
) -> Option<usize> {
    let quantum = match map {
        UnitMap::Tiled { den, .. } => lcm(grp.quantum, den),
        UnitMap::Whole => return None,
    };
    let op = op_of(graph, n)?;
    let inputs = graph.operand_types(n);
    let n_io = Io {
        inputs: &inputs,
        outputs: &graph.node(n).outputs,
    };
    let n_units = units_of(graph, n);
    for tile in sample_tiles(grp.units, quantum) {
        let Some(mine) = map.member_units(&tile, n_units) else {
            continue;
        };
        let reads = op.access(n_io, mine).reads;
        for (slot, region) in reads {
            let v = graph.node(n).inputs[slot];
            if group_of.get(&v.node) != Some(&g) {
                continue;
            }
            let (_, pmap) = grp.tiled.iter().find(|(m, _)| *m == v.node)?;
            let pop = op_of(graph, v.node)?;
            let pin = graph.operand_types(v.node);
            let p_io = Io {
                inputs: &pin,
                outputs: &graph.node(v.node).outputs,
            };
            let theirs = pmap.member_units(&tile, units_of(graph, v.node))?;
            let writes = pop.access(p_io, theirs).writes;
            let covered = writes
                .iter()
                .any(|(out, w)| *out == v.output && region_within(&region, w));
            if !covered {
                return None;
            }
        }
    }
    Some(quantum)
}

fn region_within(inner: &Region, outer: &Region) -> bool {
    inner.len() == outer.len()
        && inner
            .iter()
            .zip(outer)
            .all(|(i, o)| i.is_empty() || (o.start <= i.start && i.end <= o.end))
}

/// Tiles to test a map on: single quanta at the start, middle and end, pairs, and the whole range.
fn sample_tiles(units: usize, quantum: usize) -> Vec<Range<usize>> {
    let q = quantum.max(1);
    let count = units.div_ceil(q);
    let mut starts: BTreeSet<usize> = [
        0,
        count / 2,
        count.saturating_sub(1),
        count.saturating_sub(2),
    ]
    .into();
    starts.retain(|&s| s < count);
    let mut tiles: Vec<Range<usize>> = starts
        .iter()
        .map(|&s| s * q..((s + 1) * q).min(units))
        .collect();
    tiles.extend(starts.iter().map(|&s| s * q..((s + 2) * q).min(units)));
    tiles.push(0..units);
    tiles
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

/// Adds the prologues, names the kind, and lists the exported values.
fn finish_group(graph: &Graph, grp: &Group) -> Result<FusedOp, FuseError> {
    let mut members: BTreeSet<(usize, NodeIndex)> = BTreeSet::new();
    let position: HashMap<NodeIndex, usize> = graph
        .topo_order()
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, i))
        .collect();
    let mut maps: HashMap<NodeIndex, UnitMap> = grp.tiled.iter().copied().collect();
    let mut stack: Vec<NodeIndex> = grp.tiled.iter().map(|&(n, _)| n).collect();
    while let Some(n) = stack.pop() {
        members.insert((position[&n], n));
        for v in &graph.node(n).inputs {
            if is_prologue(graph, v.node) && !maps.contains_key(&v.node) {
                maps.insert(v.node, UnitMap::Whole);
                stack.push(v.node);
            }
        }
    }
    let tiled: BTreeSet<NodeIndex> = grp.tiled.iter().map(|&(n, _)| n).collect();
    let mut exports = Vec::new();
    for &(n, _) in &grp.tiled {
        for output in 0..graph.node(n).outputs.len() {
            let v = Value { node: n, output };
            let outside = graph
                .consumers(n)
                .any(|(c, slot)| graph.node(c).inputs[slot] == v && !tiled.contains(&c));
            let is_result = graph.outputs().iter().any(|(_, o)| *o == v);
            // An updated state value persists to the next step, whoever reads it now.
            let is_state = graph
                .node(n)
                .op()
                .is_some_and(|op| op.in_place().iter().any(|(o, _)| *o == output));
            if outside || is_result || is_state {
                exports.push((n.index(), output));
            }
        }
    }
    let anchor = graph.node(grp.anchor);
    let types = OpTypes::of(members.iter().filter_map(|(_, n)| op_of(graph, *n)));
    Ok(FusedOp {
        name: anchor.name.clone(),
        kind: classify(&types),
        members: members
            .into_iter()
            .map(|(_, n)| Member {
                node: n.index(),
                map: maps[&n],
            })
            .collect(),
        units: grp.units,
        quantum: grp.quantum,
        exports,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mimo_ir::model::decode_graph;
    use mimo_ir::{Architecture, ModelSpec};

    pub fn tiny(architecture: Architecture) -> ModelSpec {
        ModelSpec::tiny(architecture)
    }

    pub fn fused(spec: &ModelSpec, tokens: usize) -> (Graph, Vec<FusedOp>) {
        let g = decode_graph(spec, tokens, 16).unwrap();
        let g = rewrite(
            &g,
            RewriteOptions {
                attention_splits: 3,
                argmax_chunk: 20,
            },
        )
        .unwrap();
        let f = fuse(&g).unwrap();
        (g, f)
    }

    /// The fused ops of one MoE decoder layer, in order.
    pub(crate) const MOE_LAYER: [FusedKind; 7] = [
        FusedKind::NormMatmul,
        FusedKind::KvAppend,
        FusedKind::AttentionPartial,
        FusedKind::OprojResidual,
        FusedKind::NormMatmul,
        FusedKind::ExpertGateUp,
        FusedKind::ExpertDown,
    ];

    #[test]
    fn decode_layers_fuse_into_the_megakernel_ops() {
        for arch in [Architecture::Qwen3Moe, Architecture::Mixtral] {
            let (g, ops) = fused(&tiny(arch), 1);
            for op in &ops {
                let names: Vec<String> = op
                    .members
                    .iter()
                    .map(|m| {
                        format!(
                            "{}{}",
                            g.node(NodeIndex::new(m.node)).name,
                            if m.map == UnitMap::Whole { "*" } else { "" }
                        )
                    })
                    .collect();
                eprintln!(
                    "{:?} units={} q={} [{}] exports={:?}",
                    op.kind,
                    op.units,
                    op.quantum,
                    names.join(", "),
                    op.exports
                );
            }
            let kinds: Vec<FusedKind> = ops.iter().map(|o| o.kind).collect();
            let mut want = vec![FusedKind::Embed];
            want.extend(MOE_LAYER);
            want.extend(MOE_LAYER);
            want.extend([FusedKind::LmHead, FusedKind::ArgmaxCombine]);
            assert_eq!(kinds, want, "{arch:?}");
        }
    }
}
