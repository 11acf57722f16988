//! `mimo generate --device cpu` against Hugging Face transformers on tiny random checkpoints:
//! the same greedy ids, and logits within relative L2 error 1e-4 of HF's f32 logits, for every
//! committed fixture (f32 weights, and MXFP4 experts against HF run on OCP-dequantised experts).

mod common;

use std::path::Path;

use common::{hf_fixtures, ids, mimo_json, read_json, rel_l2, rows};

const TOLERANCE: f64 = 1e-4;

fn check(fixture: &Path, model: &Path, expected_file: &str) {
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
        "{} ({expected_file})",
        fixture.file_name().unwrap().to_string_lossy()
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
            err <= TOLERANCE,
            "{name}: token {i}: relative L2 error {err:.3e} > {TOLERANCE:e}"
        );
    }
    assert!(got["tokens_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn f32_logits_and_greedy_ids_match_transformers() {
    for fixture in hf_fixtures() {
        check(&fixture, &fixture, "expected.json");
    }
}

#[test]
fn mxfp4_experts_match_transformers_on_dequantised_experts() {
    let tmp = tempfile::tempdir().unwrap();
    for fixture in hf_fixtures() {
        if !fixture.join("expected_mxfp4.json").exists() {
            continue;
        }
        let toml = tmp.path().join(format!(
            "{}.toml",
            fixture.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(
            &toml,
            format!(
                "[model]\npath = {:?}\n\n[quantization]\nexperts = \"mxfp4\"\ndense = \"f32\"\n",
                fixture.display().to_string()
            ),
        )
        .unwrap();
        check(&fixture, &toml, "expected_mxfp4.json");
    }
}

#[test]
fn text_prompts_use_the_checkpoint_tokenizer() {
    for fixture in hf_fixtures() {
        let expected = read_json(&fixture.join("expected.json"));
        let Some(text) = expected["prompt_text"].as_str() else {
            continue;
        };
        let got = mimo_json(&[
            "generate",
            "--model",
            fixture.to_str().unwrap(),
            "--prompt",
            text,
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--json",
        ]);
        assert_eq!(
            ids(&got["prompt_ids"]),
            ids(&expected["prompt_ids"]),
            "{}",
            fixture.display()
        );
        assert_eq!(
            ids(&got["output_ids"]),
            ids(&expected["greedy_ids"])[..4],
            "{}",
            fixture.display()
        );
        assert!(got["text"].is_string());
    }
}
