//! The fused vocabulary-row losses against plain f64 formulas, forward and backward (their
//! Burn glue is tested against the composed Burn operations in distill's fused_losses).

mod common;

use common::values;
use matmul::log_softmax::{
    forward_kl, forward_kl_backward, gathered_log_softmax, gathered_log_softmax_backward,
};

/// `log_softmax(row / t)` in f64.
fn log_softmax(row: &[f32], t: f64) -> Vec<f64> {
    let scaled: Vec<f64> = row.iter().map(|&v| v as f64 / t).collect();
    let max = scaled.iter().cloned().fold(f64::MIN, f64::max);
    let log_z = max + scaled.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    scaled.iter().map(|v| v - log_z).collect()
}

fn assert_close(got: &[f32], want: &[f64], tolerance: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tolerance * w.abs().max(1.0),
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

// Rows of 1000 and 37 (a partial block of sixteen), temperatures 1 and 2.
const SHAPES: [(usize, usize, f32); 3] = [(5, 1000, 1.0), (3, 37, 2.0), (4, 1000, 0.5)];

#[test]
fn gathered_log_softmax_matches_its_formula_and_gradient() {
    for (seed, &(rows, vocab, t)) in SHAPES.iter().enumerate() {
        let x = values(rows * vocab, seed as u64 + 1, 24.0);
        let per_row = 3;
        let ids: Vec<usize> = (0..rows * per_row).map(|i| (i * 7919) % vocab).collect();
        let upstream = values(rows * per_row, seed as u64 + 11, 2.0);
        let (got, log_z) = gathered_log_softmax(&x, vocab, &ids, per_row, 1.0 / t);
        let mut want = Vec::new();
        let mut want_gradient = Vec::new();
        for n in 0..rows {
            let log_p = log_softmax(&x[n * vocab..(n + 1) * vocab], t as f64);
            let g = &upstream[n * per_row..(n + 1) * per_row];
            let total: f64 = g.iter().map(|&v| v as f64).sum();
            let mut row: Vec<f64> = log_p.iter().map(|lp| -total * lp.exp()).collect();
            for (j, &id) in ids[n * per_row..(n + 1) * per_row].iter().enumerate() {
                want.push(log_p[id]);
                row[id] += g[j] as f64;
            }
            want_gradient.extend(row.iter().map(|v| v / t as f64));
        }
        assert_close(&got, &want, 2e-6, "log_softmax at ids");
        let gradient =
            gathered_log_softmax_backward(&x, vocab, &ids, per_row, 1.0 / t, &log_z, &upstream);
        assert_close(&gradient, &want_gradient, 2e-6, "its gradient");
    }
}

#[test]
fn forward_kl_matches_its_formula_and_gradient() {
    for (seed, &(rows, vocab, t)) in SHAPES.iter().enumerate() {
        let student = values(rows * vocab, seed as u64 + 3, 20.0);
        // A teacher near the student (a small KL, where cancellation would show) in the first
        // rows, an unrelated one in the rest.
        let noise = values(rows * vocab, seed as u64 + 5, 20.0);
        let teacher: Vec<f32> = student
            .iter()
            .zip(&noise)
            .enumerate()
            .map(|(i, (&s, &n))| match i / vocab < 2 {
                true => s + n * 0.01,
                false => n,
            })
            .collect();
        let upstream = values(rows, seed as u64 + 7, 2.0);
        let (kl, log_z) = forward_kl(&student, &teacher, vocab, 1.0 / t);
        let mut want = Vec::new();
        let mut want_gradient = Vec::new();
        for (n, &up) in upstream.iter().enumerate() {
            let range = n * vocab..(n + 1) * vocab;
            let log_s = log_softmax(&student[range.clone()], t as f64);
            let log_t = log_softmax(&teacher[range], t as f64);
            want.push(
                log_t
                    .iter()
                    .zip(&log_s)
                    .map(|(lt, ls)| lt.exp() * (lt - ls))
                    .sum::<f64>(),
            );
            want_gradient.extend(
                log_s
                    .iter()
                    .zip(&log_t)
                    .map(|(ls, lt)| up as f64 * (ls.exp() - lt.exp()) / t as f64),
            );
        }
        // Absolute: a KL near 0 is a difference of two sums of order 1.
        for (n, (&got, &want)) in kl.iter().zip(&want).enumerate() {
            assert!(
                (got as f64 - want).abs() <= 2e-6,
                "KL[{n}] = {got}, want {want}"
            );
        }
        let gradient = forward_kl_backward(&student, &teacher, vocab, 1.0 / t, &log_z, &upstream);
        assert_close(&gradient, &want_gradient, 2e-6, "its gradient");
    }
}
