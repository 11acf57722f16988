//! The fused kinds the megakernel runs, one module each: which op types it fuses, its operand
//! struct (declared once, for Rust and C, by `#[derive(CStruct)]`), its encoder from a fused op's
//! members to those operands, and its shared-memory need. The list in `task_kinds!` below is the
//! only place kinds are enumerated: [`FusedKind`], the kind numbers, the C `TaskKind` enum, the
//! `OpArgs` union and the kernel's dispatch (`MIMO_TASK_KINDS`) are all generated from it, in
//! its order.
//!
//! Adding a fused kind: a module here with its `fuses` (naming every op type its template
//! implements, see [`classify`]), its `#[derive(CStruct)]` operands, its
//! `encode` and its `shared_memory`; one line in the list; and its device function
//! `run_<name>(const KernelParams&, const <Args>&, u32 unit_begin, u32 unit_end, u8* smem)` in
//! `templates/ops/<name>.cuh`, included by `templates/megakernel.cu`.

// The operand structs' docs are also their C comments in generated.cuh: shapes such as [T, H]
// there are text, not intra-doc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod accept;
mod argmax_combine;
mod attention_partial;
mod concat;
mod dense_projection;
mod embed;
mod experts;
mod kv_append;
mod lm_head;
mod oproj_residual;
#[cfg(test)]
mod tests;

use std::any::TypeId;
use std::collections::BTreeSet;

use mimo_ir::graph::{NodeKind, Value};
use mimo_ir::ops::{Linear, Reshape, RmsNorm, Rope, Scale};
use mimo_ir::{Graph, Op};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use crate::abi::{AbiError, CStruct, NONE, Operand, WeightIndex};
use crate::fuse::{FusedOp, Member, UnitMap};
use crate::plan::Buffer;
use crate::program::Program;

pub use accept::AcceptArgs;
pub use argmax_combine::ArgmaxCombineArgs;
pub use attention_partial::AttentionPartialArgs;
pub use concat::ConcatArgs;
pub use dense_projection::DenseProjectionArgs;
pub use embed::EmbedArgs;
pub use experts::{ExpertDownArgs, ExpertGateUpArgs, ExpertRouting};
pub use kv_append::KvAppendArgs;
pub use lm_head::LmHeadArgs;
pub use oproj_residual::OprojResidualArgs;

/// One fused kind as the kernel knows it.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    pub kind: FusedKind,
    /// snake_case: the `OpArgs` member and the device function `run_<name>`.
    pub name: &'static str,
    pub args_name: &'static str,
    /// Appends the C declarations of the operand struct (and of those it nests).
    pub declare: fn(&mut Vec<&'static str>),
    pub args_words: usize,
}

impl KindInfo {
    /// The C enumerator (`TASK_NORM_MATMUL`).
    pub fn c_enum(&self) -> String {
        format!("TASK_{}", self.name.to_uppercase())
    }
}

macro_rules! task_kinds {
    ($($variant:ident: $name:ident($args:ty) = $fuses:path, $encode:path, $smem:path;)*) => {
        /// Which device function runs a fused op: one per line of the `task_kinds!` list.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum FusedKind {
            $($variant,)*
            /// A group no template implements: runs on the CPU schedule executor only.
            Generic,
        }

        /// The kind of a group whose members are ops of `types`: the first kind in the list
        /// that fuses them. A kind fuses a group only when its template implements every member
        /// (`OpTypes::only`): a group with any other op is `Generic`, refused on the megakernel
        /// with an error naming it, never run with the op silently left out.
        pub fn classify(types: &OpTypes) -> FusedKind {
            $(if $fuses(types) {
                return FusedKind::$variant;
            })*
            FusedKind::Generic
        }

        /// A fused op's operands, as its kind's struct.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TaskArgs {
            $($variant($args),)*
        }

        /// Every kind the kernel runs; a kind's number is its index here.
        pub const KINDS: &[KindInfo] = &[$(KindInfo {
            kind: FusedKind::$variant,
            name: stringify!($name),
            args_name: <$args as CStruct>::C_NAME,
            declare: <$args as CStruct>::declare,
            args_words: <$args as CStruct>::WORDS,
        }),*];

        impl TaskArgs {
            pub fn kind(&self) -> FusedKind {
                match self {
                    $(TaskArgs::$variant(_) => FusedKind::$variant,)*
                }
            }

            pub fn write_words(&self, out: &mut Vec<u32>) {
                match self {
                    $(TaskArgs::$variant(a) => a.write_words(out),)*
                }
            }

            pub fn operands(&self) -> Vec<(Operand, &'static str, u32)> {
                match self {
                    $(TaskArgs::$variant(a) => a.operands(),)*
                }
            }
        }

        /// The dynamic shared memory a worker block needs for a kernel of `shape`: the largest
        /// of the kinds' needs.
        pub fn shared_memory_bytes(shape: &KernelShape) -> usize {
            [$($smem(shape)),*].into_iter().max().unwrap_or(0)
        }

        fn encode_op(cx: &Encoder, op: &FusedOp) -> Result<TaskArgs, AbiError> {
            match op.kind {
                $(FusedKind::$variant => $encode(cx, op).map(TaskArgs::$variant),)*
                FusedKind::Generic => Err(cx.no_template(op)),
            }
        }
    };
}

// Each line: the kind, its snake_case name (the `OpArgs` member, `run_<name>`, `TASK_<NAME>`), its
// operand struct, which ops it fuses, its encoder. A group is classified by the first line whose
// `fuses` holds, so the more specific kinds come first (norm_matmul, plain projections, last).
task_kinds! {
    Embed: embed(EmbedArgs) = embed::fuses, embed::encode, no_shared_memory;
    KvAppend: kv_append(KvAppendArgs) = kv_append::fuses, kv_append::encode, no_shared_memory;
    AttentionPartial: attention_partial(AttentionPartialArgs) =
        attention_partial::fuses, attention_partial::encode, attention_partial::shared_memory;
    ExpertGateUp: expert_gate_up(ExpertGateUpArgs) =
        experts::fuses_gate_up, experts::encode_gate_up, experts::gate_up_shared_memory;
    ExpertDown: expert_down(ExpertDownArgs) =
        experts::fuses_down, experts::encode_down, experts::down_shared_memory;
    LmHead: lm_head(LmHeadArgs) = lm_head::fuses, lm_head::encode, lm_head::shared_memory;
    ArgmaxCombine: argmax_combine(ArgmaxCombineArgs) =
        argmax_combine::fuses, argmax_combine::encode, no_shared_memory;
    OprojResidual: oproj_residual(OprojResidualArgs) =
        oproj_residual::fuses, oproj_residual::encode, oproj_residual::shared_memory;
    DenseGateUp: dense_gate_up(DenseProjectionArgs) = dense_projection::fuses_dense_gate_up,
        dense_projection::encode_dense_gate_up, dense_projection::shared_memory;
    MatmulResidual: matmul_residual(DenseProjectionArgs) = dense_projection::fuses_matmul_residual,
        dense_projection::encode_matmul_residual, dense_projection::shared_memory;
    Concat: concat(ConcatArgs) = concat::fuses, concat::encode, no_shared_memory;
    Accept: accept(AcceptArgs) = accept::fuses, accept::encode, no_shared_memory;
    NormMatmul: norm_matmul(DenseProjectionArgs) = dense_projection::fuses_norm_matmul,
        dense_projection::encode_norm_matmul, dense_projection::shared_memory;
}

/// The sizes a kernel is built for, from which each kind's shared-memory need follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelShape {
    /// Tokens per step (`MIMO_TOKENS`).
    pub tokens: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Query and key head dim.
    pub head_dim: usize,
    pub v_head_dim: usize,
    pub top_k: usize,
    pub experts: usize,
    pub expert_intermediate: usize,
}

impl KernelShape {
    /// A shape that bounds every layer of `spec` at `tokens` per step: the most heads, the
    /// fewest KV heads (so the largest query group) and the widest heads of any layer's
    /// attention (MiMo-V2's full and sliding layers differ).
    pub fn of(spec: &mimo_ir::ModelSpec, tokens: usize) -> Self {
        let layers: Vec<_> = (0..spec.num_layers.max(1))
            .map(|l| spec.attention(l))
            .collect();
        let most = |f: fn(&mimo_ir::model::AttentionSpec) -> usize| {
            layers.iter().map(f).max().unwrap_or(0)
        };
        KernelShape {
            tokens,
            hidden: spec.hidden_size,
            heads: most(|a| a.num_heads),
            kv_heads: layers.iter().map(|a| a.num_kv_heads).min().unwrap_or(1),
            head_dim: most(|a| a.head_dim),
            v_head_dim: most(|a| a.v_head_dim),
            top_k: spec.experts_per_token,
            experts: spec.num_experts,
            expert_intermediate: spec.expert_intermediate_size,
        }
    }
}

/// The pieces of shared memory the templates carve (`Carve` in templates/common/project.cuh), in
/// bytes, each rounded up to 16: the kinds' needs are sums of these, in the templates' order. A
/// task that needs more than the launch passes stops the kernel with a diagnostic naming the
/// bytes it needs.
pub(crate) mod smem {
    use crate::codegen::THREADS;

    const WARPS: usize = THREADS / 32;

    pub fn up16(x: usize) -> usize {
        x.div_ceil(16) * 16
    }

    /// `rows` activation rows of `k` staged as bf16 (padded by 2 granules per row).
    pub fn stage(rows: usize, k: usize) -> usize {
        up16(rows * (k.div_ceil(8).div_ceil(8) * 8 + 2) * 16)
    }

    /// The per-warp accumulator scratch of a projection.
    pub fn accumulators(tokens: usize) -> usize {
        up16(2048 * WARPS * tokens.div_ceil(8))
    }

    /// The row-norm prologue's per-warp partial sums.
    pub fn prologue(tokens: usize) -> usize {
        up16(64 + 4 * WARPS * tokens)
    }

    /// The routing table of `tokens` tokens over `experts` experts, `top_k` each.
    pub fn routing(tokens: usize, top_k: usize, experts: usize) -> usize {
        up16(12 * tokens * top_k + 4 * tokens * tokens * top_k + 8 * experts + 16)
    }
}

/// Kinds whose device function uses no shared memory.
fn no_shared_memory(_: &KernelShape) -> usize {
    0
}

/// The op types of a group's members, for the kinds' `fuses`.
#[derive(Debug, Clone, Default)]
pub struct OpTypes(BTreeSet<TypeId>);

impl OpTypes {
    pub fn of<'a>(ops: impl IntoIterator<Item = &'a dyn Op>) -> Self {
        OpTypes(ops.into_iter().map(|op| op.as_any().type_id()).collect())
    }

    pub fn has<T: Op + 'static>(&self) -> bool {
        self.0.contains(&TypeId::of::<T>())
    }

    /// Whether every member is of one of `allowed` (see [`op_type`]).
    pub fn only(&self, allowed: &[TypeId]) -> bool {
        self.0.iter().all(|t| allowed.contains(t))
    }
}

/// The ops a per-head prologue (the q or k path of attention) is made of, and `op`: the
/// projection's reshape into heads, the optional per-head norm and the rope.
fn head_prologue_and(op: TypeId) -> [TypeId; 4] {
    [
        op,
        op_type::<Reshape>(),
        op_type::<RmsNorm>(),
        op_type::<Rope>(),
    ]
}

/// A q or k path's per-head prologue as the templates apply it (`head_norm_rope` in
/// templates/common/norm.cuh).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HeadPrologue {
    /// The per-head RMSNorm's weight, MIMO_NONE for none.
    pub norm: WeightIndex,
    pub eps: f32,
    pub rope_theta: f32,
    /// Leading dims of a head that rotate (the head dim unless the rope is partial).
    pub rotary_dim: u32,
}

/// The type of op `T`, for [`OpTypes::only`].
pub fn op_type<T: Op + 'static>() -> TypeId {
    TypeId::of::<T>()
}

/// Words of one `OpArgs` (the union): the largest kind's.
pub const OP_ARGS_WORDS: usize = {
    let mut max = 0;
    let mut i = 0;
    while i < KINDS.len() {
        if KINDS[i].args_words > max {
            max = KINDS[i].args_words;
        }
        i += 1;
    }
    max
};

impl TaskArgs {
    /// The `TaskKind` number.
    pub fn kind_number(&self) -> u32 {
        let kind = self.kind();
        KINDS
            .iter()
            .position(|k| k.kind == kind)
            .expect("every TaskArgs variant is listed") as u32
    }
}

/// Each fused op's operands, and the weight table they index (weight names in table order).
pub fn encode_ops(program: &Program) -> Result<(Vec<TaskArgs>, Vec<String>), AbiError> {
    let graph = &program.graph;
    let weights: Vec<String> = graph
        .nodes_of(|k| matches!(k, NodeKind::Weight))
        .map(|(_, n)| n.name.clone())
        .collect();
    let cx = Encoder {
        program,
        graph,
        weights: &weights,
    };
    let ops = program
        .ops
        .iter()
        .map(|op| encode_op(&cx, op))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ops, weights))
}

/// What the kinds' encoders read a fused op through: its members by op type, and where the
/// memory plan put the values they touch.
pub(crate) struct Encoder<'a> {
    program: &'a Program,
    graph: &'a Graph,
    weights: &'a [String],
}

impl Encoder<'_> {
    pub fn node(&self, n: usize) -> &mimo_ir::Node {
        self.graph.node(NodeIndex::new(n))
    }

    /// The attributes of member `n`, an op of type `T`.
    pub fn attrs<T: Op + 'static>(&self, n: usize) -> Option<&T> {
        self.node(n).op()?.as_any().downcast_ref::<T>()
    }

    pub fn is<T: Op + 'static>(&self, n: usize) -> bool {
        self.attrs::<T>(n).is_some()
    }

    /// Members of `op` that are ops of type `T`, in execution order.
    pub fn members<'o, T: Op + 'static>(&self, op: &'o FusedOp) -> Vec<&'o Member> {
        op.members.iter().filter(|m| self.is::<T>(m.node)).collect()
    }

    /// The one member of type `T` (a template has no place for two).
    pub fn one<T: Op + 'static>(&self, op: &FusedOp) -> Result<usize, AbiError> {
        match self.members::<T>(op)[..] {
            [m] => Ok(m.node),
            _ => Err(self.no_template(op)),
        }
    }

    /// The whole (per-tile recomputed) `rms_norm` member, if any.
    pub fn whole_norm(&self, op: &FusedOp) -> Option<usize> {
        op.members
            .iter()
            .find(|m| m.map == UnitMap::Whole && self.is::<RmsNorm>(m.node))
            .map(|m| m.node)
    }

    pub fn input(&self, node: usize, slot: usize) -> Value {
        self.node(node).inputs[slot]
    }

    pub fn output(&self, node: usize, output: usize) -> Value {
        Value {
            node: NodeIndex::new(node),
            output,
        }
    }

    /// Arena offset of a value.
    pub fn arena(&self, v: Value) -> Result<u32, AbiError> {
        self.place(v, Buffer::Arena)
    }

    /// Arena offset of output `output` of node `node`.
    pub fn arena_out(&self, node: usize, output: usize) -> Result<u32, AbiError> {
        self.arena(self.output(node, output))
    }

    pub fn state(&self, v: Value) -> Result<u32, AbiError> {
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
    pub fn weight(&self, v: Value) -> Result<WeightIndex, AbiError> {
        let node = self.graph.node(v.node);
        match node.kind {
            NodeKind::Weight => Ok(self
                .weights
                .iter()
                .position(|w| *w == node.name)
                .expect("every weight node is in the table")
                as u32),
            _ => Err(AbiError::Shape {
                op: node.name.clone(),
                message: "expected a weight operand".into(),
            }),
        }
    }

    /// The weight index and eps of `rms_norm` member `norm`.
    pub fn norm(&self, norm: usize) -> Result<(WeightIndex, f32), AbiError> {
        let eps = self.attrs::<RmsNorm>(norm).map_or(0.0, |n| n.eps);
        Ok((self.weight(self.input(norm, RmsNorm::WEIGHT))?, eps))
    }

    pub fn shape(&self, v: Value) -> &[usize] {
        &self.graph.value_type(v).shape
    }

    /// The group's per-head prologue: its optional norm and its (one) rope.
    pub fn head_prologue(&self, op: &FusedOp) -> Result<HeadPrologue, AbiError> {
        let rope = self.one::<Rope>(op)?;
        let attrs = self.attrs::<Rope>(rope).expect("a member of its type");
        let head_dim = self.shape(self.input(rope, Rope::X))[2];
        let (norm, eps) = match self.whole_norm(op) {
            Some(n) => self.norm(n)?,
            None => (NONE, 0.0),
        };
        Ok(HeadPrologue {
            norm,
            eps,
            rope_theta: attrs.theta as f32,
            rotary_dim: attrs.rotating(head_dim) as u32,
        })
    }

    /// What `op`'s projections read: the input of its whole `rms_norm` member, with the norm's
    /// weight and eps, or without one `linear`'s own input (weight MIMO_NONE).
    pub fn projection_input(
        &self,
        op: &FusedOp,
        linear: usize,
    ) -> Result<(Value, WeightIndex, f32), AbiError> {
        match self.whole_norm(op) {
            Some(n) => {
                let (w, eps) = self.norm(n)?;
                Ok((self.input(n, RmsNorm::X), w, eps))
            }
            None => Ok((self.input(linear, Linear::X), NONE, 0.0)),
        }
    }

    /// The positions the group's (one) rope member rotates by.
    pub fn rope_positions(&self, op: &FusedOp) -> Result<Value, AbiError> {
        Ok(self.input(self.one::<Rope>(op)?, Rope::POSITIONS))
    }

    /// The projection `v` is computed from through reshapes, norms and ropes: the raw
    /// projection output a head prologue starts from. Any other op on the way (one the prologue
    /// would not apply) is refused. (Today such an op is a group of its own that no kind
    /// fuses, refused before this; the check keeps a future kind that could encode it from being
    /// read past.)
    pub fn raw_projection(&self, op: &FusedOp, mut v: Value) -> Result<Value, AbiError> {
        loop {
            let Some(o) = self.node(v.node.index()).op() else {
                return Ok(v);
            };
            let o = o.as_any();
            if o.is::<Linear>() {
                return Ok(v);
            }
            if !(o.is::<Reshape>() || o.is::<RmsNorm>() || o.is::<Rope>()) {
                let name = &self.node(v.node.index()).name;
                return Err(
                    self.shape_error(op, format!("its head prologue cannot apply `{name}`"))
                );
            }
            v = self.input(v.node.index(), 0);
        }
    }

    /// The projection a cached value is computed from through reshapes and scales (MiMo-V2's
    /// value scale), and the product of the scales' factors. Any other op on the way (a norm or
    /// a rope the value template would not apply) is refused, naming it.
    pub fn value_projection(&self, op: &FusedOp, mut v: Value) -> Result<(Value, f32), AbiError> {
        let mut factor = 1.0f32;
        loop {
            let Some(o) = self.node(v.node.index()).op() else {
                return Ok((v, factor));
            };
            let o = o.as_any();
            if o.is::<Linear>() {
                return Ok((v, factor));
            }
            if let Some(scale) = o.downcast_ref::<Scale>() {
                factor *= scale.factor;
            } else if !o.is::<Reshape>() {
                let name = &self.node(v.node.index()).name;
                return Err(self.shape_error(op, format!("its value path cannot apply `{name}`")));
            }
            v = self.input(v.node.index(), 0);
        }
    }

    /// The value `v` is, or, when `v` is the result of one of `op`'s whole `rms_norm` members,
    /// that norm's input, with the norm's weight index and eps.
    pub fn through_norm(
        &self,
        op: &FusedOp,
        v: Value,
    ) -> Result<(Value, WeightIndex, f32), AbiError> {
        let norm = op.members.iter().find(|m| {
            m.node == v.node.index() && m.map == UnitMap::Whole && self.is::<RmsNorm>(m.node)
        });
        match norm {
            Some(m) => {
                let (w, eps) = self.norm(m.node)?;
                Ok((self.input(m.node, RmsNorm::X), w, eps))
            }
            None => Ok((v, NONE, 0.0)),
        }
    }

    /// The operand of binary `node` that is not produced by `from`.
    pub fn other_input(&self, node: usize, from: usize) -> Result<Value, AbiError> {
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

    pub fn no_template(&self, op: &FusedOp) -> AbiError {
        AbiError::NoTemplate(op.name.clone())
    }

    pub fn shape_error(&self, op: &FusedOp, message: impl Into<String>) -> AbiError {
        AbiError::Shape {
            op: op.name.clone(),
            message: message.into(),
        }
    }
}
