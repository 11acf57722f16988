//! `attention_partial`: split-K ("flash decoding") attention. Unit u = KV head u / splits, split
//! s = u % splits; it serves the G = HEADS / KVH query heads of that KV head. For row t the
//! context is the L rows from r = 0 (or, with a window, r = max(0, positions[t] + 1 - window)) to
//! positions[t], and split s covers rows [r + s*L/splits, r + (s+1)*L/splits).
//! Prologue per query head (the first rotary_dim dims rotate):
//! q_h = rope(qk_norm ? rms_norm(q_raw[t, h, :], q_norm_w) : q_raw[t, h, :], rope_pos[t]);
//! then scores_j = scale * dot(q_h, k_cache[j, kvh, :]), m = max_j scores_j,
//! l = sum_j exp(scores_j - m), acc = sum_j exp(scores_j - m) * v_cache[j, kvh, :].
//! An empty split has m = -inf, l = 0, acc = 0.

use mimo_ir::ops::AttentionPartial;

use super::{Encoder, KernelShape, OpTypes, head_prologue_and, op_type, smem};
use crate::abi::{AbiError, ArenaOffset, CStruct, NONE, StateOffset, WeightIndex};
use crate::fuse::FusedOp;

/// TASK_ATTENTION_PARTIAL's operands (compiler/src/kinds/attention_partial.rs).
#[derive(Debug, Clone, Copy, PartialEq, CStruct)]
#[repr(C)]
pub struct AttentionPartialArgs {
    /// [T, HEADS * HD], the raw query projection
    pub q_raw: ArenaOffset,
    /// i32 [T]: row t attends to context rows 0 ..= positions[t] (the last `window` of them)
    pub positions: ArenaOffset,
    /// [T, HEADS, splits, VHD]
    pub acc: ArenaOffset,
    /// [T, HEADS, splits, 2] = (m, l)
    pub ml: ArenaOffset,
    /// i32 [T], the queries' RoPE positions, or MIMO_NONE for `positions` (the DFlash draft's
    /// queries sit at their own positions but all attend up to the block's last)
    pub rope_positions: ArenaOffset,
    /// bf16 [CTX, KVH, HD]
    pub k_cache: StateOffset,
    /// bf16 [CTX, KVH, VHD]
    pub v_cache: StateOffset,
    /// [HD], or MIMO_NONE
    pub q_norm: WeightIndex,
    pub heads: u32,
    pub kv_heads: u32,
    /// HD, of queries and keys
    pub head_dim: u32,
    /// VHD
    pub v_head_dim: u32,
    /// Leading dims of a query head that rotate (HD unless the rope is partial)
    pub rotary_dim: u32,
    pub splits: u32,
    /// CTX
    pub context: u32,
    /// Rows a query sees, itself included (a sliding window): the last `window` of
    /// 0 ..= positions[t]; 0 for all of them
    pub window: u32,
    pub eps: f32,
    pub rope_theta: f32,
    pub scale: f32,
}

pub(super) fn fuses(ops: &OpTypes) -> bool {
    ops.has::<AttentionPartial>() && ops.only(&head_prologue_and(op_type::<AttentionPartial>()))
}

/// Per KV head: q [G][HD], acc [G][VHD], scores [G][256], m, l, alpha [G] (G = HEADS / KVH), f32.
pub(super) fn shared_memory(s: &KernelShape) -> usize {
    let group = s.heads / s.kv_heads.max(1);
    smem::up16(4 * (group * (s.head_dim + s.v_head_dim) + 256 * group + 3 * group))
}

pub(super) fn encode(cx: &Encoder, op: &FusedOp) -> Result<AttentionPartialArgs, AbiError> {
    let p = cx.one::<AttentionPartial>(op)?;
    let att = cx
        .attrs::<AttentionPartial>(p)
        .expect("a member of its type");
    let positions = cx.input(p, AttentionPartial::POSITIONS);
    // The queries may be rotated by other positions than the causal limit (the DFlash draft's
    // block attends non-causally up to its last position).
    let rope = cx.rope_positions(op)?;
    let prologue = cx.head_prologue(op)?;
    let q = cx.shape(cx.input(p, AttentionPartial::Q));
    let cache = cx.shape(cx.input(p, AttentionPartial::K_CACHE));
    let v_cache = cx.shape(cx.input(p, AttentionPartial::V_CACHE));
    Ok(AttentionPartialArgs {
        q_raw: cx.arena(cx.raw_projection(op, cx.input(p, AttentionPartial::Q))?)?,
        positions: cx.arena(positions)?,
        acc: cx.arena_out(p, AttentionPartial::ACC)?,
        ml: cx.arena_out(p, AttentionPartial::ML)?,
        rope_positions: if rope == positions {
            NONE
        } else {
            cx.arena(rope)?
        },
        k_cache: cx.state(cx.input(p, AttentionPartial::K_CACHE))?,
        v_cache: cx.state(cx.input(p, AttentionPartial::V_CACHE))?,
        q_norm: prologue.norm,
        heads: q[1] as u32,
        kv_heads: cache[1] as u32,
        head_dim: cache[2] as u32,
        v_head_dim: v_cache[2] as u32,
        rotary_dim: prologue.rotary_dim,
        splits: att.splits as u32,
        context: cache[0] as u32,
        window: att.window as u32,
        eps: prologue.eps,
        rope_theta: prologue.rope_theta,
        scale: att.scale,
    })
}

#[cfg(test)]
mod tests {
    use mimo_ir::model::{AttentionSpec, decode_graph};
    use mimo_ir::{Architecture, ModelSpec};

    use crate::abi::{NONE, encode};
    use crate::kinds::TaskArgs;
    use crate::{CompileOptions, Machine, compile};

    /// Every MiMo-V2 attention feature reaches the templates' operands: each layer's own KV
    /// heads, window and sinks, the partial rotation, the narrow values and the value scale.
    #[test]
    fn mimo_attention_features_reach_the_operands() {
        let spec = ModelSpec::tiny(Architecture::MimoV2Flash);
        let opts = CompileOptions::for_machine(Machine {
            workers: 4,
            ..Machine::h100()
        });
        let program = compile(&decode_graph(&spec, 1, 16).unwrap(), &opts).unwrap();
        let tables = encode(&program).unwrap();
        let (mut appends, mut partials, mut merges) = (vec![], vec![], vec![]);
        for args in &tables.ops {
            match args {
                TaskArgs::KvAppend(a) => appends.push(*a),
                TaskArgs::AttentionPartial(a) => partials.push(*a),
                TaskArgs::OprojResidual(a) => merges.push(*a),
                _ => {}
            }
        }
        assert_eq!((appends.len(), partials.len(), merges.len()), (3, 3, 3));
        for l in 0..3 {
            let att: AttentionSpec = spec.attention(l);
            let (app, part, merge) = (appends[l], partials[l], merges[l]);
            let dims = |kvh, hd, vhd, rot| (kvh, hd, vhd, rot);
            let want = dims(
                att.num_kv_heads as u32,
                att.head_dim as u32,
                att.v_head_dim as u32,
                att.rotary_dim as u32,
            );
            assert_eq!(
                dims(app.kv_heads, app.head_dim, app.v_head_dim, app.rotary_dim),
                want
            );
            assert_eq!(
                dims(
                    part.kv_heads,
                    part.head_dim,
                    part.v_head_dim,
                    part.rotary_dim
                ),
                want
            );
            assert_eq!(app.v_scale, 0.707, "layer {l}");
            assert_eq!(app.rope_theta, att.rope_theta as f32);
            assert_eq!(part.window, att.window as u32);
            assert_eq!(merge.head_dim, att.v_head_dim as u32, "o_proj reads VHD");
            assert_eq!(merge.sinks == NONE, !att.sinks, "layer {l}");
        }
        // The tiny spec exercises each feature: a third of the head rotates, values are
        // narrower, and the sliding layers have their own KV heads.
        assert!(appends.iter().all(|a| a.rotary_dim < a.head_dim));
        assert!(appends.iter().all(|a| a.v_head_dim < a.head_dim));
        assert_ne!(appends[0].kv_heads, appends[1].kv_heads);
    }

    /// The ops between the value projection and its cache append reach the template: a scale
    /// (MiMo-V2's value scale) becomes `v_scale`; an op it has no place for (an add after the
    /// projection, a group of its own) is refused, never skipped.
    #[test]
    fn an_op_on_the_value_path_is_not_skipped() {
        use mimo_ir::graph::GraphBuilder;
        use mimo_ir::ops::{Add, Attention, KvAppend, Linear, Reshape, Rope, Scale};
        use mimo_ir::{DType, TensorType};

        let (h, heads, hd, ctx) = (32, 2, 16, 8);
        for (extra, refusal) in [
            ("v_scaled", None),
            (
                "v_shifted",
                Some("fused op `v_shifted` has no CUDA template"),
            ),
        ] {
            let mut b = GraphBuilder::new("value_path");
            let x = b.input("x", TensorType::f32([1, h])).unwrap();
            let shift = b.input("shift", TensorType::f32([1, heads * hd])).unwrap();
            let pos = b.input("positions", TensorType::i32([1])).unwrap();
            let heads_of = |b: &mut GraphBuilder, name: &str, value: bool| {
                let w = b.weight(name, TensorType::f32([heads * hd, h])).unwrap();
                let mut proj = b.op1(&format!("{name}_proj"), Linear {}, &[x, w]).unwrap();
                if value && extra == "v_shifted" {
                    proj = b.op1(extra, Add {}, &[proj, shift]).unwrap();
                }
                let shape = vec![1, heads, hd];
                let v = b.op1(&format!("{name}_heads"), Reshape { shape }, &[proj]);
                let v = v.unwrap();
                if value {
                    return match extra {
                        "v_scaled" => b.op1(extra, Scale { factor: 0.707 }, &[v]).unwrap(),
                        _ => v,
                    };
                }
                let rope = Rope {
                    theta: 1e4,
                    rotary_dim: 0,
                };
                b.op1(&format!("{name}_rope"), rope, &[v, pos]).unwrap()
            };
            let q = heads_of(&mut b, "q", false);
            let k = heads_of(&mut b, "k", false);
            let v = heads_of(&mut b, "v", true);
            let cache = TensorType::new([ctx, heads, hd], DType::Bf16);
            let kc = b.state("k_cache", cache.clone()).unwrap();
            let vc = b.state("v_cache", cache).unwrap();
            let k_all = b.op1("k_append", KvAppend {}, &[kc, k, pos]).unwrap();
            let v_all = b.op1("v_append", KvAppend {}, &[vc, v, pos]).unwrap();
            let att = Attention {
                scale: 0.25,
                window: 0,
            };
            let a = b.op1("attention", att, &[q, k_all, v_all, pos]).unwrap();
            let shape = vec![1, heads * hd];
            let flat = b.op1("attn_flat", Reshape { shape }, &[a]).unwrap();
            let wo = b.weight("wo", TensorType::f32([h, heads * hd])).unwrap();
            let o = b.op1("o_proj", Linear {}, &[flat, wo]).unwrap();
            let y = b.op1("attn_residual", Add {}, &[x, o]).unwrap();
            b.output("y", y).unwrap();
            let opts = CompileOptions::for_machine(Machine {
                workers: 4,
                ..Machine::h100()
            });
            let program = compile(&b.finish().unwrap(), &opts).unwrap();
            match (encode(&program), refusal) {
                (Ok(tables), None) => {
                    let scales: Vec<f32> = tables
                        .ops
                        .iter()
                        .filter_map(|op| match op {
                            TaskArgs::KvAppend(a) => Some(a.v_scale),
                            _ => None,
                        })
                        .collect();
                    assert_eq!(scales, [0.707], "{extra}");
                }
                (Err(err), Some(message)) => {
                    let err = err.to_string();
                    assert!(err.contains(message), "{extra}: {err}");
                }
                (other, _) => panic!("{extra}: {other:?}"),
            }
        }
    }
}
