//! Typed errors of the evaluation crate; each names the file or option it concerns and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Loading a model or its tokenizer failed (the message names the file).
    #[error(transparent)]
    Model(#[from] qwen2::ModelError),

    /// Opening or reading the token shards failed (the message names the file).
    #[error(transparent)]
    Shards(#[from] preprocess::PreprocessError),

    /// An option or input that cannot be evaluated, with what to change.
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    File(#[from] fsio::FileError),

    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A line of a metrics JSONL file that is not what distill writes.
    #[error("{}: line {line}: {message}", path.display())]
    Metrics {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// Drawing the plot failed.
    #[error("cannot draw {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

impl EvalError {
    pub(crate) fn io<'a>(
        action: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| EvalError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
