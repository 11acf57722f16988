//! Compile-time benchmark: the full Qwen3-30B-A3B artifact (48 layers, 128 experts, MXFP4
//! experts), NVRTC included, as `mimo-compile benches/models/qwen3-30b-a3b.toml` does it.
//! Target: 30 s or less on a 2-core machine. Run with
//! `eval "$(.ci/install-cuda-tools)"; cargo bench --bench compile_time`.

use std::path::Path;
use std::time::Instant;

use mimo_compiler::{CompileOptions, Machine, abi, codegen, compile, nvrtc};
use mimo_ir::model::decode_graph;

fn main() {
    let toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/models/qwen3-30b-a3b.toml");
    let total = Instant::now();

    let t = Instant::now();
    let spec = mimo_runtime::resolve_model(&toml)
        .expect("the benchmark model resolves")
        .spec;
    let graph = decode_graph(&spec, 1, 4096).expect("the decode graph builds");
    let build_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let program =
        compile(&graph, &CompileOptions::for_machine(Machine::h100())).expect("the passes succeed");
    abi::encode(&program).expect("the tables encode");
    let passes_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let source = codegen::kernel_source(
        codegen::TEMPLATES,
        &codegen::generated_header(&spec, &program),
    )
    .expect("codegen");
    let codegen_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let nvrtc_s = if nvrtc::nvrtc_available() {
        let compiled =
            nvrtc::compile_cubin(&source, "kernel.cu", &nvrtc::CompileOptions::default())
                .expect("NVRTC");
        assert!(
            !compiled.resources.iter().any(|r| r.spills()),
            "the kernel spills"
        );
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };

    println!(
        "compile_time qwen3-30b-a3b ({} tasks, {} events, {} lines of CUDA)",
        program.tasks.len(),
        program.events.len(),
        source.lines().count()
    );
    println!("  model + graph   {build_s:8.3} s");
    println!("  passes          {passes_s:8.3} s");
    println!("  codegen         {codegen_s:8.3} s");
    match nvrtc_s {
        Some(s) => println!("  NVRTC (sm_90a)  {s:8.3} s"),
        None => println!("  NVRTC           not available (eval \"$(.ci/install-cuda-tools)\")"),
    }
    println!(
        "  total           {:8.3} s (target: 30 s)",
        total.elapsed().as_secs_f64()
    );
}
