//! The megakernel on a GPU against the reference interpreter, and the CPU side of the same
//! checks.
//!
//! The device tests get their device from `common::test_device`: the GPU with `MIMO_GPU_TESTS=1`
//! (`.gpu/run-tests gpu_kernel` sets it; a missing GPU fails them), otherwise the device emulator
//! (where it cannot start, they print `skipped: <reason>`), on which each runs a CI-sized shape
//! (`common::on_emulator`: fewer workers, tokens or vocabulary; each test says which). They
//! cover:
//! - every op template alone (the fused groups of one layer, built as small graphs) on random
//!   inputs, f32 / bf16 / MXFP4 weights, against the interpreter at bf16 tolerance;
//! - the whole kernel on every HF fixture (f32 and MXFP4 experts): 64 greedy tokens equal to the
//!   interpreter's (a flip is accepted only at a near tie, see `common::parity`), and logits
//!   within tolerance with both fed the same tokens;
//! - a 2-layer model with full Qwen3-30B-A3B layer shapes (MXFP4 experts, bf16 elsewhere);
//! - a schedule with a deliberately missing event, which must fail fast naming the stuck task;
//! - serial mode (one launch per task) giving bit-identical results;
//! - `mimo generate` on a compiled artifact, and `mimo bench`, on the device;
//! - DFlash on the megakernel: greedy speculative output equal to plain greedy output for 256
//!   tokens (48 on the emulator; random draft, always-right and always-wrong drafters), and the
//!   verify program's acceptance, committed tokens and features equal to the CPU schedule
//!   executor's.
//!
//! The CPU-side tests (always run) check that the per-op graphs fuse into exactly the templates
//! they are meant to test and run correctly on the CPU schedule executor, and that `mimo bench`
//! (CPU) and `mimo random-checkpoint` work from the command line.
//!
//! Every kernel here is generated with the compile-time limits of [`limits`] (the union of all
//! the small models' shapes), so the small tests share one NVRTC compile (cached on disk by
//! source hash, see `mimo_runtime::cuda::kernel`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::parity::{Bf16Twin, MODEL_TOLERANCE, Oracle, compare_greedy, rel_l2};
use common::{hf_fixtures, mimo, mimo_compile, mimo_json, model_toml, read_json};
use mimo::random_checkpoint::random_weights;
use mimo_compiler::fuse::FusedKind;
use mimo_compiler::{CompileOptions, Machine, Program, compile};
use mimo_ir::formats::WeightFormat;
use mimo_ir::interp::{self, F32Weights, StateStore};
use mimo_ir::math::Rng;
use mimo_ir::model::build::decode_graph;
use mimo_ir::ops::router_topk::RouterScoring;
use mimo_ir::ops::{
    Add, Argmax, Attention, Embedding, ExpertLinear, KvAppend, Linear, Reshape, RmsNorm, Rope,
    RouterTopK, Scale, SiluMul, WeightedSum,
};
use mimo_ir::weights::{Weight, WeightStore};
use mimo_ir::{
    Architecture, DType, Graph, GraphBuilder, ModelSpec, NodeKind, Tensor, TensorType,
    WeightFormats,
};
use mimo_runtime::cuda::{self, CudaEngine, KernelImage, LaunchOptions, Megakernel};
use mimo_runtime::device::Device;
use mimo_runtime::dflash::{self, ScriptedDrafter, speculative_generate};
use mimo_runtime::engine::{CpuEngine, Engine, ScheduleEngine};
use mimo_runtime::exec::ScheduleExecutor;
use mimo_runtime::generate::{GenerateRequest, generate};
use mimo_runtime::load_model;
use mimo_runtime::sampling::SamplingParams;

/// Relative L2 error allowed for one op: the kernel stages activations and f32 weights as bf16
/// for the tensor cores (8 significant bits) and keeps the KV cache in bf16.
const OP_TOLERANCE: f64 = 2e-2;

/// Root-mean-square difference per element.
fn rms_diff(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().max(1) as f64;
    (a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

// ---- the small models and their shared kernel limits ----

/// The shape of the per-op graphs: every dimension a multiple of 32 (FP4 vector paths), GQA 2,
/// odd top-k, a vocabulary no chunk size divides.
fn op_spec(experts: WeightFormat, dense: WeightFormat) -> ModelSpec {
    ModelSpec {
        hybrid: None,
        architecture: Architecture::Qwen3Moe,
        vocab_size: 300,
        hidden_size: 128,
        num_layers: 1,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        num_experts: 8,
        experts_per_token: 3,
        expert_intermediate_size: 64,
        norm_topk_prob: true,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 128,
        tie_word_embeddings: false,
        formats: WeightFormats { experts, dense },
    }
}

/// Compile-time limits covering every spec in `specs`: one kernel source serves them all.
fn limits(specs: &[ModelSpec]) -> ModelSpec {
    let max = |f: &dyn Fn(&ModelSpec) -> usize| specs.iter().map(f).max().unwrap_or(1);
    let head_dim = max(&|s| s.head_dim);
    let group = max(&|s| s.num_heads / s.num_kv_heads);
    let heads = group.max(max(&|s| s.q_dim()).div_ceil(head_dim));
    ModelSpec {
        vocab_size: max(&|s| s.vocab_size),
        hidden_size: max(&|s| s.hidden_size),
        num_heads: heads,
        num_kv_heads: 1,
        head_dim,
        num_experts: max(&|s| s.num_experts),
        experts_per_token: max(&|s| s.experts_per_token),
        expert_intermediate_size: max(&|s| s.expert_intermediate_size),
        ..specs[0].clone()
    }
}

/// The limits of every small test model: the per-op spec, the tiny specs and the HF fixtures.
fn small_limits() -> ModelSpec {
    let mut specs = vec![
        op_spec(WeightFormat::F32, WeightFormat::F32),
        ModelSpec::tiny(Architecture::Qwen3Moe),
        ModelSpec::tiny(Architecture::Mixtral),
    ];
    for f in hf_fixtures() {
        specs.push(
            mimo_runtime::resolve_model(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .spec,
        );
    }
    limits(&specs)
}

fn compile_opts(workers: usize) -> CompileOptions {
    CompileOptions {
        min_task_bytes: 512.0,
        ..CompileOptions::for_machine(Machine {
            workers,
            ..Machine::h100()
        })
    }
}

/// `graph` compiled for `workers` workers, with a kernel generated under `limits`.
fn compile_small(graph: &Graph, workers: usize, limits: &ModelSpec) -> (Program, KernelImage) {
    cuda::compile_graph(limits, graph, &compile_opts(workers))
        .unwrap_or_else(|e| panic!("compiling {}: {e:#}", graph.name))
}

// ---- the per-op graphs ----

/// One fused group of a decode layer as a graph of its own, fed by inputs.
struct OpGraph {
    name: &'static str,
    graph: Graph,
    /// The fused ops the compiler must make of it (the ones under test first).
    kinds: Vec<FusedKind>,
}

fn weight(b: &mut GraphBuilder, name: &str, shape: &[usize], f: WeightFormat) -> mimo_ir::Value {
    b.weight(name, TensorType::new(shape.to_vec(), DType::from(f)))
        .unwrap()
}

fn op_graphs(spec: &ModelSpec, ctx: usize) -> Vec<OpGraph> {
    let (h, v) = (spec.hidden_size, spec.vocab_size);
    let (nh, kvh, hd) = (spec.num_heads, spec.num_kv_heads, spec.head_dim);
    let (e, i, k) = (
        spec.num_experts,
        spec.expert_intermediate_size,
        spec.experts_per_token,
    );
    let (dense, experts) = (spec.formats.dense, spec.formats.experts);
    let eps = spec.rms_norm_eps as f32;
    let mut out = Vec::new();

    // Embedding.
    let mut b = GraphBuilder::new("embed");
    let ids = b.input("token_ids", TensorType::i32([1])).unwrap();
    let table = weight(&mut b, "embed", &[v, h], dense);
    let y = b.op1("embed_tokens", Embedding {}, &[table, ids]).unwrap();
    b.output("y", y).unwrap();
    out.push(OpGraph {
        name: "embed",
        graph: b.finish().unwrap(),
        kinds: vec![FusedKind::Embed],
    });

    // RMSNorm + q/k/v projections, and a plain projection without a norm.
    let mut b = GraphBuilder::new("norm_matmul");
    let x = b.input("x", TensorType::f32([1, h])).unwrap();
    let nw = weight(&mut b, "norm", &[h], dense);
    let hn = b.op1("x_normed", RmsNorm { eps }, &[x, nw]).unwrap();
    for (name, rows) in [("q", nh * hd), ("k", kvh * hd), ("v", kvh * hd)] {
        let w = weight(&mut b, &format!("w{name}"), &[rows, h], dense);
        let p = b.op1(&format!("{name}_proj"), Linear {}, &[hn, w]).unwrap();
        b.output(name, p).unwrap();
    }
    let x2 = b.input("x2", TensorType::f32([1, nh * hd])).unwrap();
    let wo = weight(&mut b, "wo", &[h, nh * hd], dense);
    let o = b.op1("o_proj", Linear {}, &[x2, wo]).unwrap();
    b.output("o", o).unwrap();
    out.push(OpGraph {
        name: "norm_matmul",
        graph: b.finish().unwrap(),
        kinds: vec![FusedKind::NormMatmul, FusedKind::NormMatmul],
    });

    // k-norm + RoPE + KV append; q-norm + RoPE + split-K attention; merge + o_proj + residual.
    // Then the same over a sliding window of 5 rows (shorter than the test's 40 steps) with a
    // learned sink per head (MiMo-V2's sliding layers); then with MiMo-V2's other attention
    // features too: a quarter of each head rotated, values half as wide, scaled before the cache.
    struct Case {
        name: &'static str,
        window: usize,
        sinks: bool,
        rotary_dim: usize,
        v_head_dim: usize,
        v_scale: f32,
    }
    let plain = Case {
        name: "attention",
        window: 0,
        sinks: false,
        rotary_dim: 0,
        v_head_dim: hd,
        v_scale: 1.0,
    };
    let sliding = Case {
        name: "attention_window_sinks",
        window: 5,
        sinks: true,
        ..plain
    };
    let mimo = Case {
        name: "attention_mimo",
        rotary_dim: hd / 4,
        v_head_dim: hd / 2,
        v_scale: 0.707,
        ..sliding
    };
    for case in [plain, sliding, mimo] {
        let (name, vhd) = (case.name, case.v_head_dim);
        let mut b = GraphBuilder::new(name);
        let pos = b.input("positions", TensorType::i32([1])).unwrap();
        let mut heads = Vec::new();
        for (name, n, dim) in [("q", nh, hd), ("k", kvh, hd), ("v", kvh, vhd)] {
            let raw = b
                .input(&format!("{name}_raw"), TensorType::f32([1, n * dim]))
                .unwrap();
            let mut t = b
                .op1(
                    &format!("{name}_heads"),
                    Reshape {
                        shape: vec![1, n, dim],
                    },
                    &[raw],
                )
                .unwrap();
            if name == "v" && case.v_scale != 1.0 {
                let scale = Scale {
                    factor: case.v_scale,
                };
                t = b.op1("v_scaled", scale, &[t]).unwrap();
            }
            if name != "v" {
                let w = weight(&mut b, &format!("{name}_norm"), &[hd], dense);
                t = b
                    .op1(&format!("{name}_normed"), RmsNorm { eps }, &[t, w])
                    .unwrap();
                t = b
                    .op1(
                        &format!("{name}_rope"),
                        Rope {
                            theta: spec.rope_theta,
                            rotary_dim: case.rotary_dim,
                        },
                        &[t, pos],
                    )
                    .unwrap();
            }
            heads.push(t);
        }
        let cache = |dim: usize| TensorType::new([ctx, kvh, dim], DType::Bf16);
        let kc = b.state("k_cache", cache(hd)).unwrap();
        let vc = b.state("v_cache", cache(vhd)).unwrap();
        let k_all = b
            .op1("k_append", KvAppend {}, &[kc, heads[1], pos])
            .unwrap();
        let v_all = b
            .op1("v_append", KvAppend {}, &[vc, heads[2], pos])
            .unwrap();
        let sinks: Vec<mimo_ir::Value> = case
            .sinks
            .then(|| weight(&mut b, "sinks", &[nh], dense))
            .into_iter()
            .collect();
        let att = b
            .op1(
                "attention",
                Attention {
                    scale: 1.0 / (hd as f32).sqrt(),
                    window: case.window,
                },
                &[&[heads[0], k_all, v_all, pos][..], &sinks].concat(),
            )
            .unwrap();
        let flat = b
            .op1(
                "attn_flat",
                Reshape {
                    shape: vec![1, nh * vhd],
                },
                &[att],
            )
            .unwrap();
        let wo = weight(&mut b, "wo", &[h, nh * vhd], dense);
        let o = b.op1("o_proj", Linear {}, &[flat, wo]).unwrap();
        let resid = b.input("residual", TensorType::f32([1, h])).unwrap();
        let y = b.op1("attn_residual", Add {}, &[resid, o]).unwrap();
        b.output("y", y).unwrap();
        out.push(OpGraph {
            name,
            graph: b.finish().unwrap(),
            kinds: vec![
                FusedKind::KvAppend,
                FusedKind::AttentionPartial,
                FusedKind::OprojResidual,
            ],
        });
    }

    // Router + top-k + expert gate/up + SiLU; top-k + expert down + weighted sum + residual.
    // Then with MiMo-V2's router: sigmoid scores, a selection bias, a scale.
    for (name, sigmoid) in [("experts", false), ("experts_sigmoid", true)] {
        let mut b = GraphBuilder::new(name);
        let x = b.input("x", TensorType::f32([1, h])).unwrap();
        let nw = weight(&mut b, "ffn_norm", &[h], dense);
        let hn = b.op1("ffn_in", RmsNorm { eps }, &[x, nw]).unwrap();
        let router = weight(&mut b, "router", &[e, h], dense);
        let logits = b.op1("router_logits", Linear {}, &[hn, router]).unwrap();
        let routed = if sigmoid {
            let bias = weight(&mut b, "router_bias", &[e], dense);
            let router = RouterTopK {
                k,
                normalize: spec.norm_topk_prob,
                scoring: RouterScoring::Sigmoid,
                scale: 2.5,
            };
            b.op("route", router, &[logits, bias]).unwrap()
        } else {
            let router = RouterTopK::softmax(k, spec.norm_topk_prob);
            b.op("route", router, &[logits]).unwrap()
        };
        let (rid, rw) = (routed[RouterTopK::IDS], routed[RouterTopK::WEIGHTS]);
        let gate_w = weight(&mut b, "experts.gate", &[e, i, h], experts);
        let up_w = weight(&mut b, "experts.up", &[e, i, h], experts);
        let down_w = weight(&mut b, "experts.down", &[e, h, i], experts);
        let g = b
            .op1("expert_gate", ExpertLinear {}, &[hn, rid, gate_w])
            .unwrap();
        let u = b
            .op1("expert_up", ExpertLinear {}, &[hn, rid, up_w])
            .unwrap();
        let act = b.op1("expert_act", SiluMul {}, &[g, u]).unwrap();
        let d = b
            .op1("expert_down", ExpertLinear {}, &[act, rid, down_w])
            .unwrap();
        let moe = b.op1("moe_out", WeightedSum {}, &[d, rw]).unwrap();
        let y = b.op1("moe_residual", Add {}, &[x, moe]).unwrap();
        b.output("y", y).unwrap();
        out.push(OpGraph {
            name,
            graph: b.finish().unwrap(),
            kinds: vec![
                FusedKind::NormMatmul,
                FusedKind::ExpertGateUp,
                FusedKind::ExpertDown,
            ],
        });
    }

    // Final norm + lm_head + chunked argmax.
    let mut b = GraphBuilder::new("lm_head");
    let x = b.input("x", TensorType::f32([1, h])).unwrap();
    let nw = weight(&mut b, "final_norm", &[h], dense);
    let hn = b.op1("final_norm_out", RmsNorm { eps }, &[x, nw]).unwrap();
    let w = weight(&mut b, "lm_head", &[v, h], dense);
    let logits = b.op1("lm_head_out", Linear {}, &[hn, w]).unwrap();
    let next = b.op1("greedy", Argmax {}, &[logits]).unwrap();
    b.output("logits", logits).unwrap();
    b.output("next_ids", next).unwrap();
    out.push(OpGraph {
        name: "lm_head",
        graph: b.finish().unwrap(),
        kinds: vec![FusedKind::LmHead, FusedKind::ArgmaxCombine],
    });
    out
}

/// Random weights for every weight node of `graph`, stored in the node's declared format.
fn graph_weights(graph: &Graph, seed: u64) -> WeightStore {
    let mut rng = Rng::new(seed);
    let mut store = WeightStore::new();
    for (_, n) in graph.nodes_of(|k| matches!(k, NodeKind::Weight)) {
        let ty = &n.outputs[0];
        let shape = ty.shape.clone();
        let numel: usize = shape.iter().product();
        let values: Vec<f32> = if shape.len() == 1 {
            (0..numel).map(|_| 1.0 + 0.1 * rng.normal(1.0)).collect()
        } else {
            let std = if n.name == "embed" {
                1.0
            } else {
                2.0 / (*shape.last().unwrap() as f32).sqrt()
            };
            (0..numel).map(|_| std * rng.normal(1.0)).collect()
        };
        let format = match ty.dtype {
            DType::Bf16 => WeightFormat::Bf16,
            DType::F16 => WeightFormat::F16,
            DType::Mxfp4 => WeightFormat::Mxfp4,
            DType::Nvfp4 => WeightFormat::Nvfp4,
            _ => WeightFormat::F32,
        };
        store.insert(
            n.name.clone(),
            Weight::from_f32(shape, &values, format).unwrap(),
        );
    }
    store
}

/// Random inputs of step `step` for every input of `graph` (positions = the step).
fn graph_inputs(
    graph: &Graph,
    spec: &ModelSpec,
    step: usize,
    rng: &mut Rng,
) -> Vec<(String, Tensor)> {
    graph
        .nodes_of(|k| matches!(k, NodeKind::Input))
        .map(|(_, n)| {
            let ty = &n.outputs[0];
            let t = match n.name.as_str() {
                "positions" => Tensor::from_i32(ty.shape.clone(), vec![step as i32]),
                "token_ids" => Tensor::from_i32(
                    ty.shape.clone(),
                    vec![(rng.next_u64() % spec.vocab_size as u64) as i32],
                ),
                _ => Tensor::from_f32(
                    ty.shape.clone(),
                    (0..ty.numel()).map(|_| rng.normal(1.0)).collect(),
                ),
            };
            (n.name.clone(), t)
        })
        .collect()
}

fn output_names(graph: &Graph) -> Vec<String> {
    graph.outputs().iter().map(|(n, _)| n.clone()).collect()
}

// ---- CPU side: always run ----

/// The per-op graphs fuse into exactly the templates they test, encode, and run correctly on the
/// CPU schedule executor (so a GPU failure is the kernel's, not the test's).
#[test]
fn op_graphs_fuse_into_their_templates_and_run_on_the_cpu() {
    for formats in [
        (WeightFormat::F32, WeightFormat::F32),
        (WeightFormat::Mxfp4, WeightFormat::Bf16),
    ] {
        let spec = op_spec(formats.0, formats.1);
        for og in op_graphs(&spec, 64) {
            let program =
                compile(&og.graph, &compile_opts(5)).unwrap_or_else(|e| panic!("{}: {e}", og.name));
            let kinds: Vec<FusedKind> = program.ops.iter().map(|o| o.kind).collect();
            assert_eq!(kinds, og.kinds, "{}", og.name);
            mimo_compiler::abi::encode(&program).unwrap_or_else(|e| panic!("{}: {e}", og.name));
            let store = graph_weights(&og.graph, 11);
            let weights = F32Weights::from_store(&store);
            let mut exec = ScheduleExecutor::new(program, weights.clone()).unwrap();
            let mut state = StateStore::new();
            let mut rng = Rng::new(5);
            let names = output_names(&og.graph);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            for step in 0..6 {
                let inputs = graph_inputs(&og.graph, &spec, step, &mut rng);
                let refs: Vec<(&str, Tensor)> = inputs
                    .iter()
                    .map(|(n, t)| (n.as_str(), t.clone()))
                    .collect();
                let want = interp::run(&og.graph, &weights, &mut state, &refs).unwrap();
                let got = exec.run_step(&refs, &names).unwrap();
                for n in &names {
                    let (g, w) = (&got[*n], &want[*n]);
                    if w.is_i32() {
                        assert_eq!(g.i32(), w.i32(), "{} {n}", og.name);
                    } else {
                        assert!(rel_l2(g.f32(), w.f32()) < 1e-5, "{} {n}", og.name);
                    }
                }
            }
        }
    }
}

#[test]
fn kernel_limits_cover_every_small_model() {
    let l = small_limits();
    for f in hf_fixtures() {
        let s = mimo_runtime::resolve_model(&f).unwrap().spec;
        assert!(
            mimo_compiler::codegen::shared_memory_bytes(&s, 1)
                <= mimo_compiler::codegen::shared_memory_bytes(&l, 1)
        );
        assert!(s.head_dim <= l.head_dim && s.num_experts <= l.num_experts);
        assert!(s.experts_per_token <= l.experts_per_token);
    }
}

/// The kernel every small GPU test shares (generated under [`small_limits`]) compiles for
/// sm_90a with no spills. Needs NVRTC (`eval "$(.ci/install-cuda-tools)"`); skipped without it
/// unless MIMO_REQUIRE_NVRTC=1.
#[test]
fn the_shared_small_kernel_compiles_without_spills() {
    if !mimo_compiler::nvrtc::nvrtc_available() {
        assert!(
            std::env::var("MIMO_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "MIMO_REQUIRE_NVRTC=1 but NVRTC is not available"
        );
        eprintln!("skipping: NVRTC is not available");
        return;
    }
    let spec = op_spec(WeightFormat::Mxfp4, WeightFormat::Bf16);
    let graph = decode_graph(&spec, 1, 64).unwrap();
    let (_, image) = compile_small(&graph, 8, &small_limits());
    let compiled = mimo_compiler::nvrtc::compile_cubin(
        &image.source,
        "kernel.cu",
        &mimo_compiler::nvrtc::CompileOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        compiled.resources.iter().all(|r| !r.spills()),
        "{:?}",
        compiled.resources
    );
    // Every per-op graph and every small model gets this very source.
    for og in op_graphs(&spec, 64) {
        assert_eq!(
            compile_small(&og.graph, 3, &small_limits()).1,
            image,
            "{}",
            og.name
        );
    }
}

/// The launch constants the engine reads from a kernel source are the generator's own.
#[test]
fn in_memory_kernels_carry_their_launch_constants() {
    let spec = ModelSpec::tiny(Architecture::Mixtral);
    let (program, image) = cuda::compile_in_memory(&spec, 32, 5).unwrap();
    assert_eq!(program.schedule.queues.len(), 5);
    assert_eq!(
        image.define("MIMO_SMEM_BYTES"),
        Some(mimo_compiler::codegen::shared_memory_bytes(&spec, 1) as u64)
    );
    assert_eq!(
        image.define("MIMO_THREADS"),
        Some(mimo_compiler::codegen::THREADS as u64)
    );
    assert_eq!(image.define("MIMO_TOKENS"), Some(1));
    assert!(image.cubin.is_none());
}

#[test]
fn bench_runs_on_the_cpu() {
    let out = mimo_json(&[
        "bench",
        "--device",
        "cpu",
        "--tokens",
        "3",
        "--context",
        "5",
        "--warmup",
        "1",
        "--json",
    ]);
    assert_eq!(out["backend"], "cpu-interpreter");
    assert_eq!(out["timing"], "host-clock");
    assert_eq!(out["context"], 5);
    for key in [
        "ms_per_step",
        "tokens_per_second",
        "bytes_per_step",
        "achieved_gbs",
        "copy_bandwidth_gbs",
        "bandwidth_fraction",
    ] {
        let v = out[key].as_f64().unwrap_or_else(|| panic!("{key}: {out}"));
        assert!(v > 0.0 && v.is_finite(), "{key} = {v}");
    }
    for key in ["device", "date", "command", "config"] {
        assert!(!out[key].is_null(), "{key} missing: {out}");
    }
    assert!(out["command"].as_str().unwrap().starts_with("mimo bench"));
}

#[test]
fn random_checkpoint_command_writes_a_runnable_model() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("tiny.toml");
    std::fs::write(
        &toml,
        "[model]\narchitecture = \"qwen3_moe\"\nvocab_size = 200\nhidden_size = 64\n\
         num_hidden_layers = 3\nnum_attention_heads = 4\nnum_key_value_heads = 2\nhead_dim = 16\n\
         num_experts = 6\nnum_experts_per_tok = 2\nmoe_intermediate_size = 64\n\
         norm_topk_prob = true\nmax_position_embeddings = 128\n",
    )
    .unwrap();
    let dir = tmp.path().join("ckpt");
    let run = mimo(&[
        "random-checkpoint",
        "--config",
        toml.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
        "--mxfp4-experts",
        "--seed",
        "5",
        "--layers",
        "2",
        "--quiet",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["num_hidden_layers"], 2);
    let generate = |device: &str| {
        mimo_json(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-ids",
            "1,2,3",
            "--max-new-tokens",
            "4",
            "--device",
            device,
            "--json",
        ])
    };
    let out = generate("cpu");
    assert_eq!(out["output_ids"].as_array().unwrap().len(), 4);
    // The same seed in memory and on disk: the bench's --random weights are these.
    let resolved = mimo_runtime::resolve_model(&dir).unwrap();
    assert_eq!(resolved.spec.formats.experts, WeightFormat::Mxfp4);
    let loaded = load_model(&dir, &|_, _| {}).unwrap();
    let synthesised = random_weights(&resolved.spec, 5).unwrap();
    for (name, w) in loaded.weights.iter() {
        assert!(synthesised.get(name) == Some(w), "{name}");
    }
}

// ---- GPU ----

/// Runs `graph` for `steps` steps on the GPU and the interpreter with the same random inputs.
fn check_graph_on_gpu(
    dev: &Arc<dyn Device>,
    spec: &ModelSpec,
    og: &OpGraph,
    workers: usize,
    limits: &ModelSpec,
    steps: usize,
) {
    let (program, image) = compile_small(&og.graph, workers, limits);
    let store = graph_weights(&og.graph, 11);
    let weights = F32Weights::from_store(&store);
    let mut mk = Megakernel::new(dev, program, &store, &image, LaunchOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e:#}", og.name));
    let mut state = StateStore::new();
    let mut rng = Rng::new(17);
    let names = output_names(&og.graph);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let label = format!(
        "{} ({}/{} weights, {workers} workers)",
        og.name, spec.formats.experts, spec.formats.dense
    );
    for step in 0..steps {
        let inputs = graph_inputs(&og.graph, spec, step, &mut rng);
        let refs: Vec<(&str, Tensor)> = inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let want = interp::run(&og.graph, &weights, &mut state, &refs).unwrap();
        let got = mk
            .run_step(&refs, &names)
            .unwrap_or_else(|e| panic!("{label} step {step}: {e:#}"));
        for n in &names {
            let (g, w) = (&got[*n], &want[*n]);
            if w.is_i32() {
                // Argmax: equal, unless the interpreter's logits put the two within noise.
                let logits = &want["logits"];
                let gl = &got["logits"];
                for (t, (&gi, &wi)) in g.i32().iter().zip(w.i32()).enumerate() {
                    if gi != wi {
                        let v = spec.vocab_size;
                        let row = &logits.f32()[t * v..(t + 1) * v];
                        let noise = rms_diff(&gl.f32()[t * v..(t + 1) * v], row);
                        let gap = f64::from(row[wi as usize] - row[gi as usize]);
                        assert!(
                            gap <= 4.0 * noise,
                            "{label} step {step}: argmax {gi}, interpreter {wi} (gap {gap}, noise {noise})"
                        );
                    }
                }
            } else {
                let err = rel_l2(g.f32(), w.f32());
                assert!(
                    err < OP_TOLERANCE,
                    "{label} step {step} output {n}: relative L2 error {err}"
                );
            }
        }
    }
    eprintln!("{label}: {steps} steps within tolerance");
}

#[test]
fn gpu_each_op_template_matches_its_reference() {
    let Some(dev) = common::test_device("gpu_each_op_template_matches_its_reference") else {
        return;
    };
    let info = dev.info();
    let limits = small_limits();
    for (experts, dense) in [
        (WeightFormat::F32, WeightFormat::F32),
        (WeightFormat::Mxfp4, WeightFormat::Bf16),
        (WeightFormat::Bf16, WeightFormat::Bf16),
    ] {
        let spec = op_spec(experts, dense);
        for og in op_graphs(&spec, 64) {
            // On the emulator (CI-sized) 16 workers, not 64: waiting blocks cost it time.
            let most = if common::on_emulator(&dev) { 16 } else { 64 };
            for workers in [info.sm_count.min(most), 3] {
                let steps = if og.name.starts_with("attention") {
                    40
                } else {
                    4
                };
                check_graph_on_gpu(&dev, &spec, &og, workers, &limits, steps);
            }
        }
    }
}

#[test]
fn gpu_fixtures_match_the_interpreter_for_64_greedy_tokens() {
    let Some(dev) = common::test_device("gpu_fixtures_match_the_interpreter_for_64_greedy_tokens")
    else {
        return;
    };
    let info = dev.info();
    let limits = small_limits();
    let tmp = tempfile::tempdir().unwrap();
    for (i, fixture) in hf_fixtures().into_iter().enumerate() {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        // MIMO_TEST_FIXTURES=a,b: only those fixtures (to iterate on one under the emulator).
        if std::env::var("MIMO_TEST_FIXTURES").is_ok_and(|only| !only.split(',').any(|f| f == name))
        {
            continue;
        }
        let expected = read_json(&fixture.join("expected.json"));
        let prompt: Vec<u32> = common::ids(&expected["prompt_ids"])
            .iter()
            .map(|&x| x as u32)
            .collect();
        let mx = model_toml(tmp.path(), &name, &fixture, "mxfp4", "bf16");
        for model in [fixture.clone(), mx] {
            let loaded = load_model(&model, &|_, _| {}).unwrap();
            // On the emulator (CI-sized) at most 16 workers: waiting blocks cost it time.
            let most = if common::on_emulator(&dev) {
                16
            } else {
                info.sm_count
            };
            let workers = [most, 7, 1, 32.min(most)][i % 4];
            let ctx = (prompt.len() + 64).next_multiple_of(64);
            let graph = decode_graph(&loaded.spec, 1, ctx).unwrap();
            let (program, image) = compile_small(&graph, workers, &limits);
            let mut gpu_engine = CudaEngine::new(
                &dev,
                loaded.spec.clone(),
                program,
                &loaded.weights,
                &image,
                LaunchOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let dequantised = F32Weights::from_store(&loaded.weights);
            let mut twin = Bf16Twin::new(&loaded.spec, &loaded.weights, &dequantised, ctx);
            let mut cpu_engine = CpuEngine::new(loaded.spec.clone(), dequantised.clone(), ctx);
            let label = format!(
                "{name} ({}/{} weights, {workers} workers)",
                loaded.spec.formats.experts, loaded.spec.formats.dense
            );
            compare_greedy(
                &label,
                (&mut cpu_engine, &dequantised),
                &mut twin,
                &mut gpu_engine,
                &prompt,
                64,
                MODEL_TOLERANCE,
            );
        }
    }
}

/// Qwen3-30B-A3B's shape with `layers` layers, MXFP4 experts, bf16 elsewhere.
fn qwen3_30b(layers: usize) -> ModelSpec {
    ModelSpec {
        num_layers: layers,
        ..ModelSpec::qwen3_30b_a3b()
    }
}

/// Two layers of Qwen3-30B-A3B's full layer shapes (hidden 2048, 32/4 heads of 128, 128
/// experts top-8 of 768) on every SM, 16 greedy tokens. On the emulator (CI-sized): 8 workers,
/// 4 tokens and a vocabulary of 4096 instead of 151936 (the lm_head is the same code over fewer
/// tiles), the layers unchanged.
#[test]
fn gpu_two_layers_of_qwen3_30b_match_the_interpreter() {
    let Some(dev) = common::test_device("gpu_two_layers_of_qwen3_30b_match_the_interpreter") else {
        return;
    };
    let info = dev.info();
    let mut spec = qwen3_30b(2);
    let (workers, tokens) = if common::on_emulator(&dev) {
        spec.vocab_size = 4096;
        (8, 4)
    } else {
        (info.sm_count, 16)
    };
    let started = Instant::now();
    let weights = random_weights(&spec, 3).unwrap();
    let (program, image) = cuda::compile_in_memory(&spec, 64, workers).unwrap();
    let mut gpu_engine = CudaEngine::new(
        &dev,
        spec.clone(),
        program,
        &weights,
        &image,
        LaunchOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "2-layer Qwen3-30B shape on {}: ready in {:.1} s",
        gpu_engine.device(),
        started.elapsed().as_secs_f64()
    );
    let dequantised = F32Weights::from_store(&weights);
    let mut twin = Bf16Twin::new(&spec, &weights, &dequantised, 64);
    let mut cpu_engine = CpuEngine::new(spec.clone(), dequantised.clone(), 64);
    drop(weights);
    compare_greedy(
        "qwen3-30b-a3b x2 layers",
        (&mut cpu_engine, &dequantised),
        &mut twin,
        &mut gpu_engine,
        &[4000, 785, 2722, 315],
        tokens,
        MODEL_TOLERANCE,
    );
}

/// The tiny Qwen3-MoE model with MXFP4 experts, compiled under the small limits.
fn tiny_program(workers: usize, ctx: usize) -> (ModelSpec, WeightStore, Program, KernelImage) {
    let mut spec = ModelSpec::tiny(Architecture::Qwen3Moe);
    spec.formats.experts = WeightFormat::Mxfp4;
    let weights = mimo_ir::model::random::random_weights(&spec, 9).unwrap();
    let graph = decode_graph(&spec, 1, ctx).unwrap();
    let (program, image) = compile_small(&graph, workers, &small_limits());
    (spec, weights, program, image)
}

#[test]
fn gpu_a_missing_event_is_an_error_naming_the_task() {
    let Some(dev) = common::test_device("gpu_a_missing_event_is_an_error_naming_the_task") else {
        return;
    };
    let info = dev.info();
    let (_, weights, mut program, image) = tiny_program(4.min(info.sm_count), 32);
    // Sabotage: the first task that triggers anything forgets to.
    let victim = program
        .tasks
        .iter()
        .position(|t| !t.triggers.is_empty())
        .unwrap();
    let lost = std::mem::take(&mut program.tasks[victim].triggers);
    let stuck: Vec<String> = program
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.waits.iter().any(|e| lost.contains(e)))
        .map(|(id, t)| format!("task {id} (`{}`", program.ops[t.op].name))
        .collect();
    let opts = LaunchOptions {
        wait_limit: Duration::from_millis(200),
        ..LaunchOptions::default()
    };
    let mut mk = Megakernel::new(&dev, program, &weights, &image, opts).unwrap();
    let inputs = [
        ("token_ids", Tensor::from_i32([1], vec![1])),
        ("positions", Tensor::from_i32([1], vec![0])),
    ];
    for attempt in 0..2 {
        let started = Instant::now();
        let err = format!(
            "{:#}",
            mk.run_step(&inputs, &["next_ids"])
                .expect_err("a step with a missing event must fail")
        );
        let took = started.elapsed();
        eprintln!("attempt {attempt}: {took:?}: {err}");
        assert!(took < Duration::from_secs(10), "the error took {took:?}");
        assert!(err.contains("waited more than"), "{err}");
        assert!(
            stuck.iter().any(|s| err.contains(s.as_str())),
            "{err}\n names none of the tasks waiting for the lost event: {stuck:?}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn gpu_serial_mode_gives_the_same_results() {
    let Some(dev) = common::test_device("gpu_serial_mode_gives_the_same_results") else {
        return;
    };
    let info = dev.info();
    let (_, weights, program, image) = tiny_program(6.min(info.sm_count), 32);
    let run = |serial: bool| -> Vec<HashMap<String, Tensor>> {
        let opts = LaunchOptions {
            serial,
            ..LaunchOptions::default()
        };
        let mut mk = Megakernel::new(&dev, program.clone(), &weights, &image, opts).unwrap();
        (0..8)
            .map(|p| {
                let inputs = [
                    ("token_ids", Tensor::from_i32([1], vec![(p * 11 + 3) % 97])),
                    ("positions", Tensor::from_i32([1], vec![p])),
                ];
                mk.run_step(&inputs, &["logits", "next_ids"]).unwrap()
            })
            .collect()
    };
    let (a, b) = (run(false), run(true));
    for (p, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x["next_ids"], y["next_ids"], "step {p}");
        let bits = |t: &Tensor| t.f32().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&x["logits"]),
            bits(&y["logits"]),
            "step {p}: serial logits differ"
        );
    }
}

/// `mimo-compile` (with its CUBIN) then `mimo generate --device cuda`: the artifact path of the
/// session, against the CPU schedule executor.
#[test]
fn gpu_generate_runs_a_compiled_artifact() {
    let Some(dev) = common::test_device("gpu_generate_runs_a_compiled_artifact") else {
        return;
    };
    let info = dev.info();
    let tmp = tempfile::tempdir().unwrap();
    let fixture = &hf_fixtures()[0];
    let art = tmp.path().join("art");
    let workers = 8.min(info.sm_count).to_string();
    let run = mimo_compile(&[
        fixture.to_str().unwrap(),
        "-o",
        art.to_str().unwrap(),
        "--workers",
        &workers,
        "--arch",
        &info.arch(),
        "--quiet",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let generate = |device: &str| {
        mimo_json(&[
            "generate",
            "--model",
            art.to_str().unwrap(),
            "--prompt-ids",
            "5,17,42",
            "--max-new-tokens",
            "16",
            "--device",
            device,
            "--json",
            "--logits",
        ])
    };
    let (gpu_out, cpu_out) = (generate(common::device_flag(&dev)), generate("cpu"));
    assert!(
        gpu_out["device"]
            .as_str()
            .unwrap_or_default()
            .contains(common::device_flag(&dev)),
        "{gpu_out}"
    );
    let (g, c) = (
        common::ids(&gpu_out["output_ids"]),
        common::ids(&cpu_out["output_ids"]),
    );
    if let Some(d) = g.iter().zip(&c).position(|(a, b)| a != b) {
        // Up to the divergence both saw the same tokens: the CPU's logits there must put the two
        // choices within the GPU's bf16 noise.
        let row = |v: &serde_json::Value| -> Vec<f32> {
            common::rows(&v["logits"])[d]
                .iter()
                .map(|&x| x as f32)
                .collect()
        };
        let (gl, cl) = (row(&gpu_out), row(&cpu_out));
        let gap = f64::from(cl[c[d] as usize] - cl[g[d] as usize]);
        let noise = rms_diff(&gl, &cl);
        assert!(
            gap <= 4.0 * noise,
            "token {d}: GPU {} vs CPU {} (gap {gap} > 4 x noise {noise})\n GPU {g:?}\n CPU {c:?}",
            g[d],
            c[d]
        );
        eprintln!("artifact: ids diverge at token {d}, a near tie (accepted)");
    }
    // Too many workers for this GPU is refused with the fix.
    let big = tmp.path().join("big");
    let run = mimo_compile(&[
        fixture.to_str().unwrap(),
        "-o",
        big.to_str().unwrap(),
        "--workers",
        &(info.sm_count + 1).to_string(),
        "--no-cubin",
        "--quiet",
    ]);
    assert!(run.status.success());
    let out = mimo(&[
        "generate",
        "--model",
        big.to_str().unwrap(),
        "--prompt-ids",
        "1",
        "--device",
        common::device_flag(&dev),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("recompile with --workers {}", info.sm_count)),
        "{stderr}"
    );
}

#[test]
fn gpu_bench_reports_cuda_timing() {
    let Some(dev) = common::test_device("gpu_bench_reports_cuda_timing") else {
        return;
    };
    let out = mimo_json(&[
        "bench",
        "--device",
        common::device_flag(&dev),
        "--tokens",
        "16",
        "--context",
        "64",
        "--json",
    ]);
    let on_gpu = common::device_flag(&dev) == "cuda";
    assert_eq!(out["backend"], "cuda-megakernel");
    assert_eq!(
        out["timing"],
        if on_gpu {
            "cuda-events"
        } else {
            "emulator-host-clock"
        }
    );
    for key in [
        "ms_per_step",
        "tokens_per_second",
        "bytes_per_step",
        "achieved_gbs",
        "copy_bandwidth_gbs",
        "bandwidth_fraction",
        "host_ms_per_step",
    ] {
        let v = out[key].as_f64().unwrap_or_else(|| panic!("{key}: {out}"));
        assert!(v > 0.0 && v.is_finite(), "{key} = {v}");
    }
    let copy = out["copy_bandwidth_gbs"].as_f64().unwrap();
    assert!(
        !on_gpu || copy > 100.0,
        "copy bandwidth {copy} GB/s is implausible for a GPU"
    );
    eprintln!("{out}");
}

// ---- DFlash on the megakernel ----

const DFLASH_BLOCK: usize = 16;
const DFLASH_CONTEXT: usize = 512;
/// New tokens of the DFlash tests (on the emulator, CI-sized: [`DFLASH_NEW_EMU`]).
const DFLASH_NEW: usize = 256;
const DFLASH_NEW_EMU: usize = 48;

/// The random 3-layer target and 2-layer DFlash draft of the runtime's DFlash tests
/// (`runtime/src/dflash/tests.rs`), in one store.
fn dflash_models() -> (ModelSpec, mimo_ir::model::dflash::DraftSpec, WeightStore) {
    let (target, draft) =
        mimo_runtime::dflash::small_pair(128, DFLASH_CONTEXT, DFLASH_BLOCK, WeightFormat::F32);
    let mut store = mimo_ir::model::random::random_weights(&target, 3).unwrap();
    for (name, w) in mimo_ir::model::dflash::random_draft_weights(&draft, 17)
        .unwrap()
        .iter()
    {
        store.insert(name, w.clone());
    }
    (target, draft, store)
}

fn dflash_request(new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        // Longer than two blocks: the prompt's verify step and the draft's first context run in
        // pieces.
        prompt_ids: (0..37).map(|i| (i * 37 + 5) % 127).collect(),
        max_new_tokens: new_tokens,
        sampling: SamplingParams::default(),
        stop_ids: Vec::new(),
        want_logits: false,
    }
}

fn keep_going(_: u32) -> std::ops::ControlFlow<()> {
    std::ops::ControlFlow::Continue(())
}

/// Greedy speculative decoding on the megakernel (verify programs accepting on the device, the
/// draft's programs sharing the context and weights) equals plain greedy decoding on the
/// megakernel token for token, for a random DFlash draft, a drafter that is always right and one
/// that is always wrong: 256 tokens (48 on the emulator).
#[test]
fn gpu_dflash_speculative_equals_plain_greedy() {
    let Some(dev) = common::test_device("gpu_dflash_speculative_equals_plain_greedy") else {
        return;
    };
    let info = dev.info();
    let (target, draft, store) = dflash_models();
    let opts = compile_opts(info.sm_count.min(8));
    let engine = CudaEngine::from_spec(&dev, target, &store, DFLASH_CONTEXT, opts).unwrap();
    let (mut engine, mut drafter) = dflash::pair(engine, draft, Some(DFLASH_BLOCK)).unwrap();
    let new_tokens = if common::on_emulator(&dev) {
        DFLASH_NEW_EMU
    } else {
        DFLASH_NEW
    };
    let req = dflash_request(new_tokens);
    let plain = generate(&mut engine, &req, keep_going).unwrap().output_ids;
    assert_eq!(plain.len(), new_tokens);
    let sequence: Vec<u32> = req.prompt_ids.iter().chain(&plain).copied().collect();

    let random = speculative_generate(&mut engine, &mut drafter, &req, keep_going).unwrap();
    assert_eq!(random.generation.output_ids, plain, "random DFlash draft");
    eprintln!("random draft: tau {:.2}", random.mean_accept());

    let mut right = ScriptedDrafter::replay(sequence.clone(), DFLASH_BLOCK);
    let replay = speculative_generate(&mut engine, &mut right, &req, keep_going).unwrap();
    assert_eq!(replay.generation.output_ids, plain, "replay drafter");
    // Every block but the last (cut at the length) is accepted whole.
    let steps = replay.accept_lengths.len();
    assert!(
        replay.accept_lengths[..steps - 1]
            .iter()
            .all(|&n| n == DFLASH_BLOCK),
        "{:?}",
        replay.accept_lengths
    );

    let mut wrong = ScriptedDrafter::wrong(sequence, 128, DFLASH_BLOCK);
    let wrong = speculative_generate(&mut engine, &mut wrong, &req, keep_going).unwrap();
    assert_eq!(wrong.generation.output_ids, plain, "always-wrong drafter");
    assert!(wrong.accept_lengths.iter().all(|&n| n == 1));
}

/// A prompt of `len` tokens for `engine`'s model whose last row and the greedy continuation's
/// first `rows - 1` rows are clear of bf16 near ties (`Oracle::clear_of_near_ties`: they route
/// the same in bf16 as in f32 and their greedy choice leads by more than 8 times the bf16 twin's
/// largest logit deviation). So an exact comparison of those rows' choices between the
/// megakernel and an f32 executor is sound. With 4 experts, top 2, random routers, about half the
/// positions of a random sequence are router near ties; the first of a fixed list of prompts
/// clear at these rows is taken.
fn prompt_clear_of_bf16_near_ties(
    engine: &mut dyn Engine,
    store: &WeightStore,
    len: usize,
    rows: usize,
) -> Vec<u32> {
    let spec = engine.spec().clone();
    let vocab = spec.vocab_size;
    let oracle = F32Weights::from_store(store);
    let mut twin = Bf16Twin::new(&spec, store, &oracle, engine.max_context());
    for seed in 0..64 {
        let prompt: Vec<u32> = (0..len)
            .map(|i| ((i * 13 + 7 + seed * 29) % (vocab - 1)) as u32)
            .collect();
        let o = Oracle::new(
            "prompt",
            (&mut *engine, &oracle),
            &mut twin,
            &prompt,
            rows,
            0.0,
        );
        if o.clear_of_near_ties(len - 1) {
            return prompt;
        }
    }
    panic!("no prompt of the 64 tried is clear of bf16 near ties at its last {rows} rows");
}

/// The verify program on the megakernel accepts what the CPU schedule executor's accepts: the
/// same accepted count and committed tokens, and the committed rows' features within bf16
/// tolerance, for a block whose first drafts are right and the rest wrong, and for a shorter
/// block (its own program). The rows compared exactly are clear of router near ties (a near tie
/// routes the row to other experts in bf16 than in f32: a different, equally valid answer).
#[test]
fn gpu_dflash_verify_matches_the_schedule_executor() {
    let Some(dev) = common::test_device("gpu_dflash_verify_matches_the_schedule_executor") else {
        return;
    };
    let info = dev.info();
    let (target, draft, store) = dflash_models();
    let capture = draft.target_layer_ids.clone();
    let opts = compile_opts(info.sm_count.min(8));
    let gpu_engine = CudaEngine::from_spec(&dev, target.clone(), &store, DFLASH_CONTEXT, opts);
    let (mut gpu_engine, _) =
        dflash::pair(gpu_engine.unwrap(), draft.clone(), Some(DFLASH_BLOCK)).unwrap();
    let cpu_engine =
        ScheduleEngine::new(target, F32Weights::from_store(&store), DFLASH_CONTEXT, opts);
    let (mut cpu_engine, _) = dflash::pair(cpu_engine, draft, Some(DFLASH_BLOCK)).unwrap();
    let prompt = prompt_clear_of_bf16_near_ties(&mut cpu_engine, &store, 21, 3);
    let positions: Vec<usize> = (0..prompt.len()).collect();
    let mut greedy = Vec::new();
    for e in [&mut gpu_engine as &mut dyn Engine, &mut cpu_engine] {
        e.set_capture_layers(&capture).unwrap();
        e.reset();
        let step = e.step(&prompt, &positions, false).unwrap();
        greedy.push(*step.next_ids.last().unwrap());
    }
    assert_eq!(greedy[0], greedy[1], "the prompt's greedy choice");
    // Feed the target's own choices for the first drafts, then wrong ones.
    let start = prompt.len();
    let mut block = vec![greedy[0]];
    // The target's choice after it (the block rewrites this position's cache row).
    let right = cpu_engine
        .step(&[greedy[0]], &[start], false)
        .unwrap()
        .next_ids[0];
    block.push(right);
    block.extend((2..DFLASH_BLOCK).map(|i| ((i * 31) % 127) as u32));
    let width = capture.len() * 64;
    for len in [DFLASH_BLOCK, 5] {
        let b = &block[..len];
        let pos: Vec<usize> = (start..start + len).collect();
        let want = cpu_engine.verify_greedy(b, &pos, true).unwrap().unwrap();
        let got = gpu_engine.verify_greedy(b, &pos, true).unwrap().unwrap();
        assert!(want.accepted >= 1, "{want:?}");
        assert_eq!(got.accepted, want.accepted, "block of {len}");
        assert_eq!(got.committed, want.committed, "block of {len}");
        let (gf, wf) = (got.features.unwrap(), want.features.unwrap());
        assert_eq!(gf.len(), (want.accepted + 1) * width);
        let err = rel_l2(&gf, &wf);
        assert!(err < 2e-2, "block of {len}: features rel err {err}");
        let err = rel_l2(&got.logits.unwrap(), &want.logits.unwrap());
        assert!(err < 2e-2, "block of {len}: logits rel err {err}");
    }
}
