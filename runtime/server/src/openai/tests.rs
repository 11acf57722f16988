//! Request parsing: examples of every rule, and fuzzing (arbitrary bytes, arbitrary JSON in
//! every field of a valid request) that must end in Ok or a 400, never a panic.

use axum::http::StatusCode;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn completion(v: Value) -> Result<CompletionRequest, ApiError> {
    parse_completion(v.to_string().as_bytes())
}

fn chat(v: Value) -> Result<ChatRequest, ApiError> {
    parse_chat(v.to_string().as_bytes())
}

fn err_param(r: Result<impl std::fmt::Debug, ApiError>) -> Option<String> {
    let e = r.expect_err("expected a 400");
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e}");
    assert!(!e.message.is_empty());
    e.param
}

#[test]
fn a_full_completion_request() {
    let r = completion(json!({
        "model": "x", "prompt": "Hello", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
        "seed": -1, "stop": ["\n", "END"], "stream": true,
        "stream_options": {"include_usage": true}, "n": 1, "user": "someone", "ignore_eos": true,
    }))
    .unwrap();
    assert_eq!(r.prompt, Prompt::Text("Hello".into()));
    let c = r.common;
    assert_eq!(c.model.as_deref(), Some("x"));
    assert_eq!(c.max_tokens, Some(5));
    assert_eq!((c.temperature, c.top_p), (Some(0.5), Some(0.9)));
    assert_eq!(c.seed, Some(u64::MAX));
    assert_eq!(c.stop, ["\n", "END"]);
    assert!(c.stream && c.include_usage && c.ignore_eos);
}

#[test]
fn defaults_and_nulls() {
    let r =
        completion(json!({"prompt": "a", "max_tokens": null, "stop": null, "seed": null})).unwrap();
    assert_eq!(
        r.common,
        Common {
            ..Common::default()
        }
    );
    let r = completion(json!({"prompt": "a", "stop": "x"})).unwrap();
    assert_eq!(r.common.stop, ["x"]);
}

#[test]
fn prompt_forms() {
    let p = |v| completion(json!({ "prompt": v })).map(|r| r.prompt);
    assert_eq!(p(json!(["one"])).unwrap(), Prompt::Text("one".into()));
    assert_eq!(p(json!([1, 2, 3])).unwrap(), Prompt::Ids(vec![1, 2, 3]));
    assert_eq!(p(json!([[4, 5]])).unwrap(), Prompt::Ids(vec![4, 5]));
    for bad in [
        json!(null),
        json!(3),
        json!([]),
        json!(["a", "b"]),
        json!([[1], [2]]),
        json!([-1]),
        json!([1.5]),
        json!([1, "a"]),
        json!([[]]),
        json!([["a"]]),
        json!({"a": 1}),
    ] {
        assert_eq!(
            err_param(p(bad.clone())).as_deref(),
            Some("prompt"),
            "{bad}"
        );
    }
}

#[test]
fn bad_bodies_are_400s_that_say_why() {
    for (body, needle) in [
        (&b"{\"prompt\": \"a\""[..], "malformed JSON"),
        (b"", "empty"),
        (b"[1]", "JSON object"),
        (b"{\"prompt\": \"\xff\xfe\"}", "UTF-8"),
    ] {
        let e = parse_completion(body).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains(needle), "{}", e.message);
        assert_eq!(e.kind, "invalid_request_error");
    }
}

#[test]
fn wrong_values_name_their_field() {
    for (field, value) in [
        ("max_tokens", json!(0)),
        ("max_tokens", json!(-3)),
        ("max_tokens", json!(2.5)),
        ("max_tokens", json!("10")),
        ("temperature", json!(-0.1)),
        ("temperature", json!("hot")),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("seed", json!(1.5)),
        ("stop", json!(3)),
        ("stop", json!([""])),
        ("stop", json!(["a", 1])),
        ("stop", json!(vec!["s"; MAX_STOP_STRINGS + 1])),
        ("stream", json!("yes")),
        ("model", json!(7)),
        ("n", json!(2)),
        ("logprobs", json!(3)),
        ("echo", json!(true)),
        ("best_of", json!(3)),
        ("presence_penalty", json!(0.5)),
        ("top_k", json!(5)),
        ("logit_bias", json!({"1": 5})),
    ] {
        let mut body = json!({"prompt": "a"});
        body[field] = value.clone();
        assert_eq!(
            err_param(completion(body)).as_deref(),
            Some(field),
            "{field}: {value}"
        );
    }
    let e = completion(json!({"prompt": "a", "stream_options": {"include_usage": true}}));
    assert_eq!(err_param(e).as_deref(), Some("stream_options"));
    let e =
        completion(json!({"prompt": "a", "stream": true, "stream_options": {"include_usage": 1}}));
    assert_eq!(
        err_param(e).as_deref(),
        Some("stream_options.include_usage")
    );
}

#[test]
fn chat_requests() {
    let r = chat(json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null},
        ],
        "max_tokens": 3,
        "max_completion_tokens": 7,
        "chat_template_kwargs": {"enable_thinking": false},
    }))
    .unwrap();
    assert_eq!(r.messages.len(), 3);
    assert_eq!(r.messages[1].content, "a\nb");
    assert_eq!(r.messages[2].content, "");
    assert_eq!(r.common.max_tokens, Some(7));
    assert_eq!(r.template_kwargs["enable_thinking"], json!(false));

    for (body, param) in [
        (json!({}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": ["hi"]}), "messages[0]"),
        (json!({"messages": [{"content": "hi"}]}), "messages[0].role"),
        (
            json!({"messages": [{"role": 1, "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
            "tools",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true}),
            "logprobs",
        ),
    ] {
        assert_eq!(
            err_param(chat(body.clone())).as_deref(),
            Some(param),
            "{body}"
        );
    }
}

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "ignore_eos",
    "logprobs",
    "echo",
    "top_k",
    "chat_template_kwargs",
    "tools",
];

fn check(result: Result<impl std::fmt::Debug, ApiError>) {
    if let Err(e) = result {
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e}");
        assert!(!e.message.is_empty() && !e.message.contains('\n'), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
        check(parse_completion(&body));
        check(parse_chat(&body));
    }

    #[test]
    fn arbitrary_json_never_panics(body in any_json()) {
        check(completion(body.clone()));
        check(chat(body));
    }

    /// A valid request with one field replaced by arbitrary JSON.
    #[test]
    fn mutated_valid_requests_never_panic(
        field in prop::sample::select(FIELDS),
        value in any_json(),
    ) {
        let mut body = json!({
            "model": "m", "prompt": "Hello", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8, "temperature": 0.7, "stream": true,
        });
        body[field] = value;
        check(completion(body.clone()));
        check(chat(body));
    }

    /// Valid numbers round-trip exactly.
    #[test]
    fn valid_values_are_kept(
        max_tokens in 1u64..1_000_000,
        temperature in 0.0f64..10.0,
        top_p in 0.001f64..=1.0,
        seed in any::<u64>(),
    ) {
        let r = completion(json!({
            "prompt": [1, 2], "max_tokens": max_tokens, "temperature": temperature,
            "top_p": top_p, "seed": seed,
        })).unwrap();
        prop_assert_eq!(r.common.max_tokens, Some(max_tokens));
        prop_assert_eq!(r.common.temperature, Some(temperature as f32));
        prop_assert_eq!(r.common.top_p, Some(top_p as f32));
        prop_assert_eq!(r.common.seed, Some(seed));
    }
}
