//! `mimo-compile`: compiles a model into a persistent-megakernel artifact.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mimo_compiler::artifact::{
    self, ArtifactFiles, DraftEntry, GraphEntry, KernelEntry, Manifest, ModelEntry,
};
use mimo_compiler::report::{self, ReportInputs};
use mimo_compiler::{CompileOptions, Machine, Program, abi, codegen, compile, nvrtc, resources};
use mimo_ir::model::decode_graph;
use mimo_ir::model::dflash::{draft_graph, verify_graph};

/// Compile a model (model.toml or Hugging Face directory) into an artifact: the fused graphs, the
/// schedule, the megakernel source, its CUBIN (when NVRTC is available) and a report.
#[derive(Parser)]
#[command(name = "mimo-compile", version, about, long_about = None)]
struct Args {
    /// The model: a model.toml (which may describe an architecture inline) or a Hugging Face
    /// directory.
    model: PathBuf,
    /// The artifact directory to write.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Target GPU architecture (sm_90a: H100/H200).
    #[arg(long, default_value = "sm_90a")]
    arch: String,
    /// Positions the KV cache holds; default: the model's maximum, at most 4096.
    #[arg(long, value_name = "N")]
    max_context: Option<usize>,
    /// Worker blocks (one per SM); default: 132 (H100 / H200).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Device memory bandwidth for the roofline and the cost model, GB/s.
    #[arg(long, default_value_t = 3000.0, value_name = "GBPS")]
    bandwidth: f64,
    /// Context length at which report.md counts bytes per step.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    report_context: usize,
    /// Write kernel.cu only; do not run NVRTC even when it is available.
    #[arg(long)]
    no_cubin: bool,
    /// No progress, no summary.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    mimo::init_logging();
    mimo::run_main(|| run(args))
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let progress = Progress::new(args.quiet);

    progress.stage("resolving the model");
    let resolved = mimo_runtime::resolve_model(&args.model)
        .with_context(|| format!("reading {}", args.model.display()))?;
    let spec = resolved.spec;
    let max_context = args
        .max_context
        .unwrap_or(spec.max_position_embeddings.min(4096));
    if max_context == 0 || max_context > spec.max_position_embeddings {
        bail!(
            "--max-context must be in 1..={} (the model's max_position_embeddings)",
            spec.max_position_embeddings
        );
    }
    if !(args.bandwidth.is_finite() && args.bandwidth > 0.0) {
        bail!("--bandwidth must be a positive number of GB/s");
    }
    let machine = Machine {
        workers: args.workers.unwrap_or(132).max(1),
        bandwidth_gbs: args.bandwidth,
        ..Machine::h100()
    };

    progress.stage("building and fusing the decode graph");
    let graph = decode_graph(&spec, 1, max_context).context("building the decode graph")?;
    let program = compile(&graph, &CompileOptions::for_machine(machine))
        .context("compiling the decode graph")?;
    abi::encode(&program).context("encoding the task tables")?;

    let speculative = match resolved
        .model_toml
        .as_ref()
        .and_then(|t| t.speculative.as_ref())
    {
        Some(s) => {
            progress.stage("building and fusing the DFlash verify and draft graphs");
            Some(compile_speculative(s, &spec, max_context, machine)?)
        }
        None => None,
    };

    progress.stage("generating kernel.cu");
    let source = codegen::kernel_source(
        codegen::TEMPLATES,
        &codegen::generated_header(&spec, &program),
    )?;

    let (cubin, resources) = if args.no_cubin {
        (None, None)
    } else if !nvrtc::nvrtc_available() {
        progress.note("NVRTC not found (set LD_LIBRARY_PATH, see .ci/install-cuda-tools): writing kernel.cu without a CUBIN");
        (None, None)
    } else {
        progress.stage(&format!("compiling kernel.cu with NVRTC for {}", args.arch));
        let opts = nvrtc::CompileOptions {
            arch: args.arch.clone(),
            extra: vec![],
        };
        let compiled = nvrtc::compile_cubin(&source, "kernel.cu", &opts).context("NVRTC")?;
        let resources = with_registers(
            &args.output,
            &args.arch,
            &compiled.cubin,
            compiled.resources,
        )?;
        (Some(compiled.cubin), Some(resources))
    };

    progress.stage("writing the artifact");
    let source_path = std::path::absolute(&args.model).unwrap_or(args.model.clone());
    let mut programs = vec![("decode", &program)];
    let mut graphs = vec![GraphEntry {
        name: "decode".into(),
        tokens: 1,
        tasks: program.tasks.len(),
        events: program.events.len(),
        workers: machine.workers,
        capture_layers: None,
        context_rows: None,
    }];
    if let Some(s) = &speculative {
        programs.push(("verify", &s.verify));
        graphs.extend(s.graph_entries(machine.workers));
    }
    let mut report = report::render(&ReportInputs {
        spec: &spec,
        source: &args.model.display().to_string(),
        arch: &args.arch,
        max_context,
        report_context: args.report_context.min(max_context),
        bandwidth_gbs: args.bandwidth,
        programs: &programs,
        resources: resources.as_deref(),
        compile_seconds: started.elapsed().as_secs_f64(),
    });
    if let Some(s) = &speculative {
        report.push_str(&s.report());
        programs.push(("draft", &s.draft));
    }
    let manifest = Manifest {
        format_version: artifact::FORMAT_VERSION,
        compiler_version: artifact::COMPILER_VERSION.to_string(),
        arch: args.arch.clone(),
        model: ModelEntry {
            source: resolved.hf_dir.is_some().then_some(source_path),
            config_hash: artifact::config_hash(&spec),
            max_context,
            spec: spec.clone(),
        },
        graphs,
        kernel: KernelEntry {
            source: "kernel.cu".into(),
            source_hash: artifact::fnv1a(source.as_bytes()),
            abi_version: abi::ABI_VERSION,
            cubin: cubin
                .as_ref()
                .map(|_| format!("kernel.{}.cubin", args.arch)),
        },
        draft: speculative.as_ref().map(|s| s.entry.clone()),
    };
    artifact::write(
        &args.output,
        &ArtifactFiles {
            manifest: &manifest,
            programs: &programs,
            kernel_source: &source,
            cubin: cubin.as_deref(),
            report: &report,
        },
    )?;
    progress.finish();

    if !args.quiet {
        let bytes = report::step_bytes(&spec, 1, args.report_context.min(max_context)).total();
        let spills = resources.iter().flatten().filter(|r| r.spills()).count();
        eprintln!(
            "{} -> {}: {} fused ops, {} tasks, {} events on {} workers; {:.1} MB read per token at context {} \
             (roofline {:.3} ms at {:.0} GB/s); {}; {:.2} s",
            args.model.display(),
            args.output.display(),
            program.ops.len(),
            program.tasks.len(),
            program.events.len(),
            machine.workers,
            bytes / 1e6,
            args.report_context.min(max_context),
            bytes / (args.bandwidth * 1e6),
            args.bandwidth,
            match (&cubin, spills) {
                (Some(c), 0) => format!("CUBIN {} KB, no spills", c.len() / 1024),
                (Some(c), n) => format!("CUBIN {} KB, {n} functions spill", c.len() / 1024),
                (None, _) => "no CUBIN".to_string(),
            },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The DFlash programs of a model.toml's `[speculative]` table: the target's verify step over a
/// block (capturing the draft's target layers, accepting on the device) and the draft's pass
/// over a block with a block of new context rows. Other block lengths and context sizes are
/// compiled by the runtime when they occur.
struct Speculative {
    entry: DraftEntry,
    verify: Program,
    draft: Program,
}

fn compile_speculative(
    s: &mimo_runtime::import::config::Speculative,
    spec: &mimo_ir::ModelSpec,
    max_context: usize,
    machine: Machine,
) -> Result<Speculative> {
    let (draft, dir) = mimo_runtime::draft::resolve_draft(&s.draft, spec)
        .with_context(|| format!("reading the draft {}", s.draft.display()))?;
    let block = s.block_size.unwrap_or(draft.block_size);
    let opts = CompileOptions::for_machine(machine);
    let graph = verify_graph(spec, block, max_context, &draft.target_layer_ids)
        .context("building the verify graph")?;
    let verify = compile(&graph, &opts).context("compiling the verify graph")?;
    let graph =
        draft_graph(&draft, spec, block, block, max_context).context("building the draft graph")?;
    let draft_program = compile(&graph, &opts).context("compiling the draft graph")?;
    Ok(Speculative {
        entry: DraftEntry {
            source: std::path::absolute(&dir).unwrap_or(dir),
            config_hash: artifact::draft_hash(&draft),
            block_size: block,
            spec: draft,
        },
        verify,
        draft: draft_program,
    })
}

impl Speculative {
    fn graph_entries(&self, workers: usize) -> [GraphEntry; 2] {
        let block = self.entry.block_size;
        let entry = |name: &str, p: &Program| GraphEntry {
            name: name.into(),
            tokens: block,
            tasks: p.tasks.len(),
            events: p.events.len(),
            workers,
            capture_layers: None,
            context_rows: None,
        };
        [
            GraphEntry {
                capture_layers: Some(self.entry.spec.target_layer_ids.clone()),
                ..entry("verify", &self.verify)
            },
            GraphEntry {
                context_rows: Some(block),
                ..entry("draft", &self.draft)
            },
        ]
    }

    /// The draft's section of report.md (the byte counts above are the target's).
    fn report(&self) -> String {
        let (d, p) = (&self.entry.spec, &self.draft);
        format!(
            "## Graph `draft` (DFlash, block of {b} tokens, {b} context rows)\n\n\
             - draft: `{}`, {} layers, hidden {}, {} heads ({} KV), capturing target layers {:?}\n\
             - fused ops: {}; tasks per step: {}; events per step: {}; workers: {}\n\
             - cost-model estimate of the step: {:.1} us\n",
            self.entry.source.display(),
            d.num_layers,
            d.hidden_size,
            d.num_heads,
            d.num_kv_heads,
            d.target_layer_ids,
            p.ops.len(),
            p.tasks.len(),
            p.events.len(),
            p.schedule.queues.len(),
            p.schedule.makespan_us,
            b = self.entry.block_size,
        )
    }
}

/// ptxas's table lists every function with its stack and spills, but registers only for
/// kernels; cuobjdump lists kernels with registers, shared and local memory. When cuobjdump is
/// at hand, complete ptxas's rows with it.
fn with_registers(
    dir: &std::path::Path,
    arch: &str,
    cubin: &[u8],
    mut table: Vec<resources::FunctionResources>,
) -> Result<Vec<resources::FunctionResources>> {
    if resources::cuobjdump_program().is_err() {
        return Ok(table);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("kernel.{arch}.cubin"));
    std::fs::write(&path, cubin).with_context(|| format!("writing {}", path.display()))?;
    for d in resources::cuobjdump_res_usage(&path).context("cuobjdump -res-usage")? {
        match table.iter_mut().find(|f| f.function == d.function) {
            Some(f) => {
                f.registers = d.registers;
                f.shared_bytes = d.shared_bytes;
                f.local_bytes = d.local_bytes;
            }
            None => table.push(d),
        }
    }
    Ok(table)
}

/// A spinner naming the current stage (nothing with --quiet).
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(quiet: bool) -> Self {
        Progress((!quiet).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }))
    }
    fn stage(&self, msg: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.to_string());
        }
    }
    fn note(&self, msg: &str) {
        if let Some(bar) = &self.0 {
            bar.println(format!("note: {msg}"));
        }
    }
    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
