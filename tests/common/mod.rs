//! Helpers shared by the end-to-end tests: running the `mimo` binaries, reading fixtures, and the
//! device the device tests run on ([`test_device`]).
#![allow(dead_code)]

pub mod parity;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use mimo_runtime::cuda;
use mimo_runtime::device::Device;
use mimo_runtime::emu::{EmuDevice, EmuOptions};

// `../shared/tools/gpu-stage` copies the test executables and the `mimo` binaries into `.gpu/`
// of a working-tree copy that may live elsewhere, so the build-time paths (`CARGO_MANIFEST_DIR`,
// `CARGO_BIN_EXE_*`) are used only where they exist; `.gpu/run-tests` runs from the copy's root.

/// The repository root: the build-time one, else the current directory.
pub fn repo_root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures/hf").is_dir() {
        built
    } else {
        std::env::current_dir().expect("a current directory")
    }
}

/// A binary of this package: cargo's (`built`), else the staged `.gpu/bin/NAME`.
fn binary(name: &str, built: &str) -> PathBuf {
    let staged = repo_root().join(".gpu/bin").join(name);
    if Path::new(built).is_file() || !staged.is_file() {
        PathBuf::from(built)
    } else {
        staged
    }
}

/// The committed HF parity fixtures, one directory each.
pub fn hf_fixtures() -> Vec<PathBuf> {
    let root = repo_root().join("tests/fixtures/hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
    dirs
}

/// The committed fixture `name`.
pub fn hf_fixture(name: &str) -> PathBuf {
    let dir = repo_root().join("tests/fixtures/hf").join(name);
    assert!(
        dir.join("expected.json").is_file(),
        "no fixture {}",
        dir.display()
    );
    dir
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `mimo` with `args`.
pub fn mimo(args: &[&str]) -> Output {
    Command::new(binary("mimo", env!("CARGO_BIN_EXE_mimo")))
        .args(args)
        .output()
        .expect("running mimo")
}

/// Runs `mimo` and parses its stdout as one JSON object, failing with its stderr otherwise.
pub fn mimo_json(args: &[&str]) -> serde_json::Value {
    let out = mimo(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mimo {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("mimo {args:?}: stdout is not JSON ({e}): {stderr}"))
}

pub fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id"))
        .collect()
}

pub fn rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("an array of rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("a row")
                .iter()
                .map(|x| x.as_f64().expect("a number"))
                .collect()
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Runs `mimo-compile` with `args`.
pub fn mimo_compile(args: &[&str]) -> Output {
    Command::new(binary("mimo-compile", env!("CARGO_BIN_EXE_mimo-compile")))
        .args(args)
        .output()
        .expect("running mimo-compile")
}

/// `mimo-compile MODEL -o OUT --no-cubin --quiet EXTRA...`, which must succeed.
pub fn compile_artifact(model: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--no-cubin",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let run = mimo_compile(&args);
    assert!(
        run.status.success(),
        "mimo-compile {}: {}",
        model.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Writes a model.toml next to nothing but an absolute path to `hf_dir`, with expert and dense
/// formats.
pub fn model_toml(dir: &Path, name: &str, hf_dir: &Path, experts: &str, dense: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[model]\npath = {:?}\n\n[quantization]\nexperts = \"{experts}\"\ndense = \"{dense}\"\n",
        hf_dir.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Relative L2 error allowed between mimo's logits and HF's f32 logits.
pub const HF_TOLERANCE: f64 = 1e-4;

/// Runs `mimo generate --device cpu --json --logits` on `model` with the prompt of `fixture`'s
/// `expected_file` and requires HF's greedy ids and logits within [`HF_TOLERANCE`].
pub fn check_against_hf(fixture: &Path, model: &Path, expected_file: &str) {
    let expected = read_json(&fixture.join(expected_file));
    let prompt: Vec<String> = ids(&expected["prompt_ids"])
        .iter()
        .map(u64::to_string)
        .collect();
    let want_ids = ids(&expected["greedy_ids"]);
    let want_logits = rows(&expected["logits"]);
    assert!(
        want_ids.len() >= 12,
        "{}: the fixture must cover 12+ new tokens",
        fixture.display()
    );
    let got = mimo_json(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--max-new-tokens",
        &want_ids.len().to_string(),
        "--device",
        "cpu",
        "--json",
        "--logits",
    ]);
    let name = format!(
        "{} ({expected_file} via {})",
        fixture.file_name().unwrap().to_string_lossy(),
        model.display()
    );
    assert_eq!(
        ids(&got["output_ids"]),
        want_ids,
        "{name}: greedy ids differ from HF"
    );
    let got_logits = rows(&got["logits"]);
    assert_eq!(
        got_logits.len(),
        want_logits.len(),
        "{name}: one logits row per new token"
    );
    for (i, (g, w)) in got_logits.iter().zip(&want_logits).enumerate() {
        let err = rel_l2(g, w);
        assert!(
            err <= HF_TOLERANCE,
            "{name}: token {i}: relative L2 error {err:.3e} > {HF_TOLERANCE:e}"
        );
    }
    assert!(got["tokens_per_second"].as_f64().unwrap() > 0.0);
}

/// The device the device tests run on, the one place they get it: with `MIMO_GPU_TESTS=1` the
/// CUDA GPU (a missing or unusable one fails the test), otherwise the device emulator. Where the
/// emulator cannot start (no C++ compiler), `None`, with `skipped: <reason>` on stderr.
pub fn test_device(test: &str) -> Option<Arc<dyn Device>> {
    if std::env::var("MIMO_GPU_TESTS").is_ok_and(|v| v == "1") {
        let info = cuda::probe(0)
            .unwrap_or_else(|reason| panic!("MIMO_GPU_TESTS=1 but no usable GPU: {reason}"));
        let dev = cuda::CudaDevice::open(&info).unwrap_or_else(|e| {
            panic!(
                "MIMO_GPU_TESTS=1 but {} does not open: {e:#}",
                info.describe()
            )
        });
        eprintln!("{test}: {}", dev.describe());
        return Some(dev);
    }
    emulator(test)
}

/// The device emulator whatever `MIMO_GPU_TESTS` says, or `None` (with `skipped: <reason>` on
/// stderr) where it cannot start.
pub fn emulator(test: &str) -> Option<Arc<dyn Device>> {
    match EmuDevice::new(EmuOptions::from_env()) {
        Ok(dev) => {
            eprintln!("{test}: {}", dev.describe());
            Some(dev)
        }
        Err(e) => {
            eprintln!(
                "skipped: {test}: the device emulator: {e:#} (MIMO_GPU_TESTS=1 runs it on the GPU)"
            );
            None
        }
    }
}

/// The `mimo --device` value that runs on `dev` (from [`test_device`]).
pub fn device_flag(dev: &Arc<dyn Device>) -> &'static str {
    dev.kind().flag()
}

/// Whether `dev` is the emulator: the device tests then run CI-sized shapes (fewer workers,
/// layers or tokens, each test says which), the same code paths at a fraction of the work.
pub fn on_emulator(dev: &Arc<dyn Device>) -> bool {
    dev.kind() == mimo_runtime::device::DeviceKind::Emulator
}

/// A random DFlash draft of shape `spec` as a Hugging Face checkpoint (bf16).
pub fn write_draft(dir: &Path, spec: &mimo_ir::model::dflash::DraftSpec, vocab_size: usize) {
    use half::bf16;
    use mimo_ir::model::dflash::{draft_weights, random_draft_weights};
    use serde_json::json;

    let store = random_draft_weights(spec, 23).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = draft_weights(spec)
        .into_iter()
        .map(|w| {
            let bytes = store
                .get(&w.name)
                .unwrap()
                .to_f32()
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect();
            (w.checkpoint_name, w.shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::BF16,
                shape.clone(),
                bytes,
            )
            .unwrap();
            (name.clone(), view)
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = json!({
        "architectures": ["DFlashDraftModel"],
        "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
        "block_size": spec.block_size,
        "dflash_config": {"mask_token_id": spec.mask_token_id, "target_layer_ids": spec.target_layer_ids},
        "dtype": "bfloat16",
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "layer_types": vec!["full_attention"; spec.num_layers],
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": "qwen3",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "num_target_layers": spec.num_target_layers,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "vocab_size": vocab_size,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}
