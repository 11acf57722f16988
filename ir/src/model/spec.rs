//! `ModelSpec`: everything the graph builders need to know about a model, independent of where it
//! came from (a Hugging Face `config.json`, or a `model.toml` that describes the architecture inline).

use serde::{Deserialize, Serialize};

use crate::formats::WeightFormat;

/// The model families mimo can build decode graphs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// `model_type = "qwen3_moe"`: q/k RMSNorm per head before RoPE, router renormalised only when
    /// `norm_topk_prob`.
    Qwen3Moe,
    /// `model_type = "mixtral"`: no q/k norm, router always renormalised.
    Mixtral,
    /// `model_type = "mimo_v2_flash"` (Xiaomi MiMo-V2-Flash), and `"mimo_v2"` (MiMo-V2.5 and
    /// V2.5-Pro: the same decoder, whose checkpoints may fuse q/k/v into one `qkv_proj`): no q/k
    /// norm; full and sliding-window attention layers ([`HybridSpec`]); a sigmoid router with a
    /// selection bias.
    MimoV2Flash,
}

impl Architecture {
    /// The Hugging Face `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen3Moe => "qwen3_moe",
            Architecture::Mixtral => "mixtral",
            Architecture::MimoV2Flash => "mimo_v2_flash",
        }
    }

    /// Parses a Hugging Face `model_type`; `None` for a family mimo does not support.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen3_moe" => Some(Architecture::Qwen3Moe),
            "mixtral" => Some(Architecture::Mixtral),
            "mimo_v2_flash" | "mimo_v2" => Some(Architecture::MimoV2Flash),
            _ => None,
        }
    }

    /// Whether attention applies an RMSNorm over head_dim to q and k before RoPE.
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3Moe)
    }

    /// Whether the router scores experts with a sigmoid and selects with a bias (MiMo-V2);
    /// otherwise a softmax.
    pub fn has_sigmoid_router(self) -> bool {
        matches!(self, Architecture::MimoV2Flash)
    }
}

/// Storage formats chosen for the model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WeightFormats {
    /// Routed-expert gate/up/down projections.
    pub experts: WeightFormat,
    /// Every other weight (embeddings, attention, norms, router, lm_head).
    pub dense: WeightFormat,
}

/// The shape and hyper-parameters of an MoE decoder model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub num_experts: usize,
    pub experts_per_token: usize,
    /// Intermediate size of one routed expert (`moe_intermediate_size` for Qwen3-MoE,
    /// `intermediate_size` for Mixtral).
    pub expert_intermediate_size: usize,
    /// Renormalise the top-k router weights to sum to one.
    pub norm_topk_prob: bool,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub formats: WeightFormats,
    /// MiMo-V2's per-layer structure; `None` for the uniform decoders of Qwen3-MoE and Mixtral.
    /// With it, `num_heads`, `num_kv_heads`, `head_dim` and `rope_theta` above are those of the
    /// full-attention layers (`hybrid.full`, checked by [`ModelSpec::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid: Option<HybridSpec>,
}

/// The attention of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionSpec {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Query and key head dim.
    pub head_dim: usize,
    /// Value head dim (MiMo-V2: 128 where queries and keys have 192).
    pub v_head_dim: usize,
    pub rope_theta: f64,
    /// Leading dims of each head that RoPE rotates; the rest pass through.
    pub rotary_dim: usize,
    /// Rows a query sees, itself included (transformers' `sliding_window`); 0 for all before it.
    pub window: usize,
    /// A learned per-head sink logit in the softmax (weight `layers.L.sinks`).
    pub sinks: bool,
}

impl AttentionSpec {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    pub fn v_dim(&self) -> usize {
        self.num_kv_heads * self.v_head_dim
    }
    /// The softmax scale: 1/sqrt(query head dim).
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// A decoder whose layers differ (MiMo-V2): each layer's attention is `full` or `sliding`, and
/// its MLP routed experts or one dense SwiGLU MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HybridSpec {
    pub full: AttentionSpec,
    pub sliding: AttentionSpec,
    /// Per layer: whether it is a sliding-window layer (transformers' `layer_types`).
    pub sliding_layers: Vec<bool>,
    /// Per layer: whether its MLP is dense (`mlp_layer_types = "dense"`) rather than experts.
    pub dense_layers: Vec<bool>,
    /// Intermediate size of the dense MLP layers.
    pub dense_intermediate_size: usize,
    /// Multiplies the values before they enter the KV cache (`attention_value_scale`).
    pub value_scale: f32,
    /// Multiplies the routed experts' weights (`routed_scaling_factor`).
    pub routed_scaling_factor: f32,
}

/// Which MLP a layer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    Experts,
    Dense,
}

impl ModelSpec {
    /// The attention of layer `layer`.
    pub fn attention(&self, layer: usize) -> AttentionSpec {
        match &self.hybrid {
            Some(h) if h.sliding_layers.get(layer) == Some(&true) => h.sliding.clone(),
            Some(h) => h.full.clone(),
            None => AttentionSpec {
                num_heads: self.num_heads,
                num_kv_heads: self.num_kv_heads,
                head_dim: self.head_dim,
                v_head_dim: self.head_dim,
                rope_theta: self.rope_theta,
                rotary_dim: self.head_dim,
                window: 0,
                sinks: false,
            },
        }
    }

    /// The MLP of layer `layer`.
    pub fn mlp(&self, layer: usize) -> Mlp {
        match &self.hybrid {
            Some(h) if h.dense_layers.get(layer) == Some(&true) => Mlp::Dense,
            _ => Mlp::Experts,
        }
    }

    /// Whether `spec` is consistent: one message naming the field when it is not. The config
    /// importer and the graph builder both call it.
    pub fn check(&self) -> Result<(), String> {
        let hybrid = match (&self.hybrid, self.architecture) {
            (None, Architecture::MimoV2Flash) => {
                return Err("hybrid: a mimo_v2_flash model needs its per-layer structure".into());
            }
            (Some(_), a) if a != Architecture::MimoV2Flash => {
                return Err(format!("hybrid: {} has uniform layers", a.model_type()));
            }
            (None, _) => return Ok(()),
            (Some(h), _) => h,
        };
        let n = self.num_layers;
        for (field, len) in [
            ("hybrid.sliding_layers", hybrid.sliding_layers.len()),
            ("hybrid.dense_layers", hybrid.dense_layers.len()),
        ] {
            if len != n {
                return Err(format!("{field}: {len} entries for {n} layers"));
            }
        }
        for (field, a) in [
            ("hybrid.full", &hybrid.full),
            ("hybrid.sliding", &hybrid.sliding),
        ] {
            if a.num_heads == 0 || a.num_kv_heads == 0 || a.head_dim == 0 || a.v_head_dim == 0 {
                return Err(format!("{field}: head counts and dims must be positive"));
            }
            if !a.num_heads.is_multiple_of(a.num_kv_heads) {
                return Err(format!(
                    "{field}.num_kv_heads: {} does not divide num_heads {}",
                    a.num_kv_heads, a.num_heads
                ));
            }
            if a.rotary_dim == 0 || a.rotary_dim > a.head_dim || a.rotary_dim % 2 != 0 {
                return Err(format!(
                    "{field}.rotary_dim: {} must be even and in 2..={}",
                    a.rotary_dim, a.head_dim
                ));
            }
        }
        if hybrid.sliding.window == 0 {
            return Err("hybrid.sliding.window: a sliding window of 0 rows sees nothing".into());
        }
        let full = &hybrid.full;
        if (
            full.num_heads,
            full.num_kv_heads,
            full.head_dim,
            full.rope_theta,
        ) != (
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.rope_theta,
        ) {
            return Err(
                "hybrid.full: differs from num_heads, num_kv_heads, head_dim, rope_theta".into(),
            );
        }
        if hybrid.dense_layers.contains(&true) && hybrid.dense_intermediate_size == 0 {
            return Err("hybrid.dense_intermediate_size: must be positive".into());
        }
        for (field, x) in [
            ("hybrid.value_scale", hybrid.value_scale),
            ("hybrid.routed_scaling_factor", hybrid.routed_scaling_factor),
        ] {
            if !(x.is_finite() && x > 0.0) {
                return Err(format!("{field}: must be positive, got {x}"));
            }
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn gqa_group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

impl ModelSpec {
    /// A tiny model of either family for tests and examples: head_dim x heads != hidden, GQA 2
    /// (Mixtral: 4), odd top-k (Mixtral: 2), f32 weights. Hidden and expert sizes are multiples of
    /// 32, so the experts can also be stored as MXFP4.
    pub fn tiny(architecture: Architecture) -> ModelSpec {
        if architecture == Architecture::MimoV2Flash {
            return Self::tiny_mimo();
        }
        let mixtral = architecture == Architecture::Mixtral;
        ModelSpec {
            architecture,
            vocab_size: 97,
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: if mixtral { 1 } else { 2 },
            head_dim: 24,
            num_experts: 6,
            experts_per_token: if mixtral { 2 } else { 3 },
            expert_intermediate_size: 32,
            norm_topk_prob: mixtral,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            formats: WeightFormats {
                experts: WeightFormat::F32,
                dense: WeightFormat::F32,
            },
            hybrid: None,
        }
    }

    /// A tiny MiMo-V2-Flash: 3 layers (full, sliding, sliding; the first dense), the sliding ones
    /// with twice the KV heads, sinks and a window of 3 rows; query/key heads of 24 and values of
    /// 16; a third of each head rotated.
    fn tiny_mimo() -> ModelSpec {
        let full = AttentionSpec {
            num_heads: 4,
            num_kv_heads: 1,
            head_dim: 24,
            v_head_dim: 16,
            rope_theta: 5e6,
            rotary_dim: 8,
            window: 0,
            sinks: false,
        };
        let sliding = AttentionSpec {
            num_kv_heads: 2,
            rope_theta: 1e4,
            window: 3,
            sinks: true,
            ..full.clone()
        };
        ModelSpec {
            num_layers: 3,
            num_heads: full.num_heads,
            num_kv_heads: full.num_kv_heads,
            head_dim: full.head_dim,
            rope_theta: full.rope_theta,
            norm_topk_prob: true,
            rms_norm_eps: 1e-5,
            hybrid: Some(HybridSpec {
                full,
                sliding,
                sliding_layers: vec![false, true, true],
                dense_layers: vec![true, false, false],
                dense_intermediate_size: 64,
                value_scale: 0.707,
                routed_scaling_factor: 1.5,
            }),
            ..Self::tiny(Architecture::Qwen3Moe)
        }
        .with_architecture(Architecture::MimoV2Flash)
    }

    fn with_architecture(mut self, architecture: Architecture) -> ModelSpec {
        self.architecture = architecture;
        self
    }

    /// Qwen3-30B-A3B's shape (its Hugging Face `config.json`) as the benchmarks run it: MXFP4 experts, bf16
    /// elsewhere (`benches/models/qwen3-30b-a3b.toml`).
    pub fn qwen3_30b_a3b() -> ModelSpec {
        ModelSpec {
            architecture: Architecture::Qwen3Moe,
            vocab_size: 151_936,
            hidden_size: 2048,
            num_layers: 48,
            num_heads: 32,
            num_kv_heads: 4,
            head_dim: 128,
            num_experts: 128,
            experts_per_token: 8,
            expert_intermediate_size: 768,
            norm_topk_prob: true,
            rope_theta: 1e6,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 40960,
            tie_word_embeddings: false,
            formats: WeightFormats {
                experts: WeightFormat::Mxfp4,
                dense: WeightFormat::Bf16,
            },
            hybrid: None,
        }
    }
}
