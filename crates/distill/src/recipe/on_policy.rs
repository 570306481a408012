//! `[on_policy]`: which micro-batches train on generated text (GKD), and how it is sampled.

use serde::{Deserialize, Serialize};

use super::{Fields, OnResume, RecipeError};

/// On-policy and sequence-level distillation (GKD, Agarwal et al. 2024, as TRL's GKDTrainer):
/// which micro-batches train on continuations generated from prompts instead of the data's
/// text. Each micro-batch draws once: with probability `lmbda` the student continues its
/// prompts (on-policy); otherwise, with `seq_kd`, the teacher does (sequence-level KD);
/// otherwise it is the data's block, as without this section. Prompts are the first
/// `prompt_len` tokens of the micro-batch's blocks; the losses score the generated tokens only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnPolicy {
    /// The share of micro-batches whose continuations the student samples, in [0, 1].
    pub lmbda: f64,
    /// The other micro-batches' continuations are sampled by the teacher.
    pub seq_kd: bool,
    /// Tokens of each block kept as the prompt.
    pub prompt_len: usize,
    /// Tokens generated after each prompt at most (a row stops at an eos).
    pub max_new_tokens: usize,
    /// Sampling: temperature, then top-k (0 = off), then top-p (1 = off).
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    /// Seed of the draws; a micro-batch's draws depend only on (seed, update, micro-batch), so
    /// a resumed run samples what the uninterrupted one would have.
    pub seed: u64,
}

/// Off: every micro-batch trains on the data (word-level distillation).
impl Default for OnPolicy {
    fn default() -> Self {
        Self {
            lmbda: 0.0,
            seq_kd: false,
            prompt_len: 32,
            max_new_tokens: 32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
        }
    }
}

impl OnPolicy {
    /// Whether any micro-batch trains on generated text.
    pub fn generates(&self) -> bool {
        self.lmbda > 0.0 || self.seq_kd
    }

    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl OnPolicy {
    /// `needs_teacher`: whether the recipe scores text with a teacher at all.
    pub(super) fn validate(&self, fields: &Fields, needs_teacher: bool) -> Result<(), RecipeError> {
        let field = |name: &str| format!("on_policy.{name}");
        let o = self;
        if !(0.0..=1.0).contains(&o.lmbda) {
            return Err(fields.error(
                &field("lmbda"),
                format!(
                    "{} is out of range [0, 1] (the share of on-policy micro-batches)",
                    o.lmbda
                ),
            ));
        }
        for (name, value) in [
            ("prompt_len", o.prompt_len),
            ("max_new_tokens", o.max_new_tokens),
        ] {
            if value == 0 {
                return Err(fields.error(&field(name), "must be at least 1"));
            }
        }
        if !(o.temperature > 0.0 && o.temperature <= 100.0) {
            return Err(fields.error(
                &field("temperature"),
                format!("{} is out of range (0, 100]", o.temperature),
            ));
        }
        if !(o.top_p > 0.0 && o.top_p <= 1.0) {
            return Err(fields.error(
                &field("top_p"),
                format!("{} is out of range (0, 1] (1 = off)", o.top_p),
            ));
        }
        if o.generates() && !needs_teacher {
            return Err(fields.error(
                &field(if o.lmbda > 0.0 { "lmbda" } else { "seq_kd" }),
                "generated text is scored by the teacher, but this recipe trains on hard labels \
                 only (distillation.hard_label_weight = 1, no intermediate matches): lower \
                 hard_label_weight, or set on_policy.lmbda = 0 and seq_kd = false",
            ));
        }
        Ok(())
    }
}

/// What a change does on `--resume`.
pub(super) const ON_RESUME: &[OnResume] = &[OnResume::changes(
    "on_policy.",
    "which text the micro-batches train on",
)];
