//! The model's tokenizer (`tokenizer.json`, through the `tokenizers` crate), incremental decoding
//! for streaming, and the end-of-sequence ids a Hugging Face directory declares.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::LoadError;

/// A `tokenizer.json` tokenizer. Encoding and decoding follow transformers' defaults
/// (`tokenizer(text)` adds the post-processor's special tokens; `decode` keeps special tokens),
/// so ids match the reference exactly.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    file: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("file", &self.file)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the contents of a `tokenizer.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Tokenizer, LoadError> {
        let inner = text
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| LoadError::Tokenizer {
                file: path.to_path_buf(),
                message: one_line(&*e),
            })?;
        Ok(Tokenizer {
            inner,
            file: path.to_path_buf(),
        })
    }

    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LoadError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| self.err("cannot encode", &*e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included; ids the tokenizer does not know decode to nothing.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LoadError> {
        self.decode_with(ids, false)
    }

    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, LoadError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err("cannot decode", &*e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer, for what this wrapper does not cover.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn err(&self, what: &str, e: &(dyn std::error::Error + '_)) -> LoadError {
        LoadError::Tokenizer {
            file: self.file.clone(),
            message: format!("{what}: {}", one_line(e)),
        }
    }
}

fn one_line(e: &(dyn std::error::Error + '_)) -> String {
    e.to_string().replace('\n', " ")
}

/// Incremental detokenisation: feed generated ids one at a time, get the text they complete.
///
/// Decoding each id alone is wrong (a byte-level token may be half of a UTF-8 character, and
/// SentencePiece decoders drop a leading space at the start of the text), so each step decodes a
/// short window that starts a few tokens back and emits only what grew past the previous window,
/// holding text back while it ends in an incomplete character. The concatenated output equals
/// `decode(all ids)`.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the window decoded for context; its text up to `read_offset` was already emitted.
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl StreamDecoder {
    pub fn new(skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder {
            skip_special_tokens,
            ..StreamDecoder::default()
        }
    }

    /// Every id pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Adds `id`; returns the newly completed text (often empty while a character is incomplete).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, LoadError> {
        self.ids.push(id);
        let skip = self.skip_special_tokens;
        let prefix =
            tokenizer.decode_with(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let text = tokenizer.decode_with(&self.ids[self.prefix_offset..], skip)?;
        if text.len() > prefix.len()
            && !text.ends_with('\u{FFFD}')
            && text.is_char_boundary(prefix.len())
        {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(text[prefix.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character decodes as U+FFFD), at the end of a
    /// stream.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, LoadError> {
        let skip = self.skip_special_tokens;
        let prefix =
            tokenizer.decode_with(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let text = tokenizer.decode_with(&self.ids[self.prefix_offset..], skip)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(text.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

/// The end-of-sequence ids of the Hugging Face directory `dir`, in order of authority and without
/// duplicates: `generation_config.json`'s `eos_token_id` (what `generate` stops on), then
/// `config.json`'s, then `tokenizer_config.json`'s `eos_token` looked up in `tokenizer`.
/// Absent files are skipped; malformed ones are errors.
pub fn eos_token_ids(dir: &Path, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>, LoadError> {
    let mut ids = Vec::new();
    for file in ["generation_config.json", "config.json"] {
        let path = dir.join(file);
        if let Some(json) = read_json(&path)? {
            match json.get("eos_token_id") {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => {
                    for v in list {
                        ids.push(token_id(&path, v)?);
                    }
                }
                Some(v) => ids.push(token_id(&path, v)?),
            }
        }
    }
    let path = dir.join("tokenizer_config.json");
    if let (Some(json), Some(tokenizer)) = (read_json(&path)?, tokenizer) {
        let token = match json.get("eos_token") {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Object(added)) => added.get("content").and_then(Value::as_str),
            _ => None,
        };
        if let Some(token) = token {
            match tokenizer.token_to_id(token) {
                Some(id) => ids.push(id),
                None => tracing::warn!(
                    "{}: eos_token `{token}` is not in {}",
                    path.display(),
                    tokenizer.file().display()
                ),
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    Ok(ids)
}

fn token_id(path: &Path, v: &Value) -> Result<u32, LoadError> {
    v.as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| {
            LoadError::invalid(
                path,
                format!("field `eos_token_id`: expected a token id or a list of them, got {v}"),
            )
        })
}

fn read_json(path: &Path) -> Result<Option<Value>, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LoadError::invalid(path, format!("malformed JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::io(path, e)),
    }
}

#[cfg(test)]
mod tests;
