//! Writing and reading the trainer's checkpoints (`output_dir/checkpoint-STEP/`):
//!
//! - the student in the Hugging Face layout (config.json, generation_config.json,
//!   model.safetensors, tokenizer files), always in float32 so that a resumed run continues
//!   from bit-identical weights (the final student in `output_dir/final` uses `save_dtype`);
//! - `projections.safetensors`: the learned projections of intermediate matches, PyTorch layout
//!   `[teacher width, student width]`, named `projections.{match index}.weight`;
//! - the optimizer's moments, one Burn record per parameter group (see `optimizer`);
//! - `trainer_state.json`: the [`TrainerState`] plus what an exact resume needs (the pending
//!   logging window and the per-step loss history).
//!
//! Everything is written into `output_dir/.checkpoint-STEP.tmp` and renamed at the end, so a
//! directory named `checkpoint-*` is always complete.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use qwen2::safetensors::{write_safetensors, Dtype, TensorToWrite};
use qwen2::{save_model, GenerationConfig, Qwen2Config, SaveOptions};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{checkpoint_name, TrainerState, PROJECTIONS_FILE, STATE_FILE};
use crate::objective::{inference_copy, IntermediateMatch, Projection, Student};
use crate::optimizer::GroupedAdamW;
use crate::train::TrainError;

/// One optimizer update, as recorded in `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Sums since the last `logging_steps` line, so the first line after a resume averages the
/// same steps as the uninterrupted run's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    pub loss_sum: f64,
    pub steps: usize,
    pub tokens: u64,
}

/// The content of `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    #[serde(flatten)]
    pub trainer: TrainerState,
    pub log_window: LogWindow,
    pub history: Vec<StepRecord>,
}

/// What a checkpoint holds besides the trainer state.
pub struct CheckpointParts<'a, B: AutodiffBackend> {
    pub student: &'a Student<B>,
    pub student_config: &'a Qwen2Config,
    pub generation: &'a GenerationConfig,
    pub tokenizer_dir: &'a Path,
    pub optimizer: &'a GroupedAdamW<B>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `output_dir/checkpoint-STEP` atomically and returns its path.
pub fn write_checkpoint<B: AutodiffBackend>(
    output_dir: &Path,
    parts: &CheckpointParts<'_, B>,
    state: &ResumeState,
) -> Result<PathBuf, TrainError> {
    let name = checkpoint_name(state.trainer.global_step);
    let staging = output_dir.join(format!(".{name}.tmp"));
    let target = output_dir.join(&name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    let inference = inference_copy(parts.student);
    save_model(
        &inference.model,
        parts.student_config,
        &staging,
        &SaveOptions {
            dtype: Dtype::F32,
            tokenizer_dir: Some(parts.tokenizer_dir),
            generation: Some(parts.generation),
        },
    )?;
    write_projections(&inference.projections, &staging.join(PROJECTIONS_FILE))?;
    parts
        .optimizer
        .save(&staging)
        .map_err(|e| TrainError::Record {
            path: staging.clone(),
            message: e.to_string(),
        })?;
    write_json_atomically(&staging.join(STATE_FILE), state)?;
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    std::fs::rename(&staging, &target).map_err(io(&target))?;
    Ok(target)
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn read_resume_state(dir: &Path) -> Result<ResumeState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!(
        "{}: not a trainer state this version can resume from: {e} (start a new run in another output_dir)",
        path.display()
    )))
}

pub fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let temporary = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value).expect("serialisable") + "\n";
    std::fs::write(&temporary, text).map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

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
    let bytes = std::fs::read(path).map_err(io(path))?;
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
