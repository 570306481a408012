//! A batch of token rows, and positions flattened to `[B*T, ...]` for the chunked terms.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use qwen2::{AttentionMask, Model};

/// A batch on the host: token rows, which tokens are real, and which positions the losses
/// score.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub mask: AttentionMask,
    /// `scored[b][t]`: position t of row b counts in the losses. `None`: every real position
    /// (text from the data). A generated sequence scores only the positions that predict a
    /// generated token, so its prompt is masked out (crate::on_policy).
    pub scored: Option<Vec<Vec<bool>>>,
}

impl Batch {
    pub fn new(input_ids: Vec<Vec<u32>>, mask: AttentionMask) -> Self {
        Self {
            input_ids,
            mask,
            scored: None,
        }
    }

    /// Whether position `t` of row `row` counts in the losses (real positions only).
    pub fn is_scored(&self, row: usize, t: usize) -> bool {
        self.scored.as_ref().is_none_or(|scored| scored[row][t])
    }

    pub fn batch_size(&self) -> usize {
        self.input_ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    pub fn real_tokens(&self) -> usize {
        self.mask.rows.iter().flatten().filter(|&&r| r).count()
    }

    pub fn ids_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let values: Vec<i64> = self.input_ids.iter().flatten().map(|&t| t as i64).collect();
        Tensor::from_data(
            TensorData::new(values, [self.batch_size(), self.seq_len()]),
            device,
        )
    }
}

/// `[B, T, H] -> [B*T, H]`
pub fn flatten<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch * seq, width])
}

/// Logits of a `[len, H]` hidden chunk.
pub(crate) fn chunk_logits<B: Backend>(model: &Model<B>, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
    let [len, width] = hidden.dims();
    let logits = model.lm_head(hidden.reshape([1, len, width]));
    let vocab = logits.dims()[2];
    logits.reshape([len, vocab])
}
