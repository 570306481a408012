//! The distillation losses, exactly as tests/fixtures/qwen2-parity/README.md defines them.
//!
//! Every function works on a chunk of N positions flattened out of the batch (`[N, V]` logits)
//! and returns a *sum* over those positions, already weighted by each position's share of the
//! batch mean (`weights`, 0 for positions that do not count). Summing the chunks therefore gives
//! the batch loss, while only one chunk of vocabulary-sized tensors exists at a time.
//!
//! - forward KL:  sum_v p_t (log p_t - log p_s), p = softmax(logits / T)
//! - reverse KL:  sum_v p_s (log p_s - log p_t)
//! - generalized JSD(beta), as TRL's GKDTrainer.generalized_jsd_loss (Agarwal et al. 2024):
//!   beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s, for 0 < beta < 1;
//!   beta = 0 is forward KL and beta = 1 reverse KL (TRL's end cases: the mixture form itself
//!   tends to 0 at both ends, the end cases are its limits divided by beta and 1 - beta)
//! - skew KL(alpha):         KL(p_t || alpha p_t + (1 - alpha) p_s)   (DistiLLM, Ko et al. 2024)
//! - skew reverse KL(alpha): KL(p_s || alpha p_s + (1 - alpha) p_t); both are KL / reverse KL
//!   at alpha = 0
//! - MSE:         mean_v (s - t)^2 on raw logits
//! - soft loss = T^2 x token mean of the divergence (every one but MSE), over real tokens;
//!   MSE is not scaled by T^2 (it does not soften the distributions).
//! - hard loss = next-token cross-entropy, mean over valid labels.
//!
//! On burn-flex, forward KL and the log-softmax the others read at a few ids run as single
//! operations with their own backward step ([`crate::fused_losses`]); elsewhere the tensor
//! operations below compose the same formulas.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::fused_losses;

/// The divergence between teacher and student distributions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KdLoss {
    /// Forward KL(teacher || student) (TextBrewer's "ce" is the same gradient).
    #[serde(alias = "ce", alias = "forward_kl")]
    Kl,
    ReverseKl,
    /// The generalized JSD with `jsd_beta`.
    Jsd,
    /// Skew KL with `skew_alpha`.
    SkewKl,
    /// Skew reverse KL with `skew_alpha`.
    SkewReverseKl,
    Mse,
}

impl KdLoss {
    /// The name a recipe gives it.
    pub fn name(self) -> &'static str {
        match self {
            KdLoss::Kl => "kl",
            KdLoss::ReverseKl => "reverse_kl",
            KdLoss::Jsd => "jsd",
            KdLoss::SkewKl => "skew_kl",
            KdLoss::SkewReverseKl => "skew_reverse_kl",
            KdLoss::Mse => "mse",
        }
    }

    /// Whether the loss is scaled by T^2 (divergences between softened distributions are).
    pub fn scaled_by_temperature_squared(self) -> bool {
        !matches!(self, KdLoss::Mse)
    }
}

/// The parameters of the parametrised divergences.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DivergenceParams {
    /// The generalized JSD's interpolation: 0 forward KL, 1 reverse KL.
    pub jsd_beta: f64,
    /// The skew KLs' share of the distribution itself in the mixture (0: plain KL).
    pub skew_alpha: f64,
}

/// `[N, V]` logits -> `[N]` divergence per position (no T^2 factor), at temperature `t`.
pub fn divergence_per_position<B: Backend>(
    kind: KdLoss,
    student_logits: Tensor<B, 2>,
    teacher_logits: Tensor<B, 2>,
    temperature: f64,
    params: DivergenceParams,
) -> Tensor<B, 1> {
    let [n, vocab] = student_logits.dims();
    if kind == KdLoss::Mse {
        let per_position = (student_logits - teacher_logits).square().sum_dim(1) / vocab as f64;
        return per_position.reshape([n]);
    }
    let forward = kind == KdLoss::Kl || (kind == KdLoss::Jsd && params.jsd_beta <= 0.0);
    if forward {
        if let Some(kl) = fused_losses::forward_kl(&student_logits, &teacher_logits, temperature) {
            return kl;
        }
    }
    let log_p_student = log_softmax(student_logits / temperature, 1);
    let log_p_teacher = log_softmax(teacher_logits / temperature, 1);
    let per_position = match kind {
        KdLoss::Kl => kl(log_p_teacher, log_p_student),
        KdLoss::ReverseKl => kl(log_p_student, log_p_teacher),
        KdLoss::Jsd => {
            let beta = params.jsd_beta;
            if beta <= 0.0 {
                kl(log_p_teacher, log_p_student)
            } else if beta >= 1.0 {
                kl(log_p_student, log_p_teacher)
            } else {
                let log_m = log_mixture(log_p_teacher.clone(), log_p_student.clone(), beta);
                kl(log_p_teacher, log_m.clone()) * beta + kl(log_p_student, log_m) * (1.0 - beta)
            }
        }
        KdLoss::SkewKl => {
            let log_m = log_mixture(log_p_teacher.clone(), log_p_student, params.skew_alpha);
            kl(log_p_teacher, log_m)
        }
        KdLoss::SkewReverseKl => {
            let log_m = log_mixture(log_p_student.clone(), log_p_teacher, params.skew_alpha);
            kl(log_p_student, log_m)
        }
        KdLoss::Mse => unreachable!("returned above"),
    };
    per_position.reshape([n])
}

/// KL(p || q) per row, from log-probabilities `[N, V]` -> `[N, 1]`.
fn kl<B: Backend>(log_p: Tensor<B, 2>, log_q: Tensor<B, 2>) -> Tensor<B, 2> {
    (log_p.clone().exp() * (log_p - log_q)).sum_dim(1)
}

/// log(w p + (1 - w) q) from log-probabilities, without leaving log space (as TRL's
/// logsumexp), so that probabilities too small for a float never make a log(0); `w = 0` is
/// `log_q` itself.
fn log_mixture<B: Backend>(log_p: Tensor<B, 2>, log_q: Tensor<B, 2>, w: f64) -> Tensor<B, 2> {
    if w <= 0.0 {
        return log_q;
    }
    let a = log_p + w.ln();
    let b = log_q + (-w).ln_1p();
    // Any shift gives the same value; the larger term keeps the exponentials in range.
    let shift = a.clone().max_pair(b.clone()).detach();
    ((a - shift.clone()).exp() + (b - shift.clone()).exp()).log() + shift
}

/// Next-token cross-entropy per position: `[N, V]` logits, `[N]` label ids -> `[N]`.
pub fn cross_entropy_per_position<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let labels = labels.reshape([n, 1]);
    let log_p = match fused_losses::gathered_log_softmax(&logits, &labels, 1.0) {
        Some(log_p) => log_p,
        None => log_softmax(logits, 1).gather(1, labels),
    };
    log_p.reshape([n]).neg()
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

    let log_q_top =
        match fused_losses::gathered_log_softmax(&student_logits, &teacher_top_ids, temperature) {
            Some(log_q_top) => log_q_top,
            None => log_softmax(student_logits / temperature, 1).gather(1, teacher_top_ids),
        };
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
