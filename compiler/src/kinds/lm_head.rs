//! `lm_head`: h = rms_norm(x, norm_w); logits[t, n] = h[t, :] . w[n, :] for n in the tile; then
//! for every whole chunk c of CHUNK vocabulary entries in the tile: the chunk's largest logit and
//! its index (the first on ties). Tiles are aligned to CHUNK. Units: vocabulary entries (V).

use mimo_ir::ops::{ArgmaxPartial, Linear, RmsNorm};

use super::{Encoder, KernelShape, OpTypes, op_type, smem};
use crate::abi::{AbiError, ArenaOffset, CStruct, WeightIndex};
use crate::fuse::{FusedOp, UnitMap};

/// TASK_LM_HEAD's operands (compiler/src/kinds/lm_head.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct LmHeadArgs {
    /// [T, H]
    pub x: ArenaOffset,
    /// [T, V]
    pub logits: ArenaOffset,
    /// f32 [T, V / CHUNK rounded up]
    pub chunk_max: ArenaOffset,
    /// i32, the same shape
    pub chunk_argmax: ArenaOffset,
    /// [H], or MIMO_NONE
    pub norm: WeightIndex,
    /// [V, H]
    pub lm_head: WeightIndex,
    pub hidden: u32,
    pub vocab: u32,
    pub chunk: u32,
    pub eps: f32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<ArgmaxPartial>()
        && ops.only(&[
            op_type::<ArgmaxPartial>(),
            op_type::<Linear>(),
            op_type::<RmsNorm>(),
        ])
}

/// The normed rows of H staged whole.
pub(super) fn shared_memory(s: &KernelShape) -> usize {
    smem::prologue(s.tokens) + smem::accumulators(s.tokens) + smem::stage(s.tokens, s.hidden)
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<LmHeadArgs, AbiError> {
    let l = cx.one::<Linear>(op)?;
    let partial = cx.one::<ArgmaxPartial>(op)?;
    let (x, norm, eps) = cx.projection_input(op, l)?;
    let chunk = match op.members.iter().find(|m| m.node == partial).map(|m| m.map) {
        Some(UnitMap::Tiled { den, .. }) => den,
        _ => return Err(cx.no_template(op)),
    };
    let w = cx.input(l, Linear::WEIGHT);
    Ok(LmHeadArgs {
        x: cx.arena(x)?,
        logits: cx.arena_out(l, Linear::Y)?,
        chunk_max: cx.arena_out(partial, ArgmaxPartial::VALUES)?,
        chunk_argmax: cx.arena_out(partial, ArgmaxPartial::IDS)?,
        norm,
        lm_head: cx.weight(w)?,
        hidden: cx.shape(x)[1] as u32,
        vocab: cx.shape(w)[0] as u32,
        chunk: chunk as u32,
        eps,
    })
}
