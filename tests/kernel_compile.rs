//! Every generated kernel compiles with NVRTC 13.0 for sm_90a with no local-memory spills: the
//! kernels of the tiny fixtures (f32 and MXFP4 experts; every distinct kernel source once) and of
//! the full Qwen3-30B-A3B shape, and the DFlash verify and draft kernels of both. Needs NVRTC on the library path (`eval "$(.ci/install-cuda-tools)"`);
//! skipped without it unless MIMO_REQUIRE_NVRTC=1 (as in CI), where its absence fails.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{hf_fixtures, mimo_compile, model_toml};
use mimo_ir::model::dflash::{DraftSpec, default_target_layer_ids, draft_graph, verify_graph};
use mimo_ir::{Architecture, ModelSpec};

fn nvrtc_required() -> bool {
    std::env::var("MIMO_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// Compiles `model` to `out` with NVRTC; returns the report, or None when NVRTC is absent (and
/// not required).
fn compile_with_nvrtc(model: &Path, out: &Path) -> Option<String> {
    let run = mimo_compile(&[
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--workers",
        "16",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "mimo-compile {}: {stderr}",
        model.display()
    );
    if !out.join("kernel.sm_90a.cubin").is_file() {
        assert!(
            !nvrtc_required(),
            "MIMO_REQUIRE_NVRTC=1 but no CUBIN was written: {stderr}"
        );
        eprintln!("skipping: NVRTC is not available ({stderr})");
        return None;
    }
    let cubin = std::fs::read(out.join("kernel.sm_90a.cubin")).unwrap();
    assert_eq!(
        &cubin[..4],
        b"\x7fELF",
        "{}: not an ELF CUBIN",
        out.display()
    );
    Some(std::fs::read_to_string(out.join("report.md")).unwrap())
}

/// The rows of report.md's resource table: (function, stack, spill stores, spill loads).
fn resource_rows(report: &str) -> Vec<(String, u64, u64, u64)> {
    let table = report
        .split("## Kernel resources")
        .nth(1)
        .expect("report.md has a resource table");
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let n = |i: usize| {
                cells[i]
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("cell {i} of {l}"))
            };
            (cells[1].trim_matches('`').to_string(), n(3), n(4), n(5))
        })
        .collect()
}

fn assert_no_spills(report: &str, what: &str) {
    let rows = resource_rows(report);
    let functions: BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for op in [
        "run_embed",
        "run_norm_matmul",
        "run_kv_append",
        "run_attention_partial",
        "run_oproj_residual",
        "run_expert_gate_up",
        "run_expert_down",
        "run_lm_head",
        "run_argmax_combine",
    ] {
        assert!(
            functions.iter().any(|f| f.ends_with(op)),
            "{what}: no resource row for {op}: {functions:?}"
        );
    }
    for (f, _, stores, loads) in &rows {
        assert_eq!((*stores, *loads), (0, 0), "{what}: {f} spills");
    }
}

#[test]
fn fixture_kernels_compile_for_sm_90a_without_spills() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sources = BTreeSet::new();
    for fixture in hf_fixtures() {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        let toml = model_toml(tmp.path(), &name, &fixture, "mxfp4", "bf16");
        for (model, tag) in [(fixture.clone(), "f32"), (toml, "mxfp4")] {
            // Kernels differ only by their generated header; compile each distinct source once.
            let probe: PathBuf = tmp.path().join(format!("{name}.{tag}.probe"));
            let run = mimo_compile(&[
                model.to_str().unwrap(),
                "-o",
                probe.to_str().unwrap(),
                "--workers",
                "16",
                "--no-cubin",
                "--quiet",
            ]);
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            if !sources.insert(std::fs::read_to_string(probe.join("kernel.cu")).unwrap()) {
                continue;
            }
            let Some(report) =
                compile_with_nvrtc(&model, &tmp.path().join(format!("{name}.{tag}")))
            else {
                return;
            };
            assert_no_spills(&report, &format!("{name} ({tag})"));
        }
    }
}

#[test]
fn full_qwen3_30b_kernel_compiles_for_sm_90a_without_spills() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/models/qwen3-30b-a3b.toml");
    let Some(report) = compile_with_nvrtc(&toml, &tmp.path().join("qwen3-30b")) else {
        return;
    };
    assert_no_spills(&report, "qwen3-30b-a3b");
    assert!(
        report.contains("Bandwidth roofline at 3000 GB/s: **1174.4 us per step**"),
        "{report}"
    );
}

/// (name, target, draft): the tiny test model (its two layers captured, as the DFlash tests do)
/// and Qwen3-30B-A3B's shape (MXFP4 experts, bf16 elsewhere) with a 5-layer bf16 draft of the
/// reference's default target layers.
fn dflash_models() -> Vec<(&'static str, ModelSpec, DraftSpec)> {
    let draft_for = |target: &ModelSpec, intermediate: usize, ids: Vec<usize>| DraftSpec {
        hidden_size: target.hidden_size,
        num_layers: 5,
        num_heads: target.num_heads,
        num_kv_heads: target.num_kv_heads,
        head_dim: target.head_dim,
        intermediate_size: intermediate,
        rope_theta: target.rope_theta,
        rms_norm_eps: target.rms_norm_eps,
        max_position_embeddings: target.max_position_embeddings,
        block_size: DFLASH_BLOCK,
        target_layer_ids: ids,
        mask_token_id: (target.vocab_size - 1) as u32,
        num_target_layers: Some(target.num_layers),
        format: target.formats.dense,
    };
    let tiny = ModelSpec::tiny(Architecture::Qwen3Moe);
    let tiny_draft = draft_for(&tiny, 48, vec![1, 0]);
    let big = ModelSpec::qwen3_30b_a3b();
    let big_draft = draft_for(&big, 6144, default_target_layer_ids(big.num_layers, 5));
    vec![
        ("tiny", tiny, tiny_draft),
        ("qwen3-30b-a3b", big, big_draft),
    ]
}

const DFLASH_BLOCK: usize = 16;

/// The DFlash verify program (T = 16, 5 captured layers for Qwen3-30B-A3B) and draft program
/// (B = 16 block rows, C = 16 context rows) generate kernels with a template for every fused op,
/// and those compile with NVRTC for sm_90a without spills.
#[test]
fn dflash_verify_and_draft_kernels_compile_for_sm_90a_without_spills() {
    use mimo_compiler::fuse::FusedKind;
    use mimo_compiler::{CompileOptions, Machine, abi, codegen, nvrtc, resources};

    let tmp = tempfile::tempdir().unwrap();
    let mut sources: Vec<(String, String)> = Vec::new();
    for (model, target, draft) in dflash_models() {
        let (max_context, workers) = if model == "tiny" {
            (128, 16)
        } else {
            (4096, 132)
        };
        let graphs = [
            (
                "verify",
                verify_graph(&target, DFLASH_BLOCK, max_context, &draft.target_layer_ids).unwrap(),
            ),
            (
                "draft",
                draft_graph(&draft, &target, DFLASH_BLOCK, 16, max_context).unwrap(),
            ),
        ];
        for (what, graph) in graphs {
            let machine = Machine {
                workers,
                ..Machine::h100()
            };
            let program = mimo_compiler::compile(&graph, &CompileOptions::for_machine(machine))
                .unwrap_or_else(|e| panic!("{model} {what}: {e}"));
            let generic: Vec<&str> = program
                .ops
                .iter()
                .filter(|o| o.kind == FusedKind::Generic)
                .map(|o| o.name.as_str())
                .collect();
            assert!(
                generic.is_empty(),
                "{model} {what}: no template for {generic:?}"
            );
            abi::encode(&program).unwrap_or_else(|e| panic!("{model} {what}: {e}"));
            let header = codegen::generated_header(&target, &program);
            assert!(header.contains("#define MIMO_TOKENS 16"), "{header}");
            let source = codegen::kernel_source(codegen::TEMPLATES, &header).unwrap();
            if !sources.iter().any(|(_, s)| *s == source) {
                sources.push((format!("{model} {what}"), source));
            }
        }
    }
    if !nvrtc::nvrtc_available() {
        assert!(
            !nvrtc_required(),
            "MIMO_REQUIRE_NVRTC=1 but NVRTC is not available"
        );
        eprintln!("skipping the NVRTC compile: NVRTC is not available");
        return;
    }
    for (i, (what, source)) in sources.iter().enumerate() {
        let compiled = nvrtc::compile_cubin(source, "kernel.cu", &nvrtc::CompileOptions::default())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut rows = compiled.resources.clone();
        // Registers come from cuobjdump, when it is at hand (ptxas reports them for the kernel).
        if resources::cuobjdump_program().is_ok() {
            let path = tmp.path().join(format!("dflash{i}.cubin"));
            std::fs::write(&path, &compiled.cubin).unwrap();
            for d in resources::cuobjdump_res_usage(&path).unwrap() {
                if let Some(f) = rows.iter_mut().find(|f| f.function == d.function) {
                    f.registers = d.registers;
                }
            }
        }
        for op in [
            "run_dense_gate_up",
            "run_matmul_residual",
            "run_dense_projection",
            "run_concat",
            "run_accept",
        ] {
            assert!(
                rows.iter()
                    .any(|r| resources::short_name(&r.function).ends_with(op)),
                "{what}: no resource row for {op}"
            );
        }
        for r in &rows {
            eprintln!(
                "{what}: {} registers={} stack={} spill stores={} loads={}",
                resources::short_name(&r.function),
                r.registers,
                r.stack_bytes,
                r.spill_stores,
                r.spill_loads
            );
        }
        let spills: Vec<String> = rows
            .iter()
            .filter(|r| r.spills())
            .map(|r| resources::short_name(&r.function))
            .collect();
        assert!(spills.is_empty(), "{what}: spills in {spills:?}");
    }
}

/// The fusion that gives the DFlash programs their templates (gate and up projections sharing
/// their units under a `silu_mul` epilogue, the new kinds) keeps their meaning: the tiny verify
/// and draft programs on the CPU schedule executor equal the reference interpreter. (Without a
/// GPU this is what can be checked of them; the device functions themselves are unverified.)
#[test]
fn dflash_programs_on_the_schedule_executor_match_the_interpreter() {
    use mimo_compiler::{CompileOptions, Machine};
    use mimo_ir::interp::{self, F32Weights, StateStore};
    use mimo_ir::model::dflash::random_draft_weights;
    use mimo_ir::model::random::random_weights;
    use mimo_ir::{Tensor, TensorData};
    use mimo_runtime::exec::ScheduleExecutor;

    let (_, target, draft) = dflash_models().remove(0);
    let mut store = random_weights(&target, 5).unwrap();
    for (name, w) in random_draft_weights(&draft, 9).unwrap().iter() {
        store.insert(name, w.clone());
    }
    let weights = F32Weights::from_store(&store);
    let ids = |v: Vec<i32>| Tensor::from_i32([v.len()], v);
    let b = DFLASH_BLOCK as i32;
    let block: Vec<i32> = (0..b).map(|i| (i * 37 + 11) % 97).collect();
    let context = Tensor::from_f32(
        [16, draft.feature_dim()],
        (0..16 * draft.feature_dim())
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect(),
    );
    let cases = [
        (
            "verify",
            verify_graph(&target, DFLASH_BLOCK, 64, &draft.target_layer_ids).unwrap(),
            vec![
                ("token_ids", ids(block.clone())),
                ("positions", ids((0..b).collect())),
            ],
            vec!["logits", "next_ids", "features", "accepted", "committed"],
        ),
        (
            "draft",
            draft_graph(&draft, &target, DFLASH_BLOCK, 16, 64).unwrap(),
            vec![
                ("token_ids", ids(block)),
                ("positions", ids((16..16 + b).collect())),
                ("context", context),
                ("kv_positions", ids((0..16 + b).collect())),
                ("attn_positions", ids(vec![16 + b - 1; DFLASH_BLOCK])),
            ],
            vec!["logits", "draft_ids"],
        ),
    ];
    for (what, graph, inputs, outputs) in cases {
        let want = interp::run(&graph, &weights, &mut StateStore::new(), &inputs).unwrap();
        for workers in [1, 3, 8] {
            let opts = CompileOptions {
                min_task_bytes: 512.0,
                ..CompileOptions::for_machine(Machine {
                    workers,
                    ..Machine::h100()
                })
            };
            let program = mimo_compiler::compile(&graph, &opts).unwrap();
            let mut exec = ScheduleExecutor::new(program, weights.clone()).unwrap();
            let got = exec.run_step(&inputs, &outputs).unwrap();
            for name in &outputs {
                let (g, w) = (&got[*name], &want[*name]);
                assert_eq!(g.shape, w.shape, "{what} {name}");
                match (&g.data, &w.data) {
                    (TensorData::F32(g), TensorData::F32(w)) => {
                        let err = g
                            .iter()
                            .zip(w)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f32>()
                            .sqrt()
                            / w.iter().map(|b| b * b).sum::<f32>().sqrt();
                        assert!(err < 1e-5, "{what} {name} workers {workers}: {err}");
                    }
                    _ => assert_eq!(g, w, "{what} {name} workers {workers}"),
                }
            }
        }
    }
}
