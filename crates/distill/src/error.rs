//! The error of everything the trainer does, shared by the modules that feed it (data, teacher,
//! evaluation, checkpoints) so none of them has to import the training loop.

use std::path::{Path, PathBuf};

use crate::metrics::MetricsError;
use crate::recipe::RecipeError;
use crate::teacher_cache::CacheError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Model(#[from] qwen2::ModelError),
    #[error(transparent)]
    Data(#[from] preprocess::PreprocessError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    File(#[from] fsio::FileError),
    #[error(transparent)]
    Alignment(#[from] crate::cross_tokenizer::alignment::AlignmentError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: optimizer state: {message}", path.display())]
    Record { path: PathBuf, message: String },
    #[error("the training loss became {loss} at step {step} (epoch {epoch}): lower training.learning_rate, set training.max_grad_norm, or check the data; the last checkpoint is intact")]
    NonFinite {
        step: usize,
        epoch: usize,
        loss: f64,
    },
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    /// A closure for `map_err` that names `path` in an I/O error.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
