//! The fused row-wise steps against plain f64 formulas (their Burn glue is tested against the
//! composed Burn operations in qwen2's flex_kernels).

mod common;

use common::values;
use matmul::rowwise::{exp, masked_softmax, rms_norm, rope, silu_times, AttentionRows};

fn assert_close(got: &[f32], want: &[f64], tolerance: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tolerance * w.abs().max(1.0),
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

#[test]
fn exp_is_within_two_ulp_of_libm() {
    let mut worst = 0u32;
    let mut x = -87.0f32;
    while x < 88.0 {
        let (got, want) = (exp(x), x.exp());
        worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
        x += 0.000_731;
    }
    assert!(worst <= 2, "{worst} ulp");
    assert_eq!(exp(-100.0), 0.0);
    assert_eq!(exp(f32::MIN), 0.0);
    assert!(exp(100.0).is_finite() && exp(100.0) > 2e38);
    assert_eq!(exp(0.0), 1.0);
}

#[test]
fn each_step_matches_its_formula() {
    // RMSNorm, rows of 37 (a partial block of 16).
    let (rows, width) = (9, 37);
    let x = values(rows * width, 1, 6.0);
    let weight = values(width, 2, 2.0);
    let want: Vec<f64> = x
        .chunks(width)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / width as f64;
            let inverse = 1.0 / (mean + 1e-6).sqrt();
            row.iter()
                .zip(&weight)
                .map(move |(&v, &g)| v as f64 * inverse * g as f64)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close(&rms_norm(&x, &weight, 1e-6), &want, 1e-6, "rms_norm");

    // silu(gate) * up, gates far past where e^x overflows f32.
    let gate = values(10_000, 3, 240.0);
    let up = values(10_000, 4, 2.0);
    let want: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(&g, &u)| g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64)
        .collect();
    assert_close(&silu_times(&gate, &up), &want, 1e-6, "silu_times");

    // RoPE: 5 positions x 3 heads x 8.
    let (positions, heads, head_dim) = (5, 3, 8);
    let x = values(positions * heads * head_dim, 5, 4.0);
    let cos = values(positions * head_dim, 6, 2.0);
    let sin = values(positions * head_dim, 7, 2.0);
    let mut want = vec![0f64; x.len()];
    for p in 0..positions {
        for h in 0..heads {
            for d in 0..head_dim {
                let at = (p * heads + h) * head_dim;
                let swapped = x[at + (d + head_dim / 2) % head_dim] as f64;
                want[at + d] = x[at + d] as f64 * cos[p * head_dim + d] as f64
                    + swapped * sin[p * head_dim + d] as f64;
            }
        }
    }
    assert_close(&rope(&x, head_dim, &cos, &sin), &want, 1e-6, "rope");

    // Masked softmax: 2 batch rows, 2 heads of 2 folded groups of 3 positions, 4 keys; batch
    // row 1's second position sees no key.
    let (batch, heads, seq, keys, group) = (2, 2, 3, 4, 2);
    let scores = values(batch * heads * group * seq * keys, 8, 30.0);
    let blocked: Vec<u8> = (0..batch * seq * keys)
        .map(|i| {
            let (b, t, k) = (i / (seq * keys), i / keys % seq, i % keys);
            u8::from(k > t + 1 || (b == 1 && t == 1))
        })
        .collect();
    let rows = AttentionRows {
        keys,
        heads,
        queries_per_head: group * seq,
        seq,
    };
    let got = masked_softmax(&scores, rows, &blocked, 0.5);
    let mut want = vec![0f64; scores.len()];
    for (row, out) in want.chunks_mut(keys).enumerate() {
        let b = row / (heads * group * seq);
        let t = row % (group * seq) % seq;
        let seen: Vec<bool> = (0..keys)
            .map(|k| blocked[(b * seq + t) * keys + k] == 0)
            .collect();
        let logits: Vec<f64> = (0..keys)
            .map(|k| scores[row * keys + k] as f64 * 0.5)
            .collect();
        match seen.iter().any(|&s| s) {
            false => out.iter_mut().for_each(|o| *o = 1.0 / keys as f64),
            true => {
                let max = (0..keys)
                    .filter(|&k| seen[k])
                    .map(|k| logits[k])
                    .fold(f64::MIN, f64::max);
                let e: Vec<f64> = (0..keys)
                    .map(|k| {
                        if seen[k] {
                            (logits[k] - max).exp()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let sum: f64 = e.iter().sum();
                out.iter_mut().zip(&e).for_each(|(o, e)| *o = e / sum);
            }
        }
    }
    assert_close(&got, &want, 1e-6, "masked_softmax");
}
