//! The one error type of the crate.
//!
//! Every variant names the file it is about and, where the user can do something, says what:
//! these messages end up verbatim on the terminal of whoever ran `cargo xtask preprocess`.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = PreprocessError> = std::result::Result<T, E>;

/// Everything that can go wrong while preprocessing, reading shards or comparing tokenizers.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(
        "input {path} does not exist: pass a WikiText file (wiki.train.raw, wiki.valid.raw, \
         wiki.test.raw, or the hub's train/validation/test-*.parquet) or a directory holding them"
    )]
    InputNotFound { path: PathBuf },

    #[error(
        "input {path} is empty ({what}): the download was probably interrupted; fetch the file again"
    )]
    EmptyInput { path: PathBuf, what: &'static str },

    #[error(
        "{path}: line {line} is not valid UTF-8 (byte {byte_offset} of the file): WikiText is UTF-8; \
         re-download the file or convert it (e.g. `iconv -f latin1 -t utf-8`)"
    )]
    InvalidUtf8 {
        path: PathBuf,
        line: u64,
        byte_offset: u64,
    },

    #[error(
        "cannot tell which split {path} belongs to: name it wiki.train.raw / wiki.valid.raw / \
         wiki.test.raw, or train-*.parquet / validation-*.parquet / test-*.parquet"
    )]
    UnknownSplit { path: PathBuf },

    #[error(
        "directory {path} holds no WikiText files: expected wiki.{{train,valid,test}}.raw or \
         {{train,validation,test}}-*.parquet inside it"
    )]
    NoInputsInDirectory { path: PathBuf },

    #[error(
        "split `{split}` is given both as raw text ({raw}) and as parquet ({parquet}): they hold the \
         same text, pass only one of them"
    )]
    RawAndParquetForSameSplit {
        split: String,
        raw: PathBuf,
        parquet: PathBuf,
    },

    #[error("input {path} is given twice: pass each file once")]
    DuplicateInput { path: PathBuf },

    #[error(
        "parquet file {path} has no string column `text`{found}: expected the hub's \
         Salesforce/wikitext layout (one `text` row per line)"
    )]
    ParquetNoTextColumn { path: PathBuf, found: String },

    #[error("cannot read parquet file {path}: {source}")]
    ParquetRead {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no tokenizer.json in {dir}: --tokenizer takes a model directory holding tokenizer.json \
         (and config.json); fetch it with `cargo xtask download` or point at data/hub-files/<model>"
    )]
    TokenizerMissing { dir: PathBuf },

    #[error(
        "{path} is not a usable tokenizer: {message}; replace it with the model's original \
         tokenizer.json (re-download it)"
    )]
    TokenizerInvalid { path: PathBuf, message: String },

    #[error(
        "{path} is not a usable model config: {message}; replace it with the model's original file"
    )]
    ConfigInvalid { path: PathBuf, message: String },

    #[error(
        "cannot find the end-of-sequence token for {dir}: neither config.json `eos_token_id` nor \
         tokenizer_config.json `eos_token` names a token of tokenizer.json"
    )]
    NoEosToken { dir: PathBuf },

    #[error("tokenizing {path} failed: {message}")]
    Encode { path: PathBuf, message: String },

    #[error("--seq-len must be at least 2 (one token and its successor), got {seq_len}")]
    InvalidSeqLen { seq_len: usize },

    #[error("token id {id} does not fit the shard format (Int32)")]
    TokenIdTooLarge { id: u32 },

    #[error("cannot write parquet shard {path}: {source}")]
    ParquetWrite {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error(
        "{path} is not a complete shard manifest ({message}): rerun `cargo xtask preprocess` \
         (with --force if needed) to rebuild the shards"
    )]
    ManifestInvalid { path: PathBuf, message: String },

    #[error("no split `{split}` in {dir}; it has: {available}")]
    SplitNotFound {
        dir: PathBuf,
        split: String,
        available: String,
    },

    #[error(
        "shard {path} does not match its manifest ({message}): rebuild with `cargo xtask \
         preprocess --force`"
    )]
    ShardCorrupt { path: PathBuf, message: String },

    #[error("block index {index} is out of range: the split has {len} blocks")]
    BlockOutOfRange { index: usize, len: usize },

    #[error("{0}")]
    IncompatibleTokenizers(String),
}

impl PreprocessError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Durable writes and file hashes come from `fsio`; their errors name the file as `Io` does.
impl From<fsio::FileError> for PreprocessError {
    fn from(error: fsio::FileError) -> Self {
        Self::io(error.path, error.source)
    }
}
