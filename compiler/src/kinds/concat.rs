//! `concat`: y = [a' | b'] joined on axis 0 (rows) or 1 (columns), where a' = rms_norm(a,
//! norm[0], eps[0]) when norm[0] is given, else a (the same for b):
//! rms_norm(x)[r, c] = w[c] * (x[r, c] * inv_r), inv_r = 1 / sqrt(mean_c x[r, c]^2 + eps).
//! Units: columns of y.

use mimo_ir::ops::{Concat, RmsNorm};

use super::{Encoder, OpTypes, op_type};
use crate::abi::{AbiError, ArenaOffset, CStruct, NONE, WeightIndex};
use crate::fuse::FusedOp;

/// TASK_CONCAT's operands (compiler/src/kinds/concat.rs); index 0 is a, 1 is b.
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct ConcatArgs {
    /// a ([Ra, Ca]), b ([Rb, Cb])
    pub src: [ArenaOffset; 2],
    pub y: ArenaOffset,
    /// norm_a, norm_b, each MIMO_NONE for none
    pub norm: [WeightIndex; 2],
    /// 0: rows, 1: columns
    pub axis: u32,
    pub rows: [u32; 2],
    pub cols: [u32; 2],
    pub eps: [f32; 2],
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<Concat>() && ops.only(&[op_type::<Concat>(), op_type::<RmsNorm>()])
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<ConcatArgs, AbiError> {
    let c = cx.one::<Concat>(op)?;
    let mut a = ConcatArgs {
        src: [NONE; 2],
        y: cx.arena_out(c, Concat::Y)?,
        norm: [NONE; 2],
        axis: cx.attrs::<Concat>(c).expect("a member of its type").axis as u32,
        rows: [0; 2],
        cols: [0; 2],
        eps: [0.0; 2],
    };
    for (i, slot) in [Concat::A, Concat::B].into_iter().enumerate() {
        let operand = cx.input(c, slot);
        let (src, norm, eps) = cx.through_norm(op, operand)?;
        let shape = cx.shape(operand);
        if cx.shape(src).len() != 2 || shape.len() != 2 {
            return Err(cx.shape_error(op, "concat operands must be rank 2"));
        }
        a.src[i] = cx.arena(src)?;
        a.norm[i] = norm;
        a.eps[i] = eps;
        a.rows[i] = shape[0] as u32;
        a.cols[i] = shape[1] as u32;
    }
    // Any other member (a norm no operand comes from) is not in the template.
    if op.members.len() != 1 + a.norm.iter().filter(|&&w| w != NONE).count() {
        return Err(cx.no_template(op));
    }
    Ok(a)
}
