//! The trainer's checkpoints, `output_dir/checkpoint-STEP/`: the one place that knows their
//! layout.
//!
//! - the student in the Hugging Face layout (config.json, generation_config.json,
//!   model.safetensors, tokenizer files; loadable by transformers as it is), always in float32
//!   so that a resumed run continues from bit-identical weights (the final student in
//!   `output_dir/final` uses `save_dtype`); for a LoRA student, the adapter alone in PEFT's
//!   layout (adapter_config.json, adapter_model.safetensors in f32), the base being the
//!   recipe's student;
//! - `projections.safetensors`: the learned projections of intermediate matches
//!   ([`projections`]);
//! - the optimizer's moments, one Burn record per parameter group (see `optimizer`);
//! - `trainer_state.json`: the [`TrainerState`] plus what an exact resume needs (the pending
//!   logging window and the per-step loss history), [`ResumeState`].
//!
//! Everything is written into `output_dir/.checkpoint-STEP.tmp` and renamed at the end, so a
//! directory named `checkpoint-*` is always complete.

mod positional_ids;
mod projections;

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use qwen2::safetensors::Dtype;
use qwen2::{save_adapter, save_model, GenerationConfig, LoraSettings, Qwen2Config, SaveOptions};
use serde::{Deserialize, Serialize};

pub use positional_ids::PositionalIds;
pub use projections::{new_projections, read_projections, write_projections};

use crate::error::TrainError;
use crate::objective::{inference_copy, Student};
use crate::on_policy::RolloutWindow;
use crate::optimizer::GroupedAdamW;

pub const STATE_FILE: &str = "trainer_state.json";
pub const PROJECTIONS_FILE: &str = "projections.safetensors";

/// Where training stands; enough to continue exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer updates done.
    pub global_step: usize,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Micro-batches of this epoch already consumed (the data position).
    pub batches_in_epoch: usize,
    /// Real tokens trained on so far.
    pub tokens_seen: u64,
    /// Seed of the data order and of the projections' initialisation.
    pub seed: u64,
    /// Lowest evaluation loss so far and the checkpoint that has it.
    pub best_metric: Option<f64>,
    pub best_checkpoint: Option<String>,
}

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
    /// On-policy generation in the window (absent from word-level runs' files).
    #[serde(default, skip_serializing_if = "RolloutWindow::is_empty")]
    pub rollouts: RolloutWindow,
}

/// The content of `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    #[serde(flatten)]
    pub trainer: TrainerState,
    pub log_window: LogWindow,
    pub history: Vec<StepRecord>,
}

impl ResumeState {
    /// The state of a run that has not started.
    pub fn fresh(seed: u64) -> Self {
        Self {
            trainer: TrainerState {
                global_step: 0,
                epoch: 0,
                batches_in_epoch: 0,
                tokens_seen: 0,
                seed,
                best_metric: None,
                best_checkpoint: None,
            },
            log_window: LogWindow::default(),
            history: Vec::new(),
        }
    }
}

/// What a checkpoint holds besides the trainer state.
pub struct CheckpointParts<'a, B: AutodiffBackend> {
    pub student: &'a Student<B>,
    pub student_config: &'a Qwen2Config,
    pub generation: &'a GenerationConfig,
    pub tokenizer_dir: &'a Path,
    pub optimizer: &'a GroupedAdamW<B>,
    /// The adapter's settings when the student is a LoRA student.
    pub lora: Option<&'a LoraSettings>,
    /// The base model's name as an adapter records it (`base_model_name_or_path`).
    pub base_model: &'a str,
}

pub fn checkpoint_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

/// Complete checkpoints in `output_dir`, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            entry
                .path()
                .join(STATE_FILE)
                .exists()
                .then(|| (step, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint in `output_dir`.
pub fn latest_checkpoint(output_dir: &Path) -> Option<PathBuf> {
    list_checkpoints(output_dir).pop().map(|(_, dir)| dir)
}

/// Deletes old checkpoints beyond `keep`, never the best one.
pub fn prune(output_dir: &Path, keep: usize, best: Option<&str>) -> Result<(), TrainError> {
    let checkpoints = list_checkpoints(output_dir);
    let mut removable: Vec<&PathBuf> = checkpoints
        .iter()
        .map(|(_, path)| path)
        .filter(|path| Some(path.file_name().and_then(|n| n.to_str()).unwrap_or("")) != best)
        .collect();
    let kept_best = usize::from(checkpoints.len() > removable.len());
    while removable.len() + kept_best > keep.max(1) && !removable.is_empty() {
        let dir = removable.remove(0);
        std::fs::remove_dir_all(dir).map_err(TrainError::io(dir))?;
    }
    Ok(())
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
        std::fs::remove_dir_all(&staging).map_err(TrainError::io(&staging))?;
    }
    let inference = inference_copy(parts.student);
    match parts.lora {
        Some(settings) => save_adapter(&inference.model, settings, parts.base_model, &staging)?,
        None => save_model(
            &inference.model,
            parts.student_config,
            &staging,
            &SaveOptions {
                dtype: Dtype::F32,
                tokenizer_dir: Some(parts.tokenizer_dir),
                generation: Some(parts.generation),
            },
        )?,
    }
    write_projections(&inference.projections, &staging.join(PROJECTIONS_FILE))?;
    parts
        .optimizer
        .save(&staging)
        .map_err(|e| TrainError::Record {
            path: staging.clone(),
            message: e.to_string(),
        })?;
    write_json(&staging.join(STATE_FILE), state)?;
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(TrainError::io(&target))?;
    }
    fsio::sync_dir(&staging);
    fsio::commit(&staging, &target)?;
    Ok(target)
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn read_resume_state(dir: &Path) -> Result<ResumeState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!(
        "{}: not a trainer state this version can resume from: {e} (start a new run in another output_dir)",
        path.display()
    )))
}

/// Writes `value` as pretty JSON, atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("serialisable") + "\n";
    fsio::write_atomic(path, text.as_bytes())?;
    Ok(())
}
