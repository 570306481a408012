//! The learned projections of intermediate matches in a checkpoint
//! (`projections.safetensors`): PyTorch layout `[teacher width, student width]`, named
//! `projections.{match index}.weight`.

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use qwen2::safetensors::{write_safetensors, Dtype, TensorToWrite};
use rand::{Rng, SeedableRng};

use crate::error::TrainError;
use crate::objective::{IntermediateMatch, Projection};

/// New projections for `matches`: a bias-free linear map student width -> teacher width where
/// they differ, initialised as torch's `nn.Linear` (uniform in +-1/sqrt(fan_in)) from `seed`.
pub fn new_projections<B: Backend>(
    matches: &[IntermediateMatch],
    student_width: usize,
    teacher_width: usize,
    seed: u64,
    device: &B::Device,
) -> Vec<Projection<B>> {
    matches
        .iter()
        .enumerate()
        .map(|(index, _)| {
            let linear = (student_width != teacher_width).then(|| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (index as u64 + 1));
                let bound = 1.0 / (student_width as f32).sqrt();
                let values: Vec<f32> = (0..student_width * teacher_width)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                linear_from_burn_layout(values, student_width, teacher_width, device)
            });
            Projection { linear }
        })
        .collect()
}

fn linear_from_burn_layout<B: Backend>(
    values: Vec<f32>,
    inputs: usize,
    outputs: usize,
    device: &B::Device,
) -> Linear<B> {
    let weight = Tensor::from_data(TensorData::new(values, [inputs, outputs]), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: None,
    }
}

fn projection_name(index: usize) -> String {
    format!("projections.{index}.weight")
}

/// Writes the projections that exist (PyTorch layout `[teacher width, student width]`).
pub fn write_projections<B: Backend>(
    projections: &[Projection<B>],
    path: &Path,
) -> Result<(), TrainError> {
    let tensors = projections
        .iter()
        .enumerate()
        .filter_map(|(index, projection)| {
            let weight = projection.linear.as_ref()?.weight.val();
            let [inputs, outputs] = weight.dims();
            Some(TensorToWrite {
                name: projection_name(index),
                shape: vec![outputs, inputs],
                values: Box::new(move || {
                    weight
                        .transpose()
                        .into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .expect("float tensor")
                }),
            })
        })
        .collect();
    write_safetensors(path, tensors, Dtype::F32)?;
    Ok(())
}

/// Replaces the weights of `projections` with those saved at `path`.
pub fn read_projections<B: Backend>(
    projections: Vec<Projection<B>>,
    path: &Path,
    device: &B::Device,
) -> Result<Vec<Projection<B>>, TrainError> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    let corrupt = |message: String| TrainError::Invalid(format!("{}: {message}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
    projections
        .into_iter()
        .enumerate()
        .map(|(index, projection)| {
            let Some(linear) = projection.linear else {
                return Ok(Projection { linear: None });
            };
            let [inputs, outputs] = linear.weight.dims();
            let name = projection_name(index);
            let view = file
                .tensor(&name)
                .map_err(|_| corrupt(format!("tensor `{name}` is missing")))?;
            if view.shape() != [outputs, inputs] || view.dtype() != safetensors::Dtype::F32 {
                return Err(corrupt(format!(
                    "tensor `{name}` is {:?} {:?}, expected F32 {:?} (was the recipe's \
                     intermediate_matches changed since the checkpoint was written?)",
                    view.dtype(),
                    view.shape(),
                    [outputs, inputs]
                )));
            }
            let torch: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            // [outputs, inputs] -> Burn's [inputs, outputs].
            let mut values = vec![0.0; torch.len()];
            for o in 0..outputs {
                for i in 0..inputs {
                    values[i * outputs + o] = torch[o * inputs + i];
                }
            }
            Ok(Projection {
                linear: Some(linear_from_burn_layout(values, inputs, outputs, device)),
            })
        })
        .collect()
}
