//! The names under which the graph builders declare weights. The importer maps a checkpoint's
//! tensor names onto these; routed experts are stacked into one tensor per projection.
//!
//! | name | shape |
//! |---|---|
//! | `embed` | [V, H] |
//! | `layers.{L}.attn_norm` | `[H]` |
//! | `layers.{L}.wq` / `wk` / `wv` | [nh*hd, H] / [nkv*hd, H] / [nkv*hd, H] |
//! | `layers.{L}.q_norm` / `k_norm` (Qwen3-MoE only) | `[hd]` |
//! | `layers.{L}.wo` | [H, nh*hd] |
//! | `layers.{L}.ffn_norm` | `[H]` |
//! | `layers.{L}.router` | [E, H] |
//! | `layers.{L}.experts.gate` / `experts.up` | [E, I, H] |
//! | `layers.{L}.experts.down` | [E, H, I] |
//! | `final_norm` | `[H]` |
//! | `lm_head` | [V, H] (the embedding when tied) |

use super::ModelSpec;

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
    Wo,
    FfnNorm,
    Router,
    ExpertsGate,
    ExpertsUp,
    ExpertsDown,
}

impl LayerWeight {
    pub const ALL: [LayerWeight; 12] = [
        LayerWeight::AttnNorm,
        LayerWeight::Wq,
        LayerWeight::Wk,
        LayerWeight::Wv,
        LayerWeight::QNorm,
        LayerWeight::KNorm,
        LayerWeight::Wo,
        LayerWeight::FfnNorm,
        LayerWeight::Router,
        LayerWeight::ExpertsGate,
        LayerWeight::ExpertsUp,
        LayerWeight::ExpertsDown,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            LayerWeight::AttnNorm => "attn_norm",
            LayerWeight::Wq => "wq",
            LayerWeight::Wk => "wk",
            LayerWeight::Wv => "wv",
            LayerWeight::QNorm => "q_norm",
            LayerWeight::KNorm => "k_norm",
            LayerWeight::Wo => "wo",
            LayerWeight::FfnNorm => "ffn_norm",
            LayerWeight::Router => "router",
            LayerWeight::ExpertsGate => "experts.gate",
            LayerWeight::ExpertsUp => "experts.up",
            LayerWeight::ExpertsDown => "experts.down",
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

    /// Whether `spec`'s architecture has this weight.
    pub fn present_in(self, spec: &ModelSpec) -> bool {
        !matches!(self, LayerWeight::QNorm | LayerWeight::KNorm) || spec.architecture.has_qk_norm()
    }

    /// The logical shape of this weight for `spec`.
    pub fn shape(self, spec: &ModelSpec) -> Vec<usize> {
        let (h, e, i) = (
            spec.hidden_size,
            spec.num_experts,
            spec.expert_intermediate_size,
        );
        match self {
            LayerWeight::AttnNorm | LayerWeight::FfnNorm => vec![h],
            LayerWeight::Wq => vec![spec.q_dim(), h],
            LayerWeight::Wk | LayerWeight::Wv => vec![spec.kv_dim(), h],
            LayerWeight::QNorm | LayerWeight::KNorm => vec![spec.head_dim],
            LayerWeight::Wo => vec![h, spec.q_dim()],
            LayerWeight::Router => vec![e, h],
            LayerWeight::ExpertsGate | LayerWeight::ExpertsUp => vec![e, i, h],
            LayerWeight::ExpertsDown => vec![e, h, i],
        }
    }
}

/// Every weight the builders declare for `spec`, with its shape and whether it is an expert weight.
pub fn all_weights(spec: &ModelSpec) -> Vec<(String, Vec<usize>, bool)> {
    let (v, h) = (spec.vocab_size, spec.hidden_size);
    let mut out = vec![(EMBED.to_string(), vec![v, h], false)];
    for layer in 0..spec.num_layers {
        for w in LayerWeight::ALL.into_iter().filter(|w| w.present_in(spec)) {
            out.push((w.name(layer), w.shape(spec), w.is_expert()));
        }
    }
    out.push((FINAL_NORM.to_string(), vec![h], false));
    out.push((LM_HEAD.to_string(), vec![v, h], false));
    out
}
