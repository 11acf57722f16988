//! The OpenAI-compatible HTTP server behind `mimo serve`.
//!
//! - [`openai`]: request bodies, parsed and validated field by field (every bad input is a 400);
//! - [`chat`]: the model's chat template, rendered like transformers' `apply_chat_template`;
//! - [`queue`]: the worker thread that owns the engine, the bounded queue, cancellation;
//! - [`routes`]: the endpoints, streaming with server-sent events;
//! - [`reply`]: a job's events as one JSON response or a server-sent event stream;
//! - [`metrics`]: `/metrics` in the Prometheus text format;
//! - [`stop`]: stop strings over streamed text.
//!
//! The engine runs one sequence at a time, so requests are served in arrival order by one worker
//! thread; the async side only parses, tokenises, queues and streams.

pub mod chat;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod queue;
pub mod reply;
pub mod routes;
pub mod stop;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use chat::{ChatTemplate, ModelInfo};
use metrics::Metrics;
use mimo_runtime::dflash::Drafter;
use mimo_runtime::session::Session;
use mimo_runtime::tokenizer::Tokenizer;
use queue::Queue;

/// How `mimo serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port (reported through `on_ready`).
    pub port: u16,
    /// The name in `/v1/models` and in responses; default: the session's name.
    pub served_model_name: Option<String>,
    /// Requests that may wait for the engine; one more is refused with 429.
    pub max_queue: usize,
    /// Per request, queueing included; past it the request fails (503 queued, 504 generating).
    pub request_timeout: Duration,
    /// `max_tokens` when a request gives none (clipped to what the context leaves).
    pub default_max_tokens: usize,
    /// After SIGTERM or Ctrl-C, how long running requests may take to finish.
    pub shutdown_timeout: Duration,
    /// A chat template that replaces the model's own (its Jinja source).
    pub chat_template: Option<String>,
    pub max_body_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            served_model_name: None,
            max_queue: 64,
            request_timeout: Duration::from_secs(600),
            default_max_tokens: 256,
            shutdown_timeout: Duration::from_secs(30),
            chat_template: None,
            max_body_bytes: 16 << 20,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub model_name: String,
    pub max_context: usize,
    pub vocab_size: usize,
    pub default_max_tokens: usize,
    pub default_temperature: f32,
    pub default_top_p: f32,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Unix seconds at startup (`created` in `/v1/models`).
    pub created: u64,
    /// Set on SIGTERM / Ctrl-C: `/health` answers 503 so load balancers stop sending.
    pub draining: AtomicBool,
}

/// Serves `session` until SIGTERM or Ctrl-C, decoding speculatively when given a `drafter`.
/// `info` is what the model directory says about chat and sampling defaults; `on_ready` gets the
/// bound address once the server accepts connections.
pub fn serve(
    session: Session,
    drafter: Option<Box<dyn Drafter + Send>>,
    info: ModelInfo,
    config: ServeConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    if config.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    let Session {
        engine,
        tokenizer,
        eos_token_ids,
        name,
        ..
    } = session;
    let tokenizer = Arc::new(tokenizer.with_context(|| {
        format!("{name} has no tokenizer.json; mimo serve needs one to read and write text")
    })?);
    let template_source = config.chat_template.clone().or(info.chat_template);
    let template = template_source
        .map(|source| ChatTemplate::new(source, info.bos_token, info.eos_token))
        .transpose()?;
    if template.is_none() {
        tracing::warn!("{name} has no chat template: /v1/chat/completions will answer 400");
    }
    let metrics = Arc::new(Metrics::default());
    let max_context = engine.max_context();
    let vocab_size = engine.spec().vocab_size;
    let queue = Queue::start(
        engine,
        drafter,
        tokenizer.clone(),
        eos_token_ids,
        config.max_queue,
        metrics.clone(),
    )
    .context("cannot start the generation thread")?;
    let state = Arc::new(AppState {
        queue,
        metrics,
        tokenizer,
        template,
        model_name: config.served_model_name.clone().unwrap_or(name),
        max_context,
        vocab_size,
        default_max_tokens: config.default_max_tokens,
        default_temperature: info.default_temperature.unwrap_or(1.0),
        default_top_p: info.default_top_p.unwrap_or(1.0),
        request_timeout: config.request_timeout,
        max_body_bytes: config.max_body_bytes,
        created: routes::unix_now(),
        draining: AtomicBool::new(false),
    });
    // The engine has its own thread; the HTTP side needs little.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(state, config, on_ready))
}

async fn run(
    state: Arc<AppState>,
    config: ServeConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    on_ready(listener.local_addr()?);
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let shutdown_state = state.clone();
    let graceful = async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing running and queued requests");
        shutdown_state.draining.store(true, Ordering::Relaxed);
        shutdown_state.queue.close(false);
        let _ = stopping_tx.send(true);
    };
    let server = axum::serve(listener, routes::router(state.clone()))
        .with_graceful_shutdown(graceful)
        .into_future();
    let deadline = async {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::select! {
            _ = tokio::time::sleep(config.shutdown_timeout) => {}
            _ = wait_for_signal() => {}
        }
    };
    tokio::select! {
        result = server => result.context("the HTTP server failed")?,
        _ = deadline => tracing::warn!(
            "requests still running after {:?}: stopping them",
            config.shutdown_timeout
        ),
    }
    state.queue.close(true);
    let waiting = state.clone();
    tokio::task::spawn_blocking(move || waiting.queue.join())
        .await
        .context("joining the generation thread")?;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what `docker stop` and Kubernetes send).
async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
