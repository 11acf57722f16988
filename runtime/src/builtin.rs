//! The built-in default model: a tiny Qwen3-MoE with deterministic random weights and a small
//! embedded BPE tokenizer, so `mimo generate` and `mimo serve` work on a fresh machine with no
//! download. Its text is fluent nonsense: it exists to exercise every part of the stack (MXFP4
//! experts, GQA, q/k norm, routing, streaming), not to know anything.

use std::path::{Path, PathBuf};

use mimo_ir::formats::WeightFormat;
use mimo_ir::model::names;
use mimo_ir::model::random::random_weights;
use mimo_ir::weights::{Weight, WeightStore};
use mimo_ir::{Architecture, ModelSpec, WeightFormats};

use crate::error::LoadError;
use crate::model::LoadedModel;
use crate::tokenizer::Tokenizer;

/// How the built-in model is named in paths, logs and `/v1/models`.
pub const NAME: &str = "mimo-builtin-tiny-moe";

const TOKENIZER_JSON: &str = include_str!("../assets/builtin/tokenizer.json");
/// The chat template and special tokens of the built-in model (`tokenizer_config.json`).
pub const TOKENIZER_CONFIG_JSON: &str = include_str!("../assets/builtin/tokenizer_config.json");
const SEED: u64 = 0x6d69_6d6f;

/// The built-in model's shape: MXFP4 experts and bf16 elsewhere, like the production setting.
pub fn spec(vocab_size: usize) -> ModelSpec {
    ModelSpec {
        hybrid: None,
        architecture: Architecture::Qwen3Moe,
        vocab_size,
        hidden_size: 256,
        num_layers: 4,
        num_heads: 8,
        num_kv_heads: 2,
        head_dim: 32,
        num_experts: 16,
        experts_per_token: 4,
        expert_intermediate_size: 128,
        norm_topk_prob: true,
        rope_theta: 1e6,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        formats: WeightFormats {
            experts: WeightFormat::Mxfp4,
            dense: WeightFormat::Bf16,
        },
    }
}

/// Builds the built-in model (a fraction of a second).
pub fn load() -> Result<LoadedModel, LoadError> {
    let source = PathBuf::from(format!("<{NAME}>"));
    let tokenizer = Tokenizer::from_json_str(TOKENIZER_JSON, &source.join("tokenizer.json"))?;
    let spec = spec(tokenizer.vocab_size());
    let weights = random_weights(&spec, SEED).map_err(|source| LoadError::Format {
        weight: "<built-in experts>".into(),
        format: spec.formats.experts,
        source,
    })?;
    let weights = favour_printable_tokens(weights, &tokenizer, &spec)?;
    let eos_token_ids = tokenizer.token_to_id("<|im_end|>").into_iter().collect();
    Ok(LoadedModel {
        spec,
        weights,
        tokenizer: Some(tokenizer),
        eos_token_ids,
        source,
        speculative: None,
    })
}

/// Random weights favour byte-level tokens that are not valid text on their own. Shrinking the
/// lm_head rows of those tokens (and of the special tokens) makes their logits small, so the
/// model talks in readable word pieces.
fn favour_printable_tokens(
    mut weights: WeightStore,
    tokenizer: &Tokenizer,
    spec: &ModelSpec,
) -> Result<WeightStore, LoadError> {
    let lm_head = weights
        .get(names::LM_HEAD)
        .expect("random_weights declares lm_head");
    let mut values = lm_head.to_f32();
    let h = spec.hidden_size;
    for id in 0..spec.vocab_size {
        let text = tokenizer.decode_with(&[id as u32], true)?;
        let printable = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " .,;'".contains(c));
        if !printable {
            values[id * h..(id + 1) * h]
                .iter_mut()
                .for_each(|v| *v *= 0.05);
        }
    }
    let shape = lm_head.shape.clone();
    let format = spec.formats.dense;
    let lm_head = Weight::from_f32(shape, &values, format).map_err(|source| LoadError::Format {
        weight: names::LM_HEAD.into(),
        format,
        source,
    })?;
    weights.insert(names::LM_HEAD, lm_head);
    Ok(weights)
}

/// Whether `path` names the built-in model (`builtin`, or its full name).
pub fn is_builtin(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p == "builtin" || p == NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_model_is_deterministic_and_complete() {
        let a = load().unwrap();
        let b = load().unwrap();
        assert_eq!(a.spec, b.spec);
        assert_eq!(
            a.weights.len(),
            mimo_ir::model::names::all_weights(&a.spec).len()
        );
        for (name, w) in a.weights.iter() {
            assert_eq!(Some(w), b.weights.get(name), "{name} differs between loads");
        }
        let tok = a.tokenizer.as_ref().unwrap();
        assert_eq!(tok.vocab_size(), a.spec.vocab_size);
        assert_eq!(a.eos_token_ids.len(), 1);
        let ids = tok.encode("The river runs").unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), "The river runs");
    }
}
