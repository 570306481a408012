//! Every kernel this CPU has against the f64 reference (the same bf16-rounded operands), at
//! shapes that leave partial tiles, panels and blocks, both orientations.

mod common;

use common::values;
use half::bf16;
use matmul::{matmul, reference, Bf16Matrix, Kernel, Orientation};

/// The largest error relative to the sum of absolute products (the scale an f32 sum's rounding
/// error grows with).
fn check(kernel: Kernel, m: usize, k: usize, n: usize, orientation: Orientation) {
    let a = values(m * k, 1 + (m * k) as u64, 4.0);
    let stored: Vec<bf16> = values(k * n, 7 + n as u64, 4.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let dims = match orientation {
        Orientation::AsStored => [k, n],
        Orientation::Transposed => [n, k],
    };
    let b = Bf16Matrix {
        values: &stored,
        dims,
        orientation,
    };
    let got = matmul(kernel, &a, m, &b);
    let want = reference(&a, m, &b);
    let abs_a: Vec<f32> = a.iter().map(|x| x.abs()).collect();
    let abs_stored: Vec<bf16> = stored
        .iter()
        .map(|x| bf16::from_f32(x.to_f32().abs()))
        .collect();
    let scale = reference(
        &abs_a,
        m,
        &Bf16Matrix {
            values: &abs_stored,
            dims,
            orientation,
        },
    );
    for (index, ((&g, &w), &s)) in got.iter().zip(&want).zip(&scale).enumerate() {
        let error = (g as f64 - w).abs() / s.max(1e-30);
        assert!(
            error <= (k as f64) * 2f64.powi(-24) * 2.0,
            "{} {orientation:?} {m}x{k}x{n}: C[{}, {}] = {g}, reference {w} (relative {error:e})",
            kernel.name(),
            index / n,
            index % n
        );
    }
}

#[test]
fn every_kernel_matches_the_reference() {
    let kernels = Kernel::all_available();
    println!(
        "kernels on this CPU: {:?} (detected: {})",
        kernels.iter().map(|k| k.name()).collect::<Vec<_>>(),
        Kernel::detect().name()
    );
    for kernel in kernels {
        for (m, k, n) in [
            (1, 1, 1),
            (1, 7, 5),
            (3, 33, 17),
            (9, 257, 33),
            (13, 600, 70),
            (17, 513, 129),
            (1, 896, 200),
            (1, 257, 70),
            (1, 64, 545),
        ] {
            for orientation in [Orientation::AsStored, Orientation::Transposed] {
                check(kernel, m, k, n, orientation);
            }
        }
    }
}

/// Values that are already bf16 multiply exactly: small integers sum without rounding.
#[test]
fn integer_products_are_exact_on_every_kernel() {
    let (m, k, n) = (10, 300, 40);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
    let stored: Vec<bf16> = (0..k * n)
        .map(|i| bf16::from_f32((i % 5) as f32 - 2.0))
        .collect();
    let b = Bf16Matrix {
        values: &stored,
        dims: [k, n],
        orientation: Orientation::AsStored,
    };
    let want: Vec<f32> = reference(&a, m, &b).into_iter().map(|v| v as f32).collect();
    for kernel in Kernel::all_available() {
        assert_eq!(matmul(kernel, &a, m, &b), want, "{}", kernel.name());
    }
}
