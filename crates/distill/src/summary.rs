//! What a run reports when it ends.

use std::path::PathBuf;

use crate::evaluate::EvalMetrics;
use crate::teacher_cache::prepare::TeacherCacheSummary;

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer updates done in total (including those before a resume).
    pub steps: usize,
    pub epochs_completed: usize,
    /// Real tokens trained on in total (including those before a resume).
    pub train_tokens: u64,
    /// Real tokens per second of training (forward, backward, update; not evaluation or
    /// saving) in this process.
    pub tokens_per_second: f64,
    /// Peak resident memory of the process (VmHWM), when the OS reports it. When this run
    /// built a teacher cache, the peak of training alone (measured from after the teacher was
    /// dropped); the build's is in `teacher_cache`.
    pub peak_rss_bytes: Option<u64>,
    /// Mean loss of the last update.
    pub last_train_loss: Option<f64>,
    /// Evaluation of the student as loaded, before the first update (fresh runs with an
    /// eval_strategy; also logged at step 0), the baseline the later evaluations improve on.
    pub initial_eval: Option<EvalMetrics>,
    pub last_eval: Option<EvalMetrics>,
    pub output_dir: PathBuf,
    /// The checkpoint with the lowest evaluation loss, when it was saved.
    pub best_checkpoint: Option<PathBuf>,
    pub last_checkpoint: Option<PathBuf>,
    /// The final student (`output_dir/final`), absent when the run was stopped early.
    pub final_model: Option<PathBuf>,
    /// A LoRA run's final adapter alone, in PEFT's layout.
    pub final_adapter: Option<PathBuf>,
    /// What `[on_policy]` generated in this process (none without generation).
    pub rollouts: Option<crate::on_policy::RolloutWindow>,
    /// The run ended because `TrainOptions::stop` was set.
    pub stopped_early: bool,
    /// What `cache_teacher` built or reused. With a cache, `kl_to_teacher` of the evaluations
    /// is the top-k approximation (logged as `kl_to_teacher_topk`).
    pub teacher_cache: Option<TeacherCacheSummary>,
}
