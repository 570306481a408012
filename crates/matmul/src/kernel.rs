//! Which kernel multiplies: the ones this CPU can run, the one a product uses, and each one's
//! register tile (rows of `A`, columns of `B`).

use crate::Isa;

/// A product kernel (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Avx512Bf16,
    Avx512Widened,
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU has (under [`Isa::cap`]), chosen once per process. Where
    /// both AVX-512 kernels run and `DISTILL_CPU_ISA` does not pin one, a product at a model's shape (256 x 1024 x 1024) is timed with each and the faster
    /// kept: `vdpbf16ps` does twice the work of an f32 FMA per instruction, but some CPUs issue
    /// it at under half the rate (an Intel Xeon with AVX512-BF16, 2026-12-07: 0.7x the FMA's
    /// FLOP rate), and there the f32 FMA on widened values wins.
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            if Kernel::Avx512Bf16.available() {
                // A cap of exactly avx512bf16 asks for `vdpbf16ps` itself (a pinned choice, so
                // runs repeat bit for bit); otherwise the two AVX-512 kernels are timed.
                if Isa::cap() == Some(Isa::Avx512Bf16) {
                    return Kernel::Avx512Bf16;
                }
                let faster = seconds_per_product(Kernel::Avx512Bf16)
                    <= seconds_per_product(Kernel::Avx512Widened);
                return match faster {
                    true => Kernel::Avx512Bf16,
                    false => Kernel::Avx512Widened,
                };
            }
            [Kernel::Avx512Widened, Kernel::Avx2]
                .into_iter()
                .find(|kernel| kernel.available())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// Rows up to which a product counts as decoding's (see [`Kernel::for_rows`]).
    pub const FEW_ROWS: usize = 8;

    /// The kernel for a product with `m` rows: batch-1 decoding's few rows read the matrix
    /// once and are bound by memory bandwidth, where `vdpbf16ps` reads half the bytes of the
    /// widened panels; more rows take [`Kernel::detect`]'s choice.
    pub fn for_rows(m: usize) -> Self {
        match m <= Self::FEW_ROWS && Kernel::Avx512Bf16.available() {
            true => Kernel::Avx512Bf16,
            false => Kernel::detect(),
        }
    }

    /// Whether the kernel may run: this CPU has its instructions and [`Isa::cap`] allows them.
    pub fn available(self) -> bool {
        match self {
            Kernel::Avx512Bf16 => Isa::Avx512Bf16.usable(),
            Kernel::Avx512Widened => Isa::Avx512.usable(),
            Kernel::Avx2 => Isa::Avx2.usable(),
            Kernel::Portable => true,
        }
    }

    /// Every kernel this CPU can run, fastest first.
    pub fn all_available() -> Vec<Kernel> {
        [
            Kernel::Avx512Bf16,
            Kernel::Avx512Widened,
            Kernel::Avx2,
            Kernel::Portable,
        ]
        .into_iter()
        .filter(|kernel| kernel.available())
        .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "avx512-bf16 (vdpbf16ps)",
            Kernel::Avx512Widened => "avx512 (bf16 widened while packing, f32 FMA)",
            Kernel::Avx2 => "avx2 (bf16 widened while packing, f32 FMA)",
            Kernel::Portable => "portable (scalar)",
        }
    }

    /// Whether the kernel multiplies in f32 FMAs on widened values (so an f32 gemm on the
    /// widened matrix computes the same products, summed in another order).
    pub fn widens(self) -> bool {
        matches!(self, Kernel::Avx512Widened | Kernel::Avx2)
    }

    /// Rows of `A` per register tile.
    pub fn tile_rows(self) -> usize {
        match self {
            Kernel::Avx512Bf16 | Kernel::Avx512Widened => 8,
            Kernel::Avx2 | Kernel::Portable => 6,
        }
    }

    /// Columns of `B` per panel.
    pub fn panel_columns(self) -> usize {
        match self {
            Kernel::Avx512Bf16 | Kernel::Avx512Widened => 32,
            Kernel::Avx2 | Kernel::Portable => 16,
        }
    }
}

/// The best of three timings of `kernel` on a 256 x 1024 x 1024 product (a few ms), the rows
/// of a training micro-batch.
fn seconds_per_product(kernel: Kernel) -> f64 {
    let (m, k, n) = (256, 1024, 1024);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    let b: Vec<half::bf16> = (0..k * n)
        .map(|i| half::bf16::from_f32((i % 7) as f32 * 0.01))
        .collect();
    let matrix = crate::Bf16Matrix {
        values: &b,
        dims: [k, n],
        orientation: crate::Orientation::AsStored,
    };
    (0..3)
        .map(|_| {
            let started = std::time::Instant::now();
            std::hint::black_box(crate::matmul(kernel, &a, m, &matrix));
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
