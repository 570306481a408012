//! The operands in the layouts the kernels read: `A` in tiles of rows, rounded to bf16 once
//! per product, and `B` one column panel at a time (for `vdpbf16ps`: pairs of consecutive
//! `k` interleaved per column; for f32 FMAs: widened to f32).
//!
//! Both are cut into blocks of [`KC`] along `k`, so the part of a panel that one block
//! multiplies stays in the L1 cache while every tile of `A` passes over it. Padding (rows past
//! `m`, columns past `n`, `k` past its end) is zero, so it adds nothing to any sum.

use half::bf16;
use rayon::prelude::*;

use crate::kernel::Kernel;
use crate::{Bf16Matrix, Orientation};

/// `k` per block (even, so bf16 pairs never straddle two blocks).
pub const KC: usize = 256;

/// `A`, rounded to bf16, tile by tile: for the bf16 kernel pairs of bf16 (`u32`, the even `k`
/// in the low half) at `[tile][block][pair][row]`; for the f32 kernels f32 values at
/// `[tile][block][kk][row]`.
pub struct PackedA {
    pub pairs: Vec<u32>,
    pub values: Vec<f32>,
    pub m: usize,
    pub k: usize,
    pub blocks: usize,
    pub tile_rows: usize,
    /// Entries of one block of one tile.
    block_len: usize,
}

impl PackedA {
    pub fn new(kernel: Kernel, a: &[f32], m: usize, k: usize) -> Self {
        let tile_rows = kernel.tile_rows();
        let tiles = m.div_ceil(tile_rows);
        let blocks = k.div_ceil(KC).max(1);
        let rounded = |i: usize, kk: usize| -> bf16 {
            match i < m && kk < k {
                true => bf16::from_f32(a[i * k + kk]),
                false => bf16::ZERO,
            }
        };
        let mut packed = Self {
            pairs: Vec::new(),
            values: Vec::new(),
            m,
            k,
            blocks,
            tile_rows,
            block_len: match kernel {
                Kernel::Avx512Bf16 => KC / 2 * tile_rows,
                Kernel::Avx512Widened | Kernel::Avx2 | Kernel::Portable => KC * tile_rows,
            },
        };
        match kernel {
            Kernel::Avx512Bf16 => {
                let tile_len = blocks * (KC / 2) * tile_rows;
                packed.pairs = vec![0u32; tiles * tile_len];
                packed
                    .pairs
                    .par_chunks_mut(tile_len)
                    .enumerate()
                    .for_each(|(t, tile)| {
                        for (p, pair) in tile.chunks_mut(tile_rows).enumerate() {
                            let kk = 2 * p;
                            for (r, slot) in pair.iter_mut().enumerate() {
                                let i = t * tile_rows + r;
                                *slot = rounded(i, kk).to_bits() as u32
                                    | (rounded(i, kk + 1).to_bits() as u32) << 16;
                            }
                        }
                    });
            }
            Kernel::Avx512Widened | Kernel::Avx2 | Kernel::Portable => {
                let tile_len = blocks * KC * tile_rows;
                packed.values = vec![0f32; tiles * tile_len];
                packed
                    .values
                    .par_chunks_mut(tile_len)
                    .enumerate()
                    .for_each(|(t, tile)| {
                        for (kk, column) in tile.chunks_mut(tile_rows).enumerate() {
                            for (r, slot) in column.iter_mut().enumerate() {
                                *slot = rounded(t * tile_rows + r, kk).to_f32();
                            }
                        }
                    });
            }
        }
        packed
    }

    pub fn tiles(&self) -> usize {
        self.m.div_ceil(self.tile_rows)
    }

    /// Index of block `block` of tile `tile` (in `pairs` or `values`).
    pub fn offset(&self, tile: usize, block: usize) -> usize {
        (tile * self.blocks + block) * self.block_len
    }
}

/// Columns `start..start + width` of `b` (`width` at most `panel`), every block of `k`, into
/// `buffer` as the bf16 kernel reads them: `[pair][column]`, `panel` columns per pair, each
/// entry a `u32` holding `B[2p, j]` in its low half and `B[2p + 1, j]` in its high half.
pub fn pair_panel(b: &Bf16Matrix, start: usize, width: usize, panel: usize, buffer: &mut Vec<u32>) {
    let (k, _) = b.shape();
    let stride = b.dims[1];
    buffer.clear();
    buffer.resize(k.div_ceil(KC).max(1) * KC / 2 * panel, 0);
    let bits = |index: usize| b.values[index].to_bits() as u32;
    match b.orientation {
        // Two stored rows interleaved, column by column.
        Orientation::AsStored => {
            for (p, out) in buffer
                .chunks_exact_mut(panel)
                .take(k.div_ceil(2))
                .enumerate()
            {
                let even = &b.values[2 * p * stride + start..][..width];
                match 2 * p + 1 < k {
                    true => {
                        let odd = &b.values[(2 * p + 1) * stride + start..][..width];
                        for ((slot, low), high) in out.iter_mut().zip(even).zip(odd) {
                            *slot = low.to_bits() as u32 | (high.to_bits() as u32) << 16;
                        }
                    }
                    false => {
                        for (slot, low) in out.iter_mut().zip(even) {
                            *slot = low.to_bits() as u32;
                        }
                    }
                }
            }
        }
        // A stored row holds one column's pairs side by side already.
        Orientation::Transposed => {
            for j in 0..width {
                let row = (start + j) * stride;
                for p in 0..k / 2 {
                    buffer[p * panel + j] = bits(row + 2 * p) | bits(row + 2 * p + 1) << 16;
                }
                if k % 2 == 1 {
                    buffer[(k / 2) * panel + j] = bits(row + k - 1);
                }
            }
        }
    }
}

/// The same columns widened to f32: `[kk][column]`, `panel` columns per row.
pub fn widened_panel(
    b: &Bf16Matrix,
    start: usize,
    width: usize,
    panel: usize,
    buffer: &mut Vec<f32>,
) {
    let (k, _) = b.shape();
    let stride = b.dims[1];
    buffer.clear();
    buffer.resize(k.div_ceil(KC).max(1) * KC * panel, 0.0);
    match b.orientation {
        Orientation::AsStored => {
            for (kk, out) in buffer.chunks_exact_mut(panel).take(k).enumerate() {
                let row = &b.values[kk * stride + start..][..width];
                for (slot, value) in out.iter_mut().zip(row) {
                    *slot = value.to_f32();
                }
            }
        }
        Orientation::Transposed => {
            for j in 0..width {
                let row = &b.values[(start + j) * stride..][..k];
                for (kk, value) in row.iter().enumerate() {
                    buffer[kk * panel + j] = value.to_f32();
                }
            }
        }
    }
}
