//! `mimo`: generate text with, benchmark and serve MoE models.

mod bench;
mod generate;
mod options;
mod random_checkpoint;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fast MoE decoding: run a model on the CPU (reference interpreter) or the GPU (megakernel).
#[derive(Parser)]
#[command(name = "mimo", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate tokens from a prompt.
    Generate(generate::GenerateArgs),
    /// Serve a model over HTTP with an OpenAI-compatible API.
    ///
    /// Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as
    /// server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus). Requests are
    /// served one at a time in arrival order; at most --max-queue wait, and one more gets 429.
    /// SIGTERM or Ctrl-C stops accepting connections and lets running requests finish (for up
    /// to --shutdown-timeout). Logs go to stderr, filtered by RUST_LOG (RUST_LOG=info logs every
    /// request). Once listening, one line `listening on http://ADDRESS` is printed to stdout.
    Serve(serve::ServeArgs),
    /// Time decode steps at a context: ms per step, tokens/s, bytes read per step, the bandwidth
    /// achieved and its fraction of the device's measured copy bandwidth (CUDA events on a GPU;
    /// the host clock, labelled so, on the CPU).
    Bench(bench::BenchArgs),
    /// Write a checkpoint of any configuration with deterministic random weights (HF layout,
    /// safetensors; experts optionally pre-quantised as MXFP4).
    RandomCheckpoint(random_checkpoint::RandomCheckpointArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mimo::init_logging();
    mimo::run_main(|| match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::RandomCheckpoint(args) => random_checkpoint::run(args),
    })
}
