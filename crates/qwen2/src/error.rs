//! Typed errors of the model crate. Every variant names the file it concerns and, where there
//! is one, the fix, because the person reading it is usually holding a checkpoint from the hub.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read: {source} (is this a Hugging Face model directory? fetch one with `cargo xtask download`)")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error("{path}: tensor `{name}` is missing (the checkpoint does not match config.json; re-download it or fix the config)")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?} from config.json (the checkpoint and config.json disagree)")]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor `{name}` has dtype {dtype}, which cannot be loaded (supported: BF16, F16, F32; convert the checkpoint with transformers first)")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{path}: corrupt or truncated safetensors file: {message} (re-download it)")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: tokenizer error: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("chat template of {path}: {message}")]
    ChatTemplate { path: PathBuf, message: String },

    /// A durable write (or hash) that failed, with the action and the file.
    #[error(transparent)]
    File(#[from] fsio::FileError),

    /// A GGUF file that cannot be read as a model (names the file, and the key or tensor).
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses a JSON file, naming it in the error.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}
