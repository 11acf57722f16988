//! DFlash speculative decoding end to end: the draft's forward pass against the Python reference
//! of `tests/fixtures/dflash/` (written from the DFlash paper), and `mimo generate --draft` /
//! `[speculative]` giving exactly the tokens of plain greedy decoding, on the reference
//! interpreter and, for artifacts `mimo-compile` wrote, on the CPU schedule executor.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{ids, mimo, mimo_json, read_json, rel_l2, rows, write_draft};
use mimo::random_checkpoint::{RandomOptions, write_random_checkpoint};
use mimo_ir::formats::WeightFormat;
use mimo_ir::interp::F32Weights;
use mimo_ir::model::dflash::DraftSpec;
use mimo_runtime::dflash::{DFlashDrafter, DraftContext};
use mimo_runtime::draft::load_draft;
use mimo_runtime::engine::{CpuEngine, Engine};
use mimo_runtime::load_model;
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dflash")
}

fn flat(v: &serde_json::Value) -> Vec<f64> {
    rows(v).concat()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn draft_forward_matches_the_python_reference() {
    let dir = fixtures();
    let expected = read_json(&dir.join("expected.json"));
    let target = load_model(&dir.join("../hf/qwen3_moe_a"), &|_, _| {}).unwrap();
    let draft = load_draft(&dir.join("qwen3_moe_a_draft"), &target.spec).unwrap();
    assert_eq!(draft.spec.target_layer_ids, [1, 0]);
    assert_eq!((draft.spec.block_size, draft.spec.mask_token_id), (8, 300));
    let mut store = target.weights;
    for (name, w) in draft.weights.iter() {
        store.insert(name, w.clone());
    }
    let weights = Arc::new(F32Weights::from_store(&store));
    let mut engine = CpuEngine::with_shared_weights(target.spec.clone(), weights.clone(), 256);
    let mut drafter =
        DFlashDrafter::new(draft.spec.clone(), &target.spec, weights, 256, None).unwrap();
    engine
        .set_capture_layers(&draft.spec.target_layer_ids)
        .unwrap();

    // The target's captured features of the prompt equal HF's hidden_states[id + 1].
    let prompt: Vec<u32> = ids(&expected["prompt_ids"])
        .iter()
        .map(|&t| t as u32)
        .collect();
    let n = prompt.len();
    let positions: Vec<usize> = (0..n).collect();
    let step = engine.step(&prompt, &positions, false).unwrap();
    let features = step.features.unwrap();
    let err = rel_l2(&f64s(&features), &flat(&expected["prompt_features"]));
    assert!(err <= 1e-4, "prompt features: rel L2 {err:.2e}");

    let steps = expected["steps"].as_array().unwrap();
    let check = |drafter: &mut DFlashDrafter, step: &serde_json::Value, features: &[f32]| {
        let tokens: Vec<u32> = ids(&step["tokens"]).iter().map(|&t| t as u32).collect();
        let ctx = DraftContext {
            tokens: &tokens,
            features,
            count: 7,
        };
        let (drafts, logits) = drafter.propose_with_logits(&ctx).unwrap();
        let err = rel_l2(&f64s(&logits), &flat(&step["draft_logits"]));
        assert!(err <= 1e-4, "draft logits: rel L2 {err:.2e}");
        let want: Vec<u32> = ids(&step["draft_ids"]).iter().map(|&t| t as u32).collect();
        assert_eq!(drafts, want);
        drafts
    };
    // Step 1: the prompt is the context.
    let drafts = check(&mut drafter, &steps[0], &features);
    // Step 2: the target verified the block and accepted two drafts; the three committed rows
    // (captured by the target's verify step) are the new context, on top of the draft's cache.
    let first = ids(&steps[0]["tokens"])[n] as u32;
    let verified = [first, drafts[0], drafts[1]];
    let positions: Vec<usize> = (n..n + 3).collect();
    let step = engine.step(&verified, &positions, false).unwrap();
    let features = step.features.unwrap();
    let err = rel_l2(&f64s(&features), &flat(&expected["step2_context_features"]));
    assert!(err <= 1e-4, "verify features: rel L2 {err:.2e}");
    check(&mut drafter, &steps[1], &features);
}

/// A random two-layer DFlash draft for the built-in model, written as a Hugging Face checkpoint
/// (bf16, z-lab's tensor names and config layout).
fn write_builtin_draft(dir: &Path) {
    let spec = DraftSpec {
        hidden_size: 256,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        intermediate_size: 256,
        rope_theta: 1e6,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 4096,
        block_size: 16,
        target_layer_ids: vec![1, 2],
        mask_token_id: 297,
        num_target_layers: Some(4),
        format: mimo_ir::formats::WeightFormat::Bf16,
    };
    write_draft(dir, &spec, 300);
}

fn generate_args<'a>(extra: &[&'a str], new: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "generate",
        "--prompt-ids",
        "12,40,7,199,64,3,88",
        "--max-new-tokens",
        new,
        "--ignore-eos",
        "--device",
        "cpu",
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn cli_greedy_with_a_random_draft_equals_plain_decoding_for_256_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let draft = tmp.path().join("draft");
    write_builtin_draft(&draft);
    let plain = mimo_json(&generate_args(&[], "256"));
    let d = draft.to_str().unwrap();
    let spec = mimo_json(&generate_args(&["--draft", d, "--block-size", "8"], "256"));
    assert_eq!(ids(&spec["output_ids"]), ids(&plain["output_ids"]));
    assert_eq!(ids(&plain["output_ids"]).len(), 256);
    let lengths = ids(&spec["accept_lengths"]);
    assert_eq!(lengths.iter().sum::<u64>(), 255);
    assert!(lengths.iter().all(|&a| (1..=8).contains(&a)), "{lengths:?}");
    let mean = spec["mean_accept"].as_f64().unwrap();
    assert!((mean - 255.0 / lengths.len() as f64).abs() < 1e-9);
    assert!(plain.get("accept_lengths").is_none());
}

#[test]
fn cli_model_toml_speculative_section_is_lossless() {
    let dir = fixtures();
    let hf = read_json(&dir.join("../hf/qwen3_moe_a/expected.json"));
    let prompt: Vec<String> = ids(&hf["prompt_ids"]).iter().map(u64::to_string).collect();
    let prompt = prompt.join(",");
    let run = |model: &Path| {
        mimo_json(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-ids",
            &prompt,
            "--max-new-tokens",
            "200",
            "--ignore-eos",
            "--device",
            "cpu",
            "--json",
            "--logits",
        ])
    };
    let plain = run(&dir.join("../hf/qwen3_moe_a"));
    let spec = run(&dir.join("model.toml"));
    let got = ids(&spec["output_ids"]);
    assert_eq!(got, ids(&plain["output_ids"]));
    assert_eq!(got[..16], ids(&hf["greedy_ids"])[..]);
    assert_eq!(rows(&spec["logits"]), rows(&plain["logits"]));
    let lengths = ids(&spec["accept_lengths"]);
    assert_eq!(lengths.iter().sum::<u64>(), 199);
    assert!(lengths.iter().all(|&a| (1..=4).contains(&a)), "{lengths:?}");
}

#[test]
fn cli_sampling_with_a_draft_is_seeded() {
    let dir = fixtures();
    let model = dir.join("model.toml");
    let run = |seed: &str| {
        let args = [
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "24",
            "--temperature",
            "0.9",
            "--seed",
            seed,
            "--device",
            "cpu",
            "--json",
            "--ignore-eos",
        ];
        ids(&mimo_json(&args)["output_ids"])
    };
    assert_eq!(run("3"), run("3"));
    assert_ne!(run("3"), run("4"));
}

fn fails_with(args: &[&str], want: &str) {
    let out = mimo(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(want),
        "{args:?}: {stderr}\n  should contain: {want}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn cli_bad_drafts_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(
        &generate_args(&["--block-size", "4"], "4"),
        "--block-size needs a draft",
    );
    // A draft for another target: its hidden size does not match the built-in model's.
    let other = fixtures().join("qwen3_moe_a_draft");
    fails_with(
        &generate_args(&["--draft", other.to_str().unwrap()], "4"),
        "config.json: does not fit the target model: hidden_size 64 differs from the target's 256",
    );
    // A missing tensor is named.
    let draft = tmp.path().join("draft");
    write_builtin_draft(&draft);
    let path = draft.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "layers.1.mlp.down_proj.weight")
        .collect();
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(draft.join("config.json"), broken.join("config.json")).unwrap();
    safetensors::serialize_to_file(kept, None, &broken.join("model.safetensors")).unwrap();
    fails_with(
        &generate_args(&["--draft", broken.to_str().unwrap()], "4"),
        "missing tensor `layers.1.mlp.down_proj.weight`",
    );
    // An unsupported draft variant is refused by field.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(draft.join("config.json")).unwrap()).unwrap();
    config["layer_types"] = json!(["sliding_attention", "sliding_attention"]);
    std::fs::write(broken.join("config.json"), config.to_string()).unwrap();
    fails_with(
        &generate_args(&["--draft", broken.to_str().unwrap()], "4"),
        "field `layer_types`: unsupported",
    );
}

/// A random Qwen3-MoE target with room for 256 new tokens (bf16), a random two-layer draft for
/// it, and a model.toml naming both with a block of 8. Returns (target dir, model.toml).
fn write_long_model(dir: &Path) -> (PathBuf, PathBuf) {
    let (target, draft) = mimo_runtime::dflash::small_pair(256, 1024, 16, WeightFormat::Bf16);
    let target_dir = dir.join("target");
    let opts = RandomOptions {
        seed: 7,
        mxfp4_experts: false,
    };
    write_random_checkpoint(&target, &target_dir, opts, &|_, _| {}).unwrap();
    write_draft(&dir.join("draft"), &draft, 256);
    let toml = dir.join("model.toml");
    let text = "[model]\npath = \"target\"\n\n[speculative]\nmethod = \"dflash\"\ndraft = \"draft\"\nblock_size = 8\n";
    std::fs::write(&toml, text).unwrap();
    (target_dir, toml)
}

fn compile_artifact(model: &Path, out: &Path) {
    common::compile_artifact(model, out, &["--workers", "3"]);
}

fn model_args<'a>(model: &'a Path, prompt: &'a str, new: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        prompt,
        "--max-new-tokens",
        new,
        "--ignore-eos",
        "--device",
        "cpu",
        "--json",
    ]
}

#[test]
fn compiled_artifact_with_a_draft_is_lossless_for_256_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let (target, toml) = write_long_model(tmp.path());
    let art = tmp.path().join("art");
    compile_artifact(&toml, &art);
    let manifest = std::fs::read_to_string(art.join("manifest.toml")).unwrap();
    for g in ["decode", "verify", "draft"] {
        assert!(manifest.contains(&format!("name = \"{g}\"")), "{manifest}");
        for part in ["graph", "fused", "schedule"] {
            assert!(art.join(format!("{g}.{part}.json")).is_file(), "{g}.{part}");
        }
    }
    assert!(manifest.contains("capture_layers = [0, 2]"), "{manifest}");
    let report = std::fs::read_to_string(art.join("report.md")).unwrap();
    assert!(
        report.contains("## Graph `verify` (8 token(s) per step)"),
        "{report}"
    );
    assert!(report.contains("## Graph `draft`"), "{report}");

    // A prompt of 21 tokens: more than two blocks, so it runs in pieces.
    let prompt: Vec<String> = (0..21).map(|i| ((i * 53 + 9) % 250).to_string()).collect();
    let prompt = prompt.join(",");
    let plain = mimo_json(&model_args(&target, &prompt, "256"));
    let want = ids(&plain["output_ids"]);
    assert_eq!(want.len(), 256);
    let distinct: std::collections::BTreeSet<_> = want.iter().collect();
    assert!(distinct.len() > 16, "a degenerate test model: {want:?}");
    assert!(plain.get("accept_lengths").is_none());
    // The model.toml's [speculative] on the interpreter, then the artifact on the executor.
    for model in [&toml, &art] {
        let got = mimo_json(&model_args(model, &prompt, "256"));
        assert_eq!(ids(&got["output_ids"]), want, "{}", model.display());
        let lengths = ids(&got["accept_lengths"]);
        assert_eq!(lengths.iter().sum::<u64>(), 255);
        assert!(lengths.iter().all(|&a| (1..=8).contains(&a)), "{lengths:?}");
        let mean = got["mean_accept"].as_f64().unwrap();
        assert!((mean - 255.0 / lengths.len() as f64).abs() < 1e-9);
        let device = got["device"].as_str().unwrap();
        assert_eq!(
            device.contains("schedule executor"),
            model == &art,
            "{device}"
        );
    }
}

#[test]
fn compiled_artifacts_take_other_drafts_and_refuse_stale_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = fixtures();
    let draft = tmp.path().join("draft");
    std::fs::create_dir_all(&draft).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join("qwen3_moe_a_draft").join(f), draft.join(f)).unwrap();
    }
    let hf = fixture.join("../hf/qwen3_moe_a");
    let toml = tmp.path().join("model.toml");
    let text = format!(
        "[model]\npath = {:?}\n\n[speculative]\nmethod = \"dflash\"\ndraft = \"draft\"\nblock_size = 4\n",
        hf.display().to_string()
    );
    std::fs::write(&toml, text).unwrap();
    let art = tmp.path().join("art");
    compile_artifact(&toml, &art);
    let plain_art = tmp.path().join("plain");
    compile_artifact(&hf, &plain_art);

    let prompt = "51,256,282,292,294,267,77,259,82,74,271";
    let want = ids(&mimo_json(&model_args(&hf, prompt, "40"))["output_ids"]);
    let d = draft.to_str().unwrap();
    // Another block size than compiled, and an artifact compiled without a draft: the programs
    // are compiled on first use.
    let mut args = model_args(&art, prompt, "40");
    args.extend(["--block-size", "3"]);
    let got = mimo_json(&args);
    assert_eq!(ids(&got["output_ids"]), want);
    assert!(
        ids(&got["accept_lengths"])
            .iter()
            .all(|&a| (1..=3).contains(&a))
    );
    let mut args = model_args(&plain_art, prompt, "40");
    args.extend(["--draft", d]);
    let got = mimo_json(&args);
    assert_eq!(ids(&got["output_ids"]), want);
    assert_eq!(ids(&got["accept_lengths"]).iter().sum::<u64>(), 39);

    // A draft for another target, and a draft missing a tensor, are named.
    let builtin_draft = tmp.path().join("builtin_draft");
    write_builtin_draft(&builtin_draft);
    let mut args = model_args(&art, prompt, "4");
    args.extend(["--draft", builtin_draft.to_str().unwrap()]);
    fails_with(
        &args,
        "config.json: does not fit the target model: hidden_size 256 differs from the target's 64",
    );
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(draft.join("config.json"), broken.join("config.json")).unwrap();
    let bytes = std::fs::read(draft.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "fc.weight")
        .collect();
    safetensors::serialize_to_file(kept, None, &broken.join("model.safetensors")).unwrap();
    let mut args = model_args(&art, prompt, "4");
    args.extend(["--draft", broken.to_str().unwrap()]);
    fails_with(&args, "missing tensor `fc.weight`");

    // The draft changed since the artifact was compiled: refused, as a changed model is.
    let path = draft.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["rms_norm_eps"] = json!(1e-5);
    std::fs::write(&path, config.to_string()).unwrap();
    fails_with(
        &model_args(&art, prompt, "4"),
        "stale artifact: its draft programs were compiled for",
    );
}
