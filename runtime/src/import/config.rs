//! Config import: a Hugging Face `config.json` (transformers 4.x and 5.x key styles) or mimo's
//! `model.toml` becomes a [`ModelSpec`].
//!
//! Every error names the file and the field, on one line, because these files are written by users
//! (or by tools users run) and the message is all they will see. Anything that would change the
//! model's meaning and that mimo does not implement (RoPE scaling, attention biases; for Qwen3-MoE
//! and Mixtral sliding windows and dense layers between MoE layers, which only MiMo-V2 has here:
//! see `config/mimo.rs`) is refused by name rather than silently ignored.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use mimo_ir::formats::WeightFormat;
use mimo_ir::{Architecture, ModelSpec, WeightFormats};

mod mimo;

/// Why a `config.json` or `model.toml` could not be turned into a model description.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: malformed {format}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("unknown {field} `{value}` in {} (supported: qwen3_moe, mixtral, mimo_v2_flash, mimo_v2)", file.display())]
    UnknownModelType {
        file: PathBuf,
        field: String,
        value: String,
    },
    #[error("{}: field `{field}`: {message}", file.display())]
    Field {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error("{}: field `{field}`: unsupported: {message}", file.display())]
    Unsupported {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
}

/// The config.json keys the importer reads. An inline `[model]` table in `model.toml` may use only
/// these (plus `architecture`), so a typo is reported instead of silently falling back to a default.
const KNOWN_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "intermediate_size",
    "norm_topk_prob",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "decoder_sparse_step",
    "mlp_only_layers",
    "use_sliding_window",
    "sliding_window",
    "torch_dtype",
    "dtype",
    "hidden_act",
    "attention_bias",
    // MiMo-V2-Flash (see `mimo.rs`).
    "n_routed_experts",
    "v_head_dim",
    "layer_types",
    "mlp_layer_types",
    "attention_value_scale",
    "routed_scaling_factor",
    "n_group",
    "topk_group",
    "hybrid_layer_pattern",
    "moe_layer_freq",
    "swa_num_attention_heads",
    "swa_num_key_value_heads",
    "swa_head_dim",
    "swa_v_head_dim",
    "swa_rope_theta",
    "sliding_window_size",
    "partial_rotary_factor",
    "add_swa_attention_sink_bias",
    "add_full_attention_sink_bias",
    "layernorm_epsilon",
    "attention_projection_layout",
];

/// The JSON object `text` holds (a `config.json`); `source` names the file in errors.
pub(super) fn json_object(text: &str, source: &Path) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        file: source.to_path_buf(),
        format: "JSON",
        message: e.to_string(),
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(ConfigError::Invalid {
            file: source.to_path_buf(),
            message: format!("expected a JSON object, got {}", short(&other)),
        }),
    }
}

/// Parses a Hugging Face `config.json`. `source` is only used in error messages.
///
/// `formats` is set to the checkpoint dtype (`dtype` in 5.x, `torch_dtype` in 4.x; f32 when
/// absent) for both experts and dense weights; the caller applies any quantisation override.
pub fn spec_from_hf_config(text: &str, source: &Path) -> Result<ModelSpec, ConfigError> {
    let obj = json_object(text, source)?;
    Fields {
        obj: &obj,
        file: source,
        prefix: "",
    }
    .spec("model_type")
}

/// A JSON object being read, with what error messages need to name its fields.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    file: &'a Path,
    /// Prepended to field names in messages (`model.` for an inline `model.toml` table).
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn field_err(&self, key: &str, message: impl Display) -> ConfigError {
        ConfigError::Field {
            file: self.file.into(),
            field: format!("{}{key}", self.prefix),
            message: message.to_string(),
        }
    }

    fn unsupported(&self, key: &str, message: impl Display) -> ConfigError {
        ConfigError::Unsupported {
            file: self.file.into(),
            field: format!("{}{key}", self.prefix),
            message: message.to_string(),
        }
    }

    fn invalid(&self, message: impl Display) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.into(),
            message: message.to_string(),
        }
    }

    /// The value of `key`; JSON `null` counts as absent, as it does for transformers.
    fn opt(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn required<T>(
        &self,
        key: &str,
        parse: impl Fn(&Self, &str, &'a Value) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        match self.obj.get(key) {
            None => Err(self.field_err(key, "missing (required)")),
            Some(v) => parse(self, key, v),
        }
    }

    fn optional<T>(
        &self,
        key: &str,
        parse: impl Fn(&Self, &str, &'a Value) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        self.opt(key).map(|v| parse(self, key, v)).transpose()
    }

    fn positive(&self, key: &str, v: &Value) -> Result<usize, ConfigError> {
        v.as_u64()
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                self.field_err(
                    key,
                    format!("expected a positive integer, got {}", short(v)),
                )
            })
    }

    fn float(&self, key: &str, v: &Value) -> Result<f64, ConfigError> {
        v.as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| {
                self.field_err(key, format!("expected a positive number, got {}", short(v)))
            })
    }

    fn boolean(&self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        v.as_bool()
            .ok_or_else(|| self.field_err(key, format!("expected true or false, got {}", short(v))))
    }

    fn string(&self, key: &str, v: &'a Value) -> Result<&'a str, ConfigError> {
        v.as_str()
            .ok_or_else(|| self.field_err(key, format!("expected a string, got {}", short(v))))
    }

    /// One of two spellings of the same field (`num_experts` / `num_local_experts`), parsed by
    /// `parse`; both present and different is an error, since either choice could be wrong.
    fn either<T: PartialEq + Display>(
        &self,
        a: &str,
        b: &str,
        parse: impl Fn(&Self, &str, &'a Value) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        match (self.optional(a, &parse)?, self.optional(b, &parse)?) {
            (Some(x), Some(y)) if x != y => {
                Err(self.field_err(b, format!("{y} conflicts with `{}{a}` = {x}", self.prefix)))
            }
            (x, y) => Ok(x.or(y)),
        }
    }

    /// [`Fields::either`] of two positive integers, one of them required.
    fn either_positive(&self, a: &str, b: &str) -> Result<usize, ConfigError> {
        self.either(a, b, Self::positive)?.ok_or_else(|| {
            self.field_err(a, format!("missing (required; or `{}{b}`)", self.prefix))
        })
    }

    fn spec(&self, model_type_key: &str) -> Result<ModelSpec, ConfigError> {
        let model_type = self.required(model_type_key, |f, k, v| f.string(k, v))?;
        let architecture = Architecture::from_model_type(model_type).ok_or_else(|| {
            ConfigError::UnknownModelType {
                file: self.file.into(),
                field: format!("{}{model_type_key}", self.prefix),
                value: model_type.to_string(),
            }
        })?;
        let qwen = architecture == Architecture::Qwen3Moe;
        let mimo = architecture == Architecture::MimoV2Flash;

        let hidden_size = self.required("hidden_size", Self::positive)?;
        let num_heads = self.required("num_attention_heads", Self::positive)?;
        let num_kv_heads = self
            .optional("num_key_value_heads", Self::positive)?
            .unwrap_or(num_heads);
        let head_dim = match self.optional("head_dim", Self::positive)? {
            Some(d) => d,
            None if mimo => 192,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(self.field_err("head_dim", format!("absent, and hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")));
            }
        };
        let num_experts = if mimo {
            self.either_positive("n_routed_experts", "num_local_experts")?
        } else {
            self.either_positive("num_experts", "num_local_experts")?
        };
        let experts_per_token = self.required("num_experts_per_tok", Self::positive)?;
        let intermediate_key = if qwen || mimo {
            "moe_intermediate_size"
        } else {
            "intermediate_size"
        };
        let expert_intermediate_size = self.required(intermediate_key, Self::positive)?;
        let num_layers = self.required("num_hidden_layers", Self::positive)?;
        let hybrid = mimo
            .then(|| self.mimo_hybrid(num_layers, num_heads, num_kv_heads))
            .transpose()?;

        let spec = ModelSpec {
            architecture,
            vocab_size: self.required("vocab_size", Self::positive)?,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            num_experts,
            experts_per_token,
            expert_intermediate_size,
            // Defaults are transformers' own: Qwen3MoeConfig(norm_topk_prob=False) in 4.x and 5.x;
            // Mixtral has no such field and always renormalises.
            // MiMo-V2-Flash: MiMoV2FlashConfig(norm_topk_prob=True).
            norm_topk_prob: match architecture {
                Architecture::Mixtral => true,
                _ => self
                    .optional("norm_topk_prob", Self::boolean)?
                    .unwrap_or(mimo),
            },
            rope_theta: match &hybrid {
                Some(h) => h.full.rope_theta,
                None => self.rope_theta(if qwen { 10_000.0 } else { 1_000_000.0 })?,
            },
            rms_norm_eps: if mimo {
                // transformers' key or the hub's; both present must agree.
                self.either("rms_norm_eps", "layernorm_epsilon", Self::float)?
                    .unwrap_or(1e-5)
            } else {
                self.optional("rms_norm_eps", Self::float)?
                    .unwrap_or(if qwen { 1e-6 } else { 1e-5 })
            },
            max_position_embeddings: self
                .optional("max_position_embeddings", Self::positive)?
                .unwrap_or(if qwen { 32_768 } else { 131_072 }),
            tie_word_embeddings: self
                .optional("tie_word_embeddings", Self::boolean)?
                .unwrap_or(false),
            formats: {
                let f = self.dtype()?;
                WeightFormats {
                    experts: f,
                    dense: f,
                }
            },
            hybrid,
        };
        self.check_unsupported(architecture, spec.max_position_embeddings)?;
        spec.check().map_err(|message| self.invalid(message))?;

        if num_heads % num_kv_heads != 0 {
            return Err(self.field_err(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        if experts_per_token > num_experts {
            return Err(self.field_err(
                "num_experts_per_tok",
                format!("{experts_per_token} is more than the {num_experts} experts"),
            ));
        }
        Ok(spec)
    }

    /// `rope_parameters.rope_theta` (5.x) or `rope_theta` (4.x); only plain RoPE is implemented.
    fn rope_theta(&self, default: f64) -> Result<f64, ConfigError> {
        if let Some(params) = self.opt("rope_parameters") {
            let Value::Object(params) = params else {
                return Err(self.field_err(
                    "rope_parameters",
                    format!("expected an object, got {}", short(params)),
                ));
            };
            if let Some(t) = params.get("rope_type").filter(|t| !t.is_null())
                && t.as_str() != Some("default")
            {
                return Err(self.unsupported(
                    "rope_parameters.rope_type",
                    format!("{} (only \"default\" RoPE is implemented)", short(t)),
                ));
            }
            if let Some(f) = params.get("partial_rotary_factor").filter(|f| !f.is_null())
                && f.as_f64() != Some(1.0)
            {
                return Err(self.unsupported(
                    "rope_parameters.partial_rotary_factor",
                    format!("{} (only full-width RoPE is implemented)", short(f)),
                ));
            }
            if let Some(theta) = params.get("rope_theta").filter(|t| !t.is_null()) {
                return self.float("rope_parameters.rope_theta", theta);
            }
        }
        if let Some(scaling) = self.opt("rope_scaling") {
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type"));
            if kind.and_then(Value::as_str) != Some("default") {
                return Err(self.unsupported(
                    "rope_scaling",
                    format!("{} (only plain RoPE is implemented)", short(scaling)),
                ));
            }
        }
        Ok(self.optional("rope_theta", Self::float)?.unwrap_or(default))
    }

    /// The checkpoint dtype, `dtype` (transformers >= 4.56) or `torch_dtype` (older).
    fn dtype(&self) -> Result<WeightFormat, ConfigError> {
        let key = if self.opt("dtype").is_some() {
            "dtype"
        } else {
            "torch_dtype"
        };
        let Some(name) = self.optional(key, |f, k, v| f.string(k, v))? else {
            return Ok(WeightFormat::F32);
        };
        match name.trim_start_matches("torch.") {
            "float32" => Ok(WeightFormat::F32),
            "bfloat16" => Ok(WeightFormat::Bf16),
            "float16" => Ok(WeightFormat::F16),
            other => Err(self.unsupported(
                key,
                format!("dtype `{other}` (expected float32, bfloat16 or float16)"),
            )),
        }
    }

    /// Options that change the model's meaning in ways mimo does not implement.
    fn check_unsupported(
        &self,
        architecture: Architecture,
        max_positions: usize,
    ) -> Result<(), ConfigError> {
        if let Some(act) = self.optional("hidden_act", |f, k, v| f.string(k, v))?
            && act != "silu"
        {
            return Err(
                self.unsupported("hidden_act", format!("`{act}` (only silu is implemented)"))
            );
        }
        if self.optional("attention_bias", Self::boolean)? == Some(true) {
            return Err(self.unsupported(
                "attention_bias",
                "attention projections with biases are not implemented",
            ));
        }
        match architecture {
            Architecture::Qwen3Moe => {
                let step = self.optional("decoder_sparse_step", |f, k, v| {
                    v.as_u64().ok_or_else(|| {
                        f.field_err(k, format!("expected an integer, got {}", short(v)))
                    })
                })?;
                if step.is_some_and(|s| s != 1) {
                    return Err(self.unsupported("decoder_sparse_step", format!("{} (dense MLP layers between MoE layers are not implemented; must be 1)", step.unwrap_or(0))));
                }
                match self.opt("mlp_only_layers") {
                    None => {}
                    Some(Value::Array(a)) if a.is_empty() => {}
                    Some(Value::Array(a)) => {
                        return Err(self.unsupported(
                            "mlp_only_layers",
                            format!(
                                "{} (dense MLP layers are not implemented; must be empty)",
                                short(&Value::Array(a.clone()))
                            ),
                        ));
                    }
                    Some(v) => {
                        return Err(self.field_err(
                            "mlp_only_layers",
                            format!("expected a list, got {}", short(v)),
                        ));
                    }
                }
                // transformers ignores `sliding_window` unless `use_sliding_window` is set.
                if self.optional("use_sliding_window", Self::boolean)? == Some(true) {
                    return Err(self.unsupported(
                        "use_sliding_window",
                        "sliding-window attention is not implemented",
                    ));
                }
            }
            // Its sliding windows and dense layers are part of the model (see `mimo.rs`).
            Architecture::MimoV2Flash => {}
            Architecture::Mixtral => {
                // A window at least as long as the longest sequence never masks anything.
                if let Some(w) = self.optional("sliding_window", Self::positive)?
                    && w < max_positions
                {
                    return Err(self.unsupported(
                        "sliding_window",
                        format!("{w} (sliding-window attention is not implemented; must be null)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A value for an error message, cut short so the message stays one readable line.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// A parsed `model.toml`: where the model comes from, how to store its weights, and an optional
/// speculative-decoding drafter.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelToml {
    /// The `model.toml` itself; relative paths in it were resolved against its directory.
    pub file: PathBuf,
    pub model: ModelSource,
    pub quantization: Quantization,
    pub speculative: Option<Speculative>,
}

/// Where a `model.toml`'s model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A Hugging Face directory (config.json, safetensors, tokenizer), resolved relative to the
    /// `model.toml`'s directory.
    HfDir(PathBuf),
    /// An architecture described inline: enough to compile, but there are no weights to run.
    Inline(Box<ModelSpec>),
}

/// `[quantization]`: storage formats overriding the checkpoint's dtype.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantization {
    /// Routed-expert projections.
    pub experts: Option<WeightFormat>,
    /// Every other weight.
    pub dense: Option<WeightFormat>,
}

impl Quantization {
    /// `formats` (the checkpoint's) with this table's overrides applied.
    pub fn apply(&self, formats: WeightFormats) -> WeightFormats {
        WeightFormats {
            experts: self.experts.unwrap_or(formats.experts),
            dense: self.dense.unwrap_or(formats.dense),
        }
    }
}

/// `[speculative]`: the draft model for speculative decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speculative {
    /// The method; only `dflash` exists today.
    pub method: String,
    /// The drafter's directory, resolved relative to the `model.toml`'s directory.
    pub draft: PathBuf,
    /// Tokens drafted per block; `None` means the drafter's own config decides.
    pub block_size: Option<usize>,
}

impl ModelToml {
    /// Reads and parses the `model.toml` at `path`.
    pub fn load(path: &Path) -> Result<ModelToml, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` as the `model.toml` at `path` (which anchors relative paths and names errors).
    pub fn parse(text: &str, path: &Path) -> Result<ModelToml, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: path.to_path_buf(),
            format: "TOML",
            message: toml_message(text, &e),
        })?;
        let json = toml_to_json(path, "", &toml::Value::Table(table))?;
        let root = match json {
            Value::Object(root) => root,
            _ => Map::new(),
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let top = Fields {
            obj: &root,
            file: path,
            prefix: "",
        };
        for key in root.keys() {
            if !["model", "quantization", "speculative"].contains(&key.as_str()) {
                return Err(top.field_err(
                    key,
                    "unknown table (expected [model], [quantization] or [speculative])",
                ));
            }
        }
        let table = |key: &str| -> Result<Option<&Map<String, Value>>, ConfigError> {
            match root.get(key) {
                None => Ok(None),
                Some(Value::Object(m)) => Ok(Some(m)),
                Some(v) => Err(top.field_err(key, format!("expected a table, got {}", short(v)))),
            }
        };
        let model = table("model")?.ok_or_else(|| top.invalid("missing [model] table"))?;
        let model = parse_model(
            Fields {
                obj: model,
                file: path,
                prefix: "model.",
            },
            base,
        )?;
        let quantization = match table("quantization")? {
            None => Quantization::default(),
            Some(q) => parse_quantization(Fields {
                obj: q,
                file: path,
                prefix: "quantization.",
            })?,
        };
        let speculative = table("speculative")?
            .map(|s| {
                parse_speculative(
                    Fields {
                        obj: s,
                        file: path,
                        prefix: "speculative.",
                    },
                    base,
                )
            })
            .transpose()?;
        Ok(ModelToml {
            file: path.to_path_buf(),
            model,
            quantization,
            speculative,
        })
    }
}

fn parse_model(f: Fields<'_>, base: &Path) -> Result<ModelSource, ConfigError> {
    match (f.obj.get("path"), f.obj.get("architecture")) {
        (Some(_), Some(_)) => Err(f.field_err("path", "`model.path` and `model.architecture` exclude each other: give a Hugging Face directory or an inline architecture")),
        (None, None) => Err(f.invalid("[model] needs `path` (a Hugging Face directory) or `architecture` (qwen3_moe or mixtral, with the config.json fields inline)")),
        (Some(p), None) => {
            if let Some(key) = f.obj.keys().find(|k| *k != "path") {
                return Err(f.field_err(key, "not allowed next to `model.path` (the config comes from the directory's config.json)"));
            }
            Ok(ModelSource::HfDir(base.join(f.string("path", p)?)))
        }
        (None, Some(_)) => {
            if let Some(key) = f.obj.keys().find(|k| *k != "architecture" && !KNOWN_KEYS.contains(&k.as_str())) {
                let hint = if key == "model_type" { " (write `architecture` instead)" } else { "" };
                return Err(f.field_err(key, format!("unknown key{hint}")));
            }
            Ok(ModelSource::Inline(Box::new(f.spec("architecture")?)))
        }
    }
}

fn parse_quantization(f: Fields<'_>) -> Result<Quantization, ConfigError> {
    let mut q = Quantization::default();
    for (key, v) in f.obj {
        let slot = match key.as_str() {
            "experts" => &mut q.experts,
            "dense" => &mut q.dense,
            _ => return Err(f.field_err(key, "unknown key (expected experts or dense)")),
        };
        *slot = Some(
            f.string(key, v)?
                .parse::<WeightFormat>()
                .map_err(|e| f.field_err(key, e))?,
        );
    }
    Ok(q)
}

fn parse_speculative(f: Fields<'_>, base: &Path) -> Result<Speculative, ConfigError> {
    if let Some(key) = f
        .obj
        .keys()
        .find(|k| !["method", "draft", "block_size"].contains(&k.as_str()))
    {
        return Err(f.field_err(key, "unknown key (expected method, draft or block_size)"));
    }
    let method = f.required("method", |f, k, v| f.string(k, v))?;
    if method != "dflash" {
        return Err(f.unsupported("method", format!("`{method}` (expected dflash)")));
    }
    Ok(Speculative {
        method: method.to_string(),
        draft: base.join(f.required("draft", |f, k, v| f.string(k, v))?),
        block_size: f.optional("block_size", Fields::positive)?,
    })
}

/// TOML values as JSON, so inline model descriptions go through the config.json parser.
fn toml_to_json(file: &Path, key: &str, v: &toml::Value) -> Result<Value, ConfigError> {
    let err = |what: &str| ConfigError::Field {
        file: file.into(),
        field: key.to_string(),
        message: format!("{what} is not a valid value here"),
    };
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(x) => serde_json::Number::from_f64(*x)
            .map(Value::Number)
            .ok_or_else(|| err(&x.to_string()))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => return Err(err(&format!("the date {d}"))),
        toml::Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| toml_to_json(file, key, x))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => {
            let mut m = Map::new();
            for (k, x) in t {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                m.insert(k.clone(), toml_to_json(file, &sub, x)?);
            }
            Value::Object(m)
        }
    })
}

/// The TOML error as one line with its position (the crate's own Display spans several lines).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} at line {line} column {column}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN_V4: &str = r#"{
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": 288, "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6,
        "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 3,
        "moe_intermediate_size": 32, "intermediate_size": 128, "norm_topk_prob": false,
        "rope_theta": 500000.0, "rope_scaling": null, "rms_norm_eps": 1e-06,
        "max_position_embeddings": 256, "tie_word_embeddings": false, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "use_sliding_window": false, "sliding_window": null,
        "torch_dtype": "bfloat16", "hidden_act": "silu", "attention_bias": false
    }"#;

    const MIXTRAL_V5: &str = r#"{
        "model_type": "mixtral", "vocab_size": 384, "hidden_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": null,
        "num_local_experts": 8, "num_experts_per_tok": 3, "intermediate_size": 32,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "rms_norm_eps": 1e-05, "max_position_embeddings": 256, "sliding_window": null,
        "dtype": "float32", "tie_word_embeddings": false
    }"#;

    fn parse(text: &str) -> Result<ModelSpec, ConfigError> {
        spec_from_hf_config(text, Path::new("cfg/config.json"))
    }

    /// `base` with `key` replaced (or removed when `value` is None).
    fn edit(base: &str, key: &str, value: Option<Value>) -> String {
        let mut v: Value = serde_json::from_str(base).unwrap();
        let obj = v.as_object_mut().unwrap();
        match value {
            Some(x) => obj.insert(key.to_string(), x),
            None => obj.remove(key),
        };
        v.to_string()
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn transformers_4_style() {
        let s = parse(QWEN_V4).unwrap();
        assert_eq!(s.architecture, Architecture::Qwen3Moe);
        assert_eq!((s.vocab_size, s.hidden_size, s.num_layers), (288, 96, 2));
        assert_eq!((s.num_heads, s.num_kv_heads, s.head_dim), (6, 2, 16));
        assert_eq!(
            (
                s.num_experts,
                s.experts_per_token,
                s.expert_intermediate_size
            ),
            (8, 3, 32)
        );
        assert!(!s.norm_topk_prob && !s.tie_word_embeddings);
        assert_eq!(
            (s.rope_theta, s.rms_norm_eps, s.max_position_embeddings),
            (500000.0, 1e-6, 256)
        );
        assert_eq!(
            s.formats,
            WeightFormats {
                experts: WeightFormat::Bf16,
                dense: WeightFormat::Bf16
            }
        );
    }

    #[test]
    fn transformers_5_style_and_null_head_dim() {
        let s = parse(MIXTRAL_V5).unwrap();
        assert_eq!(s.architecture, Architecture::Mixtral);
        assert_eq!(
            (s.head_dim, s.num_experts, s.expert_intermediate_size),
            (16, 8, 32)
        );
        assert!(s.norm_topk_prob);
        assert_eq!(s.rope_theta, 500000.0);
        assert_eq!(s.formats.experts, WeightFormat::F32);
        // 5.x style for Qwen3-MoE too: num_local_experts, rope_parameters, dtype.
        let mut v: Value = serde_json::from_str(QWEN_V4).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("num_experts");
        o.remove("rope_theta");
        o.remove("torch_dtype");
        o.insert("num_local_experts".into(), 8.into());
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 1e6, "rope_type": "default"}),
        );
        o.insert("dtype".into(), "float16".into());
        let s = parse(&v.to_string()).unwrap();
        assert_eq!(
            (s.num_experts, s.rope_theta, s.formats.dense),
            (8, 1e6, WeightFormat::F16)
        );
    }

    #[test]
    fn defaults() {
        let mut text = QWEN_V4.to_string();
        for key in [
            "num_key_value_heads",
            "head_dim",
            "norm_topk_prob",
            "rope_theta",
            "torch_dtype",
            "tie_word_embeddings",
        ] {
            text = edit(&text, key, None);
        }
        let s = parse(&text).unwrap();
        assert_eq!((s.num_kv_heads, s.head_dim), (6, 16));
        assert!(!s.norm_topk_prob && !s.tie_word_embeddings);
        assert_eq!(
            (s.rope_theta, s.formats.experts),
            (10_000.0, WeightFormat::F32)
        );
    }

    #[test]
    fn the_real_fixture_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path().join("config.json");
            if let Ok(text) = std::fs::read_to_string(&path) {
                spec_from_hf_config(&text, &path).unwrap();
            }
        }
    }

    #[test]
    fn missing_and_wrong_types() {
        assert_eq!(
            err(&edit(QWEN_V4, "hidden_size", None)),
            "cfg/config.json: field `hidden_size`: missing (required)"
        );
        assert_eq!(
            err(&edit(QWEN_V4, "hidden_size", Some("abc".into()))),
            r#"cfg/config.json: field `hidden_size`: expected a positive integer, got "abc""#
        );
        assert!(
            err(&edit(QWEN_V4, "vocab_size", Some(0.into())))
                .contains("`vocab_size`: expected a positive integer, got 0")
        );
        assert!(
            err(&edit(QWEN_V4, "num_experts", None))
                .contains("`num_experts`: missing (required; or `num_local_experts`)")
        );
        assert!(
            err(&edit(QWEN_V4, "norm_topk_prob", Some(1.into())))
                .contains("`norm_topk_prob`: expected true or false, got 1")
        );
        assert!(
            err(&edit(QWEN_V4, "rms_norm_eps", Some("x".into())))
                .contains("`rms_norm_eps`: expected a positive number")
        );
        assert!(
            err(&edit(QWEN_V4, "num_local_experts", Some(16.into())))
                .contains("16 conflicts with `num_experts` = 8")
        );
        assert!(
            err(&edit(QWEN_V4, "torch_dtype", Some("int8".into())))
                .contains("`torch_dtype`: unsupported: dtype `int8`")
        );
        assert!(err("[1, 2]").contains("expected a JSON object"));
        let e = err("{\"model_type\": ");
        assert!(
            e.starts_with("cfg/config.json: malformed JSON: ") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn validation() {
        assert!(
            err(&edit(QWEN_V4, "num_key_value_heads", Some(4.into())))
                .contains("4 does not divide num_attention_heads 6")
        );
        assert!(
            err(&edit(QWEN_V4, "num_experts_per_tok", Some(9.into())))
                .contains("9 is more than the 8 experts")
        );
        let no_head_dim = edit(
            &edit(QWEN_V4, "head_dim", None),
            "num_attention_heads",
            Some(7.into()),
        );
        assert!(
            err(&edit(&no_head_dim, "num_key_value_heads", Some(7.into())))
                .contains("not divisible")
        );
    }

    #[test]
    fn unknown_model_type() {
        assert_eq!(
            err(&edit(QWEN_V4, "model_type", Some("llama".into()))),
            "unknown model_type `llama` in cfg/config.json (supported: qwen3_moe, mixtral, mimo_v2_flash, mimo_v2)"
        );
    }

    #[test]
    fn unsupported_options_are_named() {
        let cases = [
            (
                "decoder_sparse_step",
                serde_json::json!(2),
                "`decoder_sparse_step`: unsupported",
            ),
            (
                "mlp_only_layers",
                serde_json::json!([0]),
                "`mlp_only_layers`: unsupported",
            ),
            (
                "use_sliding_window",
                serde_json::json!(true),
                "`use_sliding_window`: unsupported",
            ),
            (
                "hidden_act",
                serde_json::json!("gelu"),
                "`hidden_act`: unsupported",
            ),
            (
                "attention_bias",
                serde_json::json!(true),
                "`attention_bias`: unsupported",
            ),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
                "`rope_scaling`: unsupported",
            ),
            (
                "rope_parameters",
                serde_json::json!({"rope_theta": 1e6, "rope_type": "yarn"}),
                "`rope_parameters.rope_type`: unsupported",
            ),
        ];
        for (key, value, expected) in cases {
            let e = err(&edit(QWEN_V4, key, Some(value)));
            assert!(e.contains(expected), "{key}: {e}");
        }
        // Qwen ignores the window unless use_sliding_window; Mixtral refuses an effective one.
        parse(&edit(QWEN_V4, "sliding_window", Some(4096.into()))).unwrap();
        assert!(
            err(&edit(MIXTRAL_V5, "sliding_window", Some(128.into())))
                .contains("`sliding_window`: unsupported")
        );
        parse(&edit(MIXTRAL_V5, "sliding_window", Some(4096.into()))).unwrap();
    }

    fn toml(text: &str) -> Result<ModelToml, ConfigError> {
        ModelToml::parse(text, Path::new("/models/x/model.toml"))
    }

    #[test]
    fn model_toml_with_path() {
        let m = toml(
            r#"
            [model]
            path = "hf-dir"
            [quantization]
            experts = "mxfp4"
            dense = "BF16"
            [speculative]
            method = "dflash"
            draft = "../drafts/d"
            block_size = 16
            "#,
        )
        .unwrap();
        assert_eq!(m.file, Path::new("/models/x/model.toml"));
        assert_eq!(m.model, ModelSource::HfDir("/models/x/hf-dir".into()));
        assert_eq!(
            m.quantization,
            Quantization {
                experts: Some(WeightFormat::Mxfp4),
                dense: Some(WeightFormat::Bf16)
            }
        );
        let s = m.speculative.unwrap();
        assert_eq!(
            (s.method.as_str(), s.draft, s.block_size),
            ("dflash", "/models/x/../drafts/d".into(), Some(16))
        );
        let f32s = WeightFormats {
            experts: WeightFormat::F32,
            dense: WeightFormat::F32,
        };
        assert_eq!(
            m.quantization.apply(f32s),
            WeightFormats {
                experts: WeightFormat::Mxfp4,
                dense: WeightFormat::Bf16
            }
        );
        assert_eq!(Quantization::default().apply(f32s), f32s);
        // Absolute paths stay absolute; a bare file name resolves next to nothing.
        let m = ModelToml::parse("[model]\npath = \"/abs/hf\"", Path::new("model.toml")).unwrap();
        assert_eq!(m.model, ModelSource::HfDir("/abs/hf".into()));
        assert_eq!(m.speculative, None);
    }

    #[test]
    fn model_toml_inline() {
        let m = toml(
            r#"
            [model]
            architecture = "qwen3_moe"
            vocab_size = 151936
            hidden_size = 2048
            num_hidden_layers = 48
            num_attention_heads = 32
            num_key_value_heads = 4
            head_dim = 128
            num_experts = 128
            num_experts_per_tok = 8
            moe_intermediate_size = 768
            norm_topk_prob = true
            rope_parameters = { rope_theta = 1e7, rope_type = "default" }
            "#,
        )
        .unwrap();
        let ModelSource::Inline(s) = m.model else {
            panic!("expected inline")
        };
        assert_eq!(
            (s.hidden_size, s.num_layers, s.num_experts, s.head_dim),
            (2048, 48, 128, 128)
        );
        assert!(s.norm_topk_prob);
        assert_eq!(s.rope_theta, 1e7);
        let e = toml("[model]\narchitecture = \"mixtral\"\nhidden_size = \"big\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            r#"/models/x/model.toml: field `model.hidden_size`: expected a positive integer, got "big""#
        );
        let e = toml("[model]\narchitecture = \"gpt2\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown model.architecture `gpt2` in /models/x/model.toml (supported: qwen3_moe, mixtral, mimo_v2_flash, mimo_v2)"
        );
        let e = toml("[model]\narchitecture = \"mixtral\"\nnum_expert = 8")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `model.num_expert`: unknown key"), "{e}");
    }

    #[test]
    fn model_toml_errors() {
        let cases = [
            (
                "[model]\npath = \"a\"\narchitecture = \"mixtral\"",
                "exclude each other",
            ),
            ("[model]\n", "[model] needs `path`"),
            (
                "[quantization]\nexperts = \"mxfp4\"",
                "missing [model] table",
            ),
            (
                "[model]\npath = \"a\"\nhidden_size = 3",
                "field `model.hidden_size`: not allowed next to `model.path`",
            ),
            (
                "[model]\npath = 3",
                "field `model.path`: expected a string, got 3",
            ),
            ("model = 3", "field `model`: expected a table"),
            (
                "[model]\npath = \"a\"\n[extra]",
                "field `extra`: unknown table",
            ),
            (
                "[model]\npath = \"a\"\n[quantization]\nexperts = \"mxfp5\"",
                "field `quantization.experts`: unknown weight format `mxfp5` (expected f32, bf16, f16, mxfp4 or nvfp4)",
            ),
            (
                "[model]\npath = \"a\"\n[quantization]\nexpert = \"mxfp4\"",
                "field `quantization.expert`: unknown key",
            ),
            (
                "[model]\npath = \"a\"\n[speculative]\ndraft = \"d\"",
                "field `speculative.method`: missing",
            ),
            (
                "[model]\npath = \"a\"\n[speculative]\nmethod = \"eagle\"\ndraft = \"d\"",
                "`speculative.method`: unsupported",
            ),
            (
                "[model]\npath = \"a\"\n[speculative]\nmethod = \"dflash\"\ndraft = \"d\"\nblock_size = 0",
                "`speculative.block_size`: expected a positive integer",
            ),
            (
                "[model]\npath = \"a\"\n[speculative]\nmethod = \"dflash\"\ndraft = \"d\"\nblocks = 4",
                "`speculative.blocks`: unknown key",
            ),
            (
                "[model]\narchitecture = \"mixtral\"\nwhen = 1979-05-27",
                "field `model.when`",
            ),
        ];
        for (text, expected) in cases {
            let e = toml(text).unwrap_err().to_string();
            assert!(
                e.starts_with("/models/x/model.toml: ") || e.contains("model.toml"),
                "{e}"
            );
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        let e = toml("[model\npath = 1").unwrap_err().to_string();
        assert!(
            e.starts_with("/models/x/model.toml: malformed TOML: ")
                && e.contains("line 1")
                && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn model_toml_load_reports_the_file() {
        let e = ModelToml::load(Path::new("/nonexistent/model.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read /nonexistent/model.toml: "),
            "{e}"
        );
    }
}
