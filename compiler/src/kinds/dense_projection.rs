//! The dense projections, one template (`templates/ops/norm_matmul.cuh`) for three kinds:
//!
//! - `norm_matmul`: up to 3 projections of one input, over their concatenated output features:
//!   h = norm ? rms_norm(x, norm_w, eps) : x;  out_i[r, n] = sum_k h[r, k] * w_i[n, k].
//!   A tile's units are features of the concatenation [0, N0) ++ [0, N1) ++ [0, N2).
//! - `dense_gate_up`: a dense SwiGLU's first half, out[0][r, n] = silu(h . gate[n]) * (h . up[n]),
//!   with gate = w[0], up = w[1]. Units: features N = n[0].
//! - `matmul_residual`: out[0][r, n] = residual[r, n] + sum_k x[r, k] w[0][n, k] (a dense MLP's
//!   down projection). Units: features.
//!
//! x has R rows (any R, T at a time: the DFlash draft projects C context rows, or C + B rows).
//! Without a norm, K may be longer than the staged rows fit: the reduction then runs in k-slabs.

use std::any::TypeId;

use mimo_ir::ops::{Add, Linear, Reshape, RmsNorm, SiluMul};

use super::{Encoder, OpTypes, op_type};
use crate::abi::{AbiError, ArenaOffset, CStruct, NONE, WeightIndex};
use crate::fuse::FusedOp;

/// TASK_NORM_MATMUL's, TASK_DENSE_GATE_UP's and TASK_MATMUL_RESIDUAL's operands
/// (compiler/src/kinds/dense_projection.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct DenseProjectionArgs {
    /// [R, K]
    pub x: ArenaOffset,
    /// out_i ([R, N_i]), MIMO_NONE when absent
    pub out: [ArenaOffset; 3],
    /// matmul_residual's residual ([R, N]), else MIMO_NONE
    pub residual: ArenaOffset,
    /// The norm weight ([K]), MIMO_NONE for no norm.
    pub norm: WeightIndex,
    /// w_i ([N_i, K]); dense_gate_up: gate, up
    pub w: [WeightIndex; 3],
    /// K
    pub k: u32,
    /// N_i (0 when absent)
    pub n: [u32; 3],
    /// R
    pub rows: u32,
    pub eps: f32,
}

/// Projections of one input, optionally normed and reshaped, and `also`.
fn projections_and(ops: &OpTypes, also: Option<TypeId>) -> bool {
    let mut allowed = vec![
        op_type::<Linear>(),
        op_type::<RmsNorm>(),
        op_type::<Reshape>(),
    ];
    allowed.extend(also);
    ops.has::<Linear>() && ops.only(&allowed)
}

pub(super) fn fuses_norm_matmul(ops: &OpTypes) -> bool {
    projections_and(ops, None)
}

pub(super) fn fuses_dense_gate_up(ops: &OpTypes) -> bool {
    ops.has::<SiluMul>() && projections_and(ops, Some(op_type::<SiluMul>()))
}

pub(super) fn fuses_matmul_residual(ops: &OpTypes) -> bool {
    ops.has::<Add>() && projections_and(ops, Some(op_type::<Add>()))
}

/// The input, the norm and the linears common to the three kinds.
fn common(cx: &Encoder, op: &FusedOp) -> Result<(DenseProjectionArgs, Vec<usize>), AbiError> {
    let linears: Vec<usize> = cx.members::<Linear>(op).iter().map(|m| m.node).collect();
    let first = *linears.first().ok_or_else(|| cx.no_template(op))?;
    let (x, norm, eps) = match cx.whole_norm(op) {
        Some(n) => cx.through_norm(op, cx.output(n, 0))?,
        None => (cx.input(first, Linear::X), NONE, 0.0),
    };
    let shape = cx.shape(x);
    let args = DenseProjectionArgs {
        x: cx.arena(x)?,
        out: [NONE; 3],
        residual: NONE,
        norm,
        w: [NONE; 3],
        k: shape[1] as u32,
        n: [0; 3],
        rows: shape[0] as u32,
        eps,
    };
    Ok((args, linears))
}

fn features(cx: &Encoder, linear: usize) -> u32 {
    cx.shape(cx.input(linear, Linear::WEIGHT))[0] as u32
}

pub(super) fn encode_norm_matmul(
    cx: &Encoder,
    op: &FusedOp,
) -> Result<DenseProjectionArgs, AbiError> {
    let (mut a, linears) = common(cx, op)?;
    if linears.len() > 3 {
        return Err(cx.no_template(op));
    }
    for (i, &l) in linears.iter().enumerate() {
        a.out[i] = cx.arena_out(l, Linear::Y)?;
        a.w[i] = cx.weight(cx.input(l, Linear::WEIGHT))?;
        a.n[i] = features(cx, l);
    }
    Ok(a)
}

pub(super) fn encode_dense_gate_up(
    cx: &Encoder,
    op: &FusedOp,
) -> Result<DenseProjectionArgs, AbiError> {
    let (mut a, linears) = common(cx, op)?;
    let act = cx.one::<SiluMul>(op)?;
    let gate = cx.input(act, SiluMul::GATE).node.index();
    let up = cx.input(act, SiluMul::UP).node.index();
    if linears.len() != 2 || !linears.contains(&gate) || !linears.contains(&up) {
        return Err(cx.no_template(op));
    }
    a.out[0] = cx.arena_out(act, SiluMul::Y)?;
    a.w[0] = cx.weight(cx.input(gate, Linear::WEIGHT))?;
    a.w[1] = cx.weight(cx.input(up, Linear::WEIGHT))?;
    a.n[0] = features(cx, gate);
    Ok(a)
}

pub(super) fn encode_matmul_residual(
    cx: &Encoder,
    op: &FusedOp,
) -> Result<DenseProjectionArgs, AbiError> {
    let (mut a, linears) = common(cx, op)?;
    let add = cx.one::<Add>(op)?;
    let [l] = linears[..] else {
        return Err(cx.no_template(op));
    };
    a.out[0] = cx.arena_out(add, Add::Y)?;
    a.residual = cx.arena(cx.other_input(add, l)?)?;
    a.w[0] = cx.weight(cx.input(l, Linear::WEIGHT))?;
    a.n[0] = features(cx, l);
    Ok(a)
}
