//! `kv_append`: per KV head h in the tile, for every row t at position p = positions[t]:
//! k_h = rope(qk_norm ? rms_norm(k_raw[t, h, :], k_norm_w) : k_raw[t, h, :], p) (the first
//! rotary_dim dims rotate); k_cache[p, h, :] = k_h;  v_cache[p, h, :] = v_scale * v_raw[t, h, :].
//! Keys are HD wide, values VHD. Units: KV heads.

use mimo_ir::Value;
use mimo_ir::ops::{KvAppend, Rope, Scale};

use super::{Encoder, OpTypes, head_prologue_and, op_type};
use crate::abi::{AbiError, ArenaOffset, CStruct, StateOffset, WeightIndex};
use crate::fuse::FusedOp;

/// TASK_KV_APPEND's operands (compiler/src/kinds/kv_append.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct KvAppendArgs {
    /// [R, KVH * HD], the raw key projection
    pub k_raw: ArenaOffset,
    /// [R, KVH * VHD]
    pub v_raw: ArenaOffset,
    /// i32 [R]
    pub positions: ArenaOffset,
    /// bf16 [CTX, KVH, HD]
    pub k_cache: StateOffset,
    /// bf16 [CTX, KVH, VHD]
    pub v_cache: StateOffset,
    /// [HD], MIMO_NONE when the model has no q/k norm
    pub k_norm: WeightIndex,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// VHD
    pub v_head_dim: u32,
    /// Leading dims of a key head that rotate (HD unless the rope is partial)
    pub rotary_dim: u32,
    /// R: rows of k_raw / v_raw (T, or C + B in the DFlash draft)
    pub rows: u32,
    pub eps: f32,
    pub rope_theta: f32,
    /// Multiplies the values (MiMo-V2's `attention_value_scale`; else 1)
    pub v_scale: f32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    let mut allowed = head_prologue_and(op_type::<KvAppend>()).to_vec();
    allowed.push(op_type::<Scale>());
    ops.has::<KvAppend>() && ops.only(&allowed)
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
    let prologue = cx.head_prologue(op)?;
    let (k_cache, v_cache) = (
        cx.shape(cx.input(k_app, KvAppend::CACHE)),
        cx.shape(cx.input(v_app, KvAppend::CACHE)),
    );
    if v_cache[..2] != k_cache[..2] {
        return Err(cx.shape_error(op, "the K and V caches differ in rows or heads"));
    }
    let (v_raw, v_scale) = cx.value_projection(op, cx.input(v_app, KvAppend::NEW))?;
    Ok(KvAppendArgs {
        k_raw: cx.arena(cx.raw_projection(op, cx.input(k_app, KvAppend::NEW))?)?,
        v_raw: cx.arena(v_raw)?,
        positions: cx.arena(positions)?,
        k_cache: cx.state(cx.input(k_app, KvAppend::CACHE))?,
        v_cache: cx.state(cx.input(v_app, KvAppend::CACHE))?,
        k_norm: prologue.norm,
        kv_heads: k_cache[1] as u32,
        head_dim: k_cache[2] as u32,
        v_head_dim: v_cache[2] as u32,
        rotary_dim: prologue.rotary_dim,
        rows: cx.shape(cx.input(k_app, KvAppend::NEW))[0] as u32,
        eps: prologue.eps,
        rope_theta: prologue.rope_theta,
        v_scale,
    })
}
