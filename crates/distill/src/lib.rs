//! Knowledge distillation of a Qwen2 teacher into a Qwen2 student.
//!
//! Components (losses, logging) are kept apart from the recipe that drives them (the training
//! loop), as torchtune does. Dependencies run one way (`tests/python/module_graph.py`):
//!
//! losses, cross_tokenizer (alignment, its losses) -> objective (spec, student, batch, teacher, chunk, body, pass) -> recipe ->
//! measure (the evaluation metrics) -> verdict (a recipe's objective) -> teacher_cache ->
//! teacher, data -> on_policy (generated text) -> plan (what a run holds, known before it
//! loads) -> evaluate -> checkpoint (the run directory) -> update (one optimizer update) ->
//! trainer (the phases of a run) -> train (the loop) -> run (what a user starts).
//!
//! Public: what a caller configures, plans and runs ([`Recipe`], [`RunPlan`], [`run`],
//! [`train`], [`TrainOptions`], [`TrainSummary`]), one update as the trainer runs it
//! ([`GradientAccumulation`], [`GroupedAdamW`], for `bench distill-step`), the memory plan,
//! and the component modules tools and tests build on (losses, objective, measure, metrics,
//! tensorboard, on_policy, teacher_cache). The loop's own parts (data, checkpoint layout,
//! schedule, progress, the trainer) are private. The tiny test setup ([`toy`]) is behind the
//! `toy` feature.

mod checkpoint;
pub mod cross_tokenizer;
mod data;
mod error;
mod evaluate;
mod fused_losses;
mod gradients;
pub mod losses;
pub mod measure;
mod memory_plan;
pub mod metrics;
pub mod objective;
pub mod on_policy;
mod optimizer;
mod options;
mod plan;
mod progress;
pub mod recipe;
mod recipe_change;
pub mod run;
mod schedule;
mod summary;
mod teacher;
pub mod teacher_cache;
pub mod tensorboard;
#[cfg(feature = "toy")]
pub mod toy;
mod train;
mod trainer;
mod update;
mod verdict;

pub use data::BatchSource;
pub use error::TrainError;
pub use evaluate::{evaluate, EvalMetrics};
pub use memory_plan::{machine_memory, MemoryPart, MemoryPlan, RunShape};
pub use optimizer::GroupedAdamW;
pub use options::TrainOptions;
pub use plan::{RunPlan, TeacherPlan};
pub use recipe::Recipe;
pub use summary::TrainSummary;
pub use teacher::TeacherSource;
/// `--cache-teacher`: the run-level use of the teacher cache.
pub use teacher_cache::prepare as cached_teacher;
pub use train::{train, train_planned};
pub use update::GradientAccumulation;
pub use verdict::{objective_for, objective_with_verdict};
