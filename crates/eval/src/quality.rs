//! How well a model predicts held-out tokens, and how close it is to a teacher: the metrics
//! of distill::measure (the same definitions training's evaluation uses, so the two agree on
//! the same model and data), batch by batch.
//!
//! - cross-entropy: next-token cross-entropy over valid labels (transformers' `labels=` loss);
//!   perplexity = exp(mean);
//! - KL(teacher || student) at temperature T (1 for evaluation) over the vocabulary rows that
//!   mean the same to both models, averaged over the real positions whose input token means
//!   the same to both ([`Comparison`]: the tokenizer check's verdict, or
//!   [`Comparison::same_tokenizer`] for models known to share one);
//! - top-1 agreement over the same rows and positions.
//!
//! Memory: the body runs once per batch, then the lm_head is applied to `chunk` positions per
//! row of the batch at a time.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use distill::measure::{measure_batch, measurement_objective};
pub use distill::measure::{Comparison, QualitySums};
use distill::objective::{Batch, TeacherOutputs};
use qwen2::{AttentionMask, Model};

/// Scores one batch `input_ids [B][T]` under `mask` (no gradients are kept: pass models of a
/// non-autodiff backend), for models that share one tokenizer (the leading shared vocabulary
/// rows are compared). With a `teacher`, also compares the two distributions at `temperature`
/// (1 for evaluation; the distillation fixtures use 2). `chunk` is the number of positions per
/// row whose vocabulary-sized logits are materialised at once.
pub fn score_batch<B: Backend>(
    student: &Model<B>,
    teacher: Option<&Model<B>>,
    input_ids: &[Vec<u32>],
    mask: &AttentionMask,
    chunk: usize,
    temperature: f64,
) -> QualitySums {
    let comparison = Comparison::same_tokenizer(
        teacher.map_or(student.vocab_size(), Model::vocab_size),
        student.vocab_size(),
    );
    score_batch_compared(
        student,
        teacher,
        input_ids,
        mask,
        chunk,
        temperature,
        &comparison,
    )
}

/// [`score_batch`] over the rows and positions `comparison` says the two models share.
pub fn score_batch_compared<B: Backend>(
    student: &Model<B>,
    teacher: Option<&Model<B>>,
    input_ids: &[Vec<u32>],
    mask: &AttentionMask,
    chunk: usize,
    temperature: f64,
    comparison: &Comparison,
) -> QualitySums {
    if input_ids.is_empty() || input_ids[0].is_empty() {
        return QualitySums::default();
    }
    let batch = Batch::new(input_ids.to_vec(), mask.clone());
    let objective = measurement_objective(comparison, temperature, chunk.max(1) * input_ids.len());
    let teacher = match teacher {
        // A clone of a model shares its weights (tensors are reference-counted).
        Some(teacher) => TeacherOutputs::from_model(&Arc::new(teacher.clone()), &batch, &objective),
        None => TeacherOutputs::absent(),
    };
    measure_batch(student, &teacher, &batch, &objective)
}
