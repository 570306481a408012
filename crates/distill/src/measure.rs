//! The evaluation metrics, defined once for training's evaluation (crate::evaluate) and for
//! `cargo xtask eval` (crates/eval), so the two report the same number for the same model and
//! data:
//!
//! - cross-entropy: next-token cross-entropy (logits at t predict token t+1), summed over the
//!   valid labels (positions whose next token is real), as transformers' `labels=` loss;
//! - KL to the teacher: forward KL(teacher || student) at temperature 1 (evaluation measures the
//!   two models, whatever the recipe's temperature and loss), **over the vocabulary rows that
//!   mean the same to both models, at the real positions whose input token means the same to
//!   both**. Which rows and ids those are is the tokenizer check's verdict
//!   ([`Comparison::of_tokenizers`]): with one tokenizer and one vocabulary size, every row and
//!   every real position; when only the sizes differ, the leading shared rows; tokens that the
//!   two tokenizers read differently are left out as rows and as positions. This is also what
//!   the distillation loss compares, so the KL that training lowers is the KL reported;
//! - top-1 agreement: the share of the same positions where the student's most likely token
//!   among the same rows is the teacher's.
//!
//! With the offline teacher cache the KL is the top-k approximation (a lower bound, logged as
//! `kl_to_teacher_topk`) and the teacher's top-1 is its first cached id.
//!
//! Every figure is a sum with its count ([`QualitySums`]), so batches add up exactly and the
//! means are token-weighted over the whole split.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use qwen2::Model;

use crate::data::{label_count, soft_count};
use crate::losses::{DivergenceParams, KdLoss};
use crate::objective::{
    chunk_logits, chunk_terms, chunked_terms, flatten, row_indices, Batch, ChunkTeacher, Objective,
    PositionWeights, TeacherOutputs, TeacherSignal,
};

/// Which vocabulary rows and input ids the KL and top-1 agreement compare (see the module).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Rows that mean the same to both models; `None` = all rows (one vocabulary).
    pub vocab_rows: Option<Vec<u32>>,
    /// Input ids the two tokenizers read differently: their positions are not compared.
    pub masked_token_ids: Vec<u32>,
}

impl Comparison {
    /// The tokenizer check's verdict on the models in `teacher_dir` and `student_dir`
    /// (printing its warnings), for vocabularies of `teacher_vocab` and `student_vocab` rows.
    pub fn of_tokenizers(
        teacher_dir: &Path,
        student_dir: &Path,
        teacher_vocab: usize,
        student_vocab: usize,
    ) -> Result<Self, preprocess::PreprocessError> {
        let report = preprocess::check_distillation_tokenizers(teacher_dir, student_dir)?;
        for warning in report.warnings() {
            eprintln!("warning: {warning}");
        }
        let masked = report.ids_to_mask().to_vec();
        let shared = report
            .shared_vocab_rows()
            .min(teacher_vocab)
            .min(student_vocab);
        let vocab_rows = (!masked.is_empty() || teacher_vocab != student_vocab).then(|| {
            (0..shared as u32)
                .filter(|id| masked.binary_search(id).is_err())
                .collect()
        });
        Ok(Self {
            vocab_rows,
            masked_token_ids: masked,
        })
    }

    /// The verdict for two models known to share one tokenizer: the leading shared rows.
    pub fn same_tokenizer(teacher_vocab: usize, student_vocab: usize) -> Self {
        let shared = teacher_vocab.min(student_vocab) as u32;
        Self {
            vocab_rows: (teacher_vocab != student_vocab).then(|| (0..shared).collect()),
            masked_token_ids: Vec::new(),
        }
    }
}

/// The objective whose hard term is the cross-entropy and whose soft term is the KL of the
/// module's definition, at `temperature` (1 for evaluation; the fixtures also check 2).
pub fn measurement_objective(
    comparison: &Comparison,
    temperature: f64,
    chunk_positions: usize,
) -> Objective {
    Objective {
        temperature,
        hard_label_weight: 0.5,
        kd_loss: KdLoss::Kl,
        // Unused by the forward KL.
        divergence: DivergenceParams {
            jsd_beta: 0.5,
            skew_alpha: 0.0,
        },
        intermediate_matches: Vec::new(),
        chunk_positions,
        vocab_rows: comparison.vocab_rows.clone(),
        masked_token_ids: comparison.masked_token_ids.clone(),
        // Across tokenizers no KL is defined; evaluation reports cross-entropy alone.
        cross_tokenizer: None,
    }
}

/// The objective evaluation measures with: `objective`'s compared rows and masked ids, at
/// temperature 1 (also the temperature of the teacher cache evaluation reads).
pub fn evaluation_objective(objective: &Objective) -> Objective {
    let comparison = Comparison {
        vocab_rows: objective.vocab_rows.clone(),
        masked_token_ids: objective.masked_token_ids.clone(),
    };
    measurement_objective(&comparison, 1.0, objective.chunk_positions)
}

/// Sums over the positions scored so far; add batches with [`QualitySums::add`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualitySums {
    /// Sum of next-token cross-entropy over valid labels (nats).
    pub cross_entropy_sum: f64,
    /// Valid labels: positions t whose next token t+1 is real.
    pub labels: u64,
    /// Sum of KL(teacher || student) over compared positions (nats); 0 without a teacher.
    pub kl_sum: f64,
    /// Compared positions where teacher and student pick the same top-1 token.
    pub top1_agreements: u64,
    /// Positions compared with the teacher; 0 without a teacher.
    pub compared_positions: u64,
}

impl QualitySums {
    pub fn add(&mut self, other: &QualitySums) {
        self.cross_entropy_sum += other.cross_entropy_sum;
        self.labels += other.labels;
        self.kl_sum += other.kl_sum;
        self.top1_agreements += other.top1_agreements;
        self.compared_positions += other.compared_positions;
    }

    /// Mean cross-entropy over valid labels (transformers' loss); NaN when nothing was scored.
    pub fn mean_cross_entropy(&self) -> f64 {
        if self.labels == 0 {
            f64::NAN
        } else {
            self.cross_entropy_sum / self.labels as f64
        }
    }

    /// exp(mean cross-entropy).
    pub fn perplexity(&self) -> f64 {
        self.mean_cross_entropy().exp()
    }

    /// Token-mean KL(teacher || student); None when no teacher was compared.
    pub fn mean_kl(&self) -> Option<f64> {
        (self.compared_positions > 0).then(|| self.kl_sum / self.compared_positions as f64)
    }

    /// Share of compared positions with the same top-1 token; None without a teacher.
    pub fn top1_agreement(&self) -> Option<f64> {
        (self.compared_positions > 0)
            .then(|| self.top1_agreements as f64 / self.compared_positions as f64)
    }
}

/// Scores `student` on `batch` against `teacher` (absent: cross-entropy only) with a
/// [`measurement_objective`]. No gradients: pass models of an inference backend.
pub fn measure_batch<B: Backend>(
    student: &Model<B>,
    teacher: &TeacherOutputs<B>,
    batch: &Batch,
    objective: &Objective,
) -> QualitySums {
    let weights = PositionWeights::new(batch, objective);
    let ids = batch.ids_tensor(&student.device());
    let (final_hidden, _) = student.forward_hidden(ids, &batch.mask, false);
    let final_hidden = flatten(final_hidden);
    let positions = final_hidden.dims()[0];
    let mut top1_agreements = 0;
    let means = chunked_terms(
        batch,
        objective,
        teacher.chunk_ranges(positions, objective.chunk_positions),
        |start, len| {
            let student_logits = chunk_logits(student, final_hidden.clone().narrow(0, start, len));
            let teacher_chunk = teacher.chunk(start, len);
            top1_agreements += agreements(
                student_logits.clone(),
                &teacher_chunk,
                objective,
                &weights.soft[start..start + len],
            );
            let (hard, soft) = chunk_terms(
                objective,
                student_logits,
                teacher_chunk,
                &weights,
                start,
                len,
            );
            (scalar(hard), scalar(soft))
        },
    );
    // The objective's terms are means (each position weighted by 1/count); back to sums.
    let labels = label_count(batch);
    let mut sums = QualitySums {
        cross_entropy_sum: means.hard * labels as f64,
        labels: labels as u64,
        ..QualitySums::default()
    };
    // Across tokenizers the two distributions share no support: no KL, no agreement.
    if !matches!(
        teacher.signal,
        TeacherSignal::Absent | TeacherSignal::Aligned { .. }
    ) {
        let compared = soft_count(batch, &objective.masked_token_ids);
        // The soft term is T^2 x KL (the distillation loss's scale); the metric is the KL.
        let kl_mean = means.soft / (objective.temperature * objective.temperature);
        sums.kl_sum = kl_mean * compared as f64;
        sums.compared_positions = compared as u64;
        sums.top1_agreements = top1_agreements;
    }
    sums
}

/// Positions of a chunk, among those compared (`soft_weights > 0`), where the student's and
/// the teacher's top-1 token among the compared rows agree.
fn agreements<B: Backend>(
    student_logits: Tensor<B, 2>,
    teacher: &ChunkTeacher<B>,
    objective: &Objective,
    soft_weights: &[f32],
) -> u64 {
    let device = student_logits.device();
    let rows = objective
        .vocab_rows
        .as_ref()
        .map(|rows| row_indices::<B>(rows, &device));
    let top1 = |logits: Tensor<B, 2>| -> Vec<i64> {
        let logits = match &rows {
            Some(rows) => logits.select(1, rows.clone()),
            None => logits,
        };
        let positions = host_ints(logits.argmax(1));
        // Positions among the rows -> vocabulary ids.
        match &objective.vocab_rows {
            Some(rows) => positions.iter().map(|&p| rows[p as usize] as i64).collect(),
            None => positions,
        }
    };
    let teacher_top1 = match teacher {
        ChunkTeacher::Absent | ChunkTeacher::Aligned { .. } => return 0,
        ChunkTeacher::Logits(logits) => top1(logits.clone()),
        // The cache's ids are sorted by logit, highest first, over the compared rows.
        ChunkTeacher::TopK { ids, .. } => host_ints(ids.clone().narrow(1, 0, 1)),
    };
    let student_top1 = top1(student_logits);
    soft_weights
        .iter()
        .zip(student_top1.iter().zip(&teacher_top1))
        .filter(|(&weight, (s, t))| weight > 0.0 && s == t)
        .count() as u64
}

fn scalar<B: Backend>(x: Tensor<B, 1>) -> f64 {
    x.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("scalar")[0]
}

fn host_ints<B: Backend>(values: Tensor<B, 2, Int>) -> Vec<i64> {
    values
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int data")
}
