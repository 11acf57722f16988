//! The routed experts, two kinds that each recompute the routing of every token from its router
//! logits: scores p = softmax(logits[t, :]) or (MiMo-V2) sigmoid(logits[t, :]); the TOP_K largest
//! of p + selection_bias (the lower index first on ties), in descending order; weights the
//! chosen p, renormalised to sum 1 when `normalize` (sigmoid: sum + 1e-20), times `scale`.
//!
//! - `expert_gate_up`: h = rms_norm(x, norm_w); for routed slot j of token t (expert e = id[t, j])
//!   and feature n in the tile: act[t, j, n] = silu(h[t] . gate[e, n]) * (h[t] . up[e, n]).
//!   Units: expert features (I).
//! - `expert_down`: out[t, n] = residual[t, n] + sum_j w[t, j] * (act[t, j] . down[e_j, n])
//!   (slots summed in order j = 0, 1, ...). Units: hidden features (H).

use mimo_ir::ops::router_topk::RouterScoring;
use mimo_ir::ops::{Add, ExpertLinear, RmsNorm, RouterTopK, SiluMul, WeightedSum};

use super::{Encoder, KernelShape, OpTypes, op_type, smem};
use crate::abi::{AbiError, ArenaOffset, CStruct, NONE, WeightIndex};
use crate::fuse::FusedOp;

/// The routing both expert kinds recompute from the router logits (see this module).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct ExpertRouting {
    /// [T, E]
    pub logits: ArenaOffset,
    /// E
    pub experts: u32,
    pub top_k: u32,
    /// 0 or 1: the top-k weights renormalised to sum 1
    pub normalize: u32,
    /// 0: softmax scores; 1: sigmoid scores
    pub sigmoid: u32,
    /// [E] added to the scores for the choice only, or MIMO_NONE
    pub selection_bias: WeightIndex,
    /// multiplies the final weights (MiMo-V2's routed_scaling_factor; 1 elsewhere)
    pub scale: f32,
}

/// TASK_EXPERT_GATE_UP's operands (compiler/src/kinds/experts.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct ExpertGateUpArgs {
    /// [T, H]
    pub x: ArenaOffset,
    /// [T, TOP_K, I]
    pub act: ArenaOffset,
    /// [H]
    pub norm: WeightIndex,
    /// [E * I, H]
    pub gate: WeightIndex,
    /// [E * I, H]
    pub up: WeightIndex,
    pub routing: ExpertRouting,
    pub hidden: u32,
    pub intermediate: u32,
    pub eps: f32,
}

/// TASK_EXPERT_DOWN's operands (compiler/src/kinds/experts.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct ExpertDownArgs {
    /// [T, TOP_K, I]
    pub act: ArenaOffset,
    /// [T, H]
    pub residual: ArenaOffset,
    /// [T, H]
    pub out: ArenaOffset,
    /// [E * H, I]
    pub down: WeightIndex,
    pub routing: ExpertRouting,
    pub hidden: u32,
    pub intermediate: u32,
}

pub(super) fn fuses_gate_up(ops: &OpTypes) -> bool {
    let members = [
        op_type::<ExpertLinear>(),
        op_type::<SiluMul>(),
        op_type::<RouterTopK>(),
        op_type::<RmsNorm>(),
    ];
    ops.has::<ExpertLinear>() && ops.has::<SiluMul>() && ops.only(&members)
}

pub(super) fn fuses_down(ops: &OpTypes) -> bool {
    let members = [
        op_type::<ExpertLinear>(),
        op_type::<WeightedSum>(),
        op_type::<RouterTopK>(),
        op_type::<Add>(),
    ];
    ops.has::<ExpertLinear>() && ops.has::<WeightedSum>() && ops.only(&members)
}

/// The routing table and the normed rows of H staged whole.
pub(super) fn gate_up_shared_memory(s: &KernelShape) -> usize {
    smem::routing(s.tokens, s.top_k, s.experts)
        + smem::prologue(s.tokens)
        + smem::accumulators(s.tokens)
        + smem::stage(s.tokens, s.hidden)
}

/// The routing table and T * TOP_K activation rows staged in slabs of I: up to 1024 at once,
/// less (in multiples of 256, the template picks the widest that fits) where that would pass the
/// block's limit, as it does at T = 16 (a DFlash verify block) for Qwen3-30B-A3B.
pub(super) fn down_shared_memory(s: &KernelShape) -> usize {
    let fixed = smem::routing(s.tokens, s.top_k, s.experts) + smem::accumulators(s.tokens);
    let rows = s.tokens * s.top_k;
    let mut slab = s.expert_intermediate.min(1024);
    while slab > 256 && fixed + smem::stage(rows, slab) > crate::codegen::MAX_DYNAMIC_SMEM {
        slab = (slab - 1) / 256 * 256;
    }
    fixed + smem::stage(rows, slab)
}

/// The router member's routing, and the first expert linear with its weight shape [E, N, K].
fn routing<'c>(
    cx: &'c Encoder,
    op: &FusedOp,
) -> Result<(ExpertRouting, &'c [usize], usize), AbiError> {
    let route = cx.one::<RouterTopK>(op)?;
    let router = cx.attrs::<RouterTopK>(route).expect("a member of its type");
    let first = cx
        .members::<ExpertLinear>(op)
        .first()
        .ok_or_else(|| cx.no_template(op))?
        .node;
    let weight = cx.shape(cx.input(first, ExpertLinear::WEIGHT));
    let routing = ExpertRouting {
        logits: cx.arena(cx.input(route, RouterTopK::LOGITS))?,
        experts: weight[0] as u32,
        top_k: router.k as u32,
        normalize: router.normalize as u32,
        sigmoid: (router.scoring == RouterScoring::Sigmoid) as u32,
        selection_bias: match cx.node(route).inputs.get(RouterTopK::SELECTION_BIAS) {
            Some(&bias) => cx.weight(bias)?,
            None => NONE,
        },
        scale: router.scale,
    };
    Ok((routing, weight, first))
}

pub(super) fn encode_gate_up(cx: &Encoder, op: &FusedOp) -> Result<ExpertGateUpArgs, AbiError> {
    let (routing, w, _) = routing(cx, op)?;
    let act = cx.one::<SiluMul>(op)?;
    let norm = cx.one::<RmsNorm>(op)?;
    let (norm_w, eps) = cx.norm(norm)?;
    let gate = cx.input(act, SiluMul::GATE).node.index();
    let up = cx.input(act, SiluMul::UP).node.index();
    Ok(ExpertGateUpArgs {
        x: cx.arena(cx.input(norm, RmsNorm::X))?,
        act: cx.arena_out(act, SiluMul::Y)?,
        norm: norm_w,
        gate: cx.weight(cx.input(gate, ExpertLinear::WEIGHT))?,
        up: cx.weight(cx.input(up, ExpertLinear::WEIGHT))?,
        routing,
        hidden: w[2] as u32,
        intermediate: w[1] as u32,
        eps,
    })
}

pub(super) fn encode_down(cx: &Encoder, op: &FusedOp) -> Result<ExpertDownArgs, AbiError> {
    let (routing, w, down) = routing(cx, op)?;
    let add = cx.one::<Add>(op)?;
    let sum = cx.one::<WeightedSum>(op)?;
    Ok(ExpertDownArgs {
        act: cx.arena(cx.input(down, ExpertLinear::X))?,
        residual: cx.arena(cx.other_input(add, sum)?)?,
        out: cx.arena_out(add, Add::Y)?,
        down: cx.weight(cx.input(down, ExpertLinear::WEIGHT))?,
        routing,
        hidden: w[1] as u32,
        intermediate: w[2] as u32,
    })
}
