//! Evaluation on the held-out split during training: the student's next-token loss and
//! perplexity, and its KL divergence to the teacher.
//!
//! - `loss`: cross-entropy of the next token, averaged over every real label of the split
//!   (token-weighted, not a mean of batch means), as transformers' `eval_loss` for a causal LM.
//! - `perplexity = exp(loss)`.
//! - `kl_to_teacher`: forward KL(teacher || student) at temperature 1, averaged over real
//!   positions whose token means the same to both tokenizers, over the logit rows both share.
//!   It is a property of the two models, independent of the recipe's temperature and loss type,
//!   so runs with different recipes (and the hard-label baseline) can be compared. `None`
//!   without a teacher.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::data::{label_count, soft_count, BatchSource, SourceBatch};
use crate::losses::KdLoss;
use crate::objective::{loss_only, Objective, Student, TeacherOutputs};
use crate::train::{TeacherSource, TrainError};

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
    // One student pass gives both figures: the hard term is the CE, the soft term the KL at T=1.
    let measure = Objective {
        temperature: 1.0,
        hard_label_weight: 0.5,
        kd_loss: KdLoss::Kl,
        jsd_beta: objective.jsd_beta,
        intermediate_matches: Vec::new(),
        chunk_positions: objective.chunk_positions,
        vocab_rows: objective.vocab_rows.clone(),
        masked_token_ids: objective.masked_token_ids.clone(),
    };
    let batches = match max_batches {
        0 => data.batches_per_epoch(),
        n => n.min(data.batches_per_epoch()),
    };
    let (mut ce_sum, mut labels) = (0.0, 0usize);
    let (mut kl_sum, mut kl_positions) = (0.0, 0usize);
    for index in 0..batches {
        let SourceBatch { batch, blocks } = data.sequential_batch(index)?;
        let outputs = teacher
            .outputs(&batch, data.split(), &blocks, &measure)?
            .unwrap_or_else(TeacherOutputs::absent);
        let losses = loss_only(student, &outputs, &batch, &measure);
        let batch_labels = label_count(&batch);
        ce_sum += losses.hard * batch_labels as f64;
        labels += batch_labels;
        if teacher.is_present() {
            let positions = soft_count(&batch, &measure.masked_token_ids);
            kl_sum += losses.soft * positions as f64;
            kl_positions += positions;
        }
    }
    let loss = ce_sum / labels.max(1) as f64;
    Ok(EvalMetrics {
        loss,
        perplexity: loss.exp(),
        kl_to_teacher: teacher
            .is_present()
            .then(|| kl_sum / kl_positions.max(1) as f64),
    })
}
