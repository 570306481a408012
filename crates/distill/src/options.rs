//! How a run is asked for (as opposed to what to train, which the recipe says).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// How to run (as opposed to what to train, which the recipe says).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest complete checkpoint in `output_dir`.
    pub resume: bool,
    /// With `resume`: accept a recipe that differs from the checkpoint's in fields that change
    /// the run's results (`--allow-recipe-change`). Every difference is printed either way.
    pub allow_recipe_change: bool,
    /// Show progress on stderr: a bar on a terminal, one plain line per logging step otherwise.
    pub progress: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop at the next update: a checkpoint is written and
    /// `train` returns with `stopped_early`.
    pub stop: Arc<AtomicBool>,
    /// Overrides the recipe's `max_steps`.
    pub max_steps: Option<usize>,
    /// Train from the offline teacher cache (`--cache-teacher`): build it first if it is
    /// missing or stale (the only time the teacher is loaded), then never run the teacher.
    pub cache_teacher: bool,
}
