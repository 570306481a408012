//! A strided view copied into a new contiguous vector, run by run: the permuted attention heads
//! (`[B, T, heads, d]` viewed as `[B, heads, T, d]`) whose last axis is still contiguous. Each
//! run of the last axis is one `memcpy`, and the runs are split over the threads; burn-flex's
//! general copy walks such a 4-D view element by element on one thread.

use rayon::prelude::*;

/// Runs copied per task (a few hundred KiB at a model's head size).
const RUNS_PER_TASK: usize = 1024;

/// The values of the view `shape` / `strides` (in elements) starting at `offset` in `source`,
/// in row-major order. `None` when the last axis is not contiguous (stride 1), a stride is
/// negative, or the view reaches past `source`: the caller copies some other way.
pub fn contiguous_copy(
    source: &[f32],
    offset: usize,
    shape: &[usize],
    strides: &[isize],
) -> Option<Vec<f32>> {
    let (&run, outer_dims) = shape.split_last()?;
    let (&last_stride, outer_strides) = strides.split_last()?;
    if (last_stride != 1 && run > 1) || strides.iter().any(|&s| s < 0) {
        return None;
    }
    let count: usize = shape.iter().product();
    if count == 0 {
        return Some(Vec::new());
    }
    let reach = offset
        + shape
            .iter()
            .zip(strides)
            .map(|(&n, &s)| (n - 1) * s as usize)
            .sum::<usize>();
    if reach >= source.len() {
        return None;
    }
    // Where run `r` (a row-major index over the outer axes) starts in `source`.
    let start = |mut r: usize| {
        let mut at = offset;
        for (&n, &s) in outer_dims.iter().zip(outer_strides).rev() {
            at += (r % n) * s as usize;
            r /= n;
        }
        at
    };
    let mut out = vec![0f32; count];
    out.par_chunks_mut(run * RUNS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_exact_mut(run).enumerate() {
                let from = start(task * RUNS_PER_TASK + i);
                row.copy_from_slice(&source[from..from + run]);
            }
        });
    Some(out)
}
