//! Bad input to `mimo generate`: a non-zero exit and one clear line naming the file, tensor or
//! field at fault; never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{hf_fixture, mimo};

/// A copy of the first fixture that a test may break.
fn fixture_copy(tmp: &Path) -> PathBuf {
    let src = &hf_fixture("qwen3_moe_a");
    let dst = tmp.join("model");
    fs::create_dir_all(&dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
    }
    dst
}

/// Runs `mimo generate` on `model` and returns its one-line error.
fn error_of(model: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-new-tokens",
        "2",
    ];
    if !extra.iter().any(|a| a.starts_with("--prompt")) {
        args.extend(["--prompt-ids", "1,2,3"]);
    }
    args.extend(extra);
    let out = mimo(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1 for {extra:?}; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("internal error") && !stderr.contains("panicked"),
        "panic: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    lines[0].to_string()
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites a safetensors file through `f(name, shape, data) -> Option<(shape, data)>`.
fn rewrite_safetensors(
    path: &Path,
    f: impl Fn(&str, &[usize], &[u8]) -> Option<(Vec<usize>, Vec<u8>)>,
) {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((shape, data)) = f(&name, view.shape(), view.data()) {
            kept.push((name, view.dtype(), shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    let file = model.join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = error_of(&model, &[]);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    let victim = "model.layers.1.post_attention_layernorm.weight";
    rewrite_safetensors(&model.join("model.safetensors"), |n, s, d| {
        (n != victim).then(|| (s.to_vec(), d.to_vec()))
    });
    let err = error_of(&model, &[]);
    assert!(err.contains(victim) && err.contains("missing"), "{err}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    let victim = "model.layers.0.input_layernorm.weight";
    rewrite_safetensors(&model.join("model.safetensors"), |n, s, d| {
        Some(if n == victim {
            (vec![s[0] / 2], d[..d.len() / 2].to_vec())
        } else {
            (s.to_vec(), d.to_vec())
        })
    });
    let err = error_of(&model, &[]);
    assert!(err.contains(victim) && err.contains("shape"), "{err}");
}

#[test]
fn malformed_config_json_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    fs::write(
        model.join("config.json"),
        "{ \"model_type\": \"qwen3_moe\", ",
    )
    .unwrap();
    let err = error_of(&model, &[]);
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn wrong_field_type_in_config_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    edit_json(&model.join("config.json"), |v| {
        v["hidden_size"] = serde_json::json!("sixty-four")
    });
    let err = error_of(&model, &[]);
    assert!(
        err.contains("config.json") && err.contains("hidden_size"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    edit_json(&model.join("config.json"), |v| {
        v["model_type"] = serde_json::json!("llama_moe_9000")
    });
    let err = error_of(&model, &[]);
    assert!(
        err.contains("llama_moe_9000") && err.contains("model_type"),
        "{err}"
    );
}

#[test]
fn malformed_model_toml_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    let toml = tmp.path().join("model.toml");
    fs::write(&toml, "[model\npath = \"model\"\n").unwrap();
    let err = error_of(&toml, &[]);
    assert!(err.contains("model.toml"), "{err}");

    fs::write(
        &toml,
        format!(
            "[model]\npath = {:?}\n[quantization]\nexperts = \"mxfp5\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let err = error_of(&toml, &[]);
    assert!(
        err.contains("quantization.experts") && err.contains("mxfp5"),
        "{err}"
    );
}

#[test]
fn fp4_on_a_reduction_dimension_not_divisible_by_the_block() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_copy(tmp.path());
    let toml = tmp.path().join("model.toml");
    // Grow the expert intermediate size by 16: a valid model, but 16 more is not a multiple of
    // the MXFP4 block of 32, and that intermediate size is the down projection's reduction axis.
    fs::write(
        &toml,
        format!(
            "[model]\npath = {:?}\n[quantization]\nexperts = \"mxfp4\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let config = model.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    let key = if v["model_type"] == "mixtral" {
        "intermediate_size"
    } else {
        "moe_intermediate_size"
    };
    let old = v[key].as_u64().unwrap() as usize;
    let new = old + 16;
    v[key] = serde_json::json!(new);
    fs::write(&config, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    // Zero-pad every expert matrix to the new size, so that only the block alignment is wrong.
    rewrite_safetensors(&model.join("model.safetensors"), |n, s, d| {
        let elem = d.len() / s.iter().product::<usize>();
        if n.contains("experts")
            && (n.contains("down_proj") || n.ends_with("w2.weight"))
            && s.len() == 2
        {
            // [H, I] -> [H, I + 16]
            let (h, i) = (s[0], s[1]);
            let mut out = Vec::new();
            for r in 0..h {
                out.extend_from_slice(&d[r * i * elem..(r + 1) * i * elem]);
                out.extend(std::iter::repeat_n(0u8, 16 * elem));
            }
            Some((vec![h, i + 16], out))
        } else if n.contains("experts") && s.len() == 2 && s[0] == old {
            // gate/up [I, H] -> [I + 16, H]
            let mut out = d.to_vec();
            out.extend(std::iter::repeat_n(0u8, 16 * s[1] * elem));
            Some((vec![s[0] + 16, s[1]], out))
        } else {
            Some((s.to_vec(), d.to_vec()))
        }
    });
    let err = error_of(&toml, &[]);
    assert!(
        err.contains("mxfp4") && err.contains(&new.to_string()) && err.contains("32"),
        "{err}"
    );
}

#[test]
fn prompt_id_outside_the_vocabulary() {
    let fixture = &hf_fixture("qwen3_moe_a");
    let err = error_of(fixture, &["--prompt-ids", "1,999999,2"]);
    assert!(
        err.contains("999999") && err.contains("vocabulary"),
        "{err}"
    );
}

#[test]
fn missing_model_directory() {
    let err = error_of(Path::new("/nonexistent/model"), &[]);
    assert!(err.contains("/nonexistent/model"), "{err}");
}
