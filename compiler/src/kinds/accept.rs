//! `accept`: DFlash acceptance of a verified block (`ir/src/ops/accept.rs`). One unit.

use mimo_ir::ops::Accept;

use super::{Encoder, OpTypes, op_type};
use crate::abi::{AbiError, ArenaOffset, CStruct};
use crate::fuse::FusedOp;

/// TASK_ACCEPT's operands (compiler/src/kinds/accept.rs). block [B] is what the target verified
/// (the last committed token, then B - 1 drafts); posterior [B] the target's token after each.
/// a = the number of leading i with block[i + 1] == posterior[i] (0 ..= B - 1);
/// accepted[0] = a; committed[i] = i <= a ? posterior[i] : -1.
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct AcceptArgs {
    /// i32 [B]
    pub block: ArenaOffset,
    /// i32 [B]
    pub posterior: ArenaOffset,
    /// i32 [1]
    pub accepted: ArenaOffset,
    /// i32 [B]
    pub committed: ArenaOffset,
    /// B
    pub block_len: u32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<Accept>() && ops.only(&[op_type::<Accept>()])
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<AcceptArgs, AbiError> {
    let acc = cx.one::<Accept>(op)?;
    let block = cx.input(acc, Accept::BLOCK);
    Ok(AcceptArgs {
        block: cx.arena(block)?,
        posterior: cx.arena(cx.input(acc, Accept::POSTERIOR))?,
        accepted: cx.arena_out(acc, Accept::ACCEPTED)?,
        committed: cx.arena_out(acc, Accept::COMMITTED)?,
        block_len: cx.shape(block)[0] as u32,
    })
}
