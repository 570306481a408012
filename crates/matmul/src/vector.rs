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

/// Columns per task (a multiple of 32).
const CHUNK: usize = 512;

/// `x [k] · b` into `out [n]`. Needs AVX-512F, BW and BF16.
pub fn row_product(x: &[f32], b: &Bf16Matrix, out: &mut [f32]) {
    let (k, _) = b.shape();
    // x rounded to bf16 once, padded to whole pairs of 32.
    let mut rounded = vec![0u16; k.div_ceil(32) * 32];
    for (slot, &value) in rounded.iter_mut().zip(x) {
        *slot = bf16::from_f32(value).to_bits();
    }
    match b.orientation {
        Orientation::AsStored => out
            .par_chunks_mut(CHUNK)
            .enumerate()
            // SAFETY: the caller checked the CPU features; the chunk's columns are in range.
            .for_each(|(c, out)| unsafe { as_stored(&rounded, b, c * CHUNK, out) }),
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

/// Columns `start..start + out.len()` of `x · B`, B stored `[k, n]`: 8 blocks of 32 columns
/// at a time, so each pair of stored rows is read as two runs of 512 contiguous bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn as_stored(x: &[u16], b: &Bf16Matrix, start: usize, out: &mut [f32]) {
    const BLOCKS: usize = 8;
    let (k, n) = b.shape();
    let values = b.values.as_ptr() as *const u16;
    for (group, out) in out.chunks_mut(32 * BLOCKS).enumerate() {
        let column = start + group * 32 * BLOCKS;
        let masks: [__mmask32; BLOCKS] =
            std::array::from_fn(|i| mask32(out.len().saturating_sub(32 * i)));
        let mut sums = [[_mm512_setzero_ps(); 2]; BLOCKS];
        let mut kk = 0;
        while kk < k {
            let pair = x[kk] as u32 | (x[kk + 1] as u32) << 16;
            let xs: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
            let even_row = values.add(kk * n + column);
            let odd_row = values.add((kk + 1).min(k - 1) * n + column);
            let odd_present = kk + 1 < k;
            for (i, sum) in sums.iter_mut().enumerate() {
                if masks[i] == 0 {
                    break;
                }
                let even = _mm512_maskz_loadu_epi16(masks[i], even_row.add(32 * i) as *const i16);
                let odd = match odd_present {
                    true => _mm512_maskz_loadu_epi16(masks[i], odd_row.add(32 * i) as *const i16),
                    false => _mm512_setzero_si512(),
                };
                let lo: __m512bh = std::mem::transmute(_mm512_unpacklo_epi16(even, odd));
                let hi: __m512bh = std::mem::transmute(_mm512_unpackhi_epi16(even, odd));
                sum[0] = _mm512_dpbf16_ps(sum[0], xs, lo);
                sum[1] = _mm512_dpbf16_ps(sum[1], xs, hi);
            }
            kk += 2;
        }
        // Lane 4q + i of sum[0] is column 8q + i of its block, of sum[1] column 8q + 4 + i
        // (q: the 128-bit lane).
        for (block, out) in out.chunks_mut(32).enumerate() {
            let mut lanes = [[0f32; 16]; 2];
            _mm512_storeu_ps(lanes[0].as_mut_ptr(), sums[block][0]);
            _mm512_storeu_ps(lanes[1].as_mut_ptr(), sums[block][1]);
            for (j, slot) in out.iter_mut().enumerate() {
                let (q, r) = (j / 8, j % 8);
                *slot = lanes[r / 4][4 * q + r % 4];
            }
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
