//! The distillation recipe: a TOML file with every knob of the seed's Trainer +
//! GeneralDistiller setup and its defaults. Every field is checked when the recipe loads
//! (unknown key, wrong type, out of range); errors name the file and the field.
//! `--set section.key=value` overrides any field from the command line.
//!
//! One file per section: its struct, its defaults, its checks and what a change to it does on
//! `--resume` ([`on_resume`]). Checks across sections (on-policy text needs a teacher) are here.

mod dataset;
mod distillation;
mod memory;
mod models;
mod on_policy;
mod teacher_cache;
mod training;

use std::path::{Path, PathBuf};

use qwen2::LoraSettings;
use serde::{Deserialize, Serialize};

pub use dataset::Dataset;
pub use distillation::Distillation;
pub use memory::Memory;
pub use models::ModelSource;
pub use on_policy::OnPolicy;
pub use teacher_cache::TeacherCache;
pub use training::{EvalStrategy, SaveDtype, SaveStrategy, Schedule, Training};

use crate::losses::KdLoss;

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
        let fields = Fields(path);
        self.training.validate(&fields)?;
        self.dataset.validate(&fields)?;
        self.distillation.validate(&fields)?;
        self.teacher_cache.validate(&fields)?;
        if let Some(lora) = &self.lora {
            lora.validate(None, "[lora]")
                .map_err(|e| RecipeError::Invalid {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        }
        self.on_policy.validate(&fields, self.needs_teacher())
    }
}

/// Names the recipe file and a field in a validation error.
pub(super) struct Fields<'a>(&'a Path);

impl Fields<'_> {
    pub(super) fn error(&self, field: &str, message: impl Into<String>) -> RecipeError {
        RecipeError::Field {
            path: self.0.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// What a change of one field (or of any field under a `section.` prefix) does to a resumed
/// run.
pub(super) struct OnResume {
    field: &'static str,
    /// The resumed run still trains the weights the uninterrupted one would have.
    harmless: bool,
    effect: &'static str,
}

impl OnResume {
    const fn harmless(field: &'static str, effect: &'static str) -> Self {
        Self {
            field,
            harmless: true,
            effect,
        }
    }

    const fn changes(field: &'static str, effect: &'static str) -> Self {
        Self {
            field,
            harmless: false,
            effect,
        }
    }
}

/// What changing `field` (dotted, e.g. `training.max_steps`) does on `--resume`: whether the
/// resumed run still trains the weights the uninterrupted one would have, and what it changes.
/// The field's own entry wins over its section's.
pub fn on_resume(field: &str) -> (bool, &'static str) {
    let sections = [
        models::ON_RESUME,
        dataset::ON_RESUME,
        training::ON_RESUME,
        distillation::ON_RESUME,
        teacher_cache::ON_RESUME,
        memory::ON_RESUME,
        on_policy::ON_RESUME,
    ];
    let entries = || sections.iter().flat_map(|entries| entries.iter());
    entries()
        .find(|entry| entry.field == field)
        .or_else(|| {
            entries().find(|entry| entry.field.ends_with('.') && field.starts_with(entry.field))
        })
        .map_or((false, "the training run"), |entry| {
            (entry.harmless, entry.effect)
        })
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
