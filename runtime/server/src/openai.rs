//! OpenAI request bodies: parsed by hand from JSON so that every wrong input (bad UTF-8, bad
//! JSON, a field of the wrong type or out of range, an option we do not implement) becomes a 400
//! that names the field, instead of a serde message without one or a silently ignored option.
//!
//! Checks that need the model (prompt length against the context, ids against the vocabulary)
//! happen later, in `routes`, once the prompt is tokenised.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The most stop strings a request may give (OpenAI allows 4; vLLM is unlimited).
pub const MAX_STOP_STRINGS: usize = 16;

/// Options shared by completions and chat completions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Common {
    /// The `model` the client named (echoed back; any name is served by the one model).
    pub model: Option<String>,
    /// At least 1 when given; None takes the server's default, clipped to the context.
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// Stop strings, matched on the decoded text and left out of the output.
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `usage` and no choices.
    pub include_usage: bool,
    /// vLLM's extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// A completion prompt: text, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub common: Common,
}

/// A chat message with its content flattened to text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// vLLM's `chat_template_kwargs`: extra variables for the template (`enable_thinking`).
    pub template_kwargs: Map<String, Value>,
    pub common: Common,
}

/// Parses a `POST /v1/completions` body.
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let obj = json_object(body)?;
    let f = Fields(&obj);
    let common = f.common("max_tokens")?;
    f.refuse_if(
        "echo",
        |v| v.as_bool() == Some(true),
        "`echo` is not supported",
    )?;
    f.refuse_if(
        "suffix",
        |v| !v.is_null() && v.as_str() != Some(""),
        "`suffix` (insertion) is not supported",
    )?;
    f.refuse_if(
        "logprobs",
        |v| !v.is_null() && v.as_u64() != Some(0),
        "`logprobs` is not supported",
    )?;
    f.refuse_if(
        "best_of",
        |v| !v.is_null() && v.as_u64() != Some(1),
        "`best_of` other than 1 is not supported",
    )?;
    let prompt = parse_prompt(obj.get("prompt"))?;
    Ok(CompletionRequest { prompt, common })
}

/// Parses a `POST /v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let obj = json_object(body)?;
    let f = Fields(&obj);
    let mut common = f.common("max_tokens")?;
    // OpenAI's newer name wins over the deprecated `max_tokens`.
    if let Some(n) = f.max_tokens("max_completion_tokens")? {
        common.max_tokens = Some(n);
    }
    f.refuse_if(
        "logprobs",
        |v| v.as_bool() == Some(true),
        "`logprobs` is not supported",
    )?;
    f.refuse_if(
        "top_logprobs",
        |v| !v.is_null(),
        "`top_logprobs` is not supported",
    )?;
    f.refuse_if(
        "tools",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
        "tool calling is not supported",
    )?;
    f.refuse_if(
        "tool_choice",
        |v| !v.is_null() && v.as_str() != Some("none"),
        "tool calling is not supported",
    )?;
    f.refuse_if(
        "response_format",
        |v| !v.is_null() && v.get("type").and_then(Value::as_str) != Some("text"),
        "only `response_format: {\"type\": \"text\"}` is supported",
    )?;
    let messages = parse_messages(obj.get("messages"))?;
    let template_kwargs = match obj.get("chat_template_kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(v) => return Err(wrong_type("chat_template_kwargs", "an object", v)),
    };
    Ok(ChatRequest {
        messages,
        template_kwargs,
        common,
    })
}

/// The body as a JSON object, or a 400 that says why not.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(
            None,
            format!(
                "the request body is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            None,
            "the request body is empty: send a JSON object",
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(v) => Err(ApiError::invalid(
            None,
            format!("the request body must be a JSON object, got {}", kind(&v)),
        )),
        Err(e) => Err(ApiError::invalid(None, format!("malformed JSON: {e}"))),
    }
}

/// Typed access to the request's fields; `null` means absent, as in OpenAI's API.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn common(&self, max_tokens_key: &str) -> Result<Common, ApiError> {
        let stream = self.boolean("stream")?.unwrap_or(false);
        let include_usage = match self.get("stream_options") {
            None => false,
            Some(_) if !stream => {
                return Err(ApiError::invalid(
                    Some("stream_options"),
                    "`stream_options` is only allowed with `stream: true`",
                ));
            }
            Some(Value::Object(o)) => Fields(o)
                .boolean("include_usage")
                .map_err(|e| ApiError {
                    param: Some("stream_options.include_usage".into()),
                    ..e
                })?
                .unwrap_or(false),
            Some(v) => return Err(wrong_type("stream_options", "an object", v)),
        };
        if let Some(n) = self.get("n")
            && n.as_u64() != Some(1)
        {
            return Err(ApiError::unsupported(
                "n",
                format!("only `n: 1` is supported, got {}", short(n)),
            ));
        }
        self.refuse_if(
            "logit_bias",
            |v| v.as_object().is_some_and(|m| !m.is_empty()),
            "`logit_bias` is not supported",
        )?;
        for key in ["presence_penalty", "frequency_penalty", "min_p"] {
            self.refuse_if(
                key,
                |v| v.as_f64() != Some(0.0),
                &format!("`{key}` is not supported (only 0)"),
            )?;
        }
        self.refuse_if(
            "repetition_penalty",
            |v| v.as_f64() != Some(1.0),
            "`repetition_penalty` is not supported (only 1)",
        )?;
        self.refuse_if(
            "top_k",
            |v| !matches!(v.as_i64(), Some(-1 | 0)),
            "`top_k` is not supported (only -1 or 0, meaning all tokens)",
        )?;
        let temperature = self.number("temperature")?;
        if let Some(t) = temperature
            && !(t >= 0.0 && t.is_finite())
        {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("`temperature` must be >= 0, got {t}"),
            ));
        }
        let top_p = self.number("top_p")?;
        if let Some(p) = top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("`top_p` must be in (0, 1], got {p}"),
            ));
        }
        let model = match self.get("model") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(wrong_type("model", "a string", v)),
        };
        Ok(Common {
            model,
            max_tokens: self.max_tokens(max_tokens_key)?,
            temperature: temperature.map(|t| t as f32),
            top_p: top_p.map(|p| p as f32),
            seed: self.seed()?,
            stop: self.stop()?,
            stream,
            include_usage,
            ignore_eos: self.boolean("ignore_eos")?.unwrap_or(false),
        })
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(key, "true or false", v)),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(wrong_type(key, "a number", v)),
        }
    }

    fn max_tokens(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n)),
                _ => Err(ApiError::invalid(
                    Some(key),
                    format!("`{key}` must be an integer >= 1, got {}", short(v)),
                )),
            },
        }
    }

    /// Any JSON integer; negative seeds (OpenAI allows them) are taken bit for bit.
    fn seed(&self) -> Result<Option<u64>, ApiError> {
        match self.get("seed") {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .map(Some)
                .ok_or_else(|| wrong_type("seed", "an integer", v)),
        }
    }

    fn stop(&self) -> Result<Vec<String>, ApiError> {
        let stops = match self.get("stop") {
            None => return Ok(Vec::new()),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(wrong_type("stop", "a string or a list of strings", v)),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(wrong_type("stop", "a string or a list of strings", v)),
        };
        if stops.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!(
                    "at most {MAX_STOP_STRINGS} stop strings, got {}",
                    stops.len()
                ),
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("stop"),
                "stop strings must not be empty",
            ));
        }
        Ok(stops)
    }

    /// A 400 naming `key` when it is present and `bad` holds for it.
    fn refuse_if(
        &self,
        key: &str,
        bad: impl Fn(&Value) -> bool,
        message: &str,
    ) -> Result<(), ApiError> {
        match self.get(key) {
            Some(v) if bad(v) => Err(ApiError::unsupported(key, message)),
            _ => Ok(()),
        }
    }
}

/// A prompt: a string, or token ids; a list of one of those is unwrapped (batches are refused).
fn parse_prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    const WHAT: &str = "a string or a list of token ids";
    let v = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(Some("prompt"), "`prompt` is required"));
        }
        Some(v) => v,
    };
    let list = match v {
        Value::String(s) => return Ok(Prompt::Text(s.clone())),
        Value::Array(list) => list,
        v => return Err(wrong_type("prompt", WHAT, v)),
    };
    if list.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "`prompt` is empty"));
    }
    if list.iter().all(Value::is_number) {
        return list
            .iter()
            .map(|x| {
                x.as_u64().ok_or_else(|| {
                    ApiError::invalid(
                        Some("prompt"),
                        format!("token ids must be integers >= 0, got {x}"),
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Prompt::Ids);
    }
    if list.len() > 1 && list.iter().all(|x| x.is_string() || x.is_array()) {
        return Err(ApiError::unsupported(
            "prompt",
            format!(
                "batched prompts are not supported ({} prompts): send one request per prompt",
                list.len()
            ),
        ));
    }
    match &list[0] {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        inner @ Value::Array(_) => parse_prompt(Some(inner)).and_then(|p| match p {
            Prompt::Ids(ids) => Ok(Prompt::Ids(ids)),
            Prompt::Text(_) => Err(wrong_type("prompt", WHAT, v)),
        }),
        _ => Err(wrong_type("prompt", WHAT, v)),
    }
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "`messages` is required",
            ));
        }
        Some(Value::Array(list)) => list,
        Some(v) => return Err(wrong_type("messages", "a list of messages", v)),
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must not be empty",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| parse_message(i, m))
        .collect()
}

fn parse_message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let Value::Object(m) = v else {
        return Err(ApiError::invalid(
            Some(&format!("messages[{i}]")),
            format!(
                "`messages[{i}]` must be an object with `role` and `content`, got {}",
                kind(v)
            ),
        ));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        Some(v) => return Err(wrong_type(&at("role"), "a non-empty string", v)),
        None => {
            return Err(ApiError::invalid(
                Some(&at("role")),
                format!("`{}` is required", at("role")),
            ));
        }
    };
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let here = at(&format!("content[{j}]"));
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => {
                        return Err(ApiError::invalid(
                            Some(&here),
                            format!("`{here}` of type text needs a string `text`"),
                        ));
                    }
                    (Some(other), _) => {
                        return Err(ApiError::unsupported(
                            &here,
                            format!(
                                "content parts of type `{other}` are not supported (text only)"
                            ),
                        ));
                    }
                    (None, _) => {
                        return Err(ApiError::invalid(
                            Some(&here),
                            format!("`{here}` must be an object with `type` and `text`"),
                        ));
                    }
                }
            }
            texts.join("\n")
        }
        Some(v) => {
            return Err(wrong_type(
                &at("content"),
                "a string or a list of text parts",
                v,
            ));
        }
    };
    Ok(ChatMessage { role, content })
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        Some(param),
        format!("`{param}` must be {expected}, got {}", short(got)),
    )
}

/// A value for an error message: short ones in full, long ones by kind.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= 40 {
        text
    } else {
        kind(v).to_string()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
