//! What the recipe asks of the objective, and the loss values a batch gives.

use serde::{Deserialize, Serialize};

use crate::cross_tokenizer::losses::CrossTokenizerLoss;
use crate::losses::{DivergenceParams, HiddenLoss, KdLoss};

/// One intermediate-layer match, layer indices in the transformers `hidden_states` convention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateMatch {
    #[serde(rename = "layer_T")]
    pub layer_t: usize,
    #[serde(rename = "layer_S")]
    pub layer_s: usize,
    #[serde(default = "default_feature")]
    pub feature: String,
    #[serde(default = "default_hidden_loss")]
    pub loss: HiddenLoss,
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_feature() -> String {
    "hidden".into()
}
fn default_hidden_loss() -> HiddenLoss {
    HiddenLoss::Mse
}
fn default_weight() -> f64 {
    1.0
}

/// Everything the objective needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub temperature: f64,
    pub hard_label_weight: f64,
    pub kd_loss: KdLoss,
    /// The generalized JSD's beta and the skew KLs' alpha.
    pub divergence: DivergenceParams,
    pub intermediate_matches: Vec<IntermediateMatch>,
    /// Positions per chunk of the vocabulary-sized computation.
    pub chunk_positions: usize,
    /// Vocabulary rows both models share with the same meaning; `None` = all rows.
    pub vocab_rows: Option<Vec<u32>>,
    /// Input tokens whose meaning differs between teacher and student: their positions are
    /// left out of the soft loss.
    pub masked_token_ids: Vec<u32>,
    /// Teacher and student tokenize differently: the soft loss compares aligned groups of
    /// tokens (crate::cross_tokenizer) instead of positions, and replaces `kd_loss`.
    pub cross_tokenizer: Option<CrossTokenizerLoss>,
}

/// Loss values of one batch (means over the batch, as plain numbers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossBreakdown {
    pub total: f64,
    pub hard: f64,
    pub soft: f64,
    /// weight-free value of each intermediate match.
    pub intermediate: Vec<f64>,
    pub real_tokens: usize,
}
