//! `mimo generate`: one prompt in, tokens out (streamed as text, or one JSON object).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use mimo_runtime::dflash::{open_speculative, speculative_generate};
use mimo_runtime::generate::{GenerateRequest, generate};
use mimo_runtime::sampling::SamplingParams;
use mimo_runtime::session::{DeviceChoice, Session, open_session};
use mimo_runtime::tokenizer::StreamDecoder;
use serde_json::json;

use crate::options::{Device, speculative_choice};

#[derive(Args)]
pub struct GenerateArgs {
    /// The model: a Hugging Face directory (config.json, safetensors, tokenizer.json), a
    /// model.toml, or an artifact compiled by mimo-compile. Without it, the built-in tiny model
    /// (random weights, for trying mimo out).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// The prompt as text (needs the model's tokenizer).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated: `--prompt-ids 3,17,42`.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    prompt_ids: Option<Vec<u32>>,
    /// How many new tokens to generate at most.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probability sums to this.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler (temperature > 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run: `cuda` needs an NVIDIA GPU and driver, `auto` uses one when present, `emu`
    /// is the device emulator (compiled artifacts only; slow).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Print one JSON object: output_ids, text, tokens_per_second (and logits with --logits;
    /// accept_lengths and mean_accept, the tokens committed per step, with a draft).
    #[arg(long)]
    json: bool,
    /// With --json: add `logits`, the full-vocabulary logits each new token was chosen from.
    #[arg(long, requires = "json")]
    logits: bool,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print only the generated text (or the JSON): no progress, no statistics.
    #[arg(long, short)]
    quiet: bool,
    /// Speculative decoding with this DFlash draft (a Hugging Face directory: config.json and
    /// safetensors). A model.toml can name one instead, in `[speculative]`.
    #[arg(long, value_name = "PATH")]
    draft: Option<PathBuf>,
    /// Tokens per drafted block, the last committed token included (default: the draft's own).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    block_size: Option<u64>,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature must be a finite number >= 0, got {}",
            args.temperature
        );
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let device = DeviceChoice::from(args.device);
    let choice = speculative_choice(
        args.model.as_deref(),
        args.draft.as_deref(),
        args.block_size,
    )?;
    let (session, mut drafter) = match choice {
        Some((draft, block)) => {
            let (session, drafter) =
                open_speculative(args.model.as_deref(), &draft, block, device)?;
            (session, Some(drafter))
        }
        None => (open_session(args.model.as_deref(), device, None)?, None),
    };
    let Session {
        mut engine,
        tokenizer,
        eos_token_ids,
        name,
        notes,
    } = session;
    if !args.quiet {
        for note in &notes {
            eprintln!("note: {note}");
        }
    }
    let spec = engine.spec().clone();

    let prompt_ids = match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) => {
            let tok = tokenizer.as_ref().with_context(|| {
                format!("--prompt needs a tokenizer.json in {name}; give --prompt-ids instead")
            })?;
            tok.encode(text)?
        }
        (None, None) => bail!("give a prompt: --prompt TEXT or --prompt-ids 3,17,42"),
    };
    if prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    if let Some(&bad) = prompt_ids
        .iter()
        .find(|&&id| id as usize >= spec.vocab_size)
    {
        bail!(
            "prompt id {bad} is outside the vocabulary of {} tokens",
            spec.vocab_size
        );
    }

    let req = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_ids: if args.ignore_eos {
            Vec::new()
        } else {
            eos_token_ids
        },
        want_logits: args.logits,
    };
    let stream_text = !args.json && tokenizer.is_some();
    let mut stream = StreamDecoder::new(false);
    let mut stdout = std::io::stdout();
    let on_token = |id| {
        if stream_text
            && let Some(tok) = &tokenizer
            && let Ok(piece) = stream.push(tok, id)
        {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
        ControlFlow::Continue(())
    };
    let (output, accept_lengths) = match &mut drafter {
        Some(drafter) => {
            let out = speculative_generate(engine.as_mut(), drafter, &req, on_token)?;
            let mean = out.mean_accept();
            (out.generation, Some((out.accept_lengths, mean)))
        }
        None => (generate(engine.as_mut(), &req, on_token)?, None),
    };

    let text = match &tokenizer {
        Some(tok) => Some(tok.decode(&output.output_ids)?),
        None => None,
    };
    if args.json {
        let mut doc = json!({
            "output_ids": output.output_ids,
            "text": text,
            "tokens_per_second": output.tokens_per_second(),
            "prompt_ids": prompt_ids,
            "finish_reason": output.finish_reason,
            "device": engine.device(),
        });
        if args.logits {
            doc["logits"] = json!(output.logits);
        }
        if let Some((lengths, mean)) = &accept_lengths {
            doc["accept_lengths"] = json!(lengths);
            doc["mean_accept"] = json!(mean);
        }
        println!("{doc}");
    } else {
        match (&tokenizer, text) {
            (Some(tok), Some(_)) => println!("{}", stream.finish(tok)?),
            _ => println!(
                "{}",
                output
                    .output_ids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
        if !args.quiet {
            let speculation = match &accept_lengths {
                Some((lengths, mean)) => {
                    format!(", {mean:.2} tokens per step over {} steps", lengths.len())
                }
                None => String::new(),
            };
            eprintln!(
                "{} tokens, {:.1} tokens/s, prompt {:.3} s{speculation} ({})",
                output.output_ids.len(),
                output.tokens_per_second(),
                output.prefill_seconds,
                engine.device()
            );
        }
    }
    Ok(())
}
