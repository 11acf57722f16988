//! `mimo bench`: decode speed at a given context, with the bytes each step must read, the
//! bandwidth that achieves, and the fraction of the device's measured copy bandwidth, all from
//! one run on one machine.
//!
//! On a GPU the megakernel is timed with CUDA events around each launch (the next token is fed
//! back on the device, so the host is not in the timed loop); the reported step time is the
//! median. Without a GPU the reference interpreter is timed with the host clock, and the output
//! says so (`"timing": "host-clock"`, `"backend": "cpu-interpreter"`): those numbers are for
//! testing the command, not for comparison. On the device emulator (`--device emu`) the
//! megakernel runs with the host's clock (`"timing": "emulator-host-clock"`), and the bytes the
//! emulator counted the timed steps reading are printed beside `report.md`'s count ([`reads`]).
//!
//! `--dflash` times DFlash speculative decoding's parts instead ([`dflash`]): the target's
//! multi-token verify step at several block sizes, the experts each block routes to, the draft
//! step, and the tokens/s they project to at a given acceptance.

mod dflash;
mod reads;
mod routing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use mimo::random_checkpoint::random_weights;
use mimo_compiler::artifact::Artifact;
use mimo_compiler::report::step_bytes;
use mimo_ir::ModelSpec;
use mimo_ir::interp::F32Weights;
use mimo_ir::weights::WeightStore;
use mimo_runtime::cuda::{self, CudaEngine, KernelImage, LaunchOptions};
use mimo_runtime::device::Device;
use mimo_runtime::engine::{CpuEngine, Engine};
use mimo_runtime::session::select_device;
use mimo_runtime::{builtin, load_model, resolve_model};
use serde_json::{Value, json};

use crate::options::Device as DeviceFlag;

#[derive(Args)]
pub struct BenchArgs {
    /// The model: a Hugging Face directory, a model.toml (with --random it may describe the
    /// architecture only), or an artifact compiled by mimo-compile. Without it, the built-in tiny
    /// model.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Timed decode steps (with --dflash: timed verify and draft steps per block size).
    #[arg(long, default_value_t = 128, value_name = "N")]
    tokens: usize,
    /// Positions already in the KV cache when each timed step runs (every timed step decodes at
    /// position C, attending over C + 1 rows).
    #[arg(long, default_value_t = 1024, value_name = "C")]
    context: usize,
    /// Untimed steps before the timed ones (with --dflash: per block size).
    #[arg(long, default_value_t = 16, value_name = "N")]
    warmup: usize,
    /// Synthesise deterministic random weights in memory instead of reading a checkpoint
    /// (the same values `mimo random-checkpoint --seed` writes).
    #[arg(long)]
    random: bool,
    /// Seed of --random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep only the first N layers of the model (full layer shapes, fewer layers).
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Where to run: `cuda` needs an NVIDIA GPU and driver, `auto` uses one when present, `emu`
    /// is the device emulator (slow).
    #[arg(long, value_enum, default_value_t = DeviceFlag::Auto)]
    device: DeviceFlag,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Benchmark DFlash speculative decoding instead of plain decode: the verify step at each
    /// of --blocks tokens (with --tokens timed steps after --warmup), the distinct experts each
    /// block routes to, the draft step, and the projected tokens/s at --tau.
    #[arg(long)]
    dflash: bool,
    /// With --dflash: a DFlash draft (Hugging Face directory); without it, a random draft of
    /// --draft-layers layers of the target's shape.
    #[arg(long, value_name = "DIR", requires = "dflash")]
    draft: Option<PathBuf>,
    /// With --dflash and no --draft: layers of the random draft.
    #[arg(long, default_value_t = 5, value_name = "N")]
    draft_layers: usize,
    /// With --dflash and no --draft: the random draft's MLP intermediate size (default: 3 times
    /// the hidden size, Qwen3-30B-A3B's dense intermediate size).
    #[arg(long, value_name = "N")]
    draft_intermediate: Option<usize>,
    /// With --dflash on a GPU: run the draft on the host's reference interpreter (a fallback)
    /// and project with its bandwidth roofline on the GPU instead of its measured time.
    #[arg(long)]
    host_draft: bool,
    /// With --dflash: the verified block sizes (tokens per verify step); the largest is the
    /// drafted block the projection uses.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4,8,16",
        value_name = "B,..."
    )]
    blocks: Vec<usize>,
    /// With --dflash: the mean tokens committed per verify step the projection assumes.
    #[arg(long, default_value_t = 6.3, value_name = "TAU")]
    tau: f64,
    /// With --dflash: layers whose routing is computed on the host (reference interpreter);
    /// default: all of them when their f32 weights fit in 8 GiB, else as many as do.
    #[arg(long, value_name = "N")]
    route_layers: Option<usize>,
    /// With --dflash: cached positions before the block when computing its routing on the host
    /// (default: min(--context, 64)).
    #[arg(long, value_name = "N")]
    route_context: Option<usize>,
}

/// What was timed, however it was timed.
struct Measured {
    device: String,
    backend: &'static str,
    timing: &'static str,
    step_ms: Vec<f64>,
    extra: Vec<(&'static str, Value)>,
    copy_bandwidth_gbs: f64,
    /// What the device counted the timed steps reading (the emulator).
    reads: Option<reads::Reads>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    let started = Instant::now();
    let model = Model::open(&args)?;
    let mut notes = Vec::new();
    let device = select_device(args.device.into(), &mut notes)?;
    for note in notes {
        eprintln!("note: {note}; timing the reference interpreter");
    }
    if args.dflash {
        return dflash::run(&args, model, device.as_ref(), started);
    }
    let measured = match &device {
        Some(dev) => bench_cuda(&args, &model, dev)?,
        None => bench_cpu(&args, &model)?,
    };

    let spec = &model.spec;
    let bytes = step_bytes(spec, 1, args.context).total();
    let median = median(&measured.step_ms);
    let achieved_gbs = bytes / (median / 1e3) / 1e9;
    let mut out = json!({
        "device": measured.device,
        "backend": measured.backend,
        "timing": measured.timing,
        "date": utc_now(),
        "command": command_line(),
        "model": model.name,
        "config": config_json(spec, &args),
        "context": args.context,
        "tokens": args.tokens,
        "warmup": args.warmup,
        "ms_per_step": median,
        "ms_per_step_min": measured.step_ms.iter().cloned().fold(f64::INFINITY, f64::min),
        "ms_per_step_p90": percentile(&measured.step_ms, 0.9),
        "tokens_per_second": 1e3 / median,
        "bytes_per_step": bytes,
        "achieved_gbs": achieved_gbs,
        "copy_bandwidth_gbs": measured.copy_bandwidth_gbs,
        "bandwidth_fraction": achieved_gbs / measured.copy_bandwidth_gbs,
        "roofline_ms_per_step": bytes / (measured.copy_bandwidth_gbs * 1e6),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let obj = out.as_object_mut().expect("an object");
    for (k, v) in measured
        .extra
        .into_iter()
        .chain(measured.reads.iter().flat_map(reads::Reads::json))
    {
        obj.insert(k.to_string(), v);
    }
    if args.json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} on {} ({}, {}):",
        model.name, measured.device, measured.backend, measured.timing
    );
    println!(
        "  {:.3} ms per step (median of {}; min {:.3}, p90 {:.3}) = {:.1} tokens/s at context {}",
        median,
        args.tokens,
        out["ms_per_step_min"].as_f64().unwrap_or(0.0),
        out["ms_per_step_p90"].as_f64().unwrap_or(0.0),
        1e3 / median,
        args.context
    );
    println!(
        "  {:.1} MB read per step: {:.1} GB/s = {:.1}% of the measured copy bandwidth {:.1} GB/s (roofline {:.3} ms)",
        bytes / 1e6,
        achieved_gbs,
        100.0 * achieved_gbs / measured.copy_bandwidth_gbs,
        measured.copy_bandwidth_gbs,
        bytes / (measured.copy_bandwidth_gbs * 1e6)
    );
    for line in measured.reads.iter().flat_map(reads::Reads::lines) {
        println!("{line}");
    }
    Ok(())
}

/// The model being benchmarked: its spec, weights, and an artifact when given one.
struct Model {
    name: String,
    spec: ModelSpec,
    weights: WeightStore,
    artifact: Option<Artifact>,
}

impl Model {
    fn open(args: &BenchArgs) -> Result<Model> {
        let with_layers = |mut spec: ModelSpec| -> Result<ModelSpec> {
            if let Some(l) = args.layers {
                if l == 0 || l > spec.num_layers {
                    bail!("--layers must be in 1..={}", spec.num_layers);
                }
                spec.num_layers = l;
            }
            Ok(spec)
        };
        let random = |spec: &ModelSpec| {
            random_weights(spec, args.seed).context("synthesising random weights")
        };
        let Some(path) = &args.model else {
            let m = builtin::load()?;
            let spec = with_layers(m.spec)?;
            let weights = if args.random {
                random(&spec)?
            } else {
                m.weights
            };
            return Ok(Model {
                name: builtin::NAME.to_string(),
                spec,
                weights,
                artifact: None,
            });
        };
        let name = path.display().to_string();
        if Artifact::is_artifact(path) {
            if args.layers.is_some() {
                bail!(
                    "--layers cannot change a compiled artifact; recompile a model with fewer layers"
                );
            }
            let art = Artifact::open(path)?;
            let spec = art.manifest.model.spec.clone();
            let weights = if args.random {
                random(&spec)?
            } else {
                let source = art.manifest.model.source.clone().with_context(|| {
                    format!("{name}: compiled from an architecture-only model.toml; pass --random")
                })?;
                let m = load_model(&source, &|_, _| {})
                    .with_context(|| format!("loading {}", source.display()))?;
                if mimo_compiler::artifact::config_hash(&m.spec) != art.manifest.model.config_hash {
                    bail!(
                        "{name}: stale artifact: its model changed since it was compiled; run mimo-compile again"
                    );
                }
                m.weights
            };
            return Ok(Model {
                name,
                spec,
                weights,
                artifact: Some(art),
            });
        }
        let resolved = resolve_model(path).with_context(|| format!("reading {name}"))?;
        let spec = with_layers(resolved.spec)?;
        let weights = if args.random {
            random(&spec)?
        } else {
            let mut m = load_model(path, &|_, _| {}).with_context(|| format!("loading {name}"))?;
            if args.layers.is_some() {
                // Load all, keep what the smaller spec names (the importer reads by name).
                let keep: Vec<String> = mimo_ir::model::names::all_weights(&spec)
                    .into_iter()
                    .map(|(n, _, _)| n)
                    .collect();
                let mut store = WeightStore::new();
                for n in keep {
                    let w = m
                        .weights
                        .get(&n)
                        .cloned()
                        .with_context(|| format!("no `{n}`"))?;
                    store.insert(n, w);
                }
                m.weights = store;
            }
            m.weights
        };
        Ok(Model {
            name,
            spec,
            weights,
            artifact: None,
        })
    }
}

/// The megakernel engine of `model` (its artifact's, or compiled here for a cache of `positions`
/// rounded up).
fn cuda_engine(model: &Model, dev: &Arc<dyn Device>, positions: usize) -> Result<CudaEngine> {
    let opts = LaunchOptions::from_env();
    Ok(match &model.artifact {
        Some(art) => CudaEngine::from_artifact(dev, art, &model.weights, opts)?,
        None => {
            let ctx = positions.next_multiple_of(64);
            if ctx > model.spec.max_position_embeddings {
                bail!(
                    "--context with the step's tokens ({positions} positions) exceeds the model's max_position_embeddings {}",
                    model.spec.max_position_embeddings
                );
            }
            let (program, image): (_, KernelImage) =
                cuda::compile_in_memory(&model.spec, ctx, dev.info().sm_count)?;
            CudaEngine::new(
                dev,
                model.spec.clone(),
                program,
                &model.weights,
                &image,
                opts,
            )?
        }
    })
}

fn bench_cuda(args: &BenchArgs, model: &Model, dev: &Arc<dyn Device>) -> Result<Measured> {
    // The cache holds the context plus the decoded position.
    let mut engine = cuda_engine(model, dev, args.context + 1)?;
    let device = engine.device();
    let timing = engine.bench_decode(args.context, args.tokens, args.warmup)?;
    let copy = engine.kernel().copy_bandwidth_gbs()?;
    let reads = timing.read_bytes.as_ref().map(|b| {
        let counted = step_bytes(&model.spec, 1, args.context);
        reads::Reads::new(b, engine.kernel().bytes_by_op(b), &counted)
    });
    Ok(Measured {
        device,
        backend: "cuda-megakernel",
        timing: dev.kind().timing(),
        extra: vec![
            ("stream_ms_per_step", json!(timing.stream_ms_per_step)),
            ("host_ms_per_step", json!(timing.host_ms_per_step)),
            ("workers", json!(engine.kernel().workers())),
            (
                "weight_bytes_on_device",
                json!(engine.kernel().weight_bytes()),
            ),
        ],
        step_ms: timing.step_ms,
        copy_bandwidth_gbs: copy,
        reads,
    })
}

fn bench_cpu(args: &BenchArgs, model: &Model) -> Result<Measured> {
    let mut engine = CpuEngine::new(
        model.spec.clone(),
        F32Weights::from_store(&model.weights),
        args.context + 1,
    );
    let vocab = model.spec.vocab_size as u32;
    let fill: Vec<u32> = (0..args.context as u32)
        .map(|p| (p * 7919 + 13) % vocab)
        .collect();
    let positions: Vec<usize> = (0..args.context).collect();
    if !fill.is_empty() {
        engine.step(&fill, &positions, false)?;
    }
    let mut token = (args.context as u32 * 7919 + 13) % vocab;
    let mut step_ms = Vec::with_capacity(args.tokens);
    for i in 0..args.warmup + args.tokens {
        let t = Instant::now();
        token = engine.step(&[token], &[args.context], false)?.next_ids[0];
        if i >= args.warmup {
            step_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Measured {
        device: engine.device(),
        backend: "cpu-interpreter",
        timing: "host-clock",
        step_ms,
        extra: vec![],
        copy_bandwidth_gbs: host_copy_bandwidth_gbs(),
        reads: None,
    })
}

/// Host memory copy bandwidth (bytes read plus written), for the CPU's bandwidth fraction.
fn host_copy_bandwidth_gbs() -> f64 {
    let n = 64 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src);
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let secs = t.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
    2.0 * n as f64 * reps as f64 / secs / 1e9
}

fn config_json(spec: &ModelSpec, args: &BenchArgs) -> Value {
    json!({
        "architecture": spec.architecture.model_type(),
        "layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "heads": spec.num_heads,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "experts": spec.num_experts,
        "experts_per_token": spec.experts_per_token,
        "expert_intermediate_size": spec.expert_intermediate_size,
        "vocab_size": spec.vocab_size,
        "experts_format": spec.formats.experts.to_string(),
        "dense_format": spec.formats.dense.to_string(),
        "random_weights": args.random,
        "seed": args.seed,
    })
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `q` quantile (nearest rank, the lower middle for an even median).
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() - 1) as f64 * q).floor() as usize;
    if q == 0.5 && s.len().is_multiple_of(2) {
        return (s[i] + s[i + 1]) / 2.0;
    }
    s[i]
}

/// The command line as typed (arguments with spaces quoted).
fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 { "mimo".to_string() } else { a };
            if a.contains(' ') { format!("'{a}'") } else { a }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
