//! `[training]`: the optimizer, the schedule, evaluation, logging and checkpoints, with
//! transformers' TrainingArguments names and defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Fields, OnResume, RecipeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalStrategy {
    No,
    Epoch,
    Steps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveStrategy {
    /// Keep the checkpoint with the best evaluation loss (evaluated per `eval_strategy`).
    Best,
    /// Only the last state (written at the end, on Ctrl-C, and every `save_steps` if set).
    Last,
    Epoch,
    Steps,
}

/// dtype of the final student (checkpoints are always float32, for an exact resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    /// As the hub ships models.
    Bfloat16,
    Float32,
}

impl SaveDtype {
    pub fn dtype(self) -> qwen2::safetensors::Dtype {
        match self {
            SaveDtype::Bfloat16 => qwen2::safetensors::Dtype::BF16,
            SaveDtype::Float32 => qwen2::safetensors::Dtype::F32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Training {
    /// Where checkpoints, logs and the final student go (required).
    pub output_dir: PathBuf,
    pub learning_rate: f64,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub num_train_epochs: usize,
    /// Stop after this many optimizer steps (0 = run all epochs).
    pub max_steps: usize,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub warmup_steps: usize,
    /// Fraction of total steps used for warmup when `warmup_steps` is 0.
    pub warmup_ratio: f64,
    pub lr_scheduler_type: Schedule,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f64,
    pub seed: u64,
    pub eval_strategy: EvalStrategy,
    pub eval_steps: usize,
    /// Evaluate on at most this many batches (0 = the whole split).
    pub max_eval_batches: usize,
    pub logging_steps: usize,
    pub save_strategy: SaveStrategy,
    pub save_steps: usize,
    /// Checkpoints kept (the best one is never deleted).
    pub save_total_limit: usize,
    /// dtype of the final student: "bfloat16" (as the hub ships them) or "float32".
    pub save_dtype: SaveDtype,
}

/// The defaults of transformers' TrainingArguments where it has one.
impl Default for Training {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::new(),
            learning_rate: 5e-5,
            per_device_train_batch_size: 2,
            per_device_eval_batch_size: 2,
            gradient_accumulation_steps: 4,
            num_train_epochs: 3,
            max_steps: 0,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            lr_scheduler_type: Schedule::Linear,
            max_grad_norm: 1.0,
            seed: 42,
            eval_strategy: EvalStrategy::Epoch,
            eval_steps: 500,
            max_eval_batches: 0,
            logging_steps: 100,
            save_strategy: SaveStrategy::Best,
            save_steps: 500,
            save_total_limit: 2,
            save_dtype: SaveDtype::Bfloat16,
        }
    }
}

impl Training {
    pub(super) fn validate(&self, fields: &Fields) -> Result<(), RecipeError> {
        let t = self;
        if t.output_dir.as_os_str().is_empty() {
            return Err(fields.error("training.output_dir", "is required"));
        }
        for (name, value) in [
            (
                "training.per_device_train_batch_size",
                t.per_device_train_batch_size,
            ),
            (
                "training.per_device_eval_batch_size",
                t.per_device_eval_batch_size,
            ),
            (
                "training.gradient_accumulation_steps",
                t.gradient_accumulation_steps,
            ),
            ("training.logging_steps", t.logging_steps),
            ("training.eval_steps", t.eval_steps),
            ("training.save_steps", t.save_steps),
            ("training.save_total_limit", t.save_total_limit),
        ] {
            if value == 0 {
                return Err(fields.error(name, "must be at least 1"));
            }
        }
        if t.num_train_epochs == 0 && t.max_steps == 0 {
            return Err(fields.error(
                "training.num_train_epochs",
                "must be at least 1 (or set training.max_steps)",
            ));
        }
        if !(t.learning_rate > 0.0 && t.learning_rate < 1.0) {
            return Err(fields.error(
                "training.learning_rate",
                format!("{} is out of range (0, 1)", t.learning_rate),
            ));
        }
        for (name, value) in [
            ("training.weight_decay", t.weight_decay),
            ("training.adam_beta1", t.adam_beta1),
            ("training.adam_beta2", t.adam_beta2),
            ("training.warmup_ratio", t.warmup_ratio),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(fields.error(name, format!("{value} is out of range [0, 1)")));
            }
        }
        if t.max_grad_norm < 0.0 {
            return Err(fields.error(
                "training.max_grad_norm",
                "must be >= 0 (0 disables clipping)",
            ));
        }
        if t.save_strategy == SaveStrategy::Best && t.eval_strategy == EvalStrategy::No {
            return Err(fields.error(
                "training.save_strategy",
                "\"best\" needs an eval_strategy other than \"no\"",
            ));
        }
        Ok(())
    }
}

/// What a change does on `--resume`: what is logged, evaluated or kept leaves the trained
/// weights as they would have been; the rest changes them.
pub(super) const ON_RESUME: &[OnResume] = &[
    OnResume::harmless("training.output_dir", "where the run writes"),
    OnResume::harmless("training.logging_steps", "how often the loss is logged"),
    OnResume::harmless("training.eval_strategy", "when the student is evaluated"),
    OnResume::harmless("training.eval_steps", "when the student is evaluated"),
    OnResume::harmless(
        "training.max_eval_batches",
        "how much of the eval split is measured",
    ),
    OnResume::harmless(
        "training.per_device_eval_batch_size",
        "the evaluation's batch size",
    ),
    OnResume::harmless(
        "training.save_strategy",
        "which checkpoints are written and kept",
    ),
    OnResume::harmless("training.save_steps", "which checkpoints are written"),
    OnResume::harmless("training.save_total_limit", "how many checkpoints are kept"),
    OnResume::harmless("training.save_dtype", "the dtype of the final student"),
    OnResume::changes("training.max_steps", STOP_AND_SCHEDULE),
    OnResume::changes("training.num_train_epochs", STOP_AND_SCHEDULE),
    OnResume::changes("training.learning_rate", "the learning-rate schedule"),
    OnResume::changes("training.lr_scheduler_type", "the learning-rate schedule"),
    OnResume::changes("training.warmup_steps", "the warmup of the schedule"),
    OnResume::changes("training.warmup_ratio", "the warmup of the schedule"),
    OnResume::changes("training.per_device_train_batch_size", BLOCKS_PER_UPDATE),
    OnResume::changes("training.gradient_accumulation_steps", BLOCKS_PER_UPDATE),
    OnResume::changes("training.seed", "the data order"),
    OnResume::changes("training.", "the optimizer's updates"),
];

const STOP_AND_SCHEDULE: &str = "where training stops, and the learning-rate schedule (its length, and the warmup when warmup_ratio is set)";
const BLOCKS_PER_UPDATE: &str =
    "which blocks make an update, and the data position of the checkpoint";
