//! `[distillation]`: the objective: temperature, the hard-label weight, the divergence and
//! its parameters, intermediate-layer matches, and the chunking of the vocabulary-sized terms.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cross_tokenizer::losses::CrossTokenizerLossKind;
use crate::losses::KdLoss;
use crate::objective::IntermediateMatch;

use super::{Fields, OnResume, RecipeError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Distillation {
    pub temperature: f64,
    pub hard_label_weight: f64,
    /// kl (forward KL; the seed's "ce" and "forward_kl" are accepted as aliases), reverse_kl,
    /// jsd (the generalized JSD), skew_kl, skew_reverse_kl, mse.
    pub kd_loss_type: KdLoss,
    /// The generalized JSD's interpolation, in [0, 1]: 0 forward KL, 1 reverse KL (TRL's GKD
    /// convention).
    pub jsd_beta: f64,
    /// The skew KLs' mixing weight, in [0, 1): skew KL = KL(p_t || alpha p_t + (1 - alpha) p_s),
    /// skew reverse KL = KL(p_s || alpha p_s + (1 - alpha) p_t) (DistiLLM's default 0.1).
    pub skew_alpha: f64,
    pub intermediate_matches: Vec<IntermediateMatch>,
    /// Positions per chunk of the vocabulary-sized losses (memory vs speed).
    pub chunk_positions: usize,
    /// Distillation across tokenizers (crate::cross_tokenizer): `uld` or `hybrid`. Absent:
    /// both models must share one tokenizer, and the loss compares them id by id.
    pub cross_tokenizer: Option<CrossTokenizerLossKind>,
    /// The hybrid loss's weights of its exact part (over tokens both vocabularies spell the
    /// same) and its ULD part (over the rest). Both or neither; neither: TRL GOLD's adaptive
    /// weights, shared tokens / teacher vocabulary rows and its complement.
    pub hybrid_matched_weight: Option<f64>,
    pub hybrid_unmatched_weight: Option<f64>,
}

impl Default for Distillation {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            hard_label_weight: 0.5,
            kd_loss_type: KdLoss::Kl,
            jsd_beta: 0.5,
            skew_alpha: 0.1,
            intermediate_matches: Vec::new(),
            chunk_positions: 256,
            cross_tokenizer: None,
            hybrid_matched_weight: None,
            hybrid_unmatched_weight: None,
        }
    }
}

impl Distillation {
    pub(super) fn validate(&self, fields: &Fields) -> Result<(), RecipeError> {
        let d = self;
        if d.chunk_positions == 0 {
            return Err(fields.error("distillation.chunk_positions", "must be at least 1"));
        }
        if !(d.temperature > 0.0 && d.temperature <= 100.0) {
            return Err(fields.error(
                "distillation.temperature",
                format!("{} is out of range (0, 100]", d.temperature),
            ));
        }
        if !(0.0..=1.0).contains(&d.hard_label_weight) {
            return Err(fields.error(
                "distillation.hard_label_weight",
                format!("{} is out of range [0, 1]", d.hard_label_weight),
            ));
        }
        if !(0.0..=1.0).contains(&d.jsd_beta) {
            return Err(fields.error(
                "distillation.jsd_beta",
                format!(
                    "{} is out of range [0, 1] (0 = forward KL, 1 = reverse KL)",
                    d.jsd_beta
                ),
            ));
        }
        if !(0.0..1.0).contains(&d.skew_alpha) {
            return Err(fields.error(
                "distillation.skew_alpha",
                format!(
                    "{} is out of range [0, 1) (0 = plain KL; at 1 the mixture is the distribution itself)",
                    d.skew_alpha
                ),
            ));
        }
        match (d.hybrid_matched_weight, d.hybrid_unmatched_weight) {
            (None, None) => {}
            (Some(matched), Some(unmatched)) => {
                for (field, weight) in [
                    ("distillation.hybrid_matched_weight", matched),
                    ("distillation.hybrid_unmatched_weight", unmatched),
                ] {
                    if !(weight >= 0.0 && weight.is_finite()) {
                        return Err(fields.error(field, "must be a finite number >= 0"));
                    }
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(fields.error(
                    "distillation.hybrid_unmatched_weight",
                    "give both hybrid weights or neither (neither: weights from the shared \
                     vocabulary's size)",
                ))
            }
        }
        if d.cross_tokenizer.is_some() && !d.intermediate_matches.is_empty() {
            return Err(fields.error(
                "distillation.intermediate_matches",
                "hidden states cannot be matched across tokenizers (the two models' positions \
                 are different tokens); remove the matches or the cross_tokenizer setting",
            ));
        }
        for (index, matched) in d.intermediate_matches.iter().enumerate() {
            if matched.feature != "hidden" {
                return Err(fields.error(
                    &format!("distillation.intermediate_matches[{index}].feature"),
                    format!("`{}`: only \"hidden\" is supported", matched.feature),
                ));
            }
            if !(matched.weight >= 0.0 && matched.weight.is_finite()) {
                return Err(fields.error(
                    &format!("distillation.intermediate_matches[{index}].weight"),
                    "must be a finite number >= 0",
                ));
            }
        }
        Ok(())
    }

    /// Checks the intermediate-match layer indices against the two models' layer counts
    /// (transformers' hidden_states convention: 0 = embeddings, n = after the final norm).
    pub fn check_layers(
        &self,
        path: &Path,
        teacher_layers: usize,
        student_layers: usize,
    ) -> Result<(), RecipeError> {
        for (index, matched) in self.intermediate_matches.iter().enumerate() {
            for (name, layer, layers) in [
                ("layer_T", matched.layer_t, teacher_layers),
                ("layer_S", matched.layer_s, student_layers),
            ] {
                if layer > layers {
                    return Err(Fields(path).error(
                        &format!("distillation.intermediate_matches[{index}].{name}"),
                        format!(
                            "layer {layer} does not exist: the model has {layers} layers, so hidden states 0..={layers}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What a change does on `--resume`.
pub(super) const ON_RESUME: &[OnResume] =
    &[OnResume::changes("distillation.", "the training loss")];
