//! Products `A · B` of f32 activations `A` with a frozen bf16 matrix `B`, computed in bf16 with
//! f32 accumulation, the way PyTorch multiplies bf16 tensors: each entry of `A` is rounded to
//! bf16 (to nearest, ties to even), each product of two bf16 values is exact in f32, and the
//! sums are f32. The matrix is never widened whole: its blocks are packed, a few KiB at a time,
//! in the layout the kernel reads.
//!
//! Kernels, chosen at run time ([`Kernel::detect`], which times the two AVX-512 ones where
//! both run):
//! - [`Kernel::Avx512Bf16`]: `vdpbf16ps`, 32 bf16 products summed in pairs into 16 f32 lanes
//!   per instruction. Like the instruction, it flushes subnormal inputs and results to zero (no
//!   weight or activation of a trained model is one).
//! - [`Kernel::Avx512Widened`] and [`Kernel::Avx2`]: `B` widened to f32 inside the packing step
//!   (and `A` rounded to bf16 the same way), then f32 FMAs on 16 or 8 lanes: the same values up
//!   to the order of the sums, half the bytes read from the stored matrix, no f32 copy of it.
//! - [`Kernel::Portable`]: plain loops, for other CPUs and as the tests' second opinion.
//!
//! A single row (batch-1 decoding) with `vdpbf16ps` reads the stored matrix without packing it
//! (`vector.rs`): the bytes are the bound there.
//!
//! `B` is read either as stored (`[k, n]`, row-major) or transposed (stored `[n, k]`), so one
//! stored matrix serves both `x · W` and the backward pass's `g · Wᵀ`.
//!
//! [`rowwise`] holds the fused element- and row-wise steps of the forward pass (RMSNorm, RoPE,
//! masked softmax, silu) on f32 slices.
//!
//! [`f32_product`] is an f32 product by the gemm crate, bit-equal to burn-flex's matmul, into
//! an output it does not zero or copy first.
//!
//! [`rows_f32`] is the f32 counterpart of that single-row path: a few rows times a stored f32
//! matrix, streamed by every thread (decoding with a model kept in f32).

/// `$name(args)` runs `$body(args)` compiled for the widest instruction set the kernels may use
/// ([`Isa::usable`]): the body (`#[inline(always)]`) is inlined into a function built with
/// those features, so its loops vectorize for them.
macro_rules! widest {
    ($name:ident($($arg:ident: $ty:ty),*) => $body:ident) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if $crate::Isa::Avx512.usable() {
                    // SAFETY: the CPU has these features (`Isa::usable`).
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::Isa::Avx2.usable() {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub mod adamw;
mod f32_product;
mod isa;
mod kernel;
pub mod log_softmax;
mod pack;
pub mod rows_f32;
pub mod rowwise;
pub mod strided;
mod tiles;
mod vector;

use half::bf16;
use rayon::prelude::*;

pub use f32_product::{f32_product, f32_product_into, F32Operand};
pub use isa::{Isa, UnknownIsa, VARIABLE as ISA_VARIABLE};
pub use kernel::Kernel;

/// How a product reads the stored bf16 matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orientation {
    /// `B` is the stored `[k, n]` matrix.
    AsStored,
    /// `B` is the transpose of the stored `[n, k]` matrix.
    Transposed,
}

/// The right operand: a stored row-major bf16 matrix and how the product reads it.
#[derive(Debug, Clone, Copy)]
pub struct Bf16Matrix<'a> {
    pub values: &'a [bf16],
    /// Rows and columns as stored.
    pub dims: [usize; 2],
    pub orientation: Orientation,
}

impl Bf16Matrix<'_> {
    /// `(k, n)`: rows and columns of `B` as the product reads it.
    pub fn shape(&self) -> (usize, usize) {
        let [rows, cols] = self.dims;
        match self.orientation {
            Orientation::AsStored => (rows, cols),
            Orientation::Transposed => (cols, rows),
        }
    }

    /// `B[kk, j]`.
    #[inline(always)]
    fn at(&self, kk: usize, j: usize) -> bf16 {
        match self.orientation {
            Orientation::AsStored => self.values[kk * self.dims[1] + j],
            Orientation::Transposed => self.values[j * self.dims[1] + kk],
        }
    }
}

/// `a [m, k] · b [k, n]` into a new row-major `[m, n]` vector, with `kernel`.
///
/// # Panics
/// When `a` does not hold `m x k` values, `b`'s values do not match its dims, `b`'s `k` is not
/// `a`'s, or `kernel` is not [`Kernel::available`] on this CPU.
pub fn matmul(kernel: Kernel, a: &[f32], m: usize, b: &Bf16Matrix) -> Vec<f32> {
    let (k, n) = b.shape();
    assert_eq!(a.len(), m * k, "a holds m x k values");
    assert_eq!(
        b.values.len(),
        b.dims[0] * b.dims[1],
        "b's values match its dims"
    );
    assert!(
        kernel.available(),
        "the {} kernel is not available on this CPU",
        kernel.name()
    );
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    #[cfg(target_arch = "x86_64")]
    if m == 1 && kernel == Kernel::Avx512Bf16 {
        vector::row_product(a, b, &mut c);
        return c;
    }
    let packed_a = pack::PackedA::new(kernel, a, m, k);
    // Threads take groups of column panels: each packs its own block of B once and runs it
    // against every row of A (packed once, shared).
    let panel = kernel.panel_columns();
    let panels = n.div_ceil(panel);
    let threads = rayon::current_num_threads().max(1);
    let group = match panels >= threads * 64 {
        true => 8,
        false => 1,
    };
    let out = SharedOutput(c.as_mut_ptr());
    (0..panels.div_ceil(group)).into_par_iter().for_each_init(
        tiles::PanelBuffer::default,
        |buffer, g| {
            let first = g * group * panel;
            let last = ((g + 1) * group * panel).min(n);
            let out = &out;
            for start in (first..last).step_by(panel) {
                let width = panel.min(n - start);
                // SAFETY: each task writes only columns `first..last` of `c`, which no other
                // task touches, and `c` outlives the parallel loop.
                unsafe {
                    tiles::panel_product(kernel, &packed_a, b, start, width, buffer, out.0, n)
                };
            }
        },
    );
    c
}

/// The x86 features the kernels choose by, as this CPU reports them (benches print them).
pub fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) {
                    found.push($name);
                }
            )*};
        }
        probe!("avx2", "fma", "avx512f", "avx512bf16");
        found
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}

/// The CPU's features and the instruction set this crate's kernels run, for a bench's header:
/// `avx2 fma avx512f avx512bf16; kernels: avx512bf16`.
pub fn cpu_description() -> String {
    format!("{}; kernels: {}", cpu_features().join(" "), Isa::describe())
}

/// The output's pointer, shared by tasks that write disjoint columns.
struct SharedOutput(*mut f32);
// SAFETY: tasks write disjoint columns (see `matmul`).
unsafe impl Sync for SharedOutput {}
unsafe impl Send for SharedOutput {}

/// The reference: `a` rounded to bf16, products and sums in f64. For tests.
pub fn reference(a: &[f32], m: usize, b: &Bf16Matrix) -> Vec<f64> {
    let (k, n) = b.shape();
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for kk in 0..k {
            let x = bf16::from_f32(a[i * k + kk]).to_f64();
            for j in 0..n {
                c[i * n + j] += x * b.at(kk, j).to_f64();
            }
        }
    }
    c
}
