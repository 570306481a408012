//! Batches of token blocks from the preprocess shards, in a seeded order per epoch.
//!
//! The order of an epoch depends only on `(number of blocks, seed, epoch)`
//! ([`preprocess::shuffled_order`]), so a run resumed at micro-batch `k` of epoch `e` reads
//! exactly the blocks the uninterrupted run would have read. Like transformers' Trainer (whose
//! dataloader keeps the last incomplete batch), an epoch has `ceil(blocks / batch_size)`
//! micro-batches and the last one may be smaller.

use std::path::Path;

use preprocess::{shuffled_order, Block, PreprocessError, ShardReader};
use qwen2::AttentionMask;

use crate::objective::Batch;

/// One split of a shard directory, read in batches.
pub struct BatchSource {
    reader: ShardReader,
    batch_size: usize,
}

impl BatchSource {
    /// Opens `split` of the shard directory `dir`.
    pub fn open(dir: &Path, split: &str, batch_size: usize) -> Result<Self, PreprocessError> {
        let reader = ShardReader::open(dir, split)?;
        Ok(Self {
            reader,
            batch_size: batch_size.max(1),
        })
    }

    /// Blocks in the split.
    pub fn blocks(&self) -> usize {
        self.reader.len()
    }

    pub fn seq_len(&self) -> usize {
        self.reader.seq_len()
    }

    /// Micro-batches per pass over the split (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.blocks().div_ceil(self.batch_size)
    }

    /// The largest token id the split holds, according to its manifest (tokenizer size - 1).
    pub fn tokenizer_vocab_size(&self) -> usize {
        self.reader.manifest().tokenizer.vocab_size
    }

    pub fn reader(&self) -> &ShardReader {
        &self.reader
    }

    pub fn split(&self) -> &str {
        self.reader.split()
    }

    /// Micro-batch `index` of an epoch whose block order is `order` (from [`epoch_order`]).
    pub fn batch(&mut self, order: &[usize], index: usize) -> Result<SourceBatch, PreprocessError> {
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(order.len());
        let indices = order[start..end].to_vec();
        let blocks = indices
            .iter()
            .map(|&block| self.reader.block(block))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SourceBatch {
            batch: batch_of(&blocks),
            blocks: indices,
        })
    }

    /// Micro-batch `index` in file order (evaluation).
    pub fn sequential_batch(&mut self, index: usize) -> Result<SourceBatch, PreprocessError> {
        let order: Vec<usize> = (0..self.blocks()).collect();
        self.batch(&order, index)
    }
}

/// A batch and the split-wide indices of its blocks (which an offline teacher cache is keyed by).
pub struct SourceBatch {
    pub batch: Batch,
    pub blocks: Vec<usize>,
}

/// The block order of one training epoch.
pub fn epoch_order(blocks: usize, seed: u64, epoch: usize) -> Vec<usize> {
    shuffled_order(blocks, seed, epoch as u64)
}

/// Stacks blocks of equal length into a batch; padding (after `real_len`) is masked.
pub fn batch_of(blocks: &[Block]) -> Batch {
    let input_ids = blocks.iter().map(|b| b.ids.clone()).collect();
    let rows = blocks
        .iter()
        .map(|b| (0..b.ids.len()).map(|i| i < b.real_len).collect())
        .collect();
    Batch::new(input_ids, AttentionMask { rows })
}

/// Scored positions of `batch` that carry a next-token label (the hard loss's token count).
pub fn label_count(batch: &Batch) -> usize {
    batch
        .mask
        .rows
        .iter()
        .enumerate()
        .map(|(b, row)| {
            (0..row.len().saturating_sub(1))
                .filter(|&t| row[t] && row[t + 1] && batch.is_scored(b, t))
                .count()
        })
        .sum()
}

/// Scored real positions of `batch` whose input token is not masked (the soft loss's token
/// count).
pub fn soft_count(batch: &Batch, masked_token_ids: &[u32]) -> usize {
    batch
        .input_ids
        .iter()
        .zip(&batch.mask.rows)
        .enumerate()
        .map(|(b, (ids, row))| {
            (0..ids.len())
                .filter(|&t| row[t] && batch.is_scored(b, t) && !masked_token_ids.contains(&ids[t]))
                .count()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_masked_and_counted_out() {
        let blocks = [
            Block {
                ids: vec![5, 6, 7, 8],
                real_len: 4,
            },
            Block {
                ids: vec![9, 3, 0, 0],
                real_len: 2,
            },
        ];
        let batch = batch_of(&blocks);
        assert_eq!(batch.mask.rows[1], vec![true, true, false, false]);
        // Labels: 3 in the full row, 1 in the padded one.
        assert_eq!(label_count(&batch), 4);
        assert_eq!(soft_count(&batch, &[3]), 5);
    }

    #[test]
    fn epoch_orders_differ_between_epochs_and_repeat_for_a_seed() {
        assert_eq!(epoch_order(50, 7, 1), epoch_order(50, 7, 1));
        assert_ne!(epoch_order(50, 7, 0), epoch_order(50, 7, 1));
    }
}
