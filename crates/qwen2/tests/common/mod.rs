//! Helpers shared by the model crate's tests: fixture paths and reading reference tensors.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use qwen2::backend::Cpu;
use qwen2::AttentionMask;

/// The backend of tests that run on the default CPU backend only.
pub type B = Cpu;

/// `tests/fixtures/qwen2-parity` at the workspace root (a copy of shared/fixtures).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2-parity")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A reference tensor: shape and values (floats as f32, ints as i64).
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(path: PathBuf) -> Self {
        Self {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        let tensors = safetensors::SafeTensors::deserialize(&self.bytes).expect("fixture parses");
        tensors
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture has no tensor {name}"))
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.view(name).shape().to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let view = self.view(name);
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let view = self.view(name);
        assert_eq!(view.dtype(), safetensors::Dtype::I64, "{name}");
        view.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// `input_ids` as rows of u32.
    pub fn rows(&self, name: &str) -> Vec<Vec<u32>> {
        let shape = self.shape(name);
        self.i64(name)
            .chunks(shape[1])
            .map(|r| r.iter().map(|&v| v as u32).collect())
            .collect()
    }

    pub fn mask(&self) -> AttentionMask {
        let shape = self.shape("attention_mask");
        AttentionMask {
            rows: self
                .i64("attention_mask")
                .chunks(shape[1])
                .map(|r| r.iter().map(|&v| v != 0).collect())
                .collect(),
        }
    }
}

pub fn ids_tensor<Bk: Backend>(rows: &[Vec<u32>]) -> Tensor<Bk, 2, Int> {
    let values: Vec<i64> = rows.iter().flatten().map(|&v| v as i64).collect();
    Tensor::from_data(
        TensorData::new(values, [rows.len(), rows[0].len()]),
        &Default::default(),
    )
}

pub fn to_vec<Bk: Backend, const D: usize>(tensor: Tensor<Bk, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Largest |a - b| over positions where `keep` is true; values are [positions, width] rows.
pub fn max_abs_diff_rows(actual: &[f32], expected: &[f32], width: usize, keep: &[bool]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    let mut worst = 0f32;
    for (row, &kept) in keep.iter().enumerate() {
        if !kept {
            continue;
        }
        for i in row * width..(row + 1) * width {
            worst = worst.max((actual[i] - expected[i]).abs());
        }
    }
    worst
}

pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
