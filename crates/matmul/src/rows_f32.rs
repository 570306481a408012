//! A few rows times a stored f32 matrix: the products of batch-1 decoding with a model kept in
//! f32 (a trainable student generating on-policy text, `generate`, `eval --continuations`).
//!
//! Such a product reads the whole matrix to do two FLOPs per value, so its speed is the rate
//! at which the matrix streams in from memory. General matmul kernels pack panels of the matrix
//! (reading it twice) and, below a size threshold, run on one thread; here every thread streams
//! its own block of columns row after row, as long contiguous runs, and keeps the sums of those
//! columns in L1 until the last row.
//!
//! Each output is a chain of fused multiply-adds over `k` in order, so the result does not
//! depend on the number of threads or on which of the (identical) kernels ran.

use rayon::prelude::*;

use crate::Kernel;

/// Products of more rows than this are not bound by the matrix's bytes: use a packed kernel.
pub const MAX_ROWS: usize = 4;

/// Widest block of columns one task sums: with [`MAX_ROWS`] rows its sums take 32 KiB.
const MAX_TILE: usize = 2048;

/// The instruction sets the one loop is compiled for; each gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKernel {
    Avx512,
    Avx2,
    /// Baseline x86-64 or another architecture (`mul_add` without FMA hardware is a libm call).
    Portable,
}

impl RowKernel {
    /// The widest this CPU runs.
    pub fn detect() -> Self {
        [Self::Avx512, Self::Avx2]
            .into_iter()
            .find(|kernel| kernel.available())
            .unwrap_or(Self::Portable)
    }

    /// The same instruction sets as the bf16 products' widened kernels.
    pub fn available(self) -> bool {
        match self {
            Self::Avx512 => Kernel::Avx512Widened.available(),
            Self::Avx2 => Kernel::Avx2.available(),
            Self::Portable => true,
        }
    }
}

/// `x [rows, k] · w [k, n]`, `w` stored row-major, into a new `[rows, n]` vector, with the
/// widest kernel this CPU runs.
///
/// # Panics
/// When `rows` is 0 or above [`MAX_ROWS`], or `x` / `w` do not hold `rows x k` / `k x n` values.
pub fn row_products(x: &[f32], rows: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    row_products_with(RowKernel::detect(), x, rows, w, k, n)
}

/// [`row_products`] with a chosen kernel (tests compare them).
///
/// # Panics
/// As [`row_products`], and when `kernel` is not available on this CPU.
pub fn row_products_with(
    kernel: RowKernel,
    x: &[f32],
    rows: usize,
    w: &[f32],
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert!(
        (1..=MAX_ROWS).contains(&rows),
        "1 to {MAX_ROWS} rows, not {rows}"
    );
    assert_eq!(x.len(), rows * k, "x holds rows x k values");
    assert_eq!(w.len(), k * n, "w holds k x n values");
    assert!(
        kernel.available(),
        "{kernel:?} is not available on this CPU"
    );
    let threads = rayon::current_num_threads().max(1);
    // At least one block per thread, in whole cache lines of columns.
    let tile = n.div_ceil(threads).div_ceil(16).max(1) * 16;
    let tile = tile.min(MAX_TILE);
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(tile))
        .into_par_iter()
        .map(|b| {
            let start = b * tile;
            let width = tile.min(n - start);
            let mut sums = vec![0f32; rows * width];
            let block = Block {
                x,
                rows,
                w,
                k,
                n,
                start,
            };
            match kernel {
                // SAFETY: `available` checked the CPU's features above.
                #[cfg(target_arch = "x86_64")]
                RowKernel::Avx512 => unsafe { block_avx512(&block, &mut sums) },
                #[cfg(target_arch = "x86_64")]
                RowKernel::Avx2 => unsafe { block_avx2(&block, &mut sums) },
                _ => block_body(&block, &mut sums),
            }
            (start, sums)
        })
        .collect();
    let mut out = vec![0f32; rows * n];
    for (start, sums) in blocks {
        let width = sums.len() / rows;
        for r in 0..rows {
            out[r * n + start..][..width].copy_from_slice(&sums[r * width..][..width]);
        }
    }
    out
}

/// One task's product: columns `start..` (as many as its sums hold) of `x · w`.
struct Block<'a> {
    x: &'a [f32],
    rows: usize,
    w: &'a [f32],
    k: usize,
    n: usize,
    start: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn block_avx512(block: &Block, sums: &mut [f32]) {
    block_body(block, sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(block: &Block, sums: &mut [f32]) {
    block_body(block, sums)
}

/// Columns `start..start + width` of every row, into `sums [rows, width]`: four stored rows
/// per pass, so each pass streams four runs and reads and writes the sums once.
#[inline(always)]
fn block_body(block: &Block, sums: &mut [f32]) {
    let Block {
        x,
        rows,
        w,
        k,
        n,
        start,
    } = *block;
    let width = sums.len() / rows;
    let run = |kk: usize| &w[kk * n + start..kk * n + start + width];
    let mut kk = 0;
    while kk + 4 <= k {
        let (w0, w1, w2, w3) = (run(kk), run(kk + 1), run(kk + 2), run(kk + 3));
        for r in 0..rows {
            let xr = &x[r * k + kk..r * k + kk + 4];
            let (x0, x1, x2, x3) = (xr[0], xr[1], xr[2], xr[3]);
            let out = &mut sums[r * width..(r + 1) * width];
            for ((((s, &a), &b), &c), &d) in out.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *s = x3.mul_add(d, x2.mul_add(c, x1.mul_add(b, x0.mul_add(a, *s))));
            }
        }
        kk += 4;
    }
    while kk < k {
        let w0 = run(kk);
        for r in 0..rows {
            let x0 = x[r * k + kk];
            let out = &mut sums[r * width..(r + 1) * width];
            for (s, &a) in out.iter_mut().zip(w0) {
                *s = x0.mul_add(a, *s);
            }
        }
        kk += 1;
    }
}
