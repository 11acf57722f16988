//! Decode graphs of Qwen3-MoE, Mixtral and MiMo-V2-Flash: T tokens at run-time positions, after a
//! KV cache. Each layer's attention and MLP are its own ([`ModelSpec::attention`],
//! [`ModelSpec::mlp`]).
//!
//! One graph serves decode (T = 1), prefill and verification (T = n, causal): the tokens' absolute
//! positions are an input, so where the sequence starts is a run-time value, not a shape.
//!
//! Inputs `token_ids` i32 `[T]` and `positions` i32 `[T]`; state `layers.L.k_cache` / `v_cache`
//! bf16 [max_context, kv_heads, head_dim] (values: v_head_dim); outputs `logits` [T, vocab] and `next_ids` i32 `[T]` (argmax).
//!
//! [`decode_graph_with`] adds what DFlash verification needs (see [`DecodeOptions`]): the hidden
//! states of chosen layers as `features`, and the acceptance of a drafted block on the device.

use crate::graph::{Graph, GraphBuilder, GraphError, Value};
use crate::model::names::{self, LayerWeight};
use crate::model::{Mlp, ModelSpec};
use crate::ops::router_topk::RouterScoring;
use crate::ops::{
    Accept, Add, Argmax, Attention, Concat, Embedding, ExpertLinear, KvAppend, Linear, Reshape,
    RmsNorm, Rope, RouterTopK, Scale, SiluMul, WeightedSum,
};
use crate::types::{DType, TensorType};

pub const TOKEN_IDS: &str = "token_ids";
pub const POSITIONS: &str = "positions";
pub const LOGITS: &str = "logits";
pub const NEXT_IDS: &str = "next_ids";
/// Output of [`DecodeOptions::capture_layers`]: f32 [T, layers * hidden].
pub const FEATURES: &str = "features";
/// Outputs of [`DecodeOptions::accept`]: i32 `[1]` and i32 `[T]` (see [`Accept`]).
pub const ACCEPTED: &str = "accepted";
pub const COMMITTED: &str = "committed";

/// What a step graph computes besides the logits and the greedy ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Decoder layers whose output becomes the output `features`, concatenated on the feature
    /// axis in this order: the context a DFlash drafter conditions on. The output is Hugging
    /// Face's `hidden_states[id + 1]`: the residual stream after the layer's MoE block, except
    /// for the last layer, whose entry transformers replaces with the final norm's output.
    pub capture_layers: Vec<usize>,
    /// Treat the tokens as a drafted block (the last committed token, then drafts) and add the
    /// [`Accept`] op over them and the greedy ids: outputs `accepted` and `committed`.
    pub accept: bool,
}

/// The state name of layer `layer`'s key (`"k"`) or value (`"v"`) cache.
pub fn cache_name(layer: usize, kv: &str) -> String {
    format!("layers.{layer}.{kv}_cache")
}

/// Builds the graph of one step over `tokens` tokens with a cache of `max_context` positions.
pub fn decode_graph(
    spec: &ModelSpec,
    tokens: usize,
    max_context: usize,
) -> Result<Graph, GraphError> {
    decode_graph_with(spec, tokens, max_context, &DecodeOptions::default())
}

/// [`decode_graph`] with the additions `options` asks for; with the default options it is the
/// same graph.
pub fn decode_graph_with(
    spec: &ModelSpec,
    tokens: usize,
    max_context: usize,
    options: &DecodeOptions,
) -> Result<Graph, GraphError> {
    spec.check().map_err(|message| GraphError {
        node: "spec".into(),
        message,
    })?;
    let mut b = ModelGraph {
        b: GraphBuilder::new(format!("{}_t{tokens}", spec.architecture.model_type())),
        spec,
    };
    if let Some(&bad) = options
        .capture_layers
        .iter()
        .find(|&&l| l >= spec.num_layers)
    {
        return Err(GraphError {
            node: FEATURES.into(),
            message: format!(
                "cannot capture layer {bad}: the model has {} layers",
                spec.num_layers
            ),
        });
    }
    let ids = b.b.input(TOKEN_IDS, TensorType::i32([tokens]))?;
    let positions = b.b.input(POSITIONS, TensorType::i32([tokens]))?;
    let embed = b.weight(names::EMBED, vec![spec.vocab_size, spec.hidden_size], false)?;
    let mut x = b.b.op1("embed_tokens", Embedding {}, &[embed, ids])?;
    let mut layer_out = Vec::with_capacity(spec.num_layers);
    for layer in 0..spec.num_layers {
        x = b.attention_block(layer, x, positions, max_context)?;
        x = match spec.mlp(layer) {
            Mlp::Experts => b.moe_block(layer, x)?,
            Mlp::Dense => b.dense_mlp_block(layer, x)?,
        };
        layer_out.push(x);
    }
    let norm = b.weight(names::FINAL_NORM, vec![spec.hidden_size], false)?;
    let h = b.b.op1(
        "final_norm_out",
        RmsNorm {
            eps: spec.rms_norm_eps as f32,
        },
        &[x, norm],
    )?;
    // transformers' `hidden_states[num_layers]` is the final norm's output, not the last
    // layer's residual stream, and DFlash drafts were trained on `hidden_states[id + 1]`.
    if let Some(last) = layer_out.last_mut() {
        *last = h;
    }
    // Joined left to right; every id indexes `layer_out`, checked above.
    let mut features: Option<Value> = None;
    for (slot, &layer) in options.capture_layers.iter().enumerate() {
        let v = layer_out[layer];
        features = Some(match features {
            None => v,
            Some(f) => {
                b.b.op1(&format!("features_{slot}"), Concat { axis: 1 }, &[f, v])?
            }
        });
    }
    if let Some(f) = features {
        b.b.output(FEATURES, f)?;
    }
    let lm_head = b.weight(
        names::LM_HEAD,
        vec![spec.vocab_size, spec.hidden_size],
        false,
    )?;
    let logits = b.b.op1("lm_head_out", Linear {}, &[h, lm_head])?;
    let next = b.b.op1("greedy", Argmax {}, &[logits])?;
    b.b.output(LOGITS, logits)?;
    b.b.output(NEXT_IDS, next)?;
    if options.accept {
        let acc = b.b.op("accept", Accept {}, &[ids, next])?;
        b.b.output(ACCEPTED, acc[Accept::ACCEPTED])?;
        b.b.output(COMMITTED, acc[Accept::COMMITTED])?;
    }
    b.b.finish()
}

struct ModelGraph<'a> {
    b: GraphBuilder,
    spec: &'a ModelSpec,
}

impl ModelGraph<'_> {
    fn weight(&mut self, name: &str, shape: Vec<usize>, expert: bool) -> Result<Value, GraphError> {
        let format = if expert {
            self.spec.formats.experts
        } else {
            self.spec.formats.dense
        };
        self.b
            .weight(name, TensorType::new(shape, DType::from(format)))
    }

    fn layer_weight(&mut self, layer: usize, w: LayerWeight) -> Result<Value, GraphError> {
        self.weight(&w.name(layer), w.shape(self.spec, layer), w.is_expert())
    }

    fn norm(&mut self, name: String, x: Value, weight: Value) -> Result<Value, GraphError> {
        self.b.op1(
            &name,
            RmsNorm {
                eps: self.spec.rms_norm_eps as f32,
            },
            &[x, weight],
        )
    }

    /// `x + o_proj(attention(rope(norm(q)), cache(rope(norm(k))), cache(v)))` over `attn_norm(x)`,
    /// with the layer's own heads, RoPE, window and sinks; MiMo-V2 scales v before its cache.
    fn attention_block(
        &mut self,
        l: usize,
        x: Value,
        positions: Value,
        ctx: usize,
    ) -> Result<Value, GraphError> {
        let s = self.spec;
        let a = s.attention(l);
        let t = self.b.value_type(x).shape[0];
        let p = |what: &str| format!("layers.{l}.{what}");
        let attn_norm = self.layer_weight(l, LayerWeight::AttnNorm)?;
        let h = self.norm(p("attn_in"), x, attn_norm)?;

        // q and k: project, split into heads, per-head RMSNorm (Qwen3-MoE), RoPE; v: project,
        // split and scale (MiMo-V2).
        let qk_norm = s.architecture.has_qk_norm();
        let rope = Rope {
            theta: a.rope_theta,
            rotary_dim: if a.rotary_dim == a.head_dim {
                0
            } else {
                a.rotary_dim
            },
        };
        let mut heads = Vec::new();
        for (w, n_heads, dim, norm_w, what) in [
            (
                LayerWeight::Wq,
                a.num_heads,
                a.head_dim,
                qk_norm.then_some(LayerWeight::QNorm),
                "q",
            ),
            (
                LayerWeight::Wk,
                a.num_kv_heads,
                a.head_dim,
                qk_norm.then_some(LayerWeight::KNorm),
                "k",
            ),
            (LayerWeight::Wv, a.num_kv_heads, a.v_head_dim, None, "v"),
        ] {
            let weight = self.layer_weight(l, w)?;
            let proj = self
                .b
                .op1(&p(&format!("{what}_proj")), Linear {}, &[h, weight])?;
            let shape = vec![t, n_heads, dim];
            let mut v = self
                .b
                .op1(&p(&format!("{what}_heads")), Reshape { shape }, &[proj])?;
            if let Some(norm_w) = norm_w {
                let nw = self.layer_weight(l, norm_w)?;
                v = self.norm(p(&format!("{what}_normed")), v, nw)?;
            }
            if what != "v" {
                v = self
                    .b
                    .op1(&p(&format!("{what}_rope")), rope.clone(), &[v, positions])?;
            } else if let Some(factor) = s.hybrid.as_ref().map(|h| h.value_scale)
                && factor != 1.0
            {
                v = self.b.op1(&p("v_scaled"), Scale { factor }, &[v])?;
            }
            heads.push(v);
        }
        let (q, k, v) = (heads[0], heads[1], heads[2]);

        // The megakernel keeps KV caches in bf16; the interpreter computes in f32 whatever the
        // declared storage type.
        let cache = |dim| TensorType::new([ctx, a.num_kv_heads, dim], DType::Bf16);
        let k_cache = self.b.state(&cache_name(l, "k"), cache(a.head_dim))?;
        let v_cache = self.b.state(&cache_name(l, "v"), cache(a.v_head_dim))?;
        let k_all = self
            .b
            .op1(&p("k_append"), KvAppend {}, &[k_cache, k, positions])?;
        let v_all = self
            .b
            .op1(&p("v_append"), KvAppend {}, &[v_cache, v, positions])?;
        let mut operands = vec![q, k_all, v_all, positions];
        if a.sinks {
            operands.push(self.layer_weight(l, LayerWeight::Sinks)?);
        }
        let attention = Attention {
            scale: a.scale(),
            window: a.window,
        };
        let attn = self.b.op1(&p("attention"), attention, &operands)?;
        let flat = self.b.op1(
            &p("attn_flat"),
            Reshape {
                shape: vec![t, a.num_heads * a.v_head_dim],
            },
            &[attn],
        )?;
        let wo = self.layer_weight(l, LayerWeight::Wo)?;
        let o = self.b.op1(&p("o_proj"), Linear {}, &[flat, wo])?;
        self.b.op1(&p("attn_residual"), Add {}, &[x, o])
    }

    /// `x + down(silu(gate(h)) * up(h))` over `h = ffn_norm(x)`: MiMo-V2's dense MLP layers.
    fn dense_mlp_block(&mut self, l: usize, x: Value) -> Result<Value, GraphError> {
        let p = |what: &str| format!("layers.{l}.{what}");
        let ffn_norm = self.layer_weight(l, LayerWeight::FfnNorm)?;
        let h = self.norm(p("ffn_in"), x, ffn_norm)?;
        let gate_w = self.layer_weight(l, LayerWeight::MlpGate)?;
        let up_w = self.layer_weight(l, LayerWeight::MlpUp)?;
        let down_w = self.layer_weight(l, LayerWeight::MlpDown)?;
        let gate = self.b.op1(&p("mlp_gate"), Linear {}, &[h, gate_w])?;
        let up = self.b.op1(&p("mlp_up"), Linear {}, &[h, up_w])?;
        let act = self.b.op1(&p("mlp_act"), SiluMul {}, &[gate, up])?;
        let down = self.b.op1(&p("mlp_down"), Linear {}, &[act, down_w])?;
        self.b.op1(&p("mlp_residual"), Add {}, &[x, down])
    }

    /// `x + sum_j w_j * down_j(silu(gate_j(h)) * up_j(h))` over the routed experts j of `h = ffn_norm(x)`.
    fn moe_block(&mut self, l: usize, x: Value) -> Result<Value, GraphError> {
        let p = |what: &str| format!("layers.{l}.{what}");
        let ffn_norm = self.layer_weight(l, LayerWeight::FfnNorm)?;
        let h = self.norm(p("ffn_in"), x, ffn_norm)?;
        let router = self.layer_weight(l, LayerWeight::Router)?;
        let logits = self.b.op1(&p("router_logits"), Linear {}, &[h, router])?;
        let (k, normalize) = (self.spec.experts_per_token, self.spec.norm_topk_prob);
        let routed = match &self.spec.hybrid {
            Some(hybrid) if self.spec.architecture.has_sigmoid_router() => {
                let bias = self.layer_weight(l, LayerWeight::RouterBias)?;
                let router = RouterTopK {
                    k,
                    normalize,
                    scoring: RouterScoring::Sigmoid,
                    scale: hybrid.routed_scaling_factor,
                };
                self.b.op(&p("route"), router, &[logits, bias])?
            }
            _ => self
                .b
                .op(&p("route"), RouterTopK::softmax(k, normalize), &[logits])?,
        };
        let (ids, weights) = (routed[RouterTopK::IDS], routed[RouterTopK::WEIGHTS]);
        let gate_w = self.layer_weight(l, LayerWeight::ExpertsGate)?;
        let up_w = self.layer_weight(l, LayerWeight::ExpertsUp)?;
        let down_w = self.layer_weight(l, LayerWeight::ExpertsDown)?;
        let gate = self
            .b
            .op1(&p("expert_gate"), ExpertLinear {}, &[h, ids, gate_w])?;
        let up = self
            .b
            .op1(&p("expert_up"), ExpertLinear {}, &[h, ids, up_w])?;
        let act = self.b.op1(&p("expert_act"), SiluMul {}, &[gate, up])?;
        let down = self
            .b
            .op1(&p("expert_down"), ExpertLinear {}, &[act, ids, down_w])?;
        let moe = self
            .b
            .op1(&p("moe_out"), WeightedSum {}, &[down, weights])?;
        self.b.op1(&p("moe_residual"), Add {}, &[x, moe])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::NodeKind;
    use crate::model::Architecture;
    use crate::ops::Linear;

    #[test]
    fn decode_graph_round_trips_through_json() {
        for spec in [
            ModelSpec::tiny(Architecture::Qwen3Moe),
            ModelSpec::tiny(Architecture::Mixtral),
        ] {
            let g = decode_graph(&spec, 3, 16).unwrap();
            let json = g.to_json();
            let back = Graph::from_json(&json).unwrap();
            assert_eq!(back.to_json(), json);
            assert_eq!(back.node_count(), g.node_count());
        }
    }

    #[test]
    fn default_options_build_the_plain_decode_graph() {
        let spec = ModelSpec::tiny(Architecture::Qwen3Moe);
        let plain = decode_graph(&spec, 3, 16).unwrap();
        let with = decode_graph_with(&spec, 3, 16, &DecodeOptions::default()).unwrap();
        assert_eq!(plain.to_json(), with.to_json());
        assert!(plain.output(FEATURES).is_none() && plain.output(ACCEPTED).is_none());
    }

    #[test]
    fn captured_features_are_joined_in_the_given_order() {
        let spec = ModelSpec::tiny(Architecture::Qwen3Moe);
        let options = DecodeOptions {
            capture_layers: vec![1, 0],
            accept: true,
        };
        let g = decode_graph_with(&spec, 3, 16, &options).unwrap();
        let f = g.output(FEATURES).unwrap();
        assert_eq!(g.value_type(f).shape, [3, 2 * spec.hidden_size]);
        let join = g.node(f.node);
        let first = g.node(join.inputs[0].node);
        let second = g.node(join.inputs[1].node);
        // Layer 1 is the last: its hidden state is the final norm's output, as in transformers.
        assert_eq!(first.name, "final_norm_out");
        assert_eq!(second.name, "layers.0.moe_residual");
        assert_eq!(g.value_type(g.output(COMMITTED).unwrap()).shape, [3]);
        let err = decode_graph_with(
            &spec,
            1,
            8,
            &DecodeOptions {
                capture_layers: vec![2],
                accept: false,
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot capture layer 2: the model has 2 layers"),
            "{err}"
        );
    }

    #[test]
    fn qk_norm_only_in_qwen3() {
        let count = |spec: &ModelSpec| {
            let g = decode_graph(spec, 1, 8).unwrap();
            g.nodes()
                .filter(|(_, n)| n.name.ends_with("_normed"))
                .count()
        };
        assert_eq!(count(&ModelSpec::tiny(Architecture::Qwen3Moe)), 2 * 2);
        assert_eq!(count(&ModelSpec::tiny(Architecture::Mixtral)), 0);
    }

    /// MiMo-V2: each layer has its own attention and MLP, and a bad structure is one error.
    #[test]
    fn hybrid_layers_get_their_own_attention_and_mlp() {
        let spec = ModelSpec::tiny(Architecture::MimoV2Flash);
        let g = decode_graph(&spec, 2, 8).unwrap();
        let node = |name: &str| g.nodes().find(|(_, n)| n.name == name).unwrap().1;
        let state = |l: usize, kv: &str| node(&cache_name(l, kv)).outputs[0].shape.clone();
        assert_eq!(state(0, "k"), [8, 1, 24]);
        assert_eq!(state(0, "v"), [8, 1, 16]);
        assert_eq!(state(1, "k"), [8, 2, 24]);
        assert_eq!(node("layers.0.attention").inputs.len(), 4);
        assert_eq!(node("layers.1.attention").inputs.len(), 5);
        assert!(g.nodes().any(|(_, n)| n.name == "layers.0.mlp_residual"));
        assert!(g.nodes().all(|(_, n)| n.name != "layers.0.route"));
        assert_eq!(node("layers.2.route").inputs.len(), 2);
        assert_eq!(node("layers.1.v_scaled").outputs[0].shape, [2, 2, 16]);

        let mut bad = spec.clone();
        bad.hybrid.as_mut().unwrap().sliding.window = 0;
        let err = decode_graph(&bad, 1, 8).unwrap_err();
        assert!(err.to_string().contains("hybrid.sliding.window"), "{err}");
        let mut bad = spec;
        bad.hybrid.as_mut().unwrap().dense_layers.pop();
        let err = decode_graph(&bad, 1, 8).unwrap_err();
        assert!(
            err.to_string()
                .contains("hybrid.dense_layers: 2 entries for 3 layers"),
            "{err}"
        );
    }

    #[test]
    fn declares_every_named_weight_with_its_shape() {
        for spec in [
            ModelSpec::tiny(Architecture::Qwen3Moe),
            ModelSpec::tiny(Architecture::MimoV2Flash),
        ] {
            declares_every_named_weight(&spec);
        }
    }

    fn declares_every_named_weight(spec: &ModelSpec) {
        let g = decode_graph(spec, 1, 8).unwrap();
        let declared: Vec<(String, Vec<usize>)> = g
            .nodes_of(|k| matches!(k, NodeKind::Weight))
            .map(|(_, n)| (n.name.clone(), n.outputs[0].shape.clone()))
            .collect();
        let mut expected: Vec<(String, Vec<usize>)> = names::all_weights(spec)
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        let mut declared_sorted = declared.clone();
        declared_sorted.sort();
        expected.sort();
        assert_eq!(declared_sorted, expected);
    }

    #[test]
    fn wiring_errors_name_the_node() {
        let mut b = GraphBuilder::new("bad");
        let x = b.input("x", TensorType::f32([2, 8])).unwrap();
        let w = b.weight("w", TensorType::f32([4, 7])).unwrap();
        let err = b.op1("proj", Linear {}, &[x, w]).unwrap_err();
        assert_eq!(err.node, "proj");
        assert!(
            err.to_string()
                .contains("node `proj`: linear: weight must be float [out, 8]"),
            "{err}"
        );
        let err = b.op1("proj", Linear {}, &[x]).unwrap_err();
        assert!(
            err.to_string()
                .contains("takes 2 operands (x, weight), got 1"),
            "{err}"
        );
        let err = b.input("x", TensorType::f32([1])).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[test]
    fn rejects_a_state_read_besides_its_in_place_update() {
        let mut b = GraphBuilder::new("bad");
        let cache = b.state("cache", TensorType::f32([4, 1, 2])).unwrap();
        let new = b.input("new", TensorType::f32([1, 1, 2])).unwrap();
        let pos = b.input("pos", TensorType::i32([1])).unwrap();
        b.op1("append", KvAppend {}, &[cache, new, pos]).unwrap();
        b.op1("peek", Add {}, &[cache, cache]).unwrap();
        let err = b.finish().unwrap_err();
        assert_eq!(err.node, "append");
        assert!(err.message.contains("also read elsewhere"), "{err}");
    }
}
