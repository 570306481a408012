//! The f32 few-row products (decoding with an f32 model) against an f64 reference, every kernel
//! this CPU has giving the same bits, and results independent of the number of threads.

mod common;

use common::{f64_product, values};
use matmul::rows_f32::{row_products, row_products_with, RowKernel, MAX_ROWS};

/// Shapes with k not a multiple of 4 and n leaving partial blocks, wider than one task's
/// 2048 columns, and one row to the most.
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (1, 7, 33),
    (2, 64, 5000),
    (3, 130, 17),
    (MAX_ROWS, 259, 4500),
    (1, 896, 4864),
];

#[test]
fn every_kernel_matches_the_reference_bit_for_bit_with_each_other() {
    let kernels: Vec<RowKernel> = [RowKernel::Avx512, RowKernel::Avx2, RowKernel::Portable]
        .into_iter()
        .filter(|kernel| kernel.available())
        .collect();
    println!("kernels on this CPU: {kernels:?}");
    for (rows, k, n) in SHAPES {
        let x = values(rows * k, 3 + k as u64, 4.0);
        let w = values(k * n, 11 + n as u64, 4.0);
        let portable = row_products_with(RowKernel::Portable, &x, rows, &w, k, n);
        let reference = f64_product(&x, rows, &w, k, n);
        for r in 0..rows {
            for j in 0..n {
                let (want, scale) = reference[r * n + j];
                let got = portable[r * n + j] as f64;
                let error = (got - want).abs() / scale.max(1e-30);
                assert!(
                    error <= k as f64 * 2f64.powi(-24),
                    "{rows}x{k}x{n}: C[{r}, {j}] = {got}, reference {want} (relative {error:e})"
                );
            }
        }
        for &kernel in &kernels {
            let got = row_products_with(kernel, &x, rows, &w, k, n);
            assert!(
                got.iter()
                    .zip(&portable)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kernel:?} differs from the portable loop at {rows}x{k}x{n}"
            );
        }
    }
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let (rows, k, n) = (2, 300, 9000);
    let x = values(rows * k, 5, 4.0);
    let w = values(k * n, 6, 4.0);
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool")
            .install(|| row_products(&x, rows, &w, k, n))
    };
    let one = on(1);
    for threads in [2, 3, 8] {
        assert_eq!(on(threads), one, "{threads} threads");
    }
}

/// `a [m, k]` and `b [k, n]` with values of several signs and magnitudes, for the f32 products.
fn product_values(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..m * k)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 32.0)
        .collect();
    let b = (0..k * n)
        .map(|i| ((i * 17 % 89) as f32 - 44.0) / 16.0)
        .collect();
    (a, b)
}

/// `f32_product` (gemm into an unzeroed buffer) against an f64 reference, on one thread and
/// threaded, empty sizes included.
#[test]
fn f32_products_match_the_reference() {
    for (m, k, n) in [
        (1, 1, 1),
        (7, 13, 29),
        (200, 192, 200),
        (3, 0, 4),
        (0, 5, 6),
    ] {
        let (a, b) = product_values(m, k, n);
        let (a_op, b_op) = (
            matmul::F32Operand::row_major(&a, m, k),
            matmul::F32Operand::row_major(&b, k, n),
        );
        let c = matmul::f32_product(a_op, b_op);
        assert_eq!(c.len(), m * n);
        let reference = f64_product(&a, m, &b, k, n);
        for i in 0..m {
            for j in 0..n {
                let (exact, scale) = reference[i * n + j];
                let error = (c[i * n + j] as f64 - exact).abs();
                assert!(
                    error <= scale * k as f64 * 1e-7 + 1e-30,
                    "{m}x{k}x{n} at {i},{j}"
                );
            }
        }
    }
}

/// `f32_product_into` writes a column block of a wider output in place with the bits of a
/// separate product, leaves the other entries alone, and with `accumulate` adds a product to
/// what is there (the sum over blocks of the inner dimension).
#[test]
fn products_into_a_block_of_a_wider_output() {
    let (m, k, n, width) = (70, 150, 90, 200);
    let (a, b) = product_values(m, k, n);
    let (a_op, b_op) = (
        matmul::F32Operand::row_major(&a, m, k),
        matmul::F32Operand::row_major(&b, k, n),
    );
    let separate = matmul::f32_product(a_op, b_op);
    let (offset, marker) = (37, -3.5f32);
    let mut out = vec![marker; m * width];
    matmul::f32_product_into(a_op, b_op, &mut out, offset, width, false);
    for i in 0..m {
        for j in 0..width {
            let got = out[i * width + j];
            match j.checked_sub(offset).filter(|&c| c < n) {
                Some(c) => assert_eq!(got.to_bits(), separate[i * n + c].to_bits(), "{i},{j}"),
                None => assert_eq!(got, marker, "{i},{j} outside the block"),
            }
        }
    }
    // a · b as the sum of two products over halves of k, the second accumulated.
    let half = k / 2;
    let mut sum = vec![0f32; m * n];
    for (index, (start, end)) in [(0, half), (half, k)].into_iter().enumerate() {
        let a_part = matmul::F32Operand {
            offset: start,
            cols: end - start,
            ..a_op
        };
        let b_part = matmul::F32Operand {
            offset: start * n,
            rows: end - start,
            ..b_op
        };
        matmul::f32_product_into(a_part, b_part, &mut sum, 0, n, index > 0);
    }
    let reference = f64_product(&a, m, &b, k, n);
    for (index, (&got, &(exact, scale))) in sum.iter().zip(&reference).enumerate() {
        let error = (got as f64 - exact).abs();
        assert!(error <= scale * k as f64 * 1e-7 + 1e-30, "entry {index}");
    }
}
