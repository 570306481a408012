//! Evaluation on the held-out split during training: the student's next-token loss and
//! perplexity, and its KL divergence to the teacher, as crate::measure defines them (the
//! definitions `cargo xtask eval` uses too).
//!
//! - `loss`: cross-entropy of the next token, averaged over every real label of the split
//!   (token-weighted, not a mean of batch means), as transformers' `eval_loss` for a causal LM.
//! - `perplexity = exp(loss)`.
//! - `kl_to_teacher`: forward KL(teacher || student) at temperature 1, averaged over real
//!   positions whose token means the same to both tokenizers, over the logit rows that mean
//!   the same to both. It is a property of the two models, independent of the recipe's
//!   temperature and loss type, so runs with different recipes (and the hard-label baseline)
//!   can be compared. `None` without a teacher.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::data::{BatchSource, SourceBatch};
use crate::error::TrainError;
use crate::measure::{evaluation_objective, measure_batch, QualitySums};
use crate::objective::{Objective, Student, TeacherOutputs};
use crate::teacher::TeacherSource;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub loss: f64,
    pub perplexity: f64,
    pub kl_to_teacher: Option<f64>,
}

/// Evaluates `student` on up to `max_batches` batches of `data` (0 = all of it).
pub fn evaluate<B: Backend>(
    student: &Student<B>,
    teacher: &TeacherSource<B>,
    data: &mut BatchSource,
    objective: &Objective,
    max_batches: usize,
) -> Result<EvalMetrics, TrainError> {
    let measure = evaluation_objective(objective);
    let batches = match max_batches {
        0 => data.batches_per_epoch(),
        n => n.min(data.batches_per_epoch()),
    };
    let mut sums = QualitySums::default();
    for index in 0..batches {
        let SourceBatch { batch, blocks } = data.sequential_batch(index)?;
        let outputs = teacher
            .outputs(&batch, data.split(), &blocks, &measure)?
            .unwrap_or_else(TeacherOutputs::absent);
        sums.add(&measure_batch(&student.model, &outputs, &batch, &measure));
    }
    let loss = sums.cross_entropy_sum / sums.labels.max(1) as f64;
    Ok(EvalMetrics {
        loss,
        perplexity: loss.exp(),
        kl_to_teacher: teacher
            .is_present()
            .then(|| sums.kl_sum / sums.compared_positions.max(1) as f64),
    })
}
