//! Dequantization of ggml's block formats to f32, and the quantizations the exporter writes.
//!
//! Every formula follows the `gguf` Python package's `gguf.quants` (itself ggml's
//! `dequantize_row_*`) operation by operation, in f32, so results are bit-equal to
//! `gguf.quants.dequantize`: a scale is multiplied out first (`d * sc`), then applied to the
//! quant, then the minimum subtracted, each step rounded to f32 as numpy does. Rust never fuses
//! a multiply and an add on its own, which keeps that order exact.

use half::{bf16, f16};

use crate::types::{GgmlType, QK_K};

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `kind`) into `out`, which holds exactly the number of
/// elements those blocks encode.
pub fn dequantize(kind: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let block_size = kind.block_size();
    let type_size = kind.type_size();
    assert_eq!(bytes.len() / type_size * block_size, out.len());
    assert!(bytes.len().is_multiple_of(type_size));
    let blocks = bytes
        .chunks_exact(type_size)
        .zip(out.chunks_exact_mut(block_size));
    match kind {
        GgmlType::F32 => {
            blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = f16_at(b, 0)),
        GgmlType::BF16 => {
            blocks.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| q4_1(b, o)),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| q5_0(b, o)),
        GgmlType::Q5_1 => blocks.for_each(|(b, o)| q5_1(b, o)),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| q8_0(b, o)),
        GgmlType::Q2K => blocks.for_each(|(b, o)| q2_k(b, o)),
        GgmlType::Q3K => blocks.for_each(|(b, o)| q3_k(b, o)),
        GgmlType::Q4K => blocks.for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q5K => blocks.for_each(|(b, o)| q5_k(b, o)),
        GgmlType::Q6K => blocks.for_each(|(b, o)| q6_k(b, o)),
        GgmlType::Q8K => blocks.for_each(|(b, o)| q8_k(b, o)),
    }
}

/// d: f16, qs: 16 bytes of 4-bit quants (low nibbles are elements 0..16, high 16..32), offset 8.
fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = d * ((qs[j] & 0x0F) as i8 - 8) as f32;
        out[j + 16] = d * ((qs[j] >> 4) as i8 - 8) as f32;
    }
}

/// d, m: f16; value = d * q + m.
fn q4_1(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = d * (qs[j] & 0x0F) as f32 + m;
        out[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// The 5-bit quant of element `j` of a Q5 block: a nibble from `qs`, the fifth bit from `qh`.
fn five_bit(qs: &[u8], qh: u32, j: usize) -> u8 {
    let low = if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    };
    low | ((((qh >> j) & 1) as u8) << 4)
}

/// d: f16, qh: u32 of fifth bits, qs: 16 bytes; offset 16.
fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for (j, o) in out.iter_mut().enumerate() {
        *o = d * (five_bit(qs, qh, j) as i8 - 16) as f32;
    }
}

/// d, m: f16, qh: u32, qs: 16 bytes; value = d * q + m.
fn q5_1(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for (j, o) in out.iter_mut().enumerate() {
        *o = d * five_bit(qs, qh, j) as f32 + m;
    }
}

/// d: f16, qs: 32 signed bytes.
fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

/// scales: 16 bytes (low nibble scale, high nibble min), qs: 64 bytes of 2-bit quants,
/// d, dmin: f16. Element e of the 256 sits in byte (e/128)*32 + e%32 at bits 2*((e%128)/32).
fn q2_k(b: &[u8], out: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (e, o) in out.iter_mut().enumerate() {
        let sc = scales[e / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let shift = 2 * ((e % 128) / 32);
        let q = (qs[(e / 128) * 32 + e % 32] >> shift) & 3;
        *o = dl * q as f32 - ml;
    }
}

/// hmask: 32 bytes (the third bit, inverted), qs: 64 bytes of 2-bit quants, scales: 12 bytes of
/// sixteen 6-bit scales (offset 32), d: f16.
fn q3_k(b: &[u8], out: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = &b[96..108];
    let d = f16_at(b, 108);
    let mut dl = [0f32; 16];
    for (s, dl) in dl.iter_mut().enumerate() {
        let low = if s < 8 {
            scales[s] & 0x0F
        } else {
            scales[s - 8] >> 4
        };
        let high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
        *dl = d * (((low | (high << 4)) as i8) - 32) as f32;
    }
    for (e, o) in out.iter_mut().enumerate() {
        let shift = 2 * ((e % 128) / 32);
        let low = ((qs[(e / 128) * 32 + e % 32] >> shift) & 3) as i8;
        let high_bit = (hmask[e % 32] >> (e / 32)) & 1;
        let q = low - (((high_bit ^ 1) << 2) as i8);
        *o = dl[e / 16] * q as f32;
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K / Q5_K super-block, packed in 12 bytes.
fn scale_min_k4(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = scales[j] & 0x3F;
        m[j] = scales[j + 4] & 0x3F;
        sc[j + 4] = (scales[j + 8] & 0x0F) | ((scales[j] >> 2) & 0x30);
        m[j + 4] = (scales[j + 8] >> 4) | ((scales[j + 4] >> 2) & 0x30);
    }
    (sc, m)
}

/// d, dmin: f16, scales: 12 bytes, qs: 128 bytes; sub-block j (32 elements) takes the low
/// (even j) or high (odd j) nibbles of bytes (j/2)*32.. .
fn q4_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, m) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        let ml = dmin * m[j] as f32;
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = (qs[(j / 2) * 32 + l] >> shift) & 0x0F;
            out[j * 32 + l] = dl * q as f32 - ml;
        }
    }
}

/// As Q4_K with a fifth bit per element in qh (32 bytes; sub-block j uses bit j).
fn q5_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, m) = scale_min_k4(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        let ml = dmin * m[j] as f32;
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = ((qs[(j / 2) * 32 + l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
            out[j * 32 + l] = dl * q as f32 - ml;
        }
    }
}

/// ql: 128 bytes of low nibbles, qh: 64 bytes of 2-bit highs, scales: 16 signed bytes,
/// d: f16; offset 32.
fn q6_k(b: &[u8], out: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for (e, o) in out.iter_mut().enumerate() {
        let half = e / 128;
        let within = e % 128;
        let low = (ql[half * 64 + within % 64] >> (4 * (within / 64))) & 0x0F;
        let high = (qh[half * 32 + within % 32] >> (2 * (within / 32))) & 3;
        let q = ((low | (high << 4)) as i8) - 32;
        let dl = d * (scales[e / 16] as i8) as f32;
        *o = dl * q as f32;
    }
}

/// d: f32, qs: 256 signed bytes, then 16 i16 block sums (unused here).
fn q8_k(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in out.iter_mut().zip(&b[4..4 + QK_K]) {
        *o = d * (q as i8) as f32;
    }
}

/// Encodes f32 values as `kind` for writing: F32, F16, BF16 (round to nearest even, as numpy's
/// `astype`), or Q8_0 as `gguf.quants.quantize` and ggml's reference quantizer do
/// (d = max|x| / 127, q = round-half-away(x / d), d stored as f16). Panics on other types,
/// which the exporter never asks for, and on a length that does not fill whole blocks.
pub fn quantize(kind: GgmlType, values: &[f32], out: &mut Vec<u8>) {
    match kind {
        GgmlType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            assert!(
                values.len().is_multiple_of(32),
                "Q8_0 needs whole blocks of 32"
            );
            for block in values.chunks_exact(32) {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| (v * inverse).round() as i8 as u8));
            }
        }
        other => panic!("quantizing to {} is not implemented", other.name()),
    }
}
