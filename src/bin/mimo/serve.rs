//! `mimo serve`: the model behind an OpenAI-compatible HTTP API (see `mimo_server`).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mimo_runtime::dflash::{Drafter, open_speculative};
use mimo_runtime::session::{DeviceChoice, open_session};
use mimo_server::chat::ModelInfo;
use mimo_server::{ServeConfig, serve};

use crate::options::{Device, speculative_choice};

/// `mimo serve`'s flags (the command's help text is on `Command::Serve` in main.rs).
#[derive(Args)]
pub struct ServeArgs {
    /// The model: a Hugging Face directory (config.json, safetensors, tokenizer.json,
    /// tokenizer_config.json with its chat template), a model.toml, or an artifact compiled by
    /// mimo-compile. Without it, the built-in tiny model (random weights, for trying mimo out).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Address to listen on; 0.0.0.0 accepts connections from other machines.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model's name in /v1/models and in responses (requests may name any model). Default:
    /// the --model path, or the built-in model's name.
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// How many requests may wait while one generates; more are refused with 429.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_queue: usize,
    /// Seconds a request may take, waiting included; past it the request ends with 503 (still
    /// queued) or 504 (generating), and its generation stops.
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    request_timeout: f64,
    /// max_tokens of a request that gives none, clipped to what the context leaves.
    #[arg(long, default_value_t = 256, value_name = "N")]
    default_max_tokens: usize,
    /// Context length (prompt + new tokens) in tokens; default: the model's, at most 4096.
    #[arg(long, value_name = "TOKENS")]
    max_context: Option<usize>,
    /// A Jinja chat template file to use instead of the model's own (tokenizer_config.json).
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    /// Seconds to let running requests finish after SIGTERM or Ctrl-C before stopping them
    /// (a second signal stops them at once).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    shutdown_timeout: f64,
    /// Where to run: `cuda` needs an NVIDIA GPU and driver, `auto` uses one when present, `emu`
    /// is the device emulator (compiled artifacts only; slow).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Decode speculatively with this DFlash draft (a Hugging Face directory: config.json and
    /// safetensors); the output is the model's own. A model.toml can name one in `[speculative]`.
    #[arg(long, value_name = "PATH")]
    draft: Option<PathBuf>,
    /// Tokens per drafted block, the last committed token included (default: the draft's own).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    block_size: Option<u64>,
    /// No progress or notes on stderr (the `listening on` line and errors still appear).
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let request_timeout = seconds("--request-timeout", args.request_timeout)?;
    let shutdown_timeout = seconds("--shutdown-timeout", args.shutdown_timeout)?;
    if args.max_queue == 0 {
        anyhow::bail!("--max-queue must be at least 1");
    }
    if args.default_max_tokens == 0 {
        anyhow::bail!("--default-max-tokens must be at least 1");
    }
    let chat_template = args
        .chat_template
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the chat template {}", path.display()))
        })
        .transpose()?;
    let device = DeviceChoice::from(args.device);
    let choice = speculative_choice(
        args.model.as_deref(),
        args.draft.as_deref(),
        args.block_size,
    )?;

    let started = Instant::now();
    let spinner = (!args.quiet).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message("loading the model");
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let opened = match choice {
        Some((draft, block)) => open_speculative(args.model.as_deref(), &draft, block, device)
            .map(|(s, d)| (s, Some(Box::new(d) as Box<dyn Drafter + Send>))),
        None => open_session(args.model.as_deref(), device, args.max_context).map(|s| (s, None)),
    }
    .and_then(|(s, d)| {
        let info = ModelInfo::load(args.model.as_deref())?;
        Ok((s, d, info))
    });
    if let Some(bar) = &spinner {
        bar.finish_and_clear();
    }
    let (session, drafter, info) = opened?;
    if !args.quiet {
        for note in &session.notes {
            eprintln!("note: {note}");
        }
        eprintln!(
            "loaded {} in {:.1} s: context {} tokens, {}",
            session.name,
            started.elapsed().as_secs_f64(),
            session.engine.max_context(),
            session.engine.device()
        );
    }
    let quiet = args.quiet;
    let config = ServeConfig {
        host: args.host,
        port: args.port,
        served_model_name: args.served_model_name,
        max_queue: args.max_queue,
        request_timeout,
        default_max_tokens: args.default_max_tokens,
        shutdown_timeout,
        chat_template,
        ..ServeConfig::default()
    };
    serve(session, drafter, info, config, |addr| {
        // Scripts and tests read the address (the port may have been chosen) from stdout.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on http://{addr}");
        let _ = stdout.flush();
        if !quiet {
            eprintln!("try: curl http://{addr}/v1/models  (Ctrl-C stops the server)");
        }
    })?;
    if !quiet {
        eprintln!("server stopped");
    }
    Ok(())
}

/// A positive, finite number of seconds.
fn seconds(flag: &str, secs: f64) -> Result<Duration> {
    if secs.is_nan() || secs <= 0.0 {
        anyhow::bail!("{flag} must be a positive number of seconds, got {secs}");
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("{flag}: {secs} seconds is out of range"))
}
