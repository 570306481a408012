//! Next-token cross-entropy, as transformers computes `model(..., labels=labels).loss`:
//! logits at position t predict token t+1; positions whose label is padding are skipped; the
//! mean is over all valid tokens of the batch (not a mean of per-row means).

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::model::AttentionMask;

/// Per-position cross-entropy of a batch.
pub struct CrossEntropy<B: Backend> {
    /// `[B, T-1]`: CE(logits[:, t], input_ids[:, t+1]); 0 where the label is padding.
    pub per_token: Tensor<B, 2>,
    /// `[B, T-1]`: 1 where the label is a real token.
    pub valid: Tensor<B, 2>,
    /// Number of valid labels.
    pub count: usize,
}

impl<B: Backend> CrossEntropy<B> {
    /// Sum over valid labels (a scalar tensor, differentiable).
    pub fn sum(&self) -> Tensor<B, 1> {
        self.per_token.clone().sum()
    }

    /// Mean over valid labels of the whole batch (a scalar tensor, differentiable).
    pub fn mean(&self) -> Tensor<B, 1> {
        self.sum() / (self.count.max(1) as f64)
    }
}

/// Shifted labels and their validity for `[B, T]` ids: `(labels [B, T-1], valid [B][T-1])`.
pub fn shifted_labels(input_ids: &[Vec<u32>], mask: &AttentionMask) -> (Vec<i64>, Vec<f32>) {
    let mut labels = Vec::new();
    let mut valid = Vec::new();
    for (ids, real) in input_ids.iter().zip(&mask.rows) {
        for t in 1..ids.len() {
            labels.push(ids[t] as i64);
            valid.push(if real[t] { 1.0 } else { 0.0 });
        }
    }
    (labels, valid)
}

/// Next-token cross-entropy of `logits [B, T, V]` for `input_ids` under `mask`.
pub fn next_token_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    input_ids: &[Vec<u32>],
    mask: &AttentionMask,
) -> CrossEntropy<B> {
    let [batch, seq, _] = logits.dims();
    let device = logits.device();
    let (labels, valid) = shifted_labels(input_ids, mask);
    let count = valid.iter().filter(|&&v| v > 0.0).count();
    let labels =
        Tensor::<B, 3, Int>::from_data(TensorData::new(labels, [batch, seq - 1, 1]), &device);
    let valid = Tensor::<B, 2>::from_data(TensorData::new(valid, [batch, seq - 1]), &device);
    let log_probabilities = log_softmax(logits.narrow(1, 0, seq - 1), 2);
    let per_token = log_probabilities
        .gather(2, labels)
        .reshape([batch, seq - 1])
        .neg()
        * valid.clone();
    CrossEntropy {
        per_token,
        valid,
        count,
    }
}
