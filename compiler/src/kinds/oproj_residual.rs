//! `oproj_residual`: merges the split-K attention partials, then the output projection and the
//! residual add. Prologue: attn[t, h, :] = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s
//! (M = max m_s, skipping l_s == 0), flattened to [T, HEADS*HD]; then
//! out = residual + attn @ wo^T. Units: output features (H).

use mimo_ir::ops::{Add, AttentionCombine, Linear, Reshape};

use super::{Encoder, KernelShape, OpTypes, op_type, smem};
use crate::abi::{AbiError, ArenaOffset, CStruct, NONE, WeightIndex};
use crate::fuse::FusedOp;

/// TASK_OPROJ_RESIDUAL's operands (compiler/src/kinds/oproj_residual.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct OprojResidualArgs {
    /// [T, HEADS, splits, HD]
    pub acc: ArenaOffset,
    /// [T, HEADS, splits, 2]
    pub ml: ArenaOffset,
    /// [T, H]
    pub residual: ArenaOffset,
    /// [T, H]
    pub out: ArenaOffset,
    /// [H, HEADS * HD]
    pub wo: WeightIndex,
    /// [HEADS] learned sink logits joining each head's softmax denominator, or MIMO_NONE
    pub sinks: WeightIndex,
    pub heads: u32,
    pub head_dim: u32,
    pub splits: u32,
    /// H
    pub hidden: u32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<AttentionCombine>()
        && ops.has::<Linear>()
        && ops.only(&[
            op_type::<AttentionCombine>(),
            op_type::<Linear>(),
            op_type::<Reshape>(),
            op_type::<Add>(),
        ])
}

/// The merged attention rows (HEADS * HD) staged whole.
pub(super) fn shared_memory(s: &KernelShape) -> usize {
    smem::accumulators(s.tokens) + smem::stage(s.tokens, s.heads * s.head_dim)
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<OprojResidualArgs, AbiError> {
    let (c, l, add) = (
        cx.one::<AttentionCombine>(op)?,
        cx.one::<Linear>(op)?,
        cx.one::<Add>(op)?,
    );
    let acc = cx.input(c, AttentionCombine::ACC);
    let shape = cx.shape(acc);
    let wo = cx.input(l, Linear::WEIGHT);
    Ok(OprojResidualArgs {
        acc: cx.arena(acc)?,
        ml: cx.arena(cx.input(c, AttentionCombine::ML))?,
        residual: cx.arena(cx.other_input(add, l)?)?,
        out: cx.arena_out(add, Add::Y)?,
        wo: cx.weight(wo)?,
        sinks: match cx.node(c).inputs.get(AttentionCombine::SINKS) {
            Some(&sinks) => cx.weight(sinks)?,
            None => NONE,
        },
        heads: shape[1] as u32,
        head_dim: shape[3] as u32,
        splits: shape[2] as u32,
        hidden: cx.shape(wo)[0] as u32,
    })
}
