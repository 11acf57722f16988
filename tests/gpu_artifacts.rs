//! `mimo-compile` of a model, then `mimo generate --model ARTIFACT --device emu --json --logits`
//! (`--device cuda` with `MIMO_GPU_TESTS=1`): the megakernel through the command line, from the
//! artifact's own schedule and kernel, against the reference interpreter at bf16 tolerance
//! (`common::parity`: 64 greedy ids equal, or first differing at a near tie; the logits each was
//! chosen from within the bf16 bound):
//! - every HF fixture, expert formats f32 / bf16 / MXFP4 / NVFP4 and dense f32 / bf16 in
//!   rotation, 1 to 8 workers;
//! - a DFlash artifact (target, verify and draft programs): speculative decoding on the device
//!   gives the ids of plain decoding on the device, and those match the interpreter.

mod common;

use std::path::Path;

use common::parity::{Bf16Twin, MODEL_TOLERANCE, Oracle, check_greedy_run};
use common::{
    compile_artifact, hf_fixtures, ids, mimo_compile, mimo_json, model_toml, read_json, write_draft,
};
use mimo::random_checkpoint::{RandomOptions, write_random_checkpoint};
use mimo_ir::formats::WeightFormat;
use mimo_ir::interp::F32Weights;
use mimo_runtime::engine::CpuEngine;
use mimo_runtime::load_model;

const NEW_TOKENS: usize = 64;

fn compile(model: &Path, out: &Path, workers: usize, max_context: usize) {
    let (workers, max_context) = (workers.to_string(), max_context.to_string());
    compile_artifact(
        model,
        out,
        &["--workers", &workers, "--max-context", &max_context],
    );
}

/// `mimo generate` of `n` greedy tokens on `device`, as JSON.
fn generate(model: &Path, device: &str, prompt: &[u32], n: usize) -> serde_json::Value {
    let prompt: Vec<String> = prompt.iter().map(u32::to_string).collect();
    mimo_json(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--max-new-tokens",
        &n.to_string(),
        "--ignore-eos",
        "--device",
        device,
        "--json",
        "--logits",
    ])
}

fn logits_rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    common::rows(v)
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as f32).collect())
        .collect()
}

/// `out` (a `mimo generate --json --logits` run of `model`) against the interpreter.
fn check_against_the_interpreter(
    label: &str,
    model: &Path,
    prompt: &[u32],
    out: &serde_json::Value,
) {
    let loaded = load_model(model, &|_, _| {}).unwrap();
    let ctx = (prompt.len() + NEW_TOKENS).next_multiple_of(64);
    let dequantised = F32Weights::from_store(&loaded.weights);
    let mut twin = Bf16Twin::new(&loaded.spec, &loaded.weights, &dequantised, ctx);
    let mut cpu = CpuEngine::new(loaded.spec.clone(), dequantised.clone(), ctx);
    let oracle = Oracle::new(
        label,
        (&mut cpu, &dequantised),
        &mut twin,
        prompt,
        NEW_TOKENS,
        MODEL_TOLERANCE,
    );
    let got: Vec<u32> = ids(&out["output_ids"]).iter().map(|&x| x as u32).collect();
    check_greedy_run(oracle, &got, &logits_rows(&out["logits"]));
}

#[test]
fn gpu_fixture_artifacts_generate_like_the_interpreter() {
    let Some(dev) = common::test_device("gpu_fixture_artifacts_generate_like_the_interpreter")
    else {
        return;
    };
    let device = common::device_flag(&dev);
    drop(dev);
    let formats = [
        ("mxfp4", "bf16"),
        ("nvfp4", "f32"),
        ("f32", "bf16"),
        ("bf16", "f32"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, fixture) in hf_fixtures().into_iter().enumerate() {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        let (experts, dense) = formats[i % formats.len()];
        let workers = i % 8 + 1;
        let expected = read_json(&fixture.join("expected.json"));
        let prompt: Vec<u32> = ids(&expected["prompt_ids"])
            .iter()
            .map(|&x| x as u32)
            .collect();
        let toml = model_toml(tmp.path(), &name, &fixture, experts, dense);
        let art = tmp.path().join(format!("{name}.art"));
        compile(&toml, &art, workers, prompt.len() + NEW_TOKENS);
        let out = generate(&art, device, &prompt, NEW_TOKENS);
        let ran_on = out["device"].as_str().unwrap_or_default();
        assert!(ran_on.contains(device), "{name}: ran on {ran_on}");
        let label =
            format!("{name} ({experts} experts, {dense} dense, {workers} workers, {device})");
        check_against_the_interpreter(&label, &toml, &prompt, &out);
    }
}

#[test]
fn gpu_a_dflash_artifact_is_lossless_and_matches_the_interpreter() {
    let Some(dev) =
        common::test_device("gpu_a_dflash_artifact_is_lossless_and_matches_the_interpreter")
    else {
        return;
    };
    let device = common::device_flag(&dev);
    drop(dev);
    let tmp = tempfile::tempdir().unwrap();
    let (target, draft) = mimo_runtime::dflash::small_pair(256, 256, 8, WeightFormat::Bf16);
    let target_dir = tmp.path().join("target");
    let opts = RandomOptions {
        seed: 7,
        mxfp4_experts: true,
    };
    write_random_checkpoint(&target, &target_dir, opts, &|_, _| {}).unwrap();
    write_draft(&tmp.path().join("draft"), &draft, 256);
    let toml = tmp.path().join("model.toml");
    std::fs::write(
        &toml,
        "[model]\npath = \"target\"\n\n[speculative]\nmethod = \"dflash\"\ndraft = \"draft\"\nblock_size = 8\n",
    )
    .unwrap();
    let prompt: Vec<u32> = (0..21).map(|i| (i * 53 + 9) % 250).collect();
    let ctx = prompt.len() + NEW_TOKENS;
    let (plain_art, spec_art) = (tmp.path().join("plain"), tmp.path().join("dflash"));
    compile(&target_dir, &plain_art, 3, ctx);
    compile(&toml, &spec_art, 5, ctx);
    let plain = generate(&plain_art, device, &prompt, NEW_TOKENS);
    let speculative = generate(&spec_art, device, &prompt, NEW_TOKENS);
    assert_eq!(
        ids(&speculative["output_ids"]),
        ids(&plain["output_ids"]),
        "speculative decoding on {device} differs from plain decoding there"
    );
    let lengths = ids(&speculative["accept_lengths"]);
    assert_eq!(lengths.iter().sum::<u64>() as usize, NEW_TOKENS - 1);
    assert!(lengths.iter().all(|&a| (1..=8).contains(&a)), "{lengths:?}");
    eprintln!(
        "dflash on {device}: mean accept {:.2} over {} steps",
        speculative["mean_accept"].as_f64().unwrap_or(0.0),
        lengths.len()
    );
    let label = format!("dflash target (mxfp4 experts, 3 workers, {device})");
    check_against_the_interpreter(&label, &target_dir, &prompt, &plain);
}

/// The README's emulator commands, as written there (the emulator whatever `MIMO_GPU_TESTS`
/// says): compile a 2-layer fixture, decode 12 tokens on the emulator, bench the built-in model.
#[test]
fn the_readme_emulator_commands_run() {
    let tmp = tempfile::tempdir().unwrap();
    let art = tmp.path().join("qwen3-a");
    let fixture = common::hf_fixtures()
        .into_iter()
        .find(|f| f.ends_with("qwen3_moe_a"))
        .unwrap();
    let run = mimo_compile(&[
        fixture.to_str().unwrap(),
        "-o",
        art.to_str().unwrap(),
        "--workers",
        "4",
        "--no-cubin",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let started = std::time::Instant::now();
    let run = common::mimo(&[
        "generate",
        "--model",
        art.to_str().unwrap(),
        "--device",
        "emu",
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "12",
    ]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // The fixture's tokenizer prints text; the statistics line counts the tokens.
    assert!(!run.stdout.is_empty(), "no text printed: {stderr}");
    assert!(
        stderr.contains("12 tokens,") && stderr.contains("emu (the device emulator"),
        "{stderr}"
    );
    eprintln!(
        "the emulator decoded 12 tokens of qwen3_moe_a (2 layers, 4 workers) in {:.1} s (the whole command)",
        took.as_secs_f64()
    );
    let bench = common::mimo_json(&[
        "bench",
        "--device",
        "emu",
        "--tokens",
        "8",
        "--warmup",
        "2",
        "--context",
        "32",
        "--json",
    ]);
    assert_eq!(bench["timing"], "emulator-host-clock", "{bench}");
    let weights = bench["weights_read_ratio"].as_f64().unwrap();
    assert!(weights > 0.5, "{bench}");
    eprintln!(
        "bench --device emu: weights read {weights:.2}x report.md's count, KV {:.2}x",
        bench["kv_read_ratio"].as_f64().unwrap()
    );
}
