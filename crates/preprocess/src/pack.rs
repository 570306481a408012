//! Packing a token stream into fixed-length blocks.
//!
//! Documents are laid end to end, each followed by the eos token, and the stream is cut every
//! `seq_len` tokens regardless of document boundaries (a document may span blocks). Only the
//! very last block of a split is padded; its `real_len` says how many of its tokens are real.
//! Compared with one padded row per WikiText line this removes almost all padding (the shared
//! notes measured 86% padding for the line-per-row recipe at 512).

use serde::{Deserialize, Serialize};

/// One training example: `ids.len() == seq_len`, of which the first `real_len` are text/eos and
/// the rest are the pad id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub ids: Vec<u32>,
    pub real_len: usize,
}

impl Block {
    /// 1 for real tokens, 0 for padding, as models take it.
    pub fn attention_mask(&self) -> Vec<u32> {
        (0..self.ids.len())
            .map(|i| u32::from(i < self.real_len))
            .collect()
    }

    /// The real tokens, without padding.
    pub fn real_ids(&self) -> &[u32] {
        &self.ids[..self.real_len]
    }
}

/// Counts of one split, written to the manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackStats {
    /// Documents (WikiText articles) packed.
    pub documents: u64,
    /// Tokens of text, eos excluded.
    pub text_tokens: u64,
    /// Real tokens in blocks: text tokens plus one eos per document.
    pub tokens: u64,
    /// Blocks written.
    pub blocks: u64,
    /// Pad tokens in the last block.
    pub padding_tokens: u64,
}

impl PackStats {
    /// Fraction of block positions that are padding.
    pub fn padding_fraction(&self) -> f64 {
        let positions = self.tokens + self.padding_tokens;
        if positions == 0 {
            0.0
        } else {
            self.padding_tokens as f64 / positions as f64
        }
    }
}

/// Streams document pieces into blocks; holds at most one partial block.
pub struct BlockPacker {
    seq_len: usize,
    eos_id: u32,
    pad_id: u32,
    current: Vec<u32>,
    stats: PackStats,
}

impl BlockPacker {
    pub fn new(seq_len: usize, eos_id: u32, pad_id: u32) -> Self {
        Self {
            seq_len,
            eos_id,
            pad_id,
            current: Vec::with_capacity(seq_len),
            stats: PackStats::default(),
        }
    }

    /// Appends the ids of one document piece (and eos when the piece ends its document),
    /// pushing every block that fills up onto `full_blocks`.
    pub fn push_piece(&mut self, ids: &[u32], ends_document: bool, full_blocks: &mut Vec<Block>) {
        self.stats.text_tokens += ids.len() as u64;
        self.extend(ids, full_blocks);
        if ends_document {
            self.stats.documents += 1;
            self.extend(&[self.eos_id], full_blocks);
        }
    }

    fn extend(&mut self, mut ids: &[u32], full_blocks: &mut Vec<Block>) {
        self.stats.tokens += ids.len() as u64;
        while !ids.is_empty() {
            let room = self.seq_len - self.current.len();
            let (now, later) = ids.split_at(room.min(ids.len()));
            self.current.extend_from_slice(now);
            ids = later;
            if self.current.len() == self.seq_len {
                let ids = std::mem::replace(&mut self.current, Vec::with_capacity(self.seq_len));
                self.stats.blocks += 1;
                full_blocks.push(Block {
                    ids,
                    real_len: self.seq_len,
                });
            }
        }
    }

    /// Pads and emits the partial last block, if any, and returns the split's counts.
    pub fn finish(mut self, full_blocks: &mut Vec<Block>) -> PackStats {
        if !self.current.is_empty() {
            let real_len = self.current.len();
            self.stats.padding_tokens = (self.seq_len - real_len) as u64;
            self.current.resize(self.seq_len, self.pad_id);
            self.stats.blocks += 1;
            full_blocks.push(Block {
                ids: std::mem::take(&mut self.current),
                real_len,
            });
        }
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_packed_end_to_end_with_eos_and_only_the_tail_is_padded() {
        let mut packer = BlockPacker::new(4, 99, 0);
        let mut blocks = Vec::new();
        packer.push_piece(&[1, 2, 3], true, &mut blocks);
        packer.push_piece(&[4, 5], false, &mut blocks);
        packer.push_piece(&[6], true, &mut blocks);
        let stats = packer.finish(&mut blocks);
        let ids: Vec<_> = blocks.iter().map(|b| (b.ids.clone(), b.real_len)).collect();
        assert_eq!(ids, [(vec![1, 2, 3, 99], 4), (vec![4, 5, 6, 99], 4)]);
        assert_eq!(
            stats,
            PackStats {
                documents: 2,
                text_tokens: 6,
                tokens: 8,
                blocks: 2,
                padding_tokens: 0
            }
        );

        let mut packer = BlockPacker::new(4, 99, 7);
        let mut blocks = Vec::new();
        packer.push_piece(&[1, 2, 3, 4, 5], true, &mut blocks);
        let stats = packer.finish(&mut blocks);
        assert_eq!(
            blocks[1],
            Block {
                ids: vec![5, 99, 7, 7],
                real_len: 2
            }
        );
        assert_eq!(blocks[1].attention_mask(), [1, 1, 0, 0]);
        assert_eq!(stats.padding_tokens, 2);
        assert_eq!(stats.padding_fraction(), 0.25);
    }
}
