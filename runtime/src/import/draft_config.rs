//! A DFlash draft's `config.json` becomes a [`DraftSpec`].
//!
//! What real draft configs look like (z-lab's `Qwen3-*-DFlash-b16`, SpecForge's
//! `configs/qwen3-32b-dflash.json`, third-party drafts on the Hub): a plain Qwen3 config
//! (`"model_type": "qwen3"`, `"architectures": ["DFlashDraftModel"]`, `auto_map` to
//! `dflash.DFlashDraftModel`, `hidden_size`, `num_hidden_layers` 1 to 10, `intermediate_size`,
//! `head_dim`, `rope_theta` or 5.x `rope_parameters`, `layer_types` all `"full_attention"`) plus
//! `block_size` (top level), `num_target_layers`, and
//! `"dflash_config": {"mask_token_id": 151669, "target_layer_ids": [1, 9, 17, 25, 33]}`. Some
//! drafts put `mask_token_id` / `target_layer_ids` / `block_size` at the top level instead; the
//! reference reads `dflash_config` first, then the top level (`_draft_value` in
//! `dflash/model.py`), and so does this parser. Without `target_layer_ids` the older reference
//! spreads the draft's layer count over the target
//! ([`mimo_ir::model::dflash::default_target_layer_ids`]).
//!
//! Refused by name, since they change what the draft computes: DFlash2 drafts (per-layer
//! convolutions and a candidate selector), sliding-window or causal draft layers, logit
//! multipliers and soft-capping, embedding scales, attention biases, activations other than SiLU,
//! and RoPE scaling.

use std::path::Path;

use serde_json::{Map, Value};

use mimo_ir::formats::WeightFormat;
use mimo_ir::model::dflash::{DraftSpec, default_target_layer_ids};

use super::config::{ConfigError, json_object};

/// Parses a DFlash draft's `config.json`; `source` names the file in errors.
pub fn draft_spec_from_hf_config(text: &str, source: &Path) -> Result<DraftSpec, ConfigError> {
    let obj = json_object(text, source)?;
    let empty = Map::new();
    let dflash = match obj.get("dflash_config") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(field(source, "dflash_config", "expected an object"));
        }
    };
    Reader {
        obj: &obj,
        dflash,
        file: source,
    }
    .spec()
}

fn field(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        file: file.to_path_buf(),
        field: key.to_string(),
        message: message.into(),
    }
}

fn unsupported(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Unsupported {
        file: file.to_path_buf(),
        field: key.to_string(),
        message: message.into(),
    }
}

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    dflash: &'a Map<String, Value>,
    file: &'a Path,
}

impl<'a> Reader<'a> {
    /// `key` and the name it is reported under: `dflash_config.key` first, then the top level.
    fn draft_value(&self, key: &str) -> Option<(String, &'a Value)> {
        match self.dflash.get(key).filter(|v| !v.is_null()) {
            Some(v) => Some((format!("dflash_config.{key}"), v)),
            None => self.get(key).map(|v| (key.to_string(), v)),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn positive(&self, key: &str, v: &Value) -> Result<usize, ConfigError> {
        v.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| {
                field(
                    self.file,
                    key,
                    format!("expected a positive integer, got {v}"),
                )
            })
    }

    fn required(&self, key: &str) -> Result<usize, ConfigError> {
        let v = self
            .get(key)
            .ok_or_else(|| field(self.file, key, "missing (required)"))?;
        self.positive(key, v)
    }

    fn optional(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.get(key).map(|v| self.positive(key, v)).transpose()
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    field(
                        self.file,
                        key,
                        format!("expected a positive number, got {v}"),
                    )
                }),
        }
    }

    fn spec(&self) -> Result<DraftSpec, ConfigError> {
        self.check_supported()?;
        let hidden_size = self.required("hidden_size")?;
        let num_layers = self.required("num_hidden_layers")?;
        let num_heads = self.required("num_attention_heads")?;
        let num_kv_heads = self.optional("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(field(
                self.file,
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let head_dim = match self.optional("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(field(
                    self.file,
                    "head_dim",
                    "absent, and hidden_size is not divisible by num_attention_heads",
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(field(
                self.file,
                "head_dim",
                "must be even (RoPE rotates pairs)",
            ));
        }
        let num_target_layers = self.optional("num_target_layers")?;
        let target_layer_ids = match self.draft_value("target_layer_ids") {
            Some((key, v)) => self.layer_ids(&key, v)?,
            None => {
                let n = num_target_layers.ok_or_else(|| {
                    field(
                        self.file,
                        "dflash_config.target_layer_ids",
                        "missing (required, or `num_target_layers` to derive it)",
                    )
                })?;
                default_target_layer_ids(n, num_layers)
            }
        };
        let (mask_key, mask) = self.draft_value("mask_token_id").ok_or_else(|| {
            field(
                self.file,
                "dflash_config.mask_token_id",
                "missing (required)",
            )
        })?;
        let mask_token_id = mask
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| {
                field(
                    self.file,
                    &mask_key,
                    format!("expected a token id, got {mask}"),
                )
            })?;
        let block_size = match self.draft_value("block_size") {
            Some((key, v)) => self.positive(&key, v)?,
            None => 16,
        };
        Ok(DraftSpec {
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: self.required("intermediate_size")?,
            rope_theta: self.rope_theta()?,
            rms_norm_eps: self.float("rms_norm_eps", 1e-6)?,
            max_position_embeddings: self.optional("max_position_embeddings")?.unwrap_or(32_768),
            block_size,
            target_layer_ids,
            mask_token_id,
            num_target_layers,
            format: self.dtype()?,
        })
    }

    fn layer_ids(&self, key: &str, v: &Value) -> Result<Vec<usize>, ConfigError> {
        let ids: Option<Vec<usize>> = v
            .as_array()
            .map(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect())
            .unwrap_or(None);
        match ids {
            Some(ids) if !ids.is_empty() => Ok(ids),
            _ => Err(field(
                self.file,
                key,
                format!("expected a non-empty list of layer indices, got {v}"),
            )),
        }
    }

    /// `rope_parameters.rope_theta` (transformers 5.x) or `rope_theta`; Qwen3's default 10000.
    fn rope_theta(&self) -> Result<f64, ConfigError> {
        if let Some(params) = self.get("rope_parameters") {
            let kind = params.get("rope_type").and_then(Value::as_str);
            if kind.is_some_and(|k| k != "default") {
                return Err(unsupported(
                    self.file,
                    "rope_parameters.rope_type",
                    format!("{kind:?} (only default RoPE is implemented)"),
                ));
            }
            if let Some(theta) = params.get("rope_theta").and_then(Value::as_f64) {
                return Ok(theta);
            }
        }
        self.float("rope_theta", 10_000.0)
    }

    fn dtype(&self) -> Result<WeightFormat, ConfigError> {
        let key = if self.get("dtype").is_some() {
            "dtype"
        } else {
            "torch_dtype"
        };
        match self.get(key).map(|v| v.as_str().unwrap_or("?")) {
            None | Some("float32") => Ok(WeightFormat::F32),
            Some("bfloat16") => Ok(WeightFormat::Bf16),
            Some("float16") => Ok(WeightFormat::F16),
            Some(other) => Err(unsupported(
                self.file,
                key,
                format!("dtype `{other}` (expected float32, bfloat16 or float16)"),
            )),
        }
    }

    /// Options of the reference (or of DFlash variants) that change the draft's meaning.
    fn check_supported(&self) -> Result<(), ConfigError> {
        let file = self.file;
        if let Some(t) = self.get("model_type").and_then(Value::as_str)
            && t != "qwen3"
        {
            return Err(unsupported(
                file,
                "model_type",
                format!("`{t}` (DFlash drafts are Qwen3 decoder stacks: expected qwen3)"),
            ));
        }
        if let Some(archs) = self.get("architectures").and_then(Value::as_array)
            && let Some(other) = archs
                .iter()
                .filter_map(Value::as_str)
                .find(|a| *a != "DFlashDraftModel")
        {
            return Err(unsupported(
                file,
                "architectures",
                format!("`{other}` (only DFlashDraftModel is implemented)"),
            ));
        }
        for key in ["conv_kernel_size", "selector_rank", "selector_top_k"] {
            if self.draft_value(key).is_some() {
                return Err(unsupported(file, key, "DFlash2 drafts are not implemented"));
            }
        }
        for (key, neutral) in [("output_multiplier", 1.0), ("input_embedding_scale", 1.0)] {
            if let Some((name, v)) = self.draft_value(key)
                && v.as_f64() != Some(neutral)
            {
                return Err(unsupported(
                    file,
                    &name,
                    format!("{v} (only {neutral} is implemented)"),
                ));
            }
        }
        if let Some((name, v)) = self.draft_value("final_logit_softcapping")
            && v.as_f64().is_none_or(|c| c > 0.0)
        {
            return Err(unsupported(
                file,
                &name,
                format!("{v} (logit soft-capping is not implemented)"),
            ));
        }
        if let Some(types) = self.get("layer_types").and_then(Value::as_array)
            && let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention"))
        {
            return Err(unsupported(
                file,
                "layer_types",
                format!("{t} (only full_attention draft layers are implemented)"),
            ));
        }
        if self.get("is_causal").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                file,
                "is_causal",
                "causal draft attention is not implemented",
            ));
        }
        if self.get("attention_bias").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                file,
                "attention_bias",
                "attention biases are not implemented",
            ));
        }
        if let Some(act) = self.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(unsupported(
                file,
                "hidden_act",
                format!("`{act}` (only silu is implemented)"),
            ));
        }
        if let Some(scaling) = self.get("rope_scaling") {
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type"));
            if kind.and_then(Value::as_str) != Some("default") {
                return Err(unsupported(
                    file,
                    "rope_scaling",
                    format!("{scaling} (only plain RoPE is implemented)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config shaped like z-lab's `Qwen3-8B-DFlash-b16/config.json` (sizes shrunk).
    const ZLAB_STYLE: &str = r#"{
      "architectures": ["DFlashDraftModel"],
      "attention_bias": false,
      "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
      "block_size": 16,
      "dflash_config": {"mask_token_id": 151669, "target_layer_ids": [1, 9, 17, 25, 33]},
      "dtype": "bfloat16",
      "head_dim": 128,
      "hidden_act": "silu",
      "hidden_size": 4096,
      "intermediate_size": 12288,
      "layer_types": ["full_attention", "full_attention", "full_attention", "full_attention", "full_attention"],
      "max_position_embeddings": 40960,
      "model_type": "qwen3",
      "num_attention_heads": 32,
      "num_hidden_layers": 5,
      "num_key_value_heads": 8,
      "num_target_layers": 36,
      "rms_norm_eps": 1e-06,
      "rope_scaling": null,
      "rope_theta": 1000000,
      "sliding_window": null,
      "tie_word_embeddings": false,
      "use_sliding_window": false,
      "vocab_size": 151936
    }"#;

    fn parse(text: &str) -> Result<DraftSpec, String> {
        draft_spec_from_hf_config(text, Path::new("draft/config.json")).map_err(|e| e.to_string())
    }

    fn edit(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(ZLAB_STYLE).unwrap();
        f(v.as_object_mut().unwrap());
        v.to_string()
    }

    #[test]
    fn reads_real_draft_configs() {
        let d = parse(ZLAB_STYLE).unwrap();
        assert_eq!(
            (d.hidden_size, d.num_layers, d.num_heads, d.num_kv_heads),
            (4096, 5, 32, 8)
        );
        assert_eq!(
            (d.head_dim, d.intermediate_size, d.block_size),
            (128, 12288, 16)
        );
        assert_eq!(d.target_layer_ids, [1, 9, 17, 25, 33]);
        assert_eq!((d.mask_token_id, d.num_target_layers), (151669, Some(36)));
        assert_eq!((d.rope_theta, d.format), (1e6, WeightFormat::Bf16));
        // Top-level keys (some third-party drafts), 5.x rope_parameters, derived layer ids.
        let flat = edit(|m| {
            m.remove("dflash_config");
            m.insert("mask_token_id".into(), 7.into());
            m.insert("block_size".into(), 8.into());
            m.remove("rope_theta");
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_theta": 5e5, "rope_type": "default"}),
            );
        });
        let d = parse(&flat).unwrap();
        assert_eq!((d.mask_token_id, d.block_size, d.rope_theta), (7, 8, 5e5));
        assert_eq!(d.target_layer_ids, [1, 9, 17, 25, 33]);
    }

    #[test]
    fn refuses_what_it_does_not_implement_by_name() {
        let set = |key: &str, v: serde_json::Value| {
            edit(|m| {
                m.insert(key.into(), v);
            })
        };
        let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        let cases = [
            (
                set("layer_types", json(r#"["sliding_attention"]"#)),
                "field `layer_types`: unsupported",
            ),
            (
                set("architectures", json(r#"["DFlash2DraftModel"]"#)),
                "`DFlash2DraftModel`",
            ),
            (
                set(
                    "dflash_config",
                    json(
                        r#"{"mask_token_id": 1, "target_layer_ids": [1], "output_multiplier": 0.2}"#,
                    ),
                ),
                "field `dflash_config.output_multiplier`",
            ),
            (
                set("model_type", "llama".into()),
                "field `model_type`: unsupported",
            ),
            (set("is_causal", true.into()), "field `is_causal`"),
            (
                set("dflash_config", json(r#"{"target_layer_ids": [1]}"#)),
                "field `dflash_config.mask_token_id`: missing",
            ),
            (
                set("hidden_size", "big".into()),
                "field `hidden_size`: expected a positive integer",
            ),
            ("{".to_string(), "draft/config.json: malformed JSON"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{err}\n  should contain: {want}");
            assert!(err.starts_with("draft/config.json"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
