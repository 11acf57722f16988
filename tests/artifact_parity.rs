//! `mimo-compile` then `mimo generate --model ARTIFACT --device cpu`: the compiled schedule, run
//! task by task on the CPU schedule executor, matches Hugging Face exactly as the reference
//! interpreter must (greedy ids equal, logits within relative L2 1e-4), for f32 and MXFP4 experts.

mod common;

use std::path::Path;

use common::{check_against_hf, compile_artifact, hf_fixtures, mimo, model_toml};

fn compile(model: &Path, out: &Path, workers: &str) {
    compile_artifact(model, out, &["--workers", workers]);
    for file in [
        "manifest.toml",
        "decode.graph.json",
        "decode.fused.json",
        "decode.schedule.json",
        "kernel.cu",
        "report.md",
    ] {
        assert!(out.join(file).is_file(), "{} lacks {file}", out.display());
    }
}

#[test]
fn compiled_artifacts_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, fixture) in hf_fixtures().into_iter().enumerate() {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        // Vary the worker count: the schedule must not change the result.
        let workers = ["3", "8", "5"][i % 3];
        let f32_art = tmp.path().join(format!("{name}.f32"));
        compile(&fixture, &f32_art, workers);
        check_against_hf(&fixture, &f32_art, "expected.json");

        let toml = model_toml(tmp.path(), &name, &fixture, "mxfp4", "f32");
        let mx_art = tmp.path().join(format!("{name}.mxfp4"));
        compile(&toml, &mx_art, workers);
        check_against_hf(&fixture, &mx_art, "expected_mxfp4.json");
    }
}

#[test]
fn a_stale_artifact_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = &common::hf_fixture("qwen3_moe_a");
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    let art = tmp.path().join("art");
    compile(&model, &art, "4");
    // The model changes after compilation: its rms_norm_eps, say.
    let config = model.join("config.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    doc["rms_norm_eps"] = serde_json::json!(doc["rms_norm_eps"].as_f64().unwrap() * 2.0);
    std::fs::write(&config, doc.to_string()).unwrap();
    let out = mimo(&[
        "generate",
        "--model",
        art.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stale artifact"), "{err}");
}

#[test]
fn architecture_only_models_compile_but_do_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/models/qwen3-30b-a3b.toml");
    let art = tmp.path().join("qwen3-30b");
    compile(&toml, &art, "132");
    let report = std::fs::read_to_string(art.join("report.md")).unwrap();
    assert!(report.contains("| **total** | **3523.215** |"), "{report}");
    let out = mimo(&[
        "generate",
        "--model",
        art.to_str().unwrap(),
        "--prompt-ids",
        "1",
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no weights"), "{err}");
}
