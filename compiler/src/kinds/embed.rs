//! `embed`: y[t, :] = table[ids[t], :], dequantised to f32 whatever the table's format.
//! Units: tokens, as the IR's `embedding` op.

use mimo_ir::ops::Embedding;

use super::{Encoder, OpTypes, op_type};
use crate::abi::{AbiError, ArenaOffset, CStruct, WeightIndex};
use crate::fuse::FusedOp;

/// TASK_EMBED's operands (compiler/src/kinds/embed.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct EmbedArgs {
    /// i32 [T]
    pub ids: ArenaOffset,
    /// [T, H]
    pub y: ArenaOffset,
    /// [V, H]
    pub table: WeightIndex,
    /// H
    pub hidden: u32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<Embedding>() && ops.only(&[op_type::<Embedding>()])
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<EmbedArgs, AbiError> {
    let e = cx.one::<Embedding>(op)?;
    let table = cx.input(e, Embedding::TABLE);
    Ok(EmbedArgs {
        ids: cx.arena(cx.input(e, Embedding::IDS))?,
        y: cx.arena_out(e, Embedding::Y)?,
        table: cx.weight(table)?,
        hidden: cx.shape(table)[1] as u32,
    })
}
