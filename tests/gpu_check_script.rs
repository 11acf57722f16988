//! `benches/gpu-check.sh --dry-run`: the prepared GPU check's first part, run here on the device
//! emulator, so a typo in it fails CI instead of the lent GPU minutes. The script runs this
//! test executable (filtered to [`emulator_smoke`]) in place of the staged GPU tests, and the
//! `mimo` cargo built in place of the staged one.

mod common;

use std::process::Command;

/// The emulator runs one tiny step (what the dry run's test part executes).
#[test]
fn emulator_smoke() {
    let Some(dev) = common::test_device("emulator_smoke") else {
        return;
    };
    let spec = mimo_ir::ModelSpec::tiny(mimo_ir::Architecture::Qwen3Moe);
    let (program, image) = mimo_runtime::cuda::compile_in_memory(&spec, 32, 2).unwrap();
    let weights = mimo_ir::model::random::random_weights(&spec, 1).unwrap();
    let mut mk = mimo_runtime::cuda::Megakernel::new(
        &dev,
        program,
        &weights,
        &image,
        mimo_runtime::cuda::LaunchOptions::default(),
    )
    .unwrap();
    let inputs = [
        ("token_ids", mimo_ir::Tensor::from_i32([1], vec![1])),
        ("positions", mimo_ir::Tensor::from_i32([1], vec![0])),
    ];
    let next = &mk.run_step(&inputs, &["next_ids"]).unwrap()["next_ids"];
    assert!((next.i32()[0] as usize) < spec.vocab_size);
}

#[test]
fn the_gpu_check_dry_run_passes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let logs = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(format!("{root}/benches/gpu-check.sh"))
        .arg("--dry-run")
        .env("MIMO", env!("CARGO_BIN_EXE_mimo"))
        .env("TESTS", std::env::current_exe().unwrap())
        .env("TEST_FILTER", "emulator_smoke")
        .env("OUT", logs.path())
        .env_remove("MIMO_GPU_TESTS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "gpu-check --dry-run failed:\n{stderr}"
    );
    assert!(stderr.contains("gpu-tests: ok"), "{stderr}");
    assert!(stderr.contains("bench-builtin: ok"), "{stderr}");
    let tests = std::fs::read_to_string(logs.path().join("gpu-tests.log")).unwrap();
    assert!(tests.contains("test result: ok. 1 passed"), "{tests}");
    let bench = common::read_json(&logs.path().join("bench-builtin.json"));
    assert_eq!(bench["timing"], "emulator-host-clock", "{bench}");
    // And a wrong argument is refused.
    let bad = Command::new("bash")
        .arg(format!("{root}/benches/gpu-check.sh"))
        .arg("--dryrun")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
