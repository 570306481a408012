//! Evaluation of Qwen2 models on token shards, measured and reported.
//!
//! For each model: loss and perplexity on a split (token-weighted, exactly transformers'
//! cross-entropy), KL to a teacher and top-1 agreement, forward latency per sample, greedy
//! generation speed and texts, and peak memory ([`evaluate_model`]). A [`Report`] gathers the
//! rows with the command, machine, backend and date, and writes `report.json` and `report.md`;
//! [`plot_training_curves`] draws distill's metrics log as a PNG.
//!
//! ```no_run
//! # use std::path::Path;
//! use eval::{evaluate_model, EvalOptions, Report};
//! use qwen2::backend::Cpu;
//! let options = EvalOptions { max_blocks: Some(8), ..EvalOptions::default() };
//! let device = Default::default();
//! let shards = Path::new("data/shards/wikitext2");
//! let mut report = Report::new("example", "ndarray", shards, &options);
//! report.models.push(evaluate_model::<Cpu>(Path::new("models/student"), "student", None, shards, &options, &device)?);
//! report.write(Path::new("reports/example"))?;
//! print!("{}", report.render_table());
//! # Ok::<(), eval::EvalError>(())
//! ```

// Public: the two components tests and tools reach into (curve panels, per-batch scoring);
// the rest is used through the re-exports below.
mod continuations;
pub mod curves;
mod error;
mod evaluate;
mod provenance;
pub mod quality;
mod report;
mod speed;

pub use continuations::{ContinuationOptions, ContinuationReport};
pub use curves::plot_training_curves;
pub use error::EvalError;
pub use evaluate::{
    default_prompts, evaluate_adapter, evaluate_loaded, evaluate_model, load_for_evaluation,
    EvalOptions, ModelReport,
};
pub use provenance::Machine;
pub use quality::{score_batch, score_batch_compared, Comparison, QualitySums};
pub use report::Report;
pub use speed::GenerationSample;
