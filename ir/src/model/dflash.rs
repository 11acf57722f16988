//! DFlash speculative decoding (arXiv 2602.06036; z-lab/dflash `dflash/model.py`): the draft
//! model's description ([`DraftSpec`]), its weight names, and the two graphs a speculative step
//! runs besides acceptance: the target's verify graph and the draft graph ([`graph`]).
//!
//! The drafter is a short stack of Qwen3 decoder layers (dense SwiGLU MLP, q/k RMSNorm, GQA)
//! with no embedding and no lm_head of its own: it embeds its block with the target's `embed`
//! and reads its logits through the target's `lm_head`, so one weight store holds both models.
//! Its own weights live under `draft.`:
//!
//! | IR name | checkpoint tensor | shape |
//! |---|---|---|
//! | `draft.fc` | `fc.weight` | [H, ids * H] |
//! | `draft.hidden_norm` | `hidden_norm.weight` | `[H]` |
//! | `draft.layers.{L}.attn_norm` | `layers.{L}.input_layernorm.weight` | `[H]` |
//! | `draft.layers.{L}.wq` / `wk` / `wv` / `wo` | `layers.{L}.self_attn.{q,k,v,o}_proj.weight` | as in the target |
//! | `draft.layers.{L}.q_norm` / `k_norm` | `layers.{L}.self_attn.{q,k}_norm.weight` | `[hd]` |
//! | `draft.layers.{L}.ffn_norm` | `layers.{L}.post_attention_layernorm.weight` | `[H]` |
//! | `draft.layers.{L}.gate` / `up` | `layers.{L}.mlp.{gate,up}_proj.weight` | [I, H] |
//! | `draft.layers.{L}.down` | `layers.{L}.mlp.down_proj.weight` | [H, I] |
//! | `draft.norm` | `norm.weight` | `[H]` |
//!
//! Checkpoint names have no `model.` prefix: `DFlashDraftModel` holds `layers`, `fc`,
//! `hidden_norm` and `norm` directly (z-lab's safetensors headers, e.g. the DFlash2 test fixture
//! of z-lab/dflash, list exactly `fc.weight`, `hidden_norm.weight`, `layers.0.mlp.gate_proj.weight`,
//! ..., `norm.weight`).

pub mod graph;
#[cfg(test)]
mod tests;

pub use graph::{draft_graph, verify_graph};

use serde::{Deserialize, Serialize};

use crate::formats::{FormatError, WeightFormat};
use crate::math::Rng;
use crate::model::ModelSpec;
use crate::weights::{Weight, WeightStore};

/// The reference's `build_target_layer_ids`: one layer in the middle for a one-layer draft,
/// otherwise `num_draft_layers` ids spread evenly from 1 to `num_target_layers - 3`, rounded half
/// to even as Python's `round` does (36 target layers, 5 draft layers: [1, 9, 17, 25, 33]).
pub fn default_target_layer_ids(num_target_layers: usize, num_draft_layers: usize) -> Vec<usize> {
    if num_draft_layers <= 1 {
        return vec![num_target_layers / 2];
    }
    let (start, end) = (1.0, num_target_layers as f64 - 3.0);
    (0..num_draft_layers)
        .map(|i| {
            let x: f64 = start + i as f64 * (end - start) / (num_draft_layers - 1) as f64;
            x.round_ties_even().max(0.0) as usize
        })
        .collect()
}

/// The DFlash draft model: its Qwen3 shape and how it is wired to its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftSpec {
    /// Must equal the target's: the draft reads the target's embedding and lm_head.
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The dense SwiGLU MLP's intermediate size.
    pub intermediate_size: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    /// Tokens per drafted block, the last committed token included (16 for `-b16` drafts).
    pub block_size: usize,
    /// Target decoder layers whose outputs, side by side, are the draft's context features.
    pub target_layer_ids: Vec<usize>,
    /// The token that fills the block after its first (committed) token.
    pub mask_token_id: u32,
    /// The target's depth the draft was trained for, when the config says.
    pub num_target_layers: Option<usize>,
    /// Storage format of every draft weight (the checkpoint's dtype).
    pub format: WeightFormat,
}

impl DraftSpec {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Width of the context features: one hidden state per target layer id.
    pub fn feature_dim(&self) -> usize {
        self.target_layer_ids.len() * self.hidden_size
    }

    /// Whether this draft fits `target`; the message names what does not.
    pub fn check_target(&self, target: &ModelSpec) -> Result<(), String> {
        if self.hidden_size != target.hidden_size {
            return Err(format!(
                "hidden_size {} differs from the target's {} (the draft reads the target's embedding and lm_head)",
                self.hidden_size, target.hidden_size
            ));
        }
        if let Some(n) = self.num_target_layers
            && n != target.num_layers
        {
            return Err(format!(
                "num_target_layers {n} differs from the target's {} layers (a draft for another model?)",
                target.num_layers
            ));
        }
        if let Some(&bad) = self
            .target_layer_ids
            .iter()
            .find(|&&l| l >= target.num_layers)
        {
            return Err(format!(
                "target_layer_ids has {bad}, but the target has {} layers",
                target.num_layers
            ));
        }
        if self.mask_token_id as usize >= target.vocab_size {
            return Err(format!(
                "mask_token_id {} is outside the target's vocabulary of {}",
                self.mask_token_id, target.vocab_size
            ));
        }
        Ok(())
    }
}

pub const FC: &str = "draft.fc";
pub const HIDDEN_NORM: &str = "draft.hidden_norm";
pub const NORM: &str = "draft.norm";

/// The per-layer weights of the draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DraftWeight {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    QNorm,
    KNorm,
    Wo,
    FfnNorm,
    Gate,
    Up,
    Down,
}

impl DraftWeight {
    pub const ALL: [DraftWeight; 11] = [
        DraftWeight::AttnNorm,
        DraftWeight::Wq,
        DraftWeight::Wk,
        DraftWeight::Wv,
        DraftWeight::QNorm,
        DraftWeight::KNorm,
        DraftWeight::Wo,
        DraftWeight::FfnNorm,
        DraftWeight::Gate,
        DraftWeight::Up,
        DraftWeight::Down,
    ];

    /// The IR name in layer `layer`.
    pub fn name(self, layer: usize) -> String {
        let suffix = match self {
            DraftWeight::AttnNorm => "attn_norm",
            DraftWeight::Wq => "wq",
            DraftWeight::Wk => "wk",
            DraftWeight::Wv => "wv",
            DraftWeight::QNorm => "q_norm",
            DraftWeight::KNorm => "k_norm",
            DraftWeight::Wo => "wo",
            DraftWeight::FfnNorm => "ffn_norm",
            DraftWeight::Gate => "gate",
            DraftWeight::Up => "up",
            DraftWeight::Down => "down",
        };
        format!("draft.layers.{layer}.{suffix}")
    }

    /// The tensor name in a DFlash checkpoint.
    pub fn checkpoint_name(self, layer: usize) -> String {
        let suffix = match self {
            DraftWeight::AttnNorm => "input_layernorm",
            DraftWeight::Wq => "self_attn.q_proj",
            DraftWeight::Wk => "self_attn.k_proj",
            DraftWeight::Wv => "self_attn.v_proj",
            DraftWeight::QNorm => "self_attn.q_norm",
            DraftWeight::KNorm => "self_attn.k_norm",
            DraftWeight::Wo => "self_attn.o_proj",
            DraftWeight::FfnNorm => "post_attention_layernorm",
            DraftWeight::Gate => "mlp.gate_proj",
            DraftWeight::Up => "mlp.up_proj",
            DraftWeight::Down => "mlp.down_proj",
        };
        format!("layers.{layer}.{suffix}.weight")
    }

    pub fn shape(self, d: &DraftSpec) -> Vec<usize> {
        let (h, i) = (d.hidden_size, d.intermediate_size);
        match self {
            DraftWeight::AttnNorm | DraftWeight::FfnNorm => vec![h],
            DraftWeight::Wq => vec![d.q_dim(), h],
            DraftWeight::Wk | DraftWeight::Wv => vec![d.kv_dim(), h],
            DraftWeight::QNorm | DraftWeight::KNorm => vec![d.head_dim],
            DraftWeight::Wo => vec![h, d.q_dim()],
            DraftWeight::Gate | DraftWeight::Up => vec![i, h],
            DraftWeight::Down => vec![h, i],
        }
    }
}

/// A draft weight: IR name, checkpoint tensor name, shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftWeightInfo {
    pub name: String,
    pub checkpoint_name: String,
    pub shape: Vec<usize>,
}

/// Every weight the draft graph declares besides the target's `embed` and `lm_head`.
pub fn draft_weights(d: &DraftSpec) -> Vec<DraftWeightInfo> {
    let h = d.hidden_size;
    let info = |name: &str, ckpt: &str, shape: Vec<usize>| DraftWeightInfo {
        name: name.into(),
        checkpoint_name: ckpt.into(),
        shape,
    };
    let mut out = vec![
        info(FC, "fc.weight", vec![h, d.feature_dim()]),
        info(HIDDEN_NORM, "hidden_norm.weight", vec![h]),
    ];
    for layer in 0..d.num_layers {
        for w in DraftWeight::ALL {
            out.push(DraftWeightInfo {
                name: w.name(layer),
                checkpoint_name: w.checkpoint_name(layer),
                shape: w.shape(d),
            });
        }
    }
    out.push(info(NORM, "norm.weight", vec![h]));
    out
}

/// Deterministic random draft weights in `d.format` (tests, and drafts for the built-in model):
/// norms near 1, matrices scaled by 1/sqrt(fan-in) as in [`crate::model::random`].
pub fn random_draft_weights(d: &DraftSpec, seed: u64) -> Result<WeightStore, FormatError> {
    let mut store = WeightStore::new();
    for (i, w) in draft_weights(d).into_iter().enumerate() {
        let mut rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let numel: usize = w.shape.iter().product();
        let values: Vec<f32> = if w.shape.len() == 1 {
            (0..numel).map(|_| 1.0 + rng.normal(0.1)).collect()
        } else {
            let std = 2.0 / (w.shape[1] as f32).sqrt();
            (0..numel).map(|_| rng.normal(std)).collect()
        };
        store.insert(w.name, Weight::from_f32(w.shape, &values, d.format)?);
    }
    Ok(store)
}
