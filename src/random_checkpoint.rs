//! Deterministic random checkpoints of any model shape, for benchmarks: a Hugging Face directory
//! (`config.json` in the transformers 4.x key style, safetensors shards below 4 GB with an index)
//! that every loader reads, ours and transformers' alike, and the same weights synthesised
//! directly in memory ([`random_weights`]) when a benchmark should not touch the disk.
//!
//! **The MXFP4 codes are the source of truth.** Every routed expert matrix is drawn as random
//! E2M1 codes with E8M0 block scales; with `mxfp4_experts` they are written as they are (U8
//! `weight` [out, in/2] + U8 `weight_scale` [out, in/32], the layout `runtime/src/import.rs` reads), otherwise as the bf16
//! values they decode to (exact: an E2M1 value times a power of two has at most two significant
//! bits). Each block holds one element of magnitude 4 or 6, so its scale is the one the OCP rule
//! picks for its values: quantising the bf16 checkpoint to MXFP4 gives back exactly the codes of
//! the pre-quantised one, and the PyTorch baseline (bf16) and mimo (MXFP4) run the same weights.
//!
//! Dense matrices are bf16 with standard deviation `2 / sqrt(fan_in)` (the embedding: 1), norm
//! weights `1 + N(0, 0.1^2)`, as [`mimo_ir::model::random::random_weights`] draws them, so
//! activations keep their size through many layers and the routing is decisive. Expert scales
//! are chosen so the decoded experts have about the same spread.
//!
//! Every tensor is generated in fixed chunks from a seed derived from the run's seed, the
//! tensor's name and the chunk index: the bytes do not depend on thread count or write order, and
//! chunks generate in parallel. Writing streams batches of tensors (generated on all cores while
//! the previous batch is written), so the full Qwen3-30B-A3B (18 GB with MXFP4 experts, 61 GB
//! in bf16) is never held in memory at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use half::bf16;
use mimo_ir::formats::mxfp4::{BLOCK, Mxfp4Matrix};
use mimo_ir::formats::{FormatError, WeightFormat, e2m1, e8m0};
use mimo_ir::model::names::{self, LayerWeight};
use mimo_ir::weights::{Weight, WeightData, WeightStore};
use mimo_ir::{Architecture, ModelSpec};
use rayon::prelude::*;
use serde_json::{Value, json};

use mimo_runtime::checkpoint::{Dtype, INDEX_FILE, SINGLE_FILE};

/// Bytes of tensor data per shard: with its header a shard file stays below 4 GB.
pub const MAX_SHARD_BYTES: u64 = 3_900_000_000;
/// Bytes generated per batch while the previous batch is written.
const BATCH_BYTES: usize = 512 << 20;
/// Elements per generation chunk of a dense tensor.
const CHUNK_ELEMENTS: usize = 1 << 18;
/// MXFP4 blocks per generation chunk of an expert tensor.
const CHUNK_BLOCKS: usize = 1 << 13;

/// What `mimo random-checkpoint` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomOptions {
    /// The same seed gives the same bytes.
    pub seed: u64,
    /// Store routed experts pre-quantised as MXFP4 (U8 codes and scales) instead of bf16.
    pub mxfp4_experts: bool,
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The safetensors files, in order.
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    /// Bytes of tensor data (headers excluded).
    pub bytes: u64,
}

/// How one tensor's bytes are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// bf16, N(0, std^2).
    Dense { std: f32 },
    /// bf16, 1 + N(0, 0.1^2).
    Norm,
    /// U8 packed E2M1 codes of an expert matrix with `cols` columns.
    Codes { cols: usize },
    /// U8 E8M0 block scales of an expert matrix with `cols` columns.
    Scales { cols: usize },
    /// bf16 values the codes and scales decode to.
    Decoded { cols: usize },
}

/// One checkpoint tensor: its name, shape and dtype, how it is drawn, and the key its random
/// stream is derived from (an expert's codes, scales and decoded values share the weight's name).
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    name: String,
    shape: Vec<usize>,
    kind: Kind,
    key: String,
}

impl Planned {
    fn dtype(&self) -> Dtype {
        match self.kind {
            Kind::Codes { .. } | Kind::Scales { .. } => Dtype::U8,
            _ => Dtype::BF16,
        }
    }

    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn bytes(&self) -> usize {
        match self.kind {
            Kind::Codes { .. } | Kind::Scales { .. } => self.numel(),
            _ => self.numel() * 2,
        }
    }
}

/// The Hugging Face tensors of `spec` in checkpoint order, each with the IR weight (and expert)
/// it becomes.
fn plan(spec: &ModelSpec, mxfp4_experts: bool) -> Vec<(Planned, String, Option<usize>)> {
    let (v, h) = (spec.vocab_size, spec.hidden_size);
    let dense = |name: String, shape: Vec<usize>| {
        let std = 2.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
        Planned {
            key: name.clone(),
            name,
            shape,
            kind: Kind::Dense { std },
        }
    };
    let norm = |name: String, n: usize| Planned {
        key: name.clone(),
        name,
        shape: vec![n],
        kind: Kind::Norm,
    };
    let mut out = vec![(
        Planned {
            kind: Kind::Dense { std: 1.0 },
            ..dense("model.embed_tokens.weight".into(), vec![v, h])
        },
        names::EMBED.to_string(),
        None,
    )];
    let mixtral = spec.architecture == Architecture::Mixtral;
    let moe = if mixtral { "block_sparse_moe" } else { "mlp" };
    for l in 0..spec.num_layers {
        let p = format!("model.layers.{l}.");
        for w in LayerWeight::ALL
            .into_iter()
            .filter(|w| w.present_in(spec, l))
        {
            let shape = w.shape(spec, l);
            let ir = w.name(l);
            let hf = |suffix: &str| format!("{p}{suffix}");
            let entries: Vec<(Planned, Option<usize>)> = match w {
                LayerWeight::AttnNorm => vec![(norm(hf("input_layernorm.weight"), h), None)],
                LayerWeight::FfnNorm => {
                    vec![(norm(hf("post_attention_layernorm.weight"), h), None)]
                }
                LayerWeight::QNorm => vec![(norm(hf("self_attn.q_norm.weight"), shape[0]), None)],
                LayerWeight::KNorm => vec![(norm(hf("self_attn.k_norm.weight"), shape[0]), None)],
                LayerWeight::Wq => vec![(dense(hf("self_attn.q_proj.weight"), shape), None)],
                LayerWeight::Wk => vec![(dense(hf("self_attn.k_proj.weight"), shape), None)],
                LayerWeight::Wv => vec![(dense(hf("self_attn.v_proj.weight"), shape), None)],
                LayerWeight::Wo => vec![(dense(hf("self_attn.o_proj.weight"), shape), None)],
                LayerWeight::Router => {
                    vec![(dense(hf(&format!("{moe}.gate.weight")), shape), None)]
                }
                LayerWeight::Sinks => {
                    vec![(norm(hf("self_attn.attention_sink_bias"), shape[0]), None)]
                }
                LayerWeight::RouterBias => {
                    vec![(norm(hf("mlp.gate.e_score_correction_bias"), shape[0]), None)]
                }
                LayerWeight::MlpGate => vec![(dense(hf("mlp.gate_proj.weight"), shape), None)],
                LayerWeight::MlpUp => vec![(dense(hf("mlp.up_proj.weight"), shape), None)],
                LayerWeight::MlpDown => vec![(dense(hf("mlp.down_proj.weight"), shape), None)],
                LayerWeight::ExpertsGate | LayerWeight::ExpertsUp | LayerWeight::ExpertsDown => {
                    let proj = match (mixtral, w) {
                        (true, LayerWeight::ExpertsGate) => "w1",
                        (true, LayerWeight::ExpertsUp) => "w3",
                        (true, _) => "w2",
                        (false, LayerWeight::ExpertsGate) => "gate_proj",
                        (false, LayerWeight::ExpertsUp) => "up_proj",
                        (false, _) => "down_proj",
                    };
                    let (rows, cols) = (shape[1], shape[2]);
                    let mut v = Vec::new();
                    for e in 0..shape[0] {
                        let key = hf(&format!("{moe}.experts.{e}.{proj}.weight"));
                        if mxfp4_experts {
                            v.push((
                                Planned {
                                    name: key.clone(),
                                    shape: vec![rows, cols / 2],
                                    kind: Kind::Codes { cols },
                                    key: key.clone(),
                                },
                                Some(e),
                            ));
                            v.push((
                                Planned {
                                    name: mimo_runtime::import::scale_name(&key),
                                    shape: vec![rows, cols / BLOCK],
                                    kind: Kind::Scales { cols },
                                    key,
                                },
                                Some(e),
                            ));
                        } else {
                            v.push((
                                Planned {
                                    name: key.clone(),
                                    shape: vec![rows, cols],
                                    kind: Kind::Decoded { cols },
                                    key,
                                },
                                Some(e),
                            ));
                        }
                    }
                    v
                }
            };
            out.extend(entries.into_iter().map(|(p, e)| (p, ir.clone(), e)));
        }
    }
    out.push((
        norm("model.norm.weight".into(), h),
        names::FINAL_NORM.to_string(),
        None,
    ));
    if !spec.tie_word_embeddings {
        out.push((
            dense("lm_head.weight".into(), vec![v, h]),
            names::LM_HEAD.to_string(),
            None,
        ));
    }
    out
}

/// Why a random checkpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RandomError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RandomError + '_ {
    move |source| RandomError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks the shapes MXFP4 experts need (whatever the storage chosen, the codes come first).
fn check_spec(spec: &ModelSpec) -> Result<(), RandomError> {
    if spec.hybrid.is_some() {
        return Err(RandomError::Shape(format!(
            "random {} checkpoints are not written yet (their config.json style is not)",
            spec.architecture.model_type()
        )));
    }
    for (what, k) in [
        ("hidden_size", spec.hidden_size),
        (
            "the expert intermediate size",
            spec.expert_intermediate_size,
        ),
    ] {
        if !k.is_multiple_of(BLOCK) {
            return Err(RandomError::Shape(format!(
                "{what} {k} is not a multiple of {BLOCK}: random experts are drawn as MXFP4 blocks"
            )));
        }
    }
    Ok(())
}

/// The `config.json` of `spec` in the transformers 4.x key style (`torch_dtype`, `rope_theta`,
/// `num_experts`), bf16.
pub fn hf_config(spec: &ModelSpec) -> Value {
    let qwen = spec.architecture == Architecture::Qwen3Moe;
    let mut c = json!({
        "architectures": [if qwen { "Qwen3MoeForCausalLM" } else { "MixtralForCausalLM" }],
        "model_type": spec.architecture.model_type(),
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "num_experts_per_tok": spec.experts_per_token,
        "rope_theta": spec.rope_theta,
        "rms_norm_eps": spec.rms_norm_eps,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "torch_dtype": "bfloat16",
    });
    let o = c.as_object_mut().expect("an object");
    if qwen {
        o.insert("num_experts".into(), spec.num_experts.into());
        o.insert(
            "moe_intermediate_size".into(),
            spec.expert_intermediate_size.into(),
        );
        // The dense MLP size of `mlp_only_layers` (none here); transformers requires the key.
        o.insert(
            "intermediate_size".into(),
            (spec.expert_intermediate_size * spec.experts_per_token).into(),
        );
        o.insert("norm_topk_prob".into(), spec.norm_topk_prob.into());
        o.insert("decoder_sparse_step".into(), 1.into());
        o.insert("mlp_only_layers".into(), json!([]));
        o.insert("use_sliding_window".into(), false.into());
        o.insert("sliding_window".into(), Value::Null);
        o.insert("output_router_logits".into(), false.into());
        o.insert("router_aux_loss_coef".into(), 0.001.into());
    } else {
        o.insert("num_local_experts".into(), spec.num_experts.into());
        o.insert(
            "intermediate_size".into(),
            spec.expert_intermediate_size.into(),
        );
        o.insert("sliding_window".into(), Value::Null);
    }
    c
}

/// Writes a random checkpoint of `spec` (its `formats` are ignored: dense weights are bf16,
/// experts bf16 or MXFP4 per `opts`) and its `config.json` into `dir`. `progress(done, total)`
/// counts bytes of tensor data, on the calling thread.
pub fn write_random_checkpoint(
    spec: &ModelSpec,
    dir: &Path,
    opts: RandomOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<Written, RandomError> {
    write_sharded(spec, dir, opts, MAX_SHARD_BYTES, progress)
}

fn write_sharded(
    spec: &ModelSpec,
    dir: &Path,
    opts: RandomOptions,
    max_shard: u64,
    progress: &dyn Fn(u64, u64),
) -> Result<Written, RandomError> {
    check_spec(spec)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors: Vec<Planned> = plan(spec, opts.mxfp4_experts)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    // Shards: consecutive runs of tensors of at most `max_shard` bytes (a larger tensor alone).
    let mut shards: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && bytes + t.bytes() as u64 > max_shard {
            shards.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += t.bytes() as u64;
    }
    shards.push(start..tensors.len());
    let n = shards.len();
    let files: Vec<PathBuf> = (0..n)
        .map(|k| {
            dir.join(if n == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", k + 1)
            })
        })
        .collect();
    // Stale files of an earlier, differently sharded checkpoint would confuse loaders.
    for stale in [SINGLE_FILE, INDEX_FILE] {
        let p = dir.join(stale);
        if p.exists() && !files.contains(&p) {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }

    let total: u64 = tensors.iter().map(|t| t.bytes() as u64).sum();
    progress(0, total);
    // Batches of consecutive tensors, generated on all cores while the writer writes the last.
    let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && bytes + t.bytes() > BATCH_BYTES {
            batches.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += t.bytes();
    }
    batches.push(start..tensors.len());

    let seed = opts.seed;
    let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(1);
    let tensors_ref = &tensors;
    std::thread::scope(|scope| -> Result<(), RandomError> {
        scope.spawn(move || {
            for batch in batches {
                let data: Vec<Vec<u8>> = tensors_ref[batch]
                    .par_iter()
                    .map(|t| {
                        let mut buf = vec![0u8; t.bytes()];
                        fill(t, seed, &mut buf);
                        buf
                    })
                    .collect();
                if tx.send(data).is_err() {
                    return; // the writer failed and stopped listening
                }
            }
        });
        let mut done = 0u64;
        let mut next = 0usize; // next tensor to write
        let mut out: Option<(BufWriter<File>, &Path)> = None;
        let mut shard = 0usize;
        for data in rx.iter() {
            for buf in data {
                if next == shards[shard].start {
                    let path = &files[shard];
                    let mut w =
                        BufWriter::with_capacity(8 << 20, File::create(path).map_err(io(path))?);
                    w.write_all(&shard_header(&tensors[shards[shard].clone()]))
                        .map_err(io(path))?;
                    out = Some((w, path));
                }
                let (w, path) = out.as_mut().expect("a shard is open");
                w.write_all(&buf).map_err(io(path))?;
                done += buf.len() as u64;
                progress(done, total);
                next += 1;
                if next == shards[shard].end {
                    let (mut w, path) = out.take().expect("a shard is open");
                    w.flush().map_err(io(path))?;
                    shard += 1;
                }
            }
        }
        Ok(())
    })?;

    if n > 1 {
        let mut weight_map = serde_json::Map::new();
        for (k, range) in shards.iter().enumerate() {
            let file = files[k]
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .to_string();
            for t in &tensors[range.clone()] {
                weight_map.insert(t.name.clone(), file.clone().into());
            }
        }
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let p = dir.join(INDEX_FILE);
        std::fs::write(&p, serde_json::to_string_pretty(&index).expect("JSON")).map_err(io(&p))?;
    }
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::to_string_pretty(&hf_config(spec)).expect("JSON"),
    )
    .map_err(io(&config))?;
    Ok(Written {
        files,
        tensors: tensors.len(),
        bytes: total,
    })
}

/// The 8-byte length and the JSON header of a safetensors file holding `tensors` in order,
/// padded with spaces to a multiple of 8 bytes (as the safetensors crate writes it).
fn shard_header(tensors: &[Planned]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        let dtype = match t.dtype() {
            Dtype::U8 => "U8",
            _ => "BF16",
        };
        map.insert(
            t.name.clone(),
            json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes()]}),
        );
        offset += t.bytes();
    }
    let mut header = serde_json::to_vec(&Value::Object(map)).expect("JSON");
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out
}

// ---- generation ----

/// SplitMix64: fast, and every seed gives an independent-looking stream.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Approximately N(0, 1): Irwin-Hall of four 16-bit uniforms from one draw.
    fn normal(&mut self) -> f32 {
        let r = self.next();
        let s: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xffff) as u32).sum();
        (s as f32 / 65536.0 - 2.0) * 3f32.sqrt()
    }
}

/// The seed of chunk `chunk` of stream `stream` of the tensor keyed `key`.
fn chunk_seed(seed: u64, key: &str, stream: u64, chunk: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut m = SplitMix(h ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let a = m.next();
    let mut m = SplitMix(a ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ chunk as u64);
    m.next()
}

/// The E8M0 code around which an expert matrix with `cols` inputs draws its block scales: the
/// decoded values (mean square about 9 in scale units with one anchor of 4 or 6 per block) then
/// have a spread near `2 / sqrt(cols)`, like the dense matrices.
fn base_scale(cols: usize) -> i32 {
    let target = 2.0 / (cols as f64).sqrt() / 3.0;
    (e8m0::BIAS + target.log2().round() as i32).clamp(2, 250)
}

/// Draws the codes (16 bytes) of one block; one element is forced to magnitude 4 or 6 (codes 6
/// or 7, its sign kept), which makes the block's scale the OCP rule's own for its values.
fn block_codes(rng: &mut SplitMix, out: &mut [u8]) {
    out[..8].copy_from_slice(&rng.next().to_le_bytes());
    out[8..16].copy_from_slice(&rng.next().to_le_bytes());
    let a = rng.next();
    let anchor = (a & 31) as usize;
    let magnitude = 6 + ((a >> 5) & 1) as u8;
    let byte = &mut out[anchor / 2];
    if anchor.is_multiple_of(2) {
        *byte = (*byte & 0xf0) | (*byte & 0x08) | magnitude;
    } else {
        *byte = (*byte & 0x0f) | (((*byte >> 4) & 0x08) | magnitude) << 4;
    }
}

fn block_scale(rng: &mut SplitMix, cols: usize) -> u8 {
    let jitter = [-1, 0, 0, 1][(rng.next() & 3) as usize];
    (base_scale(cols) + jitter) as u8
}

const CODE_STREAM: u64 = 1;
const SCALE_STREAM: u64 = 2;

/// Writes tensor `t`'s bytes (little-endian) into `out` (exactly `t.bytes()` long).
fn fill(t: &Planned, seed: u64, out: &mut [u8]) {
    match t.kind {
        Kind::Dense { .. } | Kind::Norm => {
            out.par_chunks_mut(CHUNK_ELEMENTS * 2)
                .enumerate()
                .for_each(|(c, buf)| {
                    let mut rng = SplitMix(chunk_seed(seed, &t.key, 0, c));
                    for pair in buf.chunks_exact_mut(2) {
                        let v = match t.kind {
                            Kind::Dense { std } => rng.normal() * std,
                            _ => 1.0 + 0.1 * rng.normal(),
                        };
                        pair.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
                    }
                });
        }
        Kind::Codes { .. } => {
            out.par_chunks_mut(CHUNK_BLOCKS * BLOCK / 2)
                .enumerate()
                .for_each(|(c, buf)| {
                    let mut rng = SplitMix(chunk_seed(seed, &t.key, CODE_STREAM, c));
                    for block in buf.chunks_exact_mut(BLOCK / 2) {
                        block_codes(&mut rng, block);
                    }
                });
        }
        Kind::Scales { cols } => {
            out.par_chunks_mut(CHUNK_BLOCKS)
                .enumerate()
                .for_each(|(c, buf)| {
                    let mut rng = SplitMix(chunk_seed(seed, &t.key, SCALE_STREAM, c));
                    for s in buf {
                        *s = block_scale(&mut rng, cols);
                    }
                });
        }
        Kind::Decoded { cols } => {
            out.par_chunks_mut(CHUNK_BLOCKS * BLOCK * 2)
                .enumerate()
                .for_each(|(c, buf)| {
                    let mut codes = SplitMix(chunk_seed(seed, &t.key, CODE_STREAM, c));
                    let mut scales = SplitMix(chunk_seed(seed, &t.key, SCALE_STREAM, c));
                    let mut packed = [0u8; BLOCK / 2];
                    for block in buf.chunks_exact_mut(BLOCK * 2) {
                        block_codes(&mut codes, &mut packed);
                        let s = e8m0::decode(block_scale(&mut scales, cols));
                        for (j, pair) in block.chunks_exact_mut(2).enumerate() {
                            let code = e2m1::code_at(&packed, j);
                            let v = e2m1::decode(code) * s;
                            pair.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
                        }
                    }
                });
        }
    }
}

/// The random weights of `spec` in its `formats`, built in memory: exactly what loading a
/// random checkpoint of the same seed gives (the pre-quantised one when the experts are MXFP4,
/// else the bf16 one converted to the requested formats).
pub fn random_weights(spec: &ModelSpec, seed: u64) -> Result<WeightStore, RandomError> {
    check_spec(spec)?;
    let mx = spec.formats.experts == WeightFormat::Mxfp4;
    let planned = plan(spec, mx);
    // IR weight name -> its checkpoint tensors, in plan order.
    let mut by_ir: BTreeMap<&str, Vec<&Planned>> = BTreeMap::new();
    for (p, ir, _) in &planned {
        by_ir.entry(ir.as_str()).or_default().push(p);
    }
    let wanted = names::all_weights(spec);
    let results: Vec<Result<(String, Weight), RandomError>> = wanted
        .par_iter()
        .map(|(name, shape, expert)| {
            let source = if name == names::LM_HEAD && spec.tie_word_embeddings {
                names::EMBED
            } else {
                name.as_str()
            };
            let parts = by_ir.get(source).ok_or_else(|| {
                RandomError::Shape(format!("no random tensor for IR weight `{name}`"))
            })?;
            let format = if *expert {
                spec.formats.experts
            } else {
                spec.formats.dense
            };
            Ok((name.clone(), build_weight(parts, shape, format, seed)?))
        })
        .collect();
    let mut store = WeightStore::new();
    for r in results {
        let (name, w) = r?;
        store.insert(name, w);
    }
    Ok(store)
}

/// One IR weight from its checkpoint tensors (experts: every expert's codes then scales).
fn build_weight(
    parts: &[&Planned],
    shape: &[usize],
    format: WeightFormat,
    seed: u64,
) -> Result<Weight, RandomError> {
    let numel: usize = shape.iter().product();
    let cols = *shape.last().unwrap_or(&1);
    if let [first, ..] = parts
        && matches!(first.kind, Kind::Codes { .. })
    {
        let mut codes = Vec::with_capacity(numel / 2);
        let mut scales = Vec::with_capacity(numel / BLOCK);
        for p in parts {
            let mut buf = vec![0u8; p.bytes()];
            fill(p, seed, &mut buf);
            match p.kind {
                Kind::Codes { .. } => codes.extend_from_slice(&buf),
                _ => scales.extend_from_slice(&buf),
            }
        }
        let m = Mxfp4Matrix::from_parts(numel / cols, cols, codes, scales)?;
        return Ok(Weight {
            shape: shape.to_vec(),
            data: WeightData::Mxfp4(m),
        });
    }
    let mut raw = Vec::with_capacity(numel * 2);
    for p in parts {
        let mut buf = vec![0u8; p.bytes()];
        fill(p, seed, &mut buf);
        raw.extend_from_slice(&buf);
    }
    let values: Vec<bf16> = raw
        .chunks_exact(2)
        .map(|b| bf16::from_le_bytes([b[0], b[1]]))
        .collect();
    if format == WeightFormat::Bf16 {
        return Ok(Weight {
            shape: shape.to_vec(),
            data: WeightData::Bf16(values),
        });
    }
    let f: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
    Ok(Weight::from_f32(shape.to_vec(), &f, format)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimo_ir::WeightFormats;
    use mimo_runtime::checkpoint::Checkpoint;
    use mimo_runtime::import::load_weights;
    use mimo_runtime::model::resolve_model;

    fn spec(architecture: Architecture) -> ModelSpec {
        ModelSpec {
            hybrid: None,
            architecture,
            vocab_size: 90,
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            num_experts: 5,
            experts_per_token: 2,
            expert_intermediate_size: 96,
            norm_topk_prob: true,
            rope_theta: 1e6,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 256,
            tie_word_embeddings: architecture == Architecture::Mixtral,
            formats: WeightFormats {
                experts: WeightFormat::Bf16,
                dense: WeightFormat::Bf16,
            },
        }
    }

    fn write(spec: &ModelSpec, mx: bool, seed: u64, max_shard: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let opts = RandomOptions {
            seed,
            mxfp4_experts: mx,
        };
        let w = write_sharded(spec, dir.path(), opts, max_shard, &|_, _| {}).unwrap();
        assert!(w.files.iter().all(|f| f.is_file()));
        dir
    }

    fn load(dir: &Path, experts: Option<WeightFormat>) -> (ModelSpec, WeightStore) {
        let mut spec = resolve_model(dir).unwrap().spec;
        if let Some(f) = experts {
            spec.formats.experts = f;
        }
        let store = load_weights(&spec, &Checkpoint::open(dir).unwrap(), &|_, _| {}).unwrap();
        (spec, store)
    }

    fn same_stores(a: &WeightStore, b: &WeightStore) {
        assert_eq!(a.len(), b.len());
        for ((na, wa), (nb, wb)) in a.iter().zip(b.iter()) {
            assert_eq!(na, nb);
            assert!(wa == wb, "{na} differs");
        }
    }

    #[test]
    fn config_json_reads_back_as_the_spec() {
        for arch in [Architecture::Qwen3Moe, Architecture::Mixtral] {
            let s = spec(arch);
            let text = hf_config(&s).to_string();
            let back =
                mimo_runtime::import::config::spec_from_hf_config(&text, Path::new("config.json"))
                    .unwrap();
            assert_eq!(back, s, "{arch:?}");
        }
    }

    /// Both storages of the same seed hold the same experts: quantising the bf16 one gives the
    /// pre-quantised one's codes and scales exactly, and both equal the in-memory weights.
    #[test]
    fn bf16_and_mxfp4_checkpoints_hold_the_same_weights() {
        for arch in [Architecture::Qwen3Moe, Architecture::Mixtral] {
            let s = spec(arch);
            let bf = write(&s, false, 7, MAX_SHARD_BYTES);
            let mx = write(&s, true, 7, 20_000); // sharded, with an index
            assert!(mx.path().join(INDEX_FILE).is_file());
            assert!(bf.path().join(SINGLE_FILE).is_file());

            let (mx_spec, mx_store) = load(mx.path(), None);
            assert_eq!(mx_spec.formats.experts, WeightFormat::Mxfp4, "{arch:?}");
            assert_eq!(mx_spec.formats.dense, WeightFormat::Bf16);
            let (_, quantised) = load(bf.path(), Some(WeightFormat::Mxfp4));
            same_stores(&mx_store, &quantised);
            same_stores(&mx_store, &random_weights(&mx_spec, 7).unwrap());

            let (bf_spec, bf_store) = load(bf.path(), None);
            assert_eq!(bf_spec.formats.experts, WeightFormat::Bf16);
            same_stores(&bf_store, &random_weights(&bf_spec, 7).unwrap());
            // The bf16 experts are the MXFP4 values, exactly.
            for (name, w) in mx_store.iter().filter(|(n, _)| n.contains("experts")) {
                assert_eq!(w.to_f32(), bf_store.get(name).unwrap().to_f32(), "{name}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let s = spec(Architecture::Qwen3Moe);
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(SINGLE_FILE)).unwrap();
        let (a, b, c) = (
            write(&s, true, 3, MAX_SHARD_BYTES),
            write(&s, true, 3, MAX_SHARD_BYTES),
            write(&s, true, 4, MAX_SHARD_BYTES),
        );
        assert_eq!(read(&a), read(&b));
        assert_ne!(read(&a), read(&c));
        // Parallel chunking does not change the bytes: one thread gives the same file.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let d = one.install(|| write(&s, true, 3, MAX_SHARD_BYTES));
        assert_eq!(read(&a), read(&d));
    }

    #[test]
    fn weights_have_the_intended_spread() {
        let mut s = spec(Architecture::Qwen3Moe);
        s.formats = WeightFormats {
            experts: WeightFormat::Mxfp4,
            dense: WeightFormat::Bf16,
        };
        let store = random_weights(&s, 1).unwrap();
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        for (name, w) in store.iter() {
            let v = w.to_f32();
            assert!(v.iter().all(|x| x.is_finite()), "{name}");
            let want = match w.shape.len() {
                1 => 1.0,
                _ if name == names::EMBED || name == names::LM_HEAD && s.tie_word_embeddings => 1.0,
                _ => 2.0 / (*w.shape.last().unwrap() as f32).sqrt(),
            };
            let got = rms(&v);
            assert!(
                got > want * 0.6 && got < want * 1.6,
                "{name}: rms {got}, want about {want}"
            );
        }
    }

    #[test]
    fn pre_quantised_experts_refuse_another_format() {
        let s = spec(Architecture::Qwen3Moe);
        let mx = write(&s, true, 1, MAX_SHARD_BYTES);
        let mut resolved = resolve_model(mx.path()).unwrap().spec;
        resolved.formats.experts = WeightFormat::Bf16;
        let err = load_weights(&resolved, &Checkpoint::open(mx.path()).unwrap(), &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("pre-quantised as MXFP4"), "{err}");
        assert!(err.contains("experts = \"mxfp4\""), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn odd_expert_sizes_are_refused() {
        let mut s = spec(Architecture::Qwen3Moe);
        s.expert_intermediate_size = 40;
        let dir = tempfile::tempdir().unwrap();
        let err = write_random_checkpoint(
            &s,
            dir.path(),
            RandomOptions {
                seed: 0,
                mxfp4_experts: true,
            },
            &|_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a multiple of 32"), "{err}");
    }
}
