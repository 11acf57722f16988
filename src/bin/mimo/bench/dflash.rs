//! `mimo bench --dflash`: the parts of a DFlash speculative step, timed on one machine.
//!
//! - The target's verify step over a block of B tokens after `--context` cached positions, for
//!   every B of `--blocks`, through [`Engine::step`] with the draft's capture layers set (the
//!   features a real verify returns), median of `--tokens` steps after `--warmup`.
//! - The distinct experts each layer routes the block to, from the router's top-k ids computed
//!   on the host ([`super::routing`]), and the bytes the block must read given those counts.
//! - The draft step at the same B (block of B, C = B new context rows), for `--draft` or a random
//!   draft of `--draft-layers` of the target's shape.
//! - The projection `tau / (draft + verify)` at the largest block: a projection from an assumed
//!   acceptance, not a measured speed, and labelled so.
//!
//! Timing: the host clock around each synchronous call. On the CPU that is the reference
//! interpreter (or an artifact's programs on the schedule executor): a functional check, not a
//! number to compare. With a GPU the target and the draft both run on the megakernel, in one
//! CUDA context over one weight upload; `--host-draft` runs the draft on the host instead, and
//! the projection then uses its bandwidth roofline on the device (said in
//! `projection.draft_source`).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mimo_compiler::report::step_bytes;
use mimo_compiler::{CompileOptions, Machine};
use mimo_ir::Tensor;
use mimo_ir::interp::F32Weights;
use mimo_ir::model::dflash::{
    DraftSpec, default_target_layer_ids, draft_weights, random_draft_weights,
};
use mimo_ir::model::names::{self, LayerWeight};
use mimo_ir::weights::WeightStore;
use mimo_runtime::builtin;
use mimo_runtime::cuda::CudaEngine;
use mimo_runtime::device::Device;
use mimo_runtime::dflash::{
    CompiledRunner, DFlashDrafter, DraftContext, Drafter, InterpreterRunner,
};
use mimo_runtime::draft::load_draft;
use mimo_runtime::engine::{CpuEngine, Engine, ScheduleEngine, TargetProgram};
use serde_json::{Value, json};

use super::routing::{self, RoutingProbe};
use super::{
    BenchArgs, Model, command_line, config_json, cuda_engine, host_copy_bandwidth_gbs, median,
    percentile, utc_now,
};

/// The project's targets on an H100: a 16-token verify in at most 3 single-token
/// steps, and 1,500 projected tokens/s at tau = 6.3.
const RATIO_TARGET: f64 = 3.0;
const TOKENS_PER_SECOND_TARGET: f64 = 1500.0;

/// The draft model: its spec, its own weights, where it came from.
struct Draft {
    spec: DraftSpec,
    weights: WeightStore,
    source: String,
}

impl Draft {
    fn open(args: &BenchArgs, model: &Model, block: usize) -> Result<Draft> {
        let target = &model.spec;
        if let Some(dir) = &args.draft {
            let loaded = load_draft(dir, target)
                .with_context(|| format!("loading the draft {}", dir.display()))?;
            return Ok(Draft {
                spec: loaded.spec,
                weights: loaded.weights,
                source: loaded.dir.display().to_string(),
            });
        }
        if args.draft_layers == 0 {
            bail!("--draft-layers must be at least 1");
        }
        let spec = DraftSpec {
            hidden_size: target.hidden_size,
            num_layers: args.draft_layers,
            num_heads: target.num_heads,
            num_kv_heads: target.num_kv_heads,
            head_dim: target.head_dim,
            intermediate_size: args.draft_intermediate.unwrap_or(3 * target.hidden_size),
            rope_theta: target.rope_theta,
            rms_norm_eps: target.rms_norm_eps,
            max_position_embeddings: target.max_position_embeddings,
            block_size: block,
            // The reference's spread, kept inside a target cut short by --layers.
            target_layer_ids: default_target_layer_ids(target.num_layers, args.draft_layers)
                .into_iter()
                .map(|l| l.min(target.num_layers - 1))
                .collect(),
            mask_token_id: (target.vocab_size - 1) as u32,
            num_target_layers: Some(target.num_layers),
            format: target.formats.dense,
        };
        let weights = random_draft_weights(&spec, args.seed ^ 0xD1F1_A5A5)
            .context("synthesising the random draft's weights")?;
        Ok(Draft {
            source: format!("random ({} layers, seed {})", spec.num_layers, args.seed),
            spec,
            weights,
        })
    }

    /// Bytes one draft step of `block` tokens after `context` positions reads: the draft's
    /// weights, the target's lm_head (every row, for the block's logits), the block's embedding
    /// rows, and the draft's K and V cache (bf16) over the context and the block.
    fn step_bytes(&self, target: &mimo_ir::ModelSpec, block: usize, context: usize) -> f64 {
        let own: f64 = draft_weights(&self.spec)
            .iter()
            .map(|w| w.shape.iter().product::<usize>() as f64)
            .sum::<f64>()
            * self.spec.format.bytes_per_element();
        let dense = target.formats.dense.bytes_per_element();
        let lm_head = (target.vocab_size * target.hidden_size) as f64 * dense;
        let embed = (block * target.hidden_size) as f64 * dense;
        let kv = (self.spec.num_layers * 2 * (context + block) * self.spec.kv_dim()) as f64 * 2.0;
        own + lm_head + embed + kv
    }
}

/// Makes a drafter drafting blocks of the given size.
type MakeDrafter = Box<dyn Fn(usize) -> Result<DFlashDrafter>>;

/// The target engine and how drafters are made, for the device found.
struct Setup {
    engine: Box<dyn Engine>,
    backend: &'static str,
    copy_bandwidth_gbs: f64,
    drafter: MakeDrafter,
    draft_backend: &'static str,
    /// Whether the draft runs where the target does (else its time is the host's).
    draft_on_target_device: bool,
}

fn setup(
    model: &Model,
    draft: &Draft,
    gpu: Option<&Arc<dyn Device>>,
    host_draft: bool,
    max_context: usize,
    max_block: usize,
) -> Result<Setup> {
    let target = model.spec.clone();
    let dspec = draft.spec.clone();
    if let Some(dev) = gpu.filter(|_| !host_draft) {
        return gpu_setup(model, draft, dev, max_context, max_block);
    }
    let add_draft = |w: &mut F32Weights| {
        for (name, weight) in draft.weights.iter() {
            w.insert(
                name,
                Tensor::from_f32(weight.shape.clone(), weight.to_f32()),
            );
        }
    };
    if let Some(dev) = gpu {
        let mut engine = cuda_engine(model, dev, max_context)?;
        let copy_bandwidth_gbs = engine.kernel().copy_bandwidth_gbs()?;
        // The draft reads the target's embedding and lm_head: only those, with its own, on the
        // host.
        let mut store = WeightStore::new();
        for name in [names::EMBED, names::LM_HEAD] {
            if let Some(w) = model.weights.get(name) {
                store.insert(name, w.clone());
            }
        }
        let mut weights = F32Weights::from_store(&store);
        add_draft(&mut weights);
        let weights = Arc::new(weights);
        return Ok(Setup {
            engine: Box::new(engine),
            backend: "cuda-megakernel",
            copy_bandwidth_gbs,
            drafter: Box::new(move |b| {
                let runner = Box::new(InterpreterRunner::new(weights.clone()));
                DFlashDrafter::with_runner(dspec.clone(), &target, runner, max_context, Some(b))
            }),
            draft_backend: "cpu-interpreter",
            draft_on_target_device: false,
        });
    }
    let mut weights = F32Weights::from_store(&model.weights);
    add_draft(&mut weights);
    if let Some(art) = &model.artifact {
        let decode = art
            .program("decode")
            .with_context(|| format!("{}: no `decode` graph", art.dir.display()))?;
        let options = CompileOptions::for_machine(decode.machine);
        let art_context = art.manifest.model.max_context;
        if max_context > art_context {
            bail!(
                "--context with the largest block needs {max_context} positions; the artifact was compiled for {art_context}"
            );
        }
        let mut engine = ScheduleEngine::new(target.clone(), weights.clone(), art_context, options);
        for g in &art.manifest.graphs {
            let which = match (g.name.as_str(), &g.capture_layers) {
                ("decode", None) => TargetProgram::Decode,
                ("verify", Some(capture)) => TargetProgram::Verify {
                    tokens: g.tokens,
                    capture: capture.clone(),
                },
                _ => continue,
            };
            if let Some(program) = art.program(&g.name) {
                engine.insert(which, program.clone())?;
            }
        }
        // Verify programs up to the largest block; the context is filled in pieces of that.
        engine.set_max_step_tokens(max_block);
        let drafts = engine.programs().for_draft::<(usize, usize)>();
        return Ok(Setup {
            engine: Box::new(engine),
            backend: "cpu-schedule-executor",
            copy_bandwidth_gbs: host_copy_bandwidth_gbs(),
            drafter: Box::new(move |b| {
                let runner = Box::new(CompiledRunner::on(drafts.for_draft()));
                DFlashDrafter::with_runner(dspec.clone(), &target, runner, art_context, Some(b))
            }),
            draft_backend: "cpu-schedule-executor",
            draft_on_target_device: true,
        });
    }
    let weights = Arc::new(weights);
    let engine = CpuEngine::with_shared_weights(target.clone(), weights.clone(), max_context);
    Ok(Setup {
        engine: Box::new(engine),
        backend: "cpu-interpreter",
        copy_bandwidth_gbs: host_copy_bandwidth_gbs(),
        drafter: Box::new(move |b| {
            DFlashDrafter::new(
                dspec.clone(),
                &target,
                weights.clone(),
                max_context,
                Some(b),
            )
        }),
        draft_backend: "cpu-interpreter",
        draft_on_target_device: true,
    })
}

/// The target and the draft on the megakernel: both models' weights uploaded once onto one
/// device (the draft reads the target's embedding and lm_head), each with its own device KV
/// cache, every program compiled from the embedded templates when first needed.
fn gpu_setup(
    model: &Model,
    draft: &Draft,
    dev: &Arc<dyn Device>,
    max_context: usize,
    max_block: usize,
) -> Result<Setup> {
    let target = model.spec.clone();
    let dspec = draft.spec.clone();
    let ctx = max_context.next_multiple_of(64);
    let options = CompileOptions::for_machine(Machine {
        workers: dev.info().sm_count.max(1),
        ..Machine::h100()
    });
    // `run` put the draft's weights into the model's store: one upload holds both.
    debug_assert!(
        draft
            .weights
            .iter()
            .all(|(n, _)| model.weights.get(n).is_some())
    );
    let mut engine = CudaEngine::from_spec(dev, target.clone(), &model.weights, ctx, options)?;
    engine.set_max_step_tokens(max_block);
    let copy_bandwidth_gbs = engine.kernel().copy_bandwidth_gbs()?;
    let drafts = engine.programs().for_draft::<(usize, usize)>();
    Ok(Setup {
        engine: Box::new(engine),
        backend: "cuda-megakernel",
        copy_bandwidth_gbs,
        drafter: Box::new(move |b| {
            let runner = Box::new(CompiledRunner::on(drafts.for_draft()));
            DFlashDrafter::with_runner(dspec.clone(), &target, runner, ctx, Some(b))
        }),
        draft_backend: "cuda-megakernel",
        draft_on_target_device: true,
    })
}

/// `warmup` untimed calls of `f`, then `n` timed ones (ms, host clock).
fn time(warmup: usize, n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// A deterministic token for position `p` (the same stream `mimo bench` fills its cache with).
fn token_at(p: usize, vocab: usize) -> u32 {
    ((p as u64 * 7919 + 13) % vocab as u64) as u32
}

/// What was measured at one block size.
struct BlockResult {
    tokens: usize,
    verify_ms: Vec<f64>,
    draft_ms: Vec<f64>,
    distinct: Vec<usize>,
}

pub(super) fn run(
    args: &BenchArgs,
    mut model: Model,
    gpu: Option<&Arc<dyn Device>>,
    started: Instant,
) -> Result<()> {
    let spec = &model.spec;
    let mut blocks = args.blocks.clone();
    blocks.sort_unstable();
    blocks.dedup();
    let Some(&max_block) = blocks.last() else {
        bail!("--blocks needs at least one block size");
    };
    if blocks[0] == 0 {
        bail!("--blocks: a block holds at least 1 token");
    }
    if !(args.tau > 0.0 && args.tau <= max_block as f64) {
        bail!(
            "--tau must be in (0, {max_block}]: at most the largest block's tokens are committed per step"
        );
    }
    if args.context < max_block {
        bail!(
            "--context must be at least the largest block ({max_block}): the draft's context rows come from it"
        );
    }
    let context = args.context;
    let max_context = context + max_block;
    if max_context > spec.max_position_embeddings {
        bail!(
            "--context {context} with a block of {max_block} exceeds the model's max_position_embeddings {}",
            spec.max_position_embeddings
        );
    }
    let vocab = spec.vocab_size;
    let draft = Draft::open(args, &model, max_block)?;
    // The draft's weights (names under `draft.`) join the target's store, so a GPU uploads both
    // at once.
    for (name, w) in draft.weights.iter() {
        model.weights.insert(name, w.clone());
    }
    let model = &model;
    let mut s = setup(model, &draft, gpu, args.host_draft, max_context, max_block)?;
    let device = s.engine.device();

    // The verify step returns the features the draft conditions on.
    let capture = draft.spec.target_layer_ids.clone();
    let capture_note = match s.engine.set_capture_layers(&capture) {
        Ok(()) => None,
        Err(e) => Some(format!("verify timed without capturing features: {e:#}")),
    };

    // The cache: `context` positions, in one step.
    let fill: Vec<u32> = (0..context).map(|p| token_at(p, vocab)).collect();
    let positions: Vec<usize> = (0..context).collect();
    let prefill = s.engine.step(&fill, &positions, false)?;
    let width = draft.spec.feature_dim();
    let features: Vec<f32> = match prefill.features {
        Some(f) if f.len() == context * width => f[(context - max_block) * width..].to_vec(),
        // Without captured features the draft times the same on stand-in values.
        _ => (0..max_block * width)
            .map(|i| ((i as f32) * 0.618).sin())
            .collect(),
    };

    let route_layers = args
        .route_layers
        .unwrap_or_else(|| routing::default_layers(spec));
    let route_context = args.route_context.unwrap_or(context.min(64));
    let mut probe =
        RoutingProbe::new(spec, &model.weights, route_layers, route_context, max_block)?;
    let route_fill: Vec<u32> = (context - route_context..context)
        .map(|p| token_at(p, vocab))
        .collect();
    probe.fill(&route_fill)?;

    // A draft timed on the host beside a GPU target is informational (the projection uses its
    // roofline there), so it gets a few steps only.
    let (draft_warmup, draft_steps) = if s.draft_on_target_device {
        (args.warmup, args.tokens)
    } else {
        (args.warmup.min(1), args.tokens.min(3))
    };
    let mut results = Vec::new();
    for &b in &blocks {
        let block: Vec<u32> = (context..context + b).map(|p| token_at(p, vocab)).collect();
        let pos: Vec<usize> = (context..context + b).collect();
        let engine = &mut s.engine;
        // As generation verifies: accepted on the device where the engine can (only the
        // acceptance and the committed rows come back), else a plain step.
        let verify_ms = time(args.warmup, args.tokens, || {
            match engine.verify_greedy(&block, &pos, false)? {
                Some(_) => Ok(()),
                None => engine.step(&block, &pos, false).map(drop),
            }
        })
        .with_context(|| format!("verifying a block of {b}"))?;
        let distinct = probe.distinct_experts(&block)?;

        let mut drafter = (s.drafter)(b)?;
        let mut committed = fill.clone();
        committed.push(block[0]);
        let ctx = DraftContext {
            tokens: &committed,
            features: &features[(max_block - b) * width..],
            count: b - 1,
        };
        let draft_ms = time(draft_warmup, draft_steps, || {
            drafter.propose(&ctx).map(drop)
        })
        .with_context(|| format!("drafting a block of {b}"))?;
        results.push(BlockResult {
            tokens: b,
            verify_ms,
            draft_ms,
            distinct,
        });
    }

    let out = report(
        args,
        model,
        &draft,
        &s,
        &device,
        capture_note,
        &probe,
        &results,
        started,
    );
    if args.json {
        println!("{out}");
    } else {
        print_summary(&out);
    }
    Ok(())
}

/// Bytes one expert's three matrices take, in the experts' format (the same in every MoE layer).
fn expert_bytes(spec: &mimo_ir::ModelSpec) -> f64 {
    [
        LayerWeight::ExpertsGate,
        LayerWeight::ExpertsUp,
        LayerWeight::ExpertsDown,
    ]
    .iter()
    .map(|w| w.shape(spec, 0).iter().product::<usize>() as f64)
    .sum::<f64>()
        * spec.formats.experts.bytes_per_element()
        / spec.num_experts.max(1) as f64
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &BenchArgs,
    model: &Model,
    draft: &Draft,
    s: &Setup,
    device: &str,
    capture_note: Option<String>,
    probe: &RoutingProbe,
    results: &[BlockResult],
    started: Instant,
) -> Value {
    let spec = &model.spec;
    let bw = s.copy_bandwidth_gbs;
    let per_expert = expert_bytes(spec);
    let verify1 = results
        .iter()
        .find(|r| r.tokens == 1)
        .map(|r| median(&r.verify_ms));
    let blocks: Vec<Value> = results
        .iter()
        .map(|r| {
            let b = r.tokens;
            let verify = median(&r.verify_ms);
            let draft_ms = median(&r.draft_ms);
            let worst = step_bytes(spec, b, args.context);
            let mean = r.distinct.iter().sum::<usize>() as f64 / r.distinct.len().max(1) as f64;
            // Layers the probe did not run are counted at the probed layers' mean.
            let routed = (r.distinct.iter().sum::<usize>() as f64
                + (spec.num_layers - r.distinct.len()) as f64 * mean)
                * per_expert;
            let bytes = worst.total() - worst.parts.get("routed experts").copied().unwrap_or(0.0)
                + routed;
            let draft_bytes = draft.step_bytes(spec, b, args.context);
            json!({
                "tokens": b,
                "verify_ms": verify,
                "verify_ms_min": percentile(&r.verify_ms, 0.0),
                "verify_ms_p90": percentile(&r.verify_ms, 0.9),
                "verify_ms_per_token": verify / b as f64,
                "verify_vs_single_token": verify1.map(|v1| verify / v1),
                "distinct_experts": r.distinct,
                "distinct_experts_mean": mean,
                "distinct_experts_bound": (b * spec.experts_per_token).min(spec.num_experts),
                "uniform_expected_distinct": routing::uniform_expected(spec.num_experts, spec.experts_per_token, b),
                "bytes": bytes,
                "bytes_worst_case": worst.total(),
                "achieved_gbs": bytes / (verify / 1e3) / 1e9,
                "roofline_ms": bytes / (bw * 1e6),
                "draft_ms": draft_ms,
                "draft_ms_min": percentile(&r.draft_ms, 0.0),
                "draft_ms_p90": percentile(&r.draft_ms, 0.9),
                "draft_bytes": draft_bytes,
                "draft_roofline_ms": draft_bytes / (bw * 1e6),
            })
        })
        .collect();
    let last = blocks.last().cloned().unwrap_or(Value::Null);
    let max_block = last["tokens"].as_u64().unwrap_or(0);
    let verify_ms = last["verify_ms"].as_f64().unwrap_or(f64::NAN);
    let (draft_ms, draft_source) = if s.draft_on_target_device {
        (last["draft_ms"].as_f64().unwrap_or(f64::NAN), "measured")
    } else {
        (
            last["draft_roofline_ms"].as_f64().unwrap_or(f64::NAN),
            "roofline-estimate",
        )
    };
    let tokens_per_second = args.tau / ((draft_ms + verify_ms) / 1e3);
    let ratio = verify1.map(|v1| {
        let r = verify_ms / v1;
        json!({
            "block": max_block,
            "ratio": r,
            "target": RATIO_TARGET,
            "meets_target": r <= RATIO_TARGET,
        })
    });
    // The built-in model's weights are random too.
    let random_weights = args.random || model.name == builtin::NAME;
    let random_note = if random_weights {
        "random target weights: the router has no learned structure and spreads a block's tokens over the experts about as uniform routing would (compare uniform_expected_distinct), so these counts and bytes are close to a worst case for a real model, whose tokens share experts more"
    } else {
        "the model's own weights; block tokens are a fixed synthetic sequence, not text"
    };
    json!({
        "mode": "dflash",
        "device": device,
        "backend": s.backend,
        "timing": "host-clock",
        "date": utc_now(),
        "command": command_line(),
        "model": model.name,
        "config": config_json(spec, args),
        "context": args.context,
        "steps": args.tokens,
        "warmup": args.warmup,
        "copy_bandwidth_gbs": bw,
        "capture": {
            "layers": draft.spec.target_layer_ids,
            "enabled": capture_note.is_none(),
            "note": capture_note,
        },
        "draft": {
            "source": draft.source,
            "layers": draft.spec.num_layers,
            "intermediate_size": draft.spec.intermediate_size,
            "format": draft.spec.format.to_string(),
            "backend": s.draft_backend,
            "timing": "host-clock",
            "steps": results.first().map_or(0, |r| r.draft_ms.len()),
            "context_rows": "C = B (block of B, B new context rows)",
        },
        "routing": {
            "computed_on": "cpu-interpreter",
            "layers_probed": probe.layers(),
            "layers": spec.num_layers,
            "context": probe.context(),
            "random_weights": random_weights,
            "note": random_note,
        },
        "blocks": blocks,
        "verify_ratio": ratio,
        "projection": {
            "projected": true,
            "tau": args.tau,
            "block": max_block,
            "draft_ms": draft_ms,
            "draft_source": draft_source,
            "verify_ms": verify_ms,
            "tokens_per_second": tokens_per_second,
            "target_tokens_per_second": TOKENS_PER_SECOND_TARGET,
            "assumption": format!(
                "a projection, not a measurement: every step drafts and verifies a block of {max_block} and commits tau = {} tokens on average (accepted drafts plus the bonus); accept, sampling and host overhead are left out{}",
                args.tau,
                if draft_source == "measured" { "" } else { "; the draft has no GPU runner yet, so its time is its bytes over the device's measured copy bandwidth" }
            ),
        },
        "seconds": started.elapsed().as_secs_f64(),
    })
}

fn print_summary(out: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "DFlash bench: {} on {} ({}, {}) at context {}; draft {} on {}",
        out["model"].as_str().unwrap_or("?"),
        out["device"].as_str().unwrap_or("?"),
        out["backend"].as_str().unwrap_or("?"),
        out["timing"].as_str().unwrap_or("?"),
        out["context"],
        out["draft"]["source"].as_str().unwrap_or("?"),
        out["draft"]["backend"].as_str().unwrap_or("?"),
    );
    if let Some(note) = out["capture"]["note"].as_str() {
        println!("  note: {note}");
    }
    println!(
        "  routing of {} of {} layers on the host; {}",
        out["routing"]["layers_probed"],
        out["routing"]["layers"],
        out["routing"]["note"].as_str().unwrap_or("")
    );
    println!(
        "  {:>5} {:>11} {:>8} {:>20} {:>10} {:>10} {:>10}",
        "B", "verify ms", "x B=1", "experts/layer", "MB read", "GB/s", "draft ms"
    );
    for b in out["blocks"].as_array().into_iter().flatten() {
        println!(
            "  {:>5} {:>11.3} {:>8} {:>20} {:>10.1} {:>10.1} {:>10.3}",
            b["tokens"].as_u64().unwrap_or(0),
            f(&b["verify_ms"]),
            b["verify_vs_single_token"]
                .as_f64()
                .map_or("-".to_string(), |x| format!("{x:.2}")),
            format!(
                "{:.1} (<= {}, unif {:.1})",
                f(&b["distinct_experts_mean"]),
                b["distinct_experts_bound"],
                f(&b["uniform_expected_distinct"])
            ),
            f(&b["bytes"]) / 1e6,
            f(&b["achieved_gbs"]),
            f(&b["draft_ms"]),
        );
    }
    let r = &out["verify_ratio"];
    if !r.is_null() {
        println!(
            "  verify({})/verify(1) = {:.2}x (target <= {}x: {})",
            r["block"],
            f(&r["ratio"]),
            r["target"],
            if r["meets_target"].as_bool() == Some(true) {
                "met"
            } else {
                "not met"
            }
        );
    }
    let p = &out["projection"];
    println!(
        "  projected {:.1} tokens/s = tau {} / (draft {:.3} ms [{}] + verify({}) {:.3} ms) (target {} on an H100)",
        f(&p["tokens_per_second"]),
        p["tau"],
        f(&p["draft_ms"]),
        p["draft_source"].as_str().unwrap_or("?"),
        p["block"],
        f(&p["verify_ms"]),
        p["target_tokens_per_second"],
    );
    println!("  assumption: {}", p["assumption"].as_str().unwrap_or(""));
}
