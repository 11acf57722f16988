//! `mimo bench --dflash` on the built-in tiny model: the JSON's structure and invariants (the
//! timings are host-clock numbers from whatever machine runs the tests, so only their signs are
//! checked).

mod common;

use common::{mimo, mimo_json};

fn f(v: &serde_json::Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("`{what}` is not a number: {v}"))
}

#[test]
fn dflash_bench_reports_blocks_routing_and_a_labelled_projection() {
    let out = mimo_json(&[
        "bench",
        "--dflash",
        "--device",
        "cpu",
        "--context",
        "24",
        "--blocks",
        "1,4,8,16",
        "--tau",
        "6.3",
        "--draft-layers",
        "2",
        "--tokens",
        "2",
        "--warmup",
        "1",
        "--json",
    ]);
    assert_eq!(out["mode"], "dflash");
    assert_eq!(out["backend"], "cpu-interpreter");
    assert_eq!(out["timing"], "host-clock");
    assert!(out["command"].as_str().unwrap().starts_with("mimo bench"));
    let experts = out["config"]["experts"].as_u64().unwrap() as usize;
    let top_k = out["config"]["experts_per_token"].as_u64().unwrap() as usize;
    let layers = out["config"]["layers"].as_u64().unwrap() as usize;
    assert_eq!(
        out["routing"]["layers_probed"].as_u64(),
        Some(layers as u64)
    );
    assert_eq!(
        out["routing"]["random_weights"], true,
        "the built-in model is random"
    );
    assert_eq!(out["draft"]["layers"], 2);
    assert_eq!(out["capture"]["enabled"], true);
    assert_eq!(out["capture"]["layers"].as_array().unwrap().len(), 2);

    let blocks = out["blocks"].as_array().expect("blocks");
    let sizes: Vec<u64> = blocks
        .iter()
        .map(|b| b["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1, 4, 8, 16]);
    for b in blocks {
        let n = b["tokens"].as_u64().unwrap() as usize;
        for key in [
            "verify_ms",
            "verify_ms_min",
            "draft_ms",
            "bytes",
            "draft_bytes",
        ] {
            assert!(f(&b[key], key) > 0.0, "B={n}: {key} = {}", b[key]);
        }
        let bound = experts.min(n * top_k);
        assert_eq!(b["distinct_experts_bound"].as_u64(), Some(bound as u64));
        let distinct = b["distinct_experts"].as_array().unwrap();
        assert_eq!(distinct.len(), layers);
        for d in distinct {
            let d = d.as_u64().unwrap() as usize;
            assert!(
                (1..=bound).contains(&d),
                "B={n}: {d} distinct experts, bound {bound}"
            );
        }
        if n == 1 {
            // One token reads exactly its top-k.
            assert!(distinct.iter().all(|d| d.as_u64() == Some(top_k as u64)));
        }
        assert!(f(&b["bytes"], "bytes") <= f(&b["bytes_worst_case"], "worst") + 1.0);
    }

    // The ratio and the projection, recomputed from the printed numbers.
    let v1 = f(&blocks[0]["verify_ms"], "verify_ms");
    let v16 = f(&blocks[3]["verify_ms"], "verify_ms");
    let ratio = &out["verify_ratio"];
    assert_eq!(ratio["block"], 16);
    assert!((f(&ratio["ratio"], "ratio") - v16 / v1).abs() < 1e-9 * (v16 / v1));
    assert_eq!(ratio["target"], 3.0);
    let p = &out["projection"];
    assert_eq!(p["projected"], true);
    assert_eq!(p["tau"], 6.3);
    assert_eq!(p["block"], 16);
    assert_eq!(p["draft_source"], "measured");
    assert!(p["assumption"].as_str().unwrap().contains("projection"));
    let draft = f(&p["draft_ms"], "draft_ms");
    assert_eq!(draft, f(&blocks[3]["draft_ms"], "draft_ms"));
    assert_eq!(f(&p["verify_ms"], "verify_ms"), v16);
    let want = 6.3 / ((draft + v16) / 1e3);
    let got = f(&p["tokens_per_second"], "tokens_per_second");
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
}

#[test]
fn dflash_bench_summary_says_projected_on_a_cut_model() {
    let out = mimo(&[
        "bench",
        "--dflash",
        "--device",
        "cpu",
        "--context",
        "8",
        "--blocks",
        "1,2",
        "--tau",
        "1.5",
        // A random draft's target layers stay inside a target cut short by --layers.
        "--layers",
        "1",
        "--draft-layers",
        "3",
        "--tokens",
        "1",
        "--warmup",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("projected"), "{stdout}");
    assert!(stdout.contains("verify(2)/verify(1)"), "{stdout}");
    assert!(stdout.contains("host-clock"), "{stdout}");
}

#[test]
fn dflash_bench_refuses_bad_arguments() {
    for (extra, want) in [
        (&["--tau", "20"][..], "--tau"),
        (&["--blocks", "0,4"][..], "--blocks"),
        (&["--context", "4"][..], "--context"),
    ] {
        let mut args = vec!["bench", "--dflash", "--device", "cpu", "--tokens", "1"];
        args.extend(extra);
        let out = mimo(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// A real draft directory, on the interpreter and on an artifact's programs (schedule executor).
#[test]
fn dflash_bench_takes_a_draft_and_an_artifact() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = root.join("hf/qwen3_moe_a");
    let draft = root.join("dflash/qwen3_moe_a_draft");
    let tmp = tempfile::tempdir().unwrap();
    let art = tmp.path().join("art");
    let compiled = common::mimo_compile(&[
        model.to_str().unwrap(),
        "-o",
        art.to_str().unwrap(),
        "--workers",
        "3",
        "--no-cubin",
        "--quiet",
    ]);
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    for (target, backend) in [(&model, "cpu-interpreter"), (&art, "cpu-schedule-executor")] {
        let out = mimo_json(&[
            "bench",
            "--dflash",
            "--model",
            target.to_str().unwrap(),
            "--draft",
            draft.to_str().unwrap(),
            "--device",
            "cpu",
            "--context",
            "16",
            "--blocks",
            "1,8",
            "--tau",
            "4",
            "--tokens",
            "1",
            "--warmup",
            "0",
            "--json",
        ]);
        assert_eq!(out["backend"], backend);
        assert_eq!(out["draft"]["backend"], backend);
        assert!(
            out["draft"]["source"]
                .as_str()
                .unwrap()
                .contains("qwen3_moe_a_draft")
        );
        let p = &out["projection"];
        assert_eq!(p["block"], 8);
        let want = 4.0 / ((f(&p["draft_ms"], "draft") + f(&p["verify_ms"], "verify")) / 1e3);
        assert!((f(&p["tokens_per_second"], "tps") - want).abs() <= 1e-9 * want);
    }
}
