//! Helpers shared by the end-to-end tests: running the `mimo` binaries and reading fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The committed HF parity fixtures, one directory each.
pub fn hf_fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
    dirs
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `mimo` with `args`.
pub fn mimo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mimo"))
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
