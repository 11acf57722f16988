//! `mimo serve` end to end: the real binary on a loopback port, driven by a real HTTP client
//! (and by the official `openai` Python package when MIMO_OPENAI_PYTHON is set). Every client
//! call has a timeout and every server is killed when its test ends, so nothing can hang CI.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

/// A `mimo serve` child process on a port it chose itself.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// The built-in model with `args`.
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mimo"))
            .args(["serve", "--port", "0", "--quiet"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting mimo serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_default();
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!("mimo serve {args:?} did not start: stdout {line:?}");
        };
        Server {
            base: base.to_string(),
            child,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = client(60)
            .post(self.url(path))
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Posts a streaming request and reads it to the end: the `data:` payloads before `[DONE]`.
    fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let r = client(60).post(self.url(path)).json(body).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} {body}");
        let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        read_events(r)
    }

    fn metric(&self, name: &str) -> f64 {
        let text = client(10)
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// Waits until `f` holds, failing after `secs`.
    fn wait_until(&self, secs: u64, what: &str, f: impl Fn(&Server) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !f(self) {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(timeout_secs: u64) -> Client {
    Client::builder()
        .timeout(Duration::from_secs(timeout_secs))
        .build()
        .unwrap()
}

/// The `data:` payloads of an SSE body up to `data: [DONE]`, which must end it.
fn read_events(r: Response) -> Vec<Value> {
    let mut events = Vec::new();
    for line in BufReader::new(r).lines() {
        let line = line.expect("reading the stream");
        let Some(data) = line.strip_prefix("data: ") else {
            assert!(
                line.is_empty() || line.starts_with(':'),
                "not SSE: {line:?}"
            );
            continue;
        };
        if data == "[DONE]" {
            return events;
        }
        events.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("{data}: {e}")));
    }
    panic!("the stream ended without data: [DONE] after {events:?}");
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "mimo",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 8,
        "temperature": 0,
    });
    merge(&mut body, extra);
    body
}

fn completion_body(extra: Value) -> Value {
    let mut body =
        json!({"model": "mimo", "prompt": "The river", "max_tokens": 8, "temperature": 0});
    merge(&mut body, extra);
    body
}

fn merge(body: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
}

/// Checks one whole response and returns its text.
fn check_response(v: &Value, chat: bool) -> String {
    let (object, prefix) = if chat {
        ("chat.completion", "chatcmpl-")
    } else {
        ("text_completion", "cmpl-")
    };
    assert_eq!(v["object"], object, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with(prefix), "{v}");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000, "{v}");
    assert!(v["model"].is_string(), "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1, "{v}");
    let c = &choices[0];
    assert_eq!(c["index"], 0);
    assert!(
        ["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()),
        "{v}"
    );
    let u = &v["usage"];
    let (p, n) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p >= 1 && n >= 1, "{v}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + n, "{v}");
    let text = if chat {
        assert_eq!(c["message"]["role"], "assistant", "{v}");
        &c["message"]["content"]
    } else {
        &c["text"]
    };
    text.as_str().expect("text").to_string()
}

/// Checks a stream's chunks; returns its text, finish reason and usage (if it had one).
fn check_stream(events: &[Value], chat: bool) -> (String, String, Option<Value>) {
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let id = events[0]["id"].as_str().unwrap();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["object"], object, "{e}");
        assert_eq!(e["id"], id, "one id per stream");
        if !e["usage"].is_null() {
            assert_eq!(i, events.len() - 1, "usage comes last");
            assert_eq!(e["choices"], json!([]));
            usage = Some(e["usage"].clone());
            continue;
        }
        let c = &e["choices"][0];
        assert!(finish.is_none(), "a chunk after the finish reason: {e}");
        if chat {
            if i == 0 {
                assert_eq!(c["delta"]["role"], "assistant", "{e}");
            }
            text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
        } else {
            text.push_str(c["text"].as_str().unwrap());
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish.expect("a finish_reason"), usage)
}

#[test]
fn completions_and_chat_stream_and_not() {
    let s = Server::start(&[]);
    for chat in [false, true] {
        let (path, body) = if chat {
            (
                "/v1/chat/completions",
                chat_body(json!({"max_tokens": 12, "ignore_eos": true})),
            )
        } else {
            (
                "/v1/completions",
                completion_body(json!({"max_tokens": 12, "ignore_eos": true})),
            )
        };
        let (status, whole) = s.post(path, &body);
        assert_eq!(status, 200, "{whole}");
        let text = check_response(&whole, chat);
        assert_eq!(whole["model"], "mimo", "the request's model name is echoed");
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        assert_eq!(whole["usage"]["completion_tokens"], 12);
        assert!(!text.is_empty());

        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        let (streamed, finish, usage) = check_stream(&s.stream(path, &streaming), chat);
        assert_eq!(streamed, text, "greedy streaming and non-streaming agree");
        assert_eq!((finish.as_str(), usage), ("length", None));

        streaming["stream_options"] = json!({"include_usage": true});
        let (streamed, _, usage) = check_stream(&s.stream(path, &streaming), chat);
        assert_eq!(streamed, text);
        assert_eq!(usage.expect("a usage chunk"), whole["usage"]);
    }
}

#[test]
fn completions_match_mimo_generate() {
    let s = Server::start(&[]);
    let (status, v) = s.post(
        "/v1/completions",
        &completion_body(json!({"max_tokens": 16, "ignore_eos": true})),
    );
    assert_eq!(status, 200, "{v}");
    let out = common::mimo_json(&[
        "generate",
        "--prompt",
        "The river",
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(v["choices"][0]["text"], out["text"]);
    // Prompt token ids give the same result as the text they encode.
    let (_, by_ids) = s.post(
        "/v1/completions",
        &completion_body(
            json!({"prompt": out["prompt_ids"], "max_tokens": 16, "ignore_eos": true}),
        ),
    );
    assert_eq!(by_ids["choices"][0]["text"], out["text"]);
}

#[test]
fn stop_strings_end_the_text_and_are_excluded() {
    let s = Server::start(&[]);
    let body = completion_body(json!({"max_tokens": 24, "ignore_eos": true}));
    let (_, v) = s.post("/v1/completions", &body);
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expected = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut body = body.clone();
        body["stop"] = json!(["never appears", stop]);
        body["stream"] = json!(stream);
        let (got, finish) = if stream {
            let (t, f, _) = check_stream(&s.stream("/v1/completions", &body), false);
            (t, f)
        } else {
            let (_, v) = s.post("/v1/completions", &body);
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        assert_eq!(
            (got.as_str(), finish.as_str()),
            (expected, "stop"),
            "stop {stop:?}"
        );
    }
}

#[test]
fn models_health_and_metrics() {
    let s = Server::start(&["--served-model-name", "tiny"]);
    let v: Value = client(10)
        .get(s.url("/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["object"], "model");
    let r = client(10).get(s.url("/v1/models/tiny")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client(10).get(s.url("/health")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, v) = s.post("/v1/completions", &completion_body(json!({"model": null})));
    assert_eq!((status, &v["model"]), (200, &json!("tiny")));
    let text = client(10)
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "mimo_generated_tokens_total",
        "mimo_requests_total{status=\"200\"}",
        "mimo_queue_depth",
        "mimo_step_latency_seconds_bucket",
        "mimo_step_latency_seconds_count",
        "mimo_tokens_per_second",
        "mimo_dflash_mean_acceptance",
    ] {
        assert!(text.contains(name), "no {name} in\n{text}");
    }
    assert!(s.metric("mimo_generated_tokens_total") >= 1.0);
    assert!(s.metric("mimo_tokens_per_second") > 0.0);
}

#[test]
fn bad_input_gets_a_400_with_a_message() {
    let s = Server::start(&["--max-context", "64"]);
    let c = client(30);
    let raw = |path: &str, body: Vec<u8>| {
        let r = c.post(s.url(path)).body(body).send().unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let long_prompt = "river ".repeat(200);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("/v1/completions", b"{\"prompt\": \"a\",".to_vec()),
        ("/v1/completions", b"not json".to_vec()),
        ("/v1/completions", b"".to_vec()),
        ("/v1/completions", b"{\"prompt\": \"\xff\xfe\"}".to_vec()),
        (
            "/v1/chat/completions",
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xc3\"}]}".to_vec(),
        ),
        (
            "/v1/completions",
            json!({"prompt": 5}).to_string().into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"max_tokens": "8"}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"max_tokens": 0}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"max_tokens": -1}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"max_tokens": 1_000_000_000_000u64}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"max_tokens": 60}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"prompt": long_prompt}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"prompt": [1, 2, 99999999]}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"prompt": ""}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"temperature": -0.5}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"top_p": 0}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"n": 2})).to_string().into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"stop": [1]}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/completions",
            completion_body(json!({"stream": "yes"}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}).to_string().into_bytes(),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user"}], "max_tokens": 0})
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long_prompt}]})
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"temperature": -1}))
                .to_string()
                .into_bytes(),
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}))
                .to_string()
                .into_bytes(),
        ),
    ];
    for (path, body) in cases {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(80)
            .collect::<String>();
        let (status, v) = raw(path, body);
        assert_eq!(status, 400, "{path} {shown}: {v}");
        let e = &v["error"];
        assert_eq!(e["type"], "invalid_request_error", "{shown}: {v}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.len() > 5),
            "{shown}: {v}"
        );
        assert!(
            e.as_object().unwrap().contains_key("param")
                && e.as_object().unwrap().contains_key("code")
        );
    }
    let r = c.get(s.url("/v1/nothing")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.json::<Value>().unwrap()["error"]["message"].is_string());
    // The server is still healthy and serves.
    let (status, _) = s.post("/v1/completions", &completion_body(json!({})));
    assert_eq!(status, 200);
}

#[test]
fn a_full_queue_answers_429() {
    let s = Server::start(&["--max-queue", "1"]);
    // Long enough (about a second each) that the eight arrive while the first still runs.
    let body = completion_body(json!({"max_tokens": 300, "ignore_eos": true}));
    let statuses: Vec<(u16, Value)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| s.post("/v1/completions", &body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(st, _)| *st == 200).count();
    let busy: Vec<_> = statuses.iter().filter(|(st, _)| *st == 429).collect();
    assert_eq!(ok + busy.len(), 8, "{statuses:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{statuses:?}");
    for (_, v) in &busy {
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    }
    assert!(s.metric("mimo_requests_total{status=\"429\"}") >= 1.0);
}

#[test]
fn disconnected_clients_cancel_their_work() {
    let s = Server::start(&[]);
    let long = completion_body(json!({"max_tokens": 4000, "ignore_eos": true, "stream": true}));
    // A long stream, read a little, then dropped.
    let r = client(60)
        .post(s.url("/v1/completions"))
        .json(&long)
        .send()
        .unwrap();
    let mut lines = BufReader::new(r).lines();
    for _ in 0..6 {
        lines.next().expect("a line").expect("reading");
    }
    s.wait_until(30, "the long request to run", |s| {
        s.metric("mimo_requests_running") == 1.0
    });
    // Requests queued behind it whose clients give up before their turn.
    thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                let quick = client(1).post(s.url("/v1/completions"));
                let r = quick
                    .json(&completion_body(
                        json!({"max_tokens": 4000, "ignore_eos": true}),
                    ))
                    .send();
                assert!(r.is_err(), "a queued request finished within a second");
            });
        }
    });
    assert_eq!(s.metric("mimo_queue_depth"), 3.0);
    drop(lines);
    // The running request stops, the abandoned ones are skipped: the queue drains at once.
    s.wait_until(10, "the queue to drain", |s| {
        s.metric("mimo_queue_depth") == 0.0
            && s.metric("mimo_requests_running") == 0.0
            && s.metric("mimo_requests_cancelled_total") == 4.0
    });
    let generated = s.metric("mimo_generated_tokens_total");
    assert!(
        generated < 2000.0,
        "{generated} tokens: the stream was not cancelled"
    );
    let started = Instant::now();
    let (status, _) = s.post("/v1/completions", &completion_body(json!({})));
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a new request waited {:?}",
        started.elapsed()
    );
}

#[test]
fn requests_past_the_time_limit_end() {
    let s = Server::start(&["--request-timeout", "1"]);
    let long = completion_body(json!({"max_tokens": 4000, "ignore_eos": true}));
    let (a, b) = thread::scope(|scope| {
        let a = scope.spawn(|| s.post("/v1/completions", &long));
        s.wait_until(30, "the first request to run", |s| {
            s.metric("mimo_requests_running") == 1.0
        });
        let b = scope.spawn(|| s.post("/v1/completions", &long));
        (a.join().unwrap(), b.join().unwrap())
    });
    // The first times out generating; the second, queued behind it, times out queued (503) or
    // soon after it starts (504), depending on how long it waited.
    assert_eq!(a.0, 504, "{:?}", a.1);
    assert!(b.0 == 503 || b.0 == 504, "{:?}", b.1);
    for (_, v) in [&a, &b] {
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("timed out")
                || v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("time limit"),
            "{v}"
        );
    }
    s.wait_until(10, "the engine to stop", |s| {
        s.metric("mimo_requests_running") == 0.0
    });
}

/// SIGTERM: the running stream still finishes, then the process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_drains_then_exits() {
    let mut s = Server::start(&["--shutdown-timeout", "60"]);
    // About a second of generation, most of it after the signal.
    let body = completion_body(json!({"max_tokens": 300, "ignore_eos": true, "stream": true}));
    let r = client(60)
        .post(s.url("/v1/completions"))
        .json(&body)
        .send()
        .unwrap();
    s.wait_until(30, "the stream to run", |s| {
        s.metric("mimo_requests_running") == 1.0
    });
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let events = read_events(r);
    let (_, finish, _) = check_stream(&events, false);
    assert_eq!(finish, "length");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < until,
            "mimo serve did not exit after SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        client(5).get(s.url("/health")).send().is_err(),
        "still accepting"
    );
}

/// The chat template comes from an HF directory's tokenizer_config.json.
#[test]
fn serves_a_hugging_face_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/qwen3_moe_a");
    let s = Server::start(&["--model", dir.to_str().unwrap()]);
    let (status, v) = s.post("/v1/chat/completions", &chat_body(json!({"max_tokens": 4})));
    assert_eq!(status, 200, "{v}");
    check_response(&v, true);
    let models: Value = client(10)
        .get(s.url("/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], dir.to_str().unwrap());
}

/// With a DFlash draft (from the model.toml's `[speculative]`) the server's greedy output is the
/// target's own, and `/metrics` reports the acceptance.
#[test]
fn serves_speculatively_with_a_draft() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let plain = Server::start(&["--model", fixtures.join("hf/qwen3_moe_a").to_str().unwrap()]);
    let spec = Server::start(&[
        "--model",
        fixtures.join("dflash/model.toml").to_str().unwrap(),
    ]);
    let body = completion_body(json!({"max_tokens": 40, "ignore_eos": true}));
    let (status, want) = plain.post("/v1/completions", &body);
    assert_eq!(status, 200, "{want}");
    let (status, got) = spec.post("/v1/completions", &body);
    assert_eq!(status, 200, "{got}");
    assert_eq!(check_response(&got, false), check_response(&want, false));
    let streamed = spec.stream(
        "/v1/completions",
        &merge_into(body, json!({"stream": true})),
    );
    assert_eq!(
        check_stream(&streamed, false).0,
        check_response(&want, false)
    );
    let steps = spec.metric("mimo_dflash_verify_steps_total");
    let mean = spec.metric("mimo_dflash_mean_acceptance");
    assert!(steps >= 1.0, "no verify step counted");
    // 80 tokens, the first of each request from the prompt step: 78 committed by verify steps.
    assert!(
        (mean * steps - 78.0).abs() < 1e-6 && (1.0..=4.0).contains(&mean),
        "mean acceptance {mean} over {steps} steps"
    );
    assert_eq!(plain.metric("mimo_dflash_verify_steps_total"), 0.0);
}

fn merge_into(mut body: Value, extra: Value) -> Value {
    merge(&mut body, extra);
    body
}

/// 64 concurrent clients x 20 requests (chat and completions, streaming and not): every response
/// well-formed, none 5xx (nor 429: the queue holds every waiting client).
#[test]
fn load_64_clients_x_20_requests() {
    let s = Server::start(&["--max-queue", "128"]);
    let started = Instant::now();
    let failures: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..64)
            .map(|client_id| {
                let s = &s;
                scope.spawn(move || {
                    let c = client(120);
                    let mut failures = Vec::new();
                    for i in 0..20 {
                        let chat = (client_id + i) % 2 == 0;
                        let stream = (client_id / 2 + i) % 2 == 0;
                        let extra = json!({"max_tokens": 4 + (i % 3), "stream": stream, "seed": i, "temperature": 0.8});
                        let (path, body) = if chat {
                            ("/v1/chat/completions", chat_body(extra))
                        } else {
                            ("/v1/completions", completion_body(extra))
                        };
                        match c.post(s.url(path)).json(&body).send() {
                            Err(e) => failures.push(format!("client {client_id} #{i}: {e}")),
                            Ok(r) if r.status().as_u16() != 200 => failures.push(format!(
                                "client {client_id} #{i}: {} {}",
                                r.status(),
                                r.text().unwrap_or_default()
                            )),
                            Ok(r) if stream => {
                                let (_, finish, _) = check_stream(&read_events(r), chat);
                                assert!(finish == "length" || finish == "stop");
                            }
                            Ok(r) => {
                                check_response(&r.json().unwrap(), chat);
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(s.metric("mimo_requests_total{status=\"200\"}"), 1280.0);
    assert_eq!(s.metric("mimo_queue_depth"), 0.0);
    eprintln!(
        "load: 1280 requests in {:.1} s ({:.1} requests/s, {} tokens generated)",
        elapsed.as_secs_f64(),
        1280.0 / elapsed.as_secs_f64(),
        s.metric("mimo_generated_tokens_total")
    );
}

/// The official `openai` Python client (see tests/openai_client.py); skipped without
/// MIMO_OPENAI_PYTHON (`eval "$(.ci/install-openai)"` sets it).
#[test]
fn official_openai_client() {
    let Ok(python) = std::env::var("MIMO_OPENAI_PYTHON") else {
        eprintln!(
            "skipped: set MIMO_OPENAI_PYTHON (eval \"$(.ci/install-openai)\") to run the openai client test"
        );
        return;
    };
    let s = Server::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["--base-url", &s.url("/v1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let until = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("tests/openai_client.py did not finish in 300 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/openai_client.py failed: {stderr}"
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}
