//! `argmax_combine`: next[t] = the chunk argmax of the first chunk with the largest maximum.
//! Units: tokens.

use mimo_ir::ops::ArgmaxCombine;

use super::{Encoder, OpTypes, op_type};
use crate::abi::{AbiError, ArenaOffset, CStruct};
use crate::fuse::FusedOp;

/// TASK_ARGMAX_COMBINE's operands (compiler/src/kinds/argmax_combine.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct ArgmaxCombineArgs {
    /// f32 [T, chunks]
    pub chunk_max: ArenaOffset,
    /// i32 [T, chunks]
    pub chunk_argmax: ArenaOffset,
    /// i32 [T]
    pub next: ArenaOffset,
    pub chunks: u32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<ArgmaxCombine>() && ops.only(&[op_type::<ArgmaxCombine>()])
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<ArgmaxCombineArgs, AbiError> {
    let c = cx.one::<ArgmaxCombine>(op)?;
    let values = cx.input(c, ArgmaxCombine::VALUES);
    Ok(ArgmaxCombineArgs {
        chunk_max: cx.arena(values)?,
        chunk_argmax: cx.arena(cx.input(c, ArgmaxCombine::IDS))?,
        next: cx.arena_out(c, ArgmaxCombine::NEXT)?,
        chunks: cx.shape(values)[1] as u32,
    })
}
