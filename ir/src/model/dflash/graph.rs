//! The graphs of a DFlash step: the target verifies a block ([`verify_graph`]) and the draft
//! proposes the next one ([`draft_graph`]). Both are ordinary IR graphs of ordinary ops, so the
//! compiler fuses and schedules them like the decode graph.
//!
//! The draft graph over a block of B tokens starting at position `start`, with C new context rows
//! (the target features of positions `start - C .. start`):
//!
//! ```text
//! ctx = hidden_norm(fc(context))                                    [C, H]
//! x   = embed(token_ids)                                            [B, H]  (target's embedding)
//! per layer:
//!   h  = attn_norm(x)
//!   q  = rope(q_norm(wq h), positions)                              [B, nh, hd]
//!   kv = concat_rows(ctx, h)                                        [C + B, H]
//!   k  = rope(k_norm(wk kv), kv_positions); v = wv kv               [C + B, nkv, hd]
//!   cache`[kv_positions]` = k, v                                      (kv_append)
//!   x += wo attention(q, cache, attn_positions)
//!   x += down(silu(gate(ffn_norm x)) * up(ffn_norm x))
//! logits = lm_head(norm(x)); draft_ids = argmax(logits)             (target's lm_head)
//! ```
//!
//! Context keys and values depend on the context alone (every layer projects the same `ctx`, not
//! its own hidden state), so they are computed once, when their rows arrive, and kept in the
//! draft's cache. The block's keys and values are written into the cache too, at the block's
//! positions, and every query attends to all rows up to the block's last (`attn_positions` holds
//! `start + B - 1` for each query): the existing causal `attention` op then computes exactly the
//! reference's non-causal block attention over context and block. The block rows are scratch:
//! the next step writes its context rows (the accepted part of this block) over them, and reads
//! no row it has not written, so the cache in effect keeps context only, as in the reference
//! (which crops the block's rows after every draft pass).

use crate::graph::{Graph, GraphBuilder, GraphError, Value};
use crate::model::ModelSpec;
use crate::model::build::{
    DecodeOptions, LOGITS, POSITIONS, TOKEN_IDS, cache_name, decode_graph_with,
};
use crate::model::names;
use crate::ops::{
    Add, Argmax, Attention, Concat, Embedding, KvAppend, Linear, Reshape, RmsNorm, Rope, SiluMul,
};
use crate::types::{DType, TensorType};

use super::{DraftSpec, DraftWeight, FC, HIDDEN_NORM, NORM};

/// Draft graph input: f32 [C, ids * H], the captured target features of the new context rows.
pub const CONTEXT: &str = "context";
/// Draft graph input: i32 [C + B], the positions of the context rows, then of the block.
pub const KV_POSITIONS: &str = "kv_positions";
/// Draft graph input: i32 `[B]`, the block's last position for every query (non-causal block).
pub const ATTN_POSITIONS: &str = "attn_positions";
/// Draft graph output: i32 `[B]`, the argmax of every row; row `i >= 1` is the draft for block
/// position `i` (row 0, after the committed token, is not used).
pub const DRAFT_IDS: &str = "draft_ids";

/// The state name of draft layer `layer`'s key (`"k"`) or value (`"v"`) cache.
pub fn draft_cache_name(layer: usize, kv: &str) -> String {
    format!("draft.{}", cache_name(layer, kv))
}

/// The target's step over a block of `block` tokens that also captures the features of
/// `capture_layers` and accepts the block on the device: [`decode_graph_with`] with outputs
/// `features`, `accepted` and `committed` (greedy posterior).
pub fn verify_graph(
    spec: &ModelSpec,
    block: usize,
    max_context: usize,
    capture_layers: &[usize],
) -> Result<Graph, GraphError> {
    let options = DecodeOptions {
        capture_layers: capture_layers.to_vec(),
        accept: true,
    };
    decode_graph_with(spec, block, max_context, &options)
}

/// The draft's pass over a block of `block` tokens with `context_rows` new context rows and a
/// cache of `max_context` positions. Inputs `token_ids`, `positions` i32 `[B]`, `context`,
/// `kv_positions`, `attn_positions`; outputs `logits` [B, vocab] and `draft_ids` i32 `[B]`; state
/// `draft.layers.L.k_cache` / `v_cache` bf16 [max_context, kv_heads, head_dim].
pub fn draft_graph(
    draft: &DraftSpec,
    target: &ModelSpec,
    block: usize,
    context_rows: usize,
    max_context: usize,
) -> Result<Graph, GraphError> {
    if let Err(message) = draft.check_target(target) {
        return Err(GraphError {
            node: "draft".into(),
            message,
        });
    }
    let mut g = DraftGraph {
        b: GraphBuilder::new(format!("dflash_draft_b{block}_c{context_rows}")),
        d: draft,
    };
    let b = &mut g.b;
    let ids = b.input(TOKEN_IDS, TensorType::i32([block]))?;
    let positions = b.input(POSITIONS, TensorType::i32([block]))?;
    let context = b.input(
        CONTEXT,
        TensorType::f32([context_rows, draft.feature_dim()]),
    )?;
    let kv_positions = b.input(KV_POSITIONS, TensorType::i32([context_rows + block]))?;
    let attn_positions = b.input(ATTN_POSITIONS, TensorType::i32([block]))?;
    let target_weight = |b: &mut GraphBuilder, name: &str| {
        let ty = TensorType::new(
            [target.vocab_size, target.hidden_size],
            DType::from(target.formats.dense),
        );
        b.weight(name, ty)
    };
    let embed = target_weight(b, names::EMBED)?;
    let lm_head = target_weight(b, names::LM_HEAD)?;

    let fc = g.weight(FC, vec![draft.hidden_size, draft.feature_dim()])?;
    let ctx = g.b.op1("draft.fc_out", Linear {}, &[context, fc])?;
    let ctx = g.norm("draft.context", ctx, HIDDEN_NORM.into())?;
    let mut x = g.b.op1("draft.embed_block", Embedding {}, &[embed, ids])?;
    let pos = Positions {
        q: positions,
        kv: kv_positions,
        attn: attn_positions,
    };
    for layer in 0..draft.num_layers {
        x = g.attention_block(layer, x, ctx, pos, max_context)?;
        x = g.mlp_block(layer, x)?;
    }
    let h = g.norm("draft.norm_out", x, NORM.into())?;
    let logits = g.b.op1("draft.lm_head_out", Linear {}, &[h, lm_head])?;
    let next = g.b.op1("draft.greedy", Argmax {}, &[logits])?;
    g.b.output(LOGITS, logits)?;
    g.b.output(DRAFT_IDS, next)?;
    g.b.finish()
}

#[derive(Clone, Copy)]
struct Positions {
    q: Value,
    kv: Value,
    attn: Value,
}

struct DraftGraph<'a> {
    b: GraphBuilder,
    d: &'a DraftSpec,
}

impl DraftGraph<'_> {
    fn weight(&mut self, name: &str, shape: Vec<usize>) -> Result<Value, GraphError> {
        self.b
            .weight(name, TensorType::new(shape, DType::from(self.d.format)))
    }

    fn layer_weight(&mut self, layer: usize, w: DraftWeight) -> Result<Value, GraphError> {
        self.weight(&w.name(layer), w.shape(self.d))
    }

    fn norm(&mut self, name: &str, x: Value, weight: String) -> Result<Value, GraphError> {
        let n = self.b.value_type(x).last_dim();
        let w = self.weight(&weight, vec![n])?;
        let eps = self.d.rms_norm_eps as f32;
        self.b.op1(name, RmsNorm { eps }, &[x, w])
    }

    /// Projects `x` with `w`, splits it into `heads` heads, and applies the per-head norm and
    /// RoPE when given.
    fn heads(
        &mut self,
        l: usize,
        what: &str,
        x: Value,
        (w, heads): (DraftWeight, usize),
        norm: Option<DraftWeight>,
        rope_positions: Option<Value>,
    ) -> Result<Value, GraphError> {
        let d = self.d;
        let p = |s: &str| format!("draft.layers.{l}.{what}_{s}");
        let rows = self.b.value_type(x).shape[0];
        let weight = self.layer_weight(l, w)?;
        let proj = self.b.op1(&p("proj"), Linear {}, &[x, weight])?;
        let shape = vec![rows, heads, d.head_dim];
        let mut v = self.b.op1(&p("heads"), Reshape { shape }, &[proj])?;
        if let Some(norm) = norm {
            let nw = self.layer_weight(l, norm)?;
            let eps = d.rms_norm_eps as f32;
            v = self.b.op1(&p("normed"), RmsNorm { eps }, &[v, nw])?;
        }
        if let Some(pos) = rope_positions {
            let theta = d.rope_theta;
            v = self.b.op1(
                &p("rope"),
                Rope {
                    theta,
                    rotary_dim: 0,
                },
                &[v, pos],
            )?;
        }
        Ok(v)
    }

    /// `x + wo(attention(q(block), k/v(context | block)))` with K/V injection from the context.
    fn attention_block(
        &mut self,
        l: usize,
        x: Value,
        ctx: Value,
        pos: Positions,
        max_context: usize,
    ) -> Result<Value, GraphError> {
        let d = self.d;
        let p = |s: &str| format!("draft.layers.{l}.{s}");
        let block = self.b.value_type(x).shape[0];
        let attn_norm = DraftWeight::AttnNorm.name(l);
        let h = self.norm(&p("attn_in"), x, attn_norm)?;
        let kv_in = self.b.op1(&p("kv_in"), Concat { axis: 0 }, &[ctx, h])?;
        let q = self.heads(
            l,
            "q",
            h,
            (DraftWeight::Wq, d.num_heads),
            Some(DraftWeight::QNorm),
            Some(pos.q),
        )?;
        let k = self.heads(
            l,
            "k",
            kv_in,
            (DraftWeight::Wk, d.num_kv_heads),
            Some(DraftWeight::KNorm),
            Some(pos.kv),
        )?;
        let v = self.heads(l, "v", kv_in, (DraftWeight::Wv, d.num_kv_heads), None, None)?;
        let cache_ty = TensorType::new([max_context, d.num_kv_heads, d.head_dim], DType::Bf16);
        let k_cache = self.b.state(&draft_cache_name(l, "k"), cache_ty.clone())?;
        let v_cache = self.b.state(&draft_cache_name(l, "v"), cache_ty)?;
        let k_all = self
            .b
            .op1(&p("k_append"), KvAppend {}, &[k_cache, k, pos.kv])?;
        let v_all = self
            .b
            .op1(&p("v_append"), KvAppend {}, &[v_cache, v, pos.kv])?;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let attn = self.b.op1(
            &p("attention"),
            Attention { scale, window: 0 },
            &[q, k_all, v_all, pos.attn],
        )?;
        let shape = vec![block, d.q_dim()];
        let flat = self.b.op1(&p("attn_flat"), Reshape { shape }, &[attn])?;
        let wo = self.layer_weight(l, DraftWeight::Wo)?;
        let o = self.b.op1(&p("o_proj"), Linear {}, &[flat, wo])?;
        self.b.op1(&p("attn_residual"), Add {}, &[x, o])
    }

    /// `x + down(silu(gate(h)) * up(h))` over `h = ffn_norm(x)`: Qwen3's dense MLP.
    fn mlp_block(&mut self, l: usize, x: Value) -> Result<Value, GraphError> {
        let p = |s: &str| format!("draft.layers.{l}.{s}");
        let h = self.norm(&p("ffn_in"), x, DraftWeight::FfnNorm.name(l))?;
        let gate_w = self.layer_weight(l, DraftWeight::Gate)?;
        let up_w = self.layer_weight(l, DraftWeight::Up)?;
        let down_w = self.layer_weight(l, DraftWeight::Down)?;
        let gate = self.b.op1(&p("gate_out"), Linear {}, &[h, gate_w])?;
        let up = self.b.op1(&p("up_out"), Linear {}, &[h, up_w])?;
        let act = self.b.op1(&p("act"), SiluMul {}, &[gate, up])?;
        let down = self.b.op1(&p("down_out"), Linear {}, &[act, down_w])?;
        self.b.op1(&p("mlp_residual"), Add {}, &[x, down])
    }
}
