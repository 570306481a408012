//! One row times the matrix (batch-1 decoding) with `vdpbf16ps`, reading the stored matrix as
//! it lies, without packing: a decoding step reads every matrix once, so its speed is the rate
//! at which those bytes stream in, and a packed copy would read them twice.
//!
//! - As stored (`[k, n]`): rows `2p` and `2p + 1` are loaded side by side and interleaved
//!   into pairs (`vpunpck[lh]wd`, which works within 128-bit lanes, so the sums come out in a
//!   fixed permuted column order that the store undoes).
//! - Transposed (stored `[n, k]`): each output is a dot product of the row with a stored row,
//!   whose consecutive values are already pairs.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::bf16;
use rayon::prelude::*;

use crate::{Bf16Matrix, Orientation};

/// Most columns one task sums as stored (a multiple of 32): their sums, 16 KiB, stay in L1.
const MAX_TILE: usize = 4096;

const PREFETCH_ROWS: usize = 4;

/// Outputs per task when transposed (a multiple of 4).
const CHUNK: usize = 512;

/// `x [k] · b` into `out [n]`. Needs AVX-512F, BW and BF16.
pub fn row_product(x: &[f32], b: &Bf16Matrix, out: &mut [f32]) {
    let (k, n) = b.shape();
    // x rounded to bf16 once, padded to whole pairs of 32.
    let mut rounded = vec![0u16; k.div_ceil(32) * 32];
    for (slot, &value) in rounded.iter_mut().zip(x) {
        *slot = bf16::from_f32(value).to_bits();
    }
    match b.orientation {
        Orientation::AsStored => {
            // At least one block of columns per thread.
            let threads = rayon::current_num_threads().max(1);
            let tile = (n.div_ceil(threads).div_ceil(32) * 32).clamp(32, MAX_TILE);
            out.par_chunks_mut(tile)
                .enumerate()
                // SAFETY: the caller checked the CPU features; the block's columns are in range.
                .for_each(|(c, out)| unsafe { as_stored(&rounded, b, c * tile, out) })
        }
        Orientation::Transposed => out
            .par_chunks_mut(CHUNK)
            .enumerate()
            // SAFETY: as above.
            .for_each(|(c, out)| unsafe { transposed(&rounded, b, c * CHUNK, out) }),
    }
}

/// The first `count` of 32 bf16 lanes.
fn mask32(count: usize) -> __mmask32 {
    match count >= 32 {
        true => u32::MAX,
        false => (1u32 << count) - 1,
    }
}

/// Columns `start..start + out.len()` of `x · B`, B stored `[k, n]`: the block's rows are
/// streamed in order, each as one contiguous run, while the sums of all its columns stay in L1;
/// two pairs of rows per pass, so the sums are read and written once per four rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn as_stored(x: &[u16], b: &Bf16Matrix, start: usize, out: &mut [f32]) {
    let (k, n) = b.shape();
    let values = b.values.as_ptr() as *const u16;
    let blocks = out.len().div_ceil(32);
    let masks: Vec<__mmask32> = (0..blocks).map(|i| mask32(out.len() - 32 * i)).collect();
    // Two sums per block of 32 columns, in the permuted order of the unpacked pairs.
    let mut sums = vec![_mm512_setzero_ps(); 2 * blocks];
    let pair_of = |kk: usize| -> __m512bh {
        let pair = x[kk] as u32 | (x[kk + 1] as u32) << 16;
        std::mem::transmute(_mm512_set1_epi32(pair as i32))
    };
    // Rows kk and kk + 1 of block i, interleaved into pairs; a missing odd row reads as zeros.
    let load = |kk: usize, i: usize| -> (__m512bh, __m512bh) {
        let even =
            _mm512_maskz_loadu_epi16(masks[i], values.add(kk * n + start + 32 * i) as *const i16);
        let odd = match kk + 1 < k {
            true => _mm512_maskz_loadu_epi16(
                masks[i],
                values.add((kk + 1) * n + start + 32 * i) as *const i16,
            ),
            false => _mm512_setzero_si512(),
        };
        (
            std::mem::transmute::<__m512i, __m512bh>(_mm512_unpacklo_epi16(even, odd)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_unpackhi_epi16(even, odd)),
        )
    };
    let mut kk = 0;
    while kk + 4 <= k {
        let (first, second) = (pair_of(kk), pair_of(kk + 2));
        let ahead = (kk + PREFETCH_ROWS).min(k.saturating_sub(4));
        for i in 0..blocks {
            for r in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(
                    values.add((ahead + r) * n + start + 32 * i) as *const i8
                );
            }
            let (lo0, hi0) = load(kk, i);
            let (lo1, hi1) = load(kk + 2, i);
            let lo = _mm512_dpbf16_ps(_mm512_dpbf16_ps(sums[2 * i], first, lo0), second, lo1);
            let hi = _mm512_dpbf16_ps(_mm512_dpbf16_ps(sums[2 * i + 1], first, hi0), second, hi1);
            sums[2 * i] = lo;
            sums[2 * i + 1] = hi;
        }
        kk += 4;
    }
    while kk < k {
        let pair = pair_of(kk);
        for i in 0..blocks {
            let (lo, hi) = load(kk, i);
            sums[2 * i] = _mm512_dpbf16_ps(sums[2 * i], pair, lo);
            sums[2 * i + 1] = _mm512_dpbf16_ps(sums[2 * i + 1], pair, hi);
        }
        kk += 2;
    }
    // Lane 4q + i of the first sum is column 8q + i of its block, of the second column
    // 8q + 4 + i (q: the 128-bit lane).
    for (block, out) in out.chunks_mut(32).enumerate() {
        let mut lanes = [[0f32; 16]; 2];
        _mm512_storeu_ps(lanes[0].as_mut_ptr(), sums[2 * block]);
        _mm512_storeu_ps(lanes[1].as_mut_ptr(), sums[2 * block + 1]);
        for (j, slot) in out.iter_mut().enumerate() {
            let (q, r) = (j / 8, j % 8);
            *slot = lanes[r / 4][4 * q + r % 4];
        }
    }
}

/// Outputs `start..start + out.len()` of `x · Sᵀ`, S stored `[n, k]`: four stored rows at a
/// time share each load of `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn transposed(x: &[u16], b: &Bf16Matrix, start: usize, out: &mut [f32]) {
    let k = b.dims[1];
    let values = b.values.as_ptr() as *const u16;
    let xs = x.as_ptr();
    for (group, out) in out.chunks_mut(4).enumerate() {
        let first = start + 4 * group;
        let mut sums = [_mm512_setzero_ps(); 4];
        let mut kk = 0;
        while kk < k {
            let mask = mask32(k - kk);
            let xv: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(xs.add(kk) as *const __m512i));
            for (r, sum) in sums.iter_mut().enumerate().take(out.len()) {
                let row = values.add((first + r) * k + kk) as *const i16;
                let wv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi16(mask, row));
                *sum = _mm512_dpbf16_ps(*sum, xv, wv);
            }
            kk += 32;
        }
        for (slot, sum) in out.iter_mut().zip(sums) {
            *slot = _mm512_reduce_add_ps(sum);
        }
    }
}
