use std::collections::BTreeMap;

use half::{bf16, f16};
use mimo_ir::Architecture;
use mimo_ir::formats::WeightFormat;
use safetensors::tensor::TensorView;

use crate::checkpoint::Checkpoint;
use crate::checkpoint::test_checkpoints::*;

fn one(name: &str, shape: Vec<usize>, values: Vec<f32>) -> Tensors {
    Tensors::from([(name.to_string(), (shape, values))])
}

#[test]
fn single_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = hf_tensors(&tiny_spec(Architecture::Qwen3Moe), false, Dtype::F32);
    write_checkpoint(dir.path(), &tensors, Dtype::F32, 1);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.tensor_names().count(), tensors.len());
    for (name, (shape, vals)) in &tensors {
        assert_eq!(ckpt.info(name), Some((Dtype::F32, shape.as_slice())));
        assert_eq!(
            &ckpt.read_f32(name).unwrap(),
            &(shape.clone(), vals.clone()),
            "{name}"
        );
    }
    assert_eq!(ckpt.float_format(), Some(WeightFormat::F32));
    assert_eq!(
        ckpt.file_of("model.norm.weight"),
        dir.path().join("model.safetensors")
    );
}

#[test]
fn sharded_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = hf_tensors(&tiny_spec(Architecture::Mixtral), false, Dtype::BF16);
    write_checkpoint(dir.path(), &tensors, Dtype::BF16, 3);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.tensor_names().count(), tensors.len());
    for (name, (shape, vals)) in &tensors {
        assert_eq!(
            &ckpt.read_f32(name).unwrap(),
            &(shape.clone(), vals.clone()),
            "{name}"
        );
    }
    assert!(
        ckpt.file_of("model.norm.weight")
            .to_string_lossy()
            .contains("-of-00003.safetensors")
    );
    assert_eq!(ckpt.float_format(), Some(WeightFormat::Bf16));
}

#[test]
fn bf16_and_f16_convert_exactly() {
    // Every bit pattern, so no rounding can hide; NaNs only need to stay NaN (`half` quiets
    // signalling NaNs, a plain bit shift keeps their payload).
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    for (dtype, decode) in [
        (
            Dtype::BF16,
            (|b| bf16::from_bits(b).to_f32()) as fn(u16) -> f32,
        ),
        (Dtype::F16, |b| f16::from_bits(b).to_f32()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let view = TensorView::new(dtype, vec![256, 256], &bytes).unwrap();
        safetensors::serialize_to_file([("t", view)], None, &path).unwrap();
        let (shape, got) = Checkpoint::open(dir.path()).unwrap().read_f32("t").unwrap();
        assert_eq!(shape, vec![256, 256]);
        for (b, g) in bits.iter().zip(&got) {
            let want = decode(*b);
            if want.is_nan() {
                assert!(g.is_nan(), "{dtype:?} {b:#06x}");
            } else {
                assert_eq!(g.to_bits(), want.to_bits(), "{dtype:?} {b:#06x}");
            }
        }
    }
}

#[test]
fn truncated_and_corrupt_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_safetensors(&path, &one("w", vec![4, 4], values(16, 1)), Dtype::F32);
    let full = std::fs::read(&path).unwrap();
    for (bytes, what) in [
        (&full[..full.len() - 3], "truncated data"),
        (&full[..20], "truncated header"),
        (&full[..3], "tiny"),
        (&b""[..], "empty"),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: not a valid safetensors file: ",
                path.display()
            )),
            "{what}: {e}"
        );
    }
    let mut garbage = 10u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"not json!!");
    std::fs::write(&path, garbage).unwrap();
    assert!(
        Checkpoint::open(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not a valid safetensors file")
    );
}

#[test]
fn non_float_dtype_names_tensor_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = vec![0u8; 16];
    let view = TensorView::new(Dtype::I32, vec![4], &bytes).unwrap();
    let path = dir.path().join("model.safetensors");
    safetensors::serialize_to_file([("ids", view)], None, &path).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.float_format(), None);
    assert_eq!(ckpt.dtype_summary(), BTreeMap::from([(Dtype::I32, 16)]));
    let e = ckpt.read_f32("ids").unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "tensor `ids` in {}: dtype I32 is not a float type mimo reads (expected F32, BF16 or F16)",
            path.display()
        )
    );
    let e = ckpt.read_f32("nope").unwrap_err().to_string();
    assert_eq!(
        e,
        format!("missing tensor `nope` in {}", dir.path().display())
    );
}

#[test]
fn bad_index_files() {
    let tensors = one("a", vec![2], vec![1.0, 2.0]);
    let write = |index: &str| {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(&dir.path().join("s1.safetensors"), &tensors, Dtype::F32);
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let e = Checkpoint::open(dir.path())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        (dir, e)
    };
    let (dir, e) = write("{\"weight_map\": ");
    assert!(
        e.starts_with(&format!(
            "{}: malformed JSON: ",
            dir.path().join("model.safetensors.index.json").display()
        )),
        "{e}"
    );
    let (_, e) = write("{\"metadata\": {}}");
    assert!(e.ends_with("model.safetensors.index.json: field `weight_map`: missing, or not an object of tensor name -> file"), "{e}");
    let (_, e) = write(r#"{"weight_map": {"a": 3}}"#);
    assert!(
        e.ends_with("field `weight_map.a`: expected a file name, got 3"),
        "{e}"
    );
    let (dir, e) = write(r#"{"weight_map": {"a": "s2.safetensors"}}"#);
    assert!(
        e.starts_with(&format!(
            "cannot read {}: ",
            dir.path().join("s2.safetensors").display()
        )),
        "{e}"
    );
    let (dir, e) = write(r#"{"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}"#);
    assert_eq!(
        e,
        format!(
            "{}: tensor `b` is listed in model.safetensors.index.json but not stored in this file",
            dir.path().join("s1.safetensors").display()
        )
    );
}

#[test]
fn a_good_index_opens_and_an_empty_dir_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: no model.safetensors or model.safetensors.index.json in this directory",
            dir.path().display()
        )
    );
    write_safetensors(
        &dir.path().join("s1.safetensors"),
        &one("a", vec![2], vec![1.0, 2.0]),
        Dtype::F32,
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "s1.safetensors"}}"#,
    )
    .unwrap();
    assert_eq!(
        Checkpoint::open(dir.path())
            .unwrap()
            .read_f32("a")
            .unwrap()
            .1,
        vec![1.0, 2.0]
    );
}
