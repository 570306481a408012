//! The distillation losses, exactly as tests/fixtures/qwen2-parity/README.md defines them.
//!
//! Every function works on a chunk of N positions flattened out of the batch (`[N, V]` logits)
//! and returns a *sum* over those positions, already weighted by each position's share of the
//! batch mean (`weights`, 0 for positions that do not count). Summing the chunks therefore gives
//! the batch loss, while only one chunk of vocabulary-sized tensors exists at a time.
//!
//! - forward KL:  sum_v p_t (log p_t - log p_s), p = softmax(logits / T)
//! - reverse KL:  sum_v p_s (log p_s - log p_t)
//! - JSD(beta):   beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s
//! - MSE:         mean_v (s - t)^2 on raw logits
//! - soft loss = T^2 x token mean of the divergence (KL, reverse KL, JSD), over real tokens;
//!   MSE is not scaled by T^2 (it does not soften the distributions).
//! - hard loss = next-token cross-entropy, mean over valid labels.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// The divergence between teacher and student distributions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KdLoss {
    /// Forward KL(teacher || student) (TextBrewer's "ce" is the same gradient).
    #[serde(alias = "ce", alias = "forward_kl")]
    Kl,
    ReverseKl,
    Jsd,
    Mse,
}

impl KdLoss {
    /// The name a recipe gives it.
    pub fn name(self) -> &'static str {
        match self {
            KdLoss::Kl => "kl",
            KdLoss::ReverseKl => "reverse_kl",
            KdLoss::Jsd => "jsd",
            KdLoss::Mse => "mse",
        }
    }

    /// Whether the loss is scaled by T^2 (divergences between softened distributions are).
    pub fn scaled_by_temperature_squared(self) -> bool {
        !matches!(self, KdLoss::Mse)
    }
}

/// `[N, V]` logits -> `[N]` divergence per position (no T^2 factor), at temperature `t`.
pub fn divergence_per_position<B: Backend>(
    kind: KdLoss,
    student_logits: Tensor<B, 2>,
    teacher_logits: Tensor<B, 2>,
    temperature: f64,
    jsd_beta: f64,
) -> Tensor<B, 1> {
    let [n, vocab] = student_logits.dims();
    let per_position = match kind {
        KdLoss::Mse => (student_logits - teacher_logits).square().sum_dim(1) / vocab as f64,
        _ => {
            let log_p_student = log_softmax(student_logits / temperature, 1);
            let log_p_teacher = log_softmax(teacher_logits / temperature, 1);
            match kind {
                KdLoss::Kl => {
                    (log_p_teacher.clone().exp() * (log_p_teacher - log_p_student)).sum_dim(1)
                }
                KdLoss::ReverseKl => {
                    (log_p_student.clone().exp() * (log_p_student - log_p_teacher)).sum_dim(1)
                }
                KdLoss::Jsd => {
                    let p_teacher = log_p_teacher.clone().exp();
                    let p_student = log_p_student.clone().exp();
                    let log_m =
                        (p_teacher.clone() * jsd_beta + p_student.clone() * (1.0 - jsd_beta)).log();
                    let to_teacher = (p_teacher * (log_p_teacher - log_m.clone())).sum_dim(1);
                    let to_student = (p_student * (log_p_student - log_m)).sum_dim(1);
                    to_teacher * jsd_beta + to_student * (1.0 - jsd_beta)
                }
                KdLoss::Mse => unreachable!(),
            }
        }
    };
    per_position.reshape([n])
}

/// Next-token cross-entropy per position: `[N, V]` logits, `[N]` label ids -> `[N]`.
pub fn cross_entropy_per_position<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, labels.reshape([n, 1]))
        .reshape([n])
        .neg()
}

/// KL(teacher || student) when the teacher is known only by its top-k logits and the
/// log-sum-exp of the rest (the offline teacher cache): the distributions are compared on the k
/// kept tokens plus one bucket holding all remaining mass. It equals the full KL when k = V and
/// is a lower bound otherwise (merging outcomes never increases a KL divergence).
///
/// `teacher_top_logits: [N, k]` (raw), `teacher_top_ids: [N, k]`, `teacher_rest_lse: [N]` =
/// log-sum-exp over the other tokens of `logits / T`.
pub fn top_k_kl_per_position<B: Backend>(
    student_logits: Tensor<B, 2>,
    teacher_top_logits: Tensor<B, 2>,
    teacher_top_ids: Tensor<B, 2, Int>,
    teacher_rest_lse: Tensor<B, 1>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [n, _] = teacher_top_logits.dims();
    let scaled_top = teacher_top_logits / temperature;
    // Teacher log-normaliser over all V tokens = logsumexp(top-k, rest).
    let rest = teacher_rest_lse.reshape([n, 1]);
    let all = Tensor::cat(vec![scaled_top.clone(), rest.clone()], 1);
    let log_z = logsumexp(all, 1);
    let log_p_top = scaled_top - log_z.clone();
    let log_p_rest = rest - log_z;

    let log_q = log_softmax(student_logits / temperature, 1);
    let log_q_top = log_q.gather(1, teacher_top_ids);
    let q_rest = (Tensor::ones([n, 1], &log_q_top.device()) - log_q_top.clone().exp().sum_dim(1))
        .clamp_min(1e-30);
    let log_q_rest = q_rest.log();

    let top = (log_p_top.clone().exp() * (log_p_top - log_q_top)).sum_dim(1);
    let bucket = log_p_rest.clone().exp() * (log_p_rest - log_q_rest);
    (top + bucket).reshape([n])
}

/// log(sum(exp(x))) along `dim`, stable.
pub fn logsumexp<B: Backend>(x: Tensor<B, 2>, dim: usize) -> Tensor<B, 2> {
    let max = x.clone().max_dim(dim).detach();
    (x - max.clone()).exp().sum_dim(dim).log() + max
}

/// Softmax probabilities `[N, V]` at temperature `t` (for agreement metrics).
pub fn probabilities<B: Backend>(logits: Tensor<B, 2>, temperature: f64) -> Tensor<B, 2> {
    softmax(logits / temperature, 1)
}

/// Loss between intermediate hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenLoss {
    /// Mean over real tokens and the teacher's width of (S - t)^2.
    Mse,
    /// Mean over real tokens of 1 - cos(S, t).
    Cosine,
}

/// `student: [N, H]` (already projected to the teacher's width), `teacher: [N, H]`,
/// `weights: [N]` (1/real-token count at real positions, else 0) -> the batch loss (scalar).
pub fn hidden_loss<B: Backend>(
    kind: HiddenLoss,
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    weights: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let [n, width] = student.dims();
    let per_position = match kind {
        HiddenLoss::Mse => (student - teacher).square().sum_dim(1) / width as f64,
        HiddenLoss::Cosine => {
            let dot = (student.clone() * teacher.clone()).sum_dim(1);
            let norms = (student.square().sum_dim(1) * teacher.square().sum_dim(1))
                .sqrt()
                .clamp_min(1e-8);
            (dot / norms).neg() + 1.0
        }
    };
    (per_position.reshape([n]) * weights).sum()
}
