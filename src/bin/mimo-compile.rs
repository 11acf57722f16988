//! `mimo-compile`: compile a model into a persistent-megakernel artifact.

use std::process::ExitCode;

fn main() -> ExitCode {
    mimo::init_logging();
    mimo::run_main(|| anyhow::bail!("mimo-compile is not implemented yet"))
}
