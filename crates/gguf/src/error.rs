//! Typed errors. Each names the file and, where there is one, the key or tensor, and what would
//! work instead, because the reader usually holds a file downloaded from somewhere else.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a GGUF file: {message}")]
    NotGguf { path: PathBuf, message: String },

    #[error("{path}: corrupt or truncated GGUF file: {message} (download it again)")]
    Corrupt { path: PathBuf, message: String },

    #[error("{path}: metadata key `{key}`: {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },

    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: tensor `{name}` has type {type_name}, which this tool cannot dequantize (supported: {supported}; requantize the model with llama.cpp's llama-quantize to one of them)")]
    UnsupportedType {
        path: PathBuf,
        name: String,
        type_name: String,
        supported: String,
    },

    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?} from the metadata (the file's tensors and its metadata disagree)")]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A durable write that failed, with the action and the file.
    #[error(transparent)]
    File(#[from] fsio::FileError),
}

pub type Result<T> = std::result::Result<T, GgufError>;
