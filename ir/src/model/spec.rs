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
}

impl Architecture {
    /// The Hugging Face `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen3Moe => "qwen3_moe",
            Architecture::Mixtral => "mixtral",
        }
    }

    /// Parses a Hugging Face `model_type`; `None` for a family mimo does not support.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen3_moe" => Some(Architecture::Qwen3Moe),
            "mixtral" => Some(Architecture::Mixtral),
            _ => None,
        }
    }

    /// Whether attention applies an RMSNorm over head_dim to q and k before RoPE.
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3Moe)
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
}

impl ModelSpec {
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
        }
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
        }
    }
}
