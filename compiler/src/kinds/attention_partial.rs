//! `attention_partial`: split-K ("flash decoding") attention. Unit u = KV head u / splits, split
//! s = u % splits; it serves the G = HEADS / KVH query heads of that KV head. For row t the
//! context is L = positions[t] + 1 rows and split s covers rows [s*L/splits, (s+1)*L/splits).
//! Prologue per query head:
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
    /// [T, HEADS, splits, HD]
    pub acc: ArenaOffset,
    /// [T, HEADS, splits, 2] = (m, l)
    pub ml: ArenaOffset,
    /// i32 [T], the queries' RoPE positions, or MIMO_NONE for `positions` (the DFlash draft's
    /// queries sit at their own positions but all attend up to the block's last)
    pub rope_positions: ArenaOffset,
    /// bf16 [CTX, KVH, HD]
    pub k_cache: StateOffset,
    pub v_cache: StateOffset,
    /// [HD], or MIMO_NONE
    pub q_norm: WeightIndex,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
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

/// Per KV head: q and acc [G][HD], scores [G][256], m, l, alpha [G] (G = HEADS / KVH), f32.
pub(super) fn shared_memory(s: &KernelShape) -> usize {
    let group = s.heads / s.kv_heads.max(1);
    smem::up16(4 * (2 * group * s.head_dim + 256 * group + 3 * group))
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
    let (q_norm, eps, rope_theta) = cx.head_prologue(op)?;
    let q = cx.shape(cx.input(p, AttentionPartial::Q));
    let cache = cx.shape(cx.input(p, AttentionPartial::K_CACHE));
    // The template reads values as wide as the keys.
    if cx.shape(cx.input(p, AttentionPartial::V_CACHE))[2] != cache[2] {
        return Err(cx.shape_error(
            op,
            "values narrower than the keys have no CUDA template yet",
        ));
    }
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
        q_norm,
        heads: q[1] as u32,
        kv_heads: cache[1] as u32,
        head_dim: cache[2] as u32,
        splits: att.splits as u32,
        context: cache[0] as u32,
        window: att.window as u32,
        eps,
        rope_theta,
        scale: att.scale,
    })
}

#[cfg(test)]
mod tests {
    use mimo_ir::model::{AttentionSpec, decode_graph};
    use mimo_ir::{Architecture, ModelSpec};

    use crate::abi::{AbiError, encode};
    use crate::{CompileOptions, Machine, compile};

    /// A MiMo-V2 whose every layer is full attention with none of the family's attention
    /// features, a value scale of 1: what the megakernel runs, sigmoid router included.
    fn plain_mimo() -> ModelSpec {
        let mut spec = ModelSpec::tiny(Architecture::MimoV2Flash);
        let h = spec.hybrid.as_mut().unwrap();
        h.sliding_layers.fill(false);
        h.dense_layers.fill(false);
        h.value_scale = 1.0;
        h.full.v_head_dim = h.full.head_dim;
        h.full.rotary_dim = h.full.head_dim;
        spec
    }

    /// MiMo-V2's sliding windows, sinks and sigmoid router encode for the megakernel; its
    /// partial RoPE and narrow values compile for the CPU schedule executor but are refused,
    /// naming the op, where the megakernel has no template for them yet.
    #[test]
    fn mimo_features_the_megakernel_lacks_are_refused_by_name() {
        let opts = CompileOptions::for_machine(Machine {
            workers: 4,
            ..Machine::h100()
        });
        type Edit = fn(&mut AttentionSpec);
        let cases: [(Edit, Option<&str>); 5] = [
            (|_| {}, None),
            (|a| a.window = 4, None),
            (|a| a.sinks = true, None),
            (
                |a| a.rotary_dim = 8,
                Some("partial rotary embedding has no CUDA template yet"),
            ),
            (
                |a| a.v_head_dim = 16,
                Some("values narrower than the keys have no CUDA template yet"),
            ),
        ];
        for (i, (edit, refusal)) in cases.into_iter().enumerate() {
            let mut spec = plain_mimo();
            edit(&mut spec.hybrid.as_mut().unwrap().full);
            let program = compile(&decode_graph(&spec, 1, 16).unwrap(), &opts).unwrap();
            match (encode(&program), refusal) {
                (Ok(_), None) => {}
                (Err(AbiError::Shape { op, message }), Some(why)) => {
                    assert!(op.starts_with("layers.0."), "{why}: {op}");
                    assert_eq!(message, why);
                }
                (other, _) => panic!("case {i}: expected {refusal:?}, got {other:?}"),
            }
        }
    }

    /// An op between the value projection and its cache append that the attention templates
    /// would skip is refused: MiMo-V2's value scale, a group of its own with no template, and an
    /// add after the projection, likewise.
    #[test]
    fn an_op_on_the_value_path_is_not_skipped() {
        use mimo_ir::graph::GraphBuilder;
        use mimo_ir::ops::{Add, Attention, KvAppend, Linear, Reshape, Rope, Scale};
        use mimo_ir::{DType, TensorType};

        let (h, heads, hd, ctx) = (32, 2, 16, 8);
        for (extra, message) in [
            ("v_scaled", "fused op `v_scaled` has no CUDA template"),
            ("v_shifted", "fused op `v_shifted` has no CUDA template"),
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
            let y = b.op1("attention", att, &[q, k_all, v_all, pos]).unwrap();
            b.output("y", y).unwrap();
            let opts = CompileOptions::for_machine(Machine {
                workers: 4,
                ..Machine::h100()
            });
            let program = compile(&b.finish().unwrap(), &opts).unwrap();
            let err = encode(&program).unwrap_err().to_string();
            assert!(err.contains(message), "{extra}: {err}");
        }
    }
}
