//! The distillation recipe: a TOML file with every knob of the seed's Trainer +
//! GeneralDistiller setup and its defaults. Every field is checked when the recipe loads
//! (unknown key, wrong type, out of range); errors name the file and the field.
//! `--set section.key=value` overrides any field from the command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::losses::KdLoss;
use crate::objective::IntermediateMatch;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: cannot read the recipe: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// A model the recipe names: where it lives locally, and (for `cargo xtask download`) which hub
/// repository it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    pub local_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Where the raw dataset files are (downloaded or local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Token shards written by `cargo xtask preprocess`.
    pub shards: PathBuf,
    #[serde(default = "default_train_split")]
    pub train_split: String,
    #[serde(default = "default_eval_split")]
    pub eval_split: String,
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    pub output_dir: PathBuf,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "default_batch_size")]
    pub per_device_train_batch_size: usize,
    #[serde(default = "default_eval_batch_size")]
    pub per_device_eval_batch_size: usize,
    #[serde(default = "default_accumulation")]
    pub gradient_accumulation_steps: usize,
    #[serde(default = "default_epochs")]
    pub num_train_epochs: usize,
    /// Stop after this many optimizer steps (0 = run all epochs).
    #[serde(default)]
    pub max_steps: usize,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_adam_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_adam_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_adam_epsilon")]
    pub adam_epsilon: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Fraction of total steps used for warmup when `warmup_steps` is 0.
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default = "default_schedule")]
    pub lr_scheduler_type: Schedule,
    /// Clip the global gradient norm to this (0 = no clipping).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_eval_strategy")]
    pub eval_strategy: EvalStrategy,
    #[serde(default = "default_steps")]
    pub eval_steps: usize,
    /// Evaluate on at most this many batches (0 = the whole split).
    #[serde(default)]
    pub max_eval_batches: usize,
    #[serde(default = "default_logging_steps")]
    pub logging_steps: usize,
    #[serde(default = "default_save_strategy")]
    pub save_strategy: SaveStrategy,
    #[serde(default = "default_steps")]
    pub save_steps: usize,
    /// Checkpoints kept (the best one is never deleted).
    #[serde(default = "default_save_total_limit")]
    pub save_total_limit: usize,
    /// dtype of saved students: "bfloat16" (as the hub ships them) or "float32".
    #[serde(default = "default_save_dtype")]
    pub save_dtype: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distillation {
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_hard_label_weight")]
    pub hard_label_weight: f64,
    /// kl (forward KL; the seed's "ce" is accepted as an alias), reverse_kl, jsd, mse.
    #[serde(default = "default_kd_loss_type")]
    pub kd_loss_type: String,
    #[serde(default = "default_jsd_beta")]
    pub jsd_beta: f64,
    #[serde(default)]
    pub intermediate_matches: Vec<IntermediateMatch>,
    /// Positions per chunk of the vocabulary-sized losses (memory vs speed).
    #[serde(default = "default_chunk_positions")]
    pub chunk_positions: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherCache {
    /// Logits kept per position by `--cache-teacher`.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Where the cache is written (default: `<shards>/teacher-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Default for TeacherCache {
    fn default() -> Self {
        Self {
            top_k: default_top_k(),
            dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub teacher: ModelSource,
    pub student: ModelSource,
    pub dataset: Dataset,
    pub training: Training,
    #[serde(default = "default_distillation")]
    pub distillation: Distillation,
    #[serde(default)]
    pub teacher_cache: TeacherCache,
}

fn default_train_split() -> String {
    "train".into()
}
fn default_eval_split() -> String {
    "validation".into()
}
fn default_learning_rate() -> f64 {
    5e-5
}
fn default_batch_size() -> usize {
    2
}
fn default_eval_batch_size() -> usize {
    2
}
fn default_accumulation() -> usize {
    4
}
fn default_epochs() -> usize {
    3
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_adam_beta1() -> f64 {
    0.9
}
fn default_adam_beta2() -> f64 {
    0.999
}
fn default_adam_epsilon() -> f64 {
    1e-8
}
fn default_schedule() -> Schedule {
    Schedule::Linear
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
fn default_eval_strategy() -> EvalStrategy {
    EvalStrategy::Epoch
}
fn default_steps() -> usize {
    500
}
fn default_logging_steps() -> usize {
    100
}
fn default_save_strategy() -> SaveStrategy {
    SaveStrategy::Best
}
fn default_save_total_limit() -> usize {
    2
}
fn default_save_dtype() -> String {
    "bfloat16".into()
}
fn default_temperature() -> f64 {
    2.0
}
fn default_hard_label_weight() -> f64 {
    0.5
}
fn default_kd_loss_type() -> String {
    "kl".into()
}
fn default_jsd_beta() -> f64 {
    0.5
}
fn default_chunk_positions() -> usize {
    256
}
fn default_top_k() -> usize {
    64
}
fn default_distillation() -> Distillation {
    toml::from_str("").expect("every distillation field has a default")
}

impl Recipe {
    /// Reads, overrides (`key=value`, dotted keys) and validates a recipe file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, overrides)
    }

    /// Parses recipe text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let invalid = |message: String| RecipeError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut document: toml::Table =
            toml::from_str(text).map_err(|e| invalid(format!("not valid TOML: {e}")))?;
        for assignment in overrides {
            apply_override(&mut document, assignment).map_err(|message| RecipeError::Field {
                path: path.to_path_buf(),
                field: assignment.split('=').next().unwrap_or("").to_string(),
                message,
            })?;
        }
        let recipe: Recipe = toml::Value::Table(document)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// The divergence to use (with the seed's "ce" alias resolved).
    pub fn kd_loss(&self) -> KdLoss {
        match self.distillation.kd_loss_type.as_str() {
            "kl" | "ce" | "forward_kl" => KdLoss::Kl,
            "reverse_kl" => KdLoss::ReverseKl,
            "jsd" => KdLoss::Jsd,
            "mse" => KdLoss::Mse,
            other => unreachable!("validated: {other}"),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), RecipeError> {
        let field = |name: &str, message: String| RecipeError::Field {
            path: path.to_path_buf(),
            field: name.to_string(),
            message,
        };
        let t = &self.training;
        let d = &self.distillation;
        let positive = [
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
            ("distillation.chunk_positions", d.chunk_positions),
            ("teacher_cache.top_k", self.teacher_cache.top_k),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(field(name, "must be at least 1".into()));
            }
        }
        if t.num_train_epochs == 0 && t.max_steps == 0 {
            return Err(field(
                "training.num_train_epochs",
                "must be at least 1 (or set training.max_steps)".into(),
            ));
        }
        if !(t.learning_rate > 0.0 && t.learning_rate < 1.0) {
            return Err(field(
                "training.learning_rate",
                format!("{} is out of range (0, 1)", t.learning_rate),
            ));
        }
        if !(0.0..1.0).contains(&t.weight_decay) {
            return Err(field(
                "training.weight_decay",
                format!("{} is out of range [0, 1)", t.weight_decay),
            ));
        }
        for (name, value) in [
            ("training.adam_beta1", t.adam_beta1),
            ("training.adam_beta2", t.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(field(name, format!("{value} is out of range [0, 1)")));
            }
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return Err(field(
                "training.warmup_ratio",
                format!("{} is out of range [0, 1)", t.warmup_ratio),
            ));
        }
        if t.max_grad_norm < 0.0 {
            return Err(field(
                "training.max_grad_norm",
                "must be >= 0 (0 disables clipping)".into(),
            ));
        }
        if !matches!(t.save_dtype.as_str(), "bfloat16" | "float32") {
            return Err(field(
                "training.save_dtype",
                format!("`{}`: use \"bfloat16\" or \"float32\"", t.save_dtype),
            ));
        }
        if t.save_strategy == SaveStrategy::Best && t.eval_strategy == EvalStrategy::No {
            return Err(field(
                "training.save_strategy",
                "\"best\" needs an eval_strategy other than \"no\"".into(),
            ));
        }
        if !(d.temperature > 0.0 && d.temperature <= 100.0) {
            return Err(field(
                "distillation.temperature",
                format!("{} is out of range (0, 100]", d.temperature),
            ));
        }
        if !(0.0..=1.0).contains(&d.hard_label_weight) {
            return Err(field(
                "distillation.hard_label_weight",
                format!("{} is out of range [0, 1]", d.hard_label_weight),
            ));
        }
        if !(d.jsd_beta > 0.0 && d.jsd_beta < 1.0) {
            return Err(field(
                "distillation.jsd_beta",
                format!("{} is out of range (0, 1)", d.jsd_beta),
            ));
        }
        if !matches!(
            d.kd_loss_type.as_str(),
            "kl" | "ce" | "forward_kl" | "reverse_kl" | "jsd" | "mse"
        ) {
            return Err(field(
                "distillation.kd_loss_type",
                format!(
                    "`{}`: use kl (alias ce), reverse_kl, jsd or mse",
                    d.kd_loss_type
                ),
            ));
        }
        for (index, matched) in d.intermediate_matches.iter().enumerate() {
            if matched.feature != "hidden" {
                return Err(field(
                    &format!("distillation.intermediate_matches[{index}].feature"),
                    format!("`{}`: only \"hidden\" is supported", matched.feature),
                ));
            }
            if !(matched.weight >= 0.0 && matched.weight.is_finite()) {
                return Err(field(
                    &format!("distillation.intermediate_matches[{index}].weight"),
                    "must be a finite number >= 0".into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks the intermediate-match layer indices against the two models' layer counts
    /// (transformers' hidden_states convention: 0 = embeddings, n = after the final norm).
    pub fn check_layers(
        &self,
        path: &Path,
        teacher_layers: usize,
        student_layers: usize,
    ) -> Result<(), RecipeError> {
        for (index, matched) in self.distillation.intermediate_matches.iter().enumerate() {
            for (name, layer, layers) in [
                ("layer_T", matched.layer_t, teacher_layers),
                ("layer_S", matched.layer_s, student_layers),
            ] {
                if layer > layers {
                    return Err(RecipeError::Field {
                        path: path.to_path_buf(),
                        field: format!("distillation.intermediate_matches[{index}].{name}"),
                        message: format!(
                            "layer {layer} does not exist: the model has {layers} layers, so hidden states 0..={layers}"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Sets `a.b.c = value` in a TOML table; the value is parsed as TOML (so `2`, `2.0`, `true`,
/// `"x"`, `[1, 2]` keep their types) and falls back to a bare string.
fn apply_override(document: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| format!("`{assignment}` is not of the form key=value"))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => table.remove("v").expect("parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, sections) = parts.split_last().ok_or("empty key")?;
    let mut table = document;
    for section in sections {
        table = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{section}` is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}
