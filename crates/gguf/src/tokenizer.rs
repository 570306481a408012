//! A GGUF's byte-level BPE tokenizer (`tokenizer.ggml.*`) and Hugging Face's `tokenizer.json`,
//! each built from the other.
//!
//! GGUF -> tokenizer.json follows transformers' own GGUF reading (transformers 5.25,
//! `integrations/gguf/gguf_tokenizer_mapping.py`), so text encodes to the same ids:
//! - the model is BPE over the file's tokens (each id's string; a later duplicate wins) and its
//!   merges, with no normalizer;
//! - the pre-tokenizer is the split regex of `tokenizer.ggml.pre` (isolated matches), then
//!   byte-level mapping without a prefix space;
//! - tokens typed CONTROL (3) whose characters all belong to the byte-level alphabet become
//!   special added tokens, then USER_DEFINED (4) tokens become plain added tokens.
//!
//! tokenizer.json -> GGUF follows llama.cpp's `convert_hf_to_gguf.py` (`get_vocab_base`):
//! one token per id up to the model's vocabulary, `[PAD{id}]` where no token has the id
//! (UNUSED), special added tokens CONTROL, other added tokens USER_DEFINED, the rest NORMAL.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value as Json};

use crate::error::{GgufError, Result};
use crate::metadata::{Value, ValueType};
use crate::read::GgufFile;

/// The token types of `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Qwen2's pre-tokenizer split (transformers' `Qwen2Tokenizer.PRETOKENIZE_REGEX`, llama.cpp's
/// `qwen2` pre-tokenizer).
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's (and several others'), which splits digits in runs of up to three.
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre` value this reader knows.
fn split_for(pre: &str) -> Option<&'static str> {
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" | "pixtral" => {
            Some(LLAMA3_SPLIT)
        }
        _ => None,
    }
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the others are moved
/// to 256 and up, so every byte has a visible character.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&byte) || (0xA1..=0xAC).contains(&byte) || byte >= 0xAE;
        map[byte as usize] = if printable {
            byte as char
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    map
}

fn string_array<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let value = file
        .get(key)
        .ok_or_else(|| file.metadata_error(key, "missing"))?;
    let items = value
        .as_array()
        .ok_or_else(|| file.metadata_error(key, format!("{} is not an array", value.describe())))?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .ok_or_else(|| file.metadata_error(key, "holds a value that is not a string"))
        })
        .collect()
}

/// The `tokenizer.json` document of a GGUF's tokenizer (see the module docs).
pub fn tokenizer_json(file: &GgufFile) -> Result<Json> {
    let model = file.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(file.metadata_error(
            "tokenizer.ggml.model",
            format!("`{model}` is not supported: only byte-level BPE (`gpt2`, as Qwen2, Llama 3 and GPT-2 files use) is"),
        ));
    }
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let split = split_for(pre).ok_or_else(|| {
        file.metadata_error(
            "tokenizer.ggml.pre",
            format!("pre-tokenizer `{pre}` is not supported (supported: qwen2, deepseek-r1-qwen, llama3, llama-bpe)"),
        )
    })?;
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let merges = string_array(file, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match file.get("tokenizer.ggml.token_type") {
        None => vec![token_type::NORMAL; tokens.len()],
        Some(value) => {
            let items = value.as_array().ok_or_else(|| {
                file.metadata_error("tokenizer.ggml.token_type", "is not an array")
            })?;
            if items.len() != tokens.len() {
                return Err(file.metadata_error(
                    "tokenizer.ggml.token_type",
                    format!(
                        "has {} entries but tokenizer.ggml.tokens has {}",
                        items.len(),
                        tokens.len()
                    ),
                ));
            }
            items
                .iter()
                .map(|v| v.as_i64().map(|t| t as i32))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    file.metadata_error("tokenizer.ggml.token_type", "holds a non-integer")
                })?
        }
    };

    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let spelled = |token: &str| -> String {
        if token.chars().all(|c| alphabet.contains(&c)) {
            token.to_string()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        }
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(spelled(token), json!(id));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for merge in &merges {
        let (left, right) = merge.split_once(' ').ok_or_else(|| {
            file.metadata_error(
                "tokenizer.ggml.merges",
                format!("merge {merge:?} is not two tokens separated by a space"),
            )
        })?;
        merge_pairs.push(json!([left, right]));
    }

    // Added tokens take the id the vocabulary gives their string (as transformers' lookup does).
    let mut added = Vec::new();
    let mut seen = HashSet::new();
    for (token, &kind) in tokens.iter().zip(&types) {
        if kind == token_type::CONTROL
            && token.chars().all(|c| alphabet.contains(&c))
            && seen.insert(*token)
        {
            added.push((*token, true));
        }
    }
    for (token, &kind) in tokens.iter().zip(&types) {
        if kind == token_type::USER_DEFINED && vocab.contains_key(*token) && seen.insert(*token) {
            added.push((*token, false));
        }
    }
    let added_tokens: Vec<Json> = added
        .iter()
        .map(|(content, special)| {
            json!({
                "id": vocab[*content],
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special,
            })
        })
        .collect();

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merge_pairs,
        },
    }))
}

/// The string of token `id` in a GGUF's token list, if there is one.
pub fn token_string(file: &GgufFile, id: u64) -> Option<String> {
    file.get("tokenizer.ggml.tokens")?
        .as_array()?
        .get(id as usize)?
        .as_str()
        .map(str::to_string)
}

/// The `tokenizer.*` metadata keys of llama.cpp's converter for a byte-level BPE
/// `tokenizer.json` (see the module docs). `vocab_size` is the model's embedding rows; special
/// ids and the chat template come from the caller (config.json and tokenizer_config.json).
pub struct TokenizerMetadata<'a> {
    pub tokenizer_json: &'a Json,
    pub vocab_size: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub chat_template: Option<&'a str>,
}

impl TokenizerMetadata<'_> {
    /// The keys, or a message naming the tokenizer.json field that cannot be converted.
    pub fn to_metadata(&self) -> std::result::Result<Vec<(String, Value)>, String> {
        let model = &self.tokenizer_json["model"];
        if model["type"] != "BPE" {
            return Err(format!(
                "model.type is {}: only a byte-level BPE tokenizer can be written to GGUF",
                model["type"]
            ));
        }
        let pre = pre_tokenizer_name(self.tokenizer_json).ok_or_else(|| {
            "pre_tokenizer: only Qwen2's and Llama 3's byte-level split patterns are known to llama.cpp's loader here".to_string()
        })?;
        let vocab = model["vocab"]
            .as_object()
            .ok_or("model.vocab is not an object")?;
        let mut by_id: BTreeMap<usize, &str> = BTreeMap::new();
        for (token, id) in vocab {
            let id = id.as_u64().ok_or("model.vocab holds a non-integer id")? as usize;
            by_id.insert(id, token);
        }
        let mut added: HashMap<usize, (&str, bool)> = HashMap::new();
        for token in self.tokenizer_json["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(content)) = (token["id"].as_u64(), token["content"].as_str())
            else {
                return Err("added_tokens: an entry lacks id or content".into());
            };
            added.insert(
                id as usize,
                (content, token["special"].as_bool().unwrap_or(false)),
            );
        }
        let highest = by_id.keys().chain(added.keys()).max().copied().unwrap_or(0);
        if highest >= self.vocab_size {
            return Err(format!(
                "token id {highest} is outside the model's {} embedding rows",
                self.vocab_size
            ));
        }
        let mut tokens = Vec::with_capacity(self.vocab_size);
        let mut types = Vec::with_capacity(self.vocab_size);
        for id in 0..self.vocab_size {
            let (token, kind) = match (added.get(&id), by_id.get(&id)) {
                (Some((content, true)), _) => (content.to_string(), token_type::CONTROL),
                (Some((content, false)), _) => (content.to_string(), token_type::USER_DEFINED),
                (None, Some(token)) if is_pad_placeholder(token) => {
                    (token.to_string(), token_type::UNUSED)
                }
                (None, Some(token)) => (token.to_string(), token_type::NORMAL),
                (None, None) => (format!("[PAD{id}]"), token_type::UNUSED),
            };
            tokens.push(Value::String(token));
            types.push(Value::I32(kind));
        }
        let merges: Vec<Value> = model["merges"]
            .as_array()
            .ok_or("model.merges is not a list")?
            .iter()
            .map(|merge| match merge {
                Json::String(s) => Ok(Value::String(s.clone())),
                Json::Array(pair) if pair.len() == 2 => Ok(Value::String(format!(
                    "{} {}",
                    pair[0].as_str().unwrap_or_default(),
                    pair[1].as_str().unwrap_or_default()
                ))),
                other => Err(format!("model.merges holds {other}")),
            })
            .collect::<std::result::Result<_, String>>()?;

        let mut keys = vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(ValueType::String, tokens),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(ValueType::I32, types),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(ValueType::String, merges),
            ),
        ];
        for (key, id) in [
            ("tokenizer.ggml.eos_token_id", self.eos_token_id),
            ("tokenizer.ggml.padding_token_id", self.padding_token_id),
            ("tokenizer.ggml.bos_token_id", self.bos_token_id),
        ] {
            if let Some(id) = id {
                keys.push((key.to_string(), Value::U32(id)));
            }
        }
        keys.push((
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(self.add_bos_token),
        ));
        if let Some(template) = self.chat_template {
            keys.push((
                "tokenizer.chat_template".into(),
                Value::String(template.into()),
            ));
        }
        Ok(keys)
    }
}

fn is_pad_placeholder(token: &str) -> bool {
    token
        .strip_prefix("[PAD")
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// llama.cpp's `tokenizer.ggml.pre` name for a tokenizer.json's split pattern.
fn pre_tokenizer_name(tokenizer_json: &Json) -> Option<&'static str> {
    let pre = &tokenizer_json["pre_tokenizer"];
    let splits: Vec<&Json> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"].as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let pattern = splits
        .iter()
        .find(|p| p["type"] == "Split")
        .and_then(|p| p["pattern"]["Regex"].as_str())?;
    match pattern {
        QWEN2_SPLIT => Some("qwen2"),
        LLAMA3_SPLIT => Some("llama-bpe"),
        _ => None,
    }
}

/// Why a GGUF's tokenizer cannot be used, as this crate's error type (for callers that
/// convert a [`TokenizerMetadata`] message).
pub fn tokenizer_error(path: &std::path::Path, message: String) -> GgufError {
    GgufError::Metadata {
        path: path.to_path_buf(),
        key: "tokenizer".into(),
        message,
    }
}
