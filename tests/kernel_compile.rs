//! Every generated kernel compiles with NVRTC 13.0 for sm_90a with no local-memory spills: the
//! kernels of the tiny fixtures (f32 and MXFP4 experts; every distinct kernel source once) and of
//! the full Qwen3-30B-A3B shape. Needs NVRTC on the library path (`eval "$(.ci/install-cuda-tools)"`);
//! skipped without it unless MIMO_REQUIRE_NVRTC=1 (as in CI), where its absence fails.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{hf_fixtures, mimo_compile, model_toml};

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
