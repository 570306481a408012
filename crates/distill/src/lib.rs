//! Knowledge distillation of a Qwen2 teacher into a Qwen2 student.
//!
//! Components (losses, logging) are kept apart from the recipe that drives them (the training
//! loop), as torchtune does.

pub mod checkpoint;
pub mod data;
pub mod evaluate;
pub mod gradients;
pub mod losses;
pub mod memory_plan;
pub mod metrics;
pub mod objective;
pub mod optimizer;
pub mod recipe;
pub mod schedule;
pub mod teacher_cache;
pub mod tensorboard;
pub mod toy;
pub mod train;
pub mod trainer_checkpoint;

pub use evaluate::EvalMetrics;
pub use train::{train, TeacherSource, TrainError, TrainOptions, TrainSummary};
