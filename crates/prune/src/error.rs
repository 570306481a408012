//! Typed errors of pruning. A bad request names the command-line flag it came from and the
//! limit it broke, because the fix is always to change that flag.

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },

    #[error(transparent)]
    Model(#[from] qwen2::ModelError),

    #[error(transparent)]
    Data(#[from] preprocess::PreprocessError),

    #[error(transparent)]
    File(#[from] fsio::FileError),
}

pub type Result<T> = std::result::Result<T, PruneError>;

pub(crate) fn flag_error(flag: &'static str, message: impl Into<String>) -> PruneError {
    PruneError::Flag {
        flag,
        message: message.into(),
    }
}
