//! The model's tokenizer (tokenizer.json through the `tokenizers` crate) and its chat template
//! (chat_template.jinja or tokenizer_config.json, rendered with minijinja as transformers
//! renders it with Jinja2).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{read_file, read_json, ModelError, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `DIR/tokenizer.json`, or the tokenizer a GGUF file's metadata describes.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if gguf::is_gguf_path(dir) {
            let json = gguf::tokenizer::tokenizer_json(&gguf::GgufFile::open(dir)?)?;
            return Self::from_json(json, dir);
        }
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::Tokenizer {
                path,
                message: "missing: copy the model's tokenizer.json into this directory".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: format!("cannot parse: {e}"),
        })?;
        Ok(Self { inner, path })
    }

    /// Builds the tokenizer from a tokenizer.json document; `path` names its origin in errors.
    pub fn from_json(json: Value, path: &Path) -> Result<Self> {
        let inner = serde_json::from_value::<tokenizers::Tokenizer>(json).map_err(|e| {
            ModelError::Tokenizer {
                path: path.to_path_buf(),
                message: format!("cannot build the tokenizer: {e}"),
            }
        })?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Encodes text as `tokenizer(text)` does in transformers: with the tokenizer's own special
    /// tokens when `add_special_tokens` (DeepSeek-R1-Distill prepends BOS, Qwen2.5 adds none).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding =
            self.inner
                .encode(text, add_special_tokens)
                .map_err(|e| ModelError::Tokenizer {
                    path: self.path.clone(),
                    message: format!("cannot encode: {e}"),
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot decode: {e}"),
            })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns a growing list of generated ids into text deltas, holding back bytes that do not yet
/// form a whole UTF-8 character (byte-level BPE splits characters across tokens).
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// The new text that `id` completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed {
            return Ok(String::new());
        }
        let delta = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(delta)
    }
}

/// Where transformers 5 (and 4.x since 4.47) saves the chat template: its own file beside
/// tokenizer_config.json, which then has no `chat_template` field.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The chat template of a model directory, as transformers finds it: `chat_template.jinja`
/// first (it overrides the config's field), else `chat_template` in tokenizer_config.json.
/// Returns the template and the file it came from.
pub fn chat_template(dir: &Path) -> Result<(String, PathBuf)> {
    if gguf::is_gguf_path(dir) {
        let file = gguf::GgufFile::open(dir)?;
        return match file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(template) => Ok((template.to_string(), dir.to_path_buf())),
            None => Err(ModelError::ChatTemplate {
                path: dir.to_path_buf(),
                message: "metadata key `tokenizer.chat_template` is missing: this model has no \
                          chat template (a base model?); run without --chat"
                    .into(),
            }),
        };
    }
    let jinja = dir.join(CHAT_TEMPLATE_FILE);
    if jinja.is_file() {
        let bytes = read_file(&jinja)?;
        let template = String::from_utf8(bytes).map_err(|e| ModelError::ChatTemplate {
            path: jinja.clone(),
            message: format!("not UTF-8 text: {e}"),
        })?;
        return Ok((template, jinja));
    }
    let path = dir.join("tokenizer_config.json");
    let config = read_json(&path)?;
    let error = |message: String| ModelError::ChatTemplate {
        path: path.clone(),
        message,
    };
    let template = match config.get("chat_template") {
        Some(Value::String(template)) => template.clone(),
        // Newer files list named templates; "default" is the chat one.
        Some(Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .ok_or_else(|| error("no template named `default` in `chat_template`".into()))?
            .to_string(),
        _ => {
            return Err(error(format!(
                "field `chat_template` is missing and there is no {CHAT_TEMPLATE_FILE} beside \
                 it: this model has no chat template (a base model?); run without --chat"
            )))
        }
    };
    Ok((template, path))
}

/// tokenizer_config.json's fields, or for a GGUF the bos and eos token strings under the same
/// names (what a chat template may print).
fn special_tokens(dir: &Path) -> Result<Value> {
    if gguf::is_gguf_path(dir) {
        let file = gguf::GgufFile::open(dir)?;
        let token = |key: &str| {
            file.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|id| gguf::tokenizer::token_string(&file, id))
        };
        return Ok(serde_json::json!({
            "bos_token": token("tokenizer.ggml.bos_token_id"),
            "eos_token": token("tokenizer.ggml.eos_token_id"),
        }));
    }
    let config_path = dir.join("tokenizer_config.json");
    if config_path.is_file() {
        read_json(&config_path)
    } else {
        Ok(Value::Null)
    }
}

/// Renders the model's chat template ([`chat_template`]) for one user message, with the
/// generation prompt appended, as `apply_chat_template(..., add_generation_prompt=True)`. The
/// special tokens it may print come from tokenizer_config.json, when there is one.
pub fn render_chat(dir: &Path, user_message: &str) -> Result<String> {
    let (template, path) = chat_template(dir)?;
    let config = special_tokens(dir)?;
    let error = |message: String| ModelError::ChatTemplate {
        path: path.clone(),
        message,
    };
    let special = |name: &str| -> String {
        match config.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        }
    };

    let mut environment = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut environment);
    environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    environment.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    environment
        .add_template("chat", &template)
        .map_err(|e| error(format!("cannot parse: {e}")))?;
    let context = minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => user_message }],
        add_generation_prompt => true,
        bos_token => special("bos_token"),
        eos_token => special("eos_token"),
    };
    environment
        .get_template("chat")
        .and_then(|t| t.render(context))
        .map_err(|e| error(format!("cannot render: {e}")))
}

/// Writes the Hugging Face tokenizer files of a GGUF's tokenizer into `dir`: tokenizer.json
/// (as `gguf::tokenizer` builds it, which transformers' GGUF reading equals) and
/// tokenizer_config.json with the chat template and the special tokens, as transformers
/// derives them from the file.
pub fn write_gguf_tokenizer_files(gguf_path: &Path, dir: &Path) -> Result<()> {
    let file = gguf::GgufFile::open(gguf_path)?;
    let tokenizer = gguf::tokenizer::tokenizer_json(&file)?;
    fsio::write_atomic(
        &dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer).expect("json").as_bytes(),
    )?;
    let token = |key: &str| {
        file.get(key)
            .and_then(|v| v.as_u64())
            .and_then(|id| gguf::tokenizer::token_string(&file, id))
    };
    let flag = |key: &str| file.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let mut config = serde_json::json!({
        // The tokenizer.json above is complete; a model-specific class would rebuild parts of it.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": flag("tokenizer.ggml.add_bos_token"),
        "add_eos_token": flag("tokenizer.ggml.add_eos_token"),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "clean_up_tokenization_spaces": false,
        "model_max_length": file.get("qwen2.context_length").and_then(|v| v.as_u64()),
    });
    if let Some(template) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        config["chat_template"] = template.into();
    }
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    fsio::write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    Ok(())
}
