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

use super::{Encoder, KernelShape, OpTypes, op_type, smem};
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

/// A normed input of H staged whole (without a norm the reduction runs in k-slabs that fit).
pub(super) fn shared_memory(s: &KernelShape) -> usize {
    smem::prologue(s.tokens) + smem::accumulators(s.tokens) + smem::stage(s.tokens, s.hidden)
}

/// The input, the norm and the linears common to the three kinds.
fn common(cx: &Encoder, op: &FusedOp) -> Result<(DenseProjectionArgs, Vec<usize>), AbiError> {
    let linears: Vec<usize> = cx.members::<Linear>(op).iter().map(|m| m.node).collect();
    let first = *linears.first().ok_or_else(|| cx.no_template(op))?;
    let (x, norm, eps) = cx.projection_input(op, first)?;
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

/// What the three kinds' encoders return.
type Encoded = Result<DenseProjectionArgs, AbiError>;

impl DenseProjectionArgs {
    /// Projection `i`: `linear`'s weight and features, its result at `out`.
    fn project(&mut self, cx: &Encoder, i: usize, out: u32, linear: usize) -> Result<(), AbiError> {
        let w = cx.input(linear, Linear::WEIGHT);
        self.out[i] = out;
        self.w[i] = cx.weight(w)?;
        self.n[i] = cx.shape(w)[0] as u32;
        Ok(())
    }
}

pub(super) fn encode_norm_matmul(cx: &Encoder, op: &FusedOp) -> Encoded {
    let (mut a, linears) = common(cx, op)?;
    if linears.len() > 3 {
        return Err(cx.no_template(op));
    }
    for (i, &l) in linears.iter().enumerate() {
        a.project(cx, i, cx.arena_out(l, Linear::Y)?, l)?;
    }
    Ok(a)
}

pub(super) fn encode_dense_gate_up(cx: &Encoder, op: &FusedOp) -> Encoded {
    let (mut a, linears) = common(cx, op)?;
    let act = cx.one::<SiluMul>(op)?;
    let gate = cx.input(act, SiluMul::GATE).node.index();
    let up = cx.input(act, SiluMul::UP).node.index();
    if linears.len() != 2 || !linears.contains(&gate) || !linears.contains(&up) {
        return Err(cx.no_template(op));
    }
    // Gate and up are the two terms of one output: w[0] and w[1] over the same N features.
    a.project(cx, 0, cx.arena_out(act, SiluMul::Y)?, gate)?;
    a.w[1] = cx.weight(cx.input(up, Linear::WEIGHT))?;
    Ok(a)
}

pub(super) fn encode_matmul_residual(cx: &Encoder, op: &FusedOp) -> Encoded {
    let (mut a, linears) = common(cx, op)?;
    let add = cx.one::<Add>(op)?;
    let [l] = linears[..] else {
        return Err(cx.no_template(op));
    };
    a.project(cx, 0, cx.arena_out(add, Add::Y)?, l)?;
    a.residual = cx.arena(cx.other_input(add, l)?)?;
    Ok(a)
}
