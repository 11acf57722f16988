//! The generation worker: one thread owns the engine (batch 1, single stream) and serves jobs
//! from a bounded FIFO queue. A full queue refuses new jobs at once (HTTP 429) rather than letting
//! latency grow without bound.
//!
//! Each job carries the channel its HTTP handler reads events from. A dropped receiver means the
//! client went away: the worker skips the job if it is still queued, or stops generating at the
//! next token, so abandoned requests cost at most one step.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use super::stop::StopMatcher;
use mimo_runtime::dflash::{Drafter, speculative_generate};
use mimo_runtime::engine::Engine;
use mimo_runtime::generate::{FinishReason, GenerateRequest, generate};
use mimo_runtime::sampling::SamplingParams;
use mimo_runtime::tokenizer::{StreamDecoder, Tokenizer};

/// One generation, as the worker runs it.
#[derive(Debug)]
pub struct Job {
    /// For logs: the response id (`cmpl-...`).
    pub id: String,
    pub prompt_ids: Vec<u32>,
    /// Already checked to fit the context with the prompt.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// The job is abandoned past this instant (queued or generating).
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

/// What the worker tells a job's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Generation began (the job left the queue).
    Started,
    /// New output text (never empty).
    Text(String),
    /// Generation ended normally.
    Done(Outcome),
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// OpenAI's `finish_reason`: `stop` (end-of-sequence or a stop string) or `length`.
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The deadline passed; `started` says whether generation had begun.
    TimedOut { started: bool },
    /// The server is shutting down and stopped the job.
    ShuttingDown,
    /// The client went away (nobody reads this event; it ends the job's bookkeeping).
    Cancelled,
    /// The engine failed (or panicked): a bug or a broken device, described.
    Engine(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::TimedOut { started: false } => write!(f, "timed out in the queue"),
            Failure::TimedOut { started: true } => write!(f, "timed out while generating"),
            Failure::ShuttingDown => write!(f, "stopped by shutdown"),
            Failure::Cancelled => write!(f, "cancelled: the client went away"),
            Failure::Engine(message) => write!(f, "engine failure: {message}"),
        }
    }
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Full,
    ShuttingDown,
}

/// The bounded queue and its worker thread.
pub struct Queue {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    capacity: usize,
    /// Set on forced shutdown: the running job stops at its next token.
    abort: AtomicBool,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// What the worker thread owns.
struct Worker {
    engine: Box<dyn Engine>,
    /// With a DFlash draft, every job decodes speculatively (the output is the target's own).
    drafter: Option<Box<dyn Drafter + Send>>,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    shared: Arc<Shared>,
}

impl Queue {
    /// Starts the worker; at most `capacity` jobs wait (the running one not counted).
    pub fn start(
        engine: Box<dyn Engine>,
        drafter: Option<Box<dyn Drafter + Send>>,
        tokenizer: Arc<Tokenizer>,
        eos_token_ids: Vec<u32>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Queue> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            capacity,
            abort: AtomicBool::new(false),
            metrics,
        });
        let worker = Worker {
            engine,
            drafter,
            tokenizer,
            eos_token_ids,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("mimo-generate".into())
            .spawn(move || worker.run())?;
        Ok(Queue {
            shared,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Queues `job`, or says why not.
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(Rejected::ShuttingDown);
        }
        if state.jobs.len() >= self.shared.capacity {
            return Err(Rejected::Full);
        }
        state.jobs.push_back(job);
        self.shared.metrics.set_queue_depth(state.jobs.len());
        self.shared.wake.notify_one();
        Ok(())
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Jobs waiting now.
    pub fn depth(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// Accepts no more jobs; the worker finishes what is queued, then exits. With `abort`, the
    /// running job stops at its next token and queued ones fail with `ShuttingDown`.
    pub fn close(&self, abort: bool) {
        if abort {
            self.shared.abort.store(true, Ordering::Relaxed);
        }
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }

    /// Waits for the worker to exit (after [`Queue::close`]).
    pub fn join(&self) {
        let handle = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the generation worker panicked");
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.close(true);
        self.join();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job, waiting for one; None once closed and empty.
    fn next(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                self.metrics.set_queue_depth(state.jobs.len());
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Worker {
    fn run(mut self) {
        while let Some(job) = self.shared.next() {
            if job.events.is_closed() {
                tracing::debug!("{}: client gone while queued; skipped", job.id);
                self.shared.metrics.cancelled();
                continue;
            }
            if self.shared.abort.load(Ordering::Relaxed) {
                let _ = job.events.send(Event::Failed(Failure::ShuttingDown));
                continue;
            }
            if Instant::now() >= job.deadline {
                let _ = job
                    .events
                    .send(Event::Failed(Failure::TimedOut { started: false }));
                continue;
            }
            self.shared.metrics.set_running(1);
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_job(&job)));
            self.shared.metrics.set_running(0);
            let event = match result {
                Ok(event) => event,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Event::Failed(Failure::Engine(format!("the engine panicked: {what}")))
                }
            };
            match &event {
                Event::Failed(Failure::Cancelled) => {
                    tracing::debug!("{}: client gone; generation stopped", job.id)
                }
                Event::Failed(f) => tracing::warn!("{}: {f}", job.id),
                _ => {}
            }
            let _ = job.events.send(event);
        }
        tracing::debug!("generation worker exits");
    }

    /// Generates for `job`, sending its text as it comes; returns the final event.
    fn run_job(&mut self, job: &Job) -> Event {
        let _ = job.events.send(Event::Started);
        let metrics = &self.shared.metrics;
        let tok = &*self.tokenizer;
        let mut decoder = StreamDecoder::new(true);
        let mut stops = StopMatcher::new(&job.stop);
        let mut ended: Option<Ended> = None;
        let started = Instant::now();
        let mut last = started;
        let req = GenerateRequest {
            prompt_ids: job.prompt_ids.clone(),
            max_new_tokens: job.max_tokens,
            sampling: job.sampling,
            stop_ids: if job.ignore_eos {
                Vec::new()
            } else {
                self.eos_token_ids.clone()
            },
            want_logits: false,
        };
        let on_token = |id| {
            let now = Instant::now();
            if last == started {
                metrics.observe_time_to_first_token(now - started);
            } else {
                metrics.observe_step(now - last);
            }
            last = now;
            metrics.add_generated_tokens(1);
            let piece = match decoder.push(tok, id) {
                Ok(piece) => piece,
                Err(e) => {
                    ended = Some(Ended::Failed(Failure::Engine(e.to_string())));
                    return ControlFlow::Break(());
                }
            };
            let (text, stopped) = stops.push(&piece);
            if !text.is_empty() && job.events.send(Event::Text(text)).is_err() {
                ended = Some(Ended::Disconnected);
            } else if stopped {
                ended = Some(Ended::StopString);
            } else if job.events.is_closed() {
                ended = Some(Ended::Disconnected);
            } else if self.shared.abort.load(Ordering::Relaxed) {
                ended = Some(Ended::Failed(Failure::ShuttingDown));
            } else if now >= job.deadline {
                ended = Some(Ended::Failed(Failure::TimedOut { started: true }));
            }
            match ended {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            }
        };
        let result = match &mut self.drafter {
            Some(drafter) => {
                speculative_generate(self.engine.as_mut(), drafter.as_mut(), &req, on_token).map(
                    |spec| {
                        metrics.add_accept_lengths(&spec.accept_lengths);
                        spec.generation
                    },
                )
            }
            None => generate(self.engine.as_mut(), &req, on_token),
        };
        let output = match result {
            Ok(output) => output,
            Err(e) => return Event::Failed(Failure::Engine(format!("{e:#}"))),
        };
        let completion_tokens = output.output_ids.len();
        if completion_tokens > 1 {
            metrics.set_tokens_per_second(output.tokens_per_second());
        }
        tracing::info!(
            "{}: {} prompt + {completion_tokens} new tokens, {:.1} tokens/s, {:?}",
            job.id,
            job.prompt_ids.len(),
            output.tokens_per_second(),
            ended
                .as_ref()
                .map_or(output.finish_reason, |_| FinishReason::Cancelled)
        );
        let finish_reason = match ended {
            Some(Ended::Failed(f)) => return Event::Failed(f),
            Some(Ended::Disconnected) => {
                metrics.cancelled();
                return Event::Failed(Failure::Cancelled);
            }
            Some(Ended::StopString) => "stop",
            None => {
                // Flush what the decoder and the stop matcher held back.
                let rest = match decoder.finish(tok) {
                    Ok(rest) => rest,
                    Err(e) => return Event::Failed(Failure::Engine(e.to_string())),
                };
                let (mut text, stopped) = stops.push(&rest);
                if !stopped {
                    text.push_str(&stops.finish());
                }
                if !text.is_empty() {
                    let _ = job.events.send(Event::Text(text));
                }
                match (stopped, output.finish_reason) {
                    (true, _) | (false, FinishReason::Stop) => "stop",
                    _ => "length",
                }
            }
        };
        Event::Done(Outcome {
            finish_reason,
            prompt_tokens: job.prompt_ids.len(),
            completion_tokens,
        })
    }
}

/// Why the token callback ended generation early.
enum Ended {
    StopString,
    Disconnected,
    Failed(Failure),
}
