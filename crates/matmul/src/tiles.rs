//! The kernels' work: a tile of rows of `A` times a column panel of `B` over one block of
//! `k`, added into `C` (register-blocked: the tile's sums stay in registers for the whole
//! block).

use crate::kernel::Kernel;
use crate::pack::{self, PackedA, KC};
use crate::Bf16Matrix;

/// Calls `$tile::<R>(args)` with `R` the tile's row count (one of `$counts`): a constant in
/// each instance, so the tile's sums stay in registers.
macro_rules! for_rows {
    ($rows:expr, $tile:ident, [$($n:literal),*], $args:tt) => {
        match $rows {
            $($n => $tile::<$n> $args,)*
            _ => unreachable!("a tile has 1 to {} rows", [$($n),*].len()),
        }
    };
}

/// An f32 tile: `(rows, depth, a, b, c, ldc, width, accumulate)`.
type F32Tile = unsafe fn(usize, usize, &[f32], &[f32], *mut f32, usize, usize, bool);

/// A thread's packed panel of `B`, reused from panel to panel.
#[derive(Default)]
pub struct PanelBuffer {
    pairs: Vec<u32>,
    values: Vec<f32>,
}

/// Columns `start..start + width` of `C = A · B`: packs that panel of `B` into `buffer`, then
/// runs every tile of `A` over it, block by block of `k`.
///
/// # Safety
/// `c` points to a row-major `[a.m, ldc]` matrix, `start + width <= ldc`, and no other thread
/// writes these columns meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn panel_product(
    kernel: Kernel,
    a: &PackedA,
    b: &Bf16Matrix,
    start: usize,
    width: usize,
    buffer: &mut PanelBuffer,
    c: *mut f32,
    ldc: usize,
) {
    let panel = kernel.panel_columns();
    let rows_per_tile = a.tile_rows;
    match kernel {
        Kernel::Avx512Bf16 => {
            let packed = &mut buffer.pairs;
            pack::pair_panel(b, start, width, panel, packed);
            for block in 0..a.blocks {
                let pairs = (a.k - block * KC).min(KC).div_ceil(2);
                let panel_block = &packed[block * KC / 2 * panel..];
                for tile in 0..a.tiles() {
                    let rows = rows_per_tile.min(a.m - tile * rows_per_tile);
                    let tile_a = &a.pairs[a.offset(tile, block)..];
                    let tile_c = c.add(tile * rows_per_tile * ldc + start);
                    #[cfg(target_arch = "x86_64")]
                    avx512::tile(
                        rows,
                        pairs,
                        tile_a,
                        panel_block,
                        tile_c,
                        ldc,
                        width,
                        block > 0,
                    );
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("{tile_a:?}{panel_block:?}{tile_c:?}{pairs}{rows}");
                }
            }
        }
        Kernel::Avx512Widened | Kernel::Avx2 | Kernel::Portable => {
            let f32_tile: F32Tile = match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Widened => avx512::widened_tile,
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => avx2::tile,
                _ => portable_tile,
            };
            let packed = &mut buffer.values;
            pack::widened_panel(b, start, width, panel, packed);
            for block in 0..a.blocks {
                let depth = (a.k - block * KC).min(KC);
                let panel_block = &packed[block * KC * panel..];
                for tile in 0..a.tiles() {
                    let rows = rows_per_tile.min(a.m - tile * rows_per_tile);
                    let tile_a = &a.values[a.offset(tile, block)..];
                    let tile_c = c.add(tile * rows_per_tile * ldc + start);
                    f32_tile(
                        rows,
                        depth,
                        tile_a,
                        panel_block,
                        tile_c,
                        ldc,
                        width,
                        block > 0,
                    );
                }
            }
        }
    }
}

/// The f32 tile in plain loops: `[depth][6]` values of `A`, `[depth][16]` of `B`.
#[allow(clippy::too_many_arguments)]
unsafe fn portable_tile(
    rows: usize,
    depth: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    width: usize,
    accumulate: bool,
) {
    const MR: usize = 6;
    const NR: usize = 16;
    let mut sums = [[0f32; NR]; MR];
    for kk in 0..depth {
        let b_row = &b[kk * NR..kk * NR + NR];
        for (r, sum) in sums.iter_mut().enumerate() {
            let x = a[kk * MR + r];
            for (s, &y) in sum.iter_mut().zip(b_row) {
                *s = x.mul_add(y, *s);
            }
        }
    }
    for (r, sum) in sums.iter().enumerate().take(rows) {
        let row = std::slice::from_raw_parts_mut(c.add(r * ldc), width);
        for (out, &s) in row.iter_mut().zip(sum) {
            *out = if accumulate { *out + s } else { s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const MR: usize = 8;

    /// `rows` (at most 8) rows of `C`, `width` (at most 32) columns, over `pairs` pairs of `k`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        rows: usize,
        pairs: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        width: usize,
        accumulate: bool,
    ) {
        for_rows!(
            rows,
            tile_rows,
            [1, 2, 3, 4, 5, 6, 7, 8],
            (pairs, a, b, c, ldc, width, accumulate)
        )
    }

    /// The f32 tile: `rows` (at most 8) rows, `width` (at most 32) columns, `depth` values of
    /// `k`, from `[depth][8]` values of `A` and `[depth][32]` widened values of `B`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn widened_tile(
        rows: usize,
        depth: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        width: usize,
        accumulate: bool,
    ) {
        for_rows!(
            rows,
            widened_rows,
            [1, 2, 3, 4, 5, 6, 7, 8],
            (depth, a, b, c, ldc, width, accumulate)
        )
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn widened_rows<const R: usize>(
        depth: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        width: usize,
        accumulate: bool,
    ) {
        debug_assert!(a.len() >= depth * MR && b.len() >= depth * 32);
        let mut sums = [[_mm512_setzero_ps(); 2]; R];
        let (mut a, mut b) = (a.as_ptr(), b.as_ptr());
        for _ in 0..depth {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (r, sum) in sums.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r));
                sum[0] = _mm512_fmadd_ps(x, b0, sum[0]);
                sum[1] = _mm512_fmadd_ps(x, b1, sum[1]);
            }
            a = a.add(MR);
            b = b.add(32);
        }
        store(&sums, c, ldc, width, accumulate);
    }

    /// Adds (or writes) the tile's sums into `C`, the columns past `width` masked off.
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const R: usize>(
        sums: &[[__m512; 2]; R],
        c: *mut f32,
        ldc: usize,
        width: usize,
        accumulate: bool,
    ) {
        let lanes = |count: usize| ((1u32 << count) - 1) as u16;
        let masks = [lanes(width.min(16)), lanes(width - width.min(16))];
        for (r, sum) in sums.iter().enumerate() {
            for (half, &mask) in masks.iter().enumerate() {
                if mask == 0 {
                    continue;
                }
                let out = c.add(r * ldc + 16 * half);
                let value = match accumulate {
                    true => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), sum[half]),
                    false => sum[half],
                };
                _mm512_mask_storeu_ps(out, mask, value);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_rows<const R: usize>(
        pairs: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        width: usize,
        accumulate: bool,
    ) {
        debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * 32);
        let mut sums = [[_mm512_setzero_ps(); 2]; R];
        let (mut a, mut b) = (a.as_ptr(), b.as_ptr());
        for _ in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const __m512i));
            for (r, sum) in sums.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
                sum[0] = _mm512_dpbf16_ps(sum[0], x, b0);
                sum[1] = _mm512_dpbf16_ps(sum[1], x, b1);
            }
            a = a.add(MR);
            b = b.add(32);
        }
        store(&sums, c, ldc, width, accumulate);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const MR: usize = 6;
    const NR: usize = 16;

    /// `rows` (at most 6) rows of `C`, `width` (at most 16) columns, over `depth` values of `k`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        rows: usize,
        depth: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        width: usize,
        accumulate: bool,
    ) {
        for_rows!(
            rows,
            tile_rows,
            [1, 2, 3, 4, 5, 6],
            (depth, a, b, c, ldc, width, accumulate)
        )
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_rows<const R: usize>(
        depth: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        width: usize,
        accumulate: bool,
    ) {
        debug_assert!(a.len() >= depth * MR && b.len() >= depth * NR);
        let mut sums = [[_mm256_setzero_ps(); 2]; R];
        let (mut a, mut b) = (a.as_ptr(), b.as_ptr());
        for _ in 0..depth {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (r, sum) in sums.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r));
                sum[0] = _mm256_fmadd_ps(x, b0, sum[0]);
                sum[1] = _mm256_fmadd_ps(x, b1, sum[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        for (r, sum) in sums.iter().enumerate() {
            let out = c.add(r * ldc);
            if width == NR {
                for (half, &s) in sum.iter().enumerate() {
                    let value = match accumulate {
                        true => _mm256_add_ps(_mm256_loadu_ps(out.add(8 * half)), s),
                        false => s,
                    };
                    _mm256_storeu_ps(out.add(8 * half), value);
                }
            } else {
                let mut lanes = [0f32; NR];
                _mm256_storeu_ps(lanes.as_mut_ptr(), sum[0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), sum[1]);
                let row = std::slice::from_raw_parts_mut(out, width);
                for (o, &s) in row.iter_mut().zip(&lanes) {
                    *o = if accumulate { *o + s } else { s };
                }
            }
        }
    }
}
