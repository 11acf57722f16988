//! `mimo generate --device cpu` against Hugging Face transformers on tiny random checkpoints:
//! the same greedy ids, and logits within relative L2 error 1e-4 of HF's f32 logits, for every
//! committed fixture (f32 weights, and MXFP4 experts against HF run on OCP-dequantised experts).

mod common;

use common::{check_against_hf, hf_fixtures, ids, mimo_json, model_toml, read_json};

#[test]
fn f32_logits_and_greedy_ids_match_transformers() {
    for fixture in hf_fixtures() {
        check_against_hf(&fixture, &fixture, "expected.json");
    }
}

#[test]
fn mxfp4_experts_match_transformers_on_dequantised_experts() {
    let tmp = tempfile::tempdir().unwrap();
    for fixture in hf_fixtures() {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        let toml = model_toml(tmp.path(), &name, &fixture, "mxfp4", "f32");
        check_against_hf(&fixture, &toml, "expected_mxfp4.json");
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
