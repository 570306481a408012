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
///
/// Only the padding (columns past `width`, rows past `k`) is zeroed, not the whole buffer,
/// and a transposed panel is written in blocks of [`TRANSPOSE_ROWS`] rows, each read from
/// `width` stored runs and written while it stays in L1 (column by column through all of `k`,
/// every write was to another cache line).
pub fn widened_panel(
    b: &Bf16Matrix,
    start: usize,
    width: usize,
    panel: usize,
    buffer: &mut Vec<f32>,
) {
    let (k, _) = b.shape();
    let stride = b.dims[1];
    let rows = k.div_ceil(KC).max(1) * KC;
    buffer.resize(rows * panel, 0.0);
    buffer[k * panel..].fill(0.0);
    let widen = |value: bf16| f32::from_bits((value.to_bits() as u32) << 16);
    match b.orientation {
        Orientation::AsStored => {
            for (kk, out) in buffer.chunks_exact_mut(panel).take(k).enumerate() {
                let row = &b.values[kk * stride + start..][..width];
                for (slot, &value) in out.iter_mut().zip(row) {
                    *slot = widen(value);
                }
                out[width..].fill(0.0);
            }
        }
        Orientation::Transposed => {
            for first in (0..k).step_by(TRANSPOSE_ROWS) {
                let count = TRANSPOSE_ROWS.min(k - first);
                let block = &mut buffer[first * panel..(first + count) * panel];
                for j in 0..width {
                    let run = &b.values[(start + j) * stride + first..][..count];
                    for (t, &value) in run.iter().enumerate() {
                        block[t * panel + j] = widen(value);
                    }
                }
                if width < panel {
                    for row in block.chunks_exact_mut(panel) {
                        row[width..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// Rows of a transposed panel written per block: 64 rows of a 48-column panel are 12 KiB.
const TRANSPOSE_ROWS: usize = 64;
