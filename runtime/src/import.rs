//! Hugging Face checkpoints -> the IR: [`config`] (a model's `config.json`, and `model.toml`) and
//! [`draft_config`] (a DFlash draft's `config.json`) give the model's spec; the rest of this module
//! maps the checkpoint's tensors onto the IR's weights: Hugging Face names are mapped onto the names of
//! [`mimo_ir::model::names`], routed experts are stacked into one `[E, I, H]` / `[E, H, I]`
//! tensor per projection, and every weight is stored in the format `spec.formats` asks for.
//!
//! Two expert layouts exist in the wild and both load:
//! - per expert (transformers 4.x, and what 5.x `save_pretrained` writes, since 5.x converts back
//!   to the original layout on save): `...experts.{e}.{gate,up,down}_proj.weight`, or Mixtral's
//!   `...block_sparse_moe.experts.{e}.{w1,w3,w2}.weight`;
//! - fused, transformers 5.x's in-memory layout (a state dict saved directly):
//!   `...mlp.experts.gate_up_proj` `[E, 2I, H]` with gate in rows `[0, I)` and up in `[I, 2I)`
//!   (`gate, up = linear(x, gate_up_proj[e]).chunk(2, dim=-1)`), and `...mlp.experts.down_proj`
//!   `[E, H, I]`. Transposed variants are refused by shape rather than guessed at.
//!
//! Routed experts may also be stored pre-quantised as MXFP4 (the OCP Microscaling format, as
//! gpt-oss ships its experts): per expert, `...{gate,up,down}_proj.weight` U8 `[out, in/2]` (two E2M1
//! codes per byte, element 2j in the low nibble of byte j) and `...weight_scale` U8 `[out, in/32]`
//! (one E8M0 scale per 32 elements along the row), which is exactly [`Mxfp4Matrix`]'s layout. They
//! are copied into [`WeightData::Mxfp4`] as they are: dequantising and re-quantising could only
//! lose what the checkpoint's quantiser chose, so any other requested experts format is refused.
//!
//! Every shape is checked before anything is converted, so a wrong checkpoint fails in
//! milliseconds, not after minutes of quantisation.

pub mod config;
pub mod draft_config;

use std::collections::HashSet;
use std::sync::mpsc;

use mimo_ir::formats::WeightFormat;
use mimo_ir::formats::mxfp4::{BLOCK as MX_BLOCK, Mxfp4Matrix};
use mimo_ir::model::names::{self, LayerWeight};
use mimo_ir::weights::{Weight, WeightData, WeightStore};
use mimo_ir::{Architecture, ModelSpec};
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, Dtype};
use crate::error::LoadError;

/// Transient f32 memory the parallel conversion may hold at once. Stacked expert tensors are large
/// (805 MB each for Qwen3-30B-A3B), so parallelism is bounded by memory as well as by cores.
const PARALLEL_BYTES: usize = 6 << 30;

/// Reads every weight `spec` declares from `ckpt`, converted to `spec.formats`.
///
/// `progress(done, total)` is called on the calling thread, once with `done = 0` and once per
/// finished weight.
pub fn load_weights(
    spec: &ModelSpec,
    ckpt: &Checkpoint,
    progress: &dyn Fn(usize, usize),
) -> Result<WeightStore, LoadError> {
    let jobs = plan(spec, ckpt)?;
    let used: HashSet<&str> = jobs.iter().flat_map(|j| j.source.tensors()).collect();
    let unused: Vec<&str> = ckpt.tensor_names().filter(|n| !used.contains(n)).collect();
    if !unused.is_empty() {
        tracing::debug!(
            count = unused.len(),
            first = unused[0],
            "checkpoint tensors not used by the model"
        );
    }

    let largest = jobs.iter().map(Job::transient_bytes).max().unwrap_or(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (PARALLEL_BYTES / largest.max(1)).clamp(1, cores);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| {
            LoadError::invalid(
                ckpt.dir(),
                format!("cannot start {threads} loader threads: {e}"),
            )
        })?;

    let total = jobs.len();
    progress(0, total);
    let (tx, rx) = mpsc::channel::<()>();
    let results = std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            pool.install(|| {
                jobs.par_iter()
                    .map_with(tx, |tx, job| {
                        let weight = job.run(ckpt);
                        let _ = tx.send(()); // the receiver outlives every sender
                        weight.map(|w| (job.name.clone(), w))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        for (done, ()) in rx.iter().enumerate() {
            progress(done + 1, total);
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;

    let mut store = WeightStore::new();
    for (name, weight) in results {
        store.insert(name, weight);
    }
    Ok(store)
}

/// One IR weight: where its values come from and how to store them.
#[derive(Debug)]
struct Job {
    name: String,
    shape: Vec<usize>,
    format: WeightFormat,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// One checkpoint tensor of exactly the IR shape.
    Tensor(String),
    /// Per-expert matrices stacked along a new leading axis.
    Stacked(Vec<String>),
    /// A tensor of C columns read as blocks of `rows` rows: rows `[offset, offset + take)` of
    /// every block, in order. Each expert's gate (or up) half of a fused `[E, 2R, C]` gate_up; a
    /// fused `qkv_proj`'s q (or k, or v) rows from each of its per-KV-group blocks.
    Rows {
        name: String,
        rows: usize,
        offset: usize,
        take: usize,
    },
    /// Pre-quantised MXFP4 experts: each expert's U8 codes and `weight_scale` tensors, stacked.
    Mxfp4Stacked(Vec<[String; 2]>),
}

impl Source {
    fn tensors(&self) -> Vec<&str> {
        match self {
            Source::Tensor(n) | Source::Rows { name: n, .. } => vec![n],
            Source::Stacked(names) => names.iter().map(String::as_str).collect(),
            Source::Mxfp4Stacked(pairs) => pairs.iter().flatten().map(String::as_str).collect(),
        }
    }
}

/// The block-scale tensor stored beside pre-quantised FP4 codes `name` (`....weight`).
pub fn scale_name(name: &str) -> String {
    format!("{name}_scale")
}

/// Whether `ckpt` stores routed experts pre-quantised as MXFP4: U8 `...experts.N....weight`
/// codes with a `...weight_scale` beside them.
pub fn has_mxfp4_experts(ckpt: &Checkpoint) -> bool {
    ckpt.tensor_names().any(|n| {
        n.contains(".experts.")
            && n.ends_with(".weight_scale")
            && ckpt
                .info(n.trim_end_matches("_scale"))
                .is_some_and(|(dtype, _)| dtype == Dtype::U8)
    })
}

impl Job {
    /// The f32 buffers `run` holds at its peak: the values, plus the whole fused tensor it slices.
    fn transient_bytes(&self) -> usize {
        let numel: usize = self.shape.iter().product();
        match self.source {
            Source::Rows { rows, take, .. } => (numel + numel / take.max(1) * rows) * 4,
            Source::Mxfp4Stacked(_) => numel / 2 + numel / MX_BLOCK,
            _ => numel * 4,
        }
    }

    fn run(&self, ckpt: &Checkpoint) -> Result<Weight, LoadError> {
        let numel = self.shape.iter().product();
        let values = match &self.source {
            Source::Mxfp4Stacked(names) => return self.stack_mxfp4(ckpt, names, numel),
            Source::Tensor(name) => ckpt.read_f32(name)?.1,
            Source::Stacked(names) => {
                let mut values = vec![0.0; numel];
                let per = numel / names.len().max(1);
                values
                    .par_chunks_mut(per.max(1))
                    .zip(names)
                    .try_for_each(|(chunk, name)| ckpt.read_f32_into(name, chunk))?;
                values
            }
            Source::Rows {
                name,
                rows,
                offset,
                take,
            } => {
                let (_, fused) = ckpt.read_f32(name)?;
                let c = self.shape.last().copied().unwrap_or(1);
                let mut values = Vec::with_capacity(numel);
                for block in 0..numel / (take * c).max(1) {
                    let start = (block * rows + offset) * c;
                    values.extend_from_slice(&fused[start..start + take * c]);
                }
                values
            }
        };
        if self.format == WeightFormat::F32 {
            return Ok(Weight {
                shape: self.shape.clone(),
                data: WeightData::F32(values),
            });
        }
        Weight::from_f32(self.shape.clone(), &values, self.format).map_err(|source| {
            LoadError::Format {
                weight: self.name.clone(),
                format: self.format,
                source,
            }
        })
    }

    /// Copies every expert's stored codes and scales, in expert order, into one MXFP4 matrix of
    /// `E * rows` rows (the stacked layout: expert `e` starts at row `e * rows`).
    fn stack_mxfp4(
        &self,
        ckpt: &Checkpoint,
        names: &[[String; 2]],
        numel: usize,
    ) -> Result<Weight, LoadError> {
        let cols = self.shape.last().copied().unwrap_or(1);
        let experts = names.len().max(1);
        let mut codes = vec![0u8; numel / 2];
        let mut scales = vec![0u8; numel / MX_BLOCK];
        let (per_codes, per_scales) = (codes.len() / experts, scales.len() / experts);
        codes
            .par_chunks_mut(per_codes.max(1))
            .zip(scales.par_chunks_mut(per_scales.max(1)))
            .zip(names)
            .try_for_each(|((c, s), [codes, scale])| {
                c.copy_from_slice(ckpt.raw(codes)?.2);
                s.copy_from_slice(ckpt.raw(scale)?.2);
                Ok::<(), LoadError>(())
            })?;
        let matrix = Mxfp4Matrix::from_parts(numel / cols.max(1), cols, codes, scales).map_err(
            |source| LoadError::Format {
                weight: self.name.clone(),
                format: WeightFormat::Mxfp4,
                source,
            },
        )?;
        Ok(Weight {
            shape: self.shape.clone(),
            data: WeightData::Mxfp4(matrix),
        })
    }
}

/// Resolves and shape-checks the source of every weight `spec` declares.
fn plan(spec: &ModelSpec, ckpt: &Checkpoint) -> Result<Vec<Job>, LoadError> {
    let mut jobs = Vec::new();
    for (name, shape, is_expert) in names::all_weights(spec) {
        let format = if is_expert {
            spec.formats.experts
        } else {
            spec.formats.dense
        };
        let source = match name.as_str() {
            names::EMBED => single(ckpt, "model.embed_tokens.weight", &shape)?,
            names::FINAL_NORM => single(ckpt, "model.norm.weight", &shape)?,
            // transformers ties the head to the embedding whenever the config says so, whether or
            // not an `lm_head.weight` was saved.
            names::LM_HEAD if spec.tie_word_embeddings => {
                single(ckpt, "model.embed_tokens.weight", &shape)?
            }
            names::LM_HEAD => single(ckpt, "lm_head.weight", &shape)?,
            _ => {
                let (layer, weight) = parse_layer_name(spec, &name).ok_or_else(|| {
                    LoadError::invalid(
                        ckpt.dir(),
                        format!("no checkpoint mapping for IR weight `{name}`"),
                    )
                })?;
                layer_source(spec, ckpt, layer, weight, &shape)?
            }
        };
        jobs.push(Job {
            name,
            shape,
            format,
            source,
        });
    }
    Ok(jobs)
}

fn parse_layer_name(spec: &ModelSpec, name: &str) -> Option<(usize, LayerWeight)> {
    let rest = name.strip_prefix("layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    LayerWeight::ALL
        .into_iter()
        .find(|w| w.suffix() == suffix && w.present_in(spec, layer))
        .map(|w| (layer, w))
}

fn layer_source(
    spec: &ModelSpec,
    ckpt: &Checkpoint,
    layer: usize,
    weight: LayerWeight,
    shape: &[usize],
) -> Result<Source, LoadError> {
    let p = format!("model.layers.{layer}.");
    let mixtral = spec.architecture == Architecture::Mixtral;
    let dense = |suffix: &str| single(ckpt, &format!("{p}{suffix}"), shape);
    match weight {
        LayerWeight::AttnNorm => dense("input_layernorm.weight"),
        LayerWeight::Wq | LayerWeight::Wk | LayerWeight::Wv
            if !ckpt.contains(&format!("{p}self_attn.q_proj.weight"))
                && ckpt.contains(&format!("{p}self_attn.qkv_proj.weight")) =>
        {
            fused_qkv_source(spec, ckpt, layer, weight)
        }
        LayerWeight::Wq => dense("self_attn.q_proj.weight"),
        LayerWeight::Wk => dense("self_attn.k_proj.weight"),
        LayerWeight::Wv => dense("self_attn.v_proj.weight"),
        LayerWeight::Wo => dense("self_attn.o_proj.weight"),
        LayerWeight::QNorm => dense("self_attn.q_norm.weight"),
        LayerWeight::KNorm => dense("self_attn.k_norm.weight"),
        LayerWeight::FfnNorm => dense("post_attention_layernorm.weight"),
        // transformers 5.x renames Mixtral's `block_sparse_moe` to `mlp` in memory.
        LayerWeight::Router if mixtral && !ckpt.contains(&format!("{p}mlp.gate.weight")) => {
            dense("block_sparse_moe.gate.weight")
        }
        LayerWeight::Router => dense("mlp.gate.weight"),
        LayerWeight::RouterBias => dense("mlp.gate.e_score_correction_bias"),
        // MiMo-V2: hub checkpoints and transformers' `save_pretrained` both write the sinks as
        // `attention_sink_bias`; transformers calls the parameter `sinks` in memory.
        LayerWeight::Sinks if ckpt.contains(&format!("{p}self_attn.sinks")) => {
            dense("self_attn.sinks")
        }
        LayerWeight::Sinks => dense("self_attn.attention_sink_bias"),
        LayerWeight::MlpGate => dense("mlp.gate_proj.weight"),
        LayerWeight::MlpUp => dense("mlp.up_proj.weight"),
        LayerWeight::MlpDown => dense("mlp.down_proj.weight"),
        LayerWeight::ExpertsGate | LayerWeight::ExpertsUp | LayerWeight::ExpertsDown => {
            expert_source(spec, ckpt, &p, weight, shape)
        }
    }
}

/// The per-expert tensors if the checkpoint has them, else the fused ones.
fn expert_source(
    spec: &ModelSpec,
    ckpt: &Checkpoint,
    p: &str,
    weight: LayerWeight,
    shape: &[usize],
) -> Result<Source, LoadError> {
    let per_expert = |e: usize| match (spec.architecture, weight) {
        (Architecture::Mixtral, LayerWeight::ExpertsGate) => {
            format!("{p}block_sparse_moe.experts.{e}.w1.weight")
        }
        (Architecture::Mixtral, LayerWeight::ExpertsUp) => {
            format!("{p}block_sparse_moe.experts.{e}.w3.weight")
        }
        (Architecture::Mixtral, _) => format!("{p}block_sparse_moe.experts.{e}.w2.weight"),
        (_, LayerWeight::ExpertsGate) => format!("{p}mlp.experts.{e}.gate_proj.weight"),
        (_, LayerWeight::ExpertsUp) => format!("{p}mlp.experts.{e}.up_proj.weight"),
        (_, _) => format!("{p}mlp.experts.{e}.down_proj.weight"),
    };
    let (e, r, c) = (shape[0], shape[1], shape[2]);
    if ckpt
        .info(&per_expert(0))
        .is_some_and(|(dtype, _)| dtype == Dtype::U8)
    {
        return mxfp4_source(spec, ckpt, (0..e).map(per_expert).collect(), r, c);
    }
    let fused = match weight {
        LayerWeight::ExpertsDown => format!("{p}mlp.experts.down_proj"),
        _ => format!("{p}mlp.experts.gate_up_proj"),
    };
    if ckpt.contains(&per_expert(0)) || !ckpt.contains(&fused) {
        let names: Vec<String> = (0..e).map(per_expert).collect();
        for name in &names {
            if !ckpt.contains(name) {
                return Err(LoadError::MissingTensor {
                    name: name.clone(),
                    dir: ckpt.dir().to_path_buf(),
                    alternatives: if name == &names[0] {
                        format!(" (or the fused `{fused}`)")
                    } else {
                        String::new()
                    },
                });
            }
            check_shape(ckpt, name, &[r, c])?;
        }
        return Ok(Source::Stacked(names));
    }
    if weight == LayerWeight::ExpertsDown {
        check_shape(ckpt, &fused, shape)?;
        return Ok(Source::Tensor(fused));
    }
    check_shape(ckpt, &fused, &[e, 2 * r, c])?;
    let offset = if weight == LayerWeight::ExpertsGate {
        0
    } else {
        r
    };
    Ok(Source::Rows {
        name: fused,
        rows: 2 * r,
        offset,
        take: r,
    })
}

/// MiMo-V2.5's fused `self_attn.qkv_proj.weight`, stored for tensor parallelism over as many
/// ranks as the model's (full-attention) KV heads: one block per rank, each the rank's
/// `[q heads | k heads | v heads]` rows. `weight` is one of Wq, Wk, Wv: its rows from every block.
fn fused_qkv_source(
    spec: &ModelSpec,
    ckpt: &Checkpoint,
    layer: usize,
    weight: LayerWeight,
) -> Result<Source, LoadError> {
    let name = format!("model.layers.{layer}.self_attn.qkv_proj.weight");
    let a = spec.attention(layer);
    let ranks = spec.num_kv_heads;
    if !a.num_heads.is_multiple_of(ranks) || !a.num_kv_heads.is_multiple_of(ranks) {
        return Err(LoadError::invalid(
            ckpt.file_of(&name),
            format!(
                "`{name}`: layer {layer}'s {} query and {} KV heads do not split over the {ranks} \
                 blocks of a fused qkv_proj (num_key_value_heads)",
                a.num_heads, a.num_kv_heads
            ),
        ));
    }
    let q = a.num_heads / ranks * a.head_dim;
    let k = a.num_kv_heads / ranks * a.head_dim;
    let v = a.num_kv_heads / ranks * a.v_head_dim;
    check_shape(ckpt, &name, &[ranks * (q + k + v), spec.hidden_size])?;
    let (offset, take) = match weight {
        LayerWeight::Wq => (0, q),
        LayerWeight::Wk => (q, k),
        _ => (q + k, v),
    };
    Ok(Source::Rows {
        name,
        rows: q + k + v,
        offset,
        take,
    })
}

/// Pre-quantised MXFP4 experts `names` (each `[rows, cols]` logically): checks that the model
/// stores experts as MXFP4 and every code and scale tensor is U8 of the packed shape.
fn mxfp4_source(
    spec: &ModelSpec,
    ckpt: &Checkpoint,
    names: Vec<String>,
    rows: usize,
    cols: usize,
) -> Result<Source, LoadError> {
    let first = &names[0];
    if spec.formats.experts != WeightFormat::Mxfp4 {
        return Err(LoadError::invalid(
            ckpt.file_of(first),
            format!(
                "`{first}` is stored pre-quantised as MXFP4 (U8 codes with a `weight_scale`), but the \
                 model asks for {} experts: set `[quantization] experts = \"mxfp4\"` (FP4 weights \
                 are never re-quantised)",
                spec.formats.experts
            ),
        ));
    }
    if !cols.is_multiple_of(MX_BLOCK) {
        return Err(LoadError::invalid(
            ckpt.file_of(first),
            format!(
                "`{first}`: MXFP4 needs the input dimension ({cols}) to be a multiple of {MX_BLOCK}"
            ),
        ));
    }
    for name in &names {
        for (tensor, shape) in [
            (name.clone(), [rows, cols / 2]),
            (scale_name(name), [rows, cols / MX_BLOCK]),
        ] {
            let Some((dtype, found)) = ckpt.info(&tensor) else {
                return Err(LoadError::MissingTensor {
                    name: tensor,
                    dir: ckpt.dir().to_path_buf(),
                    alternatives: " (pre-quantised MXFP4 experts need codes and a weight_scale)"
                        .into(),
                });
            };
            if found != shape {
                return Err(LoadError::Shape {
                    file: ckpt.file_of(&tensor).to_path_buf(),
                    name: tensor,
                    expected: shape.to_vec(),
                    found: found.to_vec(),
                });
            }
            if dtype != Dtype::U8 {
                return Err(LoadError::invalid(
                    ckpt.file_of(&tensor),
                    format!(
                        "tensor `{tensor}` is {dtype:?}; pre-quantised MXFP4 codes and scales are U8"
                    ),
                ));
            }
        }
    }
    Ok(Source::Mxfp4Stacked(
        names
            .into_iter()
            .map(|n| {
                let scale = scale_name(&n);
                [n, scale]
            })
            .collect(),
    ))
}

fn single(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<Source, LoadError> {
    if !ckpt.contains(name) {
        return Err(LoadError::MissingTensor {
            name: name.to_string(),
            dir: ckpt.dir().to_path_buf(),
            alternatives: String::new(),
        });
    }
    check_shape(ckpt, name, shape)?;
    Ok(Source::Tensor(name.to_string()))
}

/// Checks that `name` has `shape` and a float dtype, so that reading it later cannot fail on either.
fn check_shape(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<(), LoadError> {
    let Some((dtype, found)) = ckpt.info(name) else {
        return Err(LoadError::MissingTensor {
            name: name.to_string(),
            dir: ckpt.dir().to_path_buf(),
            alternatives: String::new(),
        });
    };
    if found != shape {
        return Err(LoadError::Shape {
            name: name.to_string(),
            file: ckpt.file_of(name).to_path_buf(),
            expected: shape.to_vec(),
            found: found.to_vec(),
        });
    }
    if crate::checkpoint::float_format(dtype).is_none() {
        return Err(LoadError::Dtype {
            name: name.to_string(),
            file: ckpt.file_of(name).to_path_buf(),
            dtype: format!("{dtype:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
