//! One optimizer update as the trainer runs it and `cargo xtask bench distill-step` times it:
//! each micro-batch's gradient pass (LoRA dropout seeded by its place in the run), the gradients
//! summed, then their mean clipped and applied by AdamW ([`GroupedAdamW::apply`]).

use burn::optim::GradientsAccumulator;
use burn::tensor::backend::AutodiffBackend;

use crate::objective::TeacherOutputs;
use crate::objective::{gradient_pass, Batch, LossBreakdown, Objective, PassTimes, Student};
use crate::optimizer::GroupedAdamW;
use crate::recipe::Recipe;

/// The micro-batches of one update so far.
pub struct GradientAccumulation<B: AutodiffBackend> {
    gradients: GradientsAccumulator<Student<B>>,
    micro_batches: usize,
    loss_sum: f64,
    tokens: u64,
}

impl<B: AutodiffBackend> Default for GradientAccumulation<B> {
    fn default() -> Self {
        Self {
            gradients: GradientsAccumulator::new(),
            micro_batches: 0,
            loss_sum: 0.0,
            tokens: 0,
        }
    }
}

impl<B: AutodiffBackend> GradientAccumulation<B> {
    /// Adds the gradients of micro-batch `k` of update `step` (0-based), returning its losses
    /// and the pass's times. LoRA dropout's masks are seeded by that position, so a resumed run
    /// draws the masks the uninterrupted one would have.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        student: &Student<B>,
        teacher: &TeacherOutputs<B::InnerBackend>,
        batch: &Batch,
        objective: &Objective,
        recipe: &Recipe,
        step: usize,
        k: usize,
    ) -> (LossBreakdown, PassTimes) {
        let dropout_seed = recipe.training.seed ^ ((step as u64) << 20) ^ k as u64;
        let pass = qwen2::lora::with_dropout(dropout_seed, || {
            gradient_pass(
                student,
                teacher,
                batch,
                objective,
                recipe.memory.activation_checkpointing,
            )
        });
        self.gradients.accumulate(student, pass.gradients);
        self.micro_batches += 1;
        self.loss_sum += pass.losses.total;
        self.tokens += pass.losses.real_tokens as u64;
        (pass.losses, pass.times)
    }

    /// Mean loss of the micro-batches added.
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.micro_batches.max(1) as f64
    }

    /// Real (unpadded) tokens of the micro-batches added.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The update: the gradients' mean, clipped to `training.max_grad_norm`, applied at `lr`.
    /// Returns the student and the global gradient norm before clipping.
    pub fn apply(
        mut self,
        student: Student<B>,
        optimizer: &mut GroupedAdamW<B>,
        recipe: &Recipe,
        lr: f64,
    ) -> (Student<B>, f64) {
        optimizer.apply(
            student,
            self.gradients.grads(),
            self.micro_batches,
            recipe.training.max_grad_norm,
            lr,
        )
    }
}
