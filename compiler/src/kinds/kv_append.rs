//! `kv_append`: per KV head h in the tile, for every row t at position p = positions[t]:
//! k_h = rope(qk_norm ? rms_norm(k_raw[t, h, :], k_norm_w) : k_raw[t, h, :], p);
//! k_cache[p, h, :] = k_h;  v_cache[p, h, :] = v_raw[t, h, :].  Units: KV heads.

use mimo_ir::Value;
use mimo_ir::ops::{KvAppend, Rope};

use super::{Encoder, OpTypes, head_prologue_and, op_type};
use crate::abi::{AbiError, ArenaOffset, CStruct, StateOffset, WeightIndex};
use crate::fuse::FusedOp;

/// TASK_KV_APPEND's operands (compiler/src/kinds/kv_append.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct KvAppendArgs {
    /// [R, KVH * HD], the raw key projection
    pub k_raw: ArenaOffset,
    /// [R, KVH * HD]
    pub v_raw: ArenaOffset,
    /// i32 [R]
    pub positions: ArenaOffset,
    /// bf16 [CTX, KVH, HD]
    pub k_cache: StateOffset,
    /// bf16 [CTX, KVH, HD]
    pub v_cache: StateOffset,
    /// [HD], MIMO_NONE when the model has no q/k norm
    pub k_norm: WeightIndex,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// R: rows of k_raw / v_raw (T, or C + B in the DFlash draft)
    pub rows: u32,
    pub eps: f32,
    pub rope_theta: f32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<KvAppend>() && ops.only(&head_prologue_and(op_type::<KvAppend>()))
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<KvAppendArgs, AbiError> {
    let appends = cx.members::<KvAppend>(op);
    let [first, second] = appends[..] else {
        return Err(cx.no_template(op));
    };
    // The key path goes through RoPE; the value path is only reshaped.
    let through_rope = |app: usize| cx.is::<Rope>(cx.input(app, KvAppend::NEW).node.index());
    let (k_app, v_app) = if through_rope(first.node) {
        (first.node, second.node)
    } else {
        (second.node, first.node)
    };
    let positions: Value = cx.input(k_app, KvAppend::POSITIONS);
    if cx.input(v_app, KvAppend::POSITIONS) != positions || cx.rope_positions(op)? != positions {
        return Err(cx.shape_error(
            op,
            "the keys' RoPE and both appends must use one positions value",
        ));
    }
    let (k_norm, eps, rope_theta) = cx.head_prologue(op)?;
    let cache = cx.shape(cx.input(k_app, KvAppend::CACHE));
    if cx.shape(cx.input(v_app, KvAppend::CACHE)) != cache {
        return Err(cx.shape_error(
            op,
            "values narrower than the keys have no CUDA template yet",
        ));
    }
    Ok(KvAppendArgs {
        k_raw: cx.arena(cx.raw_projection(op, cx.input(k_app, KvAppend::NEW))?)?,
        v_raw: cx.arena(cx.raw_projection(op, cx.input(v_app, KvAppend::NEW))?)?,
        positions: cx.arena(positions)?,
        k_cache: cx.state(cx.input(k_app, KvAppend::CACHE))?,
        v_cache: cx.state(cx.input(v_app, KvAppend::CACHE))?,
        k_norm,
        kv_heads: cache[1] as u32,
        head_dim: cache[2] as u32,
        rows: cx.shape(cx.input(k_app, KvAppend::NEW))[0] as u32,
        eps,
        rope_theta,
    })
}
