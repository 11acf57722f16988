//! MiMo-V2-Flash's per-layer structure from a `config.json` in either style real checkpoints use:
//! transformers' own (`layer_types`, `mlp_layer_types`, per-type `rope_parameters`,
//! `sliding_window`) and Xiaomi's hub keys (`hybrid_layer_pattern`, `moe_layer_freq`, `swa_*`,
//! `sliding_window_size`, `add_*_attention_sink_bias`). Where a fact has a key in both styles and
//! both are present they must agree; where neither is, transformers' default applies
//! (`MiMoV2FlashConfig`): full attention at layer 0 and every sixth layer, a dense first layer,
//! twice the KV heads and sinks in the sliding layers, a window of 129 rows (128 earlier tokens
//! and the query), thetas 5e6 / 1e4, a third of each head rotated.

use serde_json::Value;

use mimo_ir::model::{AttentionSpec, HybridSpec};

use super::{ConfigError, Fields, short};

/// Transformers' defaults (`MiMoV2FlashConfig`).
const HEAD_DIM: usize = 192;
const V_HEAD_DIM: usize = 128;
const WINDOW: usize = 129;
const FULL_THETA: f64 = 5e6;
const SLIDING_THETA: f64 = 1e4;
const PARTIAL_ROTARY_FACTOR: f64 = 0.334;
const VALUE_SCALE: f64 = 0.707;

/// The two layer types' names in transformers' `layer_types` and `rope_parameters`.
const FULL: &str = "full_attention";
const SLIDING: &str = "sliding_attention";

impl Fields<'_> {
    /// The hybrid structure of a `mimo_v2_flash` config with `layers` layers, whose full-attention
    /// layers have `heads` query and `kv_heads` KV heads.
    pub(super) fn mimo_hybrid(
        &self,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Result<HybridSpec, ConfigError> {
        for key in ["n_group", "topk_group"] {
            if let Some(n) = self.optional(key, Self::positive)?
                && n != 1
            {
                return Err(self.unsupported(
                    key,
                    format!("{n} (group-limited routing is not implemented; must be 1)"),
                ));
            }
        }
        // MiMo-V2.5: the checkpoint fuses q/k/v into one `qkv_proj` (the loader splits it).
        if let Some(layout) =
            self.optional("attention_projection_layout", |f, k, v| f.string(k, v))?
            && layout != "fused_qkv"
        {
            return Err(self.unsupported(
                "attention_projection_layout",
                format!("`{layout}` (only `fused_qkv`, or none for separate projections)"),
            ));
        }
        let sliding_layers = self.per_layer(
            layers,
            ("layer_types", &[(FULL, false), (SLIDING, true)]),
            "hybrid_layer_pattern",
            |i| !(i == 0 || (i + 1) % 6 == 0),
        )?;
        // `moe_layer_freq` is 1 for an MoE layer: dense is its 0.
        let dense_layers = self
            .per_layer(
                layers,
                ("mlp_layer_types", &[("dense", false), ("sparse", true)]),
                "moe_layer_freq",
                |i| i != 0,
            )?
            .into_iter()
            .map(|moe| !moe)
            .collect();

        let head_dim = self
            .optional("head_dim", Self::positive)?
            .unwrap_or(HEAD_DIM);
        let v_head_dim = self
            .optional("v_head_dim", Self::positive)?
            .unwrap_or(V_HEAD_DIM);
        let full = AttentionSpec {
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            v_head_dim,
            rope_theta: self.agreeing_float(FULL, "rope_theta", "rope_theta", FULL_THETA)?,
            rotary_dim: self.rotary_dim(FULL, head_dim)?,
            window: 0,
            sinks: self
                .optional("add_full_attention_sink_bias", Self::boolean)?
                .unwrap_or(false),
        };
        let swa_head_dim = self
            .optional("swa_head_dim", Self::positive)?
            .unwrap_or(head_dim);
        let sliding = AttentionSpec {
            num_heads: self
                .optional("swa_num_attention_heads", Self::positive)?
                .unwrap_or(heads),
            // transformers hard-codes twice the full layers' KV heads.
            num_kv_heads: self
                .optional("swa_num_key_value_heads", Self::positive)?
                .unwrap_or(2 * kv_heads),
            head_dim: swa_head_dim,
            v_head_dim: self
                .optional("swa_v_head_dim", Self::positive)?
                .unwrap_or(v_head_dim),
            rope_theta: self.agreeing_float(
                SLIDING,
                "rope_theta",
                "swa_rope_theta",
                SLIDING_THETA,
            )?,
            rotary_dim: self.rotary_dim(SLIDING, swa_head_dim)?,
            window: self.window()?,
            sinks: self
                .optional("add_swa_attention_sink_bias", Self::boolean)?
                .unwrap_or(true),
        };
        Ok(HybridSpec {
            full,
            sliding,
            sliding_layers,
            dense_layers,
            dense_intermediate_size: self
                .optional("intermediate_size", Self::positive)?
                .unwrap_or(16384),
            // transformers reads an explicit null as 1 for both.
            value_scale: self.null_is_one("attention_value_scale", VALUE_SCALE)? as f32,
            routed_scaling_factor: self.null_is_one("routed_scaling_factor", 1.0)? as f32,
        })
    }

    /// A per-layer flag from transformers' list of names (`names` maps each to the flag) or the
    /// hub's list of 0/1, or `default(layer)`; both present must agree.
    fn per_layer(
        &self,
        layers: usize,
        (names_key, names): (&str, &[(&str, bool)]),
        bits_key: &str,
        default: impl Fn(usize) -> bool,
    ) -> Result<Vec<bool>, ConfigError> {
        let list = |key: &str| -> Result<Option<&Vec<Value>>, ConfigError> {
            match self.opt(key) {
                None => Ok(None),
                Some(Value::Array(a)) if a.len() == layers => Ok(Some(a)),
                Some(Value::Array(a)) => Err(self.field_err(
                    key,
                    format!("{} entries for num_hidden_layers = {layers}", a.len()),
                )),
                Some(v) => Err(self.field_err(key, format!("expected a list, got {}", short(v)))),
            }
        };
        let from_names = list(names_key)?
            .map(|a| {
                a.iter()
                    .map(|v| {
                        names
                            .iter()
                            .find(|(n, _)| v.as_str() == Some(n))
                            .map(|&(_, flag)| flag)
                            .ok_or_else(|| {
                                let expected: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                                self.field_err(
                                    names_key,
                                    format!("{} (expected {})", short(v), expected.join(" or ")),
                                )
                            })
                    })
                    .collect::<Result<Vec<bool>, _>>()
            })
            .transpose()?;
        let from_bits = list(bits_key)?
            .map(|a| {
                a.iter()
                    .map(|v| match v.as_u64() {
                        Some(0) => Ok(false),
                        Some(1) => Ok(true),
                        _ => Err(self.field_err(
                            bits_key,
                            format!("{} (expected 0 or 1 per layer)", short(v)),
                        )),
                    })
                    .collect::<Result<Vec<bool>, _>>()
            })
            .transpose()?;
        match (from_names, from_bits) {
            (Some(a), Some(b)) if a != b => Err(self.field_err(
                bits_key,
                format!("disagrees with `{}{names_key}`", self.prefix),
            )),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => Ok((0..layers).map(default).collect()),
        }
    }

    /// `rope_parameters.<layer_type>.<key>` (transformers) or the top-level `hub_key`.
    fn agreeing_float(
        &self,
        layer_type: &str,
        key: &str,
        hub_key: &str,
        default: f64,
    ) -> Result<f64, ConfigError> {
        let nested = self.rope_parameter(layer_type, key)?;
        let hub = self.optional(hub_key, Self::float)?;
        match (nested, hub) {
            (Some(a), Some(b)) if a != b => Err(self.field_err(
                hub_key,
                format!("{b} conflicts with `rope_parameters.{layer_type}.{key}` = {a}"),
            )),
            (Some(x), _) | (None, Some(x)) => Ok(x),
            (None, None) => Ok(default),
        }
    }

    /// A number of `rope_parameters.<layer_type>`; refuses RoPE other than the default kind.
    fn rope_parameter(&self, layer_type: &str, key: &str) -> Result<Option<f64>, ConfigError> {
        let Some(params) = self.opt("rope_parameters") else {
            return Ok(None);
        };
        let field = format!("rope_parameters.{layer_type}");
        let Some(params) = params.get(layer_type).filter(|p| !p.is_null()) else {
            return Ok(None);
        };
        if let Some(t) = params.get("rope_type").filter(|t| !t.is_null())
            && t.as_str() != Some("default")
        {
            return Err(self.unsupported(
                &format!("{field}.rope_type"),
                format!("{} (only \"default\" RoPE is implemented)", short(t)),
            ));
        }
        params
            .get(key)
            .filter(|v| !v.is_null())
            .map(|v| self.float(&format!("{field}.{key}"), v))
            .transpose()
    }

    /// `int(head_dim * partial_rotary_factor)`, as transformers computes it; even.
    fn rotary_dim(&self, layer_type: &str, head_dim: usize) -> Result<usize, ConfigError> {
        let factor = self.agreeing_float(
            layer_type,
            "partial_rotary_factor",
            "partial_rotary_factor",
            PARTIAL_ROTARY_FACTOR,
        )?;
        let dim = (head_dim as f64 * factor) as usize;
        if factor > 1.0 || dim < 2 || !dim.is_multiple_of(2) {
            return Err(self.field_err(
                "partial_rotary_factor",
                format!("{factor} of head_dim {head_dim} gives {dim} rotary dims (must be even, at least 2, at most head_dim)"),
            ));
        }
        Ok(dim)
    }

    /// Rows a sliding query sees: `sliding_window`, or the hub's `sliding_window_size` (earlier
    /// tokens only) plus the query itself.
    fn window(&self) -> Result<usize, ConfigError> {
        let hf = self.optional("sliding_window", Self::positive)?;
        let hub = self
            .optional("sliding_window_size", Self::positive)?
            .map(|w| w + 1);
        match (hf, hub) {
            (Some(a), Some(b)) if a != b => Err(self.field_err(
                "sliding_window_size",
                format!(
                    "{} (+ 1 for the query) conflicts with `{}sliding_window` = {a}",
                    b - 1,
                    self.prefix
                ),
            )),
            (Some(w), _) | (None, Some(w)) => Ok(w),
            (None, None) => Ok(WINDOW),
        }
    }

    /// A positive number whose explicit `null` means 1 (transformers' reading of these keys).
    fn null_is_one(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(1.0),
            Some(v) => self.float(key, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use super::super::spec_from_hf_config;
    use mimo_ir::{Architecture, ModelSpec};

    fn fixture(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/hf")
            .join(name)
            .join("config.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn parse(v: &Value) -> Result<ModelSpec, String> {
        spec_from_hf_config(&v.to_string(), Path::new("m/config.json")).map_err(|e| e.to_string())
    }

    fn with(base: &Value, edits: Value) -> Value {
        let mut v = base.clone();
        for (k, x) in edits.as_object().unwrap() {
            match x {
                Value::String(s) if s == "<remove>" => v.as_object_mut().unwrap().remove(k),
                _ => v.as_object_mut().unwrap().insert(k.clone(), x.clone()),
            };
        }
        v
    }

    #[test]
    fn transformers_style_reads_every_layer_kind() {
        let s = parse(&fixture("mimo_v2_flash_a")).unwrap();
        assert_eq!(s.architecture, Architecture::MimoV2Flash);
        let h = s.hybrid.as_ref().unwrap();
        assert_eq!(h.sliding_layers, [false, true, true]);
        assert_eq!(h.dense_layers, [true, false, false]);
        assert_eq!(
            (h.dense_intermediate_size, s.expert_intermediate_size),
            (64, 32)
        );
        let (f, w) = (&h.full, &h.sliding);
        assert_eq!(
            (f.num_heads, f.num_kv_heads, f.head_dim, f.v_head_dim),
            (4, 1, 24, 16)
        );
        assert_eq!(
            (w.num_heads, w.num_kv_heads, w.head_dim, w.v_head_dim),
            (4, 2, 24, 16)
        );
        assert_eq!((f.rope_theta, w.rope_theta), (1e6, 2e4));
        // int(24 * 0.334) and int(24 * 0.5)
        assert_eq!((f.rotary_dim, w.rotary_dim), (8, 12));
        assert_eq!((f.window, w.window, f.sinks, w.sinks), (0, 4, false, true));
        assert_eq!((h.value_scale, h.routed_scaling_factor), (0.707, 2.5));
        assert_eq!(
            (s.num_kv_heads, s.rope_theta, s.rms_norm_eps),
            (1, 1e6, 1e-5)
        );
        assert!(s.norm_topk_prob);
    }

    /// The hub's keys and transformers' describe the same model.
    #[test]
    fn hub_style_reads_as_its_transformers_twin() {
        let hub = fixture("mimo_v2_flash_b");
        let s = parse(&hub).unwrap();
        let h = s.hybrid.as_ref().unwrap();
        assert_eq!((h.sliding.num_kv_heads, h.sliding.window), (4, 4));
        assert_eq!((h.full.rotary_dim, h.routed_scaling_factor), (10, 1.0));
        let mut twin = with(
            &hub,
            json!({
                "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
                "mlp_layer_types": ["dense", "sparse", "sparse"],
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.334},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.334}
                },
                "sliding_window": 4,
                "rms_norm_eps": 1e-5,
                "routed_scaling_factor": 1.0,
            }),
        );
        for key in [
            "hybrid_layer_pattern",
            "moe_layer_freq",
            "swa_num_attention_heads",
            "swa_num_key_value_heads",
            "swa_head_dim",
            "swa_v_head_dim",
            "sliding_window_size",
            "rope_theta",
            "swa_rope_theta",
            "partial_rotary_factor",
            "add_swa_attention_sink_bias",
            "add_full_attention_sink_bias",
            "layernorm_epsilon",
        ] {
            assert!(twin.as_object_mut().unwrap().remove(key).is_some(), "{key}");
        }
        assert_eq!(parse(&twin).unwrap(), s);
        // Both styles at once must agree.
        let both = with(
            &hub,
            json!({"sliding_window": 4, "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]}),
        );
        assert_eq!(parse(&both).unwrap(), s);
    }

    /// MiMo-V2.5's `mimo_v2` is the same decoder: its config (the derived fixture's, hub-style
    /// with `attention_projection_layout = "fused_qkv"`) gives the spec of the one it came from.
    #[test]
    fn mimo_v2_configs_import_as_the_family() {
        let flash = parse(&fixture("mimo_v2_flash_b")).unwrap();
        let v2 = parse(&fixture("mimo_v2_c")).unwrap();
        assert_eq!(v2.architecture, Architecture::MimoV2Flash);
        assert_eq!(v2, flash);
    }

    #[test]
    fn bad_mimo_configs_name_the_field() {
        let base = fixture("mimo_v2_flash_a");
        for (edits, message) in [
            (
                json!({"sliding_window": 0}),
                "m/config.json: field `sliding_window`: expected a positive integer, got 0",
            ),
            (
                json!({"layer_types": ["full_attention", "sliding_attention"]}),
                "m/config.json: field `layer_types`: 2 entries for num_hidden_layers = 3",
            ),
            (
                json!({"mlp_layer_types": ["dense", "moe", "sparse"]}),
                r#"m/config.json: field `mlp_layer_types`: "moe" (expected dense or sparse)"#,
            ),
            (
                json!({"hybrid_layer_pattern": [0, 0, 1]}),
                "m/config.json: field `hybrid_layer_pattern`: disagrees with `layer_types`",
            ),
            (
                json!({"moe_layer_freq": [0, 2, 1]}),
                "m/config.json: field `moe_layer_freq`: 2 (expected 0 or 1 per layer)",
            ),
            (
                json!({"sliding_window_size": 7}),
                "m/config.json: field `sliding_window_size`: 7 (+ 1 for the query) conflicts with `sliding_window` = 4",
            ),
            (
                json!({"n_group": 2}),
                "m/config.json: field `n_group`: unsupported: 2 (group-limited routing is not implemented; must be 1)",
            ),
            (
                json!({"swa_rope_theta": 3.0}),
                "m/config.json: field `swa_rope_theta`: 3 conflicts with `rope_parameters.sliding_attention.rope_theta` = 20000",
            ),
            (
                json!({"n_routed_experts": "<remove>"}),
                "m/config.json: field `n_routed_experts`: missing (required; or `num_local_experts`)",
            ),
            (
                json!({"swa_num_key_value_heads": 3}),
                "m/config.json: hybrid.sliding.num_kv_heads: 3 does not divide num_heads 4",
            ),
            (
                json!({"attention_projection_layout": "fused_qkvo"}),
                "m/config.json: field `attention_projection_layout`: unsupported: `fused_qkvo` (only `fused_qkv`, or none for separate projections)",
            ),
        ] {
            assert_eq!(
                parse(&with(&base, edits.clone())).unwrap_err(),
                message,
                "{edits}"
            );
        }
        let mut rope = base.clone();
        rope["rope_parameters"]["sliding_attention"]["partial_rotary_factor"] = json!(0.3);
        assert_eq!(
            parse(&rope).unwrap_err(),
            "m/config.json: field `partial_rotary_factor`: 0.3 of head_dim 24 gives 7 rotary dims (must be even, at least 2, at most head_dim)"
        );
        // transformers reads an explicit null value scale as 1.
        let null = with(&base, json!({"attention_value_scale": null}));
        assert_eq!(parse(&null).unwrap().hybrid.unwrap().value_scale, 1.0);
    }
}
