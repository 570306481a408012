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
