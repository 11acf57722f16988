//! Plumbing shared by the `mimo` and `mimo-compile` command lines: one-line errors, exit codes,
//! logging and progress bars; and [`random_checkpoint`], the deterministic random checkpoints of
//! any shape that `mimo random-checkpoint` writes for benchmarks (and the end-to-end tests use).
//! The work itself lives in the `mimo-ir`, `mimo-compiler`, `mimo-runtime` and `mimo-server`
//! crates.

pub mod random_checkpoint;

use std::process::ExitCode;

/// Runs a command's body and turns its outcome into an exit code: an error becomes one line on
/// stderr (`error: ` and the chain of causes) and exit code 1.
pub fn run_main(body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("internal error (a bug in mimo, please report it): {info}");
    }));
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without repeating a cause that the message already quotes.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text.trim());
    }
    line.replace('\n', " ")
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings only).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only on a terminal: logs redirected to a file stay plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
