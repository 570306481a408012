//! The distillation recipe: a TOML file with every knob of the seed's Trainer +
//! GeneralDistiller setup and its defaults. Every field is checked when the recipe loads
//! (unknown key, wrong type, out of range); errors name the file and the field.
//! `--set section.key=value` overrides any field from the command line.

use std::path::{Path, PathBuf};

use qwen2::{FrozenDtype, LoraSettings};
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
#[serde(deny_unknown_fields, default)]
pub struct Dataset {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Where the raw dataset files are (downloaded or local).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Token shards written by `cargo xtask preprocess` (required).
    pub shards: PathBuf,
    pub train_split: String,
    pub eval_split: String,
}

impl Default for Dataset {
    fn default() -> Self {
        Self {
            repo: None,
            local_dir: None,
            include: Vec::new(),
            shards: PathBuf::new(),
            train_split: "train".into(),
            eval_split: "validation".into(),
        }
    }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Distillation {
    pub temperature: f64,
    pub hard_label_weight: f64,
    /// kl (forward KL; the seed's "ce" and "forward_kl" are accepted as aliases), reverse_kl,
    /// jsd (the generalized JSD), skew_kl, skew_reverse_kl, mse.
    pub kd_loss_type: KdLoss,
    /// The generalized JSD's interpolation, in [0, 1]: 0 forward KL, 1 reverse KL (TRL's GKD
    /// convention).
    pub jsd_beta: f64,
    /// The skew KLs' mixing weight, in [0, 1): skew KL = KL(p_t || alpha p_t + (1 - alpha) p_s),
    /// skew reverse KL = KL(p_s || alpha p_s + (1 - alpha) p_t) (DistiLLM's default 0.1).
    pub skew_alpha: f64,
    pub intermediate_matches: Vec<IntermediateMatch>,
    /// Positions per chunk of the vocabulary-sized losses (memory vs speed).
    pub chunk_positions: usize,
}

impl Default for Distillation {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            hard_label_weight: 0.5,
            kd_loss_type: KdLoss::Kl,
            jsd_beta: 0.5,
            skew_alpha: 0.1,
            intermediate_matches: Vec::new(),
            chunk_positions: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherCache {
    /// Logits kept per position by `--cache-teacher`.
    pub top_k: usize,
    /// Where the cache is written (default: `<shards>/teacher-cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Default for TeacherCache {
    fn default() -> Self {
        Self {
            top_k: 64,
            dir: None,
        }
    }
}

/// Where memory goes: how frozen weights are stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Memory {
    /// Storage of the frozen weight matrices (the teacher, and the base under a LoRA student):
    /// "auto" keeps them in bf16 when the checkpoint is bf16 (as hub checkpoints are), so nothing
    /// is rounded; products are computed in f32 either way.
    pub frozen_dtype: FrozenDtype,
    /// Activation checkpointing by layer (crate::objective::body): the student's body runs forward
    /// without a graph, keeping each layer's input, and each layer runs again in the backward
    /// pass, so autodiff holds one layer's activations at a time, for one more forward pass.
    pub activation_checkpointing: bool,
}

impl Memory {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// On-policy and sequence-level distillation (GKD, Agarwal et al. 2024, as TRL's GKDTrainer):
/// which micro-batches train on continuations generated from prompts instead of the data's
/// text. Each micro-batch draws once: with probability `lmbda` the student continues its
/// prompts (on-policy); otherwise, with `seq_kd`, the teacher does (sequence-level KD);
/// otherwise it is the data's block, as without this section. Prompts are the first
/// `prompt_len` tokens of the micro-batch's blocks; the losses score the generated tokens only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnPolicy {
    /// The share of micro-batches whose continuations the student samples, in [0, 1].
    pub lmbda: f64,
    /// The other micro-batches' continuations are sampled by the teacher.
    pub seq_kd: bool,
    /// Tokens of each block kept as the prompt.
    pub prompt_len: usize,
    /// Tokens generated after each prompt at most (a row stops at an eos).
    pub max_new_tokens: usize,
    /// Sampling: temperature, then top-k (0 = off), then top-p (1 = off).
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    /// Seed of the draws; a micro-batch's draws depend only on (seed, update, micro-batch), so
    /// a resumed run samples what the uninterrupted one would have.
    pub seed: u64,
}

/// Off: every micro-batch trains on the data (word-level distillation).
impl Default for OnPolicy {
    fn default() -> Self {
        Self {
            lmbda: 0.0,
            seq_kd: false,
            prompt_len: 32,
            max_new_tokens: 32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
        }
    }
}

impl OnPolicy {
    /// Whether any micro-batch trains on generated text.
    pub fn generates(&self) -> bool {
        self.lmbda > 0.0 || self.seq_kd
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub teacher: ModelSource,
    pub student: ModelSource,
    pub dataset: Dataset,
    pub training: Training,
    #[serde(default)]
    pub distillation: Distillation,
    #[serde(default)]
    pub teacher_cache: TeacherCache,
    /// A LoRA student: the base frozen, adapters trained (absent: every parameter trains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// Left out of `recipe.json` when it is the default, as `on_policy`.
    #[serde(default, skip_serializing_if = "Memory::is_default")]
    pub memory: Memory,
    /// Left out of `recipe.json` when it is the default, so the recipes of earlier runs
    /// compare equal on `--resume`.
    #[serde(default, skip_serializing_if = "OnPolicy::is_default")]
    pub on_policy: OnPolicy,
}

impl Recipe {
    /// Whether the recipe needs a teacher at all (hard labels alone do not).
    pub fn needs_teacher(&self) -> bool {
        self.distillation.hard_label_weight < 1.0
            || !self.distillation.intermediate_matches.is_empty()
    }

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
        // Deserialised from text (the overrides applied) rather than from the table, so that an
        // error carries a position, from which the field is named.
        let text = toml::to_string(&document).expect("a TOML table serialises");
        let recipe: Recipe = toml::from_str(&text).map_err(|e| {
            let message = e.message().to_string();
            match e.span().and_then(|span| field_at(&text, span.start)) {
                Some(field) => RecipeError::Field {
                    path: path.to_path_buf(),
                    field,
                    message,
                },
                None => invalid(message),
            }
        })?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// The divergence to use.
    pub fn kd_loss(&self) -> KdLoss {
        self.distillation.kd_loss_type
    }

    fn validate(&self, path: &Path) -> Result<(), RecipeError> {
        let field = |name: &str, message: String| RecipeError::Field {
            path: path.to_path_buf(),
            field: name.to_string(),
            message,
        };
        let t = &self.training;
        let d = &self.distillation;
        for (name, value) in [
            ("training.output_dir", &t.output_dir),
            ("dataset.shards", &self.dataset.shards),
        ] {
            if value.as_os_str().is_empty() {
                return Err(field(name, "is required".into()));
            }
        }
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
        if !(0.0..=1.0).contains(&d.jsd_beta) {
            return Err(field(
                "distillation.jsd_beta",
                format!(
                    "{} is out of range [0, 1] (0 = forward KL, 1 = reverse KL)",
                    d.jsd_beta
                ),
            ));
        }
        if let Some(lora) = &self.lora {
            lora.validate(None, "[lora]")
                .map_err(|e| RecipeError::Invalid {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        }
        if !(0.0..1.0).contains(&d.skew_alpha) {
            return Err(field(
                "distillation.skew_alpha",
                format!(
                    "{} is out of range [0, 1) (0 = plain KL; at 1 the mixture is the distribution itself)",
                    d.skew_alpha
                ),
            ));
        }
        self.validate_on_policy(path)?;
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

    fn validate_on_policy(&self, path: &Path) -> Result<(), RecipeError> {
        let field = |name: &str, message: String| RecipeError::Field {
            path: path.to_path_buf(),
            field: format!("on_policy.{name}"),
            message,
        };
        let o = &self.on_policy;
        if !(0.0..=1.0).contains(&o.lmbda) {
            return Err(field(
                "lmbda",
                format!(
                    "{} is out of range [0, 1] (the share of on-policy micro-batches)",
                    o.lmbda
                ),
            ));
        }
        for (name, value) in [
            ("prompt_len", o.prompt_len),
            ("max_new_tokens", o.max_new_tokens),
        ] {
            if value == 0 {
                return Err(field(name, "must be at least 1".into()));
            }
        }
        if !(o.temperature > 0.0 && o.temperature <= 100.0) {
            return Err(field(
                "temperature",
                format!("{} is out of range (0, 100]", o.temperature),
            ));
        }
        if !(o.top_p > 0.0 && o.top_p <= 1.0) {
            return Err(field(
                "top_p",
                format!("{} is out of range (0, 1] (1 = off)", o.top_p),
            ));
        }
        if o.generates() && !self.needs_teacher() {
            return Err(field(
                if o.lmbda > 0.0 { "lmbda" } else { "seq_kd" },
                "generated text is scored by the teacher, but this recipe trains on hard labels \
                 only (distillation.hard_label_weight = 1, no intermediate matches): lower \
                 hard_label_weight, or set on_policy.lmbda = 0 and seq_kd = false"
                    .into(),
            ));
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

/// The dotted name of the key on the line of `text` that holds byte `offset` (`section.key`,
/// the section from the nearest `[section]` header above it).
fn field_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    let section = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('['))
        .map(|header| header.trim_matches(|c| c == '[' || c == ']').to_string());
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_string(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[teacher]\nlocal_dir = \"t\"\n[student]\nlocal_dir = \"s\"\n\
                           [dataset]\nshards = \"d\"\n[training]\noutput_dir = \"o\"\n";

    #[test]
    fn an_unknown_enum_value_names_the_file_the_field_and_the_accepted_values() {
        let path = Path::new("configs/x.toml");
        for (set, field, accepted) in [
            (
                "distillation.kd_loss_type=\"kll\"",
                "distillation.kd_loss_type",
                "reverse_kl",
            ),
            (
                "training.save_dtype=\"fp16\"",
                "training.save_dtype",
                "bfloat16",
            ),
        ] {
            let error = Recipe::parse(MINIMAL, path, &[set.to_string()]).unwrap_err();
            let message = error.to_string();
            assert!(message.contains("configs/x.toml"), "{message}");
            assert!(message.contains(&format!("`{field}`")), "{message}");
            assert!(message.contains(accepted), "{message}");
        }
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out_and_aliases_are_read() {
        let recipe = Recipe::parse(
            MINIMAL,
            Path::new("x.toml"),
            &["distillation.kd_loss_type=\"ce\"".to_string()],
        )
        .unwrap();
        assert_eq!(recipe.kd_loss(), KdLoss::Kl);
        assert_eq!(recipe.training.save_dtype, SaveDtype::Bfloat16);
        assert_eq!(recipe.training.learning_rate, 5e-5);
        assert_eq!(recipe.distillation.temperature, 2.0);
        assert_eq!(recipe.dataset.eval_split, "validation");
        let missing = Recipe::parse("[teacher]\nlocal_dir = \"t\"\n[student]\nlocal_dir = \"s\"\n[dataset]\nshards = \"d\"\n[training]\n", Path::new("x.toml"), &[]).unwrap_err();
        assert!(
            missing.to_string().contains("training.output_dir"),
            "{missing}"
        );
    }
}
