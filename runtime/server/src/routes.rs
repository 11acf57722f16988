//! The HTTP endpoints: request in, prompt tokenised and checked against the model, a job queued;
//! `reply` turns the job's events into the response.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc::unbounded_channel;

use super::AppState;
use super::error::ApiError;
use super::openai::{self, Common, Prompt};
use super::queue::{Job, Rejected};
use super::reply::{Kind, Reply, Waiter, collect, stream};
use mimo_runtime::sampling::SamplingParams;

/// How long past its deadline a handler waits for the worker to report a timeout itself.
const GRACE: Duration = Duration::from_secs(2);

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Counts API responses by status for `mimo_requests_total`.
async fn count_requests(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let counted = req.uri().path().starts_with("/v1/");
    let response = next.run(req).await;
    if counted {
        st.metrics.request_done(response.status().as_u16());
    }
    response
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Ordering::Relaxed) {
        let body = json!({"status": "shutting down"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        let body = json!({"status": "ok", "queue_depth": st.queue.depth()});
        Json(body).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], st.metrics.render()).into_response()
}

fn model_card(st: &AppState) -> Value {
    json!({
        "id": st.model_name, "object": "model", "created": st.created, "owned_by": "mimo",
        "root": st.model_name, "max_model_len": st.max_context,
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&st)]}))
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.model_name {
        Json(model_card(&st)).into_response()
    } else {
        ApiError::not_found(format!(
            "the model `{id}` does not exist; this server serves `{}`",
            st.model_name
        ))
        .into_response()
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {} {}; try POST /v1/chat/completions, POST /v1/completions or GET /v1/models",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(
            None,
            format!("{} is not allowed on {}", req.method(), req.uri().path()),
        )
    }
}

async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    into_response(completion_inner(st, headers, body).await)
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    into_response(chat_inner(st, headers, body).await)
}

fn into_response(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        tracing::debug!("answered {e}");
        e.into_response()
    })
}

async fn completion_inner(
    st: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&st, &headers, body).await?;
    let req = openai::parse_completion(&bytes)?;
    let prompt_ids = match req.prompt {
        Prompt::Text(text) => {
            let tok = st.tokenizer.clone();
            blocking(move || tok.encode(&text))
                .await?
                .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?
        }
        Prompt::Ids(ids) => {
            let vocab = st.vocab_size;
            ids.iter()
                .map(|&id| match u32::try_from(id) {
                    Ok(id) if (id as usize) < vocab => Ok(id),
                    _ => Err(ApiError::invalid(
                        Some("prompt"),
                        format!("token id {id} is outside the vocabulary of {vocab} tokens"),
                    )),
                })
                .collect::<Result<Vec<u32>, _>>()?
        }
    };
    start(st, Kind::Completion, prompt_ids, req.common).await
}

async fn chat_inner(
    st: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&st, &headers, body).await?;
    let req = openai::parse_chat(&bytes)?;
    let state = st.clone();
    let prompt_ids = blocking(move || {
        let Some(template) = state.template.as_ref() else {
            return Err(ApiError::invalid(
                Some("messages"),
                format!(
                    "the model `{}` has no chat template: start mimo serve with --chat-template FILE, or use /v1/completions",
                    state.model_name
                ),
            ));
        };
        let text = template
            .render(&req.messages, &req.template_kwargs)
            .map_err(|e| ApiError::invalid(Some("messages"), format!("chat template: {e}")))?;
        // The template writes the special tokens itself (BOS included), so none are added.
        state
            .tokenizer
            .inner()
            .encode(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| ApiError::invalid(Some("messages"), format!("cannot tokenise: {e}")))
    })
    .await??;
    start(st, Kind::Chat, prompt_ids, req.common).await
}

/// The body, bounded by `max_body_bytes` (413 past it).
async fn read_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        ..ApiError::invalid(
            None,
            format!(
                "the request body is larger than {} bytes",
                st.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_body_bytes as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, st.max_body_bytes)
        .await
        .map_err(|e| {
            if declared.is_none() {
                too_large()
            } else {
                ApiError::invalid(None, format!("cannot read the request body: {e}"))
            }
        })
}

/// Runs CPU work (tokenising, templates) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the prompt failed: {e}")))
}

/// How many tokens to generate: the request's `max_tokens`, which must fit the context with the
/// prompt, or the server's default clipped to what the context leaves.
pub fn plan_max_tokens(
    kind: Kind,
    prompt: usize,
    asked: Option<u64>,
    context: usize,
    default: usize,
) -> Result<usize, ApiError> {
    let param = kind.prompt_param();
    if prompt == 0 {
        return Err(ApiError::invalid(
            Some(param),
            "the prompt is empty (0 tokens)",
        ));
    }
    if prompt >= context {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt is {prompt} tokens, but this model's context is {context} tokens (at least 1 must be left for the reply)"
            ),
        ));
    }
    let room = context - prompt;
    match asked {
        None => Ok(default.clamp(1, room)),
        Some(n) if n > room as u64 => Err(ApiError::invalid(
            Some("max_tokens"),
            format!(
                "this model's context is {context} tokens, but {} were requested ({prompt} in the prompt, {n} for the completion); reduce the prompt or max_tokens",
                prompt as u128 + n as u128
            ),
        )),
        Some(n) => Ok(n as usize),
    }
}

/// Queues the generation and answers with its result or its stream.
async fn start(
    st: Arc<AppState>,
    kind: Kind,
    prompt_ids: Vec<u32>,
    common: Common,
) -> Result<Response, ApiError> {
    let max_tokens = plan_max_tokens(
        kind,
        prompt_ids.len(),
        common.max_tokens,
        st.max_context,
        st.default_max_tokens,
    )?;
    let reply = Reply {
        kind,
        id: format!("{}-{}", kind.id_prefix(), random_hex()),
        created: unix_now(),
        model: common.model.unwrap_or_else(|| st.model_name.clone()),
        include_usage: common.include_usage,
    };
    let (tx, rx) = unbounded_channel();
    let deadline = Instant::now() + st.request_timeout;
    let prompt_tokens = prompt_ids.len() as u64;
    let job = Job {
        id: reply.id.clone(),
        prompt_ids,
        max_tokens,
        sampling: SamplingParams {
            temperature: common.temperature.unwrap_or(st.default_temperature),
            top_p: common.top_p.unwrap_or(st.default_top_p),
            seed: common.seed.unwrap_or_else(random_u64),
        },
        stop: common.stop,
        ignore_eos: common.ignore_eos,
        deadline,
        events: tx,
    };
    st.queue.submit(job).map_err(|r| match r {
        Rejected::Full => ApiError::queue_full(st.queue.capacity()),
        Rejected::ShuttingDown => ApiError::unavailable("the server is shutting down"),
    })?;
    st.metrics.add_prompt_tokens(prompt_tokens);
    let waiter = Waiter {
        rx,
        deadline: deadline + GRACE,
        timeout: st.request_timeout,
        started: false,
    };
    if common.stream {
        Ok(stream(reply, waiter))
    } else {
        collect(reply, waiter).await
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unpredictable enough for ids and default seeds, without a random-number crate: std's
/// randomly keyed hasher over a counter and the clock.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn random_hex() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}
