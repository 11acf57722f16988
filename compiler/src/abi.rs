//! The tables the megakernel reads, byte for byte as `templates/common/abi.cuh` declares them:
//! tasks in worker-queue order, their waits and triggers, and each fused op's operands (arena and
//! state offsets, weight-table indices, dimensions) per its kind's documented slots.

use mimo_ir::Graph;
use mimo_ir::graph::{NodeKind, Value};
use mimo_ir::ops::{
    Accept, AttentionPartial, Concat, KvAppend, RmsNorm, Rope, RouterTopK, SiluMul,
};
use petgraph::graph::NodeIndex;

use crate::fuse::{FusedKind, FusedOp, UnitMap};
use crate::plan::Buffer;
use crate::program::Program;

/// `MIMO_ABI_VERSION` of abi.cuh.
pub const ABI_VERSION: u32 = 2;
/// `MIMO_NONE`: an absent slot.
pub const NONE: u32 = u32::MAX;

/// abi.cuh `Task` (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Task {
    pub kind: u32,
    pub op: u32,
    pub unit_begin: u32,
    pub unit_end: u32,
    pub wait_begin: u32,
    pub wait_count: u32,
    pub trigger_begin: u32,
    pub trigger_count: u32,
}

/// abi.cuh `Wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Wait {
    pub event: u32,
    pub per_step: u32,
}

/// abi.cuh `OpArgs` (104 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct OpArgs {
    pub values: [u32; 8],
    pub state: [u32; 2],
    pub weights: [u32; 4],
    pub dims: [u32; 8],
    pub fparams: [f32; 4],
}

/// abi.cuh `TaskKind`.
pub fn task_kind(kind: FusedKind) -> Option<u32> {
    Some(match kind {
        FusedKind::Embed => 0,
        FusedKind::NormMatmul => 1,
        FusedKind::KvAppend => 2,
        FusedKind::AttentionPartial => 3,
        FusedKind::OprojResidual => 4,
        FusedKind::ExpertGateUp => 5,
        FusedKind::ExpertDown => 6,
        FusedKind::LmHead => 7,
        FusedKind::ArgmaxCombine => 8,
        FusedKind::DenseGateUp => 9,
        FusedKind::MatmulResidual => 10,
        FusedKind::Concat => 11,
        FusedKind::Accept => 12,
        FusedKind::Generic => return None,
    })
}

/// Why a program cannot run on the megakernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AbiError {
    #[error("fused op `{0}` has no CUDA template (it mixes ops no device function implements)")]
    NoTemplate(String),
    #[error("fused op `{op}`: {message}")]
    Shape { op: String, message: String },
}

/// Every table of one program, ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct AbiTables {
    pub tasks: Vec<Task>,
    /// The program's task id of each entry of `tasks` (diagnostics name tasks by these).
    pub task_ids: Vec<usize>,
    pub queue_start: Vec<u32>,
    pub waits: Vec<Wait>,
    pub triggers: Vec<u32>,
    pub ops: Vec<OpArgs>,
    /// Weight names in weight-table order (`KernelParams::weights`).
    pub weights: Vec<String>,
}

/// Encodes `program` for the kernel.
pub fn encode(program: &Program) -> Result<AbiTables, AbiError> {
    let graph = &program.graph;
    let weights: Vec<String> = graph
        .nodes_of(|k| matches!(k, NodeKind::Weight))
        .map(|(_, n)| n.name.clone())
        .collect();
    let enc = Encoder {
        program,
        graph,
        weights: &weights,
    };
    let ops = program
        .ops
        .iter()
        .map(|op| enc.op_args(op))
        .collect::<Result<Vec<_>, _>>()?;
    let mut t = AbiTables {
        tasks: vec![],
        task_ids: vec![],
        queue_start: vec![0],
        waits: vec![],
        triggers: vec![],
        ops,
        weights: weights.clone(),
    };
    for queue in &program.schedule.queues {
        for &id in queue {
            let task = &program.tasks[id];
            let op = &program.ops[task.op];
            let kind = task_kind(op.kind).ok_or_else(|| AbiError::NoTemplate(op.name.clone()))?;
            t.tasks.push(Task {
                kind,
                op: task.op as u32,
                unit_begin: task.units.start as u32,
                unit_end: task.units.end as u32,
                wait_begin: t.waits.len() as u32,
                wait_count: task.waits.len() as u32,
                trigger_begin: t.triggers.len() as u32,
                trigger_count: task.triggers.len() as u32,
            });
            t.task_ids.push(id);
            t.waits.extend(task.waits.iter().map(|&e| Wait {
                event: e as u32,
                per_step: program.events[e].producers.len() as u32,
            }));
            t.triggers.extend(task.triggers.iter().map(|&e| e as u32));
        }
        t.queue_start.push(t.tasks.len() as u32);
    }
    Ok(t)
}

struct Encoder<'a> {
    program: &'a Program,
    graph: &'a Graph,
    weights: &'a [String],
}

impl Encoder<'_> {
    fn node(&self, n: usize) -> &mimo_ir::Node {
        self.graph.node(NodeIndex::new(n))
    }

    /// Members of `op` running op `name`, in execution order.
    fn members<'o>(&self, op: &'o FusedOp, name: &str) -> Vec<&'o crate::fuse::Member> {
        op.members
            .iter()
            .filter(|m| self.node(m.node).op().is_some_and(|o| o.name() == name))
            .collect()
    }

    fn one(&self, op: &FusedOp, name: &str) -> Result<usize, AbiError> {
        match self.members(op, name)[..] {
            [m] => Ok(m.node),
            _ => Err(AbiError::NoTemplate(op.name.clone())),
        }
    }

    fn input(&self, node: usize, slot: usize) -> Value {
        self.node(node).inputs[slot]
    }

    /// Arena offset of a value.
    fn arena(&self, v: Value) -> Result<u32, AbiError> {
        self.place(v, Buffer::Arena)
    }

    fn state(&self, v: Value) -> Result<u32, AbiError> {
        self.place(v, Buffer::State)
    }

    fn place(&self, v: Value, buffer: Buffer) -> Result<u32, AbiError> {
        match self.program.memory.location(v) {
            Some(loc) if loc.buffer == buffer => Ok(loc.offset as u32),
            _ => Err(AbiError::Shape {
                op: self.graph.node(v.node).name.clone(),
                message: format!("value has no {buffer:?} place"),
            }),
        }
    }

    /// Weight-table index of the weight operand `v`.
    fn weight(&self, v: Value) -> Result<u32, AbiError> {
        let name = &self.graph.node(v.node).name;
        match self.graph.node(v.node).kind {
            NodeKind::Weight => Ok(self
                .weights
                .iter()
                .position(|w| w == name)
                .expect("listed above") as u32),
            _ => Err(AbiError::Shape {
                op: name.clone(),
                message: "expected a weight operand".into(),
            }),
        }
    }

    fn eps(&self, node: usize) -> f32 {
        self.node(node)
            .op()
            .and_then(|o| o.as_any().downcast_ref::<RmsNorm>())
            .map_or(0.0, |n| n.eps)
    }

    fn shape(&self, v: Value) -> &[usize] {
        &self.graph.value_type(v).shape
    }

    /// The optional rank-3 (per-head) norm among `op`'s whole members, and the rope.
    fn head_prologue(&self, op: &FusedOp) -> Result<(u32, f32, f32), AbiError> {
        let norm = op
            .members
            .iter()
            .find(|m| {
                m.map == UnitMap::Whole
                    && self
                        .node(m.node)
                        .op()
                        .is_some_and(|o| o.as_any().is::<RmsNorm>())
            })
            .map(|m| m.node);
        let rope = self.one(op, "rope")?;
        let theta = self
            .node(rope)
            .op()
            .and_then(|o| o.as_any().downcast_ref::<Rope>())
            .map_or(0.0, |r| r.theta as f32);
        Ok(match norm {
            Some(n) => (
                self.weight(self.input(n, RmsNorm::WEIGHT))?,
                self.eps(n),
                theta,
            ),
            None => (crate::abi::NONE, 0.0, theta),
        })
    }

    /// The positions the group's (one) rope member rotates by.
    fn rope_positions(&self, op: &FusedOp) -> Result<Value, AbiError> {
        Ok(self.input(self.one(op, "rope")?, Rope::POSITIONS))
    }

    /// The value `v` is, or, when `v` is the result of one of `op`'s whole `rms_norm` members,
    /// that norm's input, with the norm's weight index and eps.
    fn through_norm(&self, op: &FusedOp, v: Value) -> Result<(Value, u32, f32), AbiError> {
        let norm = op.members.iter().find(|m| {
            m.node == v.node.index()
                && m.map == UnitMap::Whole
                && self
                    .node(m.node)
                    .op()
                    .is_some_and(|o| o.as_any().is::<RmsNorm>())
        });
        match norm {
            Some(m) => Ok((
                self.input(m.node, RmsNorm::X),
                self.weight(self.input(m.node, RmsNorm::WEIGHT))?,
                self.eps(m.node),
            )),
            None => Ok((v, NONE, 0.0)),
        }
    }

    fn shape_error(&self, op: &FusedOp, message: impl Into<String>) -> AbiError {
        AbiError::Shape {
            op: op.name.clone(),
            message: message.into(),
        }
    }

    fn op_args(&self, op: &FusedOp) -> Result<OpArgs, AbiError> {
        let mut a = OpArgs {
            values: [NONE; 8],
            state: [NONE; 2],
            weights: [NONE; 4],
            ..OpArgs::default()
        };
        let dims = |a: &mut OpArgs, d: &[usize]| {
            d.iter()
                .enumerate()
                .for_each(|(i, &x)| a.dims[i] = x as u32)
        };
        match op.kind {
            FusedKind::Embed => {
                let e = self.one(op, "embedding")?;
                a.values[0] = self.arena(self.input(e, 1))?;
                a.values[1] = self.arena(Value {
                    node: NodeIndex::new(e),
                    output: 0,
                })?;
                a.weights[0] = self.weight(self.input(e, 0))?;
                dims(&mut a, &[self.shape(self.input(e, 0))[1]]);
            }
            FusedKind::NormMatmul
            | FusedKind::LmHead
            | FusedKind::DenseGateUp
            | FusedKind::MatmulResidual => {
                let linears = self.members(op, "linear");
                let first = linears
                    .first()
                    .ok_or_else(|| AbiError::NoTemplate(op.name.clone()))?
                    .node;
                let norm = op.members.iter().find(|m| {
                    m.map == UnitMap::Whole
                        && self
                            .node(m.node)
                            .op()
                            .is_some_and(|o| o.name() == "rms_norm")
                });
                let x = match norm {
                    Some(n) => {
                        a.weights[0] = self.weight(self.input(n.node, RmsNorm::WEIGHT))?;
                        a.fparams[0] = self.eps(n.node);
                        self.input(n.node, RmsNorm::X)
                    }
                    None => self.input(first, 0),
                };
                a.values[0] = self.arena(x)?;
                let k = self.shape(x)[1];
                if op.kind == FusedKind::LmHead {
                    let partial = self.one(op, "argmax_partial")?;
                    let l = linears[0].node;
                    a.values[1] = self.arena(Value {
                        node: NodeIndex::new(l),
                        output: 0,
                    })?;
                    a.values[2] = self.arena(Value {
                        node: NodeIndex::new(partial),
                        output: 0,
                    })?;
                    a.values[3] = self.arena(Value {
                        node: NodeIndex::new(partial),
                        output: 1,
                    })?;
                    a.weights[1] = self.weight(self.input(l, 1))?;
                    let chunk = match op.members.iter().find(|m| m.node == partial).map(|m| m.map) {
                        Some(UnitMap::Tiled { den, .. }) => den,
                        _ => return Err(AbiError::NoTemplate(op.name.clone())),
                    };
                    dims(&mut a, &[k, self.shape(self.input(l, 1))[0], chunk]);
                } else if op.kind == FusedKind::DenseGateUp {
                    let act = self.one(op, "silu_mul")?;
                    let gate = self.input(act, SiluMul::GATE).node.index();
                    let up = self.input(act, SiluMul::UP).node.index();
                    let is_linear = |n: usize| linears.iter().any(|l| l.node == n);
                    if linears.len() != 2 || !is_linear(gate) || !is_linear(up) {
                        return Err(AbiError::NoTemplate(op.name.clone()));
                    }
                    a.values[1] = self.arena(Value {
                        node: NodeIndex::new(act),
                        output: 0,
                    })?;
                    a.weights[1] = self.weight(self.input(gate, 1))?;
                    a.weights[2] = self.weight(self.input(up, 1))?;
                    let n = self.shape(self.input(gate, 1))[0];
                    dims(&mut a, &[k, n, 0, 0, self.shape(x)[0]]);
                } else if op.kind == FusedKind::MatmulResidual {
                    let add = self.one(op, "add")?;
                    let [l] = linears[..] else {
                        return Err(AbiError::NoTemplate(op.name.clone()));
                    };
                    a.values[1] = self.arena(Value {
                        node: NodeIndex::new(add),
                        output: 0,
                    })?;
                    a.values[4] = self.arena(self.other_input(add, l.node)?)?;
                    a.weights[1] = self.weight(self.input(l.node, 1))?;
                    let n = self.shape(self.input(l.node, 1))[0];
                    dims(&mut a, &[k, n, 0, 0, self.shape(x)[0]]);
                } else {
                    if linears.len() > 3 {
                        return Err(AbiError::NoTemplate(op.name.clone()));
                    }
                    a.dims[0] = k as u32;
                    a.dims[4] = self.shape(x)[0] as u32;
                    for (i, l) in linears.iter().enumerate() {
                        a.values[1 + i] = self.arena(Value {
                            node: NodeIndex::new(l.node),
                            output: 0,
                        })?;
                        a.weights[1 + i] = self.weight(self.input(l.node, 1))?;
                        a.dims[1 + i] = self.shape(self.input(l.node, 1))[0] as u32;
                    }
                }
            }
            FusedKind::KvAppend => {
                let appends = self.members(op, "kv_append");
                let [k_app, v_app] = appends[..] else {
                    return Err(AbiError::NoTemplate(op.name.clone()));
                };
                // The key path goes through RoPE; the value path is only reshaped.
                let through_rope = |m: usize| {
                    self.node(self.input(m, KvAppend::NEW).node.index())
                        .op()
                        .is_some_and(|o| o.name() == "rope")
                };
                let (k_app, v_app) = if through_rope(k_app.node) {
                    (k_app.node, v_app.node)
                } else {
                    (v_app.node, k_app.node)
                };
                let raw = |app: usize| -> Value {
                    // new <- [rope <- [norm <-]] reshape <- raw projection
                    let mut v = self.input(app, KvAppend::NEW);
                    while self
                        .node(v.node.index())
                        .op()
                        .is_some_and(|o| o.name() != "linear")
                    {
                        v = self.input(v.node.index(), 0);
                    }
                    v
                };
                a.values[0] = self.arena(raw(k_app))?;
                a.values[1] = self.arena(raw(v_app))?;
                let positions = self.input(k_app, KvAppend::POSITIONS);
                if self.input(v_app, KvAppend::POSITIONS) != positions
                    || self.rope_positions(op)? != positions
                {
                    return Err(self.shape_error(
                        op,
                        "the keys' RoPE and both appends must use one positions value",
                    ));
                }
                a.values[2] = self.arena(positions)?;
                a.state[0] = self.state(self.input(k_app, KvAppend::CACHE))?;
                a.state[1] = self.state(self.input(v_app, KvAppend::CACHE))?;
                let (norm_w, eps, theta) = self.head_prologue(op)?;
                a.weights[0] = norm_w;
                let cache = self.shape(self.input(k_app, KvAppend::CACHE));
                let rows = self.shape(self.input(k_app, KvAppend::NEW))[0];
                dims(&mut a, &[cache[1], cache[2], rows]);
                a.fparams[..2].copy_from_slice(&[eps, theta]);
            }
            FusedKind::AttentionPartial => {
                let p = self.one(op, "attention_partial")?;
                let att = self
                    .node(p)
                    .op()
                    .and_then(|o| o.as_any().downcast_ref::<AttentionPartial>())
                    .expect("named so");
                let mut q = self.input(p, AttentionPartial::Q);
                while self
                    .node(q.node.index())
                    .op()
                    .is_some_and(|o| o.name() != "linear")
                {
                    q = self.input(q.node.index(), 0);
                }
                a.values[0] = self.arena(q)?;
                let positions = self.input(p, AttentionPartial::POSITIONS);
                a.values[1] = self.arena(positions)?;
                // The queries may be rotated by other positions than the causal limit (the
                // DFlash draft's block attends non-causally up to its last position).
                let rope = self.rope_positions(op)?;
                if rope != positions {
                    a.values[4] = self.arena(rope)?;
                }
                a.values[2] = self.arena(Value {
                    node: NodeIndex::new(p),
                    output: 0,
                })?;
                a.values[3] = self.arena(Value {
                    node: NodeIndex::new(p),
                    output: 1,
                })?;
                a.state[0] = self.state(self.input(p, AttentionPartial::K_CACHE))?;
                a.state[1] = self.state(self.input(p, AttentionPartial::V_CACHE))?;
                let (norm_w, eps, theta) = self.head_prologue(op)?;
                a.weights[0] = norm_w;
                let (qs, cache) = (
                    self.shape(self.input(p, 0)),
                    self.shape(self.input(p, AttentionPartial::K_CACHE)),
                );
                dims(&mut a, &[qs[1], cache[1], cache[2], att.splits, cache[0]]);
                a.fparams[..3].copy_from_slice(&[eps, theta, att.scale]);
            }
            FusedKind::OprojResidual => {
                let (c, l, add) = (
                    self.one(op, "attention_combine")?,
                    self.one(op, "linear")?,
                    self.one(op, "add")?,
                );
                a.values[0] = self.arena(self.input(c, 0))?;
                a.values[1] = self.arena(self.input(c, 1))?;
                a.values[2] = self.arena(self.other_input(add, l)?)?;
                a.values[3] = self.arena(Value {
                    node: NodeIndex::new(add),
                    output: 0,
                })?;
                a.weights[0] = self.weight(self.input(l, 1))?;
                let acc = self.shape(self.input(c, 0));
                dims(
                    &mut a,
                    &[acc[1], acc[3], acc[2], self.shape(self.input(l, 1))[0]],
                );
            }
            FusedKind::ExpertGateUp | FusedKind::ExpertDown => {
                let route = self.one(op, "router_topk")?;
                let r = self
                    .node(route)
                    .op()
                    .and_then(|o| o.as_any().downcast_ref::<RouterTopK>())
                    .expect("named so");
                let logits = self.input(route, 0);
                let experts = self.members(op, "expert_linear");
                let w0 = self.shape(self.input(experts[0].node, 2));
                let (e, top_k) = (w0[0], r.k);
                if op.kind == FusedKind::ExpertGateUp {
                    let act = self.one(op, "silu_mul")?;
                    let norm = self.one(op, "rms_norm")?;
                    let gate = self.input(act, SiluMul::GATE).node.index();
                    let up = self.input(act, SiluMul::UP).node.index();
                    a.values[0] = self.arena(self.input(norm, RmsNorm::X))?;
                    a.values[1] = self.arena(logits)?;
                    a.values[2] = self.arena(Value {
                        node: NodeIndex::new(act),
                        output: 0,
                    })?;
                    a.weights[0] = self.weight(self.input(norm, RmsNorm::WEIGHT))?;
                    a.weights[1] = self.weight(self.input(gate, 2))?;
                    a.weights[2] = self.weight(self.input(up, 2))?;
                    a.fparams[0] = self.eps(norm);
                    dims(&mut a, &[w0[2], e, top_k, w0[1], r.normalize as usize]);
                } else {
                    let (down, add) = (experts[0].node, self.one(op, "add")?);
                    let ws = self.one(op, "weighted_sum")?;
                    a.values[0] = self.arena(self.input(down, 0))?;
                    a.values[1] = self.arena(logits)?;
                    a.values[2] = self.arena(self.other_input(add, ws)?)?;
                    a.values[3] = self.arena(Value {
                        node: NodeIndex::new(add),
                        output: 0,
                    })?;
                    a.weights[0] = self.weight(self.input(down, 2))?;
                    dims(&mut a, &[w0[1], e, top_k, w0[2], r.normalize as usize]);
                }
            }
            FusedKind::ArgmaxCombine => {
                let c = self.one(op, "argmax_combine")?;
                a.values[0] = self.arena(self.input(c, 0))?;
                a.values[1] = self.arena(self.input(c, 1))?;
                a.values[2] = self.arena(Value {
                    node: NodeIndex::new(c),
                    output: 0,
                })?;
                dims(&mut a, &[self.shape(self.input(c, 0))[1]]);
            }
            FusedKind::Concat => {
                let c = self.one(op, "concat")?;
                let axis = self
                    .node(c)
                    .op()
                    .and_then(|o| o.as_any().downcast_ref::<Concat>())
                    .expect("named so")
                    .axis;
                for (i, slot) in [Concat::A, Concat::B].into_iter().enumerate() {
                    let (src, norm_w, eps) = self.through_norm(op, self.input(c, slot))?;
                    if self.shape(src).len() != 2 {
                        return Err(self.shape_error(op, "concat operands must be rank 2"));
                    }
                    a.values[i] = self.arena(src)?;
                    a.weights[i] = norm_w;
                    a.fparams[i] = eps;
                }
                // Any other member (a norm no operand comes from) is not in the template.
                if op.members.len() != 1 + a.weights[..2].iter().filter(|&&w| w != NONE).count() {
                    return Err(AbiError::NoTemplate(op.name.clone()));
                }
                a.values[2] = self.arena(Value {
                    node: NodeIndex::new(c),
                    output: 0,
                })?;
                let (sa, sb) = (
                    self.shape(self.input(c, Concat::A)),
                    self.shape(self.input(c, Concat::B)),
                );
                dims(&mut a, &[axis, sa[0], sa[1], sb[0], sb[1]]);
            }
            FusedKind::Accept => {
                let acc = self.one(op, "accept")?;
                a.values[0] = self.arena(self.input(acc, Accept::BLOCK))?;
                a.values[1] = self.arena(self.input(acc, Accept::POSTERIOR))?;
                for (i, output) in [Accept::ACCEPTED, Accept::COMMITTED]
                    .into_iter()
                    .enumerate()
                {
                    a.values[2 + i] = self.arena(Value {
                        node: NodeIndex::new(acc),
                        output,
                    })?;
                }
                dims(&mut a, &[self.shape(self.input(acc, Accept::BLOCK))[0]]);
            }
            FusedKind::Generic => return Err(AbiError::NoTemplate(op.name.clone())),
        }
        Ok(a)
    }

    /// The operand of binary `node` that is not produced by `from`.
    fn other_input(&self, node: usize, from: usize) -> Result<Value, AbiError> {
        self.node(node)
            .inputs
            .iter()
            .copied()
            .find(|v| v.node.index() != from)
            .ok_or_else(|| AbiError::Shape {
                op: self.node(node).name.clone(),
                message: "expected a residual operand".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::tests::tiny;
    use crate::{CompileOptions, Machine, compile};
    use mimo_ir::Architecture;
    use mimo_ir::model::decode_graph;

    #[test]
    fn struct_layouts_match_abi_cuh() {
        assert_eq!(std::mem::size_of::<Task>(), 32);
        assert_eq!(std::mem::size_of::<Wait>(), 8);
        assert_eq!(std::mem::size_of::<OpArgs>(), 104);
        let header = include_str!("../../templates/common/abi.cuh");
        assert!(header.contains(&format!("#define MIMO_ABI_VERSION {ABI_VERSION}u")));
        for (name, value) in [
            ("TASK_EMBED", 0),
            ("TASK_NORM_MATMUL", 1),
            ("TASK_KV_APPEND", 2),
            ("TASK_ATTENTION_PARTIAL", 3),
            ("TASK_OPROJ_RESIDUAL", 4),
            ("TASK_EXPERT_GATE_UP", 5),
            ("TASK_EXPERT_DOWN", 6),
            ("TASK_LM_HEAD", 7),
            ("TASK_ARGMAX_COMBINE", 8),
            ("TASK_DENSE_GATE_UP", 9),
            ("TASK_MATMUL_RESIDUAL", 10),
            ("TASK_CONCAT", 11),
            ("TASK_ACCEPT", 12),
        ] {
            assert!(header.contains(&format!("{name} = {value},")), "{name}");
        }
    }

    #[test]
    fn encodes_every_task_and_operand() {
        for arch in [Architecture::Qwen3Moe, Architecture::Mixtral] {
            let spec = tiny(arch);
            let graph = decode_graph(&spec, 1, 16).unwrap();
            let program = compile(
                &graph,
                &CompileOptions::for_machine(Machine {
                    workers: 5,
                    ..Machine::h100()
                }),
            )
            .unwrap();
            let t = encode(&program).unwrap();
            assert_eq!(t.tasks.len(), program.tasks.len());
            assert_eq!(t.queue_start.len(), 6);
            assert_eq!(*t.queue_start.last().unwrap() as usize, t.tasks.len());
            let mut seen = t.task_ids.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..program.tasks.len()).collect::<Vec<_>>());
            for (i, task) in t.tasks.iter().enumerate() {
                let op = &t.ops[task.op as usize];
                for &v in op.values.iter().filter(|&&v| v != NONE) {
                    assert!(
                        (v as usize) < program.memory.arena_len,
                        "task {i}: arena offset {v}"
                    );
                }
                for &s in op.state.iter().filter(|&&s| s != NONE) {
                    assert!((s as usize) < program.memory.state_len);
                }
                for &w in op.weights.iter().filter(|&&w| w != NONE) {
                    assert!((w as usize) < t.weights.len());
                }
                let waits = &t.waits[task.wait_begin as usize..][..task.wait_count as usize];
                assert!(
                    waits
                        .iter()
                        .all(|w| (w.event as usize) < program.events.len() && w.per_step > 0)
                );
            }
            // Qwen3 has q/k norms; Mixtral has none.
            let kv = program
                .ops
                .iter()
                .position(|o| o.kind == FusedKind::KvAppend)
                .unwrap();
            assert_eq!(t.ops[kv].weights[0] == NONE, arch == Architecture::Mixtral);
        }
    }
}
