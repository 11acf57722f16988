//! Tiny checkpoints for the loading tests (of checkpoints, weight import, models, tokenizers),
//! written with the safetensors crate: per-expert, fused and sharded layouts, f32/bf16/f16.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use mimo_ir::formats::WeightFormat;
use mimo_ir::{Architecture, ModelSpec, WeightFormats};
use safetensors::tensor::TensorView;

pub(crate) use safetensors::Dtype;

/// HF tensor name -> (shape, values as f32, rounded to the dtype they are written in).
pub(crate) type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub(crate) fn tiny_spec(architecture: Architecture) -> ModelSpec {
    ModelSpec {
        hybrid: None,
        architecture,
        vocab_size: 40,
        hidden_size: 16,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        num_experts: 4,
        experts_per_token: 2,
        expert_intermediate_size: 12,
        norm_topk_prob: true,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        formats: WeightFormats {
            experts: WeightFormat::F32,
            dense: WeightFormat::F32,
        },
    }
}

/// Deterministic values in [-1, 1), different for every `seed`.
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The tensors a transformers checkpoint of `spec` holds; `fused` uses 5.x's in-memory expert
/// layout (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]) instead of one tensor per expert.
pub(crate) fn hf_tensors(spec: &ModelSpec, fused: bool, dtype: Dtype) -> Tensors {
    let (v, h, e, i) = (
        spec.vocab_size,
        spec.hidden_size,
        spec.num_experts,
        spec.expert_intermediate_size,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !spec.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![v, h]));
    }
    let mixtral = spec.architecture == Architecture::Mixtral;
    for l in 0..spec.num_layers {
        let p = format!("model.layers.{l}.");
        shapes.push((format!("{p}input_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}self_attn.q_proj.weight"), vec![spec.q_dim(), h]));
        shapes.push((
            format!("{p}self_attn.k_proj.weight"),
            vec![spec.kv_dim(), h],
        ));
        shapes.push((
            format!("{p}self_attn.v_proj.weight"),
            vec![spec.kv_dim(), h],
        ));
        shapes.push((format!("{p}self_attn.o_proj.weight"), vec![h, spec.q_dim()]));
        if !mixtral {
            shapes.push((format!("{p}self_attn.q_norm.weight"), vec![spec.head_dim]));
            shapes.push((format!("{p}self_attn.k_norm.weight"), vec![spec.head_dim]));
        }
        let moe = if mixtral && !fused {
            "block_sparse_moe"
        } else {
            "mlp"
        };
        shapes.push((format!("{p}{moe}.gate.weight"), vec![e, h]));
        if fused {
            shapes.push((format!("{p}mlp.experts.gate_up_proj"), vec![e, 2 * i, h]));
            shapes.push((format!("{p}mlp.experts.down_proj"), vec![e, h, i]));
        } else {
            let [g, u, d] = if mixtral {
                ["w1.weight", "w3.weight", "w2.weight"]
            } else {
                ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]
            };
            for x in 0..e {
                shapes.push((format!("{p}{moe}.experts.{x}.{g}"), vec![i, h]));
                shapes.push((format!("{p}{moe}.experts.{x}.{u}"), vec![i, h]));
                shapes.push((format!("{p}{moe}.experts.{x}.{d}"), vec![h, i]));
            }
        }
    }
    shapes
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let vals = values(shape.iter().product(), k as u64 + 1)
                .into_iter()
                .map(|x| round(x, dtype))
                .collect();
            (name, (shape, vals))
        })
        .collect()
}

pub(crate) fn round(x: f32, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::BF16 => bf16::from_f32(x).to_f32(),
        Dtype::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

pub(crate) fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Writes `tensors` as one safetensors file.
pub(crate) fn write_safetensors(path: &Path, tensors: &Tensors, dtype: Dtype) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, v))| (n.clone(), s.clone(), encode(v, dtype)))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()));
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Writes `tensors` into `dir` as `model.safetensors`, or as `shards` files with an index.
pub(crate) fn write_checkpoint(dir: &Path, tensors: &Tensors, dtype: Dtype, shards: usize) {
    if shards <= 1 {
        return write_safetensors(&dir.join("model.safetensors"), tensors, dtype);
    }
    let mut parts = vec![Tensors::new(); shards];
    let mut weight_map = serde_json::Map::new();
    for (k, (name, t)) in tensors.iter().enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", k % shards + 1);
        parts[k % shards].insert(name.clone(), t.clone());
        weight_map.insert(name.clone(), file.into());
    }
    for (k, part) in parts.iter().enumerate() {
        write_safetensors(
            &dir.join(format!("model-{:05}-of-{shards:05}.safetensors", k + 1)),
            part,
            dtype,
        );
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// A config.json for `spec` in transformers 4.x (`v5 = false`) or 5.x key style.
pub(crate) fn config_json(spec: &ModelSpec, v5: bool, dtype: &str) -> String {
    let mut c = serde_json::json!({
        "model_type": spec.architecture.model_type(),
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "num_experts_per_tok": spec.experts_per_token,
        "rms_norm_eps": spec.rms_norm_eps,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "eos_token_id": 3,
    });
    let o = c.as_object_mut().unwrap();
    let qwen = spec.architecture == Architecture::Qwen3Moe;
    o.insert(
        if qwen {
            "moe_intermediate_size"
        } else {
            "intermediate_size"
        }
        .into(),
        spec.expert_intermediate_size.into(),
    );
    if qwen {
        o.insert("norm_topk_prob".into(), spec.norm_topk_prob.into());
    }
    let experts_key = if v5 || !qwen {
        "num_local_experts"
    } else {
        "num_experts"
    };
    o.insert(experts_key.into(), spec.num_experts.into());
    if v5 {
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": spec.rope_theta, "rope_type": "default"}),
        );
        o.insert("dtype".into(), dtype.into());
    } else {
        o.insert("rope_theta".into(), spec.rope_theta.into());
        o.insert("torch_dtype".into(), dtype.into());
    }
    serde_json::to_string_pretty(&c).unwrap()
}

/// A complete tiny HF directory (config + checkpoint, no tokenizer) in a fresh temp dir.
pub(crate) fn hf_dir(
    spec: &ModelSpec,
    fused: bool,
    dtype: Dtype,
    shards: usize,
) -> (tempfile::TempDir, Tensors) {
    let dir = tempfile::tempdir().unwrap();
    let tensors = hf_tensors(spec, fused, dtype);
    write_checkpoint(dir.path(), &tensors, dtype, shards);
    let name = match dtype {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        _ => "float32",
    };
    std::fs::write(
        dir.path().join("config.json"),
        config_json(spec, fused, name),
    )
    .unwrap();
    (dir, tensors)
}

/// The committed transformers fixtures (`tests/fixtures/hf/*`), those that exist yet.
pub(crate) fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}
