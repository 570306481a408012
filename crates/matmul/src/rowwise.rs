//! The element- and row-wise steps of a decoder's forward pass on f32 slices, fused so each
//! reads its inputs once and writes its output once: RMSNorm, RoPE, masked softmax and the
//! MLP's `silu(gate) * up`, and their backward steps (RoPE's is RoPE itself with the sin
//! table's halves swapped). Rows are spread over rayon's threads, and each loop is compiled for
//! AVX-512, AVX2 + FMA and baseline x86-64, the widest this CPU runs chosen at run time (the
//! same arithmetic in each, so the same results up to `mul_add`-free code paths: none of these
//! loops fuses a multiply and an add).
//!
//! `exp` is [`exp`], a branch-free polynomial that vectorizes, where libm's is a call per
//! element.

use rayon::prelude::*;

widest!(rms_norm_row_widest(row: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) => rms_norm_row);
widest!(silu_times_widest(gate: &[f32], up: &[f32], out: &mut [f32]) => silu_times_run);
widest!(rope_widest(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) => rope_position);
widest!(softmax_row_widest(scores: &[f32], blocked: &[u8], scale: f32, out: &mut [f32]) => softmax_row);
widest!(rms_norm_gradients_widest(rows: &[f32], weight: &[f32], eps: f32, grad: &[f32], dx: &mut [f32], dw: &mut [f32]) => rms_norm_gradients_rows);
widest!(silu_times_gradients_widest(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) => silu_times_gradients_run);
widest!(softmax_gradient_widest(probabilities: &[f32], grad: &[f32], blocked: &[u8], scale: f32, out: &mut [f32]) => softmax_gradient_row);

/// `e^x` for f32, branch-free so loops over it vectorize: Cephes' expf (x = n ln2 + r with
/// |r| <= ln2 / 2, a polynomial for e^r, then 2^n from the exponent bits). Within 2 ulp of
/// libm over the normal range; 0 below -87.3 and e^88.3 above 88.3 (softmax and sigmoid need
/// those limits, not infinities).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (ties to even) without
    // SSE4.1's `round` instruction, which baseline x86-64 lacks.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.3, 88.3);
    let n = (clamped * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n from the bits of n + 127 + 2^23 (its integer part sits in the low mantissa bits): a
    // float-to-int `as` cast would keep the loop scalar (it saturates and checks for NaN).
    let biased = (n + (127.0 + 8_388_608.0))
        .to_bits()
        .wrapping_sub(0x4B00_0000);
    let two_n = f32::from_bits(biased << 23);
    match x < -87.3 {
        true => 0.0,
        false => e_r * two_n,
    }
}

/// RMSNorm of each row of `x` (rows of `weight.len()`): `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .with_min_len(8)
        .for_each(|(out, row)| rms_norm_row_widest(row, weight, eps, out));
    out
}

#[inline(always)]
fn rms_norm_row(row: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // Sixteen running sums, so the loop vectorizes.
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    let mean = (lanes.iter().sum::<f32>() + tail) / row.len() as f32;
    let inverse_rms = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(row).zip(weight) {
        *o = v * inverse_rms * g;
    }
}

/// `silu(gate) * up`, silu(g) = g * sigmoid(g) = g / (1 + e^-g).
///
/// # Panics
/// When the two differ in length.
pub fn silu_times(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "gate and up have one length");
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .for_each(|(out, (gate, up))| silu_times_widest(gate, up, out));
    out
}

#[inline(always)]
fn silu_times_run(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        // e^-g saturates for large |g|, so no branch on the sign.
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// Rotary position embedding of `x [positions, heads, head_dim]` with per-position tables
/// `cos` and `signed_sin` (`[positions, head_dim]`, the sin table's first half negated):
/// `x * cos + cat(x[d/2:], x[:d/2]) * signed_sin`.
///
/// # Panics
/// When the tables do not hold `head_dim` values per position of `x`.
pub fn rope(x: &[f32], head_dim: usize, cos: &[f32], signed_sin: &[f32]) -> Vec<f32> {
    let positions = cos.len() / head_dim;
    assert_eq!(cos.len(), signed_sin.len(), "one table length");
    assert_eq!(x.len() % (positions * head_dim), 0, "x holds whole heads");
    let token = x.len() / positions;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(token)
        .zip(x.par_chunks(token))
        .zip(
            cos.par_chunks(head_dim)
                .zip(signed_sin.par_chunks(head_dim)),
        )
        .with_min_len(8)
        .for_each(|((out, x), (cos, sin))| rope_widest(x, cos, sin, out));
    out
}

/// One position's heads.
#[inline(always)]
fn rope_position(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let head_dim = cos.len();
    let half = head_dim / 2;
    for (out, x) in out.chunks_exact_mut(head_dim).zip(x.chunks_exact(head_dim)) {
        let (first, second) = x.split_at(half);
        let (out_first, out_second) = out.split_at_mut(half);
        let (cos_first, cos_second) = cos.split_at(half);
        let (sin_first, sin_second) = sin.split_at(half);
        for d in 0..half {
            out_first[d] = first[d] * cos_first[d] + second[d] * sin_first[d];
            out_second[d] = second[d] * cos_second[d] + first[d] * sin_second[d];
        }
    }
}

/// Where attention scores and their mask lie: rows of `keys` scores, per batch row `heads`
/// blocks of `queries_per_head` rows; query row r of a block reads mask row `r % seq` of its
/// batch row (`blocked [batch, seq, keys]`, nonzero where blocked), so the query heads sharing
/// a kv head may be folded into the query axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionRows {
    pub keys: usize,
    pub heads: usize,
    pub queries_per_head: usize,
    pub seq: usize,
}

impl AttentionRows {
    /// Checks that `scores` (or their gradient) and `blocked` hold whole rows of this layout.
    fn check(&self, scores: &[f32], blocked: &[u8]) {
        let (keys, seq) = (self.keys, self.seq);
        let batch = blocked.len() / (seq * keys);
        assert_eq!(
            blocked.len(),
            batch * seq * keys,
            "blocked is [batch, seq, keys]"
        );
        assert_eq!(
            scores.len(),
            batch * self.heads * self.queries_per_head * keys,
            "scores are [batch, heads, queries, keys]"
        );
        assert_eq!(
            self.queries_per_head % seq,
            0,
            "queries fold whole sequences"
        );
    }

    /// The mask row that score row `row` reads.
    fn mask_row<'a>(&self, blocked: &'a [u8], row: usize) -> &'a [u8] {
        let b = row / (self.heads * self.queries_per_head);
        let t = row % self.queries_per_head % self.seq;
        &blocked[(b * self.seq + t) * self.keys..(b * self.seq + t + 1) * self.keys]
    }
}

/// Attention probabilities from raw scores laid out as `rows` says: `softmax(mask_fill(scores *
/// scale, blocked, f32::MIN))` over rows of `keys`. A row that sees no key gets a uniform
/// distribution.
///
/// # Panics
/// When the shapes do not divide as [`AttentionRows`] describes.
pub fn masked_softmax(scores: &[f32], rows: AttentionRows, blocked: &[u8], scale: f32) -> Vec<f32> {
    rows.check(scores, blocked);
    let mut out = vec![0f32; scores.len()];
    out.par_chunks_mut(rows.keys)
        .zip(scores.par_chunks(rows.keys))
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, (out, scores))| {
            softmax_row_widest(scores, rows.mask_row(blocked, row), scale, out)
        });
    out
}

#[inline(always)]
fn softmax_row(scores: &[f32], blocked: &[u8], scale: f32, out: &mut [f32]) {
    for ((o, &s), &m) in out.iter_mut().zip(scores).zip(blocked) {
        *o = match m != 0 {
            true => f32::MIN,
            false => s * scale,
        };
    }
    // Sixteen running maxima and sums, so the reductions vectorize (a single running value
    // would chain every element on the one before it).
    let mut maxima = [f32::MIN; 16];
    let mut chunks = out.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in maxima.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxima)
        .fold(f32::MIN, |max, &v| if v > max { v } else { max });
    let mut sums = [0f32; 16];
    let mut chunks = out.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (lane, o) in sums.iter_mut().zip(chunk) {
            *o = exp(*o - max);
            *lane += *o;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for o in chunks.into_remainder() {
        *o = exp(*o - max);
        sum += *o;
    }
    let inverse = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inverse;
    }
}

/// The gradients of `silu(gate) * up` given the output's `grad`: with σ = sigmoid(gate),
/// `d_gate = grad * up * σ (1 + gate (1 - σ))` (silu's derivative) and
/// `d_up = grad * gate * σ`.
///
/// # Panics
/// When the three differ in length.
pub fn silu_times_backward(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(
        gate.len() == up.len() && up.len() == grad.len(),
        "gate, up and grad have one length"
    );
    let (mut d_gate, mut d_up) = (vec![0f32; gate.len()], vec![0f32; gate.len()]);
    d_gate
        .par_chunks_mut(4096)
        .zip(d_up.par_chunks_mut(4096))
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .zip(grad.par_chunks(4096))
        .for_each(|(((d_gate, d_up), (gate, up)), grad)| {
            silu_times_gradients_widest(gate, up, grad, d_gate, d_up)
        });
    (d_gate, d_up)
}

#[inline(always)]
fn silu_times_gradients_run(
    gate: &[f32],
    up: &[f32],
    grad: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    for i in 0..gate.len().min(d_gate.len()) {
        let g = gate[i];
        let sigmoid = 1.0 / (1.0 + exp(-g));
        d_gate[i] = grad[i] * up[i] * (sigmoid * (1.0 + g * (1.0 - sigmoid)));
        d_up[i] = grad[i] * (g * sigmoid);
    }
}

/// The gradient of [`masked_softmax`] with respect to its raw scores, from its output
/// `probabilities` and their gradient `grad` (same layout and mask):
/// `scale * p * (grad - sum(grad * p))` per row, 0 where blocked.
///
/// # Panics
/// When the shapes do not divide as [`AttentionRows`] describes.
pub fn masked_softmax_backward(
    probabilities: &[f32],
    grad: &[f32],
    rows: AttentionRows,
    blocked: &[u8],
    scale: f32,
) -> Vec<f32> {
    assert_eq!(
        probabilities.len(),
        grad.len(),
        "one gradient per probability"
    );
    rows.check(probabilities, blocked);
    let mut out = vec![0f32; grad.len()];
    out.par_chunks_mut(rows.keys)
        .zip(
            probabilities
                .par_chunks(rows.keys)
                .zip(grad.par_chunks(rows.keys)),
        )
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, (out, (p, g)))| {
            softmax_gradient_widest(p, g, rows.mask_row(blocked, row), scale, out)
        });
    out
}

#[inline(always)]
fn softmax_gradient_row(
    probabilities: &[f32],
    grad: &[f32],
    blocked: &[u8],
    scale: f32,
    out: &mut [f32],
) {
    let mut lanes = [0f32; 16];
    let mut chunks = probabilities.chunks_exact(16).zip(grad.chunks_exact(16));
    for (p, g) in &mut chunks {
        for lane in 0..16 {
            lanes[lane] += p[lane] * g[lane];
        }
    }
    let whole = probabilities.len() / 16 * 16;
    let tail: f32 = probabilities[whole..]
        .iter()
        .zip(&grad[whole..])
        .map(|(p, g)| p * g)
        .sum();
    let dot = lanes.iter().sum::<f32>() + tail;
    for (((o, &p), &g), &m) in out.iter_mut().zip(probabilities).zip(grad).zip(blocked) {
        *o = match m != 0 {
            true => 0.0,
            false => scale * p * (g - dot),
        };
    }
}

/// The gradients of [`rms_norm`] given its output's `grad`: with `r = 1 / sqrt(mean(x²) + eps)`
/// per row, `dx = r (grad * weight) - x r³ mean(grad * weight * x)` and
/// `dw = sum over rows of grad * x * r`. Rows are taken in blocks whose `dw` parts are added in
/// block order, so the sums are the same on every run.
///
/// # Panics
/// When `x` and `grad` differ in length or do not hold whole rows.
pub fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let width = weight.len();
    assert_eq!(x.len(), grad.len(), "one gradient per value");
    assert_eq!(x.len() % width, 0, "x holds whole rows");
    const BLOCK_ROWS: usize = 8;
    let block = BLOCK_ROWS * width;
    let mut dx = vec![0f32; x.len()];
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(grad.par_chunks(block)))
        .map(|(dx, (rows, grad))| {
            let mut dw = vec![0f32; width];
            rms_norm_gradients_widest(rows, weight, eps, grad, dx, &mut dw);
            dw
        })
        .collect();
    let mut dw = vec![0f32; width];
    for part in parts {
        for (total, v) in dw.iter_mut().zip(part) {
            *total += v;
        }
    }
    (dx, dw)
}

#[inline(always)]
fn rms_norm_gradients_rows(
    rows: &[f32],
    weight: &[f32],
    eps: f32,
    grad: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let width = weight.len();
    for ((row, grad), dx) in rows
        .chunks_exact(width)
        .zip(grad.chunks_exact(width))
        .zip(dx.chunks_exact_mut(width))
    {
        let (mut squares, mut dots) = ([0f32; 16], [0f32; 16]);
        let whole = width / 16 * 16;
        for start in (0..whole).step_by(16) {
            for lane in 0..16 {
                let (v, g) = (row[start + lane], grad[start + lane]);
                squares[lane] += v * v;
                dots[lane] += g * weight[start + lane] * v;
            }
        }
        let (mut square_tail, mut dot_tail) = (0f32, 0f32);
        for i in whole..width {
            square_tail += row[i] * row[i];
            dot_tail += grad[i] * weight[i] * row[i];
        }
        let mean = (squares.iter().sum::<f32>() + square_tail) / width as f32;
        let r = 1.0 / (mean + eps).sqrt();
        let dot = (dots.iter().sum::<f32>() + dot_tail) / width as f32;
        let correction = r * r * r * dot;
        for i in 0..width {
            dx[i] = r * (grad[i] * weight[i]) - row[i] * correction;
            dw[i] += grad[i] * row[i] * r;
        }
    }
}
