//! The names under which the graph builders declare weights. The importer maps a checkpoint's
//! tensor names onto these; routed experts are stacked into one tensor per projection.
//!
//! | name | shape |
//! |---|---|
//! | `embed` | [V, H] |
//! | `layers.{L}.attn_norm` | `[H]` |
//! | `layers.{L}.wq` / `wk` / `wv` | [nh*hd, H] / [nkv*hd, H] / [nkv*vhd, H] |
//! | `layers.{L}.q_norm` / `k_norm` (Qwen3-MoE only) | `[hd]` |
//! | `layers.{L}.sinks` (layers with attention sinks) | `[nh]` |
//! | `layers.{L}.wo` | [H, nh*vhd] |
//! | `layers.{L}.ffn_norm` | `[H]` |
//! | `layers.{L}.router` | [E, H] |
//! | `layers.{L}.router_bias` (MiMo-V2's selection bias) | `[E]` |
//! | `layers.{L}.experts.gate` / `experts.up` | [E, I, H] |
//! | `layers.{L}.experts.down` | [E, H, I] |
//! | `layers.{L}.mlp.gate` / `mlp.up` (dense MLP layers) | [Id, H] |
//! | `layers.{L}.mlp.down` (dense MLP layers) | [H, Id] |
//!
//! The attention shapes are the layer's own ([`ModelSpec::attention`]): vhd = hd but in MiMo-V2.
//! | `final_norm` | `[H]` |
//! | `lm_head` | [V, H] (the embedding when tied) |

use super::ModelSpec;
use super::spec::Mlp;

pub const EMBED: &str = "embed";
pub const FINAL_NORM: &str = "final_norm";
pub const LM_HEAD: &str = "lm_head";

/// The per-layer weights, in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerWeight {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    QNorm,
    KNorm,
    Sinks,
    Wo,
    FfnNorm,
    Router,
    RouterBias,
    ExpertsGate,
    ExpertsUp,
    ExpertsDown,
    MlpGate,
    MlpUp,
    MlpDown,
}

impl LayerWeight {
    pub const ALL: [LayerWeight; 17] = [
        LayerWeight::AttnNorm,
        LayerWeight::Wq,
        LayerWeight::Wk,
        LayerWeight::Wv,
        LayerWeight::QNorm,
        LayerWeight::KNorm,
        LayerWeight::Sinks,
        LayerWeight::Wo,
        LayerWeight::FfnNorm,
        LayerWeight::Router,
        LayerWeight::RouterBias,
        LayerWeight::ExpertsGate,
        LayerWeight::ExpertsUp,
        LayerWeight::ExpertsDown,
        LayerWeight::MlpGate,
        LayerWeight::MlpUp,
        LayerWeight::MlpDown,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            LayerWeight::AttnNorm => "attn_norm",
            LayerWeight::Wq => "wq",
            LayerWeight::Wk => "wk",
            LayerWeight::Wv => "wv",
            LayerWeight::QNorm => "q_norm",
            LayerWeight::KNorm => "k_norm",
            LayerWeight::Sinks => "sinks",
            LayerWeight::Wo => "wo",
            LayerWeight::FfnNorm => "ffn_norm",
            LayerWeight::Router => "router",
            LayerWeight::RouterBias => "router_bias",
            LayerWeight::ExpertsGate => "experts.gate",
            LayerWeight::ExpertsUp => "experts.up",
            LayerWeight::ExpertsDown => "experts.down",
            LayerWeight::MlpGate => "mlp.gate",
            LayerWeight::MlpUp => "mlp.up",
            LayerWeight::MlpDown => "mlp.down",
        }
    }

    /// The full IR name of this weight in layer `layer`.
    pub fn name(self, layer: usize) -> String {
        format!("layers.{layer}.{}", self.suffix())
    }

    /// Routed-expert projections (stored in the experts format); everything else is dense.
    pub fn is_expert(self) -> bool {
        matches!(
            self,
            LayerWeight::ExpertsGate | LayerWeight::ExpertsUp | LayerWeight::ExpertsDown
        )
    }

    /// Whether layer `layer` of `spec` has this weight.
    pub fn present_in(self, spec: &ModelSpec, layer: usize) -> bool {
        let experts = spec.mlp(layer) == Mlp::Experts;
        match self {
            LayerWeight::QNorm | LayerWeight::KNorm => spec.architecture.has_qk_norm(),
            LayerWeight::Sinks => spec.attention(layer).sinks,
            LayerWeight::Router
            | LayerWeight::ExpertsGate
            | LayerWeight::ExpertsUp
            | LayerWeight::ExpertsDown => experts,
            LayerWeight::RouterBias => experts && spec.architecture.has_sigmoid_router(),
            LayerWeight::MlpGate | LayerWeight::MlpUp | LayerWeight::MlpDown => !experts,
            _ => true,
        }
    }

    /// The logical shape of this weight in layer `layer` of `spec`.
    pub fn shape(self, spec: &ModelSpec, layer: usize) -> Vec<usize> {
        let (h, e, i) = (
            spec.hidden_size,
            spec.num_experts,
            spec.expert_intermediate_size,
        );
        let a = spec.attention(layer);
        let dense = spec
            .hybrid
            .as_ref()
            .map_or(0, |hy| hy.dense_intermediate_size);
        match self {
            LayerWeight::AttnNorm | LayerWeight::FfnNorm => vec![h],
            LayerWeight::Wq => vec![a.q_dim(), h],
            LayerWeight::Wk => vec![a.kv_dim(), h],
            LayerWeight::Wv => vec![a.v_dim(), h],
            LayerWeight::QNorm | LayerWeight::KNorm => vec![a.head_dim],
            LayerWeight::Sinks => vec![a.num_heads],
            LayerWeight::Wo => vec![h, a.num_heads * a.v_head_dim],
            LayerWeight::Router => vec![e, h],
            LayerWeight::RouterBias => vec![e],
            LayerWeight::ExpertsGate | LayerWeight::ExpertsUp => vec![e, i, h],
            LayerWeight::ExpertsDown => vec![e, h, i],
            LayerWeight::MlpGate | LayerWeight::MlpUp => vec![dense, h],
            LayerWeight::MlpDown => vec![h, dense],
        }
    }
}

/// Every weight the builders declare for `spec`, with its shape and whether it is an expert weight.
pub fn all_weights(spec: &ModelSpec) -> Vec<(String, Vec<usize>, bool)> {
    let (v, h) = (spec.vocab_size, spec.hidden_size);
    let mut out = vec![(EMBED.to_string(), vec![v, h], false)];
    for layer in 0..spec.num_layers {
        for w in LayerWeight::ALL
            .into_iter()
            .filter(|w| w.present_in(spec, layer))
        {
            out.push((w.name(layer), w.shape(spec, layer), w.is_expert()));
        }
    }
    out.push((FINAL_NORM.to_string(), vec![h], false));
    out.push((LM_HEAD.to_string(), vec![v, h], false));
    out
}
