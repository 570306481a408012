//! The training loop: a frozen teacher on the inference backend (no autodiff graph), the
//! student with autodiff, AdamW in two parameter groups as transformers' Trainer, warmup then
//! a linear/cosine/constant schedule, gradient accumulation, clipping by the global norm,
//! a seeded data order per epoch, evaluation, checkpoints, exact resume, Ctrl-C, logs.
//!
//! Conventions, as transformers' Trainer has them:
//! - an update averages the gradients of `gradient_accumulation_steps` micro-batches (each
//!   micro-batch's loss is its own token mean); the last update of an epoch may use fewer;
//! - `max_steps > 0` overrides `num_train_epochs` (epochs repeat until it is reached);
//! - update `s` (0-based) uses the learning rate `schedule(s)`;
//! - gradients are clipped as `clip_grad_norm_`: scaled by `max_norm / (norm + 1e-6)` when the
//!   global norm exceeds `max_norm`; the logged `grad_norm` is the norm before clipping.
//!
//! Resume: every checkpoint holds the float32 student, the projections, the optimizer moments
//! and the data position, so `resume` continues with the very losses the uninterrupted run
//! would have had (tested to 1e-6 in tests/train.rs). A recipe that differs from the one the
//! run was started with is described field by field, and refused where it changes the results
//! unless `allow_recipe_change` says so (crate::recipe_change).
//!
//! The teacher runs live on every batch, or, with `TrainOptions::cache_teacher`, once before
//! training into an offline cache that training reads instead (crate::teacher_cache::prepare).
//!
//! The phases of an update live in crate::trainer; this file is the order they run in.

use burn::tensor::backend::AutodiffBackend;

use crate::error::TrainError;
use crate::options::TrainOptions;
use crate::plan::RunPlan;
use crate::recipe::Recipe;
use crate::summary::TrainSummary;
use crate::trainer::Trainer;

/// Runs (or resumes) the training `recipe` describes.
pub fn train<B: AutodiffBackend>(
    recipe: &Recipe,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    let plan = RunPlan::read(recipe, options.cache_teacher)?;
    train_planned::<B>(recipe, plan, options, device)
}

/// [`train`] with the run's plan already made (by `cargo xtask distill`, which checked it
/// against the machine's memory before anything loaded).
pub fn train_planned<B: AutodiffBackend>(
    recipe: &Recipe,
    plan: RunPlan,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    recipe.memory.frozen_products.set();
    let mut trainer = Trainer::<B>::setup(recipe, plan, options, device)?;
    if !trainer.resumed() {
        // The baseline the later evaluations improve on, logged at step 0.
        trainer.evaluate()?;
    }

    let mut stopped_early = false;
    while !trainer.finished() {
        let update = trainer.step()?;
        trainer.log(&update)?;

        let mut improved = false;
        if trainer.evaluation_due(&update) {
            if let Some(result) = trainer.evaluate()? {
                improved = trainer.record_best(&result);
            }
        }

        // Read once, so a Ctrl-C that arrives now is saved before the run ends.
        let stop = trainer.stop_requested();
        if stop || trainer.save_due(&update, improved) {
            trainer.save(improved)?;
        }

        if stop && !update.last {
            stopped_early = true;
            break;
        }
    }
    trainer.finish(stopped_early)
}
