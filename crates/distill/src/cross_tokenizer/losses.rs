//! The losses between a student and a teacher whose vocabularies differ, per aligned group
//! (crate::cross_tokenizer::alignment), as TRL's GOLD trainer defines them
//! (trl/experimental/gold/gold_trainer.py, `ULDLoss` with `use_extended_uld=True` and
//! `uld_token_merge_strategy="bayesian"`):
//!
//! - a group's distribution q = p(. | last position) x prod_k p(actual token k | its position)
//!   over the group's earlier tokens (the chain rule: q(v) is the probability of the group's
//!   text up to its last token, then v), each factor clamped at 1e-8 as TRL does; unnormalized;
//! - ULD (Boizard et al. 2024): sum_i |sort(q_s)_i - sort(q_t)_i|, both sorted descending and
//!   the shorter padded with zeros;
//! - hybrid: w_m x JSD_beta(q_s[shared], q_t[shared]) + w_u x ULD(q_s[rest], q_t[rest]), the
//!   shared columns being the tokens both vocabularies spell the same, paired; JSD_beta is the
//!   generalized JSD on clamped probabilities (TRL's `generalized_jsd_loss` with
//!   `logits_are_probs=True`: beta = 0 forward KL, 1 reverse KL); without given weights,
//!   w_m = shared tokens / teacher vocabulary rows and w_u = 1 - w_m.
//!
//! No T^2 factor: the distributions are compared as probabilities, not as softened logits.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The loss between two models whose tokenizers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossTokenizerLossKind {
    /// Universal Logit Distillation: L1 between the sorted probability vectors.
    Uld,
    /// TRL's GOLD: the generalized JSD over the tokens both vocabularies spell the same, ULD
    /// over the others.
    Hybrid,
}

impl CrossTokenizerLossKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Uld => "uld",
            Self::Hybrid => "hybrid",
        }
    }
}

/// The logit columns the hybrid loss compares exactly: `teacher[i]` and `student[i]` are one
/// token spelled the same in both vocabularies; `*_rest` are every other column, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedColumns {
    pub teacher: Vec<u32>,
    pub student: Vec<u32>,
    pub teacher_rest: Vec<u32>,
    pub student_rest: Vec<u32>,
    /// The teacher's logit columns (its config vocab_size): the adaptive weights' denominator.
    pub teacher_columns: usize,
}

impl SharedColumns {
    /// The pairs of `shared` that both models have logit rows for, and the rest of each side.
    pub fn new(
        shared: &preprocess::SharedTokens,
        teacher_columns: usize,
        student_columns: usize,
    ) -> Self {
        let (teacher, student): (Vec<u32>, Vec<u32>) = shared
            .teacher_ids
            .iter()
            .zip(&shared.student_ids)
            .filter(|(&t, &s)| (t as usize) < teacher_columns && (s as usize) < student_columns)
            .map(|(&t, &s)| (t, s))
            .unzip();
        let rest = |taken: &[u32], columns: usize| {
            let mut used = vec![false; columns];
            taken.iter().for_each(|&id| used[id as usize] = true);
            (0..columns as u32)
                .filter(|&id| !used[id as usize])
                .collect()
        };
        Self {
            teacher_rest: rest(&teacher, teacher_columns),
            student_rest: rest(&student, student_columns),
            teacher,
            student,
            teacher_columns,
        }
    }
}

/// The cross-tokenizer part of an objective.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossTokenizerLoss {
    pub kind: CrossTokenizerLossKind,
    /// The hybrid's exact columns (empty for ULD).
    pub shared: SharedColumns,
    /// The hybrid's `(matched, unmatched)` weights; `None`: adaptive.
    pub weights: Option<(f64, f64)>,
    /// The generalized JSD's beta of the hybrid's exact part.
    pub beta: f64,
}

impl CrossTokenizerLoss {
    /// The hybrid's `(matched, unmatched)` weights.
    pub fn hybrid_weights(&self) -> (f64, f64) {
        self.weights.unwrap_or_else(|| {
            let matched =
                self.shared.teacher.len() as f64 / self.shared.teacher_columns.max(1) as f64;
            (matched, 1.0 - matched)
        })
    }

    /// `[G]` loss per group of the group distributions `student` `[G, V_s]` and `teacher`
    /// `[G, V_t]`.
    pub fn per_group<B: Backend>(
        &self,
        student: Tensor<B, 2>,
        teacher: Tensor<B, 2>,
    ) -> Tensor<B, 1> {
        match self.kind {
            CrossTokenizerLossKind::Uld => uld_per_group(student, teacher),
            CrossTokenizerLossKind::Hybrid => {
                let device = student.device();
                let columns =
                    |ids: &[u32]| index_tensor::<B>(ids.iter().map(|&i| i as usize), &device);
                let shared = &self.shared;
                let (matched_weight, unmatched_weight) = self.hybrid_weights();
                let [groups, _] = student.dims();
                let mut total = Tensor::<B, 1>::zeros([groups], &device);
                if !shared.teacher.is_empty() {
                    let matched = generalized_jsd_of_probabilities(
                        student.clone().select(1, columns(&shared.student)),
                        teacher.clone().select(1, columns(&shared.teacher)),
                        self.beta,
                    );
                    total = total + matched * matched_weight;
                }
                if !shared.teacher_rest.is_empty() && !shared.student_rest.is_empty() {
                    let unmatched = uld_per_group(
                        student.select(1, columns(&shared.student_rest)),
                        teacher.select(1, columns(&shared.teacher_rest)),
                    );
                    total = total + unmatched * unmatched_weight;
                }
                total
            }
        }
    }
}

/// Where a side's group distributions come from, within one chunk of that side's rows: group g
/// is row `last[g]`'s distribution times the probabilities that rows `earlier_rows[k]` (of
/// group `earlier_group[k]`) give their actual next token `earlier_tokens[k]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupRows {
    pub last: Vec<usize>,
    pub earlier_rows: Vec<usize>,
    pub earlier_tokens: Vec<u32>,
    pub earlier_group: Vec<usize>,
}

/// TRL's floor on a merged token's probability.
const PROBABILITY_FLOOR: f64 = 1e-8;

/// `[N, V]` logits -> `[G, V]` group distributions (see the module), at `temperature`.
pub fn group_distributions<B: Backend>(
    logits: Tensor<B, 2>,
    temperature: f64,
    rows: &GroupRows,
) -> Tensor<B, 2> {
    let device = logits.device();
    let log_probs = log_softmax(logits / temperature, 1);
    let groups = rows.last.len();
    let mut log_q = log_probs
        .clone()
        .select(0, index_tensor::<B>(rows.last.iter().copied(), &device));
    if !rows.earlier_rows.is_empty() {
        let count = rows.earlier_rows.len();
        let tokens = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                rows.earlier_tokens
                    .iter()
                    .map(|&t| t as i64)
                    .collect::<Vec<_>>(),
                [count, 1],
            ),
            &device,
        );
        let token_log_probs = log_probs
            .select(
                0,
                index_tensor::<B>(rows.earlier_rows.iter().copied(), &device),
            )
            .gather(1, tokens)
            .clamp_min(PROBABILITY_FLOOR.ln());
        // Sum each group's factors: a [G, count] membership matrix times the [count, 1] logs.
        let mut membership = vec![0f32; groups * count];
        for (k, &group) in rows.earlier_group.iter().enumerate() {
            membership[group * count + k] = 1.0;
        }
        let membership =
            Tensor::<B, 2>::from_data(TensorData::new(membership, [groups, count]), &device);
        log_q = log_q + membership.matmul(token_log_probs);
    }
    log_q.exp()
}

/// `[G]`: sum_i |sort(s)_i - sort(t)_i| with the shorter row padded by zeros.
///
/// Past the shorter row's m columns the distance is the longer row's own tail, so only the
/// longer row's m largest values and its total are needed: a 4,096-token student against a
/// 151,936-token teacher sorts 4,096 values per group, not 151,936 (exact, not truncated).
pub fn uld_per_group<B: Backend>(student: Tensor<B, 2>, teacher: Tensor<B, 2>) -> Tensor<B, 1> {
    let [groups, student_columns] = student.dims();
    let common = student_columns.min(teacher.dims()[1]);
    let (student_top, student_tail) = largest_sorted(student, common);
    let (teacher_top, teacher_tail) = largest_sorted(teacher, common);
    ((student_top - teacher_top).abs().sum_dim(1) + student_tail + teacher_tail).reshape([groups])
}

/// Each row's `m` largest values, descending (`[G, m]`), and the sum of the others
/// (`[G, 1]`, zero when the row has `m` columns). Differentiable: the order is found on the
/// host and the values gathered, so gradients reach the columns they came from.
fn largest_sorted<B: Backend>(rows: Tensor<B, 2>, m: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [groups, columns] = rows.dims();
    let device = rows.device();
    if columns == m {
        return (rows.sort_descending(1), Tensor::zeros([groups, 1], &device));
    }
    let values: Vec<f32> = rows
        .clone()
        .detach()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float data");
    let order: Vec<i64> = values
        .par_chunks(columns)
        .flat_map_iter(|row| {
            let mut indices: Vec<u32> = (0..columns as u32).collect();
            let descending = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
            indices.select_nth_unstable_by(m - 1, descending);
            indices.truncate(m);
            indices.sort_unstable_by(descending);
            indices.into_iter().map(i64::from)
        })
        .collect();
    let order = Tensor::<B, 2, Int>::from_data(TensorData::new(order, [groups, m]), &device);
    let top = rows.clone().gather(1, order);
    let tail = rows.sum_dim(1) - top.clone().sum_dim(1);
    (top, tail)
}

/// `[G]` generalized JSD between probability rows (TRL's `logits_are_probs=True`).
pub fn generalized_jsd_of_probabilities<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    beta: f64,
) -> Tensor<B, 1> {
    let [groups, _] = student.dims();
    let log_s = student.clamp_min(PROBABILITY_FLOOR).log();
    let log_t = teacher.clamp_min(PROBABILITY_FLOOR).log();
    // F.kl_div(input, target, log_target=True) = exp(target) (target - input).
    let kl = |input: Tensor<B, 2>, target: Tensor<B, 2>| {
        (target.clone().exp() * (target - input)).sum_dim(1)
    };
    let divergence = if beta == 0.0 {
        kl(log_s, log_t)
    } else if beta == 1.0 {
        kl(log_t, log_s)
    } else {
        let mixture =
            ((log_s.clone() + (1.0 - beta).ln()).exp() + (log_t.clone() + beta.ln()).exp()).log();
        kl(mixture.clone(), log_t) * beta + kl(mixture, log_s) * (1.0 - beta)
    };
    divergence.reshape([groups])
}

fn index_tensor<B: Backend>(
    indices: impl Iterator<Item = usize>,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let indices: Vec<i64> = indices.map(|i| i as i64).collect();
    let len = indices.len();
    Tensor::from_data(TensorData::new(indices, [len]), device)
}
