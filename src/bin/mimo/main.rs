//! `mimo`: generate text with, benchmark and serve MoE models.

mod generate;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mimo::init_logging();
    mimo::run_main(|| match cli.command {
        Command::Generate(args) => generate::run(args),
    })
}
