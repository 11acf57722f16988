//! Chat templates: what a model directory says about turning messages into a prompt, and
//! rendering it the way transformers' `apply_chat_template` does (Jinja with `trim_blocks` and
//! `lstrip_blocks`, Python string methods, `raise_exception`, a `tojson` that writes like Python's
//! `json.dumps`), so a served model sees the prompts it was trained on.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mimo_compiler::artifact::Artifact;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, Value as JValue, context};
use serde_json::{Map, Value};

use super::openai::ChatMessage;
use mimo_runtime::builtin;
use mimo_runtime::model::resolve_model;

/// What serving needs from a model directory beyond what a `Session` carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// `generation_config.json`'s sampling defaults, used when a request gives none (as vLLM).
    pub default_temperature: Option<f32>,
    pub default_top_p: Option<f32>,
}

impl ModelInfo {
    /// Reads the model at `model` (None: the built-in model): a Hugging Face directory, a
    /// model.toml naming one, or an artifact (through the model it was compiled from).
    pub fn load(model: Option<&Path>) -> Result<ModelInfo> {
        let Some(path) = model.filter(|p| !builtin::is_builtin(p)) else {
            let file = PathBuf::from(format!("<{}>/tokenizer_config.json", builtin::NAME));
            return ModelInfo::from_tokenizer_config(builtin::TOKENIZER_CONFIG_JSON, &file);
        };
        let source = if Artifact::is_artifact(path) {
            let art = Artifact::open(path)?;
            art.manifest.model.source.with_context(|| {
                format!("{}: the artifact names no model to serve", path.display())
            })?
        } else {
            path.to_path_buf()
        };
        match resolve_model(&source)?.hf_dir {
            Some(dir) => ModelInfo::from_dir(&dir),
            None => Ok(ModelInfo::default()),
        }
    }

    /// From a Hugging Face directory: `chat_template.jinja` (newer transformers) wins over
    /// `chat_template.json`, which wins over `tokenizer_config.json`'s `chat_template`.
    pub fn from_dir(dir: &Path) -> Result<ModelInfo> {
        let config = dir.join("tokenizer_config.json");
        let mut info = match read_optional(&config)? {
            Some(text) => ModelInfo::from_tokenizer_config(&text, &config)?,
            None => ModelInfo::default(),
        };
        let json_template = dir.join("chat_template.json");
        if let Some(text) = read_optional(&json_template)? {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: malformed JSON", json_template.display()))?;
            info.chat_template = template_field(&v, &json_template)?.or(info.chat_template);
        }
        if let Some(text) = read_optional(&dir.join("chat_template.jinja"))? {
            info.chat_template = Some(text);
        }
        let generation = dir.join("generation_config.json");
        if let Some(text) = read_optional(&generation)? {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: malformed JSON", generation.display()))?;
            info.default_temperature = v
                .get("temperature")
                .and_then(Value::as_f64)
                .map(|t| t as f32);
            info.default_top_p = v.get("top_p").and_then(Value::as_f64).map(|p| p as f32);
        }
        Ok(info)
    }

    /// From the text of a `tokenizer_config.json` (`file` names it in errors).
    pub fn from_tokenizer_config(text: &str, file: &Path) -> Result<ModelInfo> {
        let v: Value = serde_json::from_str(text)
            .with_context(|| format!("{}: malformed JSON", file.display()))?;
        let token = |key: &str| match v.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        Ok(ModelInfo {
            chat_template: template_field(&v, file)?,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            default_temperature: None,
            default_top_p: None,
        })
    }
}

/// `chat_template`: a string, or a list of `{name, template}` of which `default` is taken.
fn template_field(v: &Value, file: &Path) -> Result<Option<String>> {
    match v.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => Ok(list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(String::from)),
        Some(_) => anyhow::bail!(
            "{}: field `chat_template`: expected a string or a list of named templates",
            file.display()
        ),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A compiled chat template, ready to render requests.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported at startup rather than on every request.
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .context("chat template syntax")?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source)
            .map_err(|e| anyhow::anyhow!("invalid chat template: {}", one_line(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// The prompt for `messages`, ending where the assistant's reply begins. `kwargs` are extra
    /// template variables from the request. An error is the template refusing the messages (a
    /// role it does not know, roles out of order), which is the client's to fix.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        kwargs: &Map<String, Value>,
    ) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| one_line(&e))?;
        let base = context! {
            messages => JValue::from(Serde(messages)),
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let ctx = context! { ..base, ..JValue::from(Serde(kwargs)) };
        template.render(ctx).map_err(|e| one_line(&e))
    }
}

fn raise_exception(message: String) -> Result<JValue, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`, keys in order.
fn tojson(value: JValue, indent: Option<usize>) -> Result<JValue, Error> {
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&pad),
            );
            serde::Serialize::serialize(&json, &mut ser)
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
            serde::Serialize::serialize(&json, &mut ser)
        }
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(JValue::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Python's default separators: `", "` and `": "`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// A minijinja error on one line: its message and where in the template it happened.
fn one_line(e: &Error) -> String {
    let mut text = match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line()
        && !text.contains("line")
    {
        text.push_str(&format!(" (chat template line {line})"));
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(list: &[(&str, &str)]) -> Vec<ChatMessage> {
        list.iter()
            .map(|(r, c)| ChatMessage {
                role: r.to_string(),
                content: c.to_string(),
            })
            .collect()
    }

    fn builtin_template() -> ChatTemplate {
        let info = ModelInfo::load(None).unwrap();
        assert_eq!(info.eos_token.as_deref(), Some("<|im_end|>"));
        ChatTemplate::new(info.chat_template.unwrap(), info.bos_token, info.eos_token).unwrap()
    }

    #[test]
    fn renders_the_builtin_chatml_template() {
        let t = builtin_template();
        let text = t
            .render(
                &msgs(&[("system", "Be brief."), ("user", "Hi")]),
                &Map::new(),
            )
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn fixtures_have_templates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/qwen3_moe_a");
        let info = ModelInfo::load(Some(&dir)).unwrap();
        assert!(info.chat_template.unwrap().contains("im_start"));
        assert_eq!(info.bos_token.as_deref(), Some("<|endoftext|>"));
    }

    #[test]
    fn python_features_and_errors() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('roles must be user or assistant, got ' + m.role) }}{% endif %}{{ m.content.strip().upper() }}|{{ {'a': [1, 'é']} | tojson }}|{% endfor %}{{ bos_token }}{{ extra }}"
                .to_string(),
            Some("<s>".into()),
            None,
        )
        .unwrap();
        let mut kwargs = Map::new();
        kwargs.insert("extra".into(), "!".into());
        assert_eq!(
            t.render(&msgs(&[("user", "  hi ")]), &kwargs).unwrap(),
            "HI|{\"a\": [1, \"é\"]}|<s>!"
        );
        let e = t.render(&msgs(&[("tool", "x")]), &kwargs).unwrap_err();
        assert!(
            e.contains("roles must be user or assistant, got tool"),
            "{e}"
        );
        // Request variables cannot replace the messages.
        kwargs.insert("messages".into(), Value::Null);
        assert!(
            t.render(&msgs(&[("user", "a")]), &kwargs)
                .unwrap()
                .starts_with('A')
        );
    }

    #[test]
    fn a_broken_template_is_refused_at_startup() {
        let e = ChatTemplate::new("{% for %}".into(), None, None)
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("invalid chat template"), "{e}");
    }
}
