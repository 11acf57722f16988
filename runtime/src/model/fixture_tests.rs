//! Every committed transformers fixture loads, with the config's numbers and the raw tensors.

use mimo_ir::{Architecture, ModelSpec, WeightFormats};

use crate::import::config::spec_from_hf_config;
use mimo_ir::formats::WeightFormat;
use mimo_ir::model::names::all_weights;

use crate::checkpoint::Checkpoint;
use crate::checkpoint::test_checkpoints::*;
use crate::model::load_model;

#[test]
fn every_fixture_loads() {
    let dirs = fixture_dirs();
    assert!(!dirs.is_empty(), "no fixtures under tests/fixtures/hf");
    for dir in dirs {
        let m = load_model(&dir, &|_, _| {}).unwrap_or_else(|e| panic!("{e}"));
        let config_path = dir.join("config.json");
        let config = spec_from_hf_config(
            &std::fs::read_to_string(&config_path).unwrap(),
            &config_path,
        )
        .unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let format = ckpt.float_format().unwrap();
        assert_eq!(
            m.spec,
            ModelSpec {
                formats: WeightFormats {
                    experts: format,
                    dense: format
                },
                ..config.clone()
            },
            "{}",
            dir.display()
        );
        assert_eq!(
            config.formats.dense,
            format,
            "{}: config dtype vs tensors",
            dir.display()
        );
        assert_eq!(m.weights.len(), all_weights(&m.spec).len());
        assert!(
            m.tokenizer.is_some() && !m.eos_token_ids.is_empty(),
            "{}",
            dir.display()
        );
        // Spot-check a dense weight and one expert of the last layer (MiMo-V2's first is dense)
        // against the raw tensors.
        let embed = ckpt.read_f32("model.embed_tokens.weight").unwrap().1;
        assert_eq!(m.weights.get("embed").unwrap().to_f32(), embed);
        let l = m.spec.num_layers - 1;
        let down = m
            .weights
            .get(&format!("layers.{l}.experts.down"))
            .unwrap()
            .to_f32();
        let last = m.spec.num_experts - 1;
        let name = match m.spec.architecture {
            Architecture::Qwen3Moe | Architecture::MimoV2Flash => {
                format!("model.layers.{l}.mlp.experts.{last}.down_proj.weight")
            }
            Architecture::Mixtral => {
                format!("model.layers.{l}.block_sparse_moe.experts.{last}.w2.weight")
            }
        };
        if ckpt.contains(&name) {
            let raw = ckpt.read_f32(&name).unwrap().1;
            assert_eq!(down[down.len() - raw.len()..], raw[..], "{}", dir.display());
        }
        if format != WeightFormat::F32 {
            assert_eq!(m.weights.get("embed").unwrap().format(), format);
        }
    }
}
