//! What the kernel tests share.

/// `len` pseudo-random values in `[-spread / 2, spread / 2)`, the same for the same seed
/// (xorshift: no dependency, identical on every machine).
pub fn values(len: usize, seed: u64, spread: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
        })
        .collect()
}

/// `a [m, k] · b [k, n]` (both row-major f32) summed in f64: per entry, the sum and the sum of
/// the products' magnitudes (the scale an f32 sum's rounding error grows with).
#[allow(dead_code)] // not every test file that shares this module compares f32 products
pub fn f64_product(a: &[f32], m: usize, b: &[f32], k: usize, n: usize) -> Vec<(f64, f64)> {
    let mut out = vec![(0f64, 0f64); m * n];
    for i in 0..m {
        for j in 0..n {
            let (sum, scale) = &mut out[i * n + j];
            for kk in 0..k {
                let product = a[i * k + kk] as f64 * b[kk * n + j] as f64;
                *sum += product;
                *scale += product.abs();
            }
        }
    }
    out
}
