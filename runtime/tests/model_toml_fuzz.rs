//! Fuzzing `ModelToml::parse`: arbitrary text, and valid model.toml files mutated (bytes cut or
//! inserted, values swapped for arbitrary TOML values, lines duplicated or dropped), must parse
//! or fail with a `ConfigError`; never panic.

use std::path::Path;

use mimo_runtime::import::config::ModelToml;
use proptest::prelude::*;

const VALID: &[&str] = &[
    "[model]\npath = \"hf-dir\"\n",
    r#"[model]
path = "hf-dir"

[quantization]
experts = "mxfp4"
dense = "bf16"

[speculative]
method = "dflash"
draft = "draft-dir"
block_size = 16
"#,
    include_str!("../../benches/models/qwen3-30b-a3b.toml"),
    r#"[model]
architecture = "mixtral"
vocab_size = 32000
hidden_size = 4096
num_hidden_layers = 32
num_attention_heads = 32
num_key_value_heads = 8
num_local_experts = 8
num_experts_per_tok = 2
intermediate_size = 14336
rope_theta = 1e6
rms_norm_eps = 1e-5
max_position_embeddings = 32768
tie_word_embeddings = false

[quantization]
experts = "nvfp4"
"#,
];

fn parse(text: &str) {
    // The result does not matter; reaching here without a panic does.
    let _ = ModelToml::parse(text, Path::new("/models/x/model.toml")).map_err(|e| e.to_string());
}

/// A TOML value of any kind, as source text.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9 ]{0,8}".prop_map(|s| format!("\"{s}\"")),
        Just("\"\\n\\u00e9\"".to_string()),
        Just("[]".to_string()),
        Just("[1, \"a\", [2.5]]".to_string()),
        Just("{ a = 1, b = { c = \"d\" } }".to_string()),
        Just("18446744073709551615".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Cut(usize, usize),
    Insert(usize, String),
    /// Replace the value on line `n` (after its `=`).
    Value(usize, String),
    DuplicateLine(usize),
    DropLine(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0usize..12).prop_map(|(a, n)| Mutation::Cut(a, n)),
        (
            any::<usize>(),
            "[\\[\\]=\"{},.a-z0-9 \n#'\u{e9}\u{1F600}]{1,6}"
        )
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
        (any::<usize>(), toml_value()).prop_map(|(l, v)| Mutation::Value(l, v)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::DropLine),
    ]
}

/// The nearest char boundary at or below `at`.
fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let line = |n: usize| n % lines.len().max(1);
    if lines.is_empty() && !matches!(m, Mutation::Cut(..) | Mutation::Insert(..)) {
        return text.to_string();
    }
    match m {
        Mutation::Cut(a, n) => {
            let start = boundary(text, *a);
            let end = boundary(text, (start + n).min(text.len()));
            format!("{}{}", &text[..start], &text[end.max(start)..])
        }
        Mutation::Insert(a, s) => {
            let at = boundary(text, *a);
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        Mutation::Value(n, v) => {
            let i = line(*n);
            if let Some((key, _)) = lines[i].split_once('=') {
                lines[i] = format!("{key}= {v}");
            }
            lines.join("\n")
        }
        Mutation::DuplicateLine(n) => {
            let i = line(*n);
            let dup = lines[i].clone();
            lines.insert(i, dup);
            lines.join("\n")
        }
        Mutation::DropLine(n) => {
            let i = line(*n);
            lines.remove(i);
            lines.join("\n")
        }
    }
}

#[test]
fn the_valid_examples_parse() {
    for text in VALID {
        ModelToml::parse(text, Path::new("/models/x/model.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        // An integration test has no lib.rs beside it to keep regressions next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        parse(&text);
    }

    #[test]
    fn arbitrary_toml_shaped_text_never_panics(
        text in "(\\[[a-z.]{0,12}\\]\n|[a-z_\"]{1,12} = [0-9a-z\"\\[\\]{}.,= -]{0,16}\n){0,8}",
    ) {
        parse(&text);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        base in prop::sample::select(VALID),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut text = base.to_string();
        for m in &mutations {
            text = apply(&text, m);
        }
        parse(&text);
    }
}
