//! Responses: a job's events turned into one JSON object or a stream of server-sent events, in
//! OpenAI's exact shapes (`text_completion`, `chat.completion` and `chat.completion.chunk`
//! objects, with `id`, `created`, `model`, `choices` and `usage`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::queue::{Event, Failure, Outcome};

/// An SSE comment this often while a stream waits, so a vanished client is noticed while queued.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Which endpoint a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

impl Kind {
    /// The prefix of response ids (`cmpl-...`, `chatcmpl-...`).
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        }
    }

    /// The request field that holds the prompt, for errors about its length.
    pub fn prompt_param(self) -> &'static str {
        match self {
            Kind::Completion => "prompt",
            Kind::Chat => "messages",
        }
    }
}

/// What every object of one response shares.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: Kind,
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model name the client asked for (or the served name).
    pub model: String,
    /// Streaming: end with a chunk that carries `usage` (and give `usage: null` before it).
    pub include_usage: bool,
}

impl Reply {
    /// The whole (non-streaming) response.
    pub fn full(&self, text: &str, outcome: &Outcome) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0, "text": text, "logprobs": null,
                "finish_reason": outcome.finish_reason,
            }),
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": outcome.finish_reason,
            }),
        };
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion",
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage(outcome),
        })
    }

    /// The chunk that opens a chat stream (the assistant's role, no text yet).
    pub fn opening_chunk(&self) -> Option<Value> {
        (self.kind == Kind::Chat)
            .then(|| self.chunk(json!({"role": "assistant", "content": ""}), None))
    }

    /// A chunk of new text.
    pub fn text_chunk(&self, text: &str) -> Value {
        match self.kind {
            Kind::Completion => self.chunk(json!(text), None),
            Kind::Chat => self.chunk(json!({"content": text}), None),
        }
    }

    /// The chunk that says why generation ended.
    pub fn final_chunk(&self, finish_reason: &str) -> Value {
        match self.kind {
            Kind::Completion => self.chunk(json!(""), Some(finish_reason)),
            Kind::Chat => self.chunk(json!({}), Some(finish_reason)),
        }
    }

    /// The last chunk with `stream_options.include_usage`: no choices, only usage.
    pub fn usage_chunk(&self, outcome: &Outcome) -> Value {
        json!({
            "id": self.id, "object": self.chunk_object(), "created": self.created,
            "model": self.model, "choices": [], "usage": usage(outcome),
        })
    }

    fn chunk_object(&self) -> &'static str {
        match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        }
    }

    /// `content` is the completion's `text` or the chat `delta`.
    fn chunk(&self, content: Value, finish_reason: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0, "text": content, "logprobs": null, "finish_reason": finish_reason,
            }),
            Kind::Chat => json!({
                "index": 0, "delta": content, "logprobs": null, "finish_reason": finish_reason,
            }),
        };
        let mut chunk = json!({
            "id": self.id, "object": self.chunk_object(), "created": self.created,
            "model": self.model, "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

fn usage(o: &Outcome) -> Value {
    json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "total_tokens": o.prompt_tokens + o.completion_tokens,
    })
}

/// Receives a job's events, with the request's deadline.
pub struct Waiter {
    pub rx: UnboundedReceiver<Event>,
    /// When to give up on the worker (the request's deadline plus a grace period).
    pub deadline: Instant,
    /// The per-request time limit, for messages.
    pub timeout: Duration,
    pub started: bool,
}

impl Waiter {
    /// The next event; a timeout or a vanished worker becomes a failure.
    async fn next(&mut self) -> Result<Event, ApiError> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(Event::Started)) => {
                self.started = true;
                Ok(Event::Started)
            }
            Ok(Some(Event::Failed(f))) => Err(self.failure(f)),
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(ApiError::internal("the generation worker stopped")),
            Err(_) => Err(self.failure(Failure::TimedOut {
                started: self.started,
            })),
        }
    }

    fn failure(&self, f: Failure) -> ApiError {
        let secs = self.timeout.as_secs_f64();
        match f {
            Failure::TimedOut { started: false } => ApiError::unavailable(format!(
                "timed out after {secs} s waiting in the queue; retry later"
            )),
            Failure::TimedOut { started: true } => ApiError::timeout(format!(
                "generation ran past the server's time limit of {secs} s per request; ask for fewer max_tokens"
            )),
            Failure::ShuttingDown => {
                ApiError::unavailable("the server is shutting down; the request was stopped")
            }
            Failure::Cancelled => ApiError::unavailable("the request was cancelled"),
            Failure::Engine(message) => ApiError::internal(format!("generation failed: {message}")),
        }
    }
}

/// The non-streaming answer: all text, then one JSON object.
pub async fn collect(reply: Reply, mut waiter: Waiter) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match waiter.next().await? {
            Event::Started | Event::Failed(_) => {}
            Event::Text(t) => text.push_str(&t),
            Event::Done(outcome) => return Ok(Json(reply.full(&text, &outcome)).into_response()),
        }
    }
}

/// A stream of server-sent events: chunks, then `data: [DONE]`. A failure after the headers
/// are sent becomes an `{"error": ...}` event before `[DONE]`, as vLLM does.
pub fn stream(reply: Reply, waiter: Waiter) -> Response {
    let mut pending = VecDeque::new();
    if let Some(chunk) = reply.opening_chunk() {
        pending.push_back(data(&chunk));
    }
    let state = StreamState {
        reply,
        waiter,
        pending,
        done: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), s));
            }
            if s.done {
                return None;
            }
            match s.waiter.next().await {
                Ok(Event::Started | Event::Failed(_)) => {}
                Ok(Event::Text(t)) => s.pending.push_back(data(&s.reply.text_chunk(&t))),
                Ok(Event::Done(outcome)) => {
                    s.pending
                        .push_back(data(&s.reply.final_chunk(outcome.finish_reason)));
                    if s.reply.include_usage {
                        s.pending.push_back(data(&s.reply.usage_chunk(&outcome)));
                    }
                    s.end();
                }
                Err(e) => {
                    tracing::warn!("{}: stream ended by {e}", s.reply.id);
                    s.pending.push_back(data(&e.body()));
                    s.end();
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

struct StreamState {
    reply: Reply,
    waiter: Waiter,
    pending: VecDeque<SseEvent>,
    done: bool,
}

impl StreamState {
    fn end(&mut self) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}
