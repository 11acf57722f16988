//! `mimo random-checkpoint`: a checkpoint of any configuration with deterministic random
//! weights, for benchmarks (see `mimo::random_checkpoint`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mimo::random_checkpoint::{RandomOptions, write_random_checkpoint};
use mimo_runtime::resolve_model;

#[derive(Args)]
pub struct RandomCheckpointArgs {
    /// The configuration: a model.toml (which may describe the architecture inline), a Hugging
    /// Face directory or its config.json. Only its shape is used.
    #[arg(long, value_name = "MODEL")]
    config: PathBuf,
    /// The directory to write (config.json, safetensors shards below 4 GB, an index).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Store routed experts pre-quantised as MXFP4: U8 `weight` [out, in/2] and U8
    /// `weight_scale` [out, in/32] per projection (otherwise bf16, holding the same values).
    #[arg(long)]
    mxfp4_experts: bool,
    /// The same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep only the first N layers (full layer shapes, fewer layers).
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// No progress bar, no summary.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: RandomCheckpointArgs) -> Result<()> {
    let started = Instant::now();
    let mut spec = resolve_model(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?
        .spec;
    if let Some(l) = args.layers {
        if l == 0 || l > spec.num_layers {
            bail!("--layers must be in 1..={}", spec.num_layers);
        }
        spec.num_layers = l;
    }
    let bar = (!args.quiet).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} writing {msg} [{elapsed}] {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .expect("a valid template"),
        );
        bar.set_message(args.output.display().to_string());
        bar
    });
    let opts = RandomOptions {
        seed: args.seed,
        mxfp4_experts: args.mxfp4_experts,
    };
    let written = write_random_checkpoint(&spec, &args.output, opts, &|done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    })?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if !args.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{}: {} tensors, {:.2} GB in {} file(s), {} experts, seed {}; {:.1} s ({:.2} GB/s)",
            args.output.display(),
            written.tensors,
            written.bytes as f64 / 1e9,
            written.files.len(),
            if args.mxfp4_experts { "MXFP4" } else { "bf16" },
            args.seed,
            secs,
            written.bytes as f64 / 1e9 / secs.max(1e-9)
        );
    }
    Ok(())
}
