//! `a · b` in f32 by the gemm crate with exactly the call burn-flex's matmul makes (the same
//! operand strides, blocking and threads above the same size), so the bits are those of
//! `Tensor::matmul` on burn-flex, forward and backward. What differs is the output: burn-flex
//! allocates every product's output as a zeroed byte vector and then copies it into an aligned
//! buffer, two passes over the output on one thread before gemm starts (memset and memmove:
//! 4.5% of a Qwen2.5-0.5B forward pass's samples, on the thread the others wait for; in an
//! update the weight gradients' outputs too). Here gemm writes into a fresh vector it fills
//! itself.

/// Products below this many multiply-adds run on one thread (burn-flex's threshold, 192³).
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// A matrix operand as it lies in memory: entry `(i, j)` is
/// `values[offset + i * row_stride + j * col_stride]` (a transposed view swaps the strides).
#[derive(Debug, Clone, Copy)]
pub struct F32Operand<'a> {
    pub values: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> F32Operand<'a> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn row_major(values: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            values,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Whether the values lie row after row from `offset` with no gaps.
    pub fn is_row_major(&self) -> bool {
        self.col_stride == 1 && self.row_stride == self.cols
    }

    /// The transpose, as a view of the same values.
    pub fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// # Panics
    /// When an entry lies past the end of `values`.
    fn check(&self, name: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last =
            self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        assert!(
            last < self.values.len(),
            "{name}'s view reaches past its values"
        );
    }
}

/// `a [m, k] · b [k, n]` into a new row-major `[m, n]` vector.
///
/// # Panics
/// When the inner sizes differ or a view reaches past its values.
pub fn f32_product(a: F32Operand, b: F32Operand) -> Vec<f32> {
    let (m, n) = (a.rows, b.cols);
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `c` has room for `m x n` entries at row stride `n`. Not accumulating, gemm writes
    // every entry (`c = 1 * a · b`) and reads none, so all `m x n` are initialized on return.
    unsafe {
        gemm_into(a, b, c.as_mut_ptr(), n, false);
        c.set_len(m * n);
    }
    c
}

/// `c = a · b`, or `c += a · b` with `accumulate`, where `c` is the `[m, n]` block of `out` at
/// `offset` with rows `row_stride` apart: one column block of a wider product written in
/// place, or the sum of products over blocks of the inner dimension without a temporary per
/// block. Each entry is gemm's sum for it, so a block's bits are those of a separate product.
///
/// # Panics
/// When the inner sizes differ, a view reaches past its values, or the block past `out`.
pub fn f32_product_into(
    a: F32Operand,
    b: F32Operand,
    out: &mut [f32],
    offset: usize,
    row_stride: usize,
    accumulate: bool,
) {
    let (m, n) = (a.rows, b.cols);
    if m > 0 && n > 0 {
        assert!(n <= row_stride, "a row of the block fits its stride");
        assert!(
            offset + (m - 1) * row_stride + n <= out.len(),
            "the [{m}, {n}] block at {offset} with row stride {row_stride} reaches past the output"
        );
    }
    // SAFETY: the block lies inside `out` (checked above), which is initialized.
    unsafe { gemm_into(a, b, out.as_mut_ptr().add(offset), row_stride, accumulate) }
}

/// `c = a · b` (or `c += a · b`) into the row-major block at `c` with rows `c_row_stride`
/// apart, by burn-flex's gemm call.
///
/// # Safety
/// `c` points to `a.rows` rows of `b.cols` writable entries, `c_row_stride` apart, initialized
/// when `accumulate`.
///
/// # Panics
/// When the inner sizes differ or a view reaches past its values.
unsafe fn gemm_into(
    a: F32Operand,
    b: F32Operand,
    c: *mut f32,
    c_row_stride: usize,
    accumulate: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "a's columns match b's rows");
    a.check("a");
    b.check("b");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(c.add(i * c_row_stride), 0, n);
            }
        }
        return;
    }
    let parallelism = match m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    // gemm computes `c = alpha * c + beta * a · b`, reading `c` only when told to (burn-flex
    // passes alpha 0 then, and so does this, for the same bits).
    let alpha = if accumulate { 1.0 } else { 0.0 };
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_row_stride as isize,
        accumulate,
        a.values.as_ptr().add(a.offset),
        a.col_stride as isize,
        a.row_stride as isize,
        b.values.as_ptr().add(b.offset),
        b.col_stride as isize,
        b.row_stride as isize,
        alpha,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}
