use serde_json::Value;
use std::path::PathBuf;

use crate::checkpoint::test_checkpoints::*;
use crate::tokenizer::{StreamDecoder, Tokenizer, eos_token_ids};

fn fixture_tokenizers() -> Vec<(PathBuf, Tokenizer, Value)> {
    let found: Vec<_> = fixture_dirs()
        .into_iter()
        .filter(|d| d.join("tokenizer_expected.json").is_file())
        .map(|d| {
            let tok = Tokenizer::from_file(&d.join("tokenizer.json")).unwrap();
            let expected = serde_json::from_str(
                &std::fs::read_to_string(d.join("tokenizer_expected.json")).unwrap(),
            )
            .unwrap();
            (d, tok, expected)
        })
        .collect();
    assert!(
        !found.is_empty(),
        "no fixture with a tokenizer under tests/fixtures/hf"
    );
    found
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn stream(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut s = StreamDecoder::new(false);
    let mut out: String = ids.iter().map(|&id| s.push(tok, id).unwrap()).collect();
    out += &s.finish(tok).unwrap();
    out
}

#[test]
fn encodes_like_transformers() {
    for (dir, tok, want) in fixture_tokenizers() {
        for case in want["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text).unwrap(),
                ids(&case["ids"]),
                "{}: {text:?}",
                dir.display()
            );
            assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text);
        }
        assert_eq!(
            tok.encode(want["chat_rendered"].as_str().unwrap()).unwrap(),
            ids(&want["chat_ids"])
        );
        for (token, id) in want["special_token_ids"].as_object().unwrap() {
            assert_eq!(tok.token_to_id(token), Some(id.as_u64().unwrap() as u32));
        }
        assert_eq!(
            tok.vocab_size(),
            want["tokenizer_vocab_size"].as_u64().unwrap() as usize
        );
    }
}

#[test]
fn streaming_equals_decoding_everything() {
    for (dir, tok, want) in fixture_tokenizers() {
        let mut cases: Vec<Vec<u32>> = want["encode"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| ids(&c["ids"]))
            .collect();
        if let Ok(text) = std::fs::read_to_string(dir.join("expected.json")) {
            let expected: Value = serde_json::from_str(&text).unwrap();
            cases.push(ids(&expected["greedy_ids"])); // includes ids past the tokenizer's vocabulary
            if let Some(g) = want["greedy_text"].as_str() {
                assert_eq!(stream(&tok, &ids(&expected["greedy_ids"])), g);
            }
        }
        // Every byte token alone, then all of them: split UTF-8 sequences must be held back.
        cases.push((0..tok.vocab_size() as u32).collect());
        for case in cases {
            assert_eq!(stream(&tok, &case), tok.decode(&case).unwrap(), "{case:?}");
        }
        // A multi-byte character is not emitted until complete.
        let e_acute = tok.encode("é").unwrap();
        assert!(e_acute.len() > 1, "{e_acute:?}");
        let mut s = StreamDecoder::new(false);
        assert_eq!(s.push(&tok, e_acute[0]).unwrap(), "");
        assert_eq!(s.push(&tok, e_acute[1]).unwrap(), "é");
    }
}

#[test]
fn eos_ids_from_every_source() {
    for (dir, tok, _) in fixture_tokenizers() {
        let ids = eos_token_ids(&dir, Some(&tok)).unwrap();
        assert!(!ids.is_empty(), "{}", dir.display());
    }
    let (dir, tok, _) = fixture_tokenizers().remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let write = |file: &str, text: &str| std::fs::write(tmp.path().join(file), text).unwrap();
    assert_eq!(
        eos_token_ids(tmp.path(), Some(&tok)).unwrap(),
        Vec::<u32>::new()
    );
    write("generation_config.json", r#"{"eos_token_id": [7, 5]}"#);
    write("config.json", r#"{"eos_token_id": 5}"#);
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    write(
        "tokenizer_config.json",
        r#"{"eos_token": {"content": "<|im_end|>", "special": true}}"#,
    );
    assert_eq!(
        eos_token_ids(tmp.path(), Some(&tok)).unwrap(),
        vec![7, 5, im_end]
    );
    assert_eq!(eos_token_ids(tmp.path(), None).unwrap(), vec![7, 5]);
    write("config.json", r#"{"eos_token_id": "x"}"#);
    let e = eos_token_ids(tmp.path(), None).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            r#"{}: field `eos_token_id`: expected a token id or a list of them, got "x""#,
            tmp.path().join("config.json").display()
        )
    );
    write("generation_config.json", "{");
    let e = eos_token_ids(tmp.path(), None).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: malformed JSON: ",
            tmp.path().join("generation_config.json").display()
        )),
        "{e}"
    );
    let _ = dir;
}

#[test]
fn a_bad_tokenizer_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, r#"{"model": 3}"#).unwrap();
    let e = Tokenizer::from_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: ", path.display())) && !e.contains('\n'),
        "{e}"
    );
    let e = Tokenizer::from_file(&tmp.path().join("none.json"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot read "), "{e}");
}
