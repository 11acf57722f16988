use std::path::Path;

use mimo_ir::formats::WeightFormat;
use mimo_ir::weights::WeightData;
use mimo_ir::{Architecture, WeightFormats};

use crate::checkpoint::test_checkpoints::*;
use crate::model::{load_model, resolve_model};

#[test]
fn loads_a_hf_directory_and_its_config_json() {
    let spec = tiny_spec(Architecture::Qwen3Moe);
    let (dir, _) = hf_dir(&spec, false, Dtype::BF16, 2);
    for path in [dir.path().to_path_buf(), dir.path().join("config.json")] {
        let m = load_model(&path, &|_, _| {}).unwrap();
        let mut want = spec.clone();
        want.formats = WeightFormats {
            experts: WeightFormat::Bf16,
            dense: WeightFormat::Bf16,
        };
        assert_eq!(m.spec, want);
        assert_eq!(
            (m.source, m.eos_token_ids, m.tokenizer.is_none()),
            (path, vec![3], true)
        );
        assert!(matches!(
            m.weights.get("layers.1.experts.up").unwrap().data,
            WeightData::Bf16(_)
        ));
    }
}

#[test]
fn the_checkpoint_dtype_wins_over_the_config() {
    let spec = tiny_spec(Architecture::Mixtral);
    let (dir, _) = hf_dir(&spec, false, Dtype::F16, 1);
    let config = config_json(&spec, true, "float32");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    assert_eq!(
        resolve_model(dir.path()).unwrap().spec.formats.dense,
        WeightFormat::F16
    );
}

#[test]
fn model_toml_overrides_formats_and_keeps_the_drafter() {
    let spec = tiny_spec(Architecture::Qwen3Moe);
    let (dir, _) = hf_dir(&spec, false, Dtype::F32, 1);
    let toml_dir = tempfile::tempdir().unwrap();
    let rel = pathdiff(dir.path(), toml_dir.path());
    let toml = toml_dir.path().join("model.toml");
    std::fs::write(&toml, format!("[model]\npath = {rel:?}\n[quantization]\nexperts = \"bf16\"\n[speculative]\nmethod = \"dflash\"\ndraft = \"d\"\n")).unwrap();
    let m = load_model(&toml, &|_, _| {}).unwrap();
    assert_eq!(
        m.spec.formats,
        WeightFormats {
            experts: WeightFormat::Bf16,
            dense: WeightFormat::F32
        }
    );
    assert_eq!(m.speculative.unwrap().draft, toml_dir.path().join("d"));
    // A directory holding only a model.toml resolves through it.
    assert_eq!(
        resolve_model(toml_dir.path()).unwrap().spec.formats.experts,
        WeightFormat::Bf16
    );
}

/// `target` relative to `base` (both temp dirs under the same root).
fn pathdiff(target: &Path, base: &Path) -> String {
    let up = base.components().count()
        - base
            .ancestors()
            .find(|a| target.starts_with(a))
            .unwrap()
            .components()
            .count();
    let common = base.ancestors().find(|a| target.starts_with(a)).unwrap();
    format!(
        "{}{}",
        "../".repeat(up),
        target.strip_prefix(common).unwrap().display()
    )
}

#[test]
fn inline_model_toml_resolves_but_does_not_load() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("model.toml");
    std::fs::write(
        &toml,
        "[model]\narchitecture = \"mixtral\"\nvocab_size = 32\nhidden_size = 64\nnum_hidden_layers = 1\nnum_attention_heads = 4\n\
         num_local_experts = 4\nnum_experts_per_tok = 2\nintermediate_size = 32\n[quantization]\nexperts = \"mxfp4\"\n",
    )
    .unwrap();
    let r = resolve_model(&toml).unwrap();
    assert_eq!(
        (r.spec.formats.experts, r.spec.formats.dense, r.hf_dir),
        (WeightFormat::Mxfp4, WeightFormat::F32, None)
    );
    let e = load_model(&toml, &|_, _| {}).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: model.toml describes an architecture only; it can be compiled but has no weights to run",
            toml.display()
        )
    );
}

#[test]
fn unreadable_paths_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load_model(tmp.path(), &|_, _| {}).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "cannot read {}: ",
            tmp.path().join("config.json").display()
        )),
        "{e}"
    );
    let missing = tmp.path().join("nope.toml");
    assert!(
        load_model(&missing, &|_, _| {})
            .unwrap_err()
            .to_string()
            .starts_with(&format!("cannot read {}", missing.display()))
    );
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let e = load_model(tmp.path(), &|_, _| {}).unwrap_err().to_string();
    assert!(
        e.ends_with("config.json: field `model_type`: missing (required)"),
        "{e}"
    );
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    let Some(fixture) = fixture_dirs()
        .into_iter()
        .find(|d| d.join("tokenizer.json").is_file())
    else {
        return;
    };
    let mut spec = tiny_spec(Architecture::Qwen3Moe);
    spec.vocab_size = 8;
    let (dir, _) = hf_dir(&spec, false, Dtype::F32, 1);
    std::fs::copy(
        fixture.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let e = load_model(dir.path(), &|_, _| {}).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json: ") && e.ends_with("tokens, more than the model's vocab_size 8"),
        "{e}"
    );
}
