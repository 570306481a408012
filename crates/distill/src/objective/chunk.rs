//! One chunk of positions: its vocabulary-sized terms (hard and soft), and the intermediate
//! losses, weighted to batch means.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::batch::{flatten, Batch};
use super::spec::{IntermediateMatch, LossBreakdown, Objective};
use super::student::Student;
use super::teacher::ChunkTeacher;
use crate::cross_tokenizer::group_distributions;
use crate::losses::{
    cross_entropy_per_position, divergence_per_position, hidden_loss, top_k_kl_per_position,
};

/// Per-position weights and labels of a batch.
pub(crate) struct PositionWeights {
    /// 1/real count at positions counted by the soft loss.
    pub(crate) soft: Vec<f32>,
    /// 1/real count at real positions (intermediate losses).
    pub(crate) real: Vec<f32>,
    /// 1/valid-label count where position t has a real label t+1.
    pub(super) hard: Vec<f32>,
    pub(super) labels: Vec<i64>,
}

impl PositionWeights {
    pub(crate) fn new(batch: &Batch, objective: &Objective) -> Self {
        let seq = batch.seq_len();
        let mut soft = Vec::new();
        let mut real = Vec::new();
        let mut hard = Vec::new();
        let mut labels = Vec::new();
        for (row, (ids, mask)) in batch.input_ids.iter().zip(&batch.mask.rows).enumerate() {
            for t in 0..seq {
                let scored = mask[t] && batch.is_scored(row, t);
                real.push(f32::from(scored));
                soft.push(f32::from(
                    scored && !objective.masked_token_ids.contains(&ids[t]),
                ));
                let has_label = scored && t + 1 < seq && mask[t + 1];
                hard.push(f32::from(has_label));
                labels.push(if has_label { ids[t + 1] as i64 } else { 0 });
            }
        }
        let normalise = |weights: &mut Vec<f32>| {
            let count = weights.iter().filter(|&&w| w > 0.0).count().max(1) as f32;
            weights.iter_mut().for_each(|w| *w /= count);
        };
        normalise(&mut soft);
        normalise(&mut real);
        normalise(&mut hard);
        Self {
            soft,
            real,
            hard,
            labels,
        }
    }
}

pub(super) fn vector<B: Backend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// The vocabulary-sized terms of one chunk: `(hard, soft)` sums, weighted to batch means.
pub(crate) fn chunk_terms<B: Backend>(
    objective: &Objective,
    student_logits: Tensor<B, 2>,
    teacher: ChunkTeacher<B>,
    weights: &PositionWeights,
    start: usize,
    len: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let device = student_logits.device();
    let range = start..start + len;
    let labels = Tensor::<B, 1, Int>::from_data(
        TensorData::new(weights.labels[range.clone()].to_vec(), [len]),
        &device,
    );
    let hard_weights = vector::<B>(&weights.hard[range.clone()], &device);
    let hard = (cross_entropy_per_position(student_logits.clone(), labels) * hard_weights).sum();

    let t = objective.temperature;
    let divergence = match teacher {
        ChunkTeacher::Absent => return (hard, Tensor::zeros([1], &device)),
        ChunkTeacher::Aligned {
            teacher_logits,
            student,
            teacher,
            total_groups,
        } => {
            let (Some(teacher_logits), Some(loss)) = (teacher_logits, &objective.cross_tokenizer)
            else {
                return (hard, Tensor::zeros([1], &device));
            };
            let student = group_distributions(student_logits, t, &student);
            let teacher = group_distributions(teacher_logits, t, &teacher);
            let soft = loss.per_group(student, teacher).sum() / total_groups.max(1) as f64;
            return (hard, soft);
        }
        ChunkTeacher::Logits(teacher_logits) => {
            let (student_logits, teacher_logits) = match &objective.vocab_rows {
                Some(rows) => {
                    let rows = row_indices::<B>(rows, &device);
                    (
                        student_logits.select(1, rows.clone()),
                        teacher_logits.select(1, rows),
                    )
                }
                None => (student_logits, teacher_logits),
            };
            divergence_per_position(
                objective.kd_loss,
                student_logits,
                teacher_logits,
                t,
                objective.divergence,
            )
        }
        ChunkTeacher::TopK {
            ids,
            logits,
            rest_lse,
        } => {
            // As the live path: the student's softmax and its remaining mass over the compared
            // rows only. The cache's ids are vocabulary ids; renumber them to positions among
            // those rows (the cache keeps only compared rows, so every id has one).
            let (student_logits, ids) = match &objective.vocab_rows {
                Some(rows) => {
                    let vocab = student_logits.dims()[1];
                    let mut position_of = vec![0i64; vocab];
                    for (position, &row) in rows.iter().enumerate() {
                        position_of[row as usize] = position as i64;
                    }
                    let position_of = Tensor::<B, 1, Int>::from_data(
                        TensorData::new(position_of, [vocab]),
                        &device,
                    );
                    let [n, k] = ids.dims();
                    let ids = position_of.select(0, ids.reshape([n * k])).reshape([n, k]);
                    (
                        student_logits.select(1, row_indices::<B>(rows, &device)),
                        ids,
                    )
                }
                None => (student_logits, ids),
            };
            top_k_kl_per_position(student_logits, logits, ids, rest_lse, t)
        }
    };
    let scale = if objective.kd_loss.scaled_by_temperature_squared() {
        t * t
    } else {
        1.0
    };
    let soft = (divergence * vector::<B>(&weights.soft[range], &device)).sum() * scale;
    (hard, soft)
}

/// `rows` as an index tensor for `select`.
pub(crate) fn row_indices<B: Backend>(rows: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let len = rows.len();
    Tensor::from_data(TensorData::new(rows, [len]), device)
}

/// The intermediate-layer loss of match `index` (weight-free), `student_state` being the
/// student's hidden state `matched.layer_s`.
pub(crate) fn intermediate_loss<B: Backend>(
    student: &Student<B>,
    student_state: Tensor<B, 3>,
    teacher_state: Tensor<B, 2>,
    index: usize,
    matched: &IntermediateMatch,
    real_weights: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let student_state = flatten(student_state);
    let student_state = match &student.projections[index].linear {
        Some(linear) => linear.forward(student_state),
        None => student_state,
    };
    hidden_loss(matched.loss, student_state, teacher_state, real_weights)
}

pub(crate) fn scalar<B: Backend>(x: Tensor<B, 1>) -> f64 {
    x.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("scalar")[0]
}

/// The chunk loop both modes share: `chunk(start, len)` evaluates (and, in the gradient mode,
/// back-propagates) the vocabulary-sized terms of positions `start..start+len` and returns
/// their `(hard, soft)` values; this sums them into the batch's breakdown. `chunks` are the
/// teacher's ([`super::TeacherOutputs::chunk_ranges`]).
pub(crate) fn chunked_terms(
    batch: &Batch,
    objective: &Objective,
    chunks: Vec<std::ops::Range<usize>>,
    mut chunk: impl FnMut(usize, usize) -> (f64, f64),
) -> LossBreakdown {
    let mut breakdown = LossBreakdown {
        real_tokens: batch.real_tokens(),
        ..LossBreakdown::default()
    };
    for range in chunks {
        let (hard, soft) = chunk(range.start, range.len());
        breakdown.hard += hard;
        breakdown.soft += soft;
    }
    let alpha = objective.hard_label_weight;
    breakdown.total = alpha * breakdown.hard + (1.0 - alpha) * breakdown.soft;
    breakdown
}

/// The intermediate-layer losses (weight-free, in match order), added to `breakdown` with
/// their weights; returns the loss tensors.
pub(super) fn intermediate_terms<B: Backend>(
    student: &Student<B>,
    states: &[Tensor<B, 3>],
    teacher_states: impl Fn(usize) -> Tensor<B, 2>,
    objective: &Objective,
    weights: &PositionWeights,
    breakdown: &mut LossBreakdown,
) -> Vec<Tensor<B, 1>> {
    let real = vector::<B>(&weights.real, &student.model.device());
    let mut values = Vec::with_capacity(objective.intermediate_matches.len());
    for (index, matched) in objective.intermediate_matches.iter().enumerate() {
        let value = intermediate_loss(
            student,
            states[matched.layer_s].clone(),
            teacher_states(index),
            index,
            matched,
            real.clone(),
        );
        let plain = scalar(value.clone());
        breakdown.intermediate.push(plain);
        breakdown.total += matched.weight * plain;
        values.push(value);
    }
    values
}
