//! The files of a model that tokenization reads: tokenizer.json, config.json and
//! tokenizer_config.json of a Hugging Face folder, or their equivalents built from a GGUF
//! file's metadata (the tokenizer from `tokenizer.ggml.*`, the vocabulary size from the
//! embedding's rows, bos/eos/pad from the special token ids). `tokenize` and `compat` read a
//! model only through here, so each file is parsed in one place.

use std::path::Path;

use fsio::sha256_hex;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::errors::{PreprocessError, Result};

pub(crate) struct ModelFiles {
    pub tokenizer: Tokenizer,
    /// The tokenizer.json document (built, for a GGUF).
    pub tokenizer_json: Value,
    /// sha256 of the tokenizer.json bytes (for a GGUF, of the document as built).
    pub tokenizer_sha256: String,
    pub config: Option<Value>,
    /// sha256 of config.json (for a GGUF, of the GGUF file's metadata-derived stand-in).
    pub config_sha256: Option<String>,
    pub tokenizer_config: Option<Value>,
}

/// Reads a JSON file, mapping failures to `ConfigInvalid` naming the file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|err| PreprocessError::io(path, err))?;
    parse_json(&bytes, path)
}

fn parse_json(bytes: &[u8], path: &Path) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|err| PreprocessError::ConfigInvalid {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

fn build_tokenizer(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_bytes(bytes).map_err(|err| PreprocessError::TokenizerInvalid {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

impl ModelFiles {
    /// Reads the model at `dir` (a folder or a `.gguf` file), reporting a missing or broken
    /// file clearly.
    pub fn read(dir: &Path) -> Result<Self> {
        if gguf::is_gguf_path(dir) {
            return Self::read_gguf(dir);
        }
        let path = dir.join("tokenizer.json");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(PreprocessError::TokenizerMissing {
                    dir: dir.to_path_buf(),
                })
            }
            Err(err) => return Err(PreprocessError::io(&path, err)),
        };
        let tokenizer = build_tokenizer(&bytes, &path)?;
        let tokenizer_json = parse_json(&bytes, &path)?;
        let config_path = dir.join("config.json");
        let (config, config_sha256) = if config_path.is_file() {
            let bytes = std::fs::read(&config_path)
                .map_err(|err| PreprocessError::io(&config_path, err))?;
            (
                Some(parse_json(&bytes, &config_path)?),
                Some(sha256_hex(&bytes)),
            )
        } else {
            (None, None)
        };
        let tokenizer_config_path = dir.join("tokenizer_config.json");
        let tokenizer_config = if tokenizer_config_path.is_file() {
            Some(read_json(&tokenizer_config_path)?)
        } else {
            None
        };
        Ok(Self {
            tokenizer,
            tokenizer_json,
            tokenizer_sha256: sha256_hex(&bytes),
            config,
            config_sha256,
            tokenizer_config,
        })
    }

    fn read_gguf(path: &Path) -> Result<Self> {
        let invalid = |message: String| PreprocessError::TokenizerInvalid {
            path: path.to_path_buf(),
            message,
        };
        let file = gguf::GgufFile::open(path).map_err(|e| invalid(e.to_string()))?;
        let tokenizer_json =
            gguf::tokenizer::tokenizer_json(&file).map_err(|e| invalid(e.to_string()))?;
        let bytes = serde_json::to_vec(&tokenizer_json).expect("json");
        let tokenizer = build_tokenizer(&bytes, path)?;
        let id = |key: &str| file.get(key).and_then(|v| v.as_u64());
        let token = |key: &str| id(key).and_then(|id| gguf::tokenizer::token_string(&file, id));
        let config = json!({
            "vocab_size": file.tensor("token_embd.weight").map(|t| t.shape()[0]),
            "eos_token_id": id("tokenizer.ggml.eos_token_id"),
            "bos_token_id": id("tokenizer.ggml.bos_token_id"),
        });
        let tokenizer_config = json!({
            "eos_token": token("tokenizer.ggml.eos_token_id"),
            "pad_token": token("tokenizer.ggml.padding_token_id"),
            "bos_token": token("tokenizer.ggml.bos_token_id"),
        });
        Ok(Self {
            tokenizer,
            tokenizer_json,
            tokenizer_sha256: sha256_hex(&bytes),
            config_sha256: Some(sha256_hex(config.to_string().as_bytes())),
            config: Some(config),
            tokenizer_config: Some(tokenizer_config),
        })
    }
}

/// sha256 of the tokenizer.json of the model at `dir` (for a GGUF, of the tokenizer.json its
/// metadata builds): what a record of "made with this tokenizer" compares.
pub fn tokenizer_sha256(dir: &Path) -> Result<String> {
    Ok(ModelFiles::read(dir)?.tokenizer_sha256)
}
