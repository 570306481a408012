//! The vocabulary-sized losses' arithmetic on rows of logits, forward and backward, each a
//! few passes over a row while it sits in cache: the log-softmax read at a few ids per row
//! (next-token cross-entropy, the teacher cache's top-k KL) and forward KL between a student's
//! and a teacher's softened distributions. Composed tensor operations materialize `logits / T`,
//! the log-softmax, its exponential and their products, each a full `[rows, vocab]` tensor;
//! these keep a log-normaliser per row and recompute the exponentials in the backward pass.
//!
//! Rows are spread over rayon's threads; each row's loop is compiled for AVX-512, AVX2 + FMA and
//! baseline x86-64 (the `widest!` dispatch). Sums run in sixteen f32 lanes and meet in f64.

use rayon::prelude::*;

use crate::rowwise::exp;

widest!(normaliser_widest(row: &[f32], inverse_t: f32, out: &mut [f32]) => normaliser_row);
widest!(softmax_scaled_widest(row: &[f32], inverse_t: f32, log_z: f32, scale: f32, out: &mut [f32]) => softmax_scaled_row);
widest!(forward_kl_widest(student: &[f32], teacher: &[f32], inverse_t: f32, out: &mut [f32]) => forward_kl_row);
widest!(kl_gradient_widest(student: &[f32], teacher: &[f32], inverse_t: f32, log_z: [f32; 2], scale: f32, out: &mut [f32]) => kl_gradient_row);

/// Rows of `vocab` logits in `x`, `per_row` ids per row in `ids`: `log_softmax(x[n] / T)` at
/// those ids (`[rows, per_row]`) and each row's log-normaliser `log sum_v e^(x[n, v] / T)`
/// (`[rows]`), which the backward pass reads. `inverse_t` is `1 / T`.
///
/// # Panics
/// When the shapes disagree or an id is not below `vocab`.
pub fn gathered_log_softmax(
    x: &[f32],
    vocab: usize,
    ids: &[usize],
    per_row: usize,
    inverse_t: f32,
) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / vocab;
    assert_eq!(x.len(), rows * vocab, "x holds whole rows");
    assert_eq!(ids.len(), rows * per_row, "per_row ids per row");
    assert!(ids.iter().all(|&id| id < vocab), "ids are below vocab");
    let log_z: Vec<f32> = x
        .par_chunks(vocab)
        .with_min_len(2)
        .map(|row| log_normaliser(row, inverse_t))
        .collect();
    let gathered = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let n = i / per_row;
            x[n * vocab + id] * inverse_t - log_z[n]
        })
        .collect();
    (gathered, log_z)
}

/// The gradient of [`gathered_log_softmax`] with respect to `x`, given the gradient `upstream`
/// (`[rows, per_row]`) of its output and its `log_z`: with `q = softmax(x[n] / T)` and `g` the
/// row's upstream values, `(scatter(g at ids) - q * sum(g)) / T`.
///
/// # Panics
/// When the shapes disagree.
pub fn gathered_log_softmax_backward(
    x: &[f32],
    vocab: usize,
    ids: &[usize],
    per_row: usize,
    inverse_t: f32,
    log_z: &[f32],
    upstream: &[f32],
) -> Vec<f32> {
    let rows = log_z.len();
    assert_eq!(x.len(), rows * vocab, "x holds rows of vocab");
    assert_eq!(ids.len(), rows * per_row, "per_row ids per row");
    assert_eq!(upstream.len(), rows * per_row, "one upstream value per id");
    let mut gradient = vec![0f32; x.len()];
    gradient
        .par_chunks_mut(vocab)
        .zip(x.par_chunks(vocab))
        .enumerate()
        .with_min_len(2)
        .for_each(|(n, (out, row))| {
            let g = &upstream[n * per_row..(n + 1) * per_row];
            let total: f32 = g.iter().sum();
            softmax_scaled_widest(row, inverse_t, log_z[n], -total * inverse_t, out);
            for (&id, &g) in ids[n * per_row..(n + 1) * per_row].iter().zip(g) {
                out[id] += g * inverse_t;
            }
        });
    gradient
}

/// Forward KL per row, `KL(softmax(teacher[n] / T) || softmax(student[n] / T))` (`[rows]`), and
/// both log-normalisers per row (`[rows, 2]`: student's, teacher's) for the backward pass.
///
/// # Panics
/// When the two differ in length or do not hold whole rows.
pub fn forward_kl(
    student: &[f32],
    teacher: &[f32],
    vocab: usize,
    inverse_t: f32,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        student.len(),
        teacher.len(),
        "student and teacher rows align"
    );
    assert_eq!(student.len() % vocab, 0, "whole rows");
    let per_row: Vec<[f32; 3]> = student
        .par_chunks(vocab)
        .zip(teacher.par_chunks(vocab))
        .with_min_len(2)
        .map(|(s, t)| {
            let mut out = [0f32; 3];
            forward_kl_widest(s, t, inverse_t, &mut out);
            out
        })
        .collect();
    let kl = per_row.iter().map(|r| r[0]).collect();
    let log_z = per_row.iter().flat_map(|r| [r[1], r[2]]).collect();
    (kl, log_z)
}

/// The gradient of [`forward_kl`] with respect to the student's logits, given `upstream`
/// (`[rows]`) and the forward pass's `log_z`: `upstream[n] (p_s - p_t) / T`.
///
/// # Panics
/// When the shapes disagree.
pub fn forward_kl_backward(
    student: &[f32],
    teacher: &[f32],
    vocab: usize,
    inverse_t: f32,
    log_z: &[f32],
    upstream: &[f32],
) -> Vec<f32> {
    let rows = upstream.len();
    assert_eq!(student.len(), rows * vocab, "student holds rows of vocab");
    assert_eq!(
        teacher.len(),
        student.len(),
        "student and teacher rows align"
    );
    assert_eq!(log_z.len(), 2 * rows, "two log-normalisers per row");
    let mut gradient = vec![0f32; student.len()];
    gradient
        .par_chunks_mut(vocab)
        .zip(student.par_chunks(vocab).zip(teacher.par_chunks(vocab)))
        .enumerate()
        .with_min_len(2)
        .for_each(|(n, (out, (s, t)))| {
            let log_z = [log_z[2 * n], log_z[2 * n + 1]];
            kl_gradient_widest(s, t, inverse_t, log_z, upstream[n] * inverse_t, out);
        });
    gradient
}

/// `log sum_v e^(row[v] / T)`.
fn log_normaliser(row: &[f32], inverse_t: f32) -> f32 {
    let mut out = [0f32; 1];
    normaliser_widest(row, inverse_t, &mut out);
    out[0]
}

/// The largest of `row`, in sixteen running maxima so the loop vectorizes.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut maxima = [f32::MIN; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in maxima.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&maxima)
        .fold(f32::MIN, |max, &v| if v > max { v } else { max })
}

fn lanes_sum(lanes: &[f32; 16], tail: f32) -> f64 {
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

#[inline(always)]
fn normaliser_row(row: &[f32], inverse_t: f32, out: &mut [f32]) {
    // max(x / T) = max(x) / T exactly: scaling by a positive number keeps the order.
    let max = row_max(row) * inverse_t;
    let mut sums = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in sums.iter_mut().zip(chunk) {
            *lane += exp(v * inverse_t - max);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| exp(v * inverse_t - max))
        .sum();
    out[0] = max + lanes_sum(&sums, tail).ln() as f32;
}

/// `out = scale * e^(row / T - log_z)`.
#[inline(always)]
fn softmax_scaled_row(row: &[f32], inverse_t: f32, log_z: f32, scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(row) {
        *o = scale * exp(v * inverse_t - log_z);
    }
}

/// `out = [KL, log_z_student, log_z_teacher]` from two passes: the maxima, then both sums of
/// exponentials and the teacher-weighted sum of the log-ratio, all relative to the maxima so
/// no term is larger than the logits' spread.
#[inline(always)]
fn forward_kl_row(student: &[f32], teacher: &[f32], inverse_t: f32, out: &mut [f32]) {
    let max_s = row_max(student) * inverse_t;
    let max_t = row_max(teacher) * inverse_t;
    let (mut z_s, mut z_t, mut weighted) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let mut s_chunks = student.chunks_exact(16);
    let mut t_chunks = teacher.chunks_exact(16);
    for (s, t) in (&mut s_chunks).zip(&mut t_chunks) {
        for lane in 0..16 {
            let s = s[lane] * inverse_t - max_s;
            let t = t[lane] * inverse_t - max_t;
            let e_t = exp(t);
            z_s[lane] += exp(s);
            z_t[lane] += e_t;
            weighted[lane] += e_t * (t - s);
        }
    }
    let (mut tail_s, mut tail_t, mut tail_w) = (0f32, 0f32, 0f32);
    for (&s, &t) in s_chunks.remainder().iter().zip(t_chunks.remainder()) {
        let s = s * inverse_t - max_s;
        let t = t * inverse_t - max_t;
        let e_t = exp(t);
        tail_s += exp(s);
        tail_t += e_t;
        tail_w += e_t * (t - s);
    }
    let (z_s, z_t) = (lanes_sum(&z_s, tail_s), lanes_sum(&z_t, tail_t));
    // sum p_t (log p_t - log p_s) with log p = (x - max) - ln Z.
    let kl = lanes_sum(&weighted, tail_w) / z_t - z_t.ln() + z_s.ln();
    out[0] = kl as f32;
    out[1] = max_s + z_s.ln() as f32;
    out[2] = max_t + z_t.ln() as f32;
}

/// `out = scale * (e^(student / T - log_z[0]) - e^(teacher / T - log_z[1]))`.
#[inline(always)]
fn kl_gradient_row(
    student: &[f32],
    teacher: &[f32],
    inverse_t: f32,
    log_z: [f32; 2],
    scale: f32,
    out: &mut [f32],
) {
    for ((o, &s), &t) in out.iter_mut().zip(student).zip(teacher) {
        *o = scale * (exp(s * inverse_t - log_z[0]) - exp(t * inverse_t - log_z[1]));
    }
}
